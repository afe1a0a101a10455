//! Queue locks of ordered consumption, protocol-neutral: take, renew and give up, decided in
//! the replicated state (`state/locks.rs`, where the rules on time are).

use std::time::{Duration, Instant};

use sluice_proto::names::{validate_group_name, validate_topic_name};
use sluice_proto::v1::QueueRef;
use sluice_proto::ApiError;

use super::WritePath;
use crate::state::locks::{self, QueueLock, MAX_CLIENT_ID, MAX_QUEUES_PER_OP};

pub struct QueueLocks {
    write: WritePath,
    lease: Duration,
    /// The wall clock once, and the monotonic clock since: lock ops are stamped from these, so
    /// a step of the system clock cannot end leases early.
    epoch: (i64, Instant),
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
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        QueueLocks {
            write,
            lease,
            epoch: (wall, Instant::now()),
        }
    }

    /// Milliseconds since the Unix epoch, moving with the monotonic clock.
    pub fn clock_ms(&self) -> i64 {
        let since = i64::try_from(self.epoch.1.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.epoch.0.saturating_add(since)
    }

    /// The queues that exist here and that no other client holds now: what is worth a log
    /// entry (the apply decides again).
    fn worth_asking(
        &self,
        group: &str,
        client_id: &str,
        queues: Vec<QueueRef>,
        now_ms: i64,
    ) -> Result<Vec<QueueRef>, ApiError> {
        let state = self.write.state();
        let mut out = Vec::with_capacity(queues.len());
        for q in queues {
            let exists = state
                .topics
                .get(&q.topic)
                .is_some_and(|t| q.queue_id < t.read_queues.max(t.write_queues));
            if exists && !locks::held_by_other(state.meta().as_ref(), group, client_id, &q, now_ms)?
            {
                out.push(q);
            }
        }
        Ok(out)
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

    /// Takes or renews `queues` for `client_id`; answers with those this request got (a whole
    /// lease from `now_ms`, a [`Self::clock_ms`] reading). The master decides (through the log
    /// in a replica group); queues that do not exist here, or that another client holds, are
    /// refused without a log entry.
    pub async fn lock(
        &self,
        group: &str,
        client_id: &str,
        queues: Vec<QueueRef>,
        now_ms: i64,
    ) -> Result<Locked, ApiError> {
        Self::check(group, client_id, &queues)?;
        let term = self.write.writer_term()?;
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(locks::MAX_LEASE_MS);
        let queues = self.worth_asking(group, client_id, queues, now_ms)?;
        if !queues.is_empty() {
            let op = locks::lock_op(group, client_id, &queues, false, now_ms, lease_ms, term);
            self.write.apply(op, now_ms).await?;
        }
        let held = locks::granted(
            self.write.state().meta().as_ref(),
            group,
            client_id,
            &queues,
            now_ms,
            lease_ms,
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
        let term = self.write.writer_term()?;
        if queues.is_empty() {
            return Ok(());
        }
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(locks::MAX_LEASE_MS);
        let op = locks::lock_op(group, client_id, &queues, true, now_ms, lease_ms, term);
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
