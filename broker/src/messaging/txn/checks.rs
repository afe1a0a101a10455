//! Check-back, the master's leader-only task: a transaction left open past `check_after` is
//! sent to a live producer of its group (one watcher, round robin), then again on a doubling
//! backoff up to `max_check_interval`; each round's checks are one state entry, so a new
//! master resumes from the checks the log records, never from memory. A check no producer of
//! the group could take (none watching this broker, say just after a failover) is not counted:
//! it is tried again a second later. After `max_checks` a transaction is parked (kept, listed,
//! resolved by an operator). At most `check_rate` checks go out a second: every answer is an
//! end in the log, and a storm of abandoned transactions must leave room for produce. The task
//! also forgets transactions resolved longer ago than `keep_resolved`, and the oldest beyond
//! `max_resolved`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::v1::{TransactionCheck, TxRecord};
use sluice_proto::ApiError;
use tokio::sync::watch;

use super::Transactions;
use crate::state::transactions::{self as table, OPEN, ROLLED_BACK};
use crate::store::StoredRecord;

/// Most transactions checked in one round (one state entry).
const MAX_PER_ROUND: usize = 2_000;
/// How often the task looks for due checks.
const ROUND: Duration = Duration::from_millis(500);
/// A check no producer could take is tried again after this long.
const UNDELIVERED_RETRY_MS: i64 = 1_000;
/// The open transactions are read whole at most this often (a new one is first due
/// `check_after` after it opened, so seeing it a little late delays no check much); between
/// reads, the rounds work through the due list of the last read, re-reading each transaction.
const RESCAN_MS: i64 = 3_000;

/// The check task's view between full reads (this run only; the log has the checks).
#[derive(Default)]
pub(super) struct Due {
    /// (due time, id), earliest first, as of the last full read.
    list: VecDeque<(i64, String)>,
    read_at: Option<i64>,
    /// Checks no producer could take: when to try again.
    undelivered: HashMap<String, i64>,
    /// Checks that may go out now (refilled at `check_rate` a second, up to one second's).
    budget: f64,
    refilled_at: Option<i64>,
}

impl Due {
    /// Adds what `rate` a second earned since the last round; the checks this round may send.
    fn refill(&mut self, now: i64, rate: u32) -> usize {
        let rate = f64::from(rate.max(1));
        let elapsed = self
            .refilled_at
            .map_or(1.0, |t| (now - t).max(0) as f64 / 1000.0);
        self.refilled_at = Some(now);
        self.budget = (self.budget + rate * elapsed).min(rate);
        (self.budget as usize).min(MAX_PER_ROUND)
    }

    fn spend(&mut self, n: usize) {
        self.budget = (self.budget - n as f64).max(0.0);
    }
}

impl Transactions {
    /// When `r` is next due for a check (ms since the epoch).
    pub(crate) fn due_at(&self, r: &TxRecord) -> i64 {
        self.due(r.created_ms, r.checks, r.last_check_ms)
    }

    fn due(&self, created_ms: i64, checks: u32, last_check_ms: i64) -> i64 {
        let s = &self.settings;
        let after = s.check_after.as_millis() as i64;
        if checks == 0 {
            return created_ms.saturating_add(after);
        }
        let backoff = after
            .saturating_mul(1i64 << checks.min(20))
            .min(s.max_check_interval.as_millis() as i64);
        last_check_ms.saturating_add(backoff)
    }

