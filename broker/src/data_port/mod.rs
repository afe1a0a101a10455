//! The data port: Send, EndTransaction, and Raft traffic between replicas, over framed TCP
//! (`sluice_proto::frame`, docs/protocol.md), inside TLS when the broker has a certificate
//! (`wire.rs`).
//!
//! Same handler as the gRPC Send, minus HTTP/2: on this 2-core machine a gRPC unary round trip
//! costs ~250 us of the ~100 us a TCP round trip does. One task per connection reads frames,
//! runs their sends concurrently (answers go back as they finish, paired by request id) and
//! writes the answers; it reads no further while `MAX_IN_FLIGHT` sends or `MAX_PENDING_BYTES` of
//! requests are pending, which pushes back on the client through TCP.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use prost::Message as _;
use sluice_proto::frame::{self, Kind, RequestHeader, PREFACE, REQUEST_HEADER_LEN};
use sluice_proto::tls::identity::PeerNames;
use sluice_proto::v1::{
    DataPortAuthRequest, DataPortAuthResponse, EndTransactionRequest, EndTransactionResponse,
    RaftBatch, SendRequest, SendResponse,
};
use sluice_proto::{ApiError, ErrorCode};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::access::Principal;
use crate::replication::transport::MAX_RPC_BYTES;
use crate::replication::ReplicationService;
use crate::service::BrokerService;

/// Sends one connection may have pending before the broker stops reading from it...
const MAX_IN_FLIGHT: usize = 1024;
/// ...and request bytes they may hold (one larger send is still taken when none is pending).
const MAX_PENDING_BYTES: usize = 64 << 20;
/// Sends up to this size keep a standalone broker's connection on the writer's thread however
/// many are in flight: decoding and encoding one costs the writer less than the hand-offs to
/// and from a worker thread would (256 single 1 KiB sends in flight ran 15 % slower with each
/// handed to a worker). A producer of larger batches is moved (see [`serve`]).
const INLINE_SEND_BYTES: usize = 32 << 10;
mod local;
mod wire;
pub use local::WriterThread;
use local::{busy_poll_read, Counted, Local, Polled};
use wire::Wire;

/// Connections in their TLS handshake or before their preface at once; past it, new ones are
/// closed at once (silent connections cannot hold the process's sockets).
const OPENING: usize = 256;
/// A connection that has not finished its TLS handshake and sent its preface by then is
/// dropped.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the data port served, for the broker status.
#[derive(Debug, Default)]
pub struct DataPortStats {
    pub connections: AtomicU64,
    pub sends: AtomicU64,
    /// Connections moved from the store writer's thread to the workers.
    pub moved: AtomicU64,
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

/// A call's answer, encoded once it is ready.
enum Reply {
    Send(SendResponse),
    End(EndTransactionResponse),
}

type Pending = Pin<Box<dyn Future<Output = (RequestHeader, Result<Reply, ApiError>)> + Send>>;

/// Accepts data-port connections until `stop` turns true. With `local` (a standalone broker:
/// the store writer's runtime), connections start on the writer's thread: a send then reaches
/// the writer and its answer comes back without waking another thread (two wake-ups are most
/// of a send's latency at one in flight). A connection that sends a large batch while other
/// sends are in flight moves to this runtime's workers for good: decoding and encoding its
/// batches there overlaps with the writer's writing, which pipelining producers need.
/// With `tls`, every connection is TLS (handshaken on this runtime's workers).
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    service: Arc<BrokerService>,
    replication: Option<Arc<ReplicationService>>,
    local: Option<WriterThread>,
    max_body: usize,
    stats: Arc<DataPortStats>,
    mut stop: watch::Receiver<bool>,
) {
    let opening = Arc::new(tokio::sync::Semaphore::new(OPENING));
    let local = local.map(|w| Local {
        rt: w.runtime,
        busy_poll: w.busy_poll,
        workers: tokio::runtime::Handle::current(),
        running: Arc::new(AtomicUsize::new(0)),
    });
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((sock, peer)) => {
                let Ok(permit) = opening.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "too many data-port connections opening at once; closed");
                    continue;
                };
                let conn = Connection {
                    service: service.clone(),
                    replication: replication.clone(),
                    local: local.clone(),
                    stats: stats.clone(),
                    max_body,
                    stop: stop.clone(),
                    peer,
                };
                tokio::spawn(conn.start(sock, tls.clone(), permit));
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
    /// Set for a standalone broker's connections (which run on the writer's runtime).
    local: Option<Local>,
    /// Takes Raft batches from the group's other replicas; `None` outside a replica group.
    replication: Option<Arc<ReplicationService>>,
    stats: Arc<DataPortStats>,
    max_body: usize,
    stop: watch::Receiver<bool>,
    peer: SocketAddr,
}

