//! Transactional sends: [`Producer::begin_transaction`](super::Producer::begin_transaction)
//! opens a transaction whose sends (any topics and queues of one broker group) stay invisible
//! until [`Transaction::commit`], which makes them visible together; [`Transaction::rollback`]
//! (or a producer that never ends it, once its checker says so) drops them.
//!
//! A transaction left open is checked by the broker with a live producer of the same group:
//! a producer built with a [`TransactionChecker`] keeps a watch open on every master and
//! answers each check with what the checker says.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use prost::Message as _;
use sluice_proto::frame::Kind;
use sluice_proto::v1::{
    EndTransactionRequest, EndTransactionResponse, StoredMessage, TransactionCheck,
    TransactionEndSource, TransactionResolution, WatchTransactionChecksRequest,
};
use sluice_proto::{names, ApiError, ErrorCode};

use super::select::{key_hash, Routing};
use super::sender::{now_ms, Sender};
use super::wire::TxFields;
use crate::client::ClientCore;
use crate::error::{Error, Result};
use crate::message::{Message, SendReceipt};
use crate::route::MessageQueue;
use crate::rpc;

/// What a checker says about a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Commit,
    Rollback,
    /// Cannot tell yet: the broker asks again later.
    Unknown,
}

/// A transaction the broker asks about: its id, group, the how-manyth check this is, and its
/// messages as sent.
#[derive(Debug, Clone)]
pub struct CheckedTransaction {
    pub transaction_id: String,
    pub producer_group: String,
    pub check: u32,
    pub created_ms: i64,
    pub messages: Vec<StoredMessage>,
}

/// Tells the broker how a transaction left open ended (look it up in the local database the
/// transaction was about). Called on a blocking thread.
pub trait TransactionChecker: Send + Sync + 'static {
    fn check(&self, tx: &CheckedTransaction) -> Resolution;
}

impl<F> TransactionChecker for F
where
    F: Fn(&CheckedTransaction) -> Resolution + Send + Sync + 'static,
{
    fn check(&self, tx: &CheckedTransaction) -> Resolution {
        self(tx)
    }
}

/// An open transaction. Its sends go to one broker group (the first send's).
pub struct Transaction {
    sender: Arc<Sender>,
    fields: Arc<TxFields>,
    /// The broker group and a topic whose route names it, after the first send.
    bound: Option<(String, String)>,
    /// Each message sent: its topic and queue (commit answers in send order).
    sent: Vec<(String, u32)>,
}

pub(crate) fn new_id() -> String {
    format!(
        "{}-{:016x}",
        crate::message_id::message_id_at(now_ms()),
        rand::random::<u64>()
    )
}

impl Transaction {
    pub(crate) fn new(sender: Arc<Sender>, group: &str) -> Transaction {
        Transaction {
            sender,
            fields: Arc::new(TxFields {
                id: new_id(),
                group: group.to_string(),
            }),
            bound: None,
            sent: Vec::new(),
        }
    }

    pub fn id(&self) -> &str {
        &self.fields.id
    }

    /// Sends a message as part of the transaction (invisible until the commit).
    pub async fn send(&mut self, message: Message) -> Result<SendReceipt> {
        self.send_routed(message, None).await
    }

    /// Sends to the queue of a sharding key (among the transaction's broker group's queues).
    pub async fn send_with_key(&mut self, message: Message, key: &str) -> Result<SendReceipt> {
        self.send_routed(message, Some(key)).await
    }

    async fn send_routed(&mut self, message: Message, key: Option<&str>) -> Result<SendReceipt> {
        names::validate_topic_name(&message.topic)?;
        if message.delay.is_some() {
            return Err(Error::InvalidArgument(
                "a transaction's messages cannot be delayed".into(),
            ));
        }
        let topic = message.topic.clone();
        let route = self.sender.core.routes.get(&topic).await?;
        let queues: Vec<&MessageQueue> = route
            .writable_queues()
            .iter()
            .filter(|q| self.bound.as_ref().is_none_or(|(b, _)| *b == q.broker_name))
            .collect();
        if queues.is_empty() {
            return Err(Error::no_route(
                &topic,
                "no writable queue on the transaction's broker group",
            ));
        }
        let i = match key {
            Some(k) => (key_hash(k) % queues.len() as u64) as usize,
            None => self.sender.next_rr() % queues.len(),
        };
        let queue = queues[i].clone();
        let wire = Arc::new(vec![self.sender.to_wire(message, now_ms())]);
        let routing = Routing::Queue {
            queue: queue.clone(),
            reroutable: false,
        };
        // Bound before the first attempt: a send that failed may be stored all the same, and
        // the commit or rollback must reach it.
        if self.bound.is_none() {
            self.bound = Some((queue.broker_name.clone(), topic.clone()));
        }
        let mut r = self
            .sender
            .send_with_retries(&topic, None, &wire, &routing, Some(&self.fields))
            .await?;
        self.sent.push((topic, queue.queue_id));
        r.pop()
            .ok_or_else(|| Error::Api(ApiError::internal("the broker acknowledged no message")))
    }

