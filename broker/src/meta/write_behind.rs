//! A write-behind layer over a [`MetaStore`]: writes are kept in memory, visible to reads at
//! once, and reach the store below as one atomic batch per `interval` (or per `max_keys`
//! buffered keys, or at `flush`), written by a thread of its own so that the writer (the Raft
//! thread's apply) never waits for the store below.
//!
//! Why: the replicated state is written once per applied chunk of the log, and sled seals its
//! log buffer on every multi-key batch (a write and a file sync each): with idempotent sends
//! that was a sled batch per few hundred messages, on every replica, a third of a follower's
//! CPU. Buffered, a hot key (a queue's producer sequences, the applied index) is written once
//! per interval whatever its rate.
//!
//! Crash semantics are those of the store's own unflushed writes: what survives is the state
//! after some prefix of the writes, because the buffer goes down as one batch and a write to
//! another tree first sends the buffer down. A broker already treats its state store as lagging
//! the log (the applied index is written with the state, and the log is re-applied from it).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{Entries, MetaError, MetaStore, WriteOp};

/// The buffered writes of one tree: `None` is a delete.
type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Writes waiting to go down, all of one tree (one tree at a time keeps each hand-down one
/// atomic batch).
#[derive(Default)]
struct Buffer {
    tree: String,
    /// Taking writes.
    active: Overlay,
    /// When the oldest write in `active` was made.
    since: Option<Instant>,
    /// Being written below by the hand-down thread (older than `active`).
    sealed: Option<Arc<Overlay>>,
    /// Keys of `active` that are absent below and in `sealed` (put with `PutNew` first): a
    /// delete of one drops it from `active` instead of sending a delete down.
    fresh: HashSet<Vec<u8>>,
}

impl Buffer {
    /// The buffered value of a key: `Some(None)` is a buffered delete.
    fn lookup(&self, tree: &str, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if self.tree != tree {
            return None;
        }
        self.active
            .get(key)
            .or_else(|| self.sealed.as_ref().and_then(|s| s.get(key)))
            .cloned()
    }
}

pub struct WriteBehind {
    inner: Arc<dyn MetaStore>,
    buf: Mutex<Buffer>,
    /// Wakes the hand-down thread early (a full buffer).
    wake: Condvar,
    /// Held by whoever writes below, so hand-downs land in the order they were sealed.
    writing: Mutex<()>,
    interval: Duration,
    max_keys: usize,
}

/// Past this many keys a writer hands the buffer down itself (the store below is not keeping
/// up), which bounds the memory held.
const HARD_LIMIT_FACTOR: usize = 16;

impl WriteBehind {
    /// Wraps `inner`; a background thread hands the buffer down once it is `interval` old or
    /// holds `max_keys` keys (it stops when the last handle is dropped).
    pub fn new(inner: Arc<dyn MetaStore>, interval: Duration, max_keys: usize) -> Arc<Self> {
        let this = Arc::new(WriteBehind {
            inner,
            buf: Mutex::new(Buffer::default()),
            wake: Condvar::new(),
            writing: Mutex::new(()),
            interval,
            max_keys: max_keys.max(1),
        });
        let weak = Arc::downgrade(&this);
        let spawned = std::thread::Builder::new()
            .name("sluice-meta-wb".into())
            .spawn(move || hand_down_loop(weak, interval));
        if let Err(e) = spawned {
            // Writers then hand the buffer down themselves at the hard limit, and flush does.
            tracing::warn!(error = %e, "no write-behind thread; the buffer goes down with writes");
        }
        this
    }

    /// Seals the active writes and writes them below as one batch. With `force` false, only
    /// when they are due (old or many). The caller holds `writing`.
    fn hand_down(&self, force: bool) -> Result<(), MetaError> {
        let (tree, sealed) = {
            let mut buf = self.buf.lock();
            let due = buf.since.is_some_and(|s| s.elapsed() >= self.interval)
                || buf.active.len() >= self.max_keys;
            if buf.active.is_empty() || !(force || due) {
                return Ok(());
            }
            let sealed = Arc::new(std::mem::take(&mut buf.active));
            buf.fresh.clear();
            buf.since = None;
            buf.sealed = Some(sealed.clone());
            (buf.tree.clone(), sealed)
        };
        let ops: Vec<WriteOp> = sealed
            .iter()
            .map(|(k, v)| match v {
                Some(v) => WriteOp::Put(k.clone(), v.clone()),
                None => WriteOp::Delete(k.clone()),
            })
            .collect();
        let written = self.inner.write_batch(&tree, &ops);
        let mut buf = self.buf.lock();
        match written {
            Ok(()) => buf.sealed = None,
            Err(_) => {
                // Kept buffered (newer writes on top), so reads stay right; retried later.
                let newer = std::mem::take(&mut buf.active);
                let mut merged = (*sealed).clone();
                merged.extend(newer);
                buf.active = merged;
                buf.since.get_or_insert_with(Instant::now);
                buf.sealed = None;
            }
        }
        written
    }
}

fn hand_down_loop(weak: Weak<WriteBehind>, interval: Duration) {
    loop {
        let Some(this) = weak.upgrade() else {
            return;
        };
        {
            let mut buf = this.buf.lock();
            let full = buf.active.len() >= this.max_keys;
            if !full {
                this.wake.wait_for(&mut buf, interval);
            }
        }
        let _writing = this.writing.lock();
        if let Err(e) = this.hand_down(false) {
            tracing::error!(error = %e, "the metadata write-behind buffer could not be written; retried");
        }
    }
}

impl MetaStore for WriteBehind {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        if let Some(v) = self.buf.lock().lookup(tree, key) {
            return Ok(v);
        }
        // Not buffered when looked at: the store below has it, or a newer value handed down
        // since (a hand-down writes below before it lets go of its writes).
        self.inner.get(tree, key)
    }

    fn write_batch(&self, tree: &str, ops: &[WriteOp]) -> Result<(), MetaError> {
        self.write_batch_owned(tree, ops.to_vec())
    }

    fn write_batch_owned(&self, tree: &str, ops: Vec<WriteOp>) -> Result<(), MetaError> {
        let mut buf = self.buf.lock();
        while buf.tree != tree && (!buf.active.is_empty() || buf.sealed.is_some()) {
            // Another tree: what is buffered goes down first, so the order holds across trees.
            drop(buf);
            self.flush_buffer()?;
            buf = self.buf.lock();
        }
        if buf.tree != tree {
            buf.tree = tree.to_string();
        }
        for op in ops {
            match op {
                WriteOp::Put(k, v) => {
                    buf.active.insert(k, Some(v));
                }
                WriteOp::PutNew(k, v) => {
                    let absent = !buf.active.contains_key(&k)
                        && !buf.sealed.as_ref().is_some_and(|s| s.contains_key(&k));
                    if absent {
                        buf.fresh.insert(k.clone());
                    }
                    buf.active.insert(k, Some(v));
                }
                WriteOp::Delete(k) if buf.fresh.remove(&k) => {
                    buf.active.remove(&k);
                }
                WriteOp::Delete(k) => {
                    buf.active.insert(k, None);
                }
            };
        }
        buf.since.get_or_insert_with(Instant::now);
        let keys = buf.active.len();
        drop(buf);
        if keys >= self.max_keys.saturating_mul(HARD_LIMIT_FACTOR) {
            // The writes are buffered (visible, and retried at the next hand-down): a failure
            // to hand them down now is not this write's.
            if let Err(e) = self.flush_buffer() {
                tracing::error!(error = %e, "the metadata write-behind buffer could not be written; retried");
            }
        } else if keys >= self.max_keys {
            self.wake.notify_one();
        }
        Ok(())
    }

    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Entries, MetaError> {
        // Under the lock, so no newer hand-down is sealed meanwhile: below, then the sealed
        // writes, then the active ones, each newer than the one before.
        let buf = self.buf.lock();
        let below = self.inner.scan_prefix(tree, prefix)?;
        if buf.tree != tree || (buf.active.is_empty() && buf.sealed.is_none()) {
            return Ok(below);
        }
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = below.into_iter().collect();
        let layers = buf.sealed.as_deref().into_iter().chain([&buf.active]);
        for layer in layers {
            let buffered = layer
                .range(prefix.to_vec()..)
                .take_while(|(k, _)| k.starts_with(prefix));
            for (k, v) in buffered {
                match v {
                    Some(v) => merged.insert(k.clone(), v.clone()),
                    None => merged.remove(k),
                };
            }
        }
        Ok(merged.into_iter().collect())
    }

    fn flush(&self) -> Result<(), MetaError> {
        self.flush_buffer()?;
        self.inner.flush()
    }
}

