//! The one write path of messages and state: a standalone broker's store writer confirms a
//! write; a replica group's Raft log commits it (and only the master takes writes). Handlers
//! call this instead of branching on the broker's mode.

use std::sync::Arc;

use sluice_proto::{ApiError, ErrorCode};

use super::standalone::LogWrites;
use crate::replication::ReplicaGroup;
use crate::state::{Applied, StateMachine, StateOp};
use crate::store::{AppendBatch, Appended, MessageStore, MixedBatch};

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
    ) -> Result<Vec<Appended>, ApiError> {
        match self {
            WritePath::Standalone { store, state, log } => {
                let encoded = store.encode_mixed(batch)?;
                let ticket = log.begin(store);
                let written = match store.append_encoded(encoded).await {
                    Ok(w) => w,
                    Err(e) => {
                        log.abandon(ticket);
                        return Err(e.into());
                    }
                };
                let mut ops: Vec<StateOp> = batch
                    .state
                    .iter()
                    .filter_map(|b| crate::state::decode_op(b))
                    .collect();
                if let Some(point) = log.applying(ticket, store, now_ms) {
                    ops.push(crate::state::producers::rescan_point_op(point));
                }
                state.apply(None, &ops, false)?;
                Ok(written.entries)
            }
            WritePath::Replicated { group, .. } => {
                let (index, entries) = group.propose_mixed(batch, now_ms).await?;
                self.applied(index).await?;
                Ok(entries)
            }
        }
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

    /// [`Self::append`] that also says where the batch is: its entry index in a replica
    /// group's log (0 standalone).
    pub async fn append_indexed(
        &self,
        batch: &AppendBatch,
        now_ms: i64,
    ) -> Result<(Vec<Appended>, u64), ApiError> {
        match self {
            WritePath::Standalone { store, .. } => {
                let encoded = store.encode(batch)?;
                Ok((store.append_encoded(encoded).await?.entries, 0))
            }
            WritePath::Replicated { group, .. } => {
                let (index, entries) = group.propose_send(batch, now_ms).await?;
                Ok((entries, index))
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
