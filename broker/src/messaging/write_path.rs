//! The one write path of messages and state: a standalone broker's store writer confirms a
//! write; a replica group's Raft log commits it (and only the master takes writes). Handlers
//! call this instead of branching on the broker's mode.

use std::sync::Arc;

use sluice_proto::{ApiError, ErrorCode};

use super::standalone::LogWrites;
use crate::replication::ReplicaGroup;
use crate::state::{Applied, StateMachine, StateOp};
use crate::store::{batch_marks, AppendBatch, Appended, MessageStore, MixedBatch};

/// Why [`WritePath::append_announced`] failed.
#[derive(Debug, Clone)]
pub enum Announced {
    /// Not stored, or not known to be (a replica group's outcome may still be decided).
    NotStored(ApiError),
    /// Stored, but its state is not applied (a standalone broker's metadata store failed):
    /// only a restart, which reads the log again, applies it.
    StoredUnapplied(ApiError),
}

/// A standalone write that failed: certainly not written (its ticket goes), or maybe written
/// (its ticket stays, so the rescan point stays below it until a restart reads it).
fn unwritten(
    log: &LogWrites,
    ticket: super::standalone::Ticket,
    e: crate::store::StoreError,
) -> Announced {
    if super::standalone::may_be_written(&e) {
        Announced::StoredUnapplied(e.into())
    } else {
        log.abandon(ticket);
        Announced::NotStored(e.into())
    }
}

/// A write acknowledged by the log: its positions, and, in a replica group, the entry whose
/// application makes its state readable here (standalone writes return with it applied). The
/// entry is committed, so it is applied on every replica and before any new master takes
/// writes: a caller may answer its client at once, as long as whatever must see the state
/// (a retry's judge, an end's record) waits for it.
#[derive(Debug, Clone)]
pub struct Acked {
    pub entries: Vec<Appended>,
    pub apply_at: Option<u64>,
}

#[derive(Clone)]
pub enum WritePath {
    Standalone {
        store: MessageStore,
        state: Arc<StateMachine>,
        /// State-carrying writes under way (the restart rescan point).
        log: Arc<LogWrites>,
    },
    Replicated {
        group: Arc<ReplicaGroup>,
        state: Arc<StateMachine>,
    },
}

impl WritePath {
    pub fn standalone(store: MessageStore, state: Arc<StateMachine>) -> WritePath {
        WritePath::Standalone {
            store,
            state,
            log: Arc::new(LogWrites::default()),
        }
    }

    /// Standalone: the tracker of writes that carry state.
    pub fn log_writes(&self) -> Option<&Arc<LogWrites>> {
        match self {
            WritePath::Standalone { log, .. } => Some(log),
            WritePath::Replicated { .. } => None,
        }
    }

    /// Writes state ops and messages of any queues as one unit (one Raft entry, or one
    /// standalone write), and returns the messages' positions once the ops are applied here.
    pub async fn append_mixed(
        &self,
        batch: &MixedBatch,
        now_ms: i64,
    ) -> Result<Vec<Appended>, Announced> {
        let acked = self.append_mixed_acked(batch, now_ms, None).await?;
        self.then_applied(acked).await
    }

    /// [`Self::append_mixed`], returning as soon as a replica group committed the entry: the
    /// caller waits for [`Acked::apply_at`] before anything reads the state it changes. With
    /// `term`, a replica group writes it only while its Raft term is that one.
    pub async fn append_mixed_acked(
        &self,
        batch: &MixedBatch,
        now_ms: i64,
        term: Option<u64>,
    ) -> Result<Acked, Announced> {
        match self {
            WritePath::Standalone { store, state, log } => {
                let encoded = store
                    .encode_mixed(batch)
                    .map_err(|e| Announced::NotStored(e.into()))?;
                let ticket = log.begin(store);
                let written = match store.append_encoded(encoded).await {
                    Ok(w) => w,
                    Err(e) => return Err(unwritten(log, ticket, e)),
                };
                let mut ops: Vec<StateOp> = batch
                    .state
                    .iter()
                    .filter_map(|b| crate::state::decode_op(b))
                    .collect();
                if let Some(point) = log.point(&ticket, store, now_ms) {
                    ops.push(crate::state::producers::rescan_point_op(point));
                }
                let applied = (|| -> Result<(), ApiError> {
                    fail::fail_point!("messaging::write_path::before_mixed_state", |_| Err(
                        ApiError::internal("failpoint: before the mixed batch's state is applied")
                    ));
                    state.apply(None, &ops, false)?;
                    Ok(())
                })();
                applied.map_err(Announced::StoredUnapplied)?;
                log.applied(ticket);
                Ok(Acked {
                    entries: written.entries,
                    apply_at: None,
                })
            }
            WritePath::Replicated { group, .. } => {
                let (index, entries) = group
                    .propose_mixed(batch, now_ms, term)
                    .await
                    .map_err(Announced::NotStored)?;
                Ok(Acked {
                    entries,
                    apply_at: Some(index),
                })
            }
        }
    }

