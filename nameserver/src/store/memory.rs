//! An in-memory [`ConfigStore`] for tests and for a nameserver that needs no persistence.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use super::{ConfigStore, StoreError};

/// Namespace -> key -> value, behind one lock (calls are short and never await).
#[derive(Debug, Default)]
pub struct MemoryConfigStore {
    entries: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
}

impl ConfigStore for MemoryConfigStore {
    fn put(&self, namespace: &str, key: &str, value: &str) -> Result<(), StoreError> {
        self.entries
            .lock()
            .entry(namespace.to_string())
            .or_default()
            .insert(key.to_string(), value.to_string());
        Ok(())
    }

    fn get(&self, namespace: &str, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .entries
            .lock()
            .get(namespace)
            .and_then(|ns| ns.get(key))
            .cloned())
    }

    fn delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        let mut entries = self.entries.lock();
        let Some(ns) = entries.get_mut(namespace) else {
            return Ok(false);
        };
        let existed = ns.remove(key).is_some();
        if ns.is_empty() {
            entries.remove(namespace);
        }
        Ok(existed)
    }

    fn list(&self, namespace: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .entries
            .lock()
            .get(namespace)
            .map(|ns| ns.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
