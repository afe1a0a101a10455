//! Transactional messages, protocol-neutral.
//!
//! - A send with a transaction id stores *half messages* in `%TX_HALF%` (never delivered),
//!   each carrying its real topic and queue; the first record of the send announces the
//!   transaction (`__TXH`), so every replica adds the send to the transaction's record in the
//!   state (`state::transactions`) from the send's own entry.
//! - `end` commits or rolls back. A commit writes one mixed batch: the resolution (a state
//!   record) and a copy of every half message in its real queue; one entry decides, so the
//!   messages become visible together or not at all, and a failover cannot split them from
//!   "committed". A rollback is a state entry.
//! - The master checks transactions left open (`checks.rs`) with live producers of their group,
//!   recording each round in the log; after the last check a transaction is parked for an
//!   operator (`sluice tx commit|rollback`).
//! - Every replica keeps retention and Raft compaction off the oldest unresolved half message.

mod batch;
mod checks;
mod end;
mod floor;
mod sent;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_proto::props::{self, HalfMark};
use sluice_proto::v1::{
    ListTransactionsRequest, TransactionCheck, TransactionInfo, TxHalfOp, TxRecord,
};
use sluice_proto::{ApiError, ErrorCode};
use tokio::sync::{mpsc, watch};

use super::WritePath;
use crate::state::transactions::{self as table, COMMITTED, OPEN, ROLLED_BACK};
use crate::store::{AppendBatch, AppendMessage, Appended, MessageStore, StoredRecord};

/// Limits and timing of transactions.
#[derive(Debug, Clone)]
pub struct TxSettings {
    /// First check of a transaction left open this long.
    pub check_after: Duration,
    /// Checks back off (doubling from `check_after`) up to this interval.
    pub max_check_interval: Duration,
    /// Checks before a transaction is parked.
    pub max_checks: u32,
    /// Most checks sent a second.
    pub check_rate: u32,
    pub max_messages: u64,
    pub max_bytes: u64,
    /// Open transactions per producer group.
    pub max_open: u64,
    /// Sends to a transaction older than this are refused.
    pub timeout: Duration,
    /// Resolved transactions are remembered this long (a retried end gets its answer).
    pub keep_resolved: Duration,
    /// Resolved transactions remembered at most (0: no limit but time).
    pub max_resolved: u64,
}

impl Default for TxSettings {
    fn default() -> Self {
        TxSettings {
            check_after: Duration::from_secs(6),
            max_check_interval: Duration::from_secs(60),
            max_checks: 15,
            check_rate: 500,
            max_messages: 10_000,
            max_bytes: 4 << 20,
            max_open: 1_000_000,
            timeout: Duration::from_secs(3600),
            keep_resolved: Duration::from_secs(3600),
            max_resolved: 2_000_000,
        }
    }
}

/// The transaction a send belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxSend {
    pub id: String,
    pub group: String,
}

/// How a transaction ended, and for a commit made now the copies' positions (with ids).
#[derive(Debug, Clone)]
pub struct Ended {
    pub resolution: i32,
    pub committed: Vec<(String, Appended)>,
    /// Rolled back for being open longer than `transaction_timeout`.
    pub expired: bool,
}

type EndOutcome = Result<Ended, ApiError>;

/// An end in flight on this master.
struct EndSlot {
    term: u64,
    done: watch::Receiver<Option<EndOutcome>>,
}

/// Resolved transactions a listing gives when it asks for them without a limit, and at most.
const DEFAULT_LIST_RESOLVED: usize = 1_000;
const MAX_LIST_RESOLVED: usize = 10_000;

/// A producer watching for checks.
struct Watcher {
    client_id: String,
    tx: mpsc::Sender<TransactionCheck>,
}

pub struct Transactions {
    write: WritePath,
    store: MessageStore,
    pub settings: TxSettings,
    ends: Mutex<HashMap<String, EndSlot>>,
    /// Half sends under way on this master, per transaction: an end waits for them (so it
    /// copies every half message acknowledged), and a send is refused while an end runs.
    sending: Mutex<HashMap<String, u32>>,
    send_done: tokio::sync::Notify,
    watchers: Mutex<HashMap<String, Vec<Watcher>>>,
    rr: AtomicUsize,
    /// Ends waiting to be written together.
    end_queue: Mutex<batch::EndQueue>,
    /// Wakes those waiting for an end's write (see [`Self::end_written`]).
    ends_written: tokio::sync::Notify,
    /// Half sends stored by this master, for their commit (see `sent.rs`).
    sent: sent::SentCache,
}

