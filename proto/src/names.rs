//! Naming rules shared by servers and clients.

use crate::{ApiError, ErrorCode};

/// Longest topic or group name, in bytes.
pub const MAX_NAME_LEN: usize = 127;

/// Checks a topic or consumer-group name: 1..=127 bytes of `[A-Za-z0-9_%|-]`.
/// (`%` is allowed for system topics such as `%RETRY%group`.)
pub fn validate_topic_name(name: &str) -> Result<(), ApiError> {
    check_name(name, "topic", ErrorCode::InvalidTopicName)
}

/// Same rules as topics; a violation is INVALID_ARGUMENT.
pub fn validate_group_name(name: &str) -> Result<(), ApiError> {
    check_name(name, "group", ErrorCode::InvalidArgument)
}

/// Checks a user's access key: 1..=128 bytes of `[A-Za-z0-9_.@-]`.
pub fn validate_access_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > crate::auth::MAX_ACCESS_KEY_LEN {
        return Err(ApiError::invalid(format!(
            "access key must be 1 to {} bytes long",
            crate::auth::MAX_ACCESS_KEY_LEN
        )));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b))
    {
        return Err(ApiError::invalid(format!(
            "access key {key:?}: allowed are A-Z a-z 0-9 _ . @ -"
        )));
    }
    Ok(())
}

/// Prefix of a consumer group's retry topic.
pub const RETRY_PREFIX: &str = "%RETRY%";
/// Prefix of a consumer group's dead-letter topic.
pub const DLQ_PREFIX: &str = "%DLQ%";

/// The topic a group's failed messages wait on for their next attempt.
pub fn retry_topic(group: &str) -> String {
    format!("{RETRY_PREFIX}{group}")
}

/// The topic a group's messages go to once their retries are spent.
pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_PREFIX}{group}")
}

pub fn is_retry_topic(topic: &str) -> bool {
    topic.starts_with(RETRY_PREFIX)
}

fn check_name(name: &str, what: &str, code: ErrorCode) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::new(code, format!("{what} name is empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ApiError::new(
            code,
            format!(
                "{what} name is {} bytes long; the limit is {MAX_NAME_LEN}",
                name.len()
            ),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '%' | '|')))
    {
        return Err(ApiError::new(
            code,
            format!("{what} name {name:?} contains {c:?}; allowed are A-Z a-z 0-9 _ - % |"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_topic_name("orders-2024_eu").is_ok());
        assert!(validate_topic_name("%RETRY%g1").is_ok());
        assert_eq!(
            validate_topic_name("").unwrap_err().code,
            ErrorCode::InvalidTopicName
        );
        assert!(validate_topic_name("a b").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name(&"x".repeat(128)).is_err());
        assert_eq!(
            validate_group_name("g!").unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }
}
