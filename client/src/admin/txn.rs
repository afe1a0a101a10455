//! Transactions for operators: list open, parked and recently resolved transactions of every
//! broker group, and resolve one by hand.

use serde::Serialize;
use sluice_proto::v1::{
    EndTransactionRequest, ListTransactionsRequest, TransactionEndSource, TransactionResolution,
};
use sluice_proto::{ApiError, ErrorCode};

use super::Admin;
use crate::error::{Error, Result};
use crate::rpc;
use crate::time::format_time;

/// A transaction on one broker group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransactionRow {
    pub broker_name: String,
    pub transaction_id: String,
    pub producer_group: String,
    pub topics: Vec<String>,
    pub messages: u32,
    pub bytes: u64,
    /// open, parked, committed, rolled back or expired (rolled back by the broker).
    pub state: String,
    pub created_at: String,
    pub created_ms: i64,
    pub age_ms: i64,
    pub checks: u32,
    pub last_check_ms: i64,
    pub resolved_ms: i64,
}

fn state_name(resolution: i32, parked: bool, expired: bool) -> &'static str {
    match TransactionResolution::try_from(resolution) {
        Ok(TransactionResolution::Commit) => "committed",
        Ok(TransactionResolution::Rollback) if expired => "expired",
        Ok(TransactionResolution::Rollback) => "rolled back",
        _ if parked => "parked",
        _ => "open",
    }
}

impl Admin {
    /// The open and parked transactions of each master, and its newest resolved ones (at most
    /// 1,000 each), oldest first.
    pub async fn transactions(&self) -> Result<Vec<TransactionRow>> {
        self.list_transactions(ListTransactionsRequest {
            include_resolved: true,
            limit: 0,
            transaction_id: String::new(),
        })
        .await
    }

    /// The open and parked transactions of each master, oldest first.
    pub async fn open_transactions(&self) -> Result<Vec<TransactionRow>> {
        self.list_transactions(ListTransactionsRequest::default())
            .await
    }

    /// The open and parked transactions of each master and its newest `limit` resolved ones,
    /// oldest first.
    pub async fn transactions_with_resolved(&self, limit: u32) -> Result<Vec<TransactionRow>> {
        self.list_transactions(ListTransactionsRequest {
            include_resolved: true,
            limit: limit.max(1),
            transaction_id: String::new(),
        })
        .await
    }

    async fn list_transactions(&self, req: ListTransactionsRequest) -> Result<Vec<TransactionRow>> {
        let t = self.core.timeout();
        let now = crate::time::now_ms();
        let mut rows = Vec::new();
        for b in self.masters(None).await? {
            let mut client = self.core.broker(&b.address)?;
            let list = rpc::call(
                &b.address,
                t,
                client.list_transactions(rpc::request(req.clone(), t)),
            )
            .await?;
            rows.extend(list.transactions.into_iter().map(|x| TransactionRow {
                broker_name: b.broker_name.clone(),
                state: state_name(x.resolution, x.parked, x.expired).to_string(),
                created_at: format_time(x.created_ms),
                age_ms: now.saturating_sub(x.created_ms),
                transaction_id: x.transaction_id,
                producer_group: x.producer_group,
                topics: x.topics,
                messages: x.messages,
                bytes: x.bytes,
                created_ms: x.created_ms,
                checks: x.checks,
                last_check_ms: x.last_check_ms,
                resolved_ms: x.resolved_ms,
            }));
        }
        rows.sort_by_key(|r| r.created_ms);
        Ok(rows)
    }

    /// Commits (`commit`) or rolls back a transaction by hand, on the broker group holding it.
    /// Returns that group's name.
    pub async fn end_transaction(&self, id: &str, commit: bool) -> Result<String> {
        let t = self.core.timeout();
        let resolution = if commit {
            TransactionResolution::Commit
        } else {
            TransactionResolution::Rollback
        };
        for b in self.masters(None).await? {
            let mut client = self.core.broker(&b.address)?;
            let find = ListTransactionsRequest {
                transaction_id: id.to_string(),
                ..ListTransactionsRequest::default()
            };
            let listed = rpc::call(
                &b.address,
                t,
                client.list_transactions(rpc::request(find, t)),
            )
            .await?;
            if !listed.transactions.iter().any(|x| x.transaction_id == id) {
                continue;
            }
            rpc::call(
                &b.address,
                t,
                client.end_transaction(rpc::request(
                    EndTransactionRequest {
                        transaction_id: id.to_string(),
                        resolution: resolution as i32,
                        source: TransactionEndSource::Operator as i32,
                    },
                    t,
                )),
            )
            .await?;
            return Ok(b.broker_name);
        }
        Err(Error::Api(ApiError::new(
            ErrorCode::TransactionNotFound,
            format!("no broker group holds transaction {id}"),
        )))
    }
}
