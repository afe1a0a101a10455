//! Resolved transactions: the `tx_ends` table holds one key per 10 ms of resolution time (a
//! chunk of every transaction resolved then, by the resolving op's clock), and memory holds
//! an index from a hash of each id to its chunk.
//!
//! Why chunks: one key per transaction made every resolution a write to the metadata store
//! and every new transaction a lookup of a key that is not there (on every replica, a fifth
//! of a replica group's CPU under one-message transactions). Now the lookups of ids never
//! resolved end in memory, and a chunk is a hot key the write-behind buffer hands down once
//! per interval.
//!
//! The chunking is deterministic (by the time in the op), so every replica and every
//! snapshot holds the same keys. A hash hit is checked against the chunk itself, so a
//! collision only costs a read. Keys of the per-transaction table of earlier builds
//! (`tx_resolved`) are still found, and forgotten once all are old enough.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use parking_lot::Mutex;
use prost::Message as _;
use sluice_proto::v1::{TxEndChunk, TxEnded, TxForgetOp, TxRecord};

use super::{table_key, Staged, TREE};
use crate::meta::{MetaError, MetaStore};

pub const TABLE: &str = "tx_ends";
/// The per-transaction table of earlier builds.
pub const LEGACY: &str = "tx_resolved";

/// Where a legacy record is (no bucket of a resolution time).
const LEGACY_CHUNK: u64 = u64::MAX;

/// Resolution times per chunk: a busy group writes a chunk key every 10 ms at most, however
/// many transactions end.
const BUCKET_MS: u64 = 10;

fn chunk_key(n: u64) -> Vec<u8> {
    table_key(TABLE, &n.to_be_bytes())
}

