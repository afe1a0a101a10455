//! One Send RPC with retries: route lookup, queue choice, failover hints. Shared by direct sends
//! and the accumulator's batches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use sluice_proto::frame::Kind;
use sluice_proto::v1::{self, SendResponse};
use sluice_proto::{ApiError, ErrorCode};

use super::idempotence::{self, Bound, Idempotence};
use super::select::{pick, Routing};
use super::wire::{SendCodec, SharedSendRequest, TxFields};
use crate::client::ClientCore;
use crate::error::{Error, Result};
use crate::message::{Message, SendReceipt};
use crate::message_id::message_id_at;
use crate::route::MessageQueue;
use crate::rpc;
use crate::trace::{SendTrace, Tracer};

pub(crate) struct Sender {
    pub(crate) core: Arc<ClientCore>,
    pub(crate) retries: u32,
    pub(crate) send_timeout: Duration,
    rr: AtomicUsize,
    /// `born_host` of every message, computed once.
    host: String,
    /// Producer ids and queue sequences; None when idempotence is off.
    pub(crate) idempotence: Option<Idempotence>,
    /// The trace recorder and the producer group it names, when tracing.
    pub(crate) tracer: Option<(Tracer, String)>,
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
    /// The transaction the send belongs to.
    tx: Option<Arc<TxFields>>,
}

