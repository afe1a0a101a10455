//! A TLS client connection for the framed protocol, as a read half and a write half that
//! tasks of their own drive (the session between them, behind a lock held for rustls calls and
//! non-blocking socket calls only, never across an await).
//!
//! Reads take whatever the socket has into one buffer and open the records there; writes seal
//! into a buffer kept between writes and reach the socket on `flush` (or once 256 KiB wait),
//! so a frame written in pieces goes out in one write.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use super::records::{Records, Sealed};

/// Sealed bytes that wait for a flush before they are written anyway.
const WRITE_AT: usize = 256 << 10;
/// Slices of a vectored write shorter than this are gathered and sealed together.
const GATHER_BELOW: usize = 4 << 10;

type Shared = Arc<Mutex<Records<UnbufferedClientConnection>>>;

/// The handshake with the server `name` over `sock`, then the two halves.
pub async fn connect(
    mut sock: TcpStream,
    cfg: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<(TlsReader, TlsWriter)> {
    let conn = UnbufferedClientConnection::new(cfg, name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("TLS: {e}")))?;
    let mut records = Records::new(conn);
    records.handshake(&mut sock).await?;
    let (rd, wr) = sock.into_split();
    let shared = Arc::new(Mutex::new(records));
    Ok((
        TlsReader {
            rd,
            shared: shared.clone(),
            plain: BytesMut::new(),
            done: false,
        },
        TlsWriter {
            wr,
            shared,
            out: Sealed::default(),
            gather: Vec::new(),
            closing: false,
        },
    ))
}

fn lock(shared: &Shared) -> io::Result<MutexGuard<'_, Records<UnbufferedClientConnection>>> {
    shared
        .lock()
        .map_err(|_| io::Error::other("TLS session lost (a panic while it was held)"))
}

/// The read half: application data as the server sent it.
pub struct TlsReader {
    rd: OwnedReadHalf,
    shared: Shared,
    /// Opened bytes the caller's buffer had no room for.
    plain: BytesMut,
    /// The server said it is done (close_notify).
    done: bool,
}

impl AsyncRead for TlsReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let start = buf.filled().len();
        loop {
            if buf.filled().len() > start {
                return Poll::Ready(Ok(()));
            }
            if !me.plain.is_empty() {
                let n = me.plain.len().min(buf.remaining());
                buf.put_slice(&me.plain[..n]);
                me.plain.advance(n);
                return Poll::Ready(Ok(()));
            }
            if me.done || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let mut records = lock(&me.shared)?;
            me.done = keep_opened(
                open_into(&mut records, buf, &mut me.plain),
                buf,
                start,
                &me.plain,
            )?;
            if buf.filled().len() > start || !me.plain.is_empty() || me.done {
                continue;
            }
            // Nothing opened: read more, straight into the records' buffer (opened on the
            // next pass).
            let n = ready!(poll_read_buf(Pin::new(&mut me.rd), cx, records.sealed_in()))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection without a TLS close_notify",
                )));
            }
        }
    }
}

/// An error after bytes were opened waits for the next read (the session keeps it), so the
/// bytes before it are not lost with it.
fn keep_opened(
    r: io::Result<bool>,
    buf: &ReadBuf<'_>,
    start: usize,
    plain: &BytesMut,
) -> io::Result<bool> {
    match r {
        Err(_) if buf.filled().len() > start || !plain.is_empty() => Ok(false),
        r => r,
    }
}

/// Opens the records read so far straight into `buf` as far as it has room, the rest into
/// `plain`. True once the server said it is done.
fn open_into(
    records: &mut Records<UnbufferedClientConnection>,
    buf: &mut ReadBuf<'_>,
    plain: &mut BytesMut,
) -> io::Result<bool> {
    records.open(|bytes: &[u8]| {
        let n = bytes.len().min(buf.remaining());
        let (now, later) = bytes.split_at(n);
        buf.put_slice(now);
        plain.extend_from_slice(later);
    })
}

/// The write half: bytes are sealed as they are written and sent on `flush`.
pub struct TlsWriter {
    wr: OwnedWriteHalf,
    shared: Shared,
    /// Sealed records being written.
    out: Sealed,
    /// Small slices of a vectored write, sealed together.
    gather: Vec<u8>,
    /// close_notify is sealed.
    closing: bool,
}

impl TlsWriter {
    /// Writes `out` until it is empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.wr).poll_write(cx, self.out.bytes()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Before more is sealed: what already waits is written if it is a lot.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.out.bytes().len() >= WRITE_AT {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Seals `bufs` in order behind everything sealed before (the session's own records
    /// among it): large slices where they are, runs of small ones (frame headers) gathered
    /// into one record rather than a record each.
    fn seal<'a>(&mut self, bufs: impl IntoIterator<Item = &'a [u8]>) -> io::Result<usize> {
        let mut records = lock(&self.shared)?;
        // Sealed straight behind what waits here: the buffer goes to the session and back,
        // after anything the session queued itself (it came after what waits here).
        self.out.extend(records.sealed());
        records.written();
        records.take_sealed(&mut self.out);
        let r = seal_gathering(&mut records, bufs, &mut self.gather);
        records.take_sealed(&mut self.out);
        self.gather.clear();
        r
    }

    /// Starts writing once a lot waits (without waiting for the socket); a flush sends all.
    fn nudge(&mut self, cx: &mut Context<'_>) {
        if self.out.bytes().len() >= WRITE_AT {
            // A failed write fails the next write or flush too (the bytes are still here).
            let _ = self.poll_drain(cx);
        }
    }
}

