//! Retention: deletes the oldest commit-log segments when they are older than the retention
//! period (by their last store time) or while disk use is above the high-water ratio. The
//! deletion itself goes through the writer (which owns the segments); the dispatcher then
//! trims consume queues and index. Runs on its own thread every `retention_check_interval`,
//! or at once when the writer reports the high-water ratio crossed.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::shared::Shared;
use super::writer::WriterCmd;

/// Messages to the retention thread.
pub enum RetentionMsg {
    /// Disk use crossed the high-water ratio: check now.
    Kick,
    Stop,
}

pub fn run(shared: Arc<Shared>, rx: Receiver<RetentionMsg>, writer: mpsc::Sender<WriterCmd>) {
    let interval = shared.config.retention_check_interval;
    loop {
        match rx.recv_timeout(interval) {
            Ok(RetentionMsg::Kick) => {}
            Ok(RetentionMsg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        // Kicks come in bursts; one check covers them all.
        while let Ok(m) = rx.try_recv() {
            if matches!(m, RetentionMsg::Stop) {
                return;
            }
        }
        if !check(&shared, &writer) {
            return;
        }
        shared.retention_checks.fetch_add(1, Ordering::Release);
    }
}

/// One retention check: false once the writer is gone.
fn check(shared: &Arc<Shared>, writer: &mpsc::Sender<WriterCmd>) -> bool {
    refresh_usage(shared);
    let count = segments_to_delete(shared, super::now_ms());
    if count == 0 {
        return true;
    }
    let (tx, rx) = oneshot::channel();
    if writer
        .blocking_send(WriterCmd::DeleteHead { count, reply: tx })
        .is_err()
    {
        return false;
    }
    match rx.blocking_recv() {
        Ok(Ok(deleted)) => {
            let floor = shared.timer_floor.load(Ordering::Acquire);
            let tx_floor = shared.tx_floor.load(Ordering::Acquire);
            let held_at_open = tx_floor == 0 && !shared.tx_floor_set.load(Ordering::Acquire);
            if deleted.segments.len() < count && held_at_open {
                tracing::info!(
                    wanted = count,
                    "retention waits for the transactions' floor (set once their state is loaded)"
                );
            } else if deleted.segments.len() < count
                && floor.min(tx_floor) < shared.dispatched_and_confirmed()
            {
                tracing::warn!(
                    wanted = count,
                    deleted = deleted.segments.len(),
                    floor,
                    tx_floor,
                    pending = shared.timer_pending.load(Ordering::Acquire),
                    "retention held back: segments hold delayed messages not delivered yet, unresolved transactions or writes whose state is not applied yet"
                );
            }
            tracing::debug!(
                min = deleted.log_min,
                "retention moved the commit-log start"
            );
            // Closing the files frees their blocks (here, not on the writer's thread), before
            // the usage is measured again.
            drop(deleted.segments);
            refresh_usage(shared);
            true
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "retention failed");
            true
        }
        Err(_) => false,
    }
}

/// Re-measures derived files (consume queues, index, raft entry index) and the file system.
pub fn refresh_usage(shared: &Shared) {
    let derived: u64 = shared
        .all_queues()
        .iter()
        .map(|q| q.disk_bytes())
        .sum::<u64>()
        + shared.index.disk_bytes()
        + shared.raft.as_ref().map_or(0, |r| r.entries.disk_bytes())
        + shared.timers.lock().disk_bytes();
    shared.disk.derived_bytes.store(derived, Ordering::Release);
    shared.disk.refresh_fs();
}

/// How many of the oldest segments retention would delete now.
fn segments_to_delete(shared: &Shared, now_ms: i64) -> usize {
    let cfg = &shared.config;
    let segs = shared.log.snapshot();
    let retention_ms = i64::try_from(cfg.retention.as_millis()).unwrap_or(i64::MAX);
    let ratio = shared.disk.ratio();
    let capacity = shared.disk.capacity().max(1) as f64;
    let mut freed = 0f64;
    let mut count = 0;
    // Never the newest (active) segment.
    for seg in segs.iter().take(segs.len().saturating_sub(1)) {
        let old = now_ms.saturating_sub(seg.last_store_ts.load(Ordering::Acquire)) > retention_ms;
        let projected = ratio - freed / capacity;
        let over = projected > cfg.disk_high_ratio;
        if !(old || over) {
            break;
        }
        freed += seg.len.load(Ordering::Acquire) as f64;
        count += 1;
    }
    count
}