    /// The master's check-back loop, until `stop`.
    pub async fn run_checks(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut forget_due = 0i64;
        let mut due = Due::default();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(ROUND) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            self.round(crate::store::now_ms(), &mut due, &mut forget_due)
                .await;
        }
    }

    /// One round of the loop: the checks due, and forgetting resolved transactions once a
    /// minute, or at once past the count limit (ends come at thousands a second, and each one
    /// kept is memory on every replica).
    pub(super) async fn round(self: &Arc<Self>, now: i64, due: &mut Due, forget_due: &mut i64) {
        if let Err(e) = self.check_round(now, due).await {
            tracing::warn!(error = %e, "transaction check round failed; retried");
        }
        let max = self.settings.max_resolved;
        let over = max > 0 && self.write.state().tx_ended.len() > max;
        if now >= *forget_due || over {
            *forget_due = now + 60_000;
            let keep = self.settings.keep_resolved.as_millis() as i64;
            if let Err(e) = self.forget(now.saturating_sub(keep), now).await {
                tracing::warn!(error = %e, "forgetting resolved transactions failed");
            }
        }
    }

    async fn forget(&self, before: i64, now: i64) -> Result<(), ApiError> {
        let keep = self.settings.max_resolved;
        if self.write.state().tx_ended.would_forget(before, keep) {
            self.write
                .apply(table::forget_op(before, keep), now)
                .await?;
        }
        Ok(())
    }

    async fn check_round(self: &Arc<Self>, now: i64, view: &mut Due) -> Result<(), ApiError> {
        let rescan = (self.settings.check_after.as_millis() as i64).clamp(100, RESCAN_MS);
        if view.list.is_empty() || view.read_at.is_none_or(|t| now - t >= rescan) {
            let timeout = i64::try_from(self.settings.timeout.as_millis()).unwrap_or(i64::MAX);
            let (expired, open): (Vec<_>, Vec<_>) = self
                .write
                .state()
                .tx_open
                .all()
                .into_iter()
                .filter(|(_, t)| !t.parked)
                .partition(|(_, t)| now.saturating_sub(t.created_ms) > timeout);
            let mut all: Vec<(i64, String)> = open
                .into_iter()
                .map(|(id, t)| (self.due(t.created_ms, t.checks, t.last_check_ms), id))
                .collect();
            all.sort();
            view.list = all.into();
            view.read_at = Some(now);
            self.expire(expired.into_iter().map(|(id, _)| id), now)
                .await;
        }
        view.undelivered.retain(|_, t| *t > now);
        let allowed = view.refill(now, self.settings.check_rate);
        let mut due = Vec::new();
        let mut later = Vec::new();
        while due.len() < allowed {
            match view.list.front() {
                Some((at, _)) if *at <= now => {}
                _ => break,
            }
            let Some((_, id)) = view.list.pop_front() else {
                break;
            };
            if view.undelivered.contains_key(&id) {
                later.push(id);
                continue;
            }
            // Read again: it may have been resolved, checked or parked since the list was made.
            match self.write.state().transaction(&id)? {
                Some(r) if r.resolution == OPEN && !r.parked && self.due_at(&r) <= now => {
                    due.push((id, r))
                }
                _ => {}
            }
        }
        // Waiting for a producer to watch: kept for a later round.
        for id in later {
            view.list.push_back((now, id));
        }
        if due.is_empty() {
            return Ok(());
        }
        let mut checked = Vec::with_capacity(due.len());
        for (id, r) in due {
            let messages = match self.halves(&r) {
                Ok(h) => h.into_iter().map(StoredRecord::into_wire).collect(),
                Err(e) => {
                    tracing::warn!(tx = %id, error = %e, "cannot read a transaction's half messages for its check");
                    Vec::new()
                }
            };
            let check = TransactionCheck {
                transaction_id: id.clone(),
                producer_group: r.producer_group.clone(),
                check: r.checks.saturating_add(1),
                created_ms: r.created_ms,
                messages,
                // Filled in by the stream that carries it.
                data_address: String::new(),
            };
            if self.send_check(check) {
                checked.push(id);
            } else {
                tracing::debug!(tx = %id, group = %r.producer_group, "no producer of the group is watching; tried again shortly");
                view.undelivered
                    .insert(id.clone(), now + UNDELIVERED_RETRY_MS);
                view.list.push_back((now + UNDELIVERED_RETRY_MS, id));
            }
        }
        view.spend(checked.len());
        if checked.is_empty() {
            return Ok(());
        }
        let n = checked.len();
        self.write
            .apply(
                table::checked_op(checked, now, self.settings.max_checks),
                now,
            )
            .await?;
        tracing::debug!(checked = n, "transaction check round");
        Ok(())
    }

    /// Rolls back transactions open longer than `transaction_timeout` (not parked ones: those
    /// wait for an operator), at most a round's worth at a time, through the same ends as a
    /// producer's (a commit racing one is decided by the log).
    async fn expire(self: &Arc<Self>, ids: impl Iterator<Item = String>, now: i64) {
        let ends = ids.take(MAX_PER_ROUND).map(|id| async move {
            match self.end(&id, ROLLED_BACK, now).await {
                Ok(_) => tracing::info!(tx = %id, "transaction expired: rolled back"),
                // Committed meanwhile, or the mastership moved: the next rescan looks again.
                Err(e) => tracing::debug!(tx = %id, error = %e, "expiring a transaction failed"),
            }
        });
        futures::future::join_all(ends).await;
    }

    /// Hands a check to one live watcher of its group (round robin); false when none.
    fn send_check(&self, check: TransactionCheck) -> bool {
        let mut watchers = self.watchers.lock();
        let Some(list) = watchers.get_mut(&check.producer_group) else {
            return false;
        };
        list.retain(|w| !w.tx.is_closed());
        let n = list.len();
        for i in 0..n {
            let k = self.rr.fetch_add(1, Ordering::Relaxed).wrapping_add(i) % n;
            let Some(w) = list.get(k) else { continue };
            match w.tx.try_send(check.clone()) {
                Ok(()) => return true,
                Err(e) => {
                    tracing::debug!(client = %w.client_id, error = %e, "a watcher cannot take a check");
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messaging::txn::TxSettings;

    #[tokio::test]
    async fn past_the_count_limit_resolved_transactions_go_at_the_next_round() {
        let s = crate::messaging::txn::batch::tests::setup().await;
        let settings = TxSettings {
            max_resolved: 5,
            ..TxSettings::default()
        };
        let txs = Transactions::new(s.write.clone(), s.store.clone(), settings);
        let (mut due, mut forget_due) = (Due::default(), 0);
        txs.round(1_000, &mut due, &mut forget_due).await;
        assert_eq!(forget_due, 61_000);
        // Rollbacks of transactions never sent are remembered, each in a chunk of its own.
        for i in 0..20 {
            let at = 1_000 + 20 * i;
            txs.end(&format!("t{i}"), ROLLED_BACK, at).await.unwrap();
        }
        assert_eq!(s.st.tx_ended.len(), 20);
        // Within the minute, but past the limit.
        txs.round(1_500, &mut due, &mut forget_due).await;
        assert_eq!(s.st.tx_ended.len(), 5);
        let newest = table::get(s.st.meta().as_ref(), &s.st.tx_ended, "t19").unwrap();
        assert!(newest.is_some(), "the newest are kept");
        // Under it, nothing more until the minute is over.
        txs.round(2_000, &mut due, &mut forget_due).await;
        assert_eq!(s.st.tx_ended.len(), 5);
    }

    #[test]
    fn the_check_budget_refills_at_the_rate_and_holds_at_most_a_second() {
        let mut d = Due::default();
        // First round: one second's worth.
        assert_eq!(d.refill(10_000, 100), 100);
        d.spend(100);
        // Half a second later: fifty more.
        assert_eq!(d.refill(10_500, 100), 50);
        d.spend(20);
        // Unspent checks carry over, but never past one second's.
        assert_eq!(d.refill(10_600, 100), 40);
        assert_eq!(d.refill(20_000, 100), 100);
        // A clock going back earns nothing.
        d.spend(100);
        assert_eq!(d.refill(15_000, 100), 0);
        // High rates stay bounded by one round's entry.
        assert_eq!(d.refill(99_000, 1_000_000), MAX_PER_ROUND);
    }
}
