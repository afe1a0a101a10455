//! The message index: find records by message id or by (topic, key).
//!
//! Index files are hash tables with chained entries, named by the commit-log offset of their
//! first entry (20 digits). Layout: a 64-byte header, a slot table (`slots` x u32: 1-based
//! number of the newest entry of the bucket, 0 = empty), then entries of 20 bytes: key hash
//! (4), previous entry of the bucket (4, 1-based, 0 = none), commit-log offset (8), CRC32C of
//! the first 16 bytes (4). Entries are appended in commit-log order.
//!
//! The newest file is *active*: its slot table lives in memory (only the dispatcher writes it,
//! readers take a short read lock) and its entries are appended to the file. When full it is
//! *sealed*: slot table and header are written and fsynced, and readers then use the file.
//! Because slot table and chain links follow deterministically from the ordered entries, an
//! active file is recovered by replaying its valid entry prefix; nothing in it has to be
//! trusted beyond the per-entry CRC and the checkpoint.
//!
//! Hashes collide, so every hit is verified against the record in the commit log.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::commitlog::{list_offset_files, read_full};
use super::record::{u32_at, u64_at};

const MAGIC: u32 = 0x534C_4958;
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 64;
pub const ENTRY_LEN: usize = 20;

/// Index key of a message id.
pub fn id_hash(message_id: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(b"\x01"), message_id)
}

/// Index key of a business key within a topic.
pub fn key_hash(topic: &str, key: &[u8]) -> u32 {
    let h = crc32c::crc32c_append(crc32c::crc32c(b"\x02"), topic.as_bytes());
    crc32c::crc32c_append(crc32c::crc32c_append(h, b"\x00"), key)
}

/// The 1-based number of the `i`th pending entry of a file holding `count` entries.
fn entry_number(count: u32, i: usize) -> u32 {
    count.saturating_add(u32::try_from(i + 1).unwrap_or(u32::MAX))
}

