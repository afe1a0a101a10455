//! Transactions over `sluice.v1`: wire <-> `messaging::txn`.

use sluice_proto::v1::{
    EndTransactionRequest, EndTransactionResponse, ListTransactionsRequest,
    ListTransactionsResponse, SendResult, TransactionResolution,
};
use sluice_proto::ApiError;

use super::convert::now_ms;
use super::BrokerService;
use crate::state::transactions::{COMMITTED, ROLLED_BACK};

impl BrokerService {
    pub(crate) async fn do_end_transaction(
        &self,
        req: EndTransactionRequest,
        who: &crate::access::Principal,
    ) -> Result<EndTransactionResponse, ApiError> {
        // Ending a transaction needs `pub` on each of its topics (an unknown one goes on to
        // TRANSACTION_NOT_FOUND). With access control off every check passes: the record is
        // not read for it.
        if self.access.enabled() {
            let record = self
                .write
                .state()
                .transaction(&req.transaction_id)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            match &record {
                Some(r) => self.access.check_all(
                    who,
                    sluice_proto::acl::Action::Pub,
                    r.halves
                        .iter()
                        .map(|h| sluice_proto::acl::Resource::Topic(&h.topic)),
                )?,
                None => self.access.check_signed_in(who)?,
            }
        }
        let resolution = match TransactionResolution::try_from(req.resolution) {
            Ok(TransactionResolution::Commit) => COMMITTED,
            Ok(TransactionResolution::Rollback) => ROLLED_BACK,
            // A checker that cannot tell yet: the next check asks again.
            Ok(TransactionResolution::Unknown) => {
                return Ok(EndTransactionResponse {
                    resolution: TransactionResolution::Unknown as i32,
                    results: Vec::new(),
                })
            }
            _ => {
                return Err(ApiError::invalid(
                    "resolution must be COMMIT, ROLLBACK or UNKNOWN",
                ))
            }
        };
        let ended = self
            .producing
            .transactions()
            .end(&req.transaction_id, resolution, now_ms())
            .await?;
        tracing::debug!(tx = %req.transaction_id, resolution, source = req.source, "transaction ended");
        Ok(EndTransactionResponse {
            resolution: ended.resolution,
            results: ended
                .committed
                .into_iter()
                .map(|(message_id, a)| SendResult {
                    message_id,
                    queue_offset: a.queue_offset,
                    commit_log_offset: a.commit_log_offset,
                    ..Default::default()
                })
                .collect(),
        })
    }

    pub(crate) fn do_list_transactions(
        &self,
        req: &ListTransactionsRequest,
    ) -> Result<ListTransactionsResponse, ApiError> {
        Ok(ListTransactionsResponse {
            transactions: self.producing.transactions().list(req)?,
        })
    }
}