    /// Makes every message of the transaction visible, together; returns their receipts (in
    /// send order) with their positions in their queues.
    pub async fn commit(self) -> Result<Vec<SendReceipt>> {
        let Some((broker, topic)) = self.bound.clone() else {
            return Ok(Vec::new());
        };
        let resp = end(
            &self.sender,
            &topic,
            &broker,
            &self.fields.id,
            TransactionResolution::Commit,
            TransactionEndSource::Producer,
        )
        .await?;
        // A commit retried after it was made answers without positions.
        Ok(resp
            .results
            .into_iter()
            .zip(self.sent)
            .map(|(r, (topic, queue_id))| SendReceipt {
                message_id: r.message_id,
                topic,
                broker_name: broker.clone(),
                queue_id,
                queue_offset: r.queue_offset,
                commit_log_offset: r.commit_log_offset,
                delay_handle: None,
                deliver_at_ms: None,
                store_timestamp_ms: None,
                broker_address: String::new(),
            })
            .collect())
    }

    /// Drops every message of the transaction.
    pub async fn rollback(self) -> Result<()> {
        let Some((broker, topic)) = self.bound.clone() else {
            return Ok(());
        };
        end(
            &self.sender,
            &topic,
            &broker,
            &self.fields.id,
            TransactionResolution::Rollback,
            TransactionEndSource::Producer,
        )
        .await?;
        Ok(())
    }
}

