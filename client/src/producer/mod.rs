//! Sending messages: one at a time with an ack, many in flight, or a batch to one queue.

mod select;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_proto::v1::{self, SendRequest, SendResponse};
use sluice_proto::{names, ApiError, ErrorCode};
use tokio::sync::Semaphore;

pub use select::QueueSelector;
use select::{pick, Routing};

use crate::client::ClientCore;
use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::message::{Message, SendReceipt};
use crate::message_id::{hostname, new_message_id};
use crate::route::MessageQueue;
use crate::rpc;

/// Builder for a [`Producer`].
pub struct ProducerBuilder {
    config: ClientConfig,
    retries: u32,
    send_timeout: Option<Duration>,
    max_in_flight: usize,
}

impl ProducerBuilder {
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
    /// 1024); `send_async` waits for a slot beyond that.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
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
        let core = ClientCore::new(self.config)?;
        Ok(Producer {
            inner: Arc::new(Inner {
                core,
                retries: self.retries,
                send_timeout,
                rr: AtomicUsize::new(rand::random::<u16>() as usize),
                in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
                max_in_flight: self.max_in_flight,
                closed: AtomicBool::new(false),
            }),
        })
    }
}

/// Sends messages to topics. Cheap to clone; clones share connections, routes and the
/// round-robin position.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    core: Arc<ClientCore>,
    retries: u32,
    send_timeout: Duration,
    rr: AtomicUsize,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    closed: AtomicBool,
}

struct FailedAttempt {
    error: Error,
    /// The broker that failed, to avoid on the next attempt.
    broker: Option<String>,
    /// The route generation the attempt used (0: no route).
    route_generation: u64,
    /// The address the attempt went to.
    addr: Option<String>,
}

/// What one send learned from its failed attempts.
#[derive(Default)]
struct RetryState {
    /// Round-robin position of this attempt.
    rr: usize,
    /// The broker that failed last, avoided when another one has queues.
    avoid: Option<String>,
    hint: Option<MasterHint>,
}

/// Where NOT_MASTER said the master is, used until the route catches up.
struct MasterHint {
    broker: String,
    stale: String,
    master: String,
}

/// A send in flight; resolves to its receipt.
pub struct SendHandle(tokio::task::JoinHandle<Result<SendReceipt>>);