impl WriteBehind {
    /// Everything buffered goes below now (after a hand-down under way).
    fn flush_buffer(&self) -> Result<(), MetaError> {
        let _writing = self.writing.lock();
        self.hand_down(true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::MemMeta;
    use super::*;
    use proptest::prelude::*;

    /// Every key of every tree, with its value.
    type Whole = BTreeMap<(String, Vec<u8>), Vec<u8>>;

    /// Records the state below after every batch handed down.
    #[derive(Default)]
    struct Recorder {
        mem: MemMeta,
        states: Mutex<Vec<Whole>>,
    }

    impl Recorder {
        fn state(&self) -> Whole {
            let mut out = BTreeMap::new();
            for tree in ["a", "b"] {
                for (k, v) in self.mem.scan_prefix(tree, b"").unwrap() {
                    out.insert((tree.to_string(), k), v);
                }
            }
            out
        }
    }

    impl MetaStore for Recorder {
        fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
            self.mem.get(tree, key)
        }
        fn write_batch(&self, tree: &str, ops: &[WriteOp]) -> Result<(), MetaError> {
            self.mem.write_batch(tree, ops)?;
            let s = self.state();
            self.states.lock().push(s);
            Ok(())
        }
        fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Entries, MetaError> {
            self.mem.scan_prefix(tree, prefix)
        }
        fn flush(&self) -> Result<(), MetaError> {
            Ok(())
        }
    }

    fn slow(inner: Arc<dyn MetaStore>, max_keys: usize) -> Arc<WriteBehind> {
        // An interval no test reaches: hand-downs come from `max_keys`, tree changes, flush.
        WriteBehind::new(inner, Duration::from_secs(3600), max_keys)
    }

    #[test]
    fn reads_see_buffered_writes_and_flush_hands_them_down() {
        let below = Arc::new(MemMeta::default());
        let wb = slow(below.clone(), 1000);
        wb.put("t", b"a/1", b"x").unwrap();
        wb.put("t", b"a/2", b"y").unwrap();
        below.put("t", b"a/3", b"below").unwrap();
        wb.delete("t", b"a/3").unwrap();
        assert_eq!(below.get("t", b"a/1").unwrap(), None, "buffered, not below");
        assert_eq!(wb.get("t", b"a/1").unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(
            wb.get("t", b"a/3").unwrap(),
            None,
            "a buffered delete hides below"
        );
        let keys: Vec<_> = wb
            .scan_prefix("t", b"a/")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"a/1".to_vec(), b"a/2".to_vec()]);
        wb.flush().unwrap();
        assert_eq!(below.get("t", b"a/2").unwrap().as_deref(), Some(&b"y"[..]));
        assert_eq!(below.get("t", b"a/3").unwrap(), None);
    }

