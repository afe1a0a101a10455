//! The flusher: makes written commit-log data durable with fdatasync, off the writer's thread.
//!
//! Sync mode: the writer sends every written group here; the flusher drains all queued
//! requests, issues one fdatasync for all of them (group commit) and then acks the producers.
//! Async mode: it flushes what was written every `flush_interval`.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{mpsc, Arc};

use super::shared::Shared;
use super::writer::AppendReply;
use super::{AppendResult, FlushMode, StoreError};

pub struct FlushReq {
    /// Make the log durable up to here.
    pub upto: u64,
    /// Producers to ack once it is (sync mode).
    pub acks: Vec<(AppendReply, AppendResult)>,
    /// Notified when done (shutdown, truncation barrier).
    pub done: Option<mpsc::Sender<io::Result<()>>>,
}

pub fn run(shared: Arc<Shared>, rx: Receiver<FlushReq>) {
    let interval = shared.config.flush_interval;
    let sync = shared.config.flush == FlushMode::Sync;
    let mut reqs: Vec<FlushReq> = Vec::new();
    loop {
        let first = if sync {
            match rx.recv() {
                Ok(r) => Some(r),
                Err(_) => return,
            }
        } else {
            match rx.recv_timeout(interval) {
                Ok(r) => Some(r),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        };
        reqs.extend(first);
        while let Ok(r) = rx.try_recv() {
            reqs.push(r);
        }
        let upto = reqs
            .iter()
            .map(|r| r.upto)
            .max()
            .unwrap_or_else(|| shared.write_pos.load(Ordering::Acquire));
        let result = flush_to(&shared, upto);
        if result.is_ok() && sync {
            shared.acked_up_to(upto.min(shared.write_pos.load(Ordering::Acquire)));
        }
        for req in reqs.drain(..) {
            for (reply, res) in req.acks {
                let r = match &result {
                    Ok(()) => Ok(res),
                    Err(e) => Err(StoreError::Io(super::copy_io_error(e))),
                };
                let _ = reply.send(r);
            }
            if let Some(done) = req.done {
                let r = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(super::copy_io_error(e)),
                };
                let _ = done.send(r);
            }
        }
    }
}

/// fdatasyncs every segment holding data between the flushed position and `upto`.
fn flush_to(shared: &Shared, upto: u64) -> io::Result<()> {
    let flushed = shared.flushed.load(Ordering::Acquire);
    if upto <= flushed {
        return Ok(());
    }
    for seg in shared.log.snapshot() {
        let end = seg.base + seg.len.load(Ordering::Acquire);
        if seg.base < upto && end > flushed {
            seg.file.sync_data()?;
        }
    }
    shared.flushed.fetch_max(upto, Ordering::AcqRel);
    Ok(())
}
