//! The Sluice broker: storage engine, metadata, gRPC service and nameserver registration.
//! ARCHITECTURE.md maps these modules.

pub mod access;
pub mod config;
pub mod data_port;
pub mod groups;
pub mod messaging;
pub mod meta;
pub mod metrics;
pub mod registration;
pub mod replication;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod tls;
