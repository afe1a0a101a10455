//! Ends of concurrent requests written together: a commit or rollback joins a queue, and up to
//! [`MAX_WRITERS`] writes are under way at once, each taking everything queued when it starts
//! (group commit). Under load, many ends share one log entry (one proposal, one replication
//! round, one apply, one chunk of the resolved table); alone, an end is written at once.
//!
//! The entry holds every end's resolution in one op (`TxEndsOp`) and every commit's copies:
//! one entry decides each of them, as for an end written alone.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use sluice_proto::v1::TxResolveOp;
use sluice_proto::{ApiError, ErrorCode};
use tokio::sync::oneshot;

use super::Transactions;
use crate::messaging::{Acked, Announced};
use crate::state::transactions as table;
use crate::store::{AppendBatch, MixedBatch};

/// Writes of ends under way at once (each a log entry).
const MAX_WRITERS: usize = 2;
/// A write takes queued ends up to these sizes (one end always, whatever its size).
const MAX_BATCH_ENDS: usize = 512;
const MAX_BATCH_BYTES: usize = 1 << 20;

type Outcome = Result<Acked, Announced>;

struct Job {
    op: TxResolveOp,
    parts: Vec<AppendBatch>,
    now_ms: i64,
    done: oneshot::Sender<Outcome>,
}

impl Job {
    fn messages(&self) -> usize {
        self.parts.iter().map(|p| p.messages.len()).sum()
    }

    fn bytes(&self) -> usize {
        self.parts
            .iter()
            .flat_map(|p| p.messages.iter())
            .map(crate::store::record::payload_size)
            .sum()
    }
}

#[derive(Default)]
pub(super) struct EndQueue {
    jobs: VecDeque<Job>,
    writers: usize,
    /// Writes made, and ends they carried.
    writes: u64,
    ends: u64,
}

/// A write slot held; let go, it hands what is still queued to a task of its own (so the
/// request that took the slot answers without waiting for others' ends).
struct Slot {
    this: Arc<Transactions>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut q = self.this.end_queue.lock();
        if q.jobs.is_empty() {
            q.writers = q.writers.saturating_sub(1);
            return;
        }
        drop(q);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let this = self.this.clone();
                rt.spawn(async move {
                    let slot = Slot { this: this.clone() };
                    loop {
                        let jobs = this.take_batch();
                        if jobs.is_empty() {
                            break;
                        }
                        this.write_batch(jobs).await;
                    }
                    drop(slot);
                });
            }
            // No runtime (shutting down): the queued ends fail, and their callers retry.
            Err(_) => {
                let mut q = self.this.end_queue.lock();
                q.writers = q.writers.saturating_sub(1);
                q.jobs.clear();
            }
        }
    }
}

impl Transactions {
    /// Writes one end (its resolution and, for a commit, the copies of its half messages),
    /// together with whatever other ends are queued; returns once the log has it.
    pub(super) async fn write_end(
        self: &Arc<Self>,
        op: TxResolveOp,
        parts: Vec<AppendBatch>,
        now_ms: i64,
    ) -> Outcome {
        let (done, rx) = oneshot::channel();
        let write = {
            let mut q = self.end_queue.lock();
            q.jobs.push_back(Job {
                op,
                parts,
                now_ms,
                done,
            });
            let free = q.writers < MAX_WRITERS;
            if free {
                q.writers += 1;
            }
            free
        };
        if write {
            let slot = Slot { this: self.clone() };
            let jobs = self.take_batch();
            self.write_batch(jobs).await;
            drop(slot);
        }
        rx.await.unwrap_or_else(|_| {
            Err(Announced::NotStored(ApiError::new(
                ErrorCode::Unavailable,
                "the write of this end stopped; retry",
            )))
        })
    }

    /// Writes of ends made so far, and the ends they carried.
    pub fn end_writes(&self) -> (u64, u64) {
        let q = self.end_queue.lock();
        (q.writes, q.ends)
    }

    fn take_batch(&self) -> Vec<Job> {
        let mut q = self.end_queue.lock();
        let mut jobs = Vec::new();
        let mut bytes = 0;
        while let Some(next) = q.jobs.front() {
            let b = next.bytes();
            if !jobs.is_empty() && (jobs.len() >= MAX_BATCH_ENDS || bytes + b > MAX_BATCH_BYTES) {
                break;
            }
            bytes += b;
            if let Some(job) = q.jobs.pop_front() {
                jobs.push(job);
            }
        }
        if !jobs.is_empty() {
            q.writes += 1;
            q.ends += jobs.len() as u64;
        }
        jobs
    }

    async fn write_batch(&self, jobs: Vec<Job>) {
        let Some(now_ms) = jobs.first().map(|j| j.now_ms) else {
            return;
        };
        let op = match jobs.as_slice() {
            // Alone, an end keeps the op of one resolution.
            [one] => crate::state::StateOp {
                op: Some(sluice_proto::v1::meta_op::Op::TxResolve(one.op.clone())),
            },
            _ => table::ends_op(jobs.iter().map(|j| j.op.clone()).collect()),
        };
        let counts: Vec<usize> = jobs.iter().map(Job::messages).collect();
        let mut parts: Vec<AppendBatch> = Vec::new();
        let mut dones = Vec::with_capacity(jobs.len());
        for j in jobs {
            dones.push(j.done);
            for p in j.parts {
                match parts.last_mut() {
                    Some(last) if last.topic == p.topic && last.queue_id == p.queue_id => {
                        last.messages.extend(p.messages)
                    }
                    _ => parts.push(p),
                }
            }
        }
        let batch = MixedBatch {
            state: vec![Bytes::from(op.encode_to_vec())],
            parts,
        };
        let written = self.write.append_mixed_acked(&batch, now_ms).await;
        match written {
            Ok(acked) if acked.entries.len() == counts.iter().sum::<usize>() => {
                let mut entries = acked.entries.into_iter();
                for (done, n) in dones.into_iter().zip(counts) {
                    let mine = Acked {
                        entries: entries.by_ref().take(n).collect(),
                        apply_at: acked.apply_at,
                    };
                    let _ = done.send(Ok(mine));
                }
            }
            Ok(acked) => {
                let e = ApiError::internal(format!(
                    "{} positions for {} copied messages",
                    acked.entries.len(),
                    counts.iter().sum::<usize>()
                ));
                tracing::error!(error = %e, "a written batch of ends");
                // Decided, but without positions to answer with: a retry reads the outcome.
                for done in dones {
                    let _ = done.send(Err(Announced::NotStored(e.clone())));
                }
            }
            Err(e) => {
                for done in dones {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