/// Where NOT_MASTER said the master is, used until the route catches up.
struct MasterHint {
    broker: String,
    stale: String,
    master: String,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Sender {
    pub(crate) fn new(
        core: Arc<ClientCore>,
        retries: u32,
        send_timeout: Duration,
        idempotence: Option<String>,
        tracer: Option<(Tracer, String)>,
    ) -> Self {
        Sender {
            tracer,
            idempotence: idempotence.map(|group| Idempotence::new(core.clone(), group)),
            core,
            retries,
            send_timeout,
            rr: AtomicUsize::new(rand::random::<u16>() as usize),
            host: crate::message_id::hostname(),
        }
    }

    /// The next round-robin position.
    pub(crate) fn next_rr(&self) -> usize {
        self.rr.fetch_add(1, Ordering::Relaxed)
    }

    /// The wire form of a message. Its id and birth time are fixed here, before the first
    /// attempt, so a retry keeps them.
    pub(crate) fn to_wire(&self, mut m: Message, born: i64) -> v1::Message {
        if self.tracer.is_some() {
            Tracer::stamp(&mut m.properties);
        }
        v1::Message {
            topic: String::new(),
            body: m.body,
            tag: m.tag,
            keys: m.keys,
            properties: m.properties,
            flag: m.flag,
            message_id: message_id_at(born),
            born_timestamp_ms: born,
            born_host: self.host.clone(),
            ..crate::message::delay_fields(m.delay)
        }
    }

    /// Sends `wire` (all to one queue, in one request) with retries of retryable errors.
    /// `selector_input` feeds custom queue selectors. With idempotence on, the batch keeps
    /// its queue and sequence while its outcome is unknown (see `idempotence.rs`).
    pub(crate) async fn send_with_retries(
        &self,
        topic: &str,
        selector_input: Option<&Message>,
        wire: &Arc<Vec<v1::Message>>,
        routing: &Routing,
        tx: Option<&Arc<TxFields>>,
    ) -> Result<Vec<SendReceipt>> {
        if self.tracer.is_none() {
            return self
                .send_untraced(topic, selector_input, wire, routing, tx)
                .await;
        }
        let started = (Instant::now(), now_ms());
        let outcome = self
            .send_untraced(topic, selector_input, wire, routing, tx)
            .await;
        self.trace(topic, wire, tx.is_some(), started, &outcome);
        outcome
    }

    /// Records a finished send (started at `started`, monotonic and wall clock) when tracing.
    pub(crate) fn trace(
        &self,
        topic: &str,
        wire: &[v1::Message],
        transaction: bool,
        started: (Instant, i64),
        outcome: &Result<Vec<SendReceipt>>,
    ) {
        if let Some((tracer, group)) = &self.tracer {
            let send = SendTrace {
                topic,
                producer_group: group,
                messages: wire,
                transaction,
                started_ms: started.1,
                latency: started.0.elapsed(),
            };
            tracer.sent(&send, outcome);
        }
    }

    /// [`Self::send_with_retries`] without recording a trace (the caller records it).
    pub(crate) async fn send_untraced(
        &self,
        topic: &str,
        selector_input: Option<&Message>,
        wire: &Arc<Vec<v1::Message>>,
        routing: &Routing,
        tx: Option<&Arc<TxFields>>,
    ) -> Result<Vec<SendReceipt>> {
        // A queue picked earlier (a batch of the accumulator, a transaction's send) took its
        // round-robin turn then: taking another here would make sends one at a time skip every
        // other queue. Its retries, which may move it, take turns of their own.
        let round_robin = matches!(routing, Routing::RoundRobin);
        let rr_start = if round_robin { self.next_rr() } else { 0 };
        let mut state = RetryState {
            tx: tx.cloned(),
            ..RetryState::default()
        };
        let mut attempt: u32 = 0;
        let mut bound: Option<Bound> = None;
        // Some attempt's outcome was unknown: the batch may be stored, so it keeps its queue
        // and sequence whatever a later attempt says.
        let mut maybe_stored = false;
        loop {
            state.rr = match (round_robin, attempt) {
                (true, _) => rr_start.wrapping_add(attempt as usize),
                (false, 0) => self.rr.load(Ordering::Relaxed),
                (false, _) => self.next_rr(),
            };
            let failed = match self
                .attempt(topic, selector_input, wire, routing, &state, &mut bound)
                .await
            {
                Ok(receipts) => {
                    if let Some(b) = bound.take() {
                        b.stored();
                    }
                    return Ok(receipts);
                }
                Err(failed) => failed,
            };
            let err = failed.error;
            if let (Some(idem), Some(b)) = (&self.idempotence, bound.as_mut()) {
                if let Some(code) = idempotence::needs_renumbering(&err) {
                    if attempt >= self.retries {
                        if let Some(b) = bound.take() {
                            b.refused(idem, code);
                        }
                        return Err(err);
                    }
                    tracing::debug!(topic, error = %err, "batch refused for its sequence; renumbered");
                    b.renumber(idem, code).await?;
                    attempt += 1;
                    continue;
                }
                if !idempotence::certainly_not_stored(&err) {
                    maybe_stored = true;
                } else if !maybe_stored {
                    // Never stored: the sequence stays free and the batch may move.
                    if let Some(b) = bound.take() {
                        b.released();
                    }
                }
            }
            if !err.is_retryable() || attempt >= self.retries {
                if let Some(b) = bound.take() {
                    b.abandoned();
                }
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
                    .core
                    .routes
                    .refresh(topic, failed.route_generation)
                    .await;
                // With nowhere else to go (one broker group in failover, or a batch held to
                // its queue), pause a little so the retries span more than a few
                // milliseconds; at most 200 ms, so a new master (registered the moment it is
                // elected) is found soon after it takes over.
                let elsewhere = bound.is_none()
                    && refreshed.is_ok_and(|r| {
                        r.writable_queues()
                            .iter()
                            .any(|q| Some(&q.broker_name) != failed.broker.as_ref())
                    });
                if !elsewhere && state.hint.is_none() {
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(2))).await;
                }
            }
            if failed.broker.is_some() {
                state.avoid = failed.broker;
            }
            attempt += 1;
        }
    }

    /// One try: look up the route, pick a queue (the bound one, if any; binding a new batch
    /// when idempotent), send.
    async fn attempt(
        &self,
        topic: &str,
        selector_input: Option<&Message>,
        wire: &Arc<Vec<v1::Message>>,
        routing: &Routing,
        state: &RetryState,
        bound: &mut Option<Bound>,
    ) -> Result<Vec<SendReceipt>, FailedAttempt> {
        let route = self
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
        let queue = match bound.as_ref() {
            Some(b) => b.queue.clone(),
            None => {
                let Some(idx) = pick(
                    queues,
                    routing,
                    state.rr,
                    state.avoid.as_deref(),
                    selector_input,
                ) else {
                    return Err(fail(
                        Error::no_route(topic, "no writable queue with a master"),
                        None,
                        None,
                    ));
                };
                queues[idx].clone()
            }
        };
        // A transaction's sends carry no sequence: the broker counts a send stored twice
        // once in its transaction (by its first message id), so they need not wait for their
        // queue's earlier batches.
        let sequenced = self.idempotence.as_ref().filter(|_| state.tx.is_none());
        let seq = match (sequenced, bound.as_ref()) {
            (None, _) => None,
            (Some(_), Some(b)) => Some(b.seq),
            (Some(idem), None) => {
                let b = idem
                    .bind(&queue, wire.len())
                    .await
                    .map_err(|e| fail(e, Some(queue.broker_name.clone()), None))?;
                let seq = b.seq;
                *bound = Some(b);
                Some(seq)
            }
        };
        let Some(mut addr) = route.master_address(&queue.broker_name) else {
            // A batch held to its queue while its group has no master in the route (an
            // election under way): retried once the route names one.
            return Err(fail(
                Error::no_route(topic, "no master for the queue's broker group"),
                Some(queue.broker_name.clone()),
                None,
            ));
        };
        let mut data_addr = route
            .master_data_address(&queue.broker_name)
            .filter(|_| self.core.config.use_data_port);
        if let Some(h) = &state.hint {
            if h.broker == queue.broker_name && h.stale == addr {
                addr = &h.master;
                // The hint names the master's gRPC address only.
                data_addr = None;
            }
        }
        let request = SharedSendRequest::new(&queue, wire.clone(), seq, state.tx.clone());
        let sent = match data_addr {
            Some(data) => self.send_data_port(data, &queue, request).await,
            None => self.send_once(addr, &queue, request).await,
        };
        sent.map_err(|e| fail(e, Some(queue.broker_name.clone()), Some(addr.to_string())))
    }

    /// Send through the broker's data port: the same request and answer as the gRPC call.
    async fn send_data_port(
        &self,
        addr: &str,
        queue: &MessageQueue,
        request: SharedSendRequest,
    ) -> Result<Vec<SendReceipt>> {
        let count = request.messages.len();
        let conn = self.core.data_ports.get(addr).await?;
        let body = conn.call(Kind::Send, request, self.send_timeout).await?;
        let resp = SendResponse::decode(body).map_err(|e| {
            Error::Api(ApiError::internal(format!(
                "undecodable SendResponse from {addr}: {e}"
            )))
        })?;
        receipts(addr, queue, count, resp)
    }

    async fn send_once(
        &self,
        addr: &str,
        queue: &MessageQueue,
        request: SharedSendRequest,
    ) -> Result<Vec<SendReceipt>> {
        let count = request.messages.len();
        let timeout = self.send_timeout;
        let mut grpc = self.core.pool.grpc(addr)?;
        let codec = SendCodec {
            encoded_len: request.encoded_len(),
        };
        let mut req = rpc::request(request, timeout);
        req.extensions_mut()
            .insert(tonic::GrpcMethod::new("sluice.v1.Broker", "Send"));
        let call = async move {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
            grpc.unary(
                req,
                tonic::codegen::http::uri::PathAndQuery::from_static("/sluice.v1.Broker/Send"),
                codec,
            )
            .await
        };
        let resp: SendResponse = rpc::call(addr, timeout, call).await?;
        receipts(addr, queue, count, resp)
    }
}

/// One receipt per message sent, or an error when the broker acknowledged another number.
fn receipts(
    addr: &str,
    queue: &MessageQueue,
    count: usize,
    resp: SendResponse,
) -> Result<Vec<SendReceipt>> {
    {
        if resp.results.len() != count {
            return Err(Error::Api(ApiError::internal(format!(
                "broker {addr} acknowledged {} of {count} messages",
                resp.results.len()
            ))));
        }
        let broker_name = resp.broker_name;
        let queue_id = resp.queue_id;
        let store_timestamp_ms = (resp.store_timestamp_ms != 0).then_some(resp.store_timestamp_ms);
        Ok(resp
            .results
            .into_iter()
            .map(|r| SendReceipt {
                message_id: r.message_id,
                topic: queue.topic.clone(),
                broker_name: broker_name.clone(),
                queue_id,
                queue_offset: r.queue_offset,
                commit_log_offset: r.commit_log_offset,
                delay_handle: (!r.delay_handle.is_empty())
                    .then(|| format!("{}/{}", queue.topic, r.delay_handle)),
                deliver_at_ms: (r.deliver_at_ms != 0).then_some(r.deliver_at_ms),
                store_timestamp_ms,
                broker_address: addr.to_string(),
            })
            .collect())
    }
}
