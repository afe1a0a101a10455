use sluice_proto::{ApiError, ErrorCode};

/// Errors of the message store. Each maps to one wire error code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge { size: usize, limit: usize },
    #[error("disk usage {ratio:.2} is above the hard limit {limit:.2}; writes are refused")]
    DiskFull { ratio: f64, limit: f64 },
    #[error("write was not flushed within {0:?}")]
    Timeout(std::time::Duration),
    #[error("offset {offset} outside [{min}, {max}]")]
    OffsetOutOfRange { offset: u64, min: u64, max: u64 },
    #[error("corrupt data at offset {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("store is shut down")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::MessageTooLarge { .. } => {
                ApiError::new(ErrorCode::MessageTooLarge, e.to_string())
            }
            StoreError::DiskFull { .. } => ApiError::new(ErrorCode::DiskFull, e.to_string()),
            StoreError::Timeout(_) => ApiError::new(ErrorCode::StoreTimeout, e.to_string()),
            StoreError::OffsetOutOfRange { offset, min, max } => {
                ApiError::offset_out_of_range(*offset, *min, *max)
            }
            StoreError::Invalid(_) => ApiError::invalid(e.to_string()),
            StoreError::Closed => ApiError::new(ErrorCode::Unavailable, e.to_string()),
            StoreError::Corrupt { .. } | StoreError::Io(_) => {
                ApiError::new(ErrorCode::StoreError, e.to_string())
            }
        }
    }
}
