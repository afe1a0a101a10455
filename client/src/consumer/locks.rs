//! Queue locks of ordered consumption, as a member asks for them: take or renew, give up.
//! The broker decides (and replicates) who holds a queue; this side only trusts a lock until
//! half its lease after the request was *sent*, so it stops before the broker could hand the
//! queue to anyone else, whatever the delays on the way.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::future::join_all;
use sluice_proto::v1::{LockQueuesRequest, QueueRef, UnlockQueuesRequest};
use tokio::time::Instant;

use super::member::Member;
use crate::error::Error;
use crate::route::MessageQueue;
use crate::rpc;

/// What one round of lock requests got.
#[derive(Debug, Default)]
pub(crate) struct LockRound {
    /// Held: when the request was sent, and until when this side may trust the lock.
    pub(crate) held: Vec<(MessageQueue, Instant, Instant)>,
    /// Another consumer holds them.
    pub(crate) refused: Vec<MessageQueue>,
    /// No answer (no master, a network error): neither won nor lost.
    pub(crate) unknown: Vec<MessageQueue>,
    /// The broker's lease, from any answer.
    pub(crate) lease: Option<Duration>,
    /// Committed offsets of held queues, as the broker read them after deciding the lock.
    pub(crate) committed: HashMap<MessageQueue, u64>,
}

fn wire(q: &MessageQueue) -> QueueRef {
    QueueRef {
        topic: q.topic.clone(),
        queue_id: q.queue_id,
    }
}

impl Member {
    /// Queues by the address of their broker group's master (from the cached routes); those
    /// without a known master apart.
    fn by_master(
        &self,
        queues: Vec<MessageQueue>,
    ) -> (BTreeMap<String, Vec<MessageQueue>>, Vec<MessageQueue>) {
        let mut by_addr: BTreeMap<String, Vec<MessageQueue>> = BTreeMap::new();
        let mut orphans = Vec::new();
        for q in queues {
            let addr = self
                .core
                .routes
                .cached(&q.topic)
                .and_then(|r| r.master_address(&q.broker_name).map(str::to_string));
            match addr {
                Some(a) => by_addr.entry(a).or_default().push(q),
                None => orphans.push(q),
            }
        }
        (by_addr, orphans)
    }

    /// Takes or renews the locks of `queues`.
    pub(crate) async fn lock_queues(&self, queues: Vec<MessageQueue>) -> LockRound {
        let (by_addr, orphans) = self.by_master(queues);
        let mut round = LockRound {
            unknown: orphans,
            ..LockRound::default()
        };
        let t = self.timeout();
        let calls = by_addr.into_iter().map(|(addr, qs)| async move {
            let sent = Instant::now();
            let req = LockQueuesRequest {
                group: self.group().to_string(),
                client_id: self.settings.client_id.clone(),
                queues: qs.iter().map(wire).collect(),
            };
            let result = async {
                let mut client = self.core.broker(&addr)?;
                rpc::call(&addr, t, client.lock_queues(rpc::request(req, t))).await
            }
            .await;
            (addr, qs, sent, result)
        });
        for (addr, qs, sent, result) in join_all(calls).await {
            match result {
                Ok(resp) => {
                    let lease = Duration::from_millis(resp.lease_ms);
                    round.lease = Some(lease);
                    let until = sent + lease / 2;
                    for q in qs {
                        let at = resp
                            .committed
                            .iter()
                            .find(|o| o.topic == q.topic && o.queue_id == q.queue_id);
                        if let Some(o) = at {
                            round.committed.insert(q.clone(), o.offset);
                        }
                        if resp.locked.contains(&wire(&q)) {
                            round.held.push((q, sent, until));
                        } else {
                            round.refused.push(q);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(broker = %addr, error = %e, "locking queues failed");
                    if e.is_routing() {
                        self.refresh_routes_of(&qs).await;
                    }
                    round.unknown.extend(qs);
                }
            }
        }
        round
    }

    /// Gives up the locks of `queues` (after their final commit), so the next owner starts
    /// at once instead of after the lease. Returns those whose broker could not be told because
    /// it is changing masters (worth another try).
    pub(crate) async fn unlock_queues(&self, queues: Vec<MessageQueue>) -> Vec<MessageQueue> {
        let (by_addr, mut retry) = self.by_master(queues);
        // No master known: ask the nameserver again before the next try.
        self.refresh_routes_of(&retry).await;
        let t = self.timeout();
        let calls = by_addr.into_iter().map(|(addr, qs)| async move {
            let req = UnlockQueuesRequest {
                group: self.group().to_string(),
                client_id: self.settings.client_id.clone(),
                queues: qs.iter().map(wire).collect(),
            };
            let result: Result<_, Error> = async {
                let mut client = self.core.broker(&addr)?;
                rpc::call(&addr, t, client.unlock_queues(rpc::request(req, t))).await
            }
            .await;
            (addr, qs, result)
        });
        for (addr, qs, result) in join_all(calls).await {
            match result {
                Ok(_) => {}
                Err(e) if e.is_master_change() || e.is_routing() => {
                    self.refresh_routes_of(&qs).await;
                    retry.extend(qs);
                }
                Err(e) => {
                    tracing::warn!(broker = %addr, error = %e, "unlocking queues failed; they free up when the lease runs out");
                }
            }
        }
        retry
    }

    async fn refresh_routes_of(&self, queues: &[MessageQueue]) {
        let mut topics: Vec<&str> = queues.iter().map(|q| q.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        for t in topics {
            self.refresh_route(t).await;
        }
    }
}
