//! A TLS session driven by hand with rustls' unbuffered API, for the framed connections (the
//! data port's server side, and its clients through `split`).
//!
//! Records are opened in the buffer the socket read them into, and sealed straight into the
//! buffer of bytes to write: none of the buffered API's copies into and out of its own
//! buffers, resizes or per-record allocations, on the hot path of every send.

use std::io;

use bytes::{Buf, BytesMut};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Room for the records of a connection's reads (a record is at most ~16.7 KiB).
const SEALED_IN: usize = 64 << 10;
/// The buffer of sealed records is given back after a write grew it beyond this.
const SEALED_OUT_KEPT: usize = 4 << 20;

/// Either side's unbuffered rustls connection.
pub trait Session: Send {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn handshaking(&self) -> bool;
    /// rustls has records of its own to send (an alert after an error, say).
    fn has_records_to_send(&self) -> bool;
}

/// The same three calls on either side's connection type.
macro_rules! session {
    ($conn:ty, $data:ty) => {
        impl Session for $conn {
            type Data = $data;
            fn process<'c, 'i>(
                &'c mut self,
                incoming: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, Self::Data> {
                self.process_tls_records(incoming)
            }
            fn handshaking(&self) -> bool {
                self.is_handshaking()
            }
            fn has_records_to_send(&self) -> bool {
                self.wants_write()
            }
        }
    };
}
session!(UnbufferedServerConnection, ServerConnectionData);
session!(UnbufferedClientConnection, ClientConnectionData);

/// A session with its buffers: records read and not yet opened, records to write.
pub struct Records<C> {
    pub conn: C,
    sealed_in: BytesMut,
    out: Sealed,
    /// Bytes opened while sealing (records that came in between), for the next `open`.
    plain_in: BytesMut,
    /// The peer sent close_notify.
    peer_closed: bool,
    /// The session failed: every later call says so without asking rustls again (it would
    /// go over records it already went over).
    failed: Option<(io::ErrorKind, String)>,
}

/// What to seal once the session may send application data.
enum Then<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

impl<C: Session> Records<C> {
    pub fn new(conn: C) -> Records<C> {
        Records {
            conn,
            sealed_in: BytesMut::with_capacity(SEALED_IN),
            out: Sealed::default(),
            plain_in: BytesMut::new(),
            peer_closed: false,
            failed: None,
        }
    }

    /// Runs the handshake over `sock` (for as long as the caller allows). Bytes the peer sent
    /// right behind it stay for [`Records::open`]. On failure, the alert rustls made for the
    /// peer (a missing certificate, say) is sent first.
    pub async fn handshake(&mut self, sock: &mut TcpStream) -> io::Result<()> {
        loop {
            let handshaking = match self.process(Then::Nothing) {
                Ok(h) => h,
                Err(e) => {
                    self.alert_after_error();
                    let _ = sock.write_all(self.out.bytes()).await;
                    return Err(e);
                }
            };
            if !self.out.is_empty() {
                sock.write_all(self.out.bytes()).await?;
                self.out.clear();
            }
            if !handshaking {
                return Ok(());
            }
            if self.peer_closed || sock.read_buf(&mut self.sealed_in).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during the TLS handshake",
                ));
            }
        }
    }

    /// Where socket reads go.
    pub fn sealed_in(&mut self) -> &mut BytesMut {
        &mut self.sealed_in
    }

    /// Opens the records read so far, handing their bytes to `sink` (a partial record waits
    /// for the rest). True once the peer has said it is done (close_notify): whatever it sends
    /// after that is dropped, never held.
    pub fn open(&mut self, mut sink: impl FnMut(&[u8])) -> io::Result<bool> {
        if !self.plain_in.is_empty() {
            sink(&self.plain_in);
            self.plain_in = BytesMut::new();
        }
        self.process_into(&mut sink, Then::Nothing)?;
        Ok(self.peer_closed)
    }

    /// Seals `data` as application data behind what is already to be written.
    pub fn seal(&mut self, data: &[u8]) -> io::Result<()> {
        self.check()?;
        if data.is_empty() {
            return Ok(());
        }
        match self.process(Then::Data(data))? {
            true => Err(invalid("TLS handshake not done: nothing can be sealed yet")),
            false => Ok(()),
        }
    }

    /// Seals a close_notify: the connection ends cleanly, and the peer can tell that from a
    /// cut connection.
    pub fn close_notify(&mut self) -> io::Result<()> {
        self.process(Then::CloseNotify).map(|_| ())
    }

    /// The sealed records to write.
    pub fn sealed(&self) -> &[u8] {
        self.out.bytes()
    }

    /// The sealed records were written.
    pub fn written(&mut self) {
        self.out.clear();
    }

    /// Swaps the sealed records with `other` (empty), keeping both buffers' allocations.
    pub fn take_sealed(&mut self, other: &mut Sealed) {
        std::mem::swap(&mut self.out, other);
    }

    /// The session's failure, if it failed.
    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, why)) => Err(io::Error::new(*kind, why.clone())),
            None => Ok(()),
        }
    }

    /// [`Records::process_into`] keeping what it opens for the next `open`. True while the
    /// handshake goes on.
    fn process(&mut self, then: Then<'_>) -> io::Result<bool> {
        let mut plain = std::mem::take(&mut self.plain_in);
        let r = self.process_into(&mut |b: &[u8]| plain.extend_from_slice(b), then);
        self.plain_in = plain;
        r
    }

    /// Runs the session over the records read so far until it needs more of them: opened
    /// bytes to `sink`, the session's own records (handshake, alerts, key updates) to `out`;
    /// then, once it may send application data, seals `then`. True while the handshake goes on.
    fn process_into(&mut self, sink: &mut dyn FnMut(&[u8]), then: Then<'_>) -> io::Result<bool> {
        self.check()?;
        let r = self.run(sink, then);
        if let Err(e) = &r {
            self.failed = Some((e.kind(), e.to_string()));
            self.sealed_in.clear();
        }
        r
    }

    fn run(&mut self, sink: &mut dyn FnMut(&[u8]), then: Then<'_>) -> io::Result<bool> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process(&mut self.sealed_in[..]);
            // Some(true): the handshake waits for the peer; Some(false): nothing left to open.
            let mut waiting = None;
            let mut traffic = false;
            match state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        if !self.peer_closed {
                            sink(record.payload);
                        }
                    }
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    self.out.put(|buf| room_for(data.encode(buf)))?;
                }
                // Written by the caller's next write, behind everything before it.
                ConnectionState::TransmitTlsData(data) => data.done(),
                ConnectionState::PeerClosed => self.peer_closed = true,
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    waiting = Some(false);
                }
                ConnectionState::BlockedHandshake => waiting = Some(true),
                // Nothing more to open for now; a server may send before the client's
                // Finished, so the handshake is over only when the session says so.
                ConnectionState::WriteTraffic(_) => traffic = true,
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
            if traffic {
                waiting = Some(self.conn.handshaking());
            }
            match waiting {
                Some(false) => return self.seal_now(then).map(|_| false),
                Some(true) => return Ok(true),
                None => {}
            }
        }
    }

    /// Seals `then` (the session has nothing left to open, so it stands ready to write).
    fn seal_now(&mut self, then: Then<'_>) -> io::Result<()> {
        if matches!(then, Then::Nothing) {
            return Ok(());
        }
        let UnbufferedStatus { discard, state } = self.conn.process(&mut self.sealed_in[..]);
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
            Then::Data(data) => self.out.put(|buf| sealed(traffic.encrypt(data, buf))),
            Then::CloseNotify => self.out.put(|buf| sealed(traffic.queue_close_notify(buf))),
        };
        // Nothing was left to open, so this is nothing; taken all the same.
        self.sealed_in.advance(discard);
        r
    }

    /// After a failed handshake, the alert rustls queued, encoded into `out` (best effort).
    fn alert_after_error(&mut self) {
        // Only while rustls has its own records queued: then it hands them over before it
        // looks at anything read (of which nothing is left: a failure drops it).
        while self.conn.has_records_to_send() {
            let UnbufferedStatus { state, .. } = self.conn.process(&mut self.sealed_in[..]);
            let Ok(ConnectionState::EncodeTlsData(mut data)) = state else {
                return;
            };
            if self.out.put(|buf| room_for(data.encode(buf))).is_err() {
                return;
            }
        }
    }
}

