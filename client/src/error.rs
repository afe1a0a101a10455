//! The one error type of the client library.

use std::time::Duration;

use sluice_proto::{ApiError, ErrorCode};

/// Everything a client operation can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server answered with a Sluice error code.
    #[error("{0}")]
    Api(ApiError),
    /// The server could not be reached or the connection broke (no Sluice error detail).
    #[error("cannot reach {addr}: {message}")]
    Transport { addr: String, message: String },
    /// No answer within the request timeout. For a send, the message may or may not be stored.
    #[error("request to {addr} timed out after {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress { addr: String, reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{0} has been shut down")]
    Shutdown(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Turns a gRPC status from `addr` into an error. A status without Sluice details and with a
    /// connection-level code is a transport failure, whatever produced it.
    pub(crate) fn from_status(addr: &str, status: tonic::Status) -> Self {
        let transport_code = matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        );
        if status.details().is_empty() && transport_code {
            return Error::Transport {
                addr: addr.to_string(),
                message: status.message().to_string(),
            };
        }
        if status.details().is_empty() && status.code() == tonic::Code::DeadlineExceeded {
            return Error::Timeout {
                addr: addr.to_string(),
                timeout: Duration::ZERO,
            };
        }
        Error::Api(ApiError::from_status(&status))
    }

    /// The Sluice error code, for server-reported errors.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api(e) => Some(e.code),
            _ => None,
        }
    }

    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Api(e) => Some(e),
            _ => None,
        }
    }

    /// True when the same request may succeed on another queue, broker or later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api(e) => e.is_retryable(),
            Error::Transport { .. } | Error::Timeout { .. } => true,
            _ => false,
        }
    }

    /// True when the broker group is changing masters or could not be reached: a call that
    /// changes nothing twice (a cancel, a send-back) is worth repeating after a route refresh.
    pub(crate) fn is_master_change(&self) -> bool {
        match self {
            Error::Api(e) => matches!(e.code, ErrorCode::NotMaster | ErrorCode::Unavailable),
            Error::Transport { .. } | Error::Timeout { .. } => true,
            _ => false,
        }
    }

    /// True when the error suggests the cached route is stale: the master moved, the broker is
    /// gone, or it no longer hosts the topic.
    pub fn is_routing(&self) -> bool {
        match self {
            Error::Api(e) => matches!(
                e.code,
                ErrorCode::NotMaster
                    | ErrorCode::TopicNotFound
                    | ErrorCode::NoRoute
                    | ErrorCode::Unavailable
            ),
            Error::Transport { .. } | Error::Timeout { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn no_route(topic: &str, why: &str) -> Self {
        Error::Api(ApiError::new(
            ErrorCode::NoRoute,
            format!("no route for topic {topic}: {why}"),
        ))
    }
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Error::Api(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_unavailable_status_is_a_transport_error() {
        let e = Error::from_status("h:1", tonic::Status::unavailable("tcp connect error"));
        assert!(matches!(e, Error::Transport { .. }));
        assert!(e.is_retryable() && e.is_routing());
    }

    #[test]
    fn sluice_status_keeps_its_code() {
        let status: tonic::Status = ApiError::not_master("10.0.0.1:1").into();
        let e = Error::from_status("h:1", status);
        assert_eq!(e.code(), Some(ErrorCode::NotMaster));
        assert_eq!(e.api().unwrap().master_address, "10.0.0.1:1");
        assert!(e.is_retryable() && e.is_routing());

        let status: tonic::Status = ApiError::new(ErrorCode::MessageTooLarge, "big").into();
        let e = Error::from_status("h:1", status);
        assert!(!e.is_retryable());
        assert!(!e.is_routing());
    }
}