    #[test]
    fn a_new_key_deleted_before_its_hand_down_never_goes_down() {
        let rec = Arc::new(Recorder::default());
        let wb = slow(rec.clone(), 1000);
        let new = |k: &[u8]| WriteOp::PutNew(k.to_vec(), b"v".to_vec());
        wb.write_batch("t", &[new(b"a"), new(b"b")]).unwrap();
        wb.write_batch("t", &[WriteOp::Put(b"a".to_vec(), b"w".to_vec())])
            .unwrap();
        wb.delete("t", b"a").unwrap();
        assert_eq!(wb.get("t", b"a").unwrap(), None);
        wb.flush().unwrap();
        // One hand-down, holding "b" alone: neither a put nor a delete of "a" went down.
        let states = rec.states.lock().clone();
        assert_eq!(states.len(), 1);
        assert_eq!(rec.get("t", b"b").unwrap().as_deref(), Some(&b"v"[..]));
        // Once below, a delete goes down as a delete.
        wb.delete("t", b"b").unwrap();
        wb.flush().unwrap();
        assert_eq!(rec.get("t", b"b").unwrap(), None);
        assert_eq!(rec.states.lock().len(), 2);
    }

    /// Bounded wait for a condition the hand-down thread brings about.
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "{what}: not within 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_buffer_goes_down_at_max_keys_and_after_the_interval() {
        let below = Arc::new(MemMeta::default());
        let wb = slow(below.clone(), 2);
        wb.put("t", b"k1", b"1").unwrap();
        assert_eq!(below.get("t", b"k1").unwrap(), None);
        wb.put("t", b"k2", b"2").unwrap();
        eventually("handed down at max_keys", || {
            below.get("t", b"k2").unwrap().is_some()
        });
        assert_eq!(below.get("t", b"k1").unwrap().as_deref(), Some(&b"1"[..]));

