//! The writes of one apply call, staged before they go to the store as one batch.

use std::collections::BTreeMap;

use super::TREE;
use crate::meta::{MetaError, MetaStore, WriteOp};

/// Writes of one apply call, readable before they are committed (a later op of the same call
/// sees what an earlier one did).
#[derive(Default)]
pub(crate) struct Staged {
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Keys put by `put_new` that are absent below: a delete drops them.
    fresh: std::collections::BTreeSet<Vec<u8>>,
}

impl Staged {
    pub(crate) fn get(
        &self,
        meta: &dyn MetaStore,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, MetaError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => meta.get(TREE, key),
        }
    }

    /// Entries under `prefix` as this apply call sees them: the store's, with this call's
    /// earlier writes laid over (so the result does not depend on how the log's entries were
    /// grouped into apply calls).
    pub(crate) fn scan_prefix(
        &self,
        meta: &dyn MetaStore,
        prefix: &[u8],
    ) -> Result<crate::meta::Entries, MetaError> {
        let mut all: BTreeMap<Vec<u8>, Vec<u8>> =
            meta.scan_prefix(TREE, prefix)?.into_iter().collect();
        for (k, v) in self.writes.range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(v) => {
                    all.insert(k.clone(), v.clone());
                }
                None => {
                    all.remove(k);
                }
            }
        }
        Ok(all.into_iter().collect())
    }

    /// Whether this call wrote (or deleted) `key`.
    pub(crate) fn touched(&self, key: &[u8]) -> bool {
        self.writes.contains_key(key)
    }

    pub(crate) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    /// A put of a key known absent (a record created): written with `WriteOp::PutNew`, and
    /// dropped with a later delete of it.
    pub(crate) fn put_new(&mut self, key: Vec<u8>, value: Vec<u8>) {
        // Deleted earlier in this call: the store may still have it.
        if !self.writes.contains_key(&key) {
            self.fresh.insert(key.clone());
        }
        self.writes.insert(key, Some(value));
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        if self.fresh.remove(&key) {
            self.writes.remove(&key);
            return;
        }
        self.writes.insert(key, None);
    }

    pub(super) fn into_ops(self) -> Vec<WriteOp> {
        let fresh = self.fresh;
        self.writes
            .into_iter()
            .map(|(k, v)| match v {
                Some(v) if fresh.contains(&k) => WriteOp::PutNew(k, v),
                Some(v) => WriteOp::Put(k, v),
                None => WriteOp::Delete(k),
            })
            .collect()
    }
}
