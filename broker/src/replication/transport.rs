//! The network edge of a replica: one sender task per peer, fed by a bounded channel, carrying
//! batches of encoded Raft messages. The Raft thread only ever `try_send`s: a full queue drops
//! the message and reports the peer unreachable (Raft retries).
//!
//! The first batches go over the `Replication.Raft` gRPC call, one at a time. Its ack names the
//! peer's data port; from then on batches are written to that TCP connection back to back
//! without waiting for acks (Raft's own messages acknowledge progress), which saves HTTP/2's
//! per-call cost on every hop of every write. A broken data connection is dropped with what was
//! in flight (Raft retransmits) and the next batch connects again, over gRPC if that fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_proto::auth::Signer;
use sluice_proto::frame::{self, PREFACE};
use sluice_proto::tls::net::{connect_split, Connector, ReadHalf, WriteHalf};
use sluice_proto::v1::replication_client::ReplicationClient;
use sluice_proto::v1::{DataPortAuthRequest, RaftBatch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
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
pub struct PeerTransport {
    queues: HashMap<u64, mpsc::Sender<Bytes>>,
    isolation: Isolation,
}

impl PeerTransport {
    /// Starts one sender task per peer (on the current tokio runtime). `peers` excludes this
    /// replica. With a `signer` (the cluster secret), every gRPC batch and every data link's
    /// authentication frame is signed.
    pub fn start(
        broker_name: &str,
        me: u64,
        peers: &BTreeMap<u64, String>,
        isolation: Isolation,
        signer: Option<Arc<Signer>>,
        tls: Option<sluice_proto::tls::net::Connector>,
    ) -> Result<Self, String> {
        let mut queues = HashMap::new();
        for (&id, addr) in peers {
            if id == me {
                continue;
            }
            let scheme = if tls.is_some() { "https" } else { "http" };
            let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
                .map_err(|e| format!("peer {id} address {addr:?}: {e}"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(RPC_TIMEOUT)
                .tcp_nodelay(true)
                .initial_stream_window_size(crate::server::STREAM_WINDOW)
                .initial_connection_window_size(crate::server::CONNECTION_WINDOW)
                .max_frame_size(crate::server::MAX_FRAME);
            let channel = match &tls {
                Some(c) => endpoint.connect_with_connector_lazy(c.clone()),
                None => endpoint.connect_lazy(),
            };
            let client = ReplicationClient::new(channel)
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
                data_address: None,
                data: None,
                signer: signer.clone(),
                data_tls: tls
                    .as_ref()
                    .map(|c| c.with_alpn(sluice_proto::tls::ALPN_DATA)),
            };
            tokio::spawn(sender.run(rx));
            queues.insert(id, tx);
        }
        Ok(PeerTransport { queues, isolation })
    }
}

impl Transport for PeerTransport {
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
    /// The peer's data port, once an ack named it.
    data_address: Option<String>,
    data: Option<DataLink>,
    signer: Option<Arc<Signer>>,
    /// TLS towards the peer's data port (when the group uses TLS).
    data_tls: Option<Connector>,
}

const RAFT_METHOD: &str = "/sluice.v1.Replication/Raft";

impl PeerSender {
    /// Sends what is queued until the transport is dropped.
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
            let result = match self.data_link().await {
                Some(link) => link.send(&batch).await,
                None => self.send_grpc(batch).await,
            };
            match result {
                Ok(()) => {
                    if failing {
                        tracing::info!(peer = self.peer, addr = %self.addr, "replica reachable again");
                    }
                    failing = false;
                }
                Err(error) => {
                    // The next batch connects again (or falls back to gRPC).
                    self.data = None;
                    // Raft copes with lost messages; log the first failure of a streak only.
                    if !failing {
                        tracing::warn!(peer = self.peer, addr = %self.addr, %error, "cannot reach replica");
                    }
                    failing = true;
                }
            }
        }
    }

    async fn send_grpc(&mut self, batch: RaftBatch) -> Result<(), String> {
        let mut req = tonic::Request::new(batch);
        if let Some(s) = &self.signer {
            let resource = sluice_proto::auth::resource(&self.addr, RAFT_METHOD);
            let header = s.sign(&resource, crate::store::now_ms());
            match header.parse() {
                Ok(v) => {
                    req.metadata_mut()
                        .insert(sluice_proto::auth::AUTH_HEADER, v);
                }
                Err(e) => return Err(format!("signature is not valid metadata: {e}")),
            }
        }
        let ack = self
            .client
            .raft(req)
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        // Every ack says where the peer's data port is now: a restarted peer may have a new one
        // (or none).
        let learned = (!ack.data_address.is_empty()).then_some(ack.data_address);
        if learned != self.data_address {
            tracing::debug!(peer = self.peer, data = ?learned, "replica's data port");
            self.data_address = learned;
            self.data = None;
        }
        Ok(())
    }

    /// The open data connection, connecting when the peer has a data port and there is none;
    /// `None` sends over gRPC.
    async fn data_link(&mut self) -> Option<&mut DataLink> {
        if self.data.as_ref().is_some_and(|d| d.is_broken()) {
            self.data = None;
        }
        if self.data.is_none() {
            let addr = self.data_address.as_deref()?;
            match DataLink::connect(addr, self.signer.as_deref(), self.data_tls.as_ref()).await {
                Ok(link) => self.data = Some(link),
                Err(e) => {
                    tracing::debug!(peer = self.peer, %addr, "data port unreachable, using gRPC: {e}");
                    // Learn it again from the next gRPC ack (the peer may have restarted).
                    self.data_address = None;
                    return None;
                }
            }
        }
        self.data.as_mut()
    }
}

