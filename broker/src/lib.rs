//! The Sluice broker: storage engine, metadata, gRPC service and nameserver registration.

pub mod store;
