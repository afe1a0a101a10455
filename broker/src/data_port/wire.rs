//! The bytes of a data-port connection on the wire: as they are, or sealed with TLS.
//!
//! TLS is driven by hand (`tls::records`, rustls' unbuffered API) rather than by a TLS
//! stream: the connection keeps its plain socket halves, so it can still busy-poll its socket
//! and move between runtimes (see `serve`), and the TLS session moves with its other state.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use rustls::server::UnbufferedServerConnection;
use rustls::ServerConfig;
use sluice_proto::tls::identity::PeerNames;
use sluice_proto::tls::records::Records;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

/// A connection's transport state between frames.
#[derive(Default)]
pub(super) struct Wire {
    tls: Option<Box<Records<UnbufferedServerConnection>>>,
}

impl Wire {
    /// The server side of a TLS handshake on `sock` (for as long as the caller allows). Bytes
    /// the client sent right behind its handshake are kept for [`Wire::open`].
    pub(super) async fn accept(sock: &mut TcpStream, cfg: Arc<ServerConfig>) -> io::Result<Wire> {
        let conn = UnbufferedServerConnection::new(cfg)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}")))?;
        let mut tls = Box::new(Records::new(conn));
        tls.handshake(sock).await?;
        Ok(Wire { tls: Some(tls) })
    }

    /// Where a socket read goes: straight into the frames' `input`, or to the records to open.
    pub(super) fn read_into<'a>(&'a mut self, input: &'a mut BytesMut) -> &'a mut BytesMut {
        match &mut self.tls {
            Some(t) => t.sealed_in(),
            None => input,
        }
    }

    /// Opens the records read so far, appending their bytes to `input` (a partial record
    /// waits for the rest). True once the client has said it is done (TLS' close_notify):
    /// whatever it sends after that is dropped, never held.
    pub(super) fn open(&mut self, input: &mut BytesMut) -> io::Result<bool> {
        match &mut self.tls {
            Some(tls) => tls.open(|bytes: &[u8]| input.extend_from_slice(bytes)),
            None => Ok(false),
        }
    }

    /// Says the connection ends cleanly (TLS' close_notify, so the client tells it from a
    /// cut connection); sent by the next flush.
    pub(super) fn close(&mut self) {
        if let Some(tls) = &mut self.tls {
            // A session that cannot say so just ends; the client sees the connection close.
            if let Err(e) = tls.close_notify() {
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
        !output.is_empty() || self.tls.as_ref().is_some_and(|t| !t.sealed().is_empty())
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
        tls.seal(output)?;
        output.clear();
        if !tls.sealed().is_empty() {
            wr.write_all(tls.sealed()).await?;
            tls.written();
        }
        Ok(())
    }
}
