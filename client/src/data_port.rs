//! Client side of a broker's data port (framed TCP, `sluice_proto::frame`): one connection per
//! address, shared by every send to it.
//!
//! Callers hand their requests to a writer task, which encodes them into one reused buffer and
//! writes whole frames (so a caller that times out can never leave half a frame on the wire,
//! and a 128 KiB batch costs no allocation of its own); callers wait on a oneshot that the
//! reader task completes when the answer with their request id arrives. When the connection breaks, every waiting call fails with a
//! transport error and the next call connects again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use sluice_proto::auth::{Signer, DATA_PORT_RESOURCE};
use sluice_proto::frame::{self, Kind, PREFACE};
use sluice_proto::tls::net::{connect_split, Connector, ReadHalf, WriteHalf};
use sluice_proto::v1::DataPortAuthRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::config::validate_addr;
use crate::error::{Error, Result};

/// Requests queued for the writer before callers wait.
const WRITE_QUEUE: usize = 1024;
/// The writer writes once this much is encoded (or nothing else is queued).
const WRITE_CHUNK: usize = 256 << 10;
/// The write buffer is given back after a frame grew it beyond this.
const KEEP_BUFFER: usize = 8 << 20;
/// Largest answer accepted (a Send answer is ~60 bytes per message).
const MAX_RESPONSE: usize = 64 << 20;

type Answer = std::result::Result<Bytes, Error>;

/// A request waiting for the writer: encodes its frame into the writer's buffer.
type Outgoing = Box<dyn FnOnce(&mut BytesMut) + Send>;

/// Open data-port connections by address.
pub(crate) struct DataPorts {
    connect_timeout: Duration,
    signer: Option<Arc<Signer>>,
    /// TLS to the data ports (offering their ALPN).
    tls: Option<Connector>,
    conns: RwLock<HashMap<String, Arc<DataConn>>>,
}

impl DataPorts {
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        DataPorts {
            connect_timeout,
            signer: None,
            tls: None,
            conns: RwLock::new(HashMap::new()),
        }
    }

    /// Authenticates each new connection as `signer`'s user (its first frame).
    pub(crate) fn signed(mut self, signer: Option<Arc<Signer>>) -> Self {
        self.signer = signer;
        self
    }

    /// Reaches the data ports over TLS with `tls` (a gRPC connector: its trust and client
    /// certificate, the data port's ALPN).
    pub(crate) fn tls(mut self, tls: Option<&Connector>) -> Self {
        self.tls = tls.map(|c| c.with_alpn(sluice_proto::tls::ALPN_DATA));
        self
    }

    /// The live connection to `addr`, connecting when there is none.
    pub(crate) async fn get(&self, addr: &str) -> Result<Arc<DataConn>> {
        if let Some(c) = self.conns.read().get(addr) {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        validate_addr(addr)?;
        let conn = DataConn::connect(addr, self.connect_timeout, self.tls.as_ref()).await?;
        if let Some(s) = &self.signer {
            let auth = DataPortAuthRequest {
                authorization: s.sign(
                    &sluice_proto::auth::resource(addr, DATA_PORT_RESOURCE),
                    crate::time::now_ms(),
                ),
            };
            conn.call(Kind::Auth, auth, self.connect_timeout).await?;
        }
        // Callers racing here each connected; keep one live connection, drop the others.
        let mut map = self.conns.write();
        match map.get(addr) {
            Some(c) if !c.is_closed() => Ok(c.clone()),
            _ => {
                map.insert(addr.to_string(), conn.clone());
                Ok(conn)
            }
        }
    }
}

struct Shared {
    addr: String,
    /// Calls waiting for their answer, by request id; `closed` once the connection is gone.
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    calls: HashMap<u64, oneshot::Sender<Answer>>,
    closed: Option<String>,
}

impl Shared {
    /// Fails every waiting call and refuses new ones.
    fn close(&self, why: String) {
        let calls = {
            let mut w = self.waiting.lock();
            if w.closed.is_none() {
                w.closed = Some(why.clone());
            }
            std::mem::take(&mut w.calls)
        };
        for (_, tx) in calls {
            let _ = tx.send(Err(self.transport(&why)));
        }
    }

    fn transport(&self, why: &str) -> Error {
        Error::Transport {
            addr: self.addr.clone(),
            message: format!("data port: {why}"),
        }
    }
}

pub(crate) struct DataConn {
    shared: Arc<Shared>,
    frames: mpsc::Sender<Outgoing>,
    next_id: AtomicU64,
    tasks: [tokio::task::AbortHandle; 2],
}

