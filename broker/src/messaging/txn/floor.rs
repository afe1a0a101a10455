//! The retention floor of transactions: every replica keeps retention and Raft compaction
//! off the oldest unresolved half message.

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::ApiError;
use tokio::sync::watch;

use super::Transactions;
use crate::messaging::WritePath;
use crate::store::StoreError;

impl Transactions {
    /// Every replica: keeps retention and compaction off the oldest unresolved half message.
    pub async fn run_floor(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let floor = self.floor().unwrap_or_else(|e| {
                // Kept as it was: retention holds what it held (everything, before the first).
                // A replica installing a snapshot meets this once, between its log and state.
                tracing::warn!(error = %e, "cannot compute the transactions' retention floor; the previous one holds");
                self.store.transaction_floor()
            });
            self.store.set_transaction_floor(floor);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// The commit-log offset of the earliest unresolved half message, or of the first write
    /// whose state is not applied yet if that is lower: a half message written but not yet
    /// among the open transactions is above it.
    fn floor(&self) -> Result<u64, ApiError> {
        // Read before the open transactions: everything they do not hold yet is at or above it.
        let unapplied = self.unapplied_from()?;
        Ok(self.open_floor()?.min(unapplied))
    }

    /// Where the writes whose state is not applied yet start in the commit log.
    fn unapplied_from(&self) -> Result<u64, ApiError> {
        match &self.write {
            WritePath::Standalone { log, .. } => Ok(log.oldest_under_way(&self.store)),
            // Entries are applied in log order, and the log is the commit log.
            WritePath::Replicated { .. } => {
                Ok(self.store.entry_end_offset(self.write.applied_index())?)
            }
        }
    }

    /// The commit-log offset of the earliest unresolved half message (`u64::MAX`: none).
    fn open_floor(&self) -> Result<u64, ApiError> {
        let open = &self.write.state().tx_open;
        match &self.write {
            WritePath::Standalone { .. } => Ok(open
                .first_locators(0, 1)
                .first()
                .copied()
                .unwrap_or(u64::MAX)),
            // Locators are entry indexes: the first one in this replica's log (those before
            // its snapshot are not here, and have nothing to keep).
            WritePath::Replicated { .. } => {
                let mut from = 0;
                loop {
                    let chunk = open.first_locators(from, 256);
                    let Some(&last) = chunk.last() else {
                        return Ok(u64::MAX);
                    };
                    for l in chunk {
                        match self.store.entry_results(l) {
                            Ok(a) => {
                                if let Some(first) = a.first() {
                                    return Ok(first.commit_log_offset);
                                }
                            }
                            Err(StoreError::OffsetOutOfRange { offset, min, .. })
                                if offset < min => {}
                            // Not known: the previous floor holds rather than pass it.
                            Err(e) => return Err(e.into()),
                        }
                    }
                    match last.checked_add(1) {
                        Some(next) => from = next,
                        None => return Ok(u64::MAX),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messaging::txn::batch::tests::{msg, setup};
    use crate::messaging::txn::TxSend;
    use crate::state::transactions::COMMITTED;

    fn tx(id: &str) -> TxSend {
        TxSend {
            id: id.into(),
            group: "orders-service".into(),
        }
    }

    #[tokio::test]
    async fn a_half_message_written_before_its_state_is_applied_is_above_the_floor() {
        let s = setup().await;
        let log = s.write.log_writes().cloned().unwrap();
        // Nothing open and nothing under way: up to what is written, not everywhere.
        assert_eq!(s.txs.floor().unwrap(), s.store.write_position());

        // A half message in the log whose state is not applied yet (its write under way).
        let ticket = log.begin(&s.store);
        let batch = Transactions::half_batch("orders", 0, &tx("tx-a"), vec![msg("a1")]);
        let encoded = s.store.encode(&batch).unwrap();
        let written = s.store.append_encoded(encoded).await.unwrap();
        let a_at = written.entries[0].commit_log_offset;
        // A later transaction, applied.
        let batch = Transactions::half_batch("orders", 0, &tx("tx-b"), vec![msg("b1")]);
        let b_at = s.write.append_announced(&batch, 5).await.unwrap()[0].commit_log_offset;
        assert!(!s.st.tx_open.contains("tx-a") && s.st.tx_open.contains("tx-b"));
        assert!(a_at < b_at);
        assert_eq!(s.txs.floor().unwrap(), a_at);

        // Its caller gone without applying its state (a write that failed and may be in the
        // log): the rescan point stays below it for a restart, the floor no longer does.
        drop(ticket);
        assert_eq!(s.txs.floor().unwrap(), b_at);
        let probe = log.begin(&s.store);
        assert_eq!(log.point(&probe, &s.store, 10_000), Some(a_at));
        log.abandon(probe);
        s.txs.end("tx-b", COMMITTED, 6).await.unwrap();
        assert!(s.st.tx_open.is_empty());
        assert_eq!(s.txs.floor().unwrap(), s.store.write_position());
    }
}