/// `EndTransaction` on the master of `broker` (found through `topic`'s route), retried across
/// a master change: ending a transaction twice the same way is answered like the first time.
async fn end(
    sender: &Sender,
    topic: &str,
    broker: &str,
    id: &str,
    resolution: TransactionResolution,
    source: TransactionEndSource,
) -> Result<EndTransactionResponse> {
    let core = &sender.core;
    let mut last = None;
    for attempt in 0..=sender.retries.max(4) * 4 {
        let route = core.routes.get(topic).await?;
        let Some(addr) = route.master_address(broker).map(str::to_string) else {
            last = Some(Error::no_route(
                topic,
                "no master for the transaction's broker group",
            ));
            let _ = core.routes.refresh(topic, route.generation).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let t = sender.send_timeout;
        let data = route
            .master_data_address(broker)
            .filter(|_| core.config.use_data_port)
            .map(str::to_string);
        let req = EndTransactionRequest {
            transaction_id: id.to_string(),
            resolution: resolution as i32,
            source: source as i32,
        };
        let call = async {
            match data {
                // Where the producer's sends went: cheaper than a gRPC call.
                Some(data) => {
                    let conn = core.data_ports.get(&data).await?;
                    let body = conn.call(Kind::EndTransaction, req, t).await?;
                    EndTransactionResponse::decode(body).map_err(|e| {
                        Error::Api(ApiError::internal(format!(
                            "undecodable EndTransactionResponse from {data}: {e}"
                        )))
                    })
                }
                None => {
                    let mut client = core.broker(&addr)?;
                    rpc::call(&addr, t, client.end_transaction(rpc::request(req, t))).await
                }
            }
        };
        match call.await {
            Ok(r) => return Ok(r),
            Err(e) if e.is_retryable() => {
                tracing::debug!(tx = id, attempt, error = %e, "ending a transaction failed; retrying");
                if e.is_routing() {
                    let _ = core.routes.refresh(topic, route.generation).await;
                }
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(2))).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last
        .unwrap_or_else(|| Error::Api(ApiError::new(ErrorCode::Unavailable, "no attempt made"))))
}

/// Keeps a check watch open on every master of the cluster for `group`, answering each check
/// with `checker`; ends when the producer is gone.
pub(crate) async fn watch_checks(
    sender: Weak<Sender>,
    group: String,
    checker: Arc<dyn TransactionChecker>,
) {
    let watching: Arc<Mutex<HashSet<String>>> = Arc::default();
    let client_id = new_id();
    loop {
        let Some(s) = sender.upgrade() else { return };
        match s.core.nameservers.cluster_info().await {
            Ok(info) => {
                for b in info
                    .brokers
                    .into_iter()
                    .filter(|b| b.role == sluice_proto::v1::Role::Master as i32)
                {
                    if !watching.lock().insert(b.address.clone()) {
                        continue;
                    }
                    tokio::spawn(watch_one(
                        s.core.clone(),
                        b.address,
                        group.clone(),
                        client_id.clone(),
                        checker.clone(),
                        watching.clone(),
                        sender.clone(),
                    ));
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot list the brokers for transaction checks"),
        }
        drop(s);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn watch_one(
    core: Arc<ClientCore>,
    addr: String,
    group: String,
    client_id: String,
    checker: Arc<dyn TransactionChecker>,
    watching: Arc<Mutex<HashSet<String>>>,
    sender: Weak<Sender>,
) {
    let stream = async {
        let mut client = core.broker(&addr)?;
        let resp = client
            .watch_transaction_checks(WatchTransactionChecksRequest {
                producer_group: group.clone(),
                client_id: client_id.clone(),
            })
            .await
            .map_err(|s| Error::from_status(&addr, s))?;
        Ok::<_, Error>(resp.into_inner())
    };
    match stream.await {
        Ok(mut checks) => loop {
            if sender.strong_count() == 0 {
                break;
            }
            match checks.message().await {
                Ok(Some(check)) => {
                    tokio::spawn(answer(core.clone(), addr.clone(), check, checker.clone()));
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "transaction check watch ended");
                    break;
                }
            }
        },
        Err(e) => tracing::debug!(%addr, error = %e, "cannot watch for transaction checks"),
    }
    watching.lock().remove(&addr);
}

async fn answer(
    core: Arc<ClientCore>,
    addr: String,
    check: TransactionCheck,
    checker: Arc<dyn TransactionChecker>,
) {
    let id = check.transaction_id.clone();
    let checked = CheckedTransaction {
        transaction_id: check.transaction_id,
        producer_group: check.producer_group,
        check: check.check,
        created_ms: check.created_ms,
        messages: check.messages,
    };
    let resolution = match tokio::task::spawn_blocking(move || checker.check(&checked)).await {
        Ok(Resolution::Commit) => TransactionResolution::Commit,
        Ok(Resolution::Rollback) => TransactionResolution::Rollback,
        Ok(Resolution::Unknown) => TransactionResolution::Unknown,
        Err(e) => {
            tracing::warn!(tx = %id, error = %e, "the transaction checker failed");
            return;
        }
    };
    let t = core.timeout();
    // The broker that asked may have lost its mastership meanwhile: follow its hint (a gRPC
    // address; its data port is not known).
    let mut addr = addr;
    let mut data = Some(check.data_address).filter(|d| !d.is_empty() && core.config.use_data_port);
    for attempt in 0..5u32 {
        let req = EndTransactionRequest {
            transaction_id: id.clone(),
            resolution: resolution as i32,
            source: TransactionEndSource::Check as i32,
        };
        let r = async {
            match &data {
                Some(data) => {
                    let conn = core.data_ports.get(data).await?;
                    conn.call(Kind::EndTransaction, req, t).await.map(|_| ())
                }
                None => {
                    let mut client = core.broker(&addr)?;
                    rpc::call(&addr, t, client.end_transaction(rpc::request(req, t)))
                        .await
                        .map(|_| ())
                }
            }
        };
        match r.await {
            Ok(()) => return,
            Err(e) if e.is_retryable() => {
                if let Some(hint) = e
                    .api()
                    .filter(|a| a.code == ErrorCode::NotMaster && !a.master_address.is_empty())
                {
                    addr = hint.master_address.clone();
                    data = None;
                } else {
                    // Retried over gRPC, which reaches the broker whatever its data port does.
                    data = None;
                    tokio::time::sleep(Duration::from_millis(200 << attempt.min(3))).await;
                }
            }
            Err(e) => {
                // The next check asks again.
                tracing::debug!(tx = %id, error = %e, "answering a transaction check failed");
                return;
            }
        }
    }
}
