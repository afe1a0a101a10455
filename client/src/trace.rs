//! Message trace on the client: producers and consumers built with `trace(true)` record what
//! happens to each message (sent, stored, delivered, consumed) and write the events to the
//! trace topic in batches (one message holds a batch, keyed by the ids it is about), from a
//! task of their own.
//!
//! Recording never waits: events go into a bounded queue, and when it is full (the trace
//! topic's broker is slow, refuses traces, or is gone) they are dropped and counted in
//! [`TraceStats`]. A message's send or delivery never depends on its trace.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sluice_proto::v1;
use tokio::sync::{mpsc, oneshot, Semaphore};

pub use sluice_proto::trace::{
    ConsumeResult, TraceContext, TraceEvent, TraceWhat, TRACEPARENT, TRACE_TOPIC,
};

use crate::config::ClientConfig;
use crate::error::Result;
use crate::message::{Message, ReceivedMessage, SendReceipt};
use crate::producer::Producer;

/// Events waiting to be written; past this, new ones are dropped.
const QUEUE_CAPACITY: usize = 16_384;
/// Events taken off the queue at once (written as one Send).
const BATCH: usize = 512;
/// Largest body of one trace message (a batch may take several).
const MAX_BODY: usize = 512 << 10;
/// Batches on the wire at once.
const IN_FLIGHT: usize = 4;
/// How long a producer's or consumer's shutdown waits for its trace events to be written.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a tracing client did with its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TraceStats {
    /// Events recorded (written, waiting, or dropped).
    pub recorded: u64,
    /// Events the trace topic's broker acknowledged.
    pub written: u64,
    /// Events dropped because the queue to the writer was full (the trace topic's broker
    /// is slow or gone).
    pub overflowed: u64,
    /// Events dropped because the broker refused or failed their write.
    pub failed: u64,
}

impl TraceStats {
    pub fn dropped(&self) -> u64 {
        self.overflowed + self.failed
    }
}

#[derive(Default)]
struct Counters {
    recorded: AtomicU64,
    written: AtomicU64,
    overflowed: AtomicU64,
    failed: AtomicU64,
    /// Whether the last write failed, so only the first failure of a run is logged.
    failing: AtomicBool,
}

enum Cmd {
    Event(Box<TraceEvent>),
    /// Answered once every event queued before it was written or dropped.
    Flush(oneshot::Sender<()>),
}

/// A client's trace recorder. Cheap to clone; the writer task ends when the last clone is
/// dropped (after writing what it holds).
#[derive(Clone)]
pub(crate) struct Tracer {
    tx: mpsc::Sender<Cmd>,
    counters: Arc<Counters>,
    host: String,
}

impl Tracer {
    /// Starts the writer, a producer of its own (not traced, not idempotent: a duplicated
    /// trace event is harmless). Must be called inside a tokio runtime.
    pub(crate) fn start(config: ClientConfig) -> Result<Tracer> {
        let producer = Producer::builder(config)
            .idempotence(false)
            .batching(false)
            .retries(1)
            .build()?;
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        tokio::spawn(write_events(producer, rx, counters.clone()));
        Ok(Tracer {
            tx,
            counters,
            host: crate::message_id::hostname(),
        })
    }