fn seal_gathering<'a>(
    records: &mut Records<UnbufferedClientConnection>,
    bufs: impl IntoIterator<Item = &'a [u8]>,
    gather: &mut Vec<u8>,
) -> io::Result<usize> {
    let mut total = 0;
    for b in bufs {
        if b.len() < GATHER_BELOW {
            gather.extend_from_slice(b);
        } else {
            records.seal(gather)?;
            gather.clear();
            records.seal(b)?;
        }
        total += b.len();
    }
    records.seal(gather)?;
    Ok(total)
}

impl AsyncWrite for TlsWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        ready!(me.poll_room(cx))?;
        // At most WRITE_AT at a time, so the sealed bytes stay within twice that.
        let n = me.seal([buf.get(..WRITE_AT).unwrap_or(buf)])?;
        me.nudge(cx);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        ready!(me.poll_room(cx))?;
        // At most WRITE_AT at a time, as `poll_write`.
        let mut room = WRITE_AT;
        let slices = bufs.iter().map_while(|b| {
            let part = b.get(..room).unwrap_or(b);
            room -= part.len();
            (!part.is_empty() || room > 0).then_some(part)
        });
        let n = me.seal(slices)?;
        me.nudge(cx);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        // Records the session made on its own (a key update's answer) go out too.
        me.seal([])?;
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.wr).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.closing {
            lock(&me.shared)?.close_notify()?;
            me.closing = true;
        }
        me.seal([])?;
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.wr).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Buf, Bytes};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::tls::gen::local_configs;
    use crate::tls::ALPN_DATA;

    fn configs() -> (
        tempfile::TempDir,
        Arc<rustls::ServerConfig>,
        Arc<ClientConfig>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (server, client) = local_configs(dir.path(), ALPN_DATA).unwrap();
        (dir, Arc::new(server), Arc::new(client))
    }

    /// A plaintext client (a data-port preface where a ClientHello belongs) fails the
    /// handshake and is told so with an alert; the session stays failed without going over
    /// the same bytes again.
    #[tokio::test]
    async fn a_plaintext_client_is_refused_with_an_alert() {
        use rustls::server::UnbufferedServerConnection;
        let (_dir, server_cfg, _) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut sock = TcpStream::connect(addr).await.unwrap();
            sock.write_all(b"SLW\x01 and then some frames")
                .await
                .unwrap();
            let mut back = Vec::new();
            let _ = sock.read_to_end(&mut back).await;
            back
        });
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut records = Records::new(UnbufferedServerConnection::new(server_cfg).unwrap());
        let err = records.handshake(&mut sock).await.unwrap_err();
        assert!(err.to_string().contains("TLS"), "{err}");
        drop(sock);
        let back = client.await.unwrap();
        // An alert record (content type 21) in plaintext, as the handshake had not begun.
        assert_eq!(back.first(), Some(&21), "{back:?}");
        let again = records.open(|_| panic!("nothing to open")).unwrap_err();
        assert_eq!(again.to_string(), err.to_string());
    }

    /// The split client against tokio-rustls' server: 1 MiB each way, written in uneven
    /// pieces, in one write larger than what is sealed at a time, and in vectored pieces, a key
    /// update from the server in the middle (the client's answer
    /// must go out ahead of its next bytes), and clean ends both ways.
    #[tokio::test]
    async fn split_client_carries_bytes_both_ways() {
        let (_dir, server_cfg, client_cfg) = configs();
        let sent: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let (first, rest) = sent.split_at(100 * 1024);
        let (whole, rest) = rest.split_at(400 * 1024);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = sent.clone();
        let server = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let mut tls = TlsAcceptor::from(server_cfg).accept(sock).await.unwrap();
            let mut got = vec![0u8; 100 * 1024];
            tls.read_exact(&mut got).await.unwrap();
            tls.get_mut().1.refresh_traffic_keys().unwrap();
            tls.write_all(&echo).await.unwrap();
            tls.flush().await.unwrap();
            // Up to the client's close_notify.
            tls.read_to_end(&mut got).await.unwrap();
            tls.shutdown().await.unwrap();
            got
        });

        let sock = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let (mut rd, mut wr) = connect(sock, client_cfg, name).await.unwrap();
        for piece in first.chunks(7919) {
            wr.write_all(piece).await.unwrap();
        }
        wr.flush().await.unwrap();
        let mut back = vec![0u8; sent.len()];
        rd.read_exact(&mut back).await.unwrap();
        assert!(back == sent, "the server's bytes came back whole");
        wr.write_all(whole).await.unwrap();
        // A frame header and its body, as the Raft links write them: one larger than what is
        // sealed at a time, then many.
        let (big, rest) = rest.split_at(324 * 1024);
        let (head, body) = big.split_at(4);
        let mut frame = Bytes::copy_from_slice(head).chain(Bytes::copy_from_slice(body));
        wr.write_all_buf(&mut frame).await.unwrap();
        for chunk in rest.chunks(20_000) {
            let (head, body) = chunk.split_at(4);
            let mut frame = Bytes::copy_from_slice(head).chain(Bytes::copy_from_slice(body));
            wr.write_all_buf(&mut frame).await.unwrap();
        }
        wr.flush().await.unwrap();
        wr.shutdown().await.unwrap();
        // The server's close_notify is a clean end.
        let mut tail = Vec::new();
        rd.read_to_end(&mut tail).await.unwrap();
        assert!(tail.is_empty());
        assert!(
            server.await.unwrap() == sent,
            "the client's bytes arrived whole"
        );
    }
}