/// Sealed records waiting to be written. Its bytes stay allocated (and initialised) between
/// writes, so sealing neither zero-fills nor reallocates in the steady state.
#[derive(Default)]
pub struct Sealed {
    buf: Vec<u8>,
    len: usize,
    /// Bytes of it already written.
    sent: usize,
}

impl Sealed {
    /// What is left to write.
    pub fn bytes(&self) -> &[u8] {
        self.buf.get(self.sent..self.len).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.sent >= self.len
    }

    /// `n` more bytes were written; all of them empties it.
    pub fn advance(&mut self, n: usize) {
        self.sent += n;
        if self.sent >= self.len {
            self.clear();
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.sent = 0;
        if self.buf.len() > SEALED_OUT_KEPT {
            self.buf = Vec::new();
        }
    }

    /// Appends `more` (the session's own records, rarely).
    pub fn extend(&mut self, more: &[u8]) {
        let _ = self.put(|room| {
            Ok(match room.get_mut(..more.len()) {
                Some(dst) => {
                    dst.copy_from_slice(more);
                    Ok(more.len())
                }
                None => Err(InsufficientSizeError {
                    required_size: more.len(),
                }),
            })
        });
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
                Err(_) if self.sent > 0 => {
                    // Room where the written bytes were first.
                    self.buf.copy_within(self.sent..self.len, 0);
                    self.len -= self.sent;
                    self.sent = 0;
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

/// An encoding's outcome for [`Sealed::put`]: written, too little room, or failed.
fn room_for(r: Result<usize, EncodeError>) -> io::Result<Result<usize, InsufficientSizeError>> {
    match r {
        Ok(n) => Ok(Ok(n)),
        Err(EncodeError::InsufficientSize(s)) => Ok(Err(s)),
        Err(e) => Err(tls_error(e)),
    }
}

fn tls_error(e: impl std::fmt::Display) -> io::Error {
    invalid(format!("TLS: {e}"))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}
