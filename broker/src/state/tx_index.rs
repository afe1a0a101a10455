//! The open transactions in memory, kept by the apply calls that change the `transactions`
//! table (and rebuilt from it at open and after a snapshot): what the per-group limit, the
//! master's check task and the retention floor need, without decoding the table. With 100,000
//! transactions left open, scanning it every few seconds on every replica cost more than half
//! of a replica group's produce throughput.

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;
use sluice_proto::v1::TxRecord;

use super::transactions::list_open;
use crate::meta::{MetaError, MetaStore};

/// What the index keeps of one open transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenTx {
    pub group: String,
    pub created_ms: i64,
    pub checks: u32,
    pub last_check_ms: i64,
    pub parked: bool,
    /// Its earliest half message's locator (entry index in a replica group, commit-log offset
    /// standalone): both grow with the log, so the smallest is the floor.
    pub first_locator: u64,
}

impl OpenTx {
    pub fn of(r: &TxRecord) -> OpenTx {
        OpenTx {
            group: r.producer_group.clone(),
            created_ms: r.created_ms,
            checks: r.checks,
            last_check_ms: r.last_check_ms,
            parked: r.parked,
            first_locator: r.halves.iter().map(|h| h.locator).min().unwrap_or(u64::MAX),
        }
    }
}

/// Changes of one apply call, in order: a transaction's new summary, or `None` once resolved.
pub(super) type Changes = Vec<(String, Option<OpenTx>)>;

#[derive(Default)]
struct Inner {
    txs: HashMap<String, OpenTx>,
    per_group: HashMap<String, u64>,
    /// First locator -> how many open transactions start there.
    locators: BTreeMap<u64, u32>,
    /// How many of `txs` are parked (the metrics read it at every scrape).
    parked: u64,
}

impl Inner {
    fn remove(&mut self, id: &str) {
        let Some(old) = self.txs.remove(id) else {
            return;
        };
        if old.parked {
            self.parked = self.parked.saturating_sub(1);
        }
        if let Some(c) = self.per_group.get_mut(&old.group) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.per_group.remove(&old.group);
            }
        }
        if let Some(c) = self.locators.get_mut(&old.first_locator) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.locators.remove(&old.first_locator);
            }
        }
    }

    fn insert(&mut self, id: String, tx: OpenTx) {
        self.remove(&id);
        match self.per_group.get_mut(&tx.group) {
            Some(c) => *c += 1,
            None => {
                self.per_group.insert(tx.group.clone(), 1);
            }
        }
        *self.locators.entry(tx.first_locator).or_insert(0) += 1;
        if tx.parked {
            self.parked += 1;
        }
        self.txs.insert(id, tx);
    }
}

/// The open transactions, in memory.
#[derive(Default)]
pub struct OpenIndex(Mutex<Inner>);

impl OpenIndex {
    pub fn load(meta: &dyn MetaStore) -> Result<OpenIndex, MetaError> {
        let c = OpenIndex::default();
        c.reload(meta)?;
        Ok(c)
    }

    pub fn reload(&self, meta: &dyn MetaStore) -> Result<(), MetaError> {
        let mut inner = Inner::default();
        for (id, r) in list_open(meta)? {
            inner.insert(id, OpenTx::of(&r));
        }
        *self.0.lock() = inner;
        Ok(())
    }

    /// Open transactions of `group`.
    pub fn get(&self, group: &str) -> u64 {
        self.0.lock().per_group.get(group).copied().unwrap_or(0)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.0.lock().txs.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.0.lock().txs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Open transactions, and how many of them are parked.
    pub fn counts(&self) -> (u64, u64) {
        let inner = self.0.lock();
        (inner.txs.len() as u64, inner.parked)
    }

    /// Every open transaction's summary (for the check task's due list).
    pub fn all(&self) -> Vec<(String, OpenTx)> {
        let inner = self.0.lock();
        inner
            .txs
            .iter()
            .map(|(id, t)| (id.clone(), t.clone()))
            .collect()
    }

    /// The open transactions' first locators from `from` on, smallest first, at most `limit`.
    pub fn first_locators(&self, from: u64, limit: usize) -> Vec<u64> {
        self.0
            .lock()
            .locators
            .range(from..)
            .map(|(l, _)| *l)
            .take(limit)
            .collect()
    }

    pub(super) fn apply(&self, changes: Changes) {
        if changes.is_empty() {
            return;
        }
        let mut inner = self.0.lock();
        for (id, change) in changes {
            match change {
                Some(tx) => inner.insert(id, tx),
                None => inner.remove(&id),
            }
        }
    }
}
