//! The retention floor of transactions: every replica keeps retention and Raft compaction
//! off the oldest unresolved half message.

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::ApiError;
use tokio::sync::watch;

use super::Transactions;
use crate::messaging::WritePath;

impl Transactions {
    /// Every replica: keeps retention and compaction off the oldest unresolved half message.
    pub async fn run_floor(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let floor = self.floor().unwrap_or_else(|e| {
                // Kept as it was: retention holds what it held (everything, before the first).
                tracing::error!(error = %e, "cannot compute the transactions' retention floor");
                self.store.transaction_floor()
            });
            self.store.set_transaction_floor(floor);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// The commit-log offset of the earliest unresolved half message (`u64::MAX`: none).
    fn floor(&self) -> Result<u64, ApiError> {
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
                    if let Some(a) = chunk
                        .into_iter()
                        .find_map(|l| self.store.entry_results(l).ok())
                    {
                        return Ok(a.first().map_or(u64::MAX, |a| a.commit_log_offset));
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
