//! Consume queues: per (topic, queue id), fixed-size entries; queue offset N is entry N.
//!
//! Entry (32 bytes, little-endian): commit-log offset (8), size (4), tag hash (8) as in
//! RocketMQ, plus the store timestamp (8, for `offset_for_timestamp` and
//! `last_store_timestamp` without touching the commit log) and a CRC32C of the first 28 bytes
//! (4) so a torn entry is recognised. Files hold a fixed number of entries and are named by
//! the queue offset of their first entry (20 digits).
//!
//! Only the dispatcher writes (append, truncate, trim); readers take the file list under a
//! short read lock and `pread`. `max` is published with release ordering after the entries
//! are written, so a reader never sees an entry index it cannot read.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::commitlog::{list_offset_files, read_full};

pub const ENTRY_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEntry {
    pub phy: u64,
    pub size: u32,
    pub tag_hash: u64,
    pub store_ts: i64,
}

impl CqEntry {
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[0..8].copy_from_slice(&self.phy.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b[12..20].copy_from_slice(&self.tag_hash.to_le_bytes());
        b[20..28].copy_from_slice(&self.store_ts.to_le_bytes());
        let crc = crc32c::crc32c(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `None` for a torn, zeroed or corrupt entry.
    pub fn decode(b: &[u8]) -> Option<CqEntry> {
        use super::record::{i64_at, u32_at, u64_at};
        if b.len() < ENTRY_LEN || crc32c::crc32c(&b[..28]) != u32_at(b, 28) {
            return None;
        }
        let e = CqEntry {
            phy: u64_at(b, 0),
            size: u32_at(b, 8),
            tag_hash: u64_at(b, 12),
            store_ts: i64_at(b, 20),
        };
        (e.size > 0).then_some(e)
    }
}

struct CqFile {
    /// Queue offset of the first entry.
    base: u64,
    /// Entries the file can hold.
    cap: u64,
    path: PathBuf,
    file: File,
}

pub struct ConsumeQueue {
    pub topic: String,
    pub queue_id: u32,
    dir: PathBuf,
    per_file: u64,
    files: RwLock<Vec<Arc<CqFile>>>,
    min: AtomicU64,
    max: AtomicU64,
    last_ts: AtomicI64,
}

pub fn queue_dir(root: &Path, topic: &str, queue_id: u32) -> PathBuf {
    root.join(topic).join(queue_id.to_string())
}

impl ConsumeQueue {
    /// Opens the files of a queue as they are; call [`ConsumeQueue::recover`] before use.
    pub fn open(root: &Path, topic: &str, queue_id: u32, per_file: u64) -> io::Result<Self> {
        Self::open_dir(queue_dir(root, topic, queue_id), topic, queue_id, per_file)
    }

    /// Like [`ConsumeQueue::open`] for files kept in `dir` (the raft entry index reuses this
    /// fixed-entry file format).
    pub fn open_dir(dir: PathBuf, topic: &str, queue_id: u32, per_file: u64) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let listed = list_offset_files(&dir)?;
        let mut files = Vec::with_capacity(listed.len());
        for (i, (base, path)) in listed.iter().enumerate() {
            let file = OpenOptions::new().read(true).write(true).open(path)?;
            let count = file.metadata()?.len() / ENTRY_LEN as u64;
            let cap = match listed.get(i + 1) {
                Some((next, _)) => next.saturating_sub(*base),
                None => per_file.max(count),
            };
            files.push(Arc::new(CqFile {
                base: *base,
                cap,
                path: path.clone(),
                file,
            }));
        }
        let q = ConsumeQueue {
            topic: topic.to_owned(),
            queue_id,
            dir,
            per_file,
            files: RwLock::new(files),
            min: AtomicU64::new(0),
            max: AtomicU64::new(0),
            last_ts: AtomicI64::new(0),
        };
        Ok(q)
    }

    pub fn min(&self) -> u64 {
        self.min.load(Ordering::Acquire)
    }
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Acquire)
    }
    pub fn last_store_ts(&self) -> Option<i64> {
        (self.max() > self.min()).then(|| self.last_ts.load(Ordering::Acquire))
    }

    /// Keeps only entries below queue offset `durable` (what the checkpoint recorded as
    /// fsynced; anything after may be torn) that are valid and point below `keep_below`, and
    /// sets min/max. Dispatcher only.
    pub fn recover(&self, keep_below: u64, log_min: u64, durable: u64) -> io::Result<()> {
        let mut files = self.files.write();
        let mut max = 0;
        while let Some(last) = files.last().cloned() {
            let len = last.file.metadata()?.len();
            let count = (len / ENTRY_LEN as u64)
                .min(last.cap)
                .min(durable.saturating_sub(last.base));
            let keep = partition(&last.file, count, |e| e.is_some_and(|e| e.phy < keep_below))?;
            if keep == 0 && files.len() > 1 {
                fs::remove_file(&last.path)?;
                files.pop();
                continue;
            }
            if keep * ENTRY_LEN as u64 != len {
                last.file.set_len(keep * ENTRY_LEN as u64)?;
            }
            max = last.base + keep;
            break;
        }
        let min = files.first().map_or(0, |f| f.base);
        self.min.store(min, Ordering::Release);
        self.max.store(max, Ordering::Release);
        drop(files);
        self.refresh_last_ts()?;
        self.trim_head(log_min)
    }

    fn refresh_last_ts(&self) -> io::Result<()> {
        let max = self.max();
        let ts = if max > self.min() {
            self.entry(max - 1)?.map_or(0, |e| e.store_ts)
        } else {
            0
        };
        self.last_ts.store(ts, Ordering::Release);
        Ok(())
    }

    fn file_for(&self, index: u64) -> Option<Arc<CqFile>> {
        let files = self.files.read();
        let i = files.partition_point(|f| f.base <= index);
        let f = files.get(i.checked_sub(1)?)?;
        (index < f.base + f.cap).then(|| f.clone())
    }

    /// The entry at queue offset `index`, if present and valid.
    pub fn entry(&self, index: u64) -> io::Result<Option<CqEntry>> {
        let Some(f) = self.file_for(index) else {
            return Ok(None);
        };
        let mut b = [0u8; ENTRY_LEN];
        let n = read_full(&f.file, &mut b, (index - f.base) * ENTRY_LEN as u64)?;
        Ok(if n == ENTRY_LEN {
            CqEntry::decode(&b)
        } else {
            None
        })
    }

    /// Up to `n` entries from `from`, stopping at `max` or at the first unreadable entry.
    pub fn entries(&self, from: u64, n: usize) -> io::Result<Vec<CqEntry>> {
        let end = self.max().min(from.saturating_add(n as u64));
        let mut out = Vec::with_capacity(end.saturating_sub(from) as usize);
        let mut at = from;
        let mut buf = Vec::new();
        while at < end {
            let Some(f) = self.file_for(at) else { break };
            let upto = end.min(f.base + f.cap);
            buf.resize(((upto - at) as usize) * ENTRY_LEN, 0);
            let got = read_full(&f.file, &mut buf, (at - f.base) * ENTRY_LEN as u64)?;
            for chunk in buf[..got - got % ENTRY_LEN].chunks_exact(ENTRY_LEN) {
                match CqEntry::decode(chunk) {
                    Some(e) => out.push(e),
                    None => return Ok(out),
                }
            }
            if got < buf.len() {
                break;
            }
            at = upto;
        }
        Ok(out)
    }

    /// Appends encoded entries for queue offsets `max..`. Dispatcher only; call
    /// [`ConsumeQueue::publish`] afterwards to make them visible.
    pub fn write(&self, first: u64, mut data: &[u8]) -> io::Result<()> {
        let mut at = first;
        while !data.is_empty() {
            let f = match self.file_for(at) {
                Some(f) => f,
                None => self.create_file(at)?,
            };
            let room = ((f.base + f.cap - at) as usize) * ENTRY_LEN;
            let n = room.min(data.len());
            f.file
                .write_all_at(&data[..n], (at - f.base) * ENTRY_LEN as u64)?;
            data = &data[n..];
            at += (n / ENTRY_LEN) as u64;
        }
        Ok(())
    }

    fn create_file(&self, at: u64) -> io::Result<Arc<CqFile>> {
        let path = self.dir.join(format!("{at:020}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let f = Arc::new(CqFile {
            base: at,
            cap: self.per_file,
            path,
            file,
        });
        self.files.write().push(f.clone());
        Ok(f)
    }

    /// True when the queue holds no entries and no files.
    pub fn is_empty(&self) -> bool {
        self.files
            .read()
            .iter()
            .all(|f| f.file.metadata().map_or(true, |m| m.len() == 0))
            && self.max() == self.min()
    }

    /// Makes an empty queue start at queue offset `first`; its (empty) files go, so the
    /// next write creates one starting there. Dispatcher only.
    pub fn start_at(&self, first: u64) -> io::Result<()> {
        for f in self.files.write().drain(..) {
            fs::remove_file(&f.path)?;
        }
        self.min.store(first, Ordering::Release);
        self.max.store(first, Ordering::Release);
        Ok(())
    }

    /// Empties the queue and makes it start at `first` durably: its files go and an empty file
    /// named `first` remains, which [`ConsumeQueue::recover`] reads back as min = max = first.
    pub fn reset_to(&self, first: u64) -> io::Result<()> {
        let mut files = self.files.write();
        for f in files.drain(..) {
            fs::remove_file(&f.path)?;
        }
        let path = self.dir.join(format!("{first:020}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.sync_all()?;
        super::commitlog::sync_dir(&self.dir)?;
        files.push(Arc::new(CqFile {
            base: first,
            cap: self.per_file,
            path,
            file,
        }));
        self.min.store(first, Ordering::Release);
        self.max.store(first, Ordering::Release);
        self.last_ts.store(0, Ordering::Release);
        Ok(())
    }

    /// The commit-log offset just past the last entry (where a rebuild of this queue resumes),
    /// or `None` when the queue holds no entry.
    pub fn end_phy(&self) -> io::Result<Option<u64>> {
        let max = self.max();
        if max == self.min() {
            return Ok(None);
        }
        Ok(self.entry(max - 1)?.map(|e| e.phy + u64::from(e.size)))
    }

    pub fn publish(&self, max: u64, last_ts: i64) {
        self.last_ts.store(last_ts, Ordering::Release);
        self.max.store(max, Ordering::Release);
    }

    /// Drops entries from queue offset `count` on. Dispatcher only.
    pub fn truncate(&self, count: u64) -> io::Result<()> {
        if count >= self.max() {
            return Ok(());
        }
        let count = count.max(self.min());
        self.max.store(count, Ordering::Release);
        let mut files = self.files.write();
        while files.len() > 1 && files.last().is_some_and(|f| f.base >= count) {
            if let Some(f) = files.pop() {
                fs::remove_file(&f.path)?;
            }
        }
        if let Some(f) = files.last() {
            f.file
                .set_len(count.saturating_sub(f.base) * ENTRY_LEN as u64)?;
        }
        drop(files);
        self.refresh_last_ts()
    }

    /// Drops whole files whose entries all point below `log_min` (never the last file) and
    /// moves `min` to the first entry at or above it. Dispatcher only.
    pub fn trim_head(&self, log_min: u64) -> io::Result<()> {
        let max = self.max();
        loop {
            let files = self.files.read();
            if files.len() < 2 {
                break;
            }
            let first = files[0].clone();
            let next_base = files[1].base;
            drop(files);
            match self.entry(next_base - 1)? {
                Some(e) if e.phy < log_min => {
                    self.files.write().remove(0);
                    fs::remove_file(&first.path)?;
                }
                _ => break,
            }
        }
        // Tests hold a trim here: head files gone, `min` not moved yet (every trimmed queue
        // passes here, the Raft entry index's too, on the writer's thread).
        fail::fail_point!("store::cq::trim_head_files_removed");
        let Some(first) = self.files.read().first().cloned() else {
            return Ok(());
        };
        let count = (max.saturating_sub(first.base)).min(first.cap);
        let below = partition(&first.file, count, |e| e.is_some_and(|e| e.phy < log_min))?;
        let min = (first.base + below).max(self.min()).min(max);
        self.min.store(min, Ordering::Release);
        Ok(())
    }

    /// The queue offset of the first file's first entry.
    fn first_base(&self) -> u64 {
        self.files.read().first().map_or(0, |f| f.base)
    }

    /// The first queue offset (at least `min`) whose entry points at or above commit-log
    /// `offset`.
    pub fn count_below(&self, offset: u64) -> io::Result<u64> {
        let (mut lo, mut hi) = (self.min(), self.max());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry(mid)? {
                Some(e) if e.phy < offset => lo = mid + 1,
                // Its file was removed by a trim under way: everything in it pointed below
                // the log's start.
                None if mid < self.first_base() => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    /// fsyncs the files holding queue offsets `from..`.
    pub fn sync_from(&self, from: u64) -> io::Result<()> {
        let files: Vec<Arc<CqFile>> = self.files.read().clone();
        for f in files.iter().filter(|f| f.base + f.cap > from) {
            f.file.sync_data()?;
        }
        Ok(())
    }

    /// The first queue offset whose entry was stored at or after `ts` (`max` when none).
    pub fn offset_for_timestamp(&self, ts: i64) -> io::Result<u64> {
        let (mut lo, mut hi) = (self.min(), self.max());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry(mid)? {
                Some(e) if e.store_ts < ts => lo = mid + 1,
                // Removed by a trim under way: older than what is left.
                None if mid < self.first_base() => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    /// Bytes of all files of this queue.
    pub fn disk_bytes(&self) -> u64 {
        self.files
            .read()
            .iter()
            .filter_map(|f| f.file.metadata().ok())
            .map(|m| m.len())
            .sum()
    }
}

/// Number of leading entries of `file` (first `count`) for which `pred` holds, assuming it
/// holds on a prefix (binary search).
fn partition(file: &File, count: u64, pred: impl Fn(Option<CqEntry>) -> bool) -> io::Result<u64> {
    let (mut lo, mut hi) = (0u64, count);
    let mut b = [0u8; ENTRY_LEN];
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let n = read_full(file, &mut b, mid * ENTRY_LEN as u64)?;
        let e = if n == ENTRY_LEN {
            CqEntry::decode(&b)
        } else {
            None
        };
        if pred(e) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}
