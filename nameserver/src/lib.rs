//! The Sluice nameserver: a stateless route registry.
//!
//! Brokers register (and heartbeat) with every nameserver; nameservers never talk to each other.
//! The route table ([`registry`]) is pure logic kept in memory and rebuilt from heartbeats after a
//! restart; only the key/value config store ([`store`]) is persisted.
//!
//! Run one in-process with [`Nameserver::bind`] + [`Nameserver::start`], or the whole process
//! (config store under the data dir, stdout line, ready file) with [`run`].

pub mod auth;
pub mod config;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod service;
pub mod store;

pub use config::{Cli, Config, Timing};
pub use server::{run, Error, Nameserver, RunningNameserver};
pub use service::NameServerService;
pub use store::{ConfigStore, MemoryConfigStore, SledConfigStore};