impl Future for SendHandle {
    type Output = Result<SendReceipt>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|joined| {
            joined.unwrap_or_else(|e| {
                Err(Error::Api(ApiError::internal(format!(
                    "send task failed: {e}"
                ))))
            })
        })
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Producer {
    pub fn builder(config: ClientConfig) -> ProducerBuilder {
        ProducerBuilder {
            config,
            retries: 2,
            send_timeout: None,
            max_in_flight: 1024,
        }
    }

    /// Sends one message to a queue chosen round-robin and waits for the broker's ack.
    pub async fn send(&self, message: Message) -> Result<SendReceipt> {
        self.send_routed(message, Routing::RoundRobin).await
    }

    /// Sends with a sharding key: messages with the same key go to the same queue (and keep
    /// their order) as long as the topic's route does not change.
    pub async fn send_with_key(&self, message: Message, key: &str) -> Result<SendReceipt> {
        self.send_routed(message, Routing::Key(key.to_string()))
            .await
    }

    /// Sends to the queue a selector picks.
    pub async fn send_with_selector(
        &self,
        message: Message,
        selector: Arc<dyn QueueSelector>,
    ) -> Result<SendReceipt> {
        self.send_routed(message, Routing::Custom(selector)).await
    }

    /// Starts a send and returns once it is under way (waiting only when `max_in_flight` sends are
    /// already pending). Await the handle for the receipt.
    pub async fn send_async(&self, message: Message) -> Result<SendHandle> {
        self.check_open()?;
        let permit = self
            .inner
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Shutdown("producer"))?;
        let this = self.clone();
        Ok(SendHandle(tokio::spawn(async move {
            let result = this.send(message).await;
            drop(permit);
            result
        })))
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

    /// Refuses new sends and waits (bounded) for the pending ones to finish.
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let attempts = self.inner.retries + 1;
        let bound = self.inner.send_timeout * attempts + Duration::from_secs(1);
        let all = u32::try_from(self.inner.max_in_flight).unwrap_or(u32::MAX);
        if tokio::time::timeout(bound, self.inner.in_flight.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("producer shut down with sends still pending");
        }
        self.inner.in_flight.close();
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Shutdown("producer"));
        }
        Ok(())
    }

    async fn send_routed(&self, message: Message, routing: Routing) -> Result<SendReceipt> {
        let mut receipts = self.send_batch_routed(vec![message], routing).await?;
        receipts
            .pop()
            .ok_or_else(|| Error::Api(ApiError::internal("the broker acknowledged no message")))
    }

    async fn send_batch_routed(
        &self,
        messages: Vec<Message>,
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
        // Ids and birth time are fixed before the first attempt, so a retry keeps them.
        let born = now_ms();
        let host = hostname();
        let wire: Vec<v1::Message> = messages
            .iter()
            .map(|m| v1::Message {
                topic: String::new(),
                body: m.body.clone(),
                tag: m.tag.clone(),
                keys: m.keys.clone(),
                properties: m.properties.clone(),
                flag: m.flag,
                message_id: new_message_id(),
                born_timestamp_ms: born,
                born_host: host.clone(),
            })
            .collect();
        self.send_with_retries(&topic, first, wire, routing).await
    }

    async fn send_with_retries(
        &self,
        topic: &str,
        first: &Message,
        wire: Vec<v1::Message>,
        routing: Routing,
    ) -> Result<Vec<SendReceipt>> {
        let rr_start = self.inner.rr.fetch_add(1, Ordering::Relaxed);
        let mut state = RetryState::default();
        let mut attempt: u32 = 0;
        loop {
            state.rr = rr_start.wrapping_add(attempt as usize);
            let failed = match self.attempt(topic, first, &wire, &routing, &state).await {
                Ok(receipts) => return Ok(receipts),
                Err(failed) => failed,
            };
            let err = failed.error;
            if !err.is_retryable() || attempt >= self.inner.retries {
                return Err(err);
            }
            tracing::debug!(topic, attempt, error = %err, "send failed; retrying");
            if let (Some(api), Some(broker), Some(stale)) =
                (err.api(), &failed.broker, &failed.addr)
            {
                if api.code == ErrorCode::NotMaster && !api.master_address.is_empty() {
                    state.hint = Some(MasterHint {
                        broker: broker.clone(),
                        stale: stale.clone(),
                        master: api.master_address.clone(),
                    });
                }
            }
            if err.is_routing() {
                // A failed refresh keeps the old route; the next attempt avoids the broker anyway.
                let refreshed = self
                    .inner
                    .core
                    .routes
                    .refresh(topic, failed.route_generation)
                    .await;
                // With nowhere else to go (one broker group, in failover), pause a little so the
                // retries span more than a few milliseconds.
                let elsewhere = refreshed.is_ok_and(|r| {
                    r.writable_queues()
                        .iter()
                        .any(|q| Some(&q.broker_name) != failed.broker.as_ref())
                });
                if !elsewhere && state.hint.is_none() {
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(4))).await;
                }
            }
            if failed.broker.is_some() {
                state.avoid = failed.broker;
            }
            attempt += 1;
        }
    }

    /// One try: look up the route, pick a queue, send.
    async fn attempt(
        &self,
        topic: &str,
        first: &Message,
        wire: &[v1::Message],
        routing: &Routing,
        state: &RetryState,
    ) -> Result<Vec<SendReceipt>, FailedAttempt> {
        let route = self
            .inner
            .core
            .routes
            .get(topic)
            .await
            .map_err(|error| FailedAttempt {
                error,
                broker: None,
                route_generation: 0,
                addr: None,
            })?;
        let queues = route.writable_queues();
        let fail = |error, broker, addr| FailedAttempt {
            error,
            broker,
            route_generation: route.generation,
            addr,
        };
        let Some(idx) = pick(queues, routing, state.rr, state.avoid.as_deref(), first) else {
            return Err(fail(
                Error::no_route(topic, "no writable queue with a master"),
                None,
                None,
            ));
        };
        let queue = &queues[idx];
        let mut addr = route.master_address(&queue.broker_name).unwrap_or_default();
        if let Some(h) = &state.hint {
            if h.broker == queue.broker_name && h.stale == addr {
                addr = &h.master;
            }
        }
        self.send_once(addr, queue, wire.to_vec())
            .await
            .map_err(|e| fail(e, Some(queue.broker_name.clone()), Some(addr.to_string())))
    }

    async fn send_once(
        &self,
        addr: &str,
        queue: &MessageQueue,
        messages: Vec<v1::Message>,
    ) -> Result<Vec<SendReceipt>> {
        let count = messages.len();
        let timeout = self.inner.send_timeout;
        let mut client = self.inner.core.broker(addr)?;
        let req = rpc::request(
            SendRequest {
                topic: queue.topic.clone(),
                queue_id: queue.queue_id,
                messages,
            },
            timeout,
        );
        let resp: SendResponse = rpc::call(addr, timeout, client.send(req)).await?;
        if resp.results.len() != count {
            return Err(Error::Api(ApiError::internal(format!(
                "broker {addr} acknowledged {} of {count} messages",
                resp.results.len()
            ))));
        }
        Ok(resp
            .results
            .into_iter()
            .map(|r| SendReceipt {
                message_id: r.message_id,
                topic: queue.topic.clone(),
                broker_name: resp.broker_name.clone(),
                queue_id: resp.queue_id,
                queue_offset: r.queue_offset,
                commit_log_offset: r.commit_log_offset,
            })
            .collect())
    }
}