        let below = Arc::new(MemMeta::default());
        let wb = WriteBehind::new(below.clone(), Duration::from_millis(5), 1000);
        wb.put("t", b"k", b"v").unwrap();
        eventually("handed down after the interval", || {
            below.get("t", b"k").unwrap().is_some()
        });
        drop(wb);
    }

    #[test]
    fn a_writer_hands_down_itself_at_the_hard_limit() {
        let below = Arc::new(MemMeta::default());
        let wb = slow(below.clone(), 1);
        // The hand-down thread may or may not have run: at 16 keys the writer does it.
        let ops: Vec<WriteOp> = (0u8..16).map(|k| WriteOp::Put(vec![k], vec![k])).collect();
        wb.write_batch("t", &ops).unwrap();
        assert_eq!(below.scan_prefix("t", b"").unwrap().len(), 16);
    }

    /// Reads racing hand-downs never go back in time: a value once seen is never followed by
    /// an older one, and the last write is what remains.
    #[test]
    fn reads_racing_hand_downs_never_see_an_older_value() {
        let below = Arc::new(MemMeta::default());
        let wb = WriteBehind::new(below.clone(), Duration::from_micros(200), 3);
        let writer = {
            let wb = wb.clone();
            std::thread::spawn(move || {
                for n in 1u32..=20_000 {
                    let key = [(n % 4) as u8];
                    wb.put("t", &key, &n.to_be_bytes()).unwrap();
                }
            })
        };
        let read = |k: u8| -> u32 {
            wb.get("t", &[k])
                .unwrap()
                .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
                .map_or(0, u32::from_be_bytes)
        };
        let mut seen = [0u32; 4];
        while !writer.is_finished() {
            for k in 0u8..4 {
                let v = read(k);
                assert!(
                    v >= seen[k as usize],
                    "key {k}: {v} after {}",
                    seen[k as usize]
                );
                seen[k as usize] = v;
            }
        }
        writer.join().unwrap();
        wb.flush().unwrap();
        for k in 0u8..4 {
            let last = 20_000 - (20_000 - u32::from(k)) % 4;
            assert_eq!(read(k), last);
            assert_eq!(
                below.get("t", &[k]).unwrap(),
                Some(last.to_be_bytes().to_vec())
            );
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// The last flag: a `PutNew` if the key is absent (the contract of `PutNew`).
        Put(bool, u8, u8, bool),
        Delete(bool, u8),
        Batch(bool, Vec<(u8, Option<u8>)>),
        Flush,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<bool>(), 0u8..8, any::<u8>(), any::<bool>())
                .prop_map(|(t, k, v, new)| Op::Put(t, k, v, new)),
            (any::<bool>(), 0u8..8).prop_map(|(t, k)| Op::Delete(t, k)),
            (
                any::<bool>(),
                prop::collection::vec((0u8..8, prop::option::of(any::<u8>())), 1..5)
            )
                .prop_map(|(t, b)| Op::Batch(t, b)),
            Just(Op::Flush),
        ]
    }

    fn tree(b: bool) -> &'static str {
        if b {
            "a"
        } else {
            "b"
        }
    }

    proptest! {
        /// Reads through the layer equal a plain store's after every write, and every state the
        /// store below ever holds is the plain store's state after some prefix of the writes
        /// (what a crash could leave).
        #[test]
        fn matches_a_plain_store_and_hands_down_only_prefixes(
            ops in prop::collection::vec(op(), 1..60),
            max_keys in 1usize..6,
        ) {
            let rec = Arc::new(Recorder::default());
            let wb = slow(rec.clone(), max_keys);
            let model = Recorder::default();
            let mut prefixes = vec![model.state()];
            for op in &ops {
                let (t, batch): (&str, Vec<WriteOp>) = match op {
                    Op::Put(t, k, v, new) => {
                        let absent = model.mem.get(tree(*t), &[*k]).unwrap().is_none();
                        let op = match *new && absent {
                            true => WriteOp::PutNew(vec![*k], vec![*v]),
                            false => WriteOp::Put(vec![*k], vec![*v]),
                        };
                        (tree(*t), vec![op])
                    }
                    Op::Delete(t, k) => (tree(*t), vec![WriteOp::Delete(vec![*k])]),
                    Op::Batch(t, b) => (tree(*t), b.iter().map(|(k, v)| match v {
                        Some(v) => WriteOp::Put(vec![*k], vec![*v]),
                        None => WriteOp::Delete(vec![*k]),
                    }).collect()),
                    Op::Flush => {
                        wb.flush().unwrap();
                        continue;
                    }
                };
                wb.write_batch(t, &batch).unwrap();
                model.mem.write_batch(t, &batch).unwrap();
                prefixes.push(model.state());
                for tr in ["a", "b"] {
                    prop_assert_eq!(wb.scan_prefix(tr, b"").unwrap(), model.scan_prefix(tr, b"").unwrap());
                    for k in 0u8..8 {
                        prop_assert_eq!(wb.get(tr, &[k]).unwrap(), model.get(tr, &[k]).unwrap());
                    }
                }
            }
            wb.flush().unwrap();
            prop_assert_eq!(rec.state(), model.state());
            for s in rec.states.lock().iter() {
                prop_assert!(prefixes.contains(s), "the store below held a state no prefix of the writes makes: {:?}", s);
            }
        }
    }
}
