//! The protocol-neutral messaging layer between the wire handlers (`service/` for gRPC,
//! `data_port.rs`) and the store: operations take and return domain types and `ApiError`, and
//! every write of messages or state goes through one [`WritePath`]. A second wire API (RocketMQ
//! 5's `MessagingService`) converts to the same operations.
//!
//! `produce` (send, immediate or delayed), `idempotence` (producer ids and sequences), `consume` (pull with long polling and read hints,
//! offsets, queue positions), `query` (lookups with timer state), `timer` (delayed messages and
//! their leader-only delivery task), `retry` (send-back, retry policies, dead letters), `txn` (transactions and their checks), `locks` (queue locks of ordered consumption), `trace` (whether traces are taken, and the trace topic), `leader`
//! (leader-only tasks), `read_hint` (where a replica group's consumers pull next).

pub mod consume;
pub mod filter;
pub mod idempotence;
pub mod leader;
pub mod locks;
pub mod produce;
pub mod query;
pub mod read_hint;
pub mod retry;
pub mod standalone;
pub mod timer;
pub mod trace;
pub mod txn;
mod write_path;

pub use write_path::{Acked, Announced, WritePath};
