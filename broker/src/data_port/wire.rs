//! The bytes of a data-port connection on the wire: as they are, or sealed with TLS.
//!
//! TLS is driven by hand with rustls' unbuffered API rather than by a TLS stream: the
//! connection keeps its plain socket halves, so it can still busy-poll its socket and move
//! between runtimes (see `serve`), and the TLS session moves with its other state. Records are
//! opened where the socket read them and sealed straight into the bytes to write, which saves
//! the buffered API's copies, buffer resizing and per-record allocations on every send.

use std::io;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::ServerConfig;
use sluice_proto::tls::identity::PeerNames;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

/// Room for the records of a connection's first reads.
const SEALED_IN: usize = 64 << 10;
/// The buffer of sealed records is given back after a write grew it beyond this.
const SEALED_OUT_KEPT: usize = 4 << 20;

/// A connection's transport state between frames.
#[derive(Default)]
pub(super) struct Wire {
    tls: Option<Box<Tls>>,
}

struct Tls {
    conn: UnbufferedServerConnection,
    /// Records read from the socket and not yet opened.
    sealed_in: BytesMut,
    /// Records to write.
    out: Sealed,
    /// Bytes opened outside [`Wire::open`] (behind the handshake), for it to hand over.
    plain_in: BytesMut,
    /// The client sent close_notify.
    peer_closed: bool,
}

/// What to do once the session may send application data.
enum Then<'a> {
    Nothing,
    Seal(&'a [u8]),
    CloseNotify,
}

/// Where the session stands after processing what has arrived.
#[derive(PartialEq)]
enum Stand {
    Handshaking,
    Traffic,
}

impl Wire {
    /// The server side of a TLS handshake on `sock` (at most the time the caller allows). Bytes
    /// the client sent right behind its handshake are kept for [`Wire::open`].
    pub(super) async fn accept(sock: &mut TcpStream, cfg: Arc<ServerConfig>) -> io::Result<Wire> {
        use tokio::io::AsyncReadExt;
        let conn = UnbufferedServerConnection::new(cfg).map_err(tls_error)?;
        let mut tls = Box::new(Tls {
            conn,
            sealed_in: BytesMut::with_capacity(SEALED_IN),
            out: Sealed::default(),
            plain_in: BytesMut::new(),
            peer_closed: false,
        });
        loop {
            let stand = match tls.process(Then::Nothing) {
                Ok(s) => s,
                Err(e) => {
                    // The alert rustls queued tells the client why (a missing certificate, say).
                    tls.alert_after_error();
                    let _ = sock.write_all(tls.out.bytes()).await;
                    return Err(e);
                }
            };
            if !tls.out.is_empty() {
                sock.write_all(tls.out.bytes()).await?;
                tls.out.clear();
            }
            if stand == Stand::Traffic || tls.peer_closed {
                return Ok(Wire { tls: Some(tls) });
            }
            if sock.read_buf(&mut tls.sealed_in).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during the TLS handshake",
                ));
            }
        }
    }

    /// Where a socket read goes: straight into the frames' `input`, or to the records to open.
    pub(super) fn read_into<'a>(&'a mut self, input: &'a mut BytesMut) -> &'a mut BytesMut {
        match &mut self.tls {
            Some(t) => &mut t.sealed_in,
            None => input,
        }
    }

    /// Opens the records read so far, appending their bytes to `input` (a partial record
    /// waits for the rest). True once the client has said it is done (TLS' close_notify):
    /// whatever it sends after that is dropped, never held.
    pub(super) fn open(&mut self, input: &mut BytesMut) -> io::Result<bool> {
        let Some(tls) = &mut self.tls else {
            return Ok(false);
        };
        if !tls.plain_in.is_empty() {
            input.extend_from_slice(&tls.plain_in);
            tls.plain_in = BytesMut::new();
        }
        tls.process_into(input, Then::Nothing)?;
        Ok(tls.peer_closed)
    }

    /// Says the connection ends cleanly (TLS' close_notify, so the client tells it from a
    /// cut connection); sent by the next flush.
    pub(super) fn close(&mut self) {
        if let Some(tls) = &mut self.tls {
            // A session that cannot say it just ends; the client sees the connection close.
            if let Err(e) = tls.process(Then::CloseNotify) {
                tracing::debug!("data port close_notify not sent: {e}");
            }
        }
    }

    /// The names of the certificate the client showed.
    pub(super) fn peer(&self) -> PeerNames {
        PeerNames::of_chain(self.tls.as_ref().and_then(|t| t.conn.peer_certificates()))
    }

    /// Something to write: answers in `output`, or records the TLS session sends itself.
    pub(super) fn wants_write(&self, output: &BytesMut) -> bool {
        !output.is_empty() || self.tls.as_ref().is_some_and(|t| !t.out.is_empty())
    }

    /// Writes `output` (sealed under TLS) and empties it.
    pub(super) async fn flush(
        &mut self,
        output: &mut BytesMut,
        wr: &mut OwnedWriteHalf,
    ) -> io::Result<()> {
        let Some(tls) = &mut self.tls else {
            if !output.is_empty() {
                wr.write_all(output).await?;
                output.clear();
            }
            return Ok(());
        };
        if !output.is_empty() {
            tls.process(Then::Seal(output))?;
            output.clear();
        }
        if !tls.out.is_empty() {
            wr.write_all(tls.out.bytes()).await?;
            tls.out.clear();
        }
        Ok(())
    }
}