/// A half send under way (see [`Transactions::begin_send`]).
pub struct SendGuard<'a> {
    txs: &'a Transactions,
    id: String,
}

impl Drop for SendGuard<'_> {
    fn drop(&mut self) {
        let mut sending = self.txs.sending.lock();
        if let Some(n) = sending.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                sending.remove(&self.id);
            }
        }
        drop(sending);
        self.txs.send_done.notify_waiters();
    }
}

/// 1-128 of `[A-Za-z0-9_.:-]`.
pub fn validate_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "transaction id {id:?}: 1-128 of [A-Za-z0-9_.:-]"
        )))
    }
}

fn limit(what: &str, detail: String) -> ApiError {
    ApiError::new(ErrorCode::LimitExceeded, format!("{what}: {detail}"))
}

fn resolution_name(r: i32) -> &'static str {
    match r {
        COMMITTED => "committed",
        ROLLED_BACK => "rolled back",
        _ => "open",
    }
}

impl Transactions {
    pub fn new(write: WritePath, store: MessageStore, settings: TxSettings) -> Arc<Self> {
        Arc::new(Transactions {
            write,
            store,
            settings,
            ends: Mutex::new(HashMap::new()),
            sending: Mutex::new(HashMap::new()),
            send_done: tokio::sync::Notify::new(),
            watchers: Mutex::new(HashMap::new()),
            rr: AtomicUsize::new(0),
            end_queue: Mutex::new(batch::EndQueue::default()),
            ends_written: tokio::sync::Notify::new(),
            sent: sent::SentCache::default(),
        })
    }

    fn record(&self, id: &str) -> Result<Option<TxRecord>, ApiError> {
        Ok(self.write.state().transaction(id)?)
    }

