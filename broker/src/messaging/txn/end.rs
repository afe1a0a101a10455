//! Ending a transaction: commit (its half messages copied to their real queues in one entry
//! with the resolution) or rollback (the resolution alone), one end in flight per transaction on
//! this master, answered once the log has it.

use std::sync::Arc;

use sluice_proto::v1::TxResolveOp;
use sluice_proto::{ApiError, ErrorCode};
use tokio::sync::watch;

use super::{resolution_name, validate_id, EndOutcome, EndSlot, Ended, Transactions};
use crate::messaging::Announced;
use crate::state::transactions::{COMMITTED, OPEN, ROLLED_BACK};
use crate::store::AppendBatch;

/// An end under way whose waiters have no outcome yet. Dropped unsettled (the call was
/// cancelled), it settles on its own: waits until the log has decided (or the mastership
/// ended), frees the slot and tells the waiters to retry, which then reads the state.
struct EndGuard {
    this: Arc<Transactions>,
    id: String,
    term: u64,
    tx: Option<watch::Sender<Option<EndOutcome>>>,
}

impl EndGuard {
    fn settled(&mut self, outcome: EndOutcome) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Some(outcome));
        }
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (this, id, term) = (self.this.clone(), self.id.clone(), self.term);
        rt.spawn(async move {
            // Its write may still be queued: once written, settling the log covers it.
            this.end_written(&id).await;
            this.write.settle_in_term(&this.store, term).await;
            this.free_slot(&id, term);
            let _ = tx.send(Some(Err(ApiError::new(
                ErrorCode::Unavailable,
                "the end's first attempt was cancelled; retry",
            ))));
        });
    }
}

impl Transactions {
    /// Commits or rolls back `id` (`COMMITTED` / `ROLLED_BACK`). Ending a transaction the same
    /// way again answers as the first time (without positions); the other way is refused.
    pub async fn end(self: &Arc<Self>, id: &str, resolution: i32, now_ms: i64) -> EndOutcome {
        let term = self.write.writer_term()?;
        validate_id(id)?;
        if resolution != COMMITTED && resolution != ROLLED_BACK {
            return Err(ApiError::invalid(
                "a transaction ends in COMMIT or ROLLBACK",
            ));
        }
        let step = {
            let mut ends = self.ends.lock();
            match ends.get(id).filter(|s| s.term == term) {
                Some(slot) => Err(slot.done.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    ends.insert(id.to_string(), EndSlot { term, done: rx });
                    Ok(tx)
                }
            }
        };
        let outcome = match step {
            Err(mut done) => done
                .wait_for(Option::is_some)
                .await
                .map_err(|_| ApiError::new(ErrorCode::Unavailable, "the end stopped; retry"))?
                .clone(),
            // Ended by this call (its write goes through a writer task, see `batch.rs`); if the
            // call is dropped, the guard settles the end and frees the slot on its own.
            Ok(tx) => {
                let mut guard = EndGuard {
                    this: self.clone(),
                    id: id.to_string(),
                    term,
                    tx: Some(tx),
                };
                let outcome = self.end_now(id, resolution, now_ms, term).await;
                guard.settled(outcome.clone());
                Some(outcome)
            }
        };
        match outcome {
            Some(Ok(e)) if e.resolution != resolution && e.expired => Err(ApiError::new(
                ErrorCode::TransactionResolved,
                format!(
                    "transaction {id} expired (open longer than transaction_timeout, {:?}) and \
                     was rolled back",
                    self.settings.timeout
                ),
            )),
            Some(Ok(e)) if e.resolution != resolution => Err(ApiError::new(
                ErrorCode::TransactionResolved,
                format!(
                    "transaction {id} was {} already",
                    resolution_name(e.resolution)
                ),
            )),
            Some(o) => o,
            None => Err(ApiError::internal("an end without an outcome")),
        }
    }

