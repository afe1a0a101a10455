//! The nameserver's key/value config store: the only state that outlives a restart.
//!
//! [`ConfigStore`] hides the engine: [`SledConfigStore`] persists in sled, and
//! [`MemoryConfigStore`] serves tests. Calls are blocking; async callers run them on the
//! blocking pool.

mod memory;
mod sled_store;

use sluice_proto::ApiError;

pub use memory::MemoryConfigStore;
pub use sled_store::SledConfigStore;

/// Longest namespace, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 255;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest value, in bytes. Config values are small; a cap keeps one client from filling the disk
/// with a single entry.
pub const MAX_VALUE_LEN: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("config store: {0}")]
    Sled(#[from] sled::Error),
    #[error("config store holds an undecodable entry: {0}")]
    Corrupt(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::new(sluice_proto::ErrorCode::StoreError, e.to_string())
    }
}

/// Namespaced string key/value pairs. Implementations accept any strings; callers validate
/// requests with [`validate_key`] and [`validate_value`] first.
pub trait ConfigStore: Send + Sync + 'static {
    /// Inserts or replaces; durable when it returns.
    fn put(&self, namespace: &str, key: &str, value: &str) -> Result<(), StoreError>;
    fn get(&self, namespace: &str, key: &str) -> Result<Option<String>, StoreError>;
    /// Returns whether the key existed; durable when it returns.
    fn delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError>;
    /// Every entry of the namespace, sorted by key.
    fn list(&self, namespace: &str) -> Result<Vec<(String, String)>, StoreError>;
    /// Writes everything buffered to disk (called on shutdown).
    fn flush(&self) -> Result<(), StoreError>;
}

/// A namespace alone (ListConfig): non-empty, bounded.
pub fn validate_namespace(namespace: &str) -> Result<(), ApiError> {
    if namespace.is_empty() {
        return Err(ApiError::invalid("config namespace is empty"));
    }
    if namespace.len() > MAX_NAMESPACE_LEN {
        return Err(ApiError::invalid(format!(
            "config namespace is {} bytes long, the limit is {MAX_NAMESPACE_LEN}",
            namespace.len()
        )));
    }
    Ok(())
}

/// Namespace and key: both non-empty and bounded.
pub fn validate_key(namespace: &str, key: &str) -> Result<(), ApiError> {
    validate_namespace(namespace)?;
    if key.is_empty() {
        return Err(ApiError::invalid(format!(
            "config key is empty (namespace {namespace})"
        )));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(ApiError::invalid(format!(
            "config key is {} bytes long, the limit is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    Ok(())
}

/// A value may be empty; it must not exceed [`MAX_VALUE_LEN`].
pub fn validate_value(value: &str) -> Result<(), ApiError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(ApiError::invalid(format!(
            "config value is {} bytes long, the limit is {MAX_VALUE_LEN}",
            value.len()
        )));
    }
    Ok(())
}

/// Behaviour every implementation must show; run against each of them.
#[cfg(test)]
pub(crate) fn exercise_store(store: &dyn ConfigStore) {
    assert_eq!(store.get("ns", "k").unwrap(), None);
    store.put("ns", "k", "v1").unwrap();
    store.put("ns", "k", "v2").unwrap();
    assert_eq!(store.get("ns", "k").unwrap().as_deref(), Some("v2"));
    store.put("ns", "b", "").unwrap();
    store.put("ns", "a", "x").unwrap();
    // A namespace that is a prefix of another, and a key that looks like a namespace boundary,
    // must not leak into each other.
    store.put("n", "sk", "other").unwrap();
    store.put("nsx", "k", "other").unwrap();
    store.put("ns\0", "k", "other").unwrap();
    assert_eq!(
        store.list("ns").unwrap(),
        vec![
            ("a".to_string(), "x".to_string()),
            ("b".to_string(), String::new()),
            ("k".to_string(), "v2".to_string()),
        ]
    );
    assert_eq!(store.list("n").unwrap().len(), 1);
    assert!(store.list("empty").unwrap().is_empty());
    assert!(store.delete("ns", "k").unwrap());
    assert!(!store.delete("ns", "k").unwrap());
    assert_eq!(store.get("ns", "k").unwrap(), None);
    assert_eq!(store.get("nsx", "k").unwrap().as_deref(), Some("other"));
    store.put("ns", "ünï©ødé", "välue").unwrap();
    assert_eq!(
        store.get("ns", "ünï©ødé").unwrap().as_deref(),
        Some("välue")
    );
    store.flush().unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::ErrorCode;

    #[test]
    fn validation_rejects_empty_and_oversized_input() {
        assert!(validate_key("ns", "k").is_ok());
        for (ns, key) in [("", "k"), ("ns", "")] {
            let err = validate_key(ns, key).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidArgument);
            assert!(err.message.contains("empty"));
        }
        let long_ns = "n".repeat(MAX_NAMESPACE_LEN + 1);
        assert!(validate_namespace(&long_ns).is_err());
        assert!(validate_key("ns", &"k".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(validate_key("ns", &"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(validate_value("").is_ok());
        assert!(validate_value(&"v".repeat(MAX_VALUE_LEN)).is_ok());
        let err = validate_value(&"v".repeat(MAX_VALUE_LEN + 1)).unwrap_err();
        assert!(err.message.contains("limit"));
    }

    #[test]
    fn memory_store_behaves() {
        exercise_store(&MemoryConfigStore::default());
    }
}