    /// Starts a half send to `tx` (refused while the transaction is ending); the guard ends it.
    pub fn begin_send(&self, tx: &TxSend) -> Result<SendGuard<'_>, ApiError> {
        validate_id(&tx.id)?;
        let ends = self.ends.lock();
        if ends.contains_key(&tx.id) {
            return Err(ApiError::new(
                ErrorCode::TransactionResolved,
                format!(
                    "transaction {} is ending; a new send needs a new transaction",
                    tx.id
                ),
            ));
        }
        *self.sending.lock().entry(tx.id.clone()).or_insert(0) += 1;
        Ok(SendGuard {
            txs: self,
            id: tx.id.clone(),
        })
    }

    fn sends_in_flight(&self, id: &str) -> u32 {
        self.sending.lock().get(id).copied().unwrap_or(0)
    }

    /// Waits until no half send of `id` is under way.
    async fn sends_done(&self, id: &str) {
        loop {
            let done = self.send_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.sends_in_flight(id) == 0 {
                return;
            }
            done.await;
        }
    }

    /// After a half send is applied: that it joined its transaction. The apply takes a send
    /// whose first message id the transaction has already for a retry of that send (ids are
    /// the client's): a different send reusing the id was left out and must not be answered
    /// as stored.
    pub fn check_joined(
        &self,
        tx: &TxSend,
        topic: &str,
        queue_id: u32,
        first_id: &str,
        count: usize,
    ) -> Result<(), ApiError> {
        let r = self.record(&tx.id)?.unwrap_or_default();
        match r.halves.iter().find(|h| h.first_message_id == first_id) {
            Some(h) if h.topic == topic && h.queue_id == queue_id && h.count as usize == count => {
                Ok(())
            }
            Some(h) => Err(ApiError::invalid(format!(
                "message id {first_id} already starts another send of transaction {} (to {} queue {}); \
                 this send was not added to it",
                tx.id, h.topic, h.queue_id
            ))),
            // A resolved record keeps no first ids: whether the send made it in is the end's.
            None if r.resolution != OPEN => Err(ApiError::new(
                ErrorCode::TransactionResolved,
                format!(
                    "transaction {} ended while this send was stored; its end decides whether \
                     the send is in it",
                    tx.id
                ),
            )),
            None => Err(ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "this send is not in transaction {}; send it again",
                    tx.id
                ),
            )),
        }
    }

    /// Checks a send of `count` messages (`bytes` of payload) to `tx` against its state and
    /// the limits.
    pub fn check_send(
        &self,
        tx: &TxSend,
        count: usize,
        bytes: u64,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        validate_id(&tx.id)?;
        sluice_proto::names::validate_group_name(&tx.group)?;
        let s = &self.settings;
        match self.record(&tx.id)? {
            Some(r) if r.resolution != OPEN => Err(ApiError::new(
                ErrorCode::TransactionResolved,
                format!(
                    "transaction {} was {}; a new send needs a new transaction",
                    tx.id,
                    resolution_name(r.resolution)
                ),
            )),
            Some(r) => {
                let age = u64::try_from(now_ms.saturating_sub(r.created_ms)).unwrap_or(0);
                if r.parked || age > s.timeout.as_millis() as u64 {
                    return Err(limit(
                        "transaction_timeout",
                        format!("transaction {} is {} ms old", tx.id, age),
                    ));
                }
                let msgs: u64 = r.halves.iter().map(|h| u64::from(h.count)).sum();
                let held: u64 = r.halves.iter().map(|h| h.bytes).sum();
                if msgs + count as u64 > s.max_messages {
                    return Err(limit(
                        "max_transaction_messages",
                        format!("{} per transaction", s.max_messages),
                    ));
                }
                if held + bytes > s.max_bytes {
                    return Err(limit(
                        "max_transaction_bytes",
                        format!("{} per transaction", s.max_bytes),
                    ));
                }
                // Sends under way count: a half past the limit would be dropped on apply.
                let others = self.sends_in_flight(&tx.id).saturating_sub(1) as usize;
                if r.halves.len() + others >= table::MAX_HALVES {
                    return Err(limit(
                        "sends per transaction",
                        format!("{}", table::MAX_HALVES),
                    ));
                }
                Ok(())
            }
            None => {
                if count as u64 > s.max_messages || bytes > s.max_bytes {
                    return Err(limit(
                        "max_transaction_messages / max_transaction_bytes",
                        format!(
                            "{} messages, {} bytes per transaction",
                            s.max_messages, s.max_bytes
                        ),
                    ));
                }
                let open = self.write.state().tx_open.get(&tx.group);
                if open >= s.max_open {
                    return Err(limit(
                        "max_open_transactions",
                        format!("{open} open in producer group {}", tx.group),
                    ));
                }
                Ok(())
            }
        }
    }

    /// The half batch of a send: the messages for `%TX_HALF%`, each with its real queue and
    /// transaction, the first announcing the send.
    pub fn half_batch(
        topic: &str,
        queue_id: u32,
        tx: &TxSend,
        mut messages: Vec<AppendMessage>,
    ) -> AppendBatch {
        let bytes: u64 = messages
            .iter()
            .map(|m| crate::store::record::payload_size(m) as u64)
            .sum();
        let mark = HalfMark {
            count: messages.len() as u32,
            bytes,
            producer_group: tx.group.clone(),
        };
        for (i, m) in messages.iter_mut().enumerate() {
            m.properties
                .push((props::REAL_TOPIC.into(), topic.to_string()));
            m.properties
                .push((props::REAL_QUEUE.into(), queue_id.to_string()));
            m.properties.push((props::TX_ID.into(), tx.id.clone()));
            if i == 0 {
                m.properties.push((props::TX_HALF.into(), mark.encode()));
            }
        }
        AppendBatch {
            topic: props::TX_HALF_TOPIC.to_string(),
            queue_id: 0,
            messages,
        }
    }

    /// The half records of a transaction, in send order.
    fn halves(&self, r: &TxRecord) -> Result<Vec<StoredRecord>, ApiError> {
        let mut out = Vec::new();
        for h in &r.halves {
            out.extend(self.half_records(h)?);
        }
        Ok(out)
    }

    /// The records of one half send, read from the log.
    fn half_records(&self, h: &TxHalfOp) -> Result<Vec<StoredRecord>, ApiError> {
        let located = match &self.write {
            WritePath::Replicated { .. } => self.store.entry_results(h.locator)?,
            WritePath::Standalone { .. } => self.store.batch_at(h.locator, h.count)?,
        };
        located
            .into_iter()
            .map(|a| Ok(self.store.read_at(a.commit_log_offset)?))
            .collect()
    }

    /// The messages a commit of `r` copies, in send order: those this master kept, the
    /// others read back from the log.
    fn sent_halves(&self, r: &TxRecord, id: &str) -> Result<sent::Sent, ApiError> {
        let mut out = Vec::new();
        for h in &r.halves {
            if let Some(kept) = self.sent.take(h.locator) {
                out.extend(kept);
                continue;
            }
            for rec in self.half_records(h)? {
                out.push(sent::as_sent(rec).ok_or_else(|| {
                    ApiError::internal(format!("a half message of {id} lost its queue"))
                })?);
            }
        }
        Ok(out)
    }

    /// Drops what this master kept of `r`'s sends (a rollback copies nothing).
    fn drop_sent(&self, r: &TxRecord) {
        for h in &r.halves {
            self.sent.take(h.locator);
        }
    }

    /// Keeps a half batch this master stored (its state applied) for its commit: `acked` is
    /// its write's answer.
    pub fn keep_sent(&self, acked: &super::Acked, batch: &AppendBatch) {
        if !self.write.acks_committed() {
            // Acknowledged is not committed: the log may come to hold another entry there.
            return;
        }
        // Where the state's record says the send is (see `state::batch_ops`).
        let locator = match &self.write {
            WritePath::Replicated { .. } => acked.apply_at,
            WritePath::Standalone { .. } => acked.entries.first().map(|a| a.commit_log_offset),
        };
        if let Some(locator) = locator {
            self.sent.keep(locator, batch);
        }
    }

    /// The open and parked transactions, and the resolved ones `req` asks for (see
    /// `ListTransactionsRequest`).
    pub fn list(&self, req: &ListTransactionsRequest) -> Result<Vec<TransactionInfo>, ApiError> {
        let state = self.write.state();
        let meta = state.meta();
        let found = if !req.transaction_id.is_empty() {
            state
                .transaction(&req.transaction_id)?
                .map(|r| (req.transaction_id.clone(), r))
                .into_iter()
                .collect()
        } else {
            let mut all = table::list_open(meta.as_ref())?;
            if req.include_resolved {
                let limit = match req.limit {
                    0 => DEFAULT_LIST_RESOLVED,
                    n => (n as usize).min(MAX_LIST_RESOLVED),
                };
                all.extend(state.tx_ended.newest(meta.as_ref(), limit)?);
            }
            all
        };
        Ok(found
            .into_iter()
            .map(|(id, r)| {
                let mut topics: Vec<String> = r.halves.iter().map(|h| h.topic.clone()).collect();
                topics.sort();
                topics.dedup();
                TransactionInfo {
                    transaction_id: id,
                    producer_group: r.producer_group,
                    topics,
                    messages: r.halves.iter().map(|h| h.count).sum(),
                    bytes: r.halves.iter().map(|h| h.bytes).sum(),
                    created_ms: r.created_ms,
                    checks: r.checks,
                    last_check_ms: r.last_check_ms,
                    parked: r.parked,
                    resolution: r.resolution,
                    resolved_ms: r.resolved_ms,
                    expired: r.expired,
                }
            })
            .collect())
    }

    /// A producer of `group` watching for checks; the stream ends when the receiver is gone.
    pub fn watch(
        &self,
        group: &str,
        client_id: &str,
    ) -> Result<mpsc::Receiver<TransactionCheck>, ApiError> {
        sluice_proto::names::validate_group_name(group)?;
        let (tx, rx) = mpsc::channel(1024);
        let mut watchers = self.watchers.lock();
        let list = watchers.entry(group.to_string()).or_default();
        // Watchers whose stream ended go here too, not only when their group is checked.
        list.retain(|w| !w.tx.is_closed());
        list.push(Watcher {
            client_id: client_id.to_string(),
            tx,
        });
        tracing::debug!(group, client_id, "producer watching for transaction checks");
        Ok(rx)
    }
}
