//! TLS on the wire for gRPC: accepted connections handshaken off the accept loop (a slow or
//! silent client holds up no one), the server-side stream type tonic serves (plain or TLS,
//! with the peer's address for the request checks), and a client connector for tonic
//! channels.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::identity::PeerNames;

/// Longest a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once; past it, new connections are closed at once (so silent
/// connections cannot stop the accepting).
const HANDSHAKES: usize = 256;

/// A connection the gRPC server serves: plain TCP, or TLS over it.
pub enum ServerIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// What a request knows of its connection: the peer's address and, under TLS, the names of
/// the certificate it showed.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    pub peer: PeerNames,
}

impl ConnInfo {
    pub fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp.remote_addr()
    }
}

impl Connected for ServerIo {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            ServerIo::Plain(s) => ConnInfo {
                tcp: s.connect_info(),
                peer: PeerNames::default(),
            },
            ServerIo::Tls(s) => {
                let (tcp, conn) = s.get_ref();
                ConnInfo {
                    tcp: tcp.connect_info(),
                    peer: PeerNames::of_chain(conn.peer_certificates()),
                }
            }
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            ServerIo::Plain($s) => $e,
            ServerIo::Tls($s) => $e,
        }
    };
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plain(s) => s.is_write_vectored(),
            ServerIo::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The connections of `incoming`, handshaken with `tls` when given (a failed or slow
/// handshake drops that connection and is logged; the stream goes on). The accepting ends,
/// and the listener closes, when the server drops the stream.
pub fn serve_incoming<S>(
    incoming: S,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Pin<Box<dyn Stream<Item = io::Result<ServerIo>> + Send>>
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    let Some(cfg) = tls else {
        return Box::pin(incoming.map(|r| r.map(ServerIo::Plain)));
    };
    let acceptor = TlsAcceptor::from(cfg);
    let (tx, rx) = mpsc::channel::<io::Result<ServerIo>>(HANDSHAKES);
    tokio::spawn(async move {
        let mut incoming = Box::pin(incoming);
        let permits = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        loop {
            let conn = tokio::select! {
                _ = tx.closed() => return,
                c = incoming.next() => match c {
                    Some(c) => c,
                    None => return,
                },
            };
            let sock = match conn {
                Ok(s) => s,
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::debug!(peer = ?sock.peer_addr().ok(), "too many TLS handshakes at once; connection closed");
                continue;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let peer = sock.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(ServerIo::Tls(Box::new(s)))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(?peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                }
                drop(permit);
            });
        }
    });
    Box::pin(tokio_stream_from(rx))
}

fn tokio_stream_from<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Connects tonic channels over TLS: TCP to the URI's host and port, then a handshake
/// verifying the server's certificate for that host.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tls::Connector")
    }
}

impl Connector {
    pub fn new(cfg: Arc<rustls::ClientConfig>) -> Connector {
        Connector {
            tls: TlsConnector::from(cfg),
        }
    }

    /// A TLS connection to `host:port` (for the data port and other raw streams).
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let sock = TcpStream::connect((host, port)).await?;
        sock.set_nodelay(true)?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
        self.tls.connect(name, sock).await
    }
}

type Connecting = Pin<
    Box<
        dyn Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send,
    >,
>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Connecting {
        let me = self.clone();
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
            })?;
            // An IPv6 literal comes bracketed in a URI.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            me.connect(&host, port).await.map(TokioIo::new)
        })
    }
}

impl Connector {
    /// The same trust and client certificate, offering `alpn` instead (the data port's).
    pub fn with_alpn(&self, alpn: &[u8]) -> Connector {
        let mut cfg = (**self.tls.config()).clone();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Connector::new(Arc::new(cfg))
    }
}

/// The read side of a framed connection (plain or TLS).
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write side: with TLS, bytes may wait in the session until `flush`.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// A framed-protocol connection to `addr` (`host:port`, Nagle off): plain TCP, or TLS
/// verifying the server's certificate for `host` with `tls` (see `split`: the write half
/// sends on `flush`).
pub async fn connect_split(
    addr: &str,
    tls: Option<&Connector>,
) -> io::Result<(ReadHalf, WriteHalf)> {
    match tls {
        None => {
            let sock = TcpStream::connect(addr).await?;
            sock.set_nodelay(true)?;
            let (rd, wr) = sock.into_split();
            Ok((Box::new(rd), Box::new(wr)))
        }
        Some(c) => {
            let (host, port) = addr
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{addr:?} is not host:port"),
                    )
                })?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
            let sock = TcpStream::connect((host, port)).await?;
            sock.set_nodelay(true)?;
            let (rd, wr) = super::split::connect(sock, c.tls.config().clone(), name).await?;
            Ok((Box::new(rd), Box::new(wr)))
        }
    }
}