fn encode_entry(hash: u32, prev: u32, phy: u64) -> [u8; ENTRY_LEN] {
    let mut b = [0u8; ENTRY_LEN];
    b[0..4].copy_from_slice(&hash.to_le_bytes());
    b[4..8].copy_from_slice(&prev.to_le_bytes());
    b[8..16].copy_from_slice(&phy.to_le_bytes());
    let crc = crc32c::crc32c(&b[..16]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    b
}

/// `(hash, prev, phy)` of a valid entry.
fn decode_entry(b: &[u8]) -> Option<(u32, u32, u64)> {
    (b.len() >= ENTRY_LEN && crc32c::crc32c(&b[..16]) == u32_at(b, 16) && b[..16] != [0u8; 16])
        .then(|| (u32_at(b, 0), u32_at(b, 4), u64_at(b, 8)))
}

#[derive(Debug, Clone, Copy)]
struct Header {
    slots: u32,
    max_entries: u32,
    count: u32,
    sealed: bool,
    begin: u64,
    end: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.slots.to_le_bytes());
        b[12..16].copy_from_slice(&self.max_entries.to_le_bytes());
        b[16..20].copy_from_slice(&self.count.to_le_bytes());
        b[20..24].copy_from_slice(&u32::from(self.sealed).to_le_bytes());
        b[24..32].copy_from_slice(&self.begin.to_le_bytes());
        b[32..40].copy_from_slice(&self.end.to_le_bytes());
        let crc = crc32c::crc32c(&b[..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER_LEN as usize
            || u32_at(b, 0) != MAGIC
            || u32_at(b, 4) != VERSION
            || crc32c::crc32c(&b[..40]) != u32_at(b, 40)
        {
            return None;
        }
        let h = Header {
            slots: u32_at(b, 8),
            max_entries: u32_at(b, 12),
            count: u32_at(b, 16),
            sealed: u32_at(b, 20) == 1,
            begin: u64_at(b, 24),
            end: u64_at(b, 32),
        };
        (h.slots > 0 && h.count <= h.max_entries).then_some(h)
    }
}

struct IndexFile {
    begin: u64,
    path: PathBuf,
    file: File,
    slots: u32,
    max_entries: u32,
    /// Entries readers may follow.
    count: AtomicU32,
    /// Commit-log offset of the newest entry.
    end: AtomicU64,
    /// The slot table of the active file; `None` once sealed (then it is in the file).
    mem_slots: Option<RwLock<Vec<u32>>>,
}

impl IndexFile {
    fn entries_at(&self) -> u64 {
        HEADER_LEN + u64::from(self.slots) * 4
    }

    fn slot(&self, hash: u32) -> io::Result<u32> {
        let s = hash % self.slots;
        if let Some(m) = &self.mem_slots {
            return Ok(m.read()[s as usize]);
        }
        let mut b = [0u8; 4];
        let n = read_full(&self.file, &mut b, HEADER_LEN + u64::from(s) * 4)?;
        Ok(if n == 4 { u32::from_le_bytes(b) } else { 0 })
    }

    fn entry(&self, number: u32) -> io::Result<Option<(u32, u32, u64)>> {
        let mut b = [0u8; ENTRY_LEN];
        let at = self.entries_at() + u64::from(number - 1) * ENTRY_LEN as u64;
        let n = read_full(&self.file, &mut b, at)?;
        Ok(if n == ENTRY_LEN {
            decode_entry(&b)
        } else {
            None
        })
    }

    fn header(&self, sealed: bool) -> Header {
        Header {
            slots: self.slots,
            max_entries: self.max_entries,
            count: self.count.load(Ordering::Acquire),
            sealed,
            begin: self.begin,
            end: self.end.load(Ordering::Acquire),
        }
    }

    /// Creates a new active file whose first entry will be at commit-log offset `begin`.
    fn create(dir: &Path, begin: u64, slots: u32, max_entries: u32) -> io::Result<IndexFile> {
        let path = dir.join(format!("{begin:020}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let f = IndexFile {
            begin,
            path,
            file,
            slots,
            max_entries,
            count: AtomicU32::new(0),
            end: AtomicU64::new(begin),
            mem_slots: Some(RwLock::new(vec![0; slots as usize])),
        };
        f.file.write_all_at(&f.header(false).encode(), 0)?;
        Ok(f)
    }

    /// Loads a file as active, keeping the longest valid prefix of entries below `keep_below`.
    fn load_active(path: PathBuf, begin: u64, keep_below: u64) -> io::Result<Option<IndexFile>> {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let mut hb = [0u8; HEADER_LEN as usize];
        read_full(&file, &mut hb, 0)?;
        let Some(h) = Header::decode(&hb) else {
            return Ok(None);
        };
        let entries_at = HEADER_LEN + u64::from(h.slots) * 4;
        let len = file.metadata()?.len();
        let avail =
            (len.saturating_sub(entries_at) / ENTRY_LEN as u64).min(u64::from(h.max_entries));
        let mut slots = vec![0u32; h.slots as usize];
        let mut count: u32 = 0;
        let mut end = begin;
        let mut buf = vec![0u8; 4096 * ENTRY_LEN];
        'scan: while u64::from(count) < avail {
            let want = ((avail - u64::from(count)) as usize).min(4096) * ENTRY_LEN;
            let at = entries_at + u64::from(count) * ENTRY_LEN as u64;
            let got = read_full(&file, &mut buf[..want], at)?;
            for b in buf[..got - got % ENTRY_LEN].chunks_exact(ENTRY_LEN) {
                let Some((hash, prev, phy)) = decode_entry(b) else {
                    break 'scan;
                };
                let s = (hash % h.slots) as usize;
                if phy >= keep_below || phy < end || prev != slots[s] {
                    break 'scan;
                }
                count += 1;
                slots[s] = count;
                end = phy;
            }
            if got < want {
                break;
            }
        }
        file.set_len(entries_at + u64::from(count) * ENTRY_LEN as u64)?;
        if h.sealed {
            // Its on-disk slot table may name dropped entries: mark it active again.
            let open = Header {
                count,
                sealed: false,
                end,
                ..h
            };
            file.write_all_at(&open.encode(), 0)?;
        }
        Ok(Some(IndexFile {
            begin,
            path,
            file,
            slots: h.slots,
            max_entries: h.max_entries,
            count: AtomicU32::new(count),
            end: AtomicU64::new(end),
            mem_slots: Some(RwLock::new(slots)),
        }))
    }

    /// Writes the slot table and a sealed header, fsyncs, and returns the sealed view.
    fn seal(&self) -> io::Result<IndexFile> {
        let Some(m) = &self.mem_slots else {
            return Err(io::Error::other("index file already sealed"));
        };
        let table: Vec<u8> = m.read().iter().flat_map(|s| s.to_le_bytes()).collect();
        self.file.write_all_at(&table, HEADER_LEN)?;
        // The table must be durable before a header that vouches for it.
        self.file.sync_data()?;
        self.file.write_all_at(&self.header(true).encode(), 0)?;
        self.file.sync_data()?;
        Ok(IndexFile {
            begin: self.begin,
            path: self.path.clone(),
            file: self.file.try_clone()?,
            slots: self.slots,
            max_entries: self.max_entries,
            count: AtomicU32::new(self.count.load(Ordering::Acquire)),
            end: AtomicU64::new(self.end.load(Ordering::Acquire)),
            mem_slots: None,
        })
    }
}

/// All index files; shared between the dispatcher (the only writer) and readers.
pub struct Index {
    dir: PathBuf,
    slots: u32,
    max_entries: u32,
    files: RwLock<Vec<Arc<IndexFile>>>,
}

/// Hashes slot numbers (already uniformly distributed hash values) to themselves.
#[derive(Default)]
pub struct SlotHasher(u64);

impl Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Dispatcher-side buffer of entries not yet written.
#[derive(Default)]
pub struct IndexWriter {
    /// `(hash, commit-log offset)` of the entries to write, in commit-log order.
    pending: Vec<(u32, u64)>,
    /// Scratch space of [`Index::flush`], kept to reuse its allocations.
    heads: Vec<u32>,
    encoded: Vec<u8>,
    /// Bucket heads set by earlier entries of the same flush.
    linked: HashMap<u32, u32, BuildHasherDefault<SlotHasher>>,
}

impl IndexWriter {
    fn pending_count(&self) -> u32 {
        // `add` keeps this below a file's max_entries (a u32).
        u32::try_from(self.pending.len()).unwrap_or(u32::MAX)
    }
}

impl Index {
    /// Opens the index, dropping every entry at or above `keep_below` and files that only
    /// point below `log_min`.
    pub fn open(
        dir: PathBuf,
        slots: u32,
        max_entries: u32,
        keep_below: u64,
        log_min: u64,
    ) -> io::Result<Index> {
        fs::create_dir_all(&dir)?;
        let idx = Index {
            dir,
            slots,
            max_entries,
            files: RwLock::new(Vec::new()),
        };
        idx.truncate(keep_below)?;
        idx.trim_head(log_min)?;
        Ok(idx)
    }

    /// Drops every entry pointing at or above `offset`. Dispatcher only.
    pub fn truncate(&self, offset: u64) -> io::Result<()> {
        let listed = list_offset_files(&self.dir)?;
        let mut files: Vec<Arc<IndexFile>> = Vec::with_capacity(listed.len());
        let remaining = listed.iter().filter(|(b, _)| *b < offset).count();
        for (i, (begin, path)) in listed.into_iter().enumerate() {
            if begin >= offset {
                fs::remove_file(&path)?;
                continue;
            }
            let last = i + 1 == remaining;
            let mut hb = [0u8; HEADER_LEN as usize];
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            read_full(&file, &mut hb, 0)?;
            let header = Header::decode(&hb);
            let keep_sealed =
                matches!(header, Some(h) if h.sealed && h.end < offset && h.begin == begin);
            if keep_sealed {
                let Some(h) = header else { continue };
                files.push(Arc::new(IndexFile {
                    begin,
                    path,
                    file,
                    slots: h.slots,
                    max_entries: h.max_entries,
                    count: AtomicU32::new(h.count),
                    end: AtomicU64::new(h.end),
                    mem_slots: None,
                }));
                continue;
            }
            drop(file);
            match IndexFile::load_active(path.clone(), begin, offset)? {
                Some(f) if f.count.load(Ordering::Acquire) > 0 => {
                    // An unsealed file that is not the newest (a crash between seal steps)
                    // is sealed now so that only the newest one is active.
                    let f = if last { f } else { f.seal()? };
                    files.push(Arc::new(f));
                }
                _ => fs::remove_file(&path)?,
            }
        }
        // Only the newest file may be active; files after a removed one keep their order.
        *self.files.write() = files;
        Ok(())
    }

    /// Drops files whose newest entry points below `log_min`. Dispatcher only.
    pub fn trim_head(&self, log_min: u64) -> io::Result<()> {
        let mut files = self.files.write();
        while files
            .first()
            .is_some_and(|f| f.end.load(Ordering::Acquire) < log_min)
        {
            let f = files.remove(0);
            fs::remove_file(&f.path)?;
        }
        Ok(())
    }

    /// Queues an entry. Dispatcher only; [`Index::flush`] writes it.
    pub fn add(&self, w: &mut IndexWriter, hash: u32, phy: u64) -> io::Result<()> {
        match self.active() {
            Some(a) if a.count.load(Ordering::Acquire) + w.pending_count() < a.max_entries => {}
            Some(a) if a.begin == phy => {
                // One record has more keys than a whole file holds; file names (the first
                // entry's offset) must stay unique, so the rest of its keys go unindexed.
                tracing::warn!(offset = phy, "record has too many keys for one index file");
                return Ok(());
            }
            Some(_) => {
                self.flush(w)?;
                self.seal_active()?;
                self.new_active(phy)?;
            }
            None => {
                self.new_active(phy)?;
            }
        }
        // The bucket head is looked up in `flush`, for all pending entries at once.
        w.pending.push((hash, phy));
        Ok(())
    }

    fn active(&self) -> Option<Arc<IndexFile>> {
        self.files
            .read()
            .last()
            .filter(|f| f.mem_slots.is_some())
            .cloned()
    }

    fn new_active(&self, begin: u64) -> io::Result<Arc<IndexFile>> {
        let f = Arc::new(IndexFile::create(
            &self.dir,
            begin,
            self.slots,
            self.max_entries,
        )?);
        self.files.write().push(f.clone());
        Ok(f)
    }

    fn seal_active(&self) -> io::Result<()> {
        let Some(a) = self.active() else {
            return Ok(());
        };
        let sealed = Arc::new(a.seal()?);
        let mut files = self.files.write();
        if let Some(last) = files.last_mut() {
            *last = sealed;
        }
        Ok(())
    }

    /// Writes the pending entries and makes them visible. Dispatcher only.
    pub fn flush(&self, w: &mut IndexWriter) -> io::Result<()> {
        let Some(&(_, last_phy)) = w.pending.last() else {
            return Ok(());
        };
        let Some(a) = self.active() else {
            return Err(io::Error::other(
                "index entries pending without an active file",
            ));
        };
        let Some(mem_slots) = &a.mem_slots else {
            return Err(io::Error::other("the active index file has no slot table"));
        };
        let count = a.count.load(Ordering::Acquire);
        // The slot table is larger than the CPU caches and every entry lands in a random
        // bucket: read all the heads in one tight loop, so the cache misses overlap instead
        // of stalling the dispatcher one at a time.
        w.heads.clear();
        {
            let slots = mem_slots.read();
            w.heads.extend(
                w.pending
                    .iter()
                    .map(|&(hash, _)| slots[(hash % a.slots) as usize]),
            );
        }
        w.encoded.clear();
        w.linked.clear();
        for (i, (&(hash, phy), &head)) in w.pending.iter().zip(&w.heads).enumerate() {
            let slot = hash % a.slots;
            let prev = w.linked.get(&slot).copied().unwrap_or(head);
            w.encoded.extend_from_slice(&encode_entry(hash, prev, phy));
            w.linked.insert(slot, entry_number(count, i));
        }
        a.file.write_all_at(
            &w.encoded,
            a.entries_at() + u64::from(count) * ENTRY_LEN as u64,
        )?;
        {
            // Entries first, then the heads that point at them: a reader never follows a
            // bucket to an entry that is not in the file yet.
            let mut slots = mem_slots.write();
            for (&slot, &number) in &w.linked {
                slots[slot as usize] = number;
            }
        }
        a.end.store(last_phy, Ordering::Release);
        a.count.store(count + w.pending_count(), Ordering::Release);
        w.pending.clear();
        Ok(())
    }

    /// fsyncs the active file (before a checkpoint).
    pub fn sync(&self) -> io::Result<()> {
        match self.active() {
            Some(a) => a.file.sync_data(),
            None => Ok(()),
        }
    }

    /// Visits the commit-log offsets of entries with `hash`, newest first, that are below
    /// `below`, until `visit` returns false.
    pub fn lookup(
        &self,
        hash: u32,
        below: u64,
        mut visit: impl FnMut(u64) -> bool,
    ) -> io::Result<()> {
        let files: Vec<Arc<IndexFile>> = self.files.read().clone();
        for f in files.iter().rev() {
            let count = f.count.load(Ordering::Acquire);
            let mut at = f.slot(hash)?;
            while at != 0 && at <= count {
                let Some((h, prev, phy)) = f.entry(at)? else {
                    break;
                };
                if h == hash && phy < below && !visit(phy) {
                    return Ok(());
                }
                // Links always point backwards; anything else is damage, not a chain.
                if prev >= at {
                    break;
                }
                at = prev;
            }
        }
        Ok(())
    }

    pub fn disk_bytes(&self) -> u64 {
        self.files
            .read()
            .iter()
            .filter_map(|f| f.file.metadata().ok())
            .map(|m| m.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(idx: &Index, hash: u32) -> Vec<u64> {
        let mut out = Vec::new();
        idx.lookup(hash, u64::MAX, |phy| {
            out.push(phy);
            true
        })
        .unwrap();
        out
    }

    #[test]
    fn entries_sharing_a_bucket_chain_within_and_across_flushes_and_files() {
        let dir = tempfile::tempdir().unwrap();
        // 4 buckets, 16 entries a file: every flush links entries of one bucket to each
        // other, to earlier flushes and (after the roll-over) to nothing in the older file.
        let idx = Index::open(dir.path().join("index"), 4, 16, u64::MAX, 0).unwrap();
        let mut w = IndexWriter::default();
        let mut phy = 0u64;
        let mut expect: HashMap<u32, Vec<u64>> = HashMap::new();
        for batch in [5usize, 1, 7, 9] {
            for i in 0..batch {
                // Hashes 10..13 share buckets with 14..17 (mod 4): collisions are verified
                // by hash, so each keeps only its own offsets.
                let hash = 10 + (i as u32 * 3) % 8;
                idx.add(&mut w, hash, phy).unwrap();
                expect.entry(hash).or_default().push(phy);
                phy += 100;
            }
            idx.flush(&mut w).unwrap();
        }
        for (hash, offsets) in &expect {
            let mut want = offsets.clone();
            want.reverse();
            assert_eq!(found(&idx, *hash), want, "hash {hash}");
        }
        assert!(found(&idx, 99).is_empty());
        let files = idx.files.read().len();
        assert_eq!(files, 2, "22 entries over files of 16");
    }

    #[test]
    fn pending_entries_are_invisible_until_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path().join("index"), 8, 64, u64::MAX, 0).unwrap();
        let mut w = IndexWriter::default();
        idx.add(&mut w, 7, 0).unwrap();
        idx.flush(&mut w).unwrap();
        idx.add(&mut w, 7, 50).unwrap();
        assert_eq!(found(&idx, 7), vec![0]);
        idx.flush(&mut w).unwrap();
        assert_eq!(found(&idx, 7), vec![50, 0]);
        idx.flush(&mut w).unwrap();
        assert_eq!(
            found(&idx, 7),
            vec![50, 0],
            "an empty flush changes nothing"
        );
    }
}
