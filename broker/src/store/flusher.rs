//! The flusher: makes written commit-log data durable with fdatasync, off the writer's thread.
//!
//! Sync mode: the writer sends every written group here. A coordinator hands everything
//! queued to one of a few helper threads, which issues one fdatasync for all of it (group
//! commit); the coordinator then acks those producers. Several fdatasyncs may be in flight at
//! once: Linux merges concurrent cache flushes, so overlapping them raises the number of
//! durable groups per second well above one per flush latency.
//! Async mode: one thread flushes what was written every `flush_interval`.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;

use super::shared::Shared;
use super::writer::AppendReply;
use super::{AppendResult, FlushMode, StoreError};

/// fdatasyncs in flight at most (sync mode).
const SYNC_HELPERS: usize = 8;

pub struct FlushReq {
    /// Make the log durable up to here.
    pub upto: u64,
    /// Producers to ack once it is (sync mode).
    pub acks: Vec<(AppendReply, AppendResult)>,
    /// Notified when done (shutdown, truncation barrier); in sync mode only once no other
    /// flush is in flight, so nothing acks or confirms behind it.
    pub done: Option<mpsc::Sender<io::Result<()>>>,
}

pub enum FlushMsg {
    Req(FlushReq),
    /// A helper finished a flush (sync mode).
    Done {
        helper: usize,
        upto: u64,
        reqs: Vec<FlushReq>,
        result: io::Result<()>,
    },
    /// The writer is gone.
    Stop,
}

struct Job {
    upto: u64,
    reqs: Vec<FlushReq>,
}

/// The flusher thread body; `tx` is a sender of its own channel, for the helpers.
pub fn run(shared: Arc<Shared>, rx: Receiver<FlushMsg>, tx: Sender<FlushMsg>) {
    if shared.config.flush == FlushMode::Sync {
        run_sync(shared, rx, tx);
    } else {
        drop(tx);
        run_async(shared, rx);
    }
}

fn run_async(shared: Arc<Shared>, rx: Receiver<FlushMsg>) {
    let interval = shared.config.flush_interval;
    loop {
        let mut reqs = Vec::new();
        match rx.recv_timeout(interval) {
            Ok(FlushMsg::Req(r)) => reqs.push(r),
            Ok(FlushMsg::Done { .. }) | Err(RecvTimeoutError::Timeout) => {}
            Ok(FlushMsg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let upto = reqs.iter().map(|r| r.upto).max().unwrap_or(0);
        let upto = upto.max(shared.write_pos.load(Ordering::Acquire));
        let result = flush_to(&shared, upto);
        if let Err(e) = &result {
            tracing::error!(error = %e, "background flush failed");
        }
        for req in reqs {
            finish(req, &result);
        }
    }
}

fn run_sync(shared: Arc<Shared>, rx: Receiver<FlushMsg>, tx: Sender<FlushMsg>) {
    let mut jobs = Vec::with_capacity(SYNC_HELPERS);
    let mut helpers = Vec::with_capacity(SYNC_HELPERS);
    for id in 0..SYNC_HELPERS {
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (shared, tx) = (shared.clone(), tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("sluice-store-fsync{id}"))
            .spawn(move || {
                while let Ok(job) = job_rx.recv() {
                    let result = flush_to(&shared, job.upto);
                    let done = FlushMsg::Done {
                        helper: id,
                        upto: job.upto,
                        reqs: job.reqs,
                        result,
                    };
                    if tx.send(done).is_err() {
                        return;
                    }
                }
            });
        match spawned {
            Ok(h) => {
                helpers.push(h);
                jobs.push(job_tx);
            }
            Err(e) => tracing::error!(error = %e, "cannot start an fsync helper"),
        }
    }
    drop(tx);
    let mut idle: Vec<usize> = (0..jobs.len()).collect();
    let mut pending: Vec<FlushReq> = Vec::new();
    let mut inflight = 0usize;
    let mut parked: Vec<(mpsc::Sender<io::Result<()>>, io::Result<()>)> = Vec::new();
    'outer: loop {
        let Ok(first) = rx.recv() else { break };
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                FlushMsg::Req(r) => pending.push(r),
                FlushMsg::Done {
                    helper,
                    upto,
                    reqs,
                    result,
                } => {
                    idle.push(helper);
                    inflight -= 1;
                    if result.is_ok() {
                        let write = shared.write_pos.load(Ordering::Acquire);
                        shared.acked_up_to(upto.min(write));
                    }
                    for mut req in reqs {
                        let done = req.done.take();
                        finish(req, &result);
                        if let Some(done) = done {
                            parked.push((done, copy(&result)));
                        }
                    }
                }
                FlushMsg::Stop => break 'outer,
            }
            next = rx.try_recv().ok();
        }
        if inflight == 0 {
            for (done, r) in parked.drain(..) {
                let _ = done.send(r);
            }
        }
        if !pending.is_empty() {
            if let Some(h) = idle.pop() {
                let reqs = std::mem::take(&mut pending);
                let upto = reqs.iter().map(|r| r.upto).max().unwrap_or(0);
                if let Err(mpsc::SendError(job)) = jobs[h].send(Job { upto, reqs }) {
                    // The helper died: nothing can be made durable any more.
                    for req in job.reqs {
                        finish(req, &Err(io::Error::other("fsync helper stopped")));
                    }
                } else {
                    inflight += 1;
                }
            }
        }
    }
    drop(jobs);
    for h in helpers {
        let _ = h.join();
    }
}

fn copy(r: &io::Result<()>) -> io::Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) => Err(super::copy_io_error(e)),
    }
}

/// Acks a request's producers with the flush result.
fn finish(req: FlushReq, result: &io::Result<()>) {
    for (reply, res) in req.acks {
        let r = match result {
            Ok(()) => Ok(res),
            Err(e) => Err(StoreError::Io(super::copy_io_error(e))),
        };
        let _ = reply.send(r);
    }
    if let Some(done) = req.done {
        let _ = done.send(copy(result));
    }
}

/// fdatasyncs every segment holding data between the flushed position and `upto`.
fn flush_to(shared: &Shared, upto: u64) -> io::Result<()> {
    // Tests stall the disk here (a `sleep(ms)` action) to exercise the sync-flush timeout.
    fail::fail_point!("store::flusher::before_sync");
    let flushed = shared.flushed.load(Ordering::Acquire);
    if upto <= flushed {
        return Ok(());
    }
    let started = std::time::Instant::now();
    for seg in shared.log.snapshot() {
        let end = seg.base + seg.len.load(Ordering::Acquire);
        if seg.base < upto && end > flushed {
            seg.file.sync_data()?;
        }
    }
    shared.flush_stats.record(started.elapsed());
    shared.flushed.fetch_max(upto, Ordering::AcqRel);
    Ok(())
}