    /// Runs an end this call holds the slot of; frees the slot once the state has the end
    /// (or the log settled a failed one), except after a write whose state failed to apply.
    async fn end_now(
        self: &Arc<Self>,
        id: &str,
        resolution: i32,
        now_ms: i64,
        term: u64,
    ) -> EndOutcome {
        match self.end_once(id, resolution, now_ms, term).await {
            Ok((e, apply_at)) => {
                // Answered once committed; the slot holds (later ends wait on it, sends stay
                // refused) until the state has the end, off the answer's path. Acknowledged
                // at commit (the default quorum ack), the master applied the entry first, so
                // that is now (a task per end, woken on another worker, cost a context switch);
                // acknowledged at the leader's append, it is later.
                match apply_at {
                    Some(index) if self.write.applied_index() < index => {
                        let (this, id) = (self.clone(), id.to_string());
                        tokio::spawn(async move {
                            let _ = this.write.applied(index).await;
                            this.free_slot(&id, term);
                        });
                    }
                    _ => self.free_slot(id, term),
                }
                Ok(e)
            }
            Err(Announced::NotStored(e)) => {
                // A commit may still be decided by the log: hold the slot until the log has
                // settled (or this mastership ended), so a retry reads the outcome from the
                // state instead of committing again.
                self.end_written(id).await;
                self.write.settle_in_term(&self.store, term).await;
                self.free_slot(id, term);
                Err(e)
            }
            Err(Announced::StoredUnapplied(e)) => {
                tracing::error!(tx = %id, error = %e, "a transaction's end is stored but not applied; it waits for a restart");
                Err(ApiError::new(
                    ErrorCode::Unavailable,
                    format!("stored, but not applied: {e}"),
                ))
            }
        }
    }

    fn free_slot(&self, id: &str, term: u64) {
        let mut ends = self.ends.lock();
        if ends.get(id).is_some_and(|s| s.term == term) {
            ends.remove(id);
        }
    }

    /// A resolution without messages, in the log (a standalone broker's too: a restart that
    /// lost the metadata store's latest writes reads it back).
    async fn write_resolution(
        self: &Arc<Self>,
        op: TxResolveOp,
        now_ms: i64,
        term: u64,
    ) -> Result<Option<u64>, Announced> {
        Ok(self.write_end(op, Vec::new(), now_ms, term).await?.apply_at)
    }

    /// Writes the end; returns once the log has it, with the entry whose application makes
    /// it readable here (see [`crate::messaging::Acked`]).
    async fn end_once(
        self: &Arc<Self>,
        id: &str,
        resolution: i32,
        now_ms: i64,
        term: u64,
    ) -> Result<(Ended, Option<u64>), Announced> {
        let refused = Announced::NotStored;
        // New sends are refused from now on; those under way finish first.
        self.sends_done(id).await;
        let Some(r) = self.record(id).map_err(refused)? else {
            if resolution == ROLLED_BACK {
                // Nothing was stored (every send failed): remember the rollback, so a late
                // half message of it is ignored.
                let apply_at = self
                    .write_resolution(resolution_op(id, ROLLED_BACK, now_ms, false), now_ms, term)
                    .await?;
                let ended = Ended {
                    resolution,
                    committed: Vec::new(),
                    expired: false,
                };
                return Ok((ended, apply_at));
            }
            return Err(refused(ApiError::new(
                ErrorCode::TransactionNotFound,
                format!(
                    "no transaction {id} on this broker group (never sent, or resolved long ago)"
                ),
            )));
        };
        if r.resolution != OPEN {
            let ended = Ended {
                resolution: r.resolution,
                committed: Vec::new(),
                expired: r.expired,
            };
            return Ok((ended, None));
        }
        // Open past the timeout (and not parked for an operator): it never becomes visible.
        let timeout = i64::try_from(self.settings.timeout.as_millis()).unwrap_or(i64::MAX);
        let expired = !r.parked && now_ms.saturating_sub(r.created_ms) > timeout;
        if resolution == ROLLED_BACK || expired {
            self.drop_sent(&r);
            let op = resolution_op(id, ROLLED_BACK, now_ms, expired);
            let apply_at = self.write_resolution(op, now_ms, term).await?;
            let ended = Ended {
                resolution: ROLLED_BACK,
                committed: Vec::new(),
                expired,
            };
            return Ok((ended, apply_at));
        }
        let op = resolution_op(id, resolution, now_ms, false);
        let mut ids = Vec::new();
        let mut parts: Vec<AppendBatch> = Vec::new();
        for (topic, queue_id, m) in self.sent_halves(&r, id).map_err(refused)? {
            ids.push(m.message_id.clone());
            match parts.last_mut() {
                Some(p) if p.topic == topic && p.queue_id == queue_id => p.messages.push(m),
                _ => parts.push(AppendBatch {
                    topic,
                    queue_id,
                    messages: vec![m],
                }),
            }
        }
        let acked = self.write_end(op, parts, now_ms, term).await?;
        let ended = Ended {
            resolution,
            committed: ids.into_iter().zip(acked.entries).collect(),
            expired: false,
        };
        Ok((ended, acked.apply_at))
    }
}

fn resolution_op(id: &str, resolution: i32, at_ms: i64, expired: bool) -> TxResolveOp {
    TxResolveOp {
        transaction_id: id.to_string(),
        resolution,
        at_ms,
        expired,
    }
}
