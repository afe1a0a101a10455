//! The network edge of a replica: one sender task per peer, fed by a bounded channel, carrying
//! batches of encoded Raft messages over the `Replication.Raft` RPC. The Raft thread only ever
//! `try_send`s: a full queue drops the message and reports the peer unreachable (Raft retries).
//! Connections are lazy and re-established by the channel on the next call after a failure.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use sluice_proto::v1::replication_client::ReplicationClient;
use sluice_proto::v1::RaftBatch;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use super::faults::Isolation;
use super::io::{SendError, Transport};

/// Messages queued per peer before new ones are dropped.
pub const PEER_QUEUE: usize = 4096;
/// Bytes of messages put in one RPC (a batch holds at least one message).
const MAX_BATCH_BYTES: usize = 8 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const RPC_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest RPC a replica accepts or sends (appends are capped at `max_size_per_msg`, 1 MiB by
/// default, and a batch at `MAX_BATCH_BYTES` plus one message).
pub const MAX_RPC_BYTES: usize = 64 << 20;

/// Queues Raft messages for the per-peer sender tasks.
pub struct GrpcTransport {
    queues: HashMap<u64, mpsc::Sender<Bytes>>,
    isolation: Isolation,
}

impl GrpcTransport {
    /// Starts one sender task per peer (on the current tokio runtime). `peers` excludes this
    /// replica.
    pub fn start(
        broker_name: &str,
        me: u64,
        peers: &BTreeMap<u64, String>,
        isolation: Isolation,
    ) -> Result<Self, String> {
        let mut queues = HashMap::new();
        for (&id, addr) in peers {
            if id == me {
                continue;
            }
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| format!("peer {id} address {addr:?}: {e}"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(RPC_TIMEOUT)
                .tcp_nodelay(true)
                .initial_stream_window_size(crate::server::STREAM_WINDOW)
                .initial_connection_window_size(crate::server::CONNECTION_WINDOW);
            let client = ReplicationClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(MAX_RPC_BYTES)
                .max_encoding_message_size(MAX_RPC_BYTES);
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let sender = PeerSender {
                broker_name: broker_name.to_string(),
                me,
                peer: id,
                addr: addr.clone(),
                client,
                isolation: isolation.clone(),
            };
            tokio::spawn(sender.run(rx));
            queues.insert(id, tx);
        }
        Ok(GrpcTransport { queues, isolation })
    }
}

impl Transport for GrpcTransport {
    fn send(&mut self, to: u64, msg: Bytes) -> Result<(), SendError> {
        if self.isolation.is_isolated(to) {
            // A partitioned network loses messages silently.
            return Ok(());
        }
        let q = self.queues.get(&to).ok_or(SendError::UnknownPeer(to))?;
        q.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::QueueFull(to),
            mpsc::error::TrySendError::Closed(_) => SendError::Unreachable(to),
        })
    }
}

struct PeerSender {
    broker_name: String,
    me: u64,
    peer: u64,
    addr: String,
    client: ReplicationClient<Channel>,
    isolation: Isolation,
}

impl PeerSender {
    /// Sends what is queued, one RPC at a time, until the transport is dropped.
    async fn run(mut self, mut rx: mpsc::Receiver<Bytes>) {
        let mut failing = false;
        while let Some(first) = rx.recv().await {
            let mut size = first.len();
            let mut messages = vec![first];
            while size < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(m) => {
                        size += m.len();
                        messages.push(m);
                    }
                    Err(_) => break,
                }
            }
            // Messages queued before an isolation started are lost with it.
            if self.isolation.is_isolated(self.peer) {
                continue;
            }
            let batch = RaftBatch {
                broker_name: self.broker_name.clone(),
                from: self.me,
                to: self.peer,
                messages,
            };
            match self.client.raft(batch).await {
                Ok(_) => {
                    if failing {
                        tracing::info!(peer = self.peer, addr = %self.addr, "replica reachable again");
                    }
                    failing = false;
                }
                Err(status) => {
                    // Raft copes with lost messages; log the first failure of a streak only.
                    if !failing {
                        tracing::warn!(peer = self.peer, addr = %self.addr, error = %status.message(), "cannot reach replica");
                    }
                    failing = true;
                }
            }
        }
    }
}