    pub(crate) fn stats(&self) -> TraceStats {
        let c = &self.counters;
        TraceStats {
            recorded: c.recorded.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            overflowed: c.overflowed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }

    /// Waits (at most `timeout`) until the events recorded so far are written or dropped.
    pub(crate) async fn flush(&self, timeout: Duration) {
        let (reply, done) = oneshot::channel();
        let flushed = async {
            if self.tx.send(Cmd::Flush(reply)).await.is_ok() {
                let _ = done.await;
            }
        };
        if tokio::time::timeout(timeout, flushed).await.is_err() {
            tracing::warn!("trace events not all written before the flush timeout");
        }
    }

    fn record(&self, message_id: &str, trace_id: String, what: TraceWhat) {
        self.record_at(crate::time::now_ms(), message_id, trace_id, what);
    }

    fn record_at(&self, time_ms: i64, message_id: &str, trace_id: String, what: TraceWhat) {
        self.counters.recorded.fetch_add(1, Ordering::Relaxed);
        let event = TraceEvent {
            message_id: message_id.to_string(),
            time_ms,
            trace_id,
            client_host: self.host.clone(),
            what,
        };
        if self.tx.try_send(Cmd::Event(Box::new(event))).is_err() {
            self.counters.overflowed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Gives a message about to be sent a `traceparent` if it has none, so the application's
    /// spans downstream can join its trace.
    pub(crate) fn stamp(properties: &mut std::collections::HashMap<String, String>) {
        if properties.contains_key(TRACEPARENT) {
            return;
        }
        // A zero id is invalid in W3C; the odds of drawing one are 2^-64 per try.
        let ctx = std::iter::repeat_with(|| TraceContext::from_random(rand::random()))
            .flatten()
            .next();
        if let Some(ctx) = ctx {
            properties.insert(TRACEPARENT.to_string(), ctx.to_string());
        }
    }

    /// A send that finished: `sent` for each message, and `stored` for each one acknowledged.
    pub(crate) fn sent(&self, send: &SendTrace<'_>, outcome: &Result<Vec<SendReceipt>>) {
        let latency_ms = u64::try_from(send.latency.as_millis()).unwrap_or(u64::MAX);
        let result = match outcome {
            Ok(_) => "ok".to_string(),
            Err(e) => sluice_proto::props::cut(&e.to_string(), sluice_proto::trace::MAX_ERROR_LEN)
                .to_string(),
        };
        let receipts = outcome.as_ref().map(Vec::as_slice).unwrap_or_default();
        for (i, m) in send.messages.iter().enumerate() {
            let trace_id = trace_id(m.properties.get(TRACEPARENT).map(String::as_str));
            // Stamped when the send started and when the broker stored it, so a consumer's
            // delivery (recorded on another clock path) sorts after them.
            self.record_at(
                send.started_ms,
                &m.message_id,
                trace_id.clone(),
                TraceWhat::Sent {
                    topic: send.topic.to_string(),
                    producer_group: send.producer_group.to_string(),
                    tag: m.tag.clone(),
                    keys: m.keys.clone(),
                    born_ms: m.born_timestamp_ms,
                    latency_ms,
                    result: result.clone(),
                    transaction: send.transaction,
                },
            );
            if let Some(r) = receipts.get(i) {
                self.record_at(
                    r.store_timestamp_ms.unwrap_or_else(crate::time::now_ms),
                    &r.message_id,
                    trace_id,
                    TraceWhat::Stored {
                        topic: r.topic.clone(),
                        broker_name: r.broker_name.clone(),
                        address: r.broker_address.clone(),
                        queue_id: r.queue_id,
                        offset: r.queue_offset,
                        store_ms: r.store_timestamp_ms.unwrap_or_default(),
                        deliver_at_ms: r.deliver_at_ms,
                    },
                );
            }
        }
    }
}

/// One finished send, as the producer traces it.
pub(crate) struct SendTrace<'a> {
    pub topic: &'a str,
    pub producer_group: &'a str,
    pub messages: &'a [v1::Message],
    pub transaction: bool,
    /// When the send started (wall clock), and how long it took.
    pub started_ms: i64,
    pub latency: Duration,
}

/// A consumer's tracing: its group and id go into every event.
#[derive(Clone)]
pub(crate) struct ConsumeTracer {
    pub tracer: Tracer,
    pub group: String,
    pub client_id: String,
}

impl ConsumeTracer {
    /// The message is handed to the application.
    pub(crate) fn delivered(&self, m: &ReceivedMessage) {
        let s = &m.message;
        self.tracer.record(
            &s.message_id,
            trace_id(s.properties.get(TRACEPARENT).map(String::as_str)),
            TraceWhat::Delivered {
                group: self.group.clone(),
                client_id: self.client_id.clone(),
                topic: s.topic.clone(),
                broker_name: m.broker_name.clone(),
                queue_id: s.queue_id,
                offset: s.queue_offset,
                attempt: s.reconsume_times.saturating_add(1),
            },
        );
    }

    /// The application finished with it after its handler ran for `handler` when known (error
    /// text when it failed).
    pub(crate) fn consumed(
        &self,
        m: &ReceivedMessage,
        result: ConsumeResult,
        handler: Option<Duration>,
        error: &str,
    ) {
        let handler_ms = handler.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let s = &m.message;
        self.tracer.record(
            &s.message_id,
            trace_id(s.properties.get(TRACEPARENT).map(String::as_str)),
            TraceWhat::Consumed {
                group: self.group.clone(),
                client_id: self.client_id.clone(),
                attempt: s.reconsume_times.saturating_add(1),
                result,
                handler_ms,
                error: sluice_proto::props::cut(error, sluice_proto::trace::MAX_ERROR_LEN)
                    .to_string(),
            },
        );
    }
}

fn trace_id(traceparent: Option<&str>) -> String {
    traceparent
        .and_then(TraceContext::parse)
        .map(|c| c.trace_id_hex())
        .unwrap_or_default()
}

/// The writer: takes events off the queue in batches and sends each batch to the trace topic.
async fn write_events(producer: Producer, mut rx: mpsc::Receiver<Cmd>, counters: Arc<Counters>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut cmds = Vec::with_capacity(BATCH);
    let mut events = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut cmds, BATCH).await > 0 {
        for cmd in cmds.drain(..) {
            match cmd {
                Cmd::Event(e) => events.push(*e),
                Cmd::Flush(reply) => {
                    write_batch(&producer, &slots, &counters, std::mem::take(&mut events)).await;
                    // Every batch written once all slots are free again.
                    if let Ok(all) = slots.acquire_many(IN_FLIGHT as u32).await {
                        drop(all);
                    }
                    let _ = reply.send(());
                }
            }
        }
        write_batch(&producer, &slots, &counters, std::mem::take(&mut events)).await;
    }
    producer.shutdown().await;
}

async fn write_batch(
    producer: &Producer,
    slots: &Arc<Semaphore>,
    counters: &Arc<Counters>,
    events: Vec<TraceEvent>,
) {
    if events.is_empty() {
        return;
    }
    let Ok(slot) = slots.clone().acquire_owned().await else {
        return;
    };
    let messages: Vec<Message> = sluice_proto::trace::encode_batch(&events, MAX_BODY)
        .into_iter()
        .map(|(body, ids)| Message {
            keys: ids,
            ..Message::new(TRACE_TOPIC, body).with_tag(sluice_proto::trace::TRACE_TAG)
        })
        .collect();
    let n = events.len() as u64;
    let producer = producer.clone();
    let counters = counters.clone();
    tokio::spawn(async move {
        match producer.send_batch(messages).await {
            Ok(_) => {
                counters.written.fetch_add(n, Ordering::Relaxed);
                if counters.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("trace events are written again");
                }
            }
            Err(e) => {
                counters.failed.fetch_add(n, Ordering::Relaxed);
                if !counters.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "trace events dropped: the trace topic did not take them");
                }
            }
        }
        drop(slot);
    });
}
