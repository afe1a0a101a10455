//! The timer index's files: fixed entries appended through a buffer, resolved in place, read
//! by range or through a one-block cache (chain walks go backwards through nearby entries).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::super::commitlog::{list_offset_files, read_full, sync_dir};
use super::entry::{TimerEntry, TimerState, ENTRY_LEN};

/// Entries per cached block.
const BLOCK: u64 = 1024;
/// Entries read per call when scanning.
const SCAN: u64 = 64 * 1024;

struct TFile {
    file: File,
    path: PathBuf,
    /// Pending entries in the file, and the highest offset of a record that resolved one.
    pending: u64,
    max_resolved: u64,
}

impl TFile {
    /// Opens an existing file, or creates an empty one.
    fn open(path: PathBuf, create: bool) -> io::Result<TFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(&path)?;
        Ok(TFile {
            file,
            path,
            pending: 0,
            max_resolved: 0,
        })
    }
}

pub struct Files {
    dir: PathBuf,
    per_file: u64,
    files: BTreeMap<u64, TFile>,
    next_no: u64,
    /// Entries `buf_from..next_no`, appended but not written to their files yet.
    buf: Vec<u8>,
    buf_from: u64,
    dirty: BTreeSet<u64>,
    created: bool,
    cache: Option<(u64, Vec<u8>)>,
}

fn file_name(base: u64) -> String {
    format!("{base:020}")
}

impl Files {
    /// Opens the files, keeping what records below `keep_below` did (see `scan_and_cut`).
    /// Returns where to re-dispatch from when entries below it were damaged.
    pub fn open(
        dir: PathBuf,
        per_file: u64,
        keep_below: u64,
        visit: &mut dyn FnMut(&TimerEntry),
    ) -> io::Result<(Files, Option<u64>)> {
        fs::create_dir_all(&dir)?;
        let mut files = BTreeMap::new();
        for (base, path) in list_offset_files(&dir)? {
            files.insert(base, TFile::open(path, false)?);
        }
        let next_no = files.keys().next().copied().unwrap_or(0);
        let mut f = Files {
            dir,
            per_file,
            files,
            next_no,
            buf: Vec::new(),
            buf_from: next_no,
            dirty: BTreeSet::new(),
            created: false,
            cache: None,
        };
        let rebuild_from = f.scan_and_cut(keep_below, visit)?;
        Ok((f, rebuild_from))
    }

    pub fn next_no(&self) -> u64 {
        self.next_no
    }

    pub fn first_no(&self) -> u64 {
        self.files.keys().next().copied().unwrap_or(self.next_no)
    }

    fn base(&self, no: u64) -> u64 {
        no - no % self.per_file
    }

    fn pos(&self, no: u64) -> u64 {
        (no % self.per_file) * ENTRY_LEN as u64
    }