impl Drop for DataConn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl DataConn {
    async fn connect(
        addr: &str,
        connect_timeout: Duration,
        tls: Option<&Connector>,
    ) -> Result<Arc<Self>> {
        let transport = |message: String| Error::Transport {
            addr: addr.to_string(),
            message,
        };
        let connect = connect_split(addr, tls);
        let (rd, mut wr) = match tokio::time::timeout(connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(transport(format!("data port connect: {e}"))),
            Err(_) => {
                return Err(Error::Timeout {
                    addr: addr.to_string(),
                    timeout: connect_timeout,
                })
            }
        };
        wr.write_all(&PREFACE)
            .await
            .map_err(|e| transport(format!("data port preface: {e}")))?;
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            waiting: Mutex::new(Waiting::default()),
        });
        let (frames, queue) = mpsc::channel(WRITE_QUEUE);
        let writer = tokio::spawn(write_loop(wr, queue, shared.clone()));
        let reader = tokio::spawn(read_loop(rd, shared.clone()));
        Ok(Arc::new(DataConn {
            shared,
            frames,
            next_id: AtomicU64::new(1),
            tasks: [writer.abort_handle(), reader.abort_handle()],
        }))
    }

    fn is_closed(&self) -> bool {
        self.shared.waiting.lock().closed.is_some()
    }

    /// One call: the answer's body when the broker says OK; its error otherwise. On timeout
    /// the call is forgotten (a late answer is dropped), as with a gRPC deadline.
    pub(crate) async fn call(
        &self,
        kind: Kind,
        msg: impl prost::Message + 'static,
        timeout: Duration,
    ) -> Result<Bytes> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let encode: Outgoing = Box::new(move |out| frame::encode_request(kind, id, &msg, out));
        let (tx, rx) = oneshot::channel();
        {
            let mut w = self.shared.waiting.lock();
            if let Some(why) = &w.closed {
                return Err(self.shared.transport(why));
            }
            w.calls.insert(id, tx);
        }
        let forget = Forget {
            shared: &self.shared,
            id,
        };
        let exchange = async {
            if self.frames.send(encode).await.is_err() {
                return Err(self.shared.transport("connection closed"));
            }
            rx.await
                .unwrap_or_else(|_| Err(self.shared.transport("connection closed")))
        };
        let r = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                addr: self.shared.addr.clone(),
                timeout,
            }),
        };
        drop(forget);
        r
    }
}

/// Removes a call from the waiting table however its future ends.
struct Forget<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.shared.waiting.lock().calls.remove(&self.id);
    }
}

async fn write_loop(mut wr: WriteHalf, mut queue: mpsc::Receiver<Outgoing>, shared: Arc<Shared>) {
    let mut out = BytesMut::with_capacity(WRITE_CHUNK);
    while let Some(first) = queue.recv().await {
        // Everything queued behind the first request goes out with it.
        let mut next = Some(first);
        let mut result = Ok(());
        while let Some(encode) = next.take() {
            encode(&mut out);
            if out.len() >= WRITE_CHUNK {
                result = wr.write_all(&out).await;
                out.clear();
                if result.is_err() {
                    break;
                }
            }
            next = queue.try_recv().ok();
        }
        if result.is_ok() && !out.is_empty() {
            result = wr.write_all(&out).await;
            out.clear();
        }
        if result.is_ok() {
            // TLS holds sealed bytes until flushed (a no-op on plain TCP).
            result = wr.flush().await;
        }
        if let Err(e) = result {
            shared.close(format!("write failed: {e}"));
            return;
        }
        if out.capacity() > KEEP_BUFFER {
            out = BytesMut::with_capacity(WRITE_CHUNK);
        }
    }
}

async fn read_loop(mut rd: ReadHalf, shared: Arc<Shared>) {
    let why = match read_answers(&mut rd, &shared).await {
        Ok(()) => "the broker closed the connection".to_string(),
        Err(e) => e,
    };
    shared.close(why);
}

