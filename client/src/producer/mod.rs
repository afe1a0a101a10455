//! Sending messages: one at a time with an ack, many in flight (grouped into batches per
//! queue by the accumulator), or a batch to one queue.

mod accumulator;
mod delayed;
mod idempotence;
mod select;
mod sender;
mod transaction;
mod wire;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use sluice_proto::{names, ApiError};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

pub use select::QueueSelector;
use select::{pick, Routing};

use crate::client::ClientCore;
use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::message::{Message, SendReceipt};
use crate::rpc;
use crate::trace::{TraceStats, Tracer};
use accumulator::{AccumulatorHandle, BatchLimits, Queued, Waiter};
use sender::{now_ms, Sender};

pub use delayed::CancelOutcome;
pub use transaction::{CheckedTransaction, Resolution, Transaction, TransactionChecker};

/// Builder for a [`Producer`].
pub struct ProducerBuilder {
    config: ClientConfig,
    retries: u32,
    send_timeout: Option<Duration>,
    max_in_flight: usize,
    batching: bool,
    limits: BatchLimits,
    idempotence: bool,
    producer_group: String,
    checker: Option<Arc<dyn TransactionChecker>>,
    trace: bool,
}

impl ProducerBuilder {
    /// Records a trace of every message sent (sent, and where it was stored) on the trace
    /// topic, for `sluice message trace ID` (default false). Messages without a
    /// `traceparent` property get one. Trace events are written in the background and dropped,
    /// never waited for, when the trace topic's broker is slow or refuses them
    /// ([`Producer::trace_stats`]).
    pub fn trace(mut self, on: bool) -> Self {
        self.trace = on;
        self
    }

    /// Answers the broker's checks of this producer group's transactions left open (a
    /// producer that died between its local commit and the transaction's). Needs a
    /// [`producer_group`](Self::producer_group).
    pub fn transaction_checker(mut self, checker: Arc<dyn TransactionChecker>) -> Self {
        self.checker = Some(checker);
        self
    }

    /// Whether the broker stores each message once however often a send is retried (default
    /// true): the producer numbers its batches per queue and the broker answers a batch it
    /// holds already with its first receipts. Off, a retry after a timeout or a failover may
    /// store a message twice.
    pub fn idempotence(mut self, on: bool) -> Self {
        self.idempotence = on;
        self
    }

    /// The producer group this producer belongs to (shown with its producer ids).
    pub fn producer_group(mut self, group: &str) -> Self {
        self.producer_group = group.to_string();
        self
    }

    /// Retries after a failed attempt, for retryable errors only (default 2).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Timeout of one send attempt (default: the client's request timeout).
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = Some(timeout);
        self
    }

    /// Most sends started with [`Producer::send_async`] that may be pending at once (default
    /// 1024); `send_async` waits for a slot beyond that. Callers of `send` do not count.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Whether [`Producer::send_async`] (and an idempotent producer's [`Producer::send`])
    /// groups messages per queue into one request (default true). Without batching every
    /// message is its own request and messages of one queue may be stored in any order.
    pub fn batching(mut self, on: bool) -> Self {
        self.batching = on;
        self
    }

    /// Most messages in one batch (default 1024; the broker takes up to 10,000).
    pub fn batch_max_messages(mut self, n: usize) -> Self {
        self.limits.max_messages = n;
        self
    }

    /// Most encoded bytes in one batch (default 1 MiB); a larger message travels alone.
    pub fn batch_max_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_bytes = bytes;
        self
    }

    /// How long a message of [`Producer::send_async`] may wait for others to join its batch
    /// when its queue has no batch on the wire (default 0: it leaves at once; batches still
    /// form while one is out). A batch holding a message a caller of `send` waits for leaves
    /// at once.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.limits.linger = linger;
        self
    }

    /// Creates the producer. Must be called inside a tokio runtime.
    pub fn build(self) -> Result<Producer> {
        if self.max_in_flight == 0 || self.max_in_flight > Semaphore::MAX_PERMITS {
            return Err(Error::Config("max_in_flight must be at least 1".into()));
        }
        let send_timeout = self.send_timeout.unwrap_or(self.config.request_timeout);
        if send_timeout.is_zero() {
            return Err(Error::Config("send timeout must be above zero".into()));
        }
        if self.limits.max_messages == 0 || self.limits.max_messages > MAX_BATCH_MESSAGES {
            return Err(Error::Config(format!(
                "batch_max_messages must be in 1..={MAX_BATCH_MESSAGES}"
            )));
        }
        if self.limits.max_bytes == 0 {
            return Err(Error::Config("batch_max_bytes must be above zero".into()));
        }
        if !self.producer_group.is_empty() {
            names::validate_group_name(&self.producer_group)?;
        }
        let tracer = match self.trace {
            true => Some(Tracer::start(self.config.clone())?),
            false => None,
        };
        let core = ClientCore::new(self.config)?;
        let idempotence = self.idempotence.then(|| self.producer_group.clone());
        let sender = Arc::new(Sender::new(
            core,
            self.retries,
            send_timeout,
            idempotence,
            tracer.map(|t| (t, self.producer_group.clone())),
        ));
        if let Some(checker) = self.checker {
            if self.producer_group.is_empty() {
                return Err(Error::Config(
                    "a transaction checker needs a producer group".into(),
                ));
            }
            tokio::spawn(transaction::watch_checks(
                Arc::downgrade(&sender),
                self.producer_group.clone(),
                checker,
            ));
        }
        let accumulator = self
            .batching
            .then(|| AccumulatorHandle::start(sender.clone(), self.limits));
        Ok(Producer {
            inner: Arc::new(Inner {
                sender,
                accumulator,
                in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
                max_in_flight: self.max_in_flight,
                producer_group: self.producer_group,
                closed: AtomicBool::new(false),
            }),
        })
    }
}

