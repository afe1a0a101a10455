//! HTTP listeners (the metrics endpoint, the dashboard) for axum: plain TCP, or TLS
//! handshaken off the accept loop as on the gRPC ports.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;

use super::net::{serve_incoming, ServerIo};

/// ALPN of HTTP/1.1 (what the metrics endpoint and the dashboard speak).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A listener for `axum::serve`.
pub struct HttpListener {
    incoming: Pin<Box<dyn Stream<Item = io::Result<ServerIo>> + Send>>,
    local: SocketAddr,
}

impl HttpListener {
    /// Serves `listener`'s connections, over TLS with `tls` (its ALPN should be
    /// [`ALPN_HTTP1`]).
    pub fn new(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<HttpListener> {
        let local = listener.local_addr()?;
        let accepted = futures::stream::unfold(listener, |l| async move {
            let r = l.accept().await.map(|(s, _)| s);
            Some((r, l))
        });
        Ok(HttpListener {
            incoming: serve_incoming(Box::pin(accepted) as Accepted, tls),
            local,
        })
    }
}

type Accepted = Pin<Box<dyn Stream<Item = io::Result<TcpStream>> + Send>>;

impl axum::serve::Listener for HttpListener {
    type Io = ServerIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ServerIo, SocketAddr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(io)) => {
                    let peer = io.connect_info().remote_addr().unwrap_or(self.local);
                    return (io, peer);
                }
                Some(Err(e)) => {
                    // Out of file descriptors and the like: give the process a moment.
                    tracing::warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
