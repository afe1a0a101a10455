//! Opening a store in raft mode: the control file, an interrupted snapshot install, and the
//! entry index, which is trusted below the checkpoint and rebuilt from the records' term /
//! entry-index fields above it. A torn tail is cut at an entry boundary: records of an entry
//! whose last record (the one marked entry-end) did not survive are dropped with it.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::control::{self, Control, QueueTable};
use super::{EntryLoc, DIR, ENTRIES_DIR};
use crate::store::checkpoint::{self, Checkpoint};
use crate::store::commitlog::{list_offset_files, sync_dir, CommitLog, Segment};
use crate::store::cq::ConsumeQueue;
use crate::store::record::Fixed as _;
use crate::store::recovery::{walk_log, Walk};
use crate::store::shared::Queues;
use crate::store::{StoreConfig, StoreError};

/// Name the entry index's files are kept under (never a topic: `%` names are not queues here).
const ENTRIES_NAME: &str = "%RAFT%ENTRIES";

fn remove_dir_contents(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::create_dir_all(dir)
}

/// Opens the entry index's files (not yet recovered).
pub fn open_entries(data_dir: &Path, per_file: u64) -> io::Result<ConsumeQueue> {
    let dir = data_dir.join(DIR).join(ENTRIES_DIR);
    ConsumeQueue::open_dir(dir, ENTRIES_NAME, 0, per_file)
}

/// Deletes every consume queue and creates the queues of `table`, each starting (durably)
/// at its offset.
pub fn reset_queues(cq_root: &Path, per_file: u64, table: &QueueTable) -> io::Result<Queues> {
    remove_dir_contents(cq_root)?;
    let mut queues: Queues = HashMap::new();
    for (topic, qid, next) in table {
        let q = ConsumeQueue::open(cq_root, topic, *qid, per_file)?;
        q.reset_to(*next)?;
        queues
            .entry(topic.clone())
            .or_default()
            .insert(*qid, Arc::new(q));
    }
    if let Some(parent) = cq_root.parent() {
        sync_dir(parent)?;
    }
    Ok(queues)
}

/// Redoes a snapshot install the control file says was under way: the log, consume queues,
/// index, entry index and checkpoint are replaced by an empty log starting at the snapshot's
/// offset.
fn finish_install(config: &StoreConfig, c: &Control) -> Result<(), StoreError> {
    let dir = &config.data_dir;
    tracing::warn!(
        index = c.cp.index,
        offset = c.cp.phy,
        "finishing an interrupted snapshot install"
    );
    let log_dir = dir.join("commitlog");
    for (_, path) in list_offset_files(&log_dir)? {
        fs::remove_file(path)?;
    }
    Segment::open(&log_dir, c.cp.phy, true)?;
    sync_dir(&log_dir)?;
    reset_queues(
        &dir.join("consumequeue"),
        config.cq_entries_per_file,
        &c.cp.table,
    )?;
    let index_dir = dir.join("index");
    for (_, path) in list_offset_files(&index_dir)? {
        fs::remove_file(path)?;
    }
    sync_dir(&index_dir)?;
    // The old log's timers: kept, they would stay pending below the new log's start and hold
    // retention there for good (a live install clears them too).
    let timer_dir = dir.join("timer");
    if timer_dir.is_dir() {
        for f in fs::read_dir(&timer_dir)? {
            fs::remove_file(f?.path())?;
        }
        sync_dir(&timer_dir)?;
    }
    remove_dir_contents(&dir.join(DIR).join(ENTRIES_DIR))?;
    open_entries(dir, config.cq_entries_per_file)?.reset_to(c.cp.index + 1)?;
    checkpoint::store(
        dir,
        &Checkpoint {
            dispatched: c.cp.phy,
            written_at_ms: crate::store::now_ms(),
            queues: c.cp.table.clone(),
        },
    )?;
    Ok(())
}

/// Before the commit log is opened: refuses to mix modes, loads (or, for an empty store,
/// creates) the control file and finishes an interrupted snapshot install. `None` in
/// standalone mode.
pub fn prepare(config: &StoreConfig) -> Result<Option<Control>, StoreError> {
    let raft_dir = config.data_dir.join(DIR);
    if !config.raft {
        if control::exists(&raft_dir) {
            return Err(StoreError::Invalid(format!(
                "store {} was written in raft mode; open it with raft = true",
                config.data_dir.display()
            )));
        }
        return Ok(None);
    }
    fs::create_dir_all(&raft_dir)?;
    let mut c = match control::load(&raft_dir)? {
        Some(c) => c,
        None => {
            let log_dir = config.data_dir.join("commitlog");
            let mut has_data = false;
            if log_dir.exists() {
                for (_, path) in list_offset_files(&log_dir)? {
                    has_data |= fs::metadata(path)?.len() > 0;
                }
            }
            if has_data {
                return Err(StoreError::Invalid(format!(
                    "store {} holds a standalone commit log; raft mode needs an empty store",
                    config.data_dir.display()
                )));
            }
            let c = Control {
                segment_size: config.segment_size,
                ..Default::default()
            };
            control::store(&raft_dir, &c)?;
            c
        }
    };
    if c.segment_size != config.segment_size {
        return Err(StoreError::Invalid(format!(
            "raft mode: the store was created with segment_size {} (now {}); every replica \
             must keep the same segment size",
            c.segment_size, config.segment_size
        )));
    }
    if c.installing {
        finish_install(config, &c)?;
        c.installing = false;
        control::store(&raft_dir, &c)?;
    }
    Ok(Some(c))
}

