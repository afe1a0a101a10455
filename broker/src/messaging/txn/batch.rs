//! Ends of concurrent requests written together: a commit or rollback joins a queue, and up to
//! [`MAX_WRITERS`] writer tasks are under way at once, each taking everything queued when it
//! starts a write (group commit). Under load, many ends share one log entry (one proposal, one
//! replication round, one apply); an end that finds a writer free is written at once.
//!
//! The entry holds every end's resolution in one op (`TxEndsOp`) and every commit's copies:
//! one entry decides each of them, as for an end written alone. Writes run in tasks of their
//! own, so a cancelled request cancels nobody's write; a job still waiting when its term is
//! over is failed, not proposed.

use std::collections::{HashMap, VecDeque};
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
/// What a copy costs in an entry besides its payload (record header and fields), roughly.
const RECORD_OVERHEAD: usize = 256;

type Outcome = Result<Acked, Announced>;

struct Job {
    id: String,
    /// The master's term the end was decided in.
    term: u64,
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
            .map(|m| crate::store::record::payload_size(m) + RECORD_OVERHEAD)
            .sum()
    }
}

#[derive(Default)]
pub(super) struct EndQueue {
    jobs: VecDeque<Job>,
    writers: usize,
    /// Transactions with an end queued or being written.
    unwritten: HashMap<String, usize>,
    /// Writes made, and ends they carried.
    writes: u64,
    ends: u64,
}

/// A writer task's slot; given back when the queue is empty, or if the task is dropped.
struct Slot {
    this: Arc<Transactions>,
    held: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let mut q = self.this.end_queue.lock();
        let rt = tokio::runtime::Handle::try_current();
        match rt {
            // A writer that stopped early (a panic) leaves ends queued: another takes its slot.
            Ok(rt) if !q.jobs.is_empty() => {
                drop(q);
                let slot = Slot {
                    this: self.this.clone(),
                    held: true,
                };
                rt.spawn(slot.this.clone().drain(slot));
            }
            _ => {
                debug_assert!(q.writers > 0);
                q.writers = q.writers.saturating_sub(1);
            }
        }
    }
}

/// The ends of a write under way; let go (also when a write stops early), they count as
/// written, so their guards settle the log and free their slots.
struct Written<'a> {
    this: &'a Transactions,
    ids: Vec<String>,
}

impl Drop for Written<'_> {
    fn drop(&mut self) {
        self.this.jobs_done(std::mem::take(&mut self.ids));
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
        term: u64,
    ) -> Outcome {
        let (done, rx) = oneshot::channel();
        let start = {
            let mut q = self.end_queue.lock();
            *q.unwritten.entry(op.transaction_id.clone()).or_insert(0) += 1;
            q.jobs.push_back(Job {
                id: op.transaction_id.clone(),
                term,
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
        if start {
            let slot = Slot {
                this: self.clone(),
                held: true,
            };
            tokio::spawn(slot.this.clone().drain(slot));
        }
        rx.await.unwrap_or_else(|_| {
            Err(Announced::NotStored(ApiError::new(
                ErrorCode::Unavailable,
                "the write of this end stopped; retry",
            )))
        })
    }

    /// A writer task: writes what is queued until nothing is.
    async fn drain(self: Arc<Self>, mut slot: Slot) {
        loop {
            let jobs = {
                let mut q = self.end_queue.lock();
                if q.jobs.is_empty() {
                    q.writers = q.writers.saturating_sub(1);
                    slot.held = false;
                    return;
                }
                take_batch(&mut q)
            };
            self.write_batch(jobs).await;
        }
    }

    /// Waits until no end of `id` is queued or being written here (its outcome is decided or
    /// it was failed), so that settling the log afterwards covers it.
    pub(super) async fn end_written(&self, id: &str) {
        loop {
            let written = self.ends_written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if !self.end_queue.lock().unwritten.contains_key(id) {
                return;
            }
            written.await;
        }
    }

    fn jobs_done(&self, ids: impl IntoIterator<Item = String>) {
        let mut q = self.end_queue.lock();
        for id in ids {
            if let Some(n) = q.unwritten.get_mut(&id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    q.unwritten.remove(&id);
                }
            }
        }
        drop(q);
        self.ends_written.notify_waiters();
    }

    /// Writes of ends made so far, and the ends they carried.
    pub fn end_writes(&self) -> (u64, u64) {
        let q = self.end_queue.lock();
        (q.writes, q.ends)
    }

    async fn write_batch(&self, jobs: Vec<Job>) {
        // A job queued in an earlier term is failed (its end's retry reads the state).
        let term = self.write.term();
        let (jobs, stale): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.term == term);
        let mut stale_ids = Vec::with_capacity(stale.len());
        for j in stale {
            stale_ids.push(j.id);
            let _ = j.done.send(Err(Announced::NotStored(ApiError::new(
                ErrorCode::Unavailable,
                "the mastership changed while the end waited; retry",
            ))));
        }
        self.jobs_done(stale_ids);
        let mut written = Written {
            this: self,
            ids: jobs.iter().map(|j| j.id.clone()).collect(),
        };
        if self.write_jobs(jobs).await {
            // Stored but not applied: like a live caller's slot, a cancelled end's waits for
            // a restart (a retry reading "open" would copy the messages again).
            written.ids.clear();
        }
    }

    /// Writes `jobs` as one entry and answers each; true when they were stored but their
    /// state is not applied.
    async fn write_jobs(&self, jobs: Vec<Job>) -> bool {
        let Some((now_ms, term)) = jobs.first().map(|j| (j.now_ms, j.term)) else {
            return false;
        };
        {
            let mut q = self.end_queue.lock();
            q.writes += 1;
            q.ends += jobs.len() as u64;
        }
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
        // Every job of a batch is of the current term (stale ones were failed); the entry
        // goes in only if it still is when the Raft thread takes it.
        let written = self
            .write
            .append_mixed_acked(&batch, now_ms, Some(term))
            .await;
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
                let unapplied = matches!(e, Announced::StoredUnapplied(_));
                for done in dones {
                    let _ = done.send(Err(e.clone()));
                }
                return unapplied;
            }
        }
        false
    }
}

/// Takes the next write's jobs off the queue.
fn take_batch(q: &mut EndQueue) -> Vec<Job> {
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
    jobs
}

#[cfg(test)]
#[path = "batch_tests.rs"]
pub(super) mod tests;
