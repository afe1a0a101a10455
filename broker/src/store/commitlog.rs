//! Commit-log segments and the read side shared by every reader.
//!
//! Segment files are named by their starting byte offset (20 digits). They grow as the
//! writer appends (no preallocation), so a file's length is its high-water mark. Readers use
//! positioned reads (`pread`) on a shared `File`, never a mapping: a truncated or rewritten
//! tail can then only yield bytes that fail the record CRC, never undefined behaviour.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;

use super::reader::Expected;
use super::record::{self, Fixed as _, Probe};
use super::{RawRecord, StoreError, StoredRecord};

pub struct Segment {
    pub base: u64,
    pub path: PathBuf,
    pub file: File,
    /// Store time of the newest record in the segment (retention by age).
    pub last_store_ts: AtomicI64,
    /// Bytes of the segment in use (the writer's position within it; the file length on open).
    pub len: AtomicU64,
}

impl Segment {
    pub fn open(dir: &Path, base: u64, create: bool) -> io::Result<Segment> {
        let path = dir.join(format!("{base:020}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .open(&path)?;
        let meta = file.metadata()?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        Ok(Segment {
            base,
            path,
            file,
            last_store_ts: AtomicI64::new(mtime),
            len: AtomicU64::new(meta.len()),
        })
    }
}

/// The set of segments, shared by the writer (which alone adds, truncates and removes them)
/// and every reader.
pub struct CommitLog {
    pub dir: PathBuf,
    pub segment_size: u64,
    segments: RwLock<Vec<Arc<Segment>>>,
    pool: Arc<BufPool>,
    /// The writer's group buffers, handed to the dispatcher after each write (see
    /// [`CommitLog::hand_off`]).
    write_pool: Arc<BufPool>,
}

/// Most buffer capacity handed from the writer to the dispatcher and not yet released. Past it
/// the writer keeps its buffer and the dispatcher reads those bytes from the file.
const HANDOFF_LIMIT: usize = 64 << 20;

/// Read buffers handed back when every `Bytes` slicing one is dropped, so steady-state reads
/// neither allocate nor zero memory.
pub struct BufPool {
    free: parking_lot::Mutex<Vec<Vec<u8>>>,
    /// Capacity of this pool's buffers currently out in `Bytes`.
    held: AtomicUsize,
    /// Buffers larger than this are not kept.
    max_buf: usize,
}

impl Default for BufPool {
    fn default() -> Self {
        BufPool::keeping_up_to(READ_POOL_MAX_BUF)
    }
}

/// Read buffers larger than this are not kept.
const READ_POOL_MAX_BUF: usize = 4 << 20;
/// The writer's groups reach its 4 MiB group limit plus one batch; a buffer that grew past
/// what the pool keeps would be replaced by a fresh allocation (page faults on every byte)
/// after each hand-off.
const WRITE_POOL_MAX_BUF: usize = 16 << 20;
/// Buffers kept at most.
const POOL_MAX_COUNT: usize = 64;

impl BufPool {
    fn keeping_up_to(max_buf: usize) -> BufPool {
        BufPool {
            free: parking_lot::Mutex::default(),
            held: AtomicUsize::new(0),
            max_buf,
        }
    }

    /// A buffer of exactly `len` bytes (contents unspecified).
    fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = {
            let mut free = self.free.lock();
            // Prefer a buffer already as long as asked: growing one zeroes the new part, and
            // that memset showed up next to the read itself in profiles.
            match free.iter().rposition(|b| b.len() >= len) {
                Some(i) => free.swap_remove(i),
                None => free.pop().unwrap_or_default(),
            }
        };
        buf.resize(len, 0);
        buf
    }

    /// An empty buffer with room for `capacity` bytes.
    fn take_empty(&self, capacity: usize) -> Vec<u8> {
        let found = {
            let mut free = self.free.lock();
            free.iter()
                .rposition(|b| b.capacity() >= capacity)
                .map(|i| free.swap_remove(i))
        };
        match found {
            Some(mut b) => {
                b.clear();
                b
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// `buf` as `Bytes` that give it back to `pool` once the last of them is dropped.
    fn wrap(pool: &Arc<BufPool>, buf: Vec<u8>) -> Bytes {
        BufPool::wrap_counted(pool, buf, true)
    }

    /// `buf` as `Bytes` counted in `held` while any of them lives; `keep`: then pooled.
    fn wrap_counted(pool: &Arc<BufPool>, buf: Vec<u8>, keep: bool) -> Bytes {
        pool.held.fetch_add(buf.capacity(), Ordering::AcqRel);
        Bytes::from_owner(Pooled {
            buf,
            pool: pool.clone(),
            keep,
        })
    }
}

/// Owner of a pooled buffer inside `Bytes`; returns it to the pool when dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufPool>,
    /// False for buffers the pool did not hand out (a producer's encoded batch): their sizes
    /// fit no request of the pool's users, so they are freed.
    keep: bool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.pool.held.fetch_sub(buf.capacity(), Ordering::AcqRel);
        if self.keep && buf.capacity() <= self.pool.max_buf {
            let mut free = self.pool.free.lock();
            if free.len() < POOL_MAX_COUNT {
                free.push(buf);
            }
        }
    }
}

/// Parses a 20-digit zero-padded file name.
pub fn parse_offset_name(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

/// Files in `dir` named by a 20-digit offset, sorted by it.
pub fn list_offset_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if let Some(off) = e.file_name().to_str().and_then(parse_offset_name) {
            out.push((off, e.path()));
        }
    }
    out.sort_unstable_by_key(|(o, _)| *o);
    Ok(out)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl CommitLog {
    pub fn new(dir: PathBuf, segment_size: u64, segments: Vec<Arc<Segment>>) -> CommitLog {
        CommitLog {
            dir,
            segment_size,
            segments: RwLock::new(segments),
            pool: Arc::default(),
            write_pool: Arc::new(BufPool::keeping_up_to(WRITE_POOL_MAX_BUF)),
        }
    }

    /// Hands the writer's just-written group buffer over as `Bytes` (for the dispatcher) and
    /// gives it an empty one of at least `capacity` back; `None` (and `buf` left alone) when
    /// too much is handed out already.
    pub fn hand_off(&self, buf: &mut Vec<u8>, capacity: usize) -> Option<Bytes> {
        let pool = &self.write_pool;
        if pool.held.load(Ordering::Acquire) + buf.capacity() > HANDOFF_LIMIT {
            return None;
        }
        let next = pool.take_empty(capacity);
        Some(BufPool::wrap(pool, std::mem::replace(buf, next)))
    }

    /// Hands a written batch over as `Bytes` (for the dispatcher), within the same limit as
    /// [`CommitLog::hand_off`]; `None` (and the batch dropped) when too much is out already.
    pub fn hand_off_batch(&self, buf: Vec<u8>) -> Option<Bytes> {
        let pool = &self.write_pool;
        if pool.held.load(Ordering::Acquire) + buf.capacity() > HANDOFF_LIMIT {
            return None;
        }
        Some(BufPool::wrap_counted(pool, buf, false))
    }

    pub fn snapshot(&self) -> Vec<Arc<Segment>> {
        self.segments.read().clone()
    }

    pub fn last(&self) -> Option<Arc<Segment>> {
        self.segments.read().last().cloned()
    }

    pub fn min_offset(&self) -> Option<u64> {
        self.segments.read().first().map(|s| s.base)
    }

    /// The segment holding `offset`.
    pub fn segment_for(&self, offset: u64) -> Option<Arc<Segment>> {
        let segs = self.segments.read();
        let i = segs.partition_point(|s| s.base <= offset);
        if i == 0 {
            return None;
        }
        Some(segs[i - 1].clone())
    }

    pub fn push(&self, seg: Arc<Segment>) {
        self.segments.write().push(seg);
    }

    /// Removes segments starting at or after `base` from the set (files are the caller's job).
    pub fn remove_from(&self, base: u64) -> Vec<Arc<Segment>> {
        let mut segs = self.segments.write();
        let i = segs.partition_point(|s| s.base < base);
        segs.split_off(i)
    }

    /// The segment after the one starting at `base`.
    pub fn next_after(&self, base: u64) -> Option<Arc<Segment>> {
        let segs = self.segments.read();
        let i = segs.partition_point(|s| s.base <= base);
        segs.get(i).cloned()
    }

    /// Removes the `count` oldest segments from the set, never the newest one.
    pub fn remove_head(&self, count: usize) -> Vec<Arc<Segment>> {
        let mut segs = self.segments.write();
        let n = count.min(segs.len().saturating_sub(1));
        segs.drain(..n).collect()
    }

    /// Reads `len` bytes at `offset` (within one segment) into a new buffer.
    pub fn read_exact(&self, offset: u64, len: usize) -> Result<Bytes, StoreError> {
        let seg = self
            .segment_for(offset)
            .ok_or_else(|| self.out_of_range(offset))?;
        let mut buf = self.pool.take(len);
        let n = read_full(&seg.file, &mut buf, offset - seg.base)?;
        if n < len {
            return Err(StoreError::Corrupt {
                offset,
                reason: format!("short read: {n} of {len} bytes"),
            });
        }
        Ok(BufPool::wrap(&self.pool, buf))
    }

    fn out_of_range(&self, offset: u64) -> StoreError {
        let segs = self.segments.read();
        let min = segs.first().map_or(0, |s| s.base);
        let max = segs
            .last()
            .map_or(0, |s| s.base + s.len.load(Ordering::Acquire));
        StoreError::OffsetOutOfRange { offset, min, max }
    }

    /// Reads and verifies the record at `offset`, whose size is unknown.
    pub fn read_record(&self, offset: u64) -> Result<StoredRecord, StoreError> {
        let seg = self
            .segment_for(offset)
            .ok_or_else(|| self.out_of_range(offset))?;
        let seg_len = seg.len.load(Ordering::Acquire);
        let in_seg = offset - seg.base;
        if in_seg >= seg_len {
            return Err(self.out_of_range(offset));
        }
        // One read usually suffices; a larger record costs a second one.
        let guess = (seg_len - in_seg).min(4096) as usize;
        let mut buf = BytesMut::zeroed(guess);
        let n = read_full(&seg.file, &mut buf, in_seg)?;
        buf.truncate(n);
        if n >= 4 {
            let total = record::u32_at(&buf, 0) as usize;
            if total > n && (total as u64) <= seg_len - in_seg {
                buf.resize(total, 0);
                let m = read_full(&seg.file, &mut buf[n..], in_seg + n as u64)?;
                buf.truncate(n + m);
            }
        }
        decode_at(&buf.freeze(), 0, offset)
    }
}

impl CommitLog {
    /// Visits the records in `[from, to)` in order (`from` is a record boundary), skipping
    /// segment fillers and segment tails. One positioned read per record: for short ranges.
    pub fn for_each_record(
        &self,
        from: u64,
        to: u64,
        mut visit: impl FnMut(&StoredRecord),
    ) -> Result<(), StoreError> {
        let mut at = from;
        while at < to {
            let Some(seg) = self.segment_for(at) else {
                return Err(self.out_of_range(at));
            };
            let in_seg = at - seg.base;
            let seg_len = seg.len.load(Ordering::Acquire);
            let tail = in_seg >= seg_len || {
                let n = (seg_len - in_seg).min(record::FILLER_LEN as u64) as usize;
                record::probe(&self.read_exact(at, n)?) == Probe::Filler
            };
            if tail {
                match self.next_after(seg.base) {
                    Some(n) => {
                        at = n.base;
                        continue;
                    }
                    None => break,
                }
            }
            let rec = self.read_record(at)?;
            at += u64::from(rec.store_size);
            visit(&rec);
        }
        Ok(())
    }
}

/// The CRC-checked record that starts at `buf[at]` and claims to live at commit-log offset
/// `offset`.
fn checked_at(buf: &Bytes, at: usize, offset: u64) -> Result<&[u8], StoreError> {
    let rest = buf
        .get(at..)
        .ok_or_else(|| corrupt_at(offset, "record outside the buffer"))?;
    let total = match record::probe(rest) {
        Probe::Record(t) => t as usize,
        Probe::Filler => return Err(corrupt_at(offset, "not a record boundary (segment filler)")),
        Probe::Incomplete => return Err(corrupt_at(offset, "incomplete record")),
        Probe::Corrupt(why) => return Err(corrupt_at(offset, why)),
    };
    Ok(&rest[..total])
}

fn corrupt_at(offset: u64, reason: &str) -> StoreError {
    StoreError::Corrupt {
        offset,
        reason: reason.to_owned(),
    }
}

/// Verifies and decodes the record that starts at `buf[at]` and claims to live at commit-log
/// offset `offset`.
pub fn decode_at(buf: &Bytes, at: usize, offset: u64) -> Result<StoredRecord, StoreError> {
    let rec = checked_at(buf, at, offset)?;
    let view = record::parse(rec).map_err(|why| corrupt_at(offset, why))?;
    if view.physical_offset() != offset {
        return Err(corrupt_at(offset, "not a record boundary"));
    }
    Ok(record::to_stored(&view, buf, at))
}

/// The record at `at` as the dispatcher sees it, for a filter to look at before the record
/// is read out ([`decoded_at`] / [`raw_at`] then check it whole, CRC included).
pub fn view_at(
    buf: &Bytes,
    at: usize,
    offset: u64,
) -> Result<sluice_proto::record::DispatchView<'_>, StoreError> {
    let rest = buf
        .get(at..)
        .ok_or_else(|| corrupt_at(offset, "record outside the buffer"))?;
    let total = match record::probe_written(rest) {
        Probe::Record(t) => t as usize,
        _ => return Err(corrupt_at(offset, "not a whole record")),
    };
    let rec = rest
        .get(..total)
        .ok_or_else(|| corrupt_at(offset, "record outside the buffer"))?;
    record::parse_for_dispatch(rec).map_err(|why| corrupt_at(offset, why))
}

/// [`decode_at`] for a raw read: the record's bytes, CRC and structure checked and matched
/// against `want`, without decoding its text (the reader of raw records checks that).
pub fn raw_at(
    buf: &Bytes,
    at: usize,
    offset: u64,
    want: &Expected<'_>,
) -> Result<RawRecord, StoreError> {
    let rec = checked_at(buf, at, offset)?;
    let view = record::parse_for_dispatch(rec).map_err(|why| corrupt_at(offset, why))?;
    if view.physical_offset() != offset {
        return Err(corrupt_at(offset, "not a record boundary"));
    }
    want.check(view.topic, view.queue_id(), view.queue_offset(), offset)?;
    Ok(RawRecord {
        bytes: buf.slice(at..at + rec.len()),
        commit_log_offset: offset,
    })
}

/// [`decode_at`] for a queue read: the record must be the one its consume-queue entry expects.
pub fn decoded_at(
    buf: &Bytes,
    at: usize,
    offset: u64,
    want: &Expected<'_>,
) -> Result<StoredRecord, StoreError> {
    let r = decode_at(buf, at, offset)?;
    want.check(&r.topic, r.queue_id, r.queue_offset, offset)?;
    Ok(r)
}

/// `pread` until `buf` is full or the end of the file; returns the bytes read.
pub fn read_full(file: &File, buf: &mut [u8], mut pos: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], pos) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                pos += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Most slices given to one `pwritev` (the kernel's limit is 1024).
const MAX_IOV: usize = 512;

/// Writes the first `len` bytes of `parts`, in order, at `pos` with vectored positioned
/// writes: a group of producers' batches goes to the file without first being copied into
/// one buffer.
pub fn write_parts_at(file: &File, parts: &[&[u8]], pos: u64, len: usize) -> io::Result<()> {
    let mut left = len;
    let mut slices: Vec<io::IoSlice<'_>> = Vec::with_capacity(parts.len());
    for p in parts {
        if left == 0 {
            break;
        }
        let n = p.len().min(left);
        if n > 0 {
            slices.push(io::IoSlice::new(&p[..n]));
        }
        left -= n;
    }
    let mut rest = &mut slices[..];
    let mut pos = pos;
    while !rest.is_empty() {
        let window = &rest[..rest.len().min(MAX_IOV)];
        match rustix::io::pwritev(file, window, pos) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                pos += n as u64;
                io::IoSlice::advance_slices(&mut rest, n);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_written_in_order_and_cut_at_the_length() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .expect("create");
        // More slices than one pwritev takes, some empty.
        let owned: Vec<Vec<u8>> = (0..1500u32)
            .map(|i| vec![(i % 251) as u8; (i % 7) as usize])
            .collect();
        let parts: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        let all: Vec<u8> = owned.concat();
        write_parts_at(&file, &parts, 3, all.len()).expect("write");
        let mut back = vec![0u8; all.len() + 3];
        assert_eq!(read_full(&file, &mut back, 0).expect("read"), all.len() + 3);
        assert_eq!(&back[3..], &all[..]);
        // A prefix ending inside a part (the crash simulations write half a group).
        file.set_len(0).expect("truncate");
        let half = all.len() / 2 + 1;
        write_parts_at(&file, &parts, 0, half).expect("write half");
        assert_eq!(file.metadata().expect("meta").len(), half as u64);
        let mut back = vec![0u8; half];
        read_full(&file, &mut back, 0).expect("read");
        assert_eq!(&back[..], &all[..half]);
    }

    #[test]
    fn hand_off_is_bounded_and_buffers_come_back() {
        let log = CommitLog::new(PathBuf::from("/nonexistent"), 1 << 20, Vec::new());
        let cap = WRITE_POOL_MAX_BUF;
        let mut buf = Vec::with_capacity(cap);
        let mut out = Vec::new();
        for i in 0..HANDOFF_LIMIT / cap {
            buf.push(i as u8);
            out.push(log.hand_off(&mut buf, cap).expect("room under the limit"));
            assert!(buf.is_empty() && buf.capacity() >= cap);
        }
        assert_eq!(&out[1][..], &[1]);
        // Full: the writer keeps its buffer and the dispatcher reads the file instead.
        buf.extend_from_slice(b"kept");
        assert!(log.hand_off(&mut buf, cap).is_none());
        assert_eq!(&buf[..], b"kept");
        // Dropping every slice of a handed buffer releases its room and pools the buffer.
        let part = out[0].slice(0..1);
        out.remove(0);
        assert!(log.hand_off(&mut buf, cap).is_none());
        drop(part);
        assert_eq!(log.write_pool.free.lock().len(), 1);
        let again = log.hand_off(&mut buf, cap).expect("room again");
        assert_eq!(&again[..], b"kept");
        assert!(
            log.write_pool.free.lock().is_empty(),
            "the pooled buffer was reused"
        );
        drop((out, again));
        assert_eq!(log.write_pool.held.load(Ordering::Acquire), 0);
        assert_eq!(log.write_pool.free.lock().len(), HANDOFF_LIMIT / cap);
    }
}