    /// Waits until an acknowledged write's state is applied here.
    pub async fn then_applied(&self, acked: Acked) -> Result<Vec<Appended>, Announced> {
        if let Some(index) = acked.apply_at {
            self.applied(index).await.map_err(Announced::NotStored)?;
        }
        Ok(acked.entries)
    }

    pub fn state(&self) -> &Arc<StateMachine> {
        match self {
            WritePath::Standalone { state, .. } | WritePath::Replicated { state, .. } => state,
        }
    }

    pub fn group(&self) -> Option<&Arc<ReplicaGroup>> {
        match self {
            WritePath::Standalone { .. } => None,
            WritePath::Replicated { group, .. } => Some(group),
        }
    }

    /// NOT_MASTER (with the master's address when known) unless this broker takes writes.
    pub fn require_writer(&self) -> Result<(), ApiError> {
        match self {
            WritePath::Standalone { .. } => Ok(()),
            WritePath::Replicated { group, .. } => group.require_master(),
        }
    }

    /// True when an acknowledged write is in the log for good: standalone, or a replica group
    /// that answers once a quorum has it (with `ack = "leader"` a new master may overwrite it).
    pub fn acks_committed(&self) -> bool {
        match self {
            WritePath::Standalone { .. } => true,
            WritePath::Replicated { group, .. } => {
                group.ack_policy() == crate::replication::AckPolicy::Quorum
            }
        }
    }

    /// [`Self::require_writer`] and [`Self::term`] from one reading of the master state.
    pub fn writer_term(&self) -> Result<u64, ApiError> {
        match self {
            WritePath::Standalone { .. } => Ok(0),
            WritePath::Replicated { group, .. } => group.master_term(),
        }
    }

    /// Appends one queue's batch atomically; returns the message ids (moved out of the batch,
    /// not copied) and each message's position, once acknowledged.
    pub async fn append(
        &self,
        batch: AppendBatch,
        now_ms: i64,
    ) -> Result<(Vec<String>, Vec<Appended>), ApiError> {
        let take_ids = |b: AppendBatch| -> Vec<String> {
            b.messages.into_iter().map(|m| m.message_id).collect()
        };
        match self {
            WritePath::Standalone { store, .. } => {
                let encoded = store.encode(&batch)?;
                let ids = take_ids(batch);
                Ok((ids, store.append_encoded(encoded).await?.entries))
            }
            WritePath::Replicated { group, .. } => {
                let (_, entries) = group.propose_send(&batch, now_ms).await?;
                Ok((take_ids(batch), entries))
            }
        }
    }

    /// Appends a batch whose first record announces state (an idempotent sequence, a
    /// transaction's half messages) and returns once that state is applied here: a replica
    /// group's applier reads it from the entry; a standalone broker applies it right after the
    /// write (a restart reads it back from the log).
    pub async fn append_announced(
        &self,
        batch: &AppendBatch,
        now_ms: i64,
    ) -> Result<Vec<Appended>, Announced> {
        let acked = self.append_announced_acked(batch, now_ms).await?;
        self.then_applied(acked).await
    }

