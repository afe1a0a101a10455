//! What a standalone broker needs to rebuild log-carried state after a crash. A replica group
//! applies state from its log with the applied index written in the same batch; a standalone
//! broker writes messages first and applies their state right after, into a metadata store
//! that keeps its latest writes in memory for up to half a second. So it records, now and then
//! and in the same metadata write as some state, a commit-log point below which every write
//! that carries state (idempotent batches, mixed batches) has its state applied; at start it
//! reads the log from that point and applies what it finds again (every such op is
//! idempotent).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use sluice_proto::ApiError;

use crate::state::{producers, StateMachine};
use crate::store::{LogState, MessageStore};

/// Writes that carry state, from their start until their state is applied.
#[derive(Default)]
pub struct LogWrites {
    inflight: Mutex<BTreeMap<u64, Write>>,
    next_ticket: AtomicU64,
    /// When the recorded point may move next (ms since the epoch).
    point_due: AtomicI64,
}

struct Write {
    /// The write position when the write started.
    at: u64,
    /// Its ticket is held: its state is still to be applied by its caller.
    live: bool,
}

/// A write under way; hand it back with [`LogWrites::applied`]. Dropped without that (the
/// write failed and may be in the log, or its caller went away), it keeps the rescan point
/// below its write but no longer holds the transactions' retention floor
/// ([`LogWrites::oldest_under_way`]): its state waits for a restart, and one lost ticket must
/// not stop retention until then.
pub struct Ticket {
    id: u64,
    log: Arc<LogWrites>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(w) = self.log.inflight.lock().get_mut(&self.id) {
            w.live = false;
        }
    }
}

impl LogWrites {
    /// Called before the write is handed to the store.
    pub fn begin(self: &Arc<Self>, store: &MessageStore) -> Ticket {
        let id = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        // The position is read under the lock: see `oldest_under_way`.
        let mut inflight = self.inflight.lock();
        let at = store.write_position();
        inflight.insert(id, Write { at, live: true });
        Ticket {
            id,
            log: self.clone(),
        }
    }

    /// The write's state is about to be applied (in the metadata write that may carry the
    /// returned point): the point below which every other such write is applied, at most
    /// once a second (None: not this time; an older point stays true, the rescan only reads
    /// more). Hand the ticket back with [`Self::applied`] once the state is applied; a ticket
    /// never handed back keeps the point below its write until a restart reads it again.
    pub fn point(&self, ticket: &Ticket, store: &MessageStore, now_ms: i64) -> Option<u64> {
        let inflight = self.inflight.lock();
        if self.point_due.load(Ordering::Relaxed) > now_ms {
            return None;
        }
        self.point_due
            .store(now_ms.saturating_add(1_000), Ordering::Relaxed);
        // Anything that starts later starts at or after the current write position.
        let oldest = inflight
            .iter()
            .filter(|(t, _)| **t != ticket.id)
            .map(|(_, w)| w.at)
            .min()
            .unwrap_or(u64::MAX);
        Some(oldest.min(store.write_position()))
    }

    /// Where the oldest write whose caller is still to apply its state started, or the write
    /// position if there is none: every such write is at or above it (one that begins later
    /// reads a position at least this one).
    pub fn oldest_under_way(&self, store: &MessageStore) -> u64 {
        let inflight = self.inflight.lock();
        let oldest = inflight
            .values()
            .filter(|w| w.live)
            .map(|w| w.at)
            .min()
            .unwrap_or(u64::MAX);
        oldest.min(store.write_position())
    }

    /// The write's state is applied.
    pub fn applied(&self, ticket: Ticket) {
        self.inflight.lock().remove(&ticket.id);
    }

    /// The write certainly did not happen: nothing to apply.
    pub fn abandon(&self, ticket: Ticket) {
        self.inflight.lock().remove(&ticket.id);
    }
}

/// Whether a failed standalone write may still be in the log (a sync flush that timed out,
/// an I/O error mid-write): its state then waits for a restart's rescan.
pub fn may_be_written(e: &crate::store::StoreError) -> bool {
    matches!(
        e,
        crate::store::StoreError::Timeout(_) | crate::store::StoreError::Io(_)
    )
}

/// At start: applies the state carried by the log written after the recorded point. Returns
/// how many writes it found.
pub fn recover(store: &MessageStore, state: &StateMachine) -> Result<usize, ApiError> {
    let end = store.write_position();
    // Never recorded: no build that writes state into the log opened this store, so there is
    // nothing to read (and the point is recorded, durably, before the first such write).
    let Some(from) = producers::standalone_applied_below(state.meta().as_ref())? else {
        state.apply(None, &[producers::rescan_point_op(end)], true)?;
        return Ok(0);
    };
    let found = store.log_state(from)?;
    let n = found.len();
    let mut ops = Vec::with_capacity(n + 1);
    for f in found {
        match f {
            LogState::Batch(marks, offset) => ops.extend(crate::state::batch_ops(&marks, offset)),
            LogState::Meta(body) => ops.extend(crate::state::decode_op(&body)),
        }
    }
    ops.push(producers::rescan_point_op(end));
    state.apply(None, &ops, true)?;
    Ok(n)
}