    /// Reads every entry twice: first to find where the trustworthy entries end (the first
    /// entry of a record at or after `cut_phy`, or the first unreadable one), then to undo
    /// resolutions at or after the cut and hand each kept entry to `visit`. Streams: 10
    /// million entries are never in memory at once.
    fn scan_and_cut(
        &mut self,
        cut_phy: u64,
        visit: &mut dyn FnMut(&TimerEntry),
    ) -> io::Result<Option<u64>> {
        let mut rebuild_from = None;
        let mut last_phy: Option<u64> = None;
        let mut end = self.first_no();
        let bases: Vec<u64> = self.files.keys().copied().collect();
        'files: for base in bases {
            if base != end {
                // A missing file in the middle: what follows cannot be trusted.
                rebuild_from = Some(last_phy.map_or(0, |p| p + 1));
                break;
            }
            let len = self
                .files
                .get(&base)
                .map_or(0, |f| f.file.metadata().map_or(0, |m| m.len()));
            let count = (len / ENTRY_LEN as u64).min(self.per_file);
            let mut at = 0;
            while at < count {
                let n = (count - at).min(SCAN);
                let raw = self.read_raw(base + at, n)?;
                for (i, chunk) in raw.chunks_exact(ENTRY_LEN).enumerate() {
                    let this = base + at + i as u64;
                    match TimerEntry::decode(this, chunk) {
                        Some(e) if e.sched_phy < cut_phy => {
                            last_phy = Some(e.sched_phy);
                            end = this + 1;
                        }
                        Some(_) => break 'files,
                        None => {
                            rebuild_from = Some(last_phy.map_or(0, |p| p + 1));
                            break 'files;
                        }
                    }
                }
                at += n;
            }
            if count < self.per_file {
                // A file that is not full must be the last.
                break;
            }
        }
        self.truncate_files(end)?;
        self.next_no = end;
        self.buf_from = end;
        let undo_from = rebuild_from.map_or(cut_phy, |r| r.min(cut_phy));
        let mut counts: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let mut no = self.first_no();
        while no < end {
            let upto = (self.base(no) + self.per_file).min(end).min(no + SCAN);
            let raw = self.read_raw(no, upto - no)?;
            for (i, chunk) in raw.chunks_exact(ENTRY_LEN).enumerate() {
                let Some(mut e) = TimerEntry::decode(no + i as u64, chunk) else {
                    continue;
                };
                if !e.is_pending() && e.resolved_by >= undo_from {
                    e.state = TimerState::Pending;
                    e.resolved_by = 0;
                    self.write(&e)?;
                }
                let c = counts.entry(self.base(e.no)).or_default();
                if e.is_pending() {
                    c.0 += 1;
                } else {
                    c.1 = c.1.max(e.resolved_by);
                }
                visit(&e);
            }
            no = upto;
        }
        for (base, f) in &mut self.files {
            let (pending, max_resolved) = counts.get(base).copied().unwrap_or_default();
            f.pending = pending;
            f.max_resolved = max_resolved;
        }
        self.sync()?;
        Ok(rebuild_from)
    }

    /// Drops entries from `end` on.
    fn truncate_files(&mut self, end: u64) -> io::Result<()> {
        self.cache = None;
        let gone: Vec<u64> = self.files.range(end..).map(|(b, _)| *b).collect();
        for base in gone {
            if let Some(f) = self.files.remove(&base) {
                fs::remove_file(&f.path)?;
                self.created = true;
            }
        }
        let base = self.base(end);
        if let Some(f) = self.files.get(&base) {
            f.file.set_len(self.pos(end))?;
            self.dirty.insert(base);
        }
        Ok(())
    }

    fn read_raw(&self, from: u64, n: u64) -> io::Result<Vec<u8>> {
        let base = self.base(from);
        let Some(f) = self.files.get(&base) else {
            return Ok(Vec::new());
        };
        let mut raw = vec![0u8; (n as usize) * ENTRY_LEN];
        let got = read_full(&f.file, &mut raw, self.pos(from))?;
        raw.truncate(got - got % ENTRY_LEN);
        Ok(raw)
    }

    pub fn append(&mut self, e: &TimerEntry) -> io::Result<()> {
        let base = self.base(e.no);
        if !self.files.contains_key(&base) {
            let file = TFile::open(self.dir.join(file_name(base)), true)?;
            self.files.insert(base, file);
            self.created = true;
        }
        if let Some(f) = self.files.get_mut(&base) {
            f.pending += 1;
        }
        self.buf.extend_from_slice(&e.encode());
        self.next_no = e.no + 1;
        Ok(())
    }

    /// Rewrites an entry in place (in the buffer if it is not written yet).
    pub fn write(&mut self, e: &TimerEntry) -> io::Result<()> {
        let bytes = e.encode();
        if let Some((start, block)) = &mut self.cache {
            if e.no >= *start && e.no < *start + BLOCK {
                let at = ((e.no - *start) as usize) * ENTRY_LEN;
                if let Some(dst) = block.get_mut(at..at + ENTRY_LEN) {
                    dst.copy_from_slice(&bytes);
                }
            }
        }
        if e.no >= self.buf_from {
            let at = ((e.no - self.buf_from) as usize) * ENTRY_LEN;
            if let Some(dst) = self.buf.get_mut(at..at + ENTRY_LEN) {
                dst.copy_from_slice(&bytes);
            }
            return Ok(());
        }
        let base = self.base(e.no);
        if let Some(f) = self.files.get(&base) {
            f.file.write_all_at(&bytes, self.pos(e.no))?;
            self.dirty.insert(base);
        }
        Ok(())
    }

    /// Counts a resolution of entry `no` by the record at `by`.
    pub fn resolved(&mut self, no: u64, by: u64) {
        let base = self.base(no);
        if let Some(f) = self.files.get_mut(&base) {
            f.pending = f.pending.saturating_sub(1);
            f.max_resolved = f.max_resolved.max(by);
        }
    }

    /// Entries `from..upto` (those that decode), within one file at a time.
    pub fn read_range(&mut self, from: u64, upto: u64) -> io::Result<Vec<TimerEntry>> {
        let mut out = Vec::new();
        let mut no = from;
        while no < upto {
            if no >= self.buf_from {
                let at = ((no - self.buf_from) as usize) * ENTRY_LEN;
                let end = ((upto - self.buf_from) as usize) * ENTRY_LEN;
                let raw = self
                    .buf
                    .get(at..end.min(self.buf.len()))
                    .unwrap_or_default();
                for (i, c) in raw.chunks_exact(ENTRY_LEN).enumerate() {
                    out.extend(TimerEntry::decode(no + i as u64, c));
                }
                break;
            }
            let file_end = (self.base(no) + self.per_file).min(upto).min(self.buf_from);
            let raw = self.read_raw(no, file_end - no)?;
            for (i, c) in raw.chunks_exact(ENTRY_LEN).enumerate() {
                out.extend(TimerEntry::decode(no + i as u64, c));
            }
            no = file_end;
        }
        Ok(out)
    }

    /// One entry, through a cache of the block around it.
    pub fn read_cached(&mut self, no: u64) -> io::Result<Option<TimerEntry>> {
        if no >= self.buf_from {
            let at = ((no - self.buf_from) as usize) * ENTRY_LEN;
            return Ok(self
                .buf
                .get(at..at + ENTRY_LEN)
                .and_then(|c| TimerEntry::decode(no, c)));
        }
        // Blocks are aligned within the entry's own file (files need not be a multiple of one).
        let base = self.base(no);
        let start = base + (no - base) / BLOCK * BLOCK;
        let at = ((no - start) as usize) * ENTRY_LEN;
        // A block read before later entries were written to it does not hold them yet.
        if self
            .cache
            .as_ref()
            .is_none_or(|(s, b)| *s != start || b.len() < at + ENTRY_LEN)
        {
            let n = BLOCK
                .min(self.buf_from - start)
                .min(self.base(start) + self.per_file - start);
            self.cache = Some((start, self.read_raw(start, n)?));
        }
        Ok(self
            .cache
            .as_ref()
            .and_then(|(_, b)| b.get(at..at + ENTRY_LEN))
            .and_then(|c| TimerEntry::decode(no, c)))
    }

    /// Writes the buffered entries to their files.
    pub fn flush(&mut self) -> io::Result<()> {
        let mut no = self.buf_from;
        let mut at = 0usize;
        while at < self.buf.len() {
            let base = self.base(no);
            let room = (base + self.per_file - no) as usize * ENTRY_LEN;
            let part = room.min(self.buf.len() - at);
            let Some(f) = self.files.get(&base) else {
                return Err(io::Error::other(format!("timer file {base} missing")));
            };
            f.file
                .write_all_at(&self.buf[at..at + part], self.pos(no))?;
            self.dirty.insert(base);
            at += part;
            no += (part / ENTRY_LEN) as u64;
        }
        self.buf.clear();
        self.buf_from = self.next_no;
        Ok(())
    }

    pub fn sync(&mut self) -> io::Result<()> {
        self.flush()?;
        for base in std::mem::take(&mut self.dirty) {
            if let Some(f) = self.files.get(&base) {
                f.file.sync_data()?;
            }
        }
        if std::mem::take(&mut self.created) {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Deletes leading files (never the last) whose every entry was resolved below `below`;
    /// returns the new first entry number when one went.
    pub fn drop_resolved(&mut self, below: u64) -> io::Result<Option<u64>> {
        let mut dropped = false;
        while self.files.len() > 1 {
            let Some((&base, f)) = self.files.iter().next() else {
                break;
            };
            if f.pending > 0 || f.max_resolved >= below {
                break;
            }
            if let Some(f) = self.files.remove(&base) {
                fs::remove_file(&f.path)?;
                dropped = true;
            }
        }
        if dropped {
            self.cache = None;
            sync_dir(&self.dir)?;
            return Ok(Some(self.first_no()));
        }
        Ok(None)
    }

    /// Entries of records at or after `phy` go; timers resolved at or after it are pending
    /// again. Returns the entries kept.
    pub fn cut(&mut self, phy: u64, visit: &mut dyn FnMut(&TimerEntry)) -> io::Result<()> {
        self.flush()?;
        self.scan_and_cut(phy, visit).map(|_| ())
    }

    pub fn clear(&mut self) -> io::Result<()> {
        self.buf.clear();
        self.cache = None;
        for (_, f) in std::mem::take(&mut self.files) {
            fs::remove_file(&f.path)?;
        }
        sync_dir(&self.dir)?;
        self.next_no = 0;
        self.buf_from = 0;
        self.dirty.clear();
        Ok(())
    }

    pub fn disk_bytes(&self) -> u64 {
        self.files
            .values()
            .map(|f| f.file.metadata().map_or(0, |m| m.len()))
            .sum()
    }
}