impl Tls {
    /// [`Tls::process_into`] keeping any opened bytes for [`Wire::open`].
    fn process(&mut self, then: Then<'_>) -> io::Result<Stand> {
        let mut plain = std::mem::take(&mut self.plain_in);
        let r = self.process_into(&mut plain, then);
        self.plain_in = plain;
        r
    }

    /// Runs the session over the records read so far until it needs more of them: opened
    /// bytes go to `plain`, the session's own records (handshake, alerts, key updates) to
    /// `out`; then, once it may send application data, does `then`.
    fn process_into(&mut self, plain: &mut BytesMut, then: Then<'_>) -> io::Result<Stand> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.sealed_in[..]);
            let mut stand = None;
            match state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        // After close_notify nothing more is taken.
                        if !self.peer_closed {
                            plain.extend_from_slice(record.payload);
                        }
                    }
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    self.out.put(|buf| match data.encode(buf) {
                        Ok(n) => Ok(Ok(n)),
                        Err(EncodeError::InsufficientSize(s)) => Ok(Err(s)),
                        Err(e) => Err(tls_error(e)),
                    })?;
                }
                // Sent by the caller's next write, behind everything before it.
                ConnectionState::TransmitTlsData(data) => data.done(),
                ConnectionState::PeerClosed => self.peer_closed = true,
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    stand = Some(Stand::Traffic);
                }
                ConnectionState::BlockedHandshake => stand = Some(Stand::Handshaking),
                // Nothing more to open for now.
                ConnectionState::WriteTraffic(_) => stand = Some(Stand::Traffic),
                ConnectionState::ReadEarlyData(_) => {
                    return Err(invalid("TLS early data is not accepted"));
                }
                other => return Err(invalid(format!("unexpected TLS state {other:?}"))),
            }
            self.sealed_in.advance(discard);
            if self.peer_closed {
                // Nothing read after close_notify is kept.
                self.sealed_in.clear();
            }
            match stand {
                // A server may send before the client's Finished: the handshake is done only
                // when the session says so.
                Some(Stand::Traffic) if self.conn.is_handshaking() => {
                    return Ok(Stand::Handshaking)
                }
                Some(Stand::Traffic) => {
                    self.seal(then)?;
                    return Ok(Stand::Traffic);
                }
                Some(stand) => return Ok(stand),
                None => {}
            }
        }
    }

    /// Seals application data or a close_notify into `out` (the session has nothing left to
    /// open, so it stands ready to write).
    fn seal(&mut self, then: Then<'_>) -> io::Result<()> {
        if matches!(then, Then::Nothing) {
            return Ok(());
        }
        let UnbufferedStatus { discard, state } =
            self.conn.process_tls_records(&mut self.sealed_in[..]);
        let ConnectionState::WriteTraffic(mut traffic) = state.map_err(tls_error)? else {
            return Err(invalid("TLS session not ready to write"));
        };
        let sealed = |r: Result<usize, EncryptError>| match r {
            Ok(n) => Ok(Ok(n)),
            Err(EncryptError::InsufficientSize(s)) => Ok(Err(s)),
            Err(e) => Err(tls_error(e)),
        };
        let r = match then {
            Then::Nothing => Ok(()),
            Then::Seal(data) => self.out.put(|buf| sealed(traffic.encrypt(data, buf))),
            Then::CloseNotify => self.out.put(|buf| sealed(traffic.queue_close_notify(buf))),
        };
        // Nothing was left to open, so this is nothing; taken all the same.
        self.sealed_in.advance(discard);
        r
    }

    /// After a failed handshake, the alert rustls queued, encoded into `out` (best effort).
    fn alert_after_error(&mut self) {
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } =
                self.conn.process_tls_records(&mut self.sealed_in[..]);
            let Ok(ConnectionState::EncodeTlsData(mut data)) = state else {
                return;
            };
            let encoded = self.out.put(|buf| match data.encode(buf) {
                Ok(n) => Ok(Ok(n)),
                Err(EncodeError::InsufficientSize(s)) => Ok(Err(s)),
                Err(e) => Err(tls_error(e)),
            });
            if encoded.is_err() {
                return;
            }
        }
    }
}

/// Sealed records waiting to be written. Its bytes stay allocated (and initialised) between
/// writes, so sealing never zero-fills nor reallocates in the steady state.
#[derive(Default)]
struct Sealed {
    buf: Vec<u8>,
    len: usize,
}

impl Sealed {
    fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        self.len = 0;
        if self.buf.len() > SEALED_OUT_KEPT {
            self.buf = Vec::new();
        }
    }

    /// Appends what `fill` writes into the free room, growing it to what `fill` says it needs.
    fn put(
        &mut self,
        mut fill: impl FnMut(&mut [u8]) -> io::Result<Result<usize, InsufficientSizeError>>,
    ) -> io::Result<()> {
        loop {
            let room = self.buf.get_mut(self.len..).unwrap_or_default();
            match fill(room)? {
                Ok(n) => {
                    self.len += n;
                    return Ok(());
                }
                Err(InsufficientSizeError { required_size }) => {
                    let want = self.len + required_size;
                    if want <= self.buf.len() {
                        return Err(invalid("TLS asked for room it already had"));
                    }
                    self.buf.resize(want.max(2 * self.buf.len()), 0);
                }
            }
        }
    }
}

fn tls_error(e: impl std::fmt::Display) -> io::Error {
    invalid(format!("TLS: {e}"))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}
