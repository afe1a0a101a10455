//! Nameserver access with failover: every call goes to the last nameserver that answered and moves
//! on to the next one when it cannot be reached.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::{
    ClusterInfo, GetClusterInfoRequest, GetTopicRouteRequest, ListTopicsRequest, TopicRoute,
};
use sluice_proto::ErrorCode;

use crate::error::{Error, Result};
use crate::pool::ChannelPool;
use crate::rpc;

pub(crate) struct NameServers {
    addrs: Vec<String>,
    preferred: AtomicUsize,
    pool: Arc<ChannelPool>,
    timeout: Duration,
}

/// Whether another nameserver might answer better: it is reachable, or, for a missing topic,
/// it may have received the broker's registration earlier (nameservers do not share state).
fn try_next(e: &Error) -> bool {
    match e {
        Error::Transport { .. } | Error::Timeout { .. } => true,
        Error::Api(a) => matches!(
            a.code,
            ErrorCode::Unavailable | ErrorCode::TopicNotFound | ErrorCode::Internal
        ),
        _ => false,
    }
}

impl NameServers {
    pub(crate) fn new(addrs: Vec<String>, pool: Arc<ChannelPool>, timeout: Duration) -> Self {
        NameServers {
            addrs,
            preferred: AtomicUsize::new(0),
            pool,
            timeout,
        }
    }

    pub(crate) fn addrs(&self) -> &[String] {
        &self.addrs
    }

    async fn failover<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(NameServerClient<crate::pool::Transport>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let n = self.addrs.len();
        let start = self.preferred.load(Ordering::Relaxed) % n.max(1);
        // An answer from a live nameserver says more than a connection error.
        let mut answer: Option<Error> = None;
        let mut failures: Vec<(String, Error)> = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let addr = &self.addrs[idx];
            let result = match self.pool.nameserver(addr) {
                Ok(client) => rpc::call(addr, self.timeout, op(client, self.timeout)).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if try_next(&e) => {
                    tracing::debug!(nameserver = %addr, error = %e, "nameserver call failed, trying the next one");
                    match e {
                        Error::Api(_) => answer = Some(e),
                        other => failures.push((addr.clone(), other)),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = answer {
            return Err(e);
        }
        if failures.len() <= 1 {
            return Err(failures.pop().map_or_else(
                || Error::Config("no nameserver address given".into()),
                |(_, e)| e,
            ));
        }
        let message = failures
            .iter()
            .map(|(addr, e)| match e {
                Error::Transport { message, .. } => format!("{addr}: {message}"),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("; ");
        Err(Error::Transport {
            addr: "any nameserver".into(),
            message,
        })
    }

    pub(crate) async fn topic_route(&self, topic: &str) -> Result<TopicRoute> {
        self.failover(|mut c, t| {
            let req = rpc::request(
                GetTopicRouteRequest {
                    topic: topic.to_string(),
                },
                t,
            );
            async move { c.get_topic_route(req).await }
        })
        .await
    }

    /// The route as each nameserver sees it (admin waits until all of them know a new topic).
    pub(crate) async fn topic_route_from(&self, addr: &str, topic: &str) -> Result<TopicRoute> {
        let mut c = self.pool.nameserver(addr)?;
        let req = rpc::request(
            GetTopicRouteRequest {
                topic: topic.to_string(),
            },
            self.timeout,
        );
        rpc::call(addr, self.timeout, c.get_topic_route(req)).await
    }

    pub(crate) async fn list_topics(&self) -> Result<Vec<String>> {
        let resp = self
            .failover(|mut c, t| {
                let req = rpc::request(ListTopicsRequest {}, t);
                async move { c.list_topics(req).await }
            })
            .await?;
        Ok(resp.topics)
    }

    pub(crate) async fn cluster_info(&self) -> Result<ClusterInfo> {
        self.failover(|mut c, t| {
            let req = rpc::request(GetClusterInfoRequest {}, t);
            async move { c.get_cluster_info(req).await }
        })
        .await
    }
}
