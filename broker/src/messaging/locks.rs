//! Queue locks of ordered consumption, protocol-neutral: take, renew and give up, decided in
//! the replicated state (`state/locks.rs`, where the rules on time are).

use std::time::Duration;

use sluice_proto::names::{validate_group_name, validate_topic_name};
use sluice_proto::v1::QueueRef;
use sluice_proto::ApiError;

use super::WritePath;
use crate::state::locks::{self, QueueLock, MAX_CLIENT_ID, MAX_QUEUES_PER_OP};

pub struct QueueLocks {
    write: WritePath,
    lease: Duration,
}

/// What a lock request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    pub queues: Vec<QueueRef>,
    pub lease: Duration,
    /// The committed offsets of the locked queues that have one, read after the lock.
    pub committed: Vec<(QueueRef, u64)>,
}

impl QueueLocks {
    pub fn new(write: WritePath, lease: Duration) -> Self {
        QueueLocks { write, lease }
    }

    fn check(group: &str, client_id: &str, queues: &[QueueRef]) -> Result<(), ApiError> {
        validate_group_name(group)?;
        if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID {
            return Err(ApiError::invalid(format!(
                "client_id must be 1..={MAX_CLIENT_ID} bytes"
            )));
        }
        if queues.len() > MAX_QUEUES_PER_OP {
            return Err(ApiError::invalid(format!(
                "{} queues in one lock request; at most {MAX_QUEUES_PER_OP}",
                queues.len()
            )));
        }
        for q in queues {
            validate_topic_name(&q.topic)?;
        }
        Ok(())
    }

    /// Takes or renews `queues` for `client_id`; answers with those it holds now. The master
    /// decides (through the log in a replica group).
    pub async fn lock(
        &self,
        group: &str,
        client_id: &str,
        queues: Vec<QueueRef>,
        now_ms: i64,
    ) -> Result<Locked, ApiError> {
        Self::check(group, client_id, &queues)?;
        self.write.require_writer()?;
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(locks::MAX_LEASE_MS);
        let term = self.write.term();
        if !queues.is_empty() {
            let op = locks::lock_op(group, client_id, &queues, false, now_ms, lease_ms, term);
            self.write.apply(op, now_ms).await?;
        }
        let held = locks::held_by(
            self.write.state().meta().as_ref(),
            group,
            client_id,
            &queues,
            now_ms,
        )?;
        let state = self.write.state();
        let mut committed = Vec::new();
        for q in &held {
            if let Some(o) = state.offsets.get(group, &q.topic, q.queue_id)? {
                committed.push((q.clone(), o));
            }
        }
        Ok(Locked {
            queues: held,
            lease: self.lease,
            committed,
        })
    }

    /// Gives up those of `queues` that `client_id` holds.
    pub async fn unlock(
        &self,
        group: &str,
        client_id: &str,
        queues: Vec<QueueRef>,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        Self::check(group, client_id, &queues)?;
        self.write.require_writer()?;
        if queues.is_empty() {
            return Ok(());
        }
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(locks::MAX_LEASE_MS);
        let op = locks::lock_op(
            group,
            client_id,
            &queues,
            true,
            now_ms,
            lease_ms,
            self.write.term(),
        );
        self.write.apply(op, now_ms).await?;
        Ok(())
    }

    /// The group's locks with what is left of each lease at `now_ms` (0: lapsed).
    pub fn list(&self, group: &str, now_ms: i64) -> Result<Vec<(QueueLock, u64)>, ApiError> {
        Ok(locks::list(self.write.state().meta().as_ref(), group)?
            .into_iter()
            .map(|l| {
                let left = u64::try_from(l.expires_ms.saturating_sub(now_ms)).unwrap_or(0);
                (l, left)
            })
            .collect())
    }
}