/// The broker's limit of messages in one Send request.
const MAX_BATCH_MESSAGES: usize = 10_000;

/// Sends messages to topics. Cheap to clone; clones share connections, routes, the
/// round-robin position and the batches of [`send_async`](Self::send_async).
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    sender: Arc<Sender>,
    /// None when batching is off.
    accumulator: Option<AccumulatorHandle>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    producer_group: String,
    closed: AtomicBool,
}

enum Pending {
    Task(tokio::task::JoinHandle<Result<SendReceipt>>),
    Queued(oneshot::Receiver<Result<SendReceipt>>),
}

/// A send in flight; resolves to its receipt.
pub struct SendHandle(Pending);

impl Future for SendHandle {
    type Output = Result<SendReceipt>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Pending::Task(task) => Pin::new(task).poll(cx).map(|joined| {
                joined.unwrap_or_else(|e| {
                    Err(Error::Api(ApiError::internal(format!(
                        "send task failed: {e}"
                    ))))
                })
            }),
            // The accumulator always answers unless the runtime is going away.
            Pending::Queued(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(Error::Shutdown("producer")))),
        }
    }
}

impl Producer {
    pub fn builder(config: ClientConfig) -> ProducerBuilder {
        ProducerBuilder {
            config,
            retries: 2,
            send_timeout: None,
            max_in_flight: 1024,
            batching: true,
            limits: BatchLimits {
                max_messages: 1024,
                max_bytes: 1 << 20,
                linger: Duration::ZERO,
            },
            idempotence: true,
            producer_group: String::new(),
            checker: None,
            trace: false,
        }
    }

    /// Opens a transaction: its sends stay invisible until [`Transaction::commit`]. Needs a
    /// producer group (whose producers answer its checks).
    pub fn begin_transaction(&self) -> Result<Transaction> {
        self.check_open()?;
        let group = &self.inner.producer_group;
        if group.is_empty() {
            return Err(Error::Config(
                "transactions need a producer group (ProducerBuilder::producer_group)".into(),
            ));
        }
        Ok(Transaction::new(self.inner.sender.clone(), group))
    }

    /// Sends one message to a queue chosen round-robin and waits for the broker's ack.
    ///
    /// With idempotence and batching on (the defaults), sends of concurrent callers that meet
    /// on a queue go in one request, as with [`send_async`](Self::send_async) but without
    /// lingering (this also holds for [`send_with_key`](Self::send_with_key)). A send whose
    /// future is dropped once under way may still be stored, as with any request that reached
    /// the broker.
    pub async fn send(&self, message: Message) -> Result<SendReceipt> {
        self.send_routed(message, Routing::RoundRobin).await
    }

    /// Sends with a sharding key: messages with the same key go to the same queue (and keep
    /// their order) as long as the topic's route does not change.
    pub async fn send_with_key(&self, message: Message, key: &str) -> Result<SendReceipt> {
        self.send_routed(message, Routing::Key(key.to_string()))
            .await
    }

