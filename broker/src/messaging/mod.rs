//! The protocol-neutral messaging layer between the wire handlers (`service/`, the data port)
//! and the store: operations take and return domain types and `ApiError`, and every write of
//! messages or state goes through one [`WritePath`].

pub mod leader;
pub mod produce;
pub mod retry;
pub mod timer;
mod write_path;

pub use write_path::WritePath;