/// A data-port connection to a peer. Batches are written back to back; a reader task drains
/// the acks and marks the link broken when the peer refuses a batch or hangs up.
struct DataLink {
    wr: WriteHalf,
    next_id: u64,
    out: BytesMut,
    broken: watch::Receiver<bool>,
    reader: tokio::task::AbortHandle,
}

impl Drop for DataLink {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl DataLink {
    async fn connect(
        addr: &str,
        signer: Option<&Signer>,
        tls: Option<&Connector>,
    ) -> std::io::Result<DataLink> {
        let (rd, mut wr) = tokio::time::timeout(CONNECT_TIMEOUT, connect_split(addr, tls))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        wr.write_all(&PREFACE).await?;
        let mut next_id = 1;
        if let Some(s) = signer {
            // Acked like a batch: a refusal breaks the link (see `drain_acks`).
            let auth = DataPortAuthRequest {
                authorization: s.sign(
                    &sluice_proto::auth::resource(addr, sluice_proto::auth::DATA_PORT_RESOURCE),
                    crate::store::now_ms(),
                ),
            };
            let mut out = BytesMut::new();
            frame::encode_request(frame::Kind::Auth, next_id, &auth, &mut out);
            next_id += 1;
            wr.write_all(&out).await?;
        }
        wr.flush().await?;
        let (broken_tx, broken) = watch::channel(false);
        let reader = tokio::spawn(async move {
            if let Err(e) = drain_acks(rd).await {
                tracing::debug!("raft data link ended: {e}");
            }
            let _ = broken_tx.send(true);
        });
        Ok(DataLink {
            wr,
            next_id,
            out: BytesMut::new(),
            broken,
            reader: reader.abort_handle(),
        })
    }

    fn is_broken(&self) -> bool {
        *self.broken.borrow()
    }

    async fn send(&mut self, batch: &RaftBatch) -> Result<(), String> {
        if self.is_broken() {
            return Err("data link closed".into());
        }
        let mut frame = frame::raft_batch_pieces(self.next_id, batch, &mut self.out);
        self.next_id += 1;
        // A peer that stopped reading (paused, wedged) must not hold this sender forever.
        let write = async {
            self.wr.write_all_buf(&mut frame).await?;
            self.wr.flush().await
        };
        match tokio::time::timeout(RPC_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("data port write: {e}")),
            Err(_) => Err("data port write timed out".into()),
        }
    }
}

/// Reads acks until the connection ends; an error answer (a refused batch) ends it too, so
/// the sender reconnects and, if that keeps failing, notices through its log.
async fn drain_acks(mut rd: ReadHalf) -> Result<(), String> {
    let mut input = BytesMut::with_capacity(4 << 10);
    loop {
        // An ack is a few bytes; anything huge is not one.
        while let Some((_, r)) = frame::take_response(&mut input, 1 << 20).map_err(|e| e.message)? {
            if let Err(e) = r {
                return Err(format!("batch refused: {e}"));
            }
        }
        if rd.read_buf(&mut input).await.map_err(|e| e.to_string())? == 0 {
            return Ok(());
        }
    }
}