    /// Sends to the queue a selector picks, asking it again when a retry may move the message
    /// (one message per request; an idempotent producer has one request per queue on the wire).
    pub async fn send_with_selector(
        &self,
        message: Message,
        selector: Arc<dyn QueueSelector>,
    ) -> Result<SendReceipt> {
        self.send_routed(message, Routing::Custom(selector)).await
    }

    /// Starts a send and returns once it is under way (waiting only when `max_in_flight` sends are
    /// already pending). Await the handle for the receipt.
    ///
    /// With batching on (the default), messages for the same queue are grouped into one
    /// request, and messages of one queue (same key, or same selector choice) are stored in
    /// the order of their `send_async` calls.
    pub async fn send_async(&self, message: Message) -> Result<SendHandle> {
        self.send_async_routed(message, Routing::RoundRobin).await
    }

    /// [`send_async`](Self::send_async) with a sharding key (see [`send_with_key`](Self::send_with_key)).
    pub async fn send_async_with_key(&self, message: Message, key: &str) -> Result<SendHandle> {
        self.send_async_routed(message, Routing::Key(key.to_string()))
            .await
    }

    async fn send_async_routed(&self, message: Message, routing: Routing) -> Result<SendHandle> {
        self.check_open()?;
        let permit = self
            .inner
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Shutdown("producer"))?;
        // Delayed messages travel alone: a batch of the broker is all delayed or all not.
        let batchable = message.delay.is_none();
        if let Some(acc) = self.inner.accumulator.as_ref().filter(|_| batchable) {
            // Without a route or a writable queue yet, the direct path retries and refreshes.
            if let Some(queue) = self.resolve_queue(&message, &routing).await {
                let rx = self.enqueue(acc, queue, message, &routing, Some(permit));
                return Ok(SendHandle(Pending::Queued(rx)));
            }
        }
        Ok(self.spawn_direct(message, routing, permit))
    }

    /// Hands a message to the accumulator. Without a permit a caller waits for it (`send`):
    /// its batch does not linger.
    fn enqueue(
        &self,
        acc: &AccumulatorHandle,
        queue: crate::route::MessageQueue,
        message: Message,
        routing: &Routing,
        permit: Option<OwnedSemaphorePermit>,
    ) -> oneshot::Receiver<Result<SendReceipt>> {
        let (tx, rx) = oneshot::channel();
        let item = Queued {
            reroutable: matches!(routing, Routing::RoundRobin),
            urgent: permit.is_none(),
            wire: self.inner.sender.to_wire(message, now_ms()),
            waiter: Waiter { reply: tx, permit },
        };
        acc.send(queue, item);
        rx
    }

    /// The queue a message goes to, from the cached (or first fetched) route.
    async fn resolve_queue(
        &self,
        message: &Message,
        routing: &Routing,
    ) -> Option<crate::route::MessageQueue> {
        let routes = &self.inner.sender.core.routes;
        let route = match routes.cached(&message.topic) {
            Some(r) => r,
            // A bad name fails on the direct path with a clear error.
            None if names::validate_topic_name(&message.topic).is_err() => return None,
            None => routes.get(&message.topic).await.ok()?,
        };
        let queues = route.writable_queues();
        let rr = match routing {
            Routing::RoundRobin => self.inner.sender.next_rr(),
            _ => 0,
        };
        pick(queues, routing, rr, None, Some(message)).map(|i| queues[i].clone())
    }

    fn spawn_direct(
        &self,
        message: Message,
        routing: Routing,
        permit: OwnedSemaphorePermit,
    ) -> SendHandle {
        let this = self.clone();
        SendHandle(Pending::Task(tokio::spawn(async move {
            let result = this.send_direct(message, routing).await;
            drop(permit);
            result
        })))
    }

    /// Fetches a topic's route and opens connections to its masters, so that the first send
    /// does not pay for them.
    pub async fn prepare(&self, topic: &str) -> Result<()> {
        names::validate_topic_name(topic)?;
        let core = &self.inner.sender.core;
        let route = core.routes.get(topic).await?;
        let t = core.timeout();
        for (_, addr) in route.masters() {
            let mut client = core.broker(&addr)?;
            rpc::call(
                &addr,
                t,
                client.get_broker_status(rpc::request(
                    sluice_proto::v1::GetBrokerStatusRequest {},
                    t,
                )),
            )
            .await?;
        }
        Ok(())
    }

    /// Sends every message queued by [`send_async`](Self::send_async) now, without lingering,
    /// and waits until those queued before the call are acknowledged or failed.
    pub async fn flush(&self) {
        if let Some(acc) = &self.inner.accumulator {
            acc.flush().await;
        }
    }

    /// Sends messages of one topic to one queue in one request: all are stored or none.
    pub async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<SendReceipt>> {
        self.send_batch_routed(messages, Routing::RoundRobin).await
    }

    /// A batch to the queue of a sharding key.
    pub async fn send_batch_with_key(
        &self,
        messages: Vec<Message>,
        key: &str,
    ) -> Result<Vec<SendReceipt>> {
        self.send_batch_routed(messages, Routing::Key(key.to_string()))
            .await
    }

    /// Refuses new sends, sends what the accumulator holds and waits (bounded) for the pending
    /// sends to finish.
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let attempts = self.inner.sender.retries + 1;
        let bound = self.inner.sender.send_timeout * attempts + Duration::from_secs(1);
        let all = u32::try_from(self.inner.max_in_flight).unwrap_or(u32::MAX);
        let drained = async {
            self.flush().await;
            // Direct sends hold their slot until they finish.
            self.inner.in_flight.acquire_many(all).await
        };
        if tokio::time::timeout(bound, drained).await.is_err() {
            tracing::warn!("producer shut down with sends still pending");
        }
        self.inner.in_flight.close();
        if let Some((tracer, _)) = &self.inner.sender.tracer {
            tracer.flush(crate::trace::FLUSH_TIMEOUT).await;
        }
    }

    /// Waits (at most 5 s) until the trace events recorded so far are written or dropped.
    pub async fn flush_trace(&self) {
        if let Some((tracer, _)) = &self.inner.sender.tracer {
            tracer.flush(crate::trace::FLUSH_TIMEOUT).await;
        }
    }

    /// What the trace recorder did, when built with [`ProducerBuilder::trace`].
    pub fn trace_stats(&self) -> Option<TraceStats> {
        self.inner.sender.tracer.as_ref().map(|(t, _)| t.stats())
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Shutdown("producer"));
        }
        Ok(())
    }

    async fn send_routed(&self, message: Message, routing: Routing) -> Result<SendReceipt> {
        // An idempotent send holds its queue from numbering to outcome, so one message per
        // request would leave a topic one request per queue in flight whatever the number of
        // callers: through the accumulator, sends that meet on a queue share a request. A
        // custom selector keeps the direct path, which asks it again when a retry may move.
        let batchable = self.inner.sender.idempotence.is_some()
            && message.delay.is_none()
            && !matches!(routing, Routing::Custom(_));
        if let Some(acc) = self.inner.accumulator.as_ref().filter(|_| batchable) {
            self.check_open()?;
            if let Some(queue) = self.resolve_queue(&message, &routing).await {
                // `max_in_flight` bounds what `send_async` leaves pending, not callers that wait.
                let rx = self.enqueue(acc, queue, message, &routing, None);
                return rx.await.unwrap_or(Err(Error::Shutdown("producer")));
            }
        }
        self.send_direct(message, routing).await
    }

    /// One message in a request of its own.
    async fn send_direct(&self, message: Message, routing: Routing) -> Result<SendReceipt> {
        let mut receipts = self.send_batch_routed(vec![message], routing).await?;
        receipts
            .pop()
            .ok_or_else(|| Error::Api(ApiError::internal("the broker acknowledged no message")))
    }

    async fn send_batch_routed(
        &self,
        mut messages: Vec<Message>,
        routing: Routing,
    ) -> Result<Vec<SendReceipt>> {
        self.check_open()?;
        let Some(first) = messages.first() else {
            return Err(Error::InvalidArgument("empty batch".into()));
        };
        let topic = first.topic.clone();
        names::validate_topic_name(&topic)?;
        if let Some(m) = messages.iter().find(|m| m.topic != topic) {
            return Err(Error::InvalidArgument(format!(
                "a batch goes to one topic; got {topic:?} and {:?}",
                m.topic
            )));
        }
        let born = now_ms();
        // Custom selectors look at the first message on every attempt; the others move.
        let selector_input = match routing {
            Routing::Custom(_) => Some(messages.remove(0)),
            _ => None,
        };
        let sender = &self.inner.sender;
        let mut wire = Vec::with_capacity(messages.len() + 1);
        if let Some(m) = &selector_input {
            wire.push(sender.to_wire(m.clone(), born));
        }
        wire.extend(messages.into_iter().map(|m| sender.to_wire(m, born)));
        sender
            .send_with_retries(
                &topic,
                selector_input.as_ref(),
                &Arc::new(wire),
                &routing,
                None,
            )
            .await
    }
}
