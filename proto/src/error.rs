use prost::Message as _;

use crate::v1::{ErrorCode, ErrorDetail};

/// An error with a stable wire code, carried as a gRPC status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// NOT_MASTER: where the master is, if known.
    pub master_address: String,
    /// OFFSET_OUT_OF_RANGE: the valid range.
    pub min_offset: u64,
    pub max_offset: u64,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            master_address: String::new(),
            min_offset: 0,
            max_offset: 0,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn not_master(master_address: impl Into<String>) -> Self {
        let master_address = master_address.into();
        let message = if master_address.is_empty() {
            "this replica is not the master and no master is known".to_string()
        } else {
            format!("this replica is not the master; the master is {master_address}")
        };
        ApiError {
            master_address,
            ..Self::new(ErrorCode::NotMaster, message)
        }
    }

    pub fn offset_out_of_range(offset: u64, min_offset: u64, max_offset: u64) -> Self {
        ApiError {
            min_offset,
            max_offset,
            ..Self::new(
                ErrorCode::OffsetOutOfRange,
                format!(
                    "offset {offset} is outside the queue's range [{min_offset}, {max_offset}]"
                ),
            )
        }
    }

    /// The wire form carried in a gRPC status's details or a data-port error frame.
    pub fn to_detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code as i32,
            message: self.message.clone(),
            master_address: self.master_address.clone(),
            min_offset: self.min_offset,
            max_offset: self.max_offset,
        }
    }

    /// Reads the wire form back; an unknown code becomes INTERNAL.
    pub fn from_detail(d: ErrorDetail) -> Self {
        ApiError {
            code: ErrorCode::try_from(d.code).unwrap_or(ErrorCode::Internal),
            message: d.message,
            master_address: d.master_address,
            min_offset: d.min_offset,
            max_offset: d.max_offset,
        }
    }

    /// The gRPC status code that best matches the error code, for clients that ignore details.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self.code {
            ErrorCode::InvalidArgument
            | ErrorCode::InvalidTopicName
            | ErrorCode::MessageTooLarge
            | ErrorCode::InvalidFilter
            | ErrorCode::QueueNotFound => Code::InvalidArgument,
            ErrorCode::TopicNotFound
            | ErrorCode::TransactionNotFound
            | ErrorCode::MessageNotFound
            | ErrorCode::GroupNotFound
            | ErrorCode::UserNotFound
            | ErrorCode::NoRoute => Code::NotFound,
            ErrorCode::TopicAlreadyExists
            | ErrorCode::TransactionResolved
            | ErrorCode::UserAlreadyExists => Code::AlreadyExists,
            ErrorCode::OffsetOutOfRange => Code::OutOfRange,
            ErrorCode::NotMaster
            | ErrorCode::OutOfOrderSequence
            | ErrorCode::ProducerFenced
            | ErrorCode::UnknownProducer => Code::FailedPrecondition,
            ErrorCode::DiskFull | ErrorCode::LimitExceeded => Code::ResourceExhausted,
            ErrorCode::StoreTimeout => Code::DeadlineExceeded,
            ErrorCode::NoPermission | ErrorCode::PermissionDenied => Code::PermissionDenied,
            ErrorCode::Unauthenticated => Code::Unauthenticated,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::Internal | ErrorCode::StoreError | ErrorCode::Unspecified => Code::Internal,
        }
    }

    /// Reads the error back from a status. A status without Sluice details (a transport
    /// failure, a proxy) maps to UNAVAILABLE or INTERNAL by its gRPC code.
    pub fn from_status(status: &tonic::Status) -> Self {
        if let Ok(d) = ErrorDetail::decode(status.details()) {
            if d.code != ErrorCode::Unspecified as i32 {
                return ApiError::from_detail(d);
            }
        }
        let code = match status.code() {
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
                ErrorCode::Unavailable
            }
            tonic::Code::DeadlineExceeded => ErrorCode::StoreTimeout,
            tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
            tonic::Code::NotFound => ErrorCode::MessageNotFound,
            _ => ErrorCode::Internal,
        };
        Self::new(code, status.message().to_string())
    }

    /// True for errors after which the same request may succeed elsewhere or later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::NotMaster
                | ErrorCode::Unavailable
                | ErrorCode::StoreTimeout
                | ErrorCode::DiskFull
                | ErrorCode::NoRoute
                | ErrorCode::TopicNotFound
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str_name(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let detail = e.to_detail();
        tonic::Status::with_details(
            e.grpc_code(),
            format!("{}: {}", e.code.as_str_name(), e.message),
            detail.encode_to_vec().into(),
        )
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        ApiError::from_status(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_round_trips_through_status() {
        let e = ApiError::offset_out_of_range(9, 2, 5);
        let status: tonic::Status = e.clone().into();
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert_eq!(ApiError::from_status(&status), e);
    }

    #[test]
    fn plain_status_maps_by_grpc_code() {
        let e = ApiError::from_status(&tonic::Status::unavailable("connection refused"));
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.is_retryable());
    }
}
