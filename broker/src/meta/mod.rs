//! Broker metadata (topic configs, consumer offsets) in a small key/value trait, with sled
//! behind it on disk and a map in memory for tests.

use std::collections::BTreeMap;
use std::path::Path;

use parking_lot::RwLock;

mod write_behind;

pub use write_behind::WriteBehind;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata store error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt metadata under {tree}: {reason}")]
    Corrupt { tree: String, reason: String },
}

impl From<MetaError> for sluice_proto::ApiError {
    fn from(e: MetaError) -> Self {
        sluice_proto::ApiError::new(sluice_proto::ErrorCode::StoreError, e.to_string())
    }
}

/// Key/value pairs as returned by a scan.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

/// One write of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Put(Vec<u8>, Vec<u8>),
    /// A put of a key the writer saw absent: a store that buffers writes may drop it
    /// together with a later delete of the key (a short-lived record never goes down).
    PutNew(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Named trees of ordered byte keys. Writes are visible at once; `flush` makes them durable.
pub trait MetaStore: Send + Sync + 'static {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError>;
    /// Applies every write or none (also across a crash), in order.
    fn write_batch(&self, tree: &str, ops: &[WriteOp]) -> Result<(), MetaError>;
    /// [`Self::write_batch`] of writes the caller gives up: a store that keeps them (a
    /// write-behind buffer) moves them instead of copying every value.
    fn write_batch_owned(&self, tree: &str, ops: Vec<WriteOp>) -> Result<(), MetaError> {
        self.write_batch(tree, &ops)
    }
    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), MetaError> {
        self.write_batch(tree, &[WriteOp::Put(key.to_vec(), value.to_vec())])
    }
    fn delete(&self, tree: &str, key: &[u8]) -> Result<(), MetaError> {
        self.write_batch(tree, &[WriteOp::Delete(key.to_vec())])
    }
    /// Entries whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Entries, MetaError>;
    /// Blocks until every earlier write is on disk.
    fn flush(&self) -> Result<(), MetaError>;
}

pub struct SledMeta {
    db: sled::Db,
}

impl SledMeta {
    pub fn open(dir: &Path) -> Result<Self, MetaError> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(500))
            .open()?;
        Ok(SledMeta { db })
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, MetaError> {
        // sled caches open trees; this is a map lookup after the first call.
        Ok(self.db.open_tree(name)?)
    }
}

impl MetaStore for SledMeta {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(self.tree(tree)?.get(key)?.map(|v| v.to_vec()))
    }

    fn write_batch(&self, tree: &str, ops: &[WriteOp]) -> Result<(), MetaError> {
        // One key is atomic on its own; a sled batch seals the log buffer it lands in (a
        // write and a sync of the file per batch), a single insert does not.
        if let [op] = ops {
            let t = self.tree(tree)?;
            match op {
                WriteOp::Put(k, v) | WriteOp::PutNew(k, v) => {
                    t.insert(k.as_slice(), v.as_slice())?
                }
                WriteOp::Delete(k) => t.remove(k.as_slice())?,
            };
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                WriteOp::Put(k, v) | WriteOp::PutNew(k, v) => {
                    batch.insert(k.as_slice(), v.as_slice())
                }
                WriteOp::Delete(k) => batch.remove(k.as_slice()),
            }
        }
        self.tree(tree)?.apply_batch(batch)?;
        Ok(())
    }

    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Entries, MetaError> {
        let mut out = Vec::new();
        for kv in self.tree(tree)?.scan_prefix(prefix) {
            let (k, v) = kv?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), MetaError> {
        self.db.flush()?;
        Ok(())
    }
}

/// In-memory store for tests.
#[derive(Default)]
pub struct MemMeta {
    trees: RwLock<BTreeMap<String, Tree>>,
}

impl MetaStore for MemMeta {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(self
            .trees
            .read()
            .get(tree)
            .and_then(|t| t.get(key).cloned()))
    }

    fn write_batch(&self, tree: &str, ops: &[WriteOp]) -> Result<(), MetaError> {
        let mut trees = self.trees.write();
        let t = trees.entry(tree.to_string()).or_default();
        for op in ops {
            match op {
                WriteOp::Put(k, v) | WriteOp::PutNew(k, v) => {
                    t.insert(k.clone(), v.clone());
                }
                WriteOp::Delete(k) => {
                    t.remove(k);
                }
            }
        }
        Ok(())
    }

    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Entries, MetaError> {
        Ok(self
            .trees
            .read()
            .get(tree)
            .map(|t| {
                t.range(prefix.to_vec()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn flush(&self) -> Result<(), MetaError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(m: &dyn MetaStore) {
        m.put("t", b"a/1", b"x").unwrap();
        m.put("t", b"a/2", b"y").unwrap();
        m.put("t", b"b/1", b"z").unwrap();
        m.put("u", b"a/1", b"other tree").unwrap();
        assert_eq!(m.get("t", b"a/1").unwrap().as_deref(), Some(&b"x"[..]));
        let a: Vec<_> = m.scan_prefix("t", b"a/").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].1, b"y");
        m.delete("t", b"a/1").unwrap();
        assert_eq!(m.get("t", b"a/1").unwrap(), None);
        // A batch applies in order: the later write of a key wins.
        m.write_batch(
            "t",
            &[
                WriteOp::Put(b"c/1".to_vec(), b"1".to_vec()),
                WriteOp::Delete(b"b/1".to_vec()),
                WriteOp::Put(b"c/1".to_vec(), b"2".to_vec()),
            ],
        )
        .unwrap();
        assert_eq!(m.get("t", b"c/1").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(m.get("t", b"b/1").unwrap(), None);
        m.flush().unwrap();
    }

    #[test]
    fn mem_meta() {
        exercise(&MemMeta::default());
    }

    #[test]
    fn sled_meta_persists() {
        let dir = tempfile::tempdir().unwrap();
        {
            let m = SledMeta::open(dir.path()).unwrap();
            exercise(&m);
        }
        // sled releases its file lock from a background thread after the drop: retry briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let m = loop {
            match SledMeta::open(dir.path()) {
                Ok(m) => break m,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopen failed: {e}"),
            }
        };
        assert_eq!(m.get("t", b"a/2").unwrap().as_deref(), Some(&b"y"[..]));
        assert_eq!(m.get("t", b"a/1").unwrap(), None);
    }
}