fn legacy_key(id: &str) -> Vec<u8> {
    table_key(LEGACY, id.as_bytes())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> MetaError {
    MetaError::Corrupt {
        tree: TREE.into(),
        reason: format!("{what}: {e}"),
    }
}

fn decode_chunk(v: &[u8]) -> Result<TxEndChunk, MetaError> {
    TxEndChunk::decode(v).map_err(|e| corrupt("resolved transactions", e))
}

fn decode_record(v: &[u8]) -> Result<TxRecord, MetaError> {
    TxRecord::decode(v).map_err(|e| corrupt("resolved transaction", e))
}

/// The chunks an id's hash is found in (almost always one).
#[derive(Debug, Clone)]
enum Places {
    One(u64),
    Many(Vec<u64>),
}

#[derive(Debug, Clone)]
struct Chunk {
    /// The latest resolution time in it (forgotten once this is old enough).
    newest_ms: i64,
    hashes: Vec<u64>,
}

impl Default for Chunk {
    fn default() -> Self {
        // Not 0: a clock before the epoch must not make the index keep what a forget removes.
        Chunk {
            newest_ms: i64::MIN,
            hashes: Vec::new(),
        }
    }
}

/// Keys of `places` are hashes already (of a `RandomState` chosen at load): hashing them
/// again cost a tenth of a transaction's state apply.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for these keys; anything else still spreads.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default)]
struct Inner {
    places: HashMap<u64, Places, BuildHasherDefault<Prehashed>>,
    chunks: BTreeMap<u64, Chunk>,
    /// Transactions in chunks (legacy records not counted).
    count: u64,
}

impl Inner {
    fn add(&mut self, n: u64, chunk: Chunk) {
        for &h in &chunk.hashes {
            match self.places.get_mut(&h) {
                None => {
                    self.places.insert(h, Places::One(n));
                }
                Some(Places::One(m)) => {
                    let m = *m;
                    self.places.insert(h, Places::Many(vec![m, n]));
                }
                Some(Places::Many(v)) => v.push(n),
            }
        }
        if n != LEGACY_CHUNK {
            self.count += chunk.hashes.len() as u64;
        }
        let c = self.chunks.entry(n).or_default();
        c.newest_ms = c.newest_ms.max(chunk.newest_ms);
        c.hashes.extend(chunk.hashes);
    }

    fn remove(&mut self, n: u64) {
        let Some(chunk) = self.chunks.remove(&n) else {
            return;
        };
        if n != LEGACY_CHUNK {
            self.count = self.count.saturating_sub(chunk.hashes.len() as u64);
        }
        for h in chunk.hashes {
            let gone = match self.places.get_mut(&h) {
                Some(Places::One(m)) => *m == n,
                Some(Places::Many(v)) => {
                    v.retain(|m| *m != n);
                    v.is_empty()
                }
                None => false,
            };
            if gone {
                self.places.remove(&h);
            }
        }
    }

    fn places_of(&self, h: u64) -> Vec<u64> {
        match self.places.get(&h) {
            None => Vec::new(),
            Some(Places::One(n)) => vec![*n],
            Some(Places::Many(v)) => v.clone(),
        }
    }
}

/// Chunks written and removed by one apply call, not yet in the index (the index takes them
/// once the call's batch is written).
#[derive(Default)]
pub(super) struct Pending {
    added: Vec<(u64, Chunk)>,
    removed: HashSet<u64>,
}

/// The resolved transactions' index, in memory.
pub struct EndedIndex {
    hasher: RandomState,
    inner: Mutex<Inner>,
    /// Tests: every id hashes alike.
    #[cfg(test)]
    collide: bool,
}

impl EndedIndex {
    pub fn load(meta: &dyn MetaStore) -> Result<EndedIndex, MetaError> {
        let index = EndedIndex {
            hasher: RandomState::new(),
            inner: Mutex::new(Inner::default()),
            #[cfg(test)]
            collide: false,
        };
        index.reload(meta)?;
        Ok(index)
    }

    /// An index whose ids all collide (tests of the check against the chunk).
    #[cfg(test)]
    pub fn colliding(meta: &dyn MetaStore) -> Result<EndedIndex, MetaError> {
        let index = EndedIndex {
            hasher: RandomState::new(),
            inner: Mutex::new(Inner::default()),
            collide: true,
        };
        index.reload(meta)?;
        Ok(index)
    }

    fn hash(&self, id: &str) -> u64 {
        #[cfg(test)]
        if self.collide {
            return 7;
        }
        self.hasher.hash_one(id)
    }

    pub fn reload(&self, meta: &dyn MetaStore) -> Result<(), MetaError> {
        let mut inner = Inner::default();
        let prefix = table_key(TABLE, b"");
        for (k, v) in meta.scan_prefix(TREE, &prefix)? {
            let n = k
                .get(prefix.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt("resolved transactions", "a key that is no chunk number"))?;
            inner.add(n, self.summary(&decode_chunk(&v)?));
        }
        let prefix = table_key(LEGACY, b"");
        let mut legacy = Chunk::default();
        for (k, v) in meta.scan_prefix(TREE, &prefix)? {
            let id = String::from_utf8_lossy(k.get(prefix.len()..).unwrap_or_default());
            legacy.hashes.push(self.hash(&id));
            legacy.newest_ms = legacy.newest_ms.max(decode_record(&v)?.resolved_ms);
        }
        if !legacy.hashes.is_empty() {
            inner.add(LEGACY_CHUNK, legacy);
        }
        *self.inner.lock() = inner;
        Ok(())
    }

    fn summary(&self, c: &TxEndChunk) -> Chunk {
        Chunk {
            newest_ms: c
                .ends
                .iter()
                .filter_map(|e| e.record.as_ref().map(|r| r.resolved_ms))
                .max()
                .unwrap_or(i64::MIN),
            hashes: c
                .ends
                .iter()
                .map(|e| self.hash(&e.transaction_id))
                .collect(),
        }
    }

    /// Resolved transactions kept (earlier builds' records not counted).
    pub fn len(&self) -> u64 {
        self.inner.lock().count
    }

    /// No resolved transaction kept, earlier builds' included.
    pub fn is_empty(&self) -> bool {
        self.inner.lock().chunks.is_empty()
    }

    /// Whether a forget op with these limits would drop anything.
    pub fn would_forget(&self, resolved_before_ms: i64, keep_at_most: u64) -> bool {
        let inner = self.inner.lock();
        (keep_at_most > 0 && inner.count > keep_at_most)
            || inner
                .chunks
                .values()
                .any(|c| c.newest_ms < resolved_before_ms)
    }

    /// The resolved record of `id` as the applied state holds it.
    pub fn find(&self, meta: &dyn MetaStore, id: &str) -> Result<Option<TxRecord>, MetaError> {
        let places = self.inner.lock().places_of(self.hash(id));
        read_from(&places, id, |k| meta.get(TREE, k))
    }

    /// At most `limit` resolved transactions, newest first (chunk by chunk); earlier builds'
    /// records after them, in id order.
    pub fn newest(
        &self,
        meta: &dyn MetaStore,
        limit: usize,
    ) -> Result<Vec<(String, TxRecord)>, MetaError> {
        let (chunks, legacy): (Vec<u64>, bool) = {
            let inner = self.inner.lock();
            let legacy = inner.chunks.contains_key(&LEGACY_CHUNK);
            let mut n = 0usize;
            let chunks = inner
                .chunks
                .iter()
                .rev()
                .filter(|(k, _)| **k != LEGACY_CHUNK)
                .take_while(|(_, c)| {
                    let more = n < limit;
                    n += c.hashes.len();
                    more
                })
                .map(|(k, _)| *k)
                .collect();
            (chunks, legacy)
        };
        let mut out = Vec::new();
        for n in chunks {
            // Forgotten since the index was read: nothing to list.
            let Some(v) = meta.get(TREE, &chunk_key(n))? else {
                continue;
            };
            let mut ends = decode_chunk(&v)?.ends;
            ends.reverse();
            out.extend(
                ends.into_iter()
                    .map(|e| (e.transaction_id, e.record.unwrap_or_default())),
            );
        }
        if legacy && out.len() < limit {
            let prefix = table_key(LEGACY, b"");
            for (k, v) in meta.scan_prefix(TREE, &prefix)? {
                let id = String::from_utf8_lossy(k.get(prefix.len()..).unwrap_or_default());
                out.push((id.into_owned(), decode_record(&v)?));
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Every resolved transaction kept, by id.
    pub fn list(&self, meta: &dyn MetaStore) -> Result<Vec<(String, TxRecord)>, MetaError> {
        let mut all = Vec::new();
        for (_, v) in meta.scan_prefix(TREE, &table_key(TABLE, b""))? {
            for e in decode_chunk(&v)?.ends {
                all.push((e.transaction_id, e.record.unwrap_or_default()));
            }
        }
        let prefix = table_key(LEGACY, b"");
        for (k, v) in meta.scan_prefix(TREE, &prefix)? {
            let id = String::from_utf8_lossy(k.get(prefix.len()..).unwrap_or_default());
            all.push((id.into_owned(), decode_record(&v)?));
        }
        Ok(all)
    }

    /// Takes an apply call's chunks (after its batch is written).
    pub(super) fn apply(&self, pending: Pending) {
        if pending.added.is_empty() && pending.removed.is_empty() {
            return;
        }
        let mut inner = self.inner.lock();
        let forgot = !pending.removed.is_empty();
        for n in pending.removed {
            inner.remove(n);
        }
        for (n, c) in pending.added {
            inner.add(n, c);
        }
        // A map keeps its capacity when emptied: after a burst of resolutions is forgotten,
        // give the memory back.
        if forgot && inner.places.len() < inner.places.capacity() / 4 {
            let keep = inner.places.len() * 2;
            inner.places.shrink_to(keep);
        }
    }

    /// The resolved record of `id` as this apply call sees it.
    pub(super) fn find_staged(
        &self,
        meta: &dyn MetaStore,
        staged: &Staged,
        pending: &Pending,
        id: &str,
    ) -> Result<Option<TxRecord>, MetaError> {
        let h = self.hash(id);
        let mut places = self.inner.lock().places_of(h);
        places.retain(|n| !pending.removed.contains(n));
        places.extend(
            pending
                .added
                .iter()
                .filter(|(_, c)| c.hashes.contains(&h))
                .map(|(n, _)| *n),
        );
        read_from(&places, id, |k| staged.get(meta, k))
    }

    /// Adds `ends` to the chunks of their resolution times' buckets.
    pub(super) fn add_ends(
        &self,
        meta: &dyn MetaStore,
        staged: &mut Staged,
        pending: &mut Pending,
        ends: Vec<TxEnded>,
    ) -> Result<(), MetaError> {
        let mut buckets: BTreeMap<u64, Vec<TxEnded>> = BTreeMap::new();
        for e in ends {
            let at = e.record.as_ref().map_or(0, |r| r.resolved_ms);
            let b = u64::try_from(at).unwrap_or(0) / BUCKET_MS;
            buckets.entry(b).or_default().push(e);
        }
        for (b, ends) in buckets {
            let chunk = TxEndChunk { ends };
            // A repeated field's records concatenate: appending needs no decoding.
            let mut value = staged.get(meta, &chunk_key(b))?.unwrap_or_default();
            chunk
                .encode(&mut value)
                .map_err(|e| corrupt("resolved transactions", e))?;
            staged.put(chunk_key(b), value);
            pending.added.push((b, self.summary(&chunk)));
        }
        Ok(())
    }

    /// Applies a forget op: chunks whose newest resolution is before the cutoff go, then the
    /// oldest ones while more than `keep_at_most` are kept; earlier builds' records go once
    /// all are before the cutoff.
    pub(super) fn forget(
        &self,
        meta: &dyn MetaStore,
        staged: &mut Staged,
        pending: &mut Pending,
        op: &TxForgetOp,
    ) -> Result<bool, MetaError> {
        // Every chunk as this call sees it (the index's, less those this call removed, and
        // those it wrote), oldest first, so the outcome does not depend on how the log's
        // entries were grouped into apply calls.
        let (chunks, legacy_old) = {
            let inner = self.inner.lock();
            // A chunk this call added to is one chunk (its newest time and count summed up).
            let mut merged: BTreeMap<u64, (i64, u64)> = BTreeMap::new();
            let index = inner
                .chunks
                .iter()
                .filter(|(n, _)| **n != LEGACY_CHUNK && !pending.removed.contains(n));
            for (n, c) in index.chain(pending.added.iter().map(|(n, c)| (n, c))) {
                let m = merged.entry(*n).or_insert((i64::MIN, 0));
                m.0 = m.0.max(c.newest_ms);
                m.1 += c.hashes.len() as u64;
            }
            let chunks: Vec<(u64, i64, u64)> =
                merged.into_iter().map(|(n, (t, k))| (n, t, k)).collect();
            let legacy_old = !pending.removed.contains(&LEGACY_CHUNK)
                && inner
                    .chunks
                    .get(&LEGACY_CHUNK)
                    .is_some_and(|c| c.newest_ms < op.resolved_before_ms);
            (chunks, legacy_old)
        };
        let mut count: u64 = chunks.iter().map(|c| c.2).sum();
        let mut gone: HashSet<u64> = HashSet::new();
        for &(n, newest_ms, k) in &chunks {
            if newest_ms < op.resolved_before_ms {
                gone.insert(n);
                count = count.saturating_sub(k);
            }
        }
        if op.keep_at_most > 0 {
            for &(n, _, k) in &chunks {
                if count <= op.keep_at_most {
                    break;
                }
                if gone.insert(n) {
                    count = count.saturating_sub(k);
                }
            }
        }
        for n in &gone {
            staged.delete(chunk_key(*n));
        }
        if legacy_old {
            for (k, _) in staged.scan_prefix(meta, &table_key(LEGACY, b""))? {
                staged.delete(k);
            }
            gone.insert(LEGACY_CHUNK);
        }
        let changed = !gone.is_empty();
        pending.added.retain(|(n, _)| !gone.contains(n));
        pending.removed.extend(gone);
        Ok(changed)
    }
}

/// Finds `id` in the chunks (or the legacy record) at `places`.
fn read_from(
    places: &[u64],
    id: &str,
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, MetaError>,
) -> Result<Option<TxRecord>, MetaError> {
    for &n in places {
        if n == LEGACY_CHUNK {
            if let Some(v) = get(&legacy_key(id))? {
                return Ok(Some(decode_record(&v)?));
            }
            continue;
        }
        let Some(v) = get(&chunk_key(n))? else {
            continue;
        };
        if let Some(e) = decode_chunk(&v)?
            .ends
            .into_iter()
            .find(|e| e.transaction_id == id)
        {
            return Ok(Some(e.record.unwrap_or_default()));
        }
    }
    Ok(None)
}

#[cfg(test)]
#[path = "tx_ended_tests.rs"]
mod tests;
