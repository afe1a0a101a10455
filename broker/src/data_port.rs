//! The data port: Send, and Raft traffic between replicas, over framed TCP
//! (`sluice_proto::frame`, docs/protocol.md).
//!
//! Same handler as the gRPC Send, minus HTTP/2: on this 2-core machine a gRPC unary round trip
//! costs ~250 us of the ~100 us a TCP round trip does. One task per connection reads frames,
//! runs their sends concurrently (answers go back as they finish, paired by request id) and
//! writes the answers; it reads no further while `MAX_IN_FLIGHT` sends or `MAX_PENDING_BYTES` of
//! requests are pending, which pushes back on the client through TCP.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use prost::Message as _;
use sluice_proto::frame::{self, Kind, RequestHeader, PREFACE, REQUEST_HEADER_LEN};
use sluice_proto::v1::{RaftBatch, SendRequest, SendResponse};
use sluice_proto::{ApiError, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::replication::transport::MAX_RPC_BYTES;
use crate::replication::ReplicationService;
use crate::service::BrokerService;

/// Sends one connection may have pending before the broker stops reading from it...
const MAX_IN_FLIGHT: usize = 1024;
/// ...and request bytes they may hold (one larger send is still taken when none is pending).
const MAX_PENDING_BYTES: usize = 64 << 20;
/// A connection that has not sent its preface by then is dropped.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the data port served, for the broker status.
#[derive(Debug, Default)]
pub struct DataPortStats {
    pub connections: AtomicU64,
    pub sends: AtomicU64,
}

/// The sends a connection started and has not answered yet.
#[derive(Default)]
struct InFlight {
    sends: FuturesUnordered<Pending>,
    /// Request bytes they hold.
    bytes: usize,
}

impl InFlight {
    /// Room to start one more send of `len` request bytes.
    fn has_room(&self, len: usize) -> bool {
        self.sends.is_empty()
            || (self.sends.len() < MAX_IN_FLIGHT && self.bytes + len <= MAX_PENDING_BYTES)
    }

    fn finished(&mut self, h: &RequestHeader) {
        self.bytes = self.bytes.saturating_sub(h.body_len);
    }
}

type Pending =
    Pin<Box<dyn Future<Output = (RequestHeader, Result<SendResponse, ApiError>)> + Send>>;

/// Accepts data-port connections until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    service: Arc<BrokerService>,
    replication: Option<Arc<ReplicationService>>,
    max_body: usize,
    stats: Arc<DataPortStats>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((sock, peer)) => {
                let conn = Connection {
                    service: service.clone(),
                    replication: replication.clone(),
                    stats: stats.clone(),
                    max_body,
                    stop: stop.clone(),
                    peer,
                };
                tokio::spawn(conn.run(sock));
            }
            Err(e) => {
                // Out of file descriptors and the like: give the process a moment to free some
                // instead of spinning on the error.
                tracing::warn!("data port accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

struct Connection {
    service: Arc<BrokerService>,
    /// Takes Raft batches from the group's other replicas; `None` outside a replica group.
    replication: Option<Arc<ReplicationService>>,
    stats: Arc<DataPortStats>,
    max_body: usize,
    stop: watch::Receiver<bool>,
    peer: SocketAddr,
}

impl Connection {
    async fn run(self, sock: TcpStream) {
        let peer = self.peer;
        let stats = self.stats.clone();
        stats.connections.fetch_add(1, Ordering::Relaxed);
        match self.serve(sock).await {
            Ok(()) => tracing::debug!(%peer, "data port connection closed"),
            Err(e) => tracing::debug!(%peer, "data port connection ended: {e}"),
        }
        stats.connections.fetch_sub(1, Ordering::Relaxed);
    }

    async fn serve(mut self, mut sock: TcpStream) -> std::io::Result<()> {
        // Small answers must not wait for the peer's delayed ACK.
        sock.set_nodelay(true)?;
        let mut preface = [0u8; 4];
        match tokio::time::timeout(PREFACE_TIMEOUT, sock.read_exact(&mut preface)).await {
            Ok(r) => {
                r?;
            }
            Err(_) => return Err(invalid_data("no preface within 10 s")),
        }
        if preface != PREFACE {
            return Err(invalid_data(format!(
                "bad preface {preface:02x?} (not a Sluice data-port client, or another version)"
            )));
        }
        let (mut rd, mut wr) = sock.into_split();
        let mut input = BytesMut::with_capacity(64 << 10);
        let mut output = BytesMut::with_capacity(4 << 10);
        let mut pending = InFlight::default();
        // Body bytes of an oversized frame still to be skipped.
        let mut skip = 0usize;
        let mut reading = !*self.stop.borrow();
        loop {
            // Full: read nothing more until a send finishes (TCP pushes back on the client).
            let full = !self.take_frames(&mut input, &mut skip, &mut pending, &mut output);
            if !output.is_empty() {
                wr.write_all(&output).await?;
                output.clear();
            }
            if !reading && pending.sends.is_empty() {
                return Ok(());
            }
            tokio::select! {
                Some((h, r)) = pending.sends.next(), if !pending.sends.is_empty() => {
                    pending.finished(&h);
                    answer(h, r, &mut output);
                    // Everything else already done goes out in the same write.
                    while let Some(Some((h, r))) = pending.sends.next().now_or_never() {
                        pending.finished(&h);
                        answer(h, r, &mut output);
                    }
                }
                n = rd.read_buf(&mut input), if reading && !full => {
                    if n? == 0 {
                        // The client is done sending; finish what it asked for, then close.
                        reading = false;
                    }
                }
                changed = self.stop.changed(), if reading => {
                    // A dropped sender means the broker is gone too.
                    reading = changed.is_ok() && !*self.stop.borrow();
                }
            }
        }
    }

    /// Starts every complete frame in `input`; errors about a frame itself (too large, unknown
    /// call, undecodable body) are answered right away and the connection carries on. False
    /// when it stopped for want of room in `pending`.
    fn take_frames(
        &self,
        input: &mut BytesMut,
        skip: &mut usize,
        pending: &mut InFlight,
        output: &mut BytesMut,
    ) -> bool {
        loop {
            if *skip > 0 {
                let n = (*skip).min(input.len());
                input.advance(n);
                *skip -= n;
                if *skip > 0 {
                    return true;
                }
            }
            let Some(h) = frame::peek_request_header(input) else {
                return true;
            };
            // Raft batches are bounded by the replication limit, sends by the request limit.
            let limit = if h.kind == Kind::Raft as u8 {
                MAX_RPC_BYTES
            } else {
                self.max_body
            };
            if h.body_len > limit {
                let err = ApiError::new(
                    ErrorCode::MessageTooLarge,
                    format!(
                        "request of {} bytes is above the broker's limit of {} bytes",
                        h.body_len, limit
                    ),
                );
                frame::encode_error(h.kind, h.request_id, &err, output);
                input.advance(REQUEST_HEADER_LEN);
                *skip = h.body_len;
                continue;
            }
            if h.kind == Kind::Send as u8 && !pending.has_room(h.body_len) {
                return false;
            }
            let frame_len = REQUEST_HEADER_LEN + h.body_len;
            if input.len() < frame_len {
                input.reserve(frame_len - input.len());
                return true;
            }
            input.advance(REQUEST_HEADER_LEN);
            let body = input.split_to(h.body_len).freeze();
            match Kind::from_wire(h.kind) {
                Some(Kind::Send) => match SendRequest::decode(body) {
                    Ok(req) => {
                        self.stats.sends.fetch_add(1, Ordering::Relaxed);
                        let service = self.service.clone();
                        pending.bytes += h.body_len;
                        pending
                            .sends
                            .push(async move { (h, service.do_send(req).await) }.boxed());
                    }
                    Err(e) => {
                        let err = ApiError::invalid(format!("undecodable SendRequest: {e}"));
                        frame::encode_error(h.kind, h.request_id, &err, output);
                    }
                },
                Some(Kind::Raft) => {
                    // Handed to the Raft thread's mailbox without waiting: answer at once.
                    let r = match (&self.replication, RaftBatch::decode(body)) {
                        (Some(replication), Ok(batch)) => replication.accept(batch),
                        (None, _) => Err(ApiError::invalid(
                            "this broker is not a member of a replica group",
                        )),
                        (_, Err(e)) => {
                            Err(ApiError::invalid(format!("undecodable RaftBatch: {e}")))
                        }
                    };
                    match r {
                        Ok(ack) => frame::encode_ok(h.kind, h.request_id, &ack, output),
                        Err(e) => frame::encode_error(h.kind, h.request_id, &e, output),
                    }
                }
                None => {
                    let err = ApiError::invalid(format!(
                        "unknown data-port call kind {} (this broker serves Send = 1, Raft = 2)",
                        h.kind
                    ));
                    frame::encode_error(h.kind, h.request_id, &err, output);
                }
            }
        }
    }
}

fn answer(h: RequestHeader, r: Result<SendResponse, ApiError>, output: &mut BytesMut) {
    match r {
        Ok(resp) => frame::encode_ok(h.kind, h.request_id, &resp, output),
        Err(e) => frame::encode_error(h.kind, h.request_id, &e, output),
    }
}

fn invalid_data(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// The address clients reach the data port at: the advertised host with the bound port.
pub fn advertised(grpc_address: &str, bound: SocketAddr) -> String {
    match grpc_address.rsplit_once(':') {
        Some((host, _)) => format!("{host}:{}", bound.port()),
        None => bound.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_room_is_bounded_by_count_and_bytes() {
        let mut f = InFlight::default();
        // Nothing pending: any single send is taken, however large.
        assert!(f.has_room(MAX_PENDING_BYTES * 2));
        let h = RequestHeader {
            body_len: MAX_PENDING_BYTES - 10,
            kind: Kind::Send as u8,
            request_id: 1,
        };
        f.bytes += h.body_len;
        f.sends.push(std::future::pending().boxed());
        assert!(f.has_room(10));
        assert!(!f.has_room(11));
        f.finished(&h);
        assert!(f.has_room(MAX_PENDING_BYTES));
        for _ in 1..MAX_IN_FLIGHT {
            f.sends.push(std::future::pending().boxed());
        }
        assert!(!f.has_room(0), "count limit");
    }

    #[test]
    fn advertised_keeps_the_host_and_takes_the_port() {
        let bound: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        assert_eq!(advertised("10.1.2.3:10911", bound), "10.1.2.3:4000");
        assert_eq!(advertised("[::1]:10911", bound), "[::1]:4000");
        assert_eq!(advertised("broker-a:10911", bound), "broker-a:4000");
    }
}