    /// [`Self::append_announced`], returning as soon as a replica group committed the entry
    /// (see [`Acked`]).
    pub async fn append_announced_acked(
        &self,
        batch: &AppendBatch,
        now_ms: i64,
    ) -> Result<Acked, Announced> {
        match self {
            WritePath::Standalone { store, state, log } => {
                let encoded = store
                    .encode(batch)
                    .map_err(|e| Announced::NotStored(e.into()))?;
                let ticket = log.begin(store);
                let entries = match store.append_encoded(encoded).await {
                    Ok(w) => w.entries,
                    Err(e) => return Err(unwritten(log, ticket, e)),
                };
                let point = log.point(&ticket, store, now_ms);
                let applied = (|| -> Result<(), ApiError> {
                    fail::fail_point!("messaging::write_path::before_announced_state", |_| Err(
                        ApiError::internal("failpoint: before the announced state is applied")
                    ));
                    let locator = entries
                        .first()
                        .map(|a| a.commit_log_offset)
                        .ok_or_else(|| ApiError::internal("a stored batch without messages"))?;
                    let mut ops = crate::state::batch_ops(&batch_marks(batch, now_ms), locator);
                    if let Some(p) = point {
                        ops.push(crate::state::producers::rescan_point_op(p));
                    }
                    // Not flushed (the batch is in the log; a restart reads it back), so no
                    // disk wait: applied in place rather than on a blocking thread, which cost
                    // a third of a standalone broker's idempotent throughput.
                    state.apply(None, &ops, false)?;
                    Ok(())
                })();
                applied.map_err(Announced::StoredUnapplied)?;
                log.applied(ticket);
                Ok(Acked {
                    entries,
                    apply_at: None,
                })
            }
            WritePath::Replicated { group, .. } => {
                let (index, entries) = group
                    .propose_send(batch, now_ms)
                    .await
                    .map_err(Announced::NotStored)?;
                Ok(Acked {
                    entries,
                    apply_at: Some(index),
                })
            }
        }
    }

    /// The term of this broker's mastership (standalone: always 0).
    pub fn term(&self) -> u64 {
        match self {
            WritePath::Standalone { .. } => 0,
            WritePath::Replicated { group, .. } => group.master_state().term,
        }
    }

    /// The entry index the state has applied (standalone: every write is applied at once).
    pub fn applied_index(&self) -> u64 {
        match self {
            WritePath::Standalone { .. } => u64::MAX,
            WritePath::Replicated { group, .. } => *group.subscribe_applied().borrow(),
        }
    }

    /// Waits until the state has applied entry `index` (standalone: nothing to wait for).
    pub async fn applied(&self, index: u64) -> Result<(), ApiError> {
        if let WritePath::Replicated { group, .. } = self {
            let mut applied = group.subscribe_applied();
            applied
                .wait_for(|&a| a >= index)
                .await
                .map_err(|_| ApiError::new(ErrorCode::Unavailable, "the replica stopped"))?;
        }
        Ok(())
    }

    /// Waits until everything this broker has written or proposed so far is applied and
    /// dispatched (or known never to be): what a leader-only task does after a failed write
    /// whose outcome it cannot know, before it reads the state again.
    pub async fn settle(&self, store: &MessageStore) -> Result<(), ApiError> {
        let target = match self {
            WritePath::Standalone { .. } => store.write_position(),
            WritePath::Replicated { group, .. } => {
                let last = group.status().await?.last_index;
                let mut applied = group.subscribe_applied();
                applied
                    .wait_for(|&a| a >= last)
                    .await
                    .map_err(|_| ApiError::new(ErrorCode::Unavailable, "the replica stopped"))?;
                store.confirmed_offset()
            }
        };
        let mut dispatched = store.subscribe_dispatched();
        dispatched
            .wait_for(|&d| d >= target)
            .await
            .map_err(|_| ApiError::new(ErrorCode::Unavailable, "the store stopped"))?;
        Ok(())
    }

    /// [`Self::settle`], retried until it succeeds or mastership `term` ends (then what that
    /// term proposed is in the state of the next master, or gone): what a write whose outcome
    /// is unknown waits for before it lets a retry look at the state. Standalone: nothing to
    /// wait for.
    pub async fn settle_in_term(&self, store: &MessageStore, term: u64) {
        let WritePath::Replicated { group, .. } = self else {
            return;
        };
        let mut master = group.subscribe_master();
        loop {
            tokio::select! {
                r = self.settle(store) => if r.is_ok() { return },
                _ = master.wait_for(|m| !m.is_master || m.term != term) => return,
            }
            // The replica's mailbox was full, say: ask again shortly.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Applies a state operation; durable (in the metadata store, or in a quorum's log) and
    /// applied on this broker when it returns. A replica group cannot tell whether the op
    /// changed anything (it was decided on apply): callers check before they propose.
    pub async fn apply(&self, op: StateOp, now_ms: i64) -> Result<Applied, ApiError> {
        match self {
            WritePath::Standalone { state, .. } => {
                let state = state.clone();
                let r = tokio::task::spawn_blocking(move || state.apply(None, &[op], true))
                    .await
                    .map_err(|e| ApiError::internal(format!("state apply task failed: {e}")))??;
                Ok(r.first().copied().unwrap_or(Applied::Unchanged))
            }
            WritePath::Replicated { group, .. } => {
                group.propose_meta(&op, now_ms).await?;
                Ok(Applied::Changed)
            }
        }
    }
}