/// A connection's state between frames: what survives a move to another runtime.
struct Served {
    input: BytesMut,
    output: BytesMut,
    pending: InFlight,
    /// Body bytes of an oversized frame still to be skipped.
    skip: usize,
    reading: bool,
    /// Most sends in flight at once since the connection was last idle.
    peak: usize,
    /// The client sent one at a time when last busy (a latency-bound producer): busy-poll its
    /// socket when idle rather than sleep.
    solo: bool,
    /// Who the frames act as, once an Auth frame said (anonymous before).
    who: Principal,
    /// The names of the client's certificate (for Raft frames under mutual TLS).
    peer: PeerNames,
    wire: Wire,
}

impl Served {
    fn new(reading: bool, wire: Wire) -> Box<Served> {
        Box::new(Served {
            input: BytesMut::with_capacity(64 << 10),
            output: BytesMut::with_capacity(4 << 10),
            pending: InFlight::default(),
            skip: 0,
            reading,
            peak: 0,
            solo: false,
            who: Principal::default(),
            peer: wire.peer(),
            wire,
        })
    }

    /// When nothing is in flight, judges the busy period that just ended: one send at a time
    /// (a latency-bound client) or several.
    fn note_idle(&mut self) {
        if self.pending.sends.is_empty() && self.peak > 0 {
            self.solo = self.peak == 1;
            self.peak = 0;
        }
    }
}

/// How serving a connection ended on this runtime.
enum Ended {
    Closed,
    /// To go on on the workers (see [`serve`]).
    Moved(std::net::TcpStream, Box<Served>),
}

impl Connection {
    /// Serves a new connection: its TLS handshake and preface here, the rest here or, for a
    /// standalone broker, on the writer's runtime (the socket moves over to its reactor).
    async fn start(
        mut self,
        sock: TcpStream,
        tls: Option<Arc<rustls::ServerConfig>>,
        opening: tokio::sync::OwnedSemaphorePermit,
    ) {
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        let opened = tokio::time::timeout(PREFACE_TIMEOUT, self.open(sock, tls))
            .await
            .unwrap_or_else(|_| Err(invalid_data("no TLS handshake and preface within 10 s")));
        drop(opening);
        let r = match opened {
            Ok((sock, st)) => match self.local.clone() {
                Some(local) => match sock.into_std() {
                    Ok(sock) => return self.carry_on(&local.rt, sock, st),
                    Err(e) => Err(e),
                },
                None => self.serve(sock, st).await,
            },
            Err(e) => Err(e),
        };
        self.ended(r);
    }