async fn read_answers(rd: &mut ReadHalf, shared: &Shared) -> std::result::Result<(), String> {
    let mut input = BytesMut::with_capacity(64 << 10);
    loop {
        while let Some((id, r)) =
            frame::take_response(&mut input, MAX_RESPONSE).map_err(|e| e.message)?
        {
            let waiter = shared.waiting.lock().calls.remove(&id);
            // No waiter: the call timed out and was forgotten.
            if let Some(tx) = waiter {
                let _ = tx.send(r.map_err(Error::Api));
            }
        }
        match rd.read_buf(&mut input).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;
    use prost::Message as _;
    use sluice_proto::frame::{peek_request_header, REQUEST_HEADER_LEN};
    use sluice_proto::v1::{SendRequest, SendResponse};
    use sluice_proto::{ApiError, ErrorCode};
    use tokio::net::TcpListener;

    /// A broker stand-in: checks the preface, then answers each Send with `answer(request)`,
    /// in reverse order of every pair of requests, to show answers are matched by id.
    async fn fake_broker(
        answer: fn(u64, SendRequest) -> Option<std::result::Result<SendResponse, ApiError>>,
    ) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut pre = [0u8; 4];
                    s.read_exact(&mut pre).await.unwrap();
                    assert_eq!(pre, PREFACE);
                    let mut input = BytesMut::new();
                    let mut held: Vec<BytesMut> = Vec::new();
                    loop {
                        while let Some(h) = peek_request_header(&input) {
                            if input.len() < REQUEST_HEADER_LEN + h.body_len {
                                break;
                            }
                            input.advance(REQUEST_HEADER_LEN);
                            let req = SendRequest::decode(input.split_to(h.body_len)).unwrap();
                            let mut out = BytesMut::new();
                            match answer(h.request_id, req) {
                                Some(Ok(r)) => frame::encode_ok(h.kind, h.request_id, &r, &mut out),
                                Some(Err(e)) => {
                                    frame::encode_error(h.kind, h.request_id, &e, &mut out)
                                }
                                None => return, // hang up
                            }
                            held.push(out);
                            if held.len() == 2 {
                                for o in held.drain(..).rev() {
                                    s.write_all(&o).await.unwrap();
                                }
                            }
                        }
                        if s.read_buf(&mut input).await.unwrap_or(0) == 0 {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn req(topic: &str) -> SendRequest {
        SendRequest {
            topic: topic.into(),
            queue_id: 0,
            messages: vec![],
            ..Default::default()
        }
    }

    async fn send(conn: &DataConn, topic: &str, t: Duration) -> Result<Bytes> {
        conn.call(Kind::Send, req(topic), t).await
    }

    fn echo(id: u64, r: SendRequest) -> Option<std::result::Result<SendResponse, ApiError>> {
        if r.topic == "bye" {
            return None;
        }
        if r.topic == "err" {
            return Some(Err(ApiError::not_master("m:1")));
        }
        Some(Ok(SendResponse {
            broker_name: r.topic,
            queue_id: id as u32,
            results: vec![],
            store_timestamp_ms: 0,
        }))
    }

    #[tokio::test]
    async fn concurrent_calls_get_their_own_answers() {
        let addr = fake_broker(echo).await;
        let ports = DataPorts::new(Duration::from_secs(1));
        let conn = ports.get(&addr).await.unwrap();
        let t = Duration::from_secs(5);
        let (a, b) = tokio::join!(send(&conn, "a", t), send(&conn, "err", t));
        let a = SendResponse::decode(a.unwrap()).unwrap();
        assert_eq!(a.broker_name, "a");
        let b = b.unwrap_err();
        assert_eq!(b.api().unwrap().code, ErrorCode::NotMaster);
        assert_eq!(b.api().unwrap().master_address, "m:1");
        assert!(conn.shared.waiting.lock().calls.is_empty());
        // The pool hands out the same live connection.
        assert!(Arc::ptr_eq(&conn, &ports.get(&addr).await.unwrap()));
    }

    #[tokio::test]
    async fn a_broken_connection_fails_waiting_calls_and_is_replaced() {
        let addr = fake_broker(echo).await;
        let ports = DataPorts::new(Duration::from_secs(1));
        let conn = ports.get(&addr).await.unwrap();
        let t = Duration::from_secs(5);
        let (a, b) = tokio::join!(send(&conn, "x", t), send(&conn, "bye", t));
        for r in [a, b] {
            assert!(matches!(r, Err(Error::Transport { .. })), "{r:?}");
        }
        assert!(conn.is_closed());
        let again = ports.get(&addr).await.unwrap();
        assert!(!Arc::ptr_eq(&conn, &again));
        let (x, y) = tokio::join!(send(&again, "x", t), send(&again, "y", t));
        assert_eq!(SendResponse::decode(x.unwrap()).unwrap().broker_name, "x");
        assert_eq!(SendResponse::decode(y.unwrap()).unwrap().broker_name, "y");
    }

    #[tokio::test]
    async fn unanswered_call_times_out_and_is_forgotten() {
        // One request alone is held back by the fake (it answers in pairs).
        let addr = fake_broker(echo).await;
        let ports = DataPorts::new(Duration::from_secs(1));
        let conn = ports.get(&addr).await.unwrap();
        let e = conn
            .call(Kind::Send, req("a"), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
        assert!(conn.shared.waiting.lock().calls.is_empty());
        // The late answer (released by the next request) is dropped; the next call works.
        let r = conn
            .call(Kind::Send, req("b"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(SendResponse::decode(r).unwrap().broker_name, "b");
    }

    #[tokio::test]
    async fn unreachable_broker_is_a_transport_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let ports = DataPorts::new(Duration::from_secs(1));
        let e = ports.get(&addr).await.err().unwrap();
        assert!(matches!(e, Error::Transport { .. }), "{e:?}");
        assert!(e.is_retryable() && e.is_routing());
    }
}
