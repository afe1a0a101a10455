//! [`ConfigStore`] on sled 0.34.
//!
//! Key layout: `u32 big-endian namespace length | namespace | key`. The length prefix makes a
//! namespace's entries exactly one sled prefix, whatever bytes the names contain, and keeps them
//! sorted by key.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{ConfigStore, StoreError};

#[derive(Debug, Clone)]
pub struct SledConfigStore {
    db: sled::Db,
}

impl SledConfigStore {
    /// Opens (or creates) the store in `dir`. Fails if another process has it open.
    ///
    /// sled drops its file lock from a background flusher thread shortly after the last handle
    /// goes away, so a restart inside one process (tests, an embedding application) may find
    /// the lock still held for a moment: a held lock is retried for up to [`LOCK_WAIT`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match sled::Config::new().path(dir).open() {
                Ok(db) => return Ok(SledConfigStore { db }),
                Err(e) if is_lock_held(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// How long [`SledConfigStore::open`] waits for a lock held by a handle that is going away.
const LOCK_WAIT: Duration = Duration::from_secs(2);

fn is_lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn namespace_prefix(namespace: &str) -> Vec<u8> {
    // Namespaces are capped far below 4 GiB by validation; saturate rather than wrap if a
    // caller skipped it, so distinct namespaces can never share a prefix by overflow.
    let len = u32::try_from(namespace.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(4 + namespace.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(namespace.as_bytes());
    out
}

fn entry_key(namespace: &str, key: &str) -> Vec<u8> {
    let mut out = namespace_prefix(namespace);
    out.extend_from_slice(key.as_bytes());
    out
}

fn decode(what: &str, bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| StoreError::Corrupt(format!("{what} is not UTF-8")))
}

impl ConfigStore for SledConfigStore {
    fn put(&self, namespace: &str, key: &str, value: &str) -> Result<(), StoreError> {
        self.db
            .insert(entry_key(namespace, key), value.as_bytes())?;
        // Config writes are rare: pay one fsync per write so an acknowledged put survives a crash.
        self.db.flush()?;
        Ok(())
    }

    fn get(&self, namespace: &str, key: &str) -> Result<Option<String>, StoreError> {
        match self.db.get(entry_key(namespace, key))? {
            Some(v) => Ok(Some(decode("value", &v)?)),
            None => Ok(None),
        }
    }

    fn delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        let existed = self.db.remove(entry_key(namespace, key))?.is_some();
        if existed {
            self.db.flush()?;
        }
        Ok(existed)
    }

    fn list(&self, namespace: &str) -> Result<Vec<(String, String)>, StoreError> {
        let prefix = namespace_prefix(namespace);
        let mut entries = Vec::new();
        for item in self.db.scan_prefix(&prefix) {
            let (k, v) = item?;
            let key = decode("key", &k[prefix.len()..])?;
            entries.push((key, decode("value", &v)?));
        }
        Ok(entries)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::exercise_store;

    #[test]
    fn sled_store_behaves() {
        let dir = tempfile::tempdir().unwrap();
        exercise_store(&SledConfigStore::open(dir.path()).unwrap());
    }

    #[test]
    fn values_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledConfigStore::open(dir.path()).unwrap();
            store.put("ns", "kept", "1").unwrap();
            store.put("ns", "gone", "2").unwrap();
            store.put("other", "k", "3").unwrap();
            assert!(store.delete("ns", "gone").unwrap());
        }
        let store = SledConfigStore::open(dir.path()).unwrap();
        assert_eq!(store.get("ns", "kept").unwrap().as_deref(), Some("1"));
        assert_eq!(store.get("ns", "gone").unwrap(), None);
        assert_eq!(
            store.list("ns").unwrap(),
            vec![("kept".to_string(), "1".to_string())]
        );
        assert_eq!(store.get("other", "k").unwrap().as_deref(), Some("3"));
    }

    #[test]
    fn second_open_of_the_same_dir_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledConfigStore::open(dir.path()).unwrap();
        let err = SledConfigStore::open(dir.path()).unwrap_err();
        assert!(err.to_string().starts_with("config store"), "{err}");
    }
}
