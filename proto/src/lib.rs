//! The Sluice gRPC API (`sluice.v1`) and its error model.
//!
//! Failures travel as a gRPC status whose `details` hold an encoded [`v1::ErrorDetail`]; use
//! [`ApiError`] on both sides instead of building statuses by hand.

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("sluice.v1");
}

pub mod acl;
pub mod auth;
pub mod duration;
mod error;
pub mod frame;
pub mod hex;
pub mod names;
pub mod props;
pub mod record;
pub mod tls;
pub mod trace;

pub use error::ApiError;
pub use v1::ErrorCode;

/// Topic permission bits (`TopicConfig.perm`).
pub mod perm {
    pub const WRITE: u32 = 2;
    pub const READ: u32 = 4;
    pub const READ_WRITE: u32 = READ | WRITE;
}