/// The entry index after recovery and where the log really ends.
pub struct Rebuilt {
    pub entries: ConsumeQueue,
    /// End of the last complete entry (the log is cut here).
    pub end: u64,
    /// For each queue with messages past `end`, the queue offset of the first of them.
    pub dropped: HashMap<(String, u32), u64>,
}

/// An entry being assembled from its records during the scan.
#[derive(Clone, Copy)]
struct Open {
    index: u64,
    term: u64,
    start: u64,
    next: u64,
}

/// Recovers the entry index. Entries ending at or below `trusted` (the checkpoint, which
/// fsynced log and entry index up to there) are kept as they are; the rest is rebuilt from
/// the records up to `end` (where the verified log ends).
pub fn rebuild(
    log: &CommitLog,
    config: &StoreConfig,
    c: &Control,
    trusted: u64,
    end: u64,
) -> Result<Rebuilt, StoreError> {
    let idx = open_entries(&config.data_dir, config.cq_entries_per_file)?;
    let first = c.cp.index + 1;
    let trusted = trusted.min(end);
    idx.recover(trusted, c.cp.phy, u64::MAX)?;
    let lo = idx.min();
    let mut k = idx.max();
    while k > lo {
        match idx.entry(k - 1)? {
            Some(e) if e.store_ts == (k - 1) as i64 && e.phy + u64::from(e.size) <= trusted => {
                break
            }
            _ => k -= 1,
        }
    }
    let starts_right = idx
        .entry(first)?
        .is_some_and(|e| e.store_ts == first as i64 && e.phy >= c.cp.phy);
    let (mut expect, mut prev_term, mut cut) = if k > first && lo == first && starts_right {
        idx.truncate(k)?;
        match idx.entry(k - 1)? {
            Some(e) => (k, e.tag_hash, e.phy + u64::from(e.size)),
            None => {
                return Err(StoreError::Corrupt {
                    offset: 0,
                    reason: format!("entry index lost entry {}", k - 1),
                })
            }
        }
    } else {
        if k > first {
            tracing::warn!(
                first,
                "entry index does not start at the log start; rebuilding it"
            );
        }
        idx.reset_to(first)?;
        (first, c.cp.term, c.cp.phy)
    };
    if cut > end {
        return Err(StoreError::Corrupt {
            offset: end,
            reason: format!(
                "the commit log ends before raft entry data it must hold (up to {cut})"
            ),
        });
    }
    let from = expect;
    let mut built = Vec::new();
    let mut open: Option<Open> = None;
    let mut broken = false;
    let mut dropped: HashMap<(String, u32), u64> = HashMap::new();
    walk_log(log, cut, |phy, view| {
        if phy >= end {
            return Walk::Stop;
        }
        if !broken {
            let fits = match open {
                None => view.entry_index() == expect && view.term() >= prev_term,
                Some(o) => view.entry_index() == o.index && view.term() == o.term && phy == o.next,
            };
            if fits {
                let o = open.get_or_insert(Open {
                    index: expect,
                    term: view.term(),
                    start: phy,
                    next: phy,
                });
                o.next = phy + u64::from(view.total_size());
            } else {
                tracing::warn!(
                    offset = phy,
                    entry = view.entry_index(),
                    expected = expect,
                    "record does not continue the raft log; the log ends before it"
                );
                broken = true;
            }
        }
        if !view.is_system() {
            dropped
                .entry((view.topic.to_owned(), view.queue_id()))
                .or_insert(view.queue_offset());
        }
        if let (false, true, Some(o)) = (broken, view.ends_entry(), open) {
            let loc = EntryLoc {
                offset: o.start,
                len: (o.next - o.start) as u32,
                term: o.term,
            };
            built.extend_from_slice(&loc.to_cq(o.index).encode());
            expect = o.index + 1;
            prev_term = o.term;
            cut = o.next;
            open = None;
            dropped.clear();
        }
        Walk::Continue
    })?;
    if open.is_some() || broken {
        tracing::warn!(offset = cut, "dropping a partially written raft entry");
    }
    idx.write(from, &built)?;
    idx.publish(expect, 0);
    idx.sync_from(from)?;
    // The hard state is written after the entries it commits are durable; a log that ends
    // before them lost committed entries, which Raft cannot recover from on its own.
    let last = expect - 1;
    if c.hard_state.commit > last {
        return Err(StoreError::Corrupt {
            offset: cut,
            reason: format!(
                "the raft log ends at entry {last} but entries up to {} were committed; \
                 this replica lost committed data and must be rebuilt from its peers",
                c.hard_state.commit
            ),
        });
    }
    Ok(Rebuilt {
        entries: idx,
        end: cut,
        dropped,
    })
}