    /// The TLS handshake (with `tls`) and the client's preface.
    async fn open(
        &self,
        sock: TcpStream,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<(TcpStream, Box<Served>)> {
        // Small answers must not wait for the peer's delayed ACK.
        sock.set_nodelay(true)?;
        let mut sock = sock;
        let wire = match tls {
            Some(cfg) => Wire::accept(&mut sock, cfg).await?,
            None => Wire::default(),
        };
        let mut st = Served::new(!*self.stop.borrow(), wire);
        // Bytes past the preface are the first frames.
        let mut closed = st.wire.open(&mut st.input)?;
        while st.input.len() < PREFACE.len() {
            if closed || sock.read_buf(st.wire.read_into(&mut st.input)).await? == 0 {
                return Err(invalid_data("closed before its preface"));
            }
            closed = st.wire.open(&mut st.input)?;
        }
        if st.input[..PREFACE.len()] != PREFACE {
            return Err(invalid_data(format!(
                "bad preface {:02x?} (not a Sluice data-port client, or another version)",
                &st.input[..PREFACE.len()]
            )));
        }
        st.input.advance(PREFACE.len());
        // A client that said all it had to say right behind its handshake: answer, then close.
        st.reading &= !closed;
        Ok((sock, st))
    }

    /// Serves the connection on `rt` from here on (its socket moves to that runtime's reactor).
    fn carry_on(mut self, rt: &tokio::runtime::Handle, sock: std::net::TcpStream, st: Box<Served>) {
        rt.spawn(async move {
            let r = match TcpStream::from_std(sock) {
                Ok(sock) => self.serve(sock, st).await,
                Err(e) => Err(e),
            };
            self.ended(r);
        });
    }

    /// Counts the connection out, or carries it on on the workers.
    fn ended(mut self, r: std::io::Result<Ended>) {
        let peer = self.peer;
        match r {
            Ok(Ended::Moved(sock, state)) => match self.local.take() {
                Some(local) => {
                    tracing::debug!(%peer, "data port connection moves to the worker threads");
                    self.stats.moved.fetch_add(1, Ordering::Relaxed);
                    // Without `local` it cannot move again.
                    return self.carry_on(&local.workers, sock, state);
                }
                // `serve` moves only connections that have somewhere to go.
                None => tracing::debug!(%peer, "data port connection closed (nowhere to move)"),
            },
            Ok(Ended::Closed) => tracing::debug!(%peer, "data port connection closed"),
            Err(e) => tracing::debug!(%peer, "data port connection ended: {e}"),
        }
        self.stats.connections.fetch_sub(1, Ordering::Relaxed);
    }

    async fn serve(&mut self, sock: TcpStream, mut st: Box<Served>) -> std::io::Result<Ended> {
        let (mut rd, mut wr) = sock.into_split();
        loop {
            // Full: read nothing more until a send finishes (TCP pushes back on the client).
            let taken = self.take_frames(&mut st);
            st.peak = st.peak.max(st.pending.sends.len());
            if st.wire.wants_write(&st.output) {
                st.wire.flush(&mut st.output, &mut wr).await?;
            }
            if !st.reading && st.pending.sends.is_empty() {
                st.wire.close();
                st.wire.flush(&mut st.output, &mut wr).await?;
                return Ok(Ended::Closed);
            }
            if taken.move_to_workers && self.local.is_some() {
                let sock = rd
                    .reunite(wr)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                return Ok(Ended::Moved(sock.into_std()?, st));
            }
            st.note_idle();
            let busy_poll = self.local.as_ref().map_or(Duration::ZERO, |l| l.busy_poll);
            if st.solo && st.reading && !taken.full && st.pending.sends.is_empty() {
                match busy_poll_read(&rd, &mut st, busy_poll).await? {
                    Polled::Read => continue,
                    Polled::Closed => {
                        st.reading = false;
                        continue;
                    }
                    Polled::Nothing => {}
                }
            }
            tokio::select! {
                Some((h, r)) = st.pending.sends.next(), if !st.pending.sends.is_empty() => {
                    st.pending.finished(&h);
                    answer(h, r, &mut st.output);
                    // Everything else already done goes out in the same write.
                    while let Some(Some((h, r))) = st.pending.sends.next().now_or_never() {
                        st.pending.finished(&h);
                        answer(h, r, &mut st.output);
                    }
                }
                n = rd.read_buf(st.wire.read_into(&mut st.input)), if st.reading && !taken.full => {
                    // Zero bytes or close_notify: the client is done sending; finish what it
                    // asked for, then close.
                    let eof = n? == 0;
                    if st.wire.open(&mut st.input)? || eof {
                        st.reading = false;
                    }
                }
                changed = self.stop.changed(), if st.reading => {
                    // A dropped sender means the broker is gone too.
                    st.reading = changed.is_ok() && !*self.stop.borrow();
                }
            }
        }
    }

    /// Starts every complete frame in `input`; errors about a frame itself (too large, unknown
    /// call, undecodable body) are answered right away and the connection carries on.
    fn take_frames(&self, st: &mut Served) -> Taken {
        let Served {
            input,
            output,
            pending,
            skip,
            who,
            peer,
            ..
        } = st;
        let mut taken = Taken::default();
        loop {
            if *skip > 0 {
                let n = (*skip).min(input.len());
                input.advance(n);
                *skip -= n;
                if *skip > 0 {
                    return taken;
                }
            }
            let Some(h) = frame::peek_request_header(input) else {
                return taken;
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
            if h.kind != Kind::Raft as u8 && !pending.has_room(h.body_len) {
                taken.full = true;
                return taken;
            }
            let frame_len = REQUEST_HEADER_LEN + h.body_len;
            if input.len() < frame_len {
                input.reserve(frame_len - input.len());
                return taken;
            }
            input.advance(REQUEST_HEADER_LEN);
            let body = input.split_to(h.body_len).freeze();
            match Kind::from_wire(h.kind) {
                Some(Kind::Send) => {
                    pending.bytes += h.body_len;
                    let (send, busy) = self.start_send(h, body, who.clone());
                    pending.sends.push(send);
                    taken.move_to_workers |= busy && h.body_len > INLINE_SEND_BYTES;
                }
                Some(Kind::EndTransaction) => {
                    pending.bytes += h.body_len;
                    pending.sends.push(self.start_end(h, body, who.clone()));
                }
                Some(Kind::Raft) => {
                    // Handed to the Raft thread's mailbox without waiting: answer at once.
                    let r = match (&self.replication, RaftBatch::decode(body)) {
                        (Some(replication), Ok(batch)) => replication
                            .check(who)
                            .and_then(|()| replication.accept(batch, peer)),
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
                Some(Kind::Auth) => match self.authenticate(body) {
                    Ok((p, reply)) => {
                        *who = p;
                        frame::encode_ok(h.kind, h.request_id, &reply, output);
                    }
                    Err(e) => frame::encode_error(h.kind, h.request_id, &e, output),
                },
                None => {
                    let err = ApiError::invalid(format!(
                        "unknown data-port call kind {} (this broker serves Send = 1, Raft = 2, \
                         EndTransaction = 3, Auth = 4)",
                        h.kind
                    ));
                    frame::encode_error(h.kind, h.request_id, &err, output);
                }
            }
        }
    }

    /// Starts one send (decoding included) on the current runtime; true when the writer had
    /// other sends of a standalone broker's connections in flight (see [`serve`]).
    /// An Auth frame: who the connection's later frames act as.
    fn authenticate(&self, body: Bytes) -> Result<(Principal, DataPortAuthResponse), ApiError> {
        let req = DataPortAuthRequest::decode(body)
            .map_err(|e| ApiError::invalid(format!("undecodable DataPortAuthRequest: {e}")))?;
        let p = self.service.access.authenticate(
            sluice_proto::auth::DATA_PORT_RESOURCE,
            Some(req.authorization.as_bytes()),
            Some(self.peer),
        )?;
        let user = p.name().to_string();
        Ok((p, DataPortAuthResponse { user }))
    }

    fn start_send(&self, h: RequestHeader, body: Bytes, who: Principal) -> (Pending, bool) {
        let service = self.service.clone();
        let stats = self.stats.clone();
        let send = async move {
            match SendRequest::decode(body) {
                Ok(req) => {
                    stats.sends.fetch_add(1, Ordering::Relaxed);
                    service.do_send(req, &who).await.map(Reply::Send)
                }
                Err(e) => Err(ApiError::invalid(format!("undecodable SendRequest: {e}"))),
            }
        };
        let Some(local) = &self.local else {
            return (async move { (h, send.await) }.boxed(), false);
        };
        let busy = local.running.fetch_add(1, Ordering::Relaxed) > 0;
        let running = Counted(local.running.clone());
        let send = async move {
            let r = send.await;
            drop(running);
            (h, r)
        };
        (send.boxed(), busy)
    }

    /// Starts one commit or rollback: the same handler as the gRPC call.
    fn start_end(&self, h: RequestHeader, body: Bytes, who: Principal) -> Pending {
        let service = self.service.clone();
        async move {
            let r = match EndTransactionRequest::decode(body) {
                Ok(req) => service.do_end_transaction(req, &who).await.map(Reply::End),
                Err(e) => Err(ApiError::invalid(format!(
                    "undecodable EndTransactionRequest: {e}"
                ))),
            };
            (h, r)
        }
        .boxed()
    }
}

/// What [`Connection::take_frames`] saw.
#[derive(Default)]
struct Taken {
    /// It stopped for want of room in the pending sends.
    full: bool,
    /// A large send came while others were in flight: a producer that batches and pipelines,
    /// better served off the writer's thread.
    move_to_workers: bool,
}

fn answer(h: RequestHeader, r: Result<Reply, ApiError>, output: &mut BytesMut) {
    match r {
        Ok(Reply::Send(resp)) => frame::encode_ok(h.kind, h.request_id, &resp, output),
        Ok(Reply::End(resp)) => frame::encode_ok(h.kind, h.request_id, &resp, output),
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
mod tests;
