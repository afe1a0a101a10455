//! The bytes of a data-port connection on the wire: as they are, or sealed with TLS.
//!
//! TLS is driven by hand (rustls' buffered connection, fed and drained by the connection's
//! own reads and writes) rather than by a TLS stream: the connection keeps its plain socket
//! halves, so it can still busy-poll its socket and move between runtimes (see `serve`), and
//! the TLS session moves with its other state.

use std::io::{self, BufRead, Write};

use bytes::{Buf, BufMut, BytesMut};
use rustls::ServerConnection;
use sluice_proto::tls::identity::PeerNames;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

/// A connection's transport state between frames.
#[derive(Default)]
pub(super) struct Wire {
    tls: Option<Box<ServerConnection>>,
    /// Records read from the socket and not yet opened.
    sealed_in: BytesMut,
    /// Records to write.
    sealed_out: BytesMut,
}

impl Wire {
    /// TLS over a connection whose handshake is done.
    pub(super) fn tls(conn: ServerConnection) -> Wire {
        let mut conn = Box::new(conn);
        // Answers are bounded by the connection's limit on sends in flight; rustls' own send
        // limit would only split writes.
        conn.set_buffer_limit(None);
        Wire {
            tls: Some(conn),
            sealed_in: BytesMut::with_capacity(64 << 10),
            sealed_out: BytesMut::new(),
        }
    }

    /// Where a socket read goes: straight into the frames' `input`, or to the records to open.
    pub(super) fn read_into<'a>(&'a mut self, input: &'a mut BytesMut) -> &'a mut BytesMut {
        match self.tls {
            Some(_) => &mut self.sealed_in,
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
        loop {
            // Drained before and after every record batch: rustls holds at most 16 KiB of
            // them, and the handshake may have left some (sent right behind it).
            let mut reader = tls.reader();
            loop {
                match reader.fill_buf() {
                    Ok([]) => {
                        self.sealed_in.clear();
                        return Ok(true);
                    }
                    Ok(chunk) => {
                        let len = chunk.len();
                        input.extend_from_slice(chunk);
                        reader.consume(len);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if self.sealed_in.is_empty() {
                return Ok(false);
            }
            let n = tls.read_tls(&mut &self.sealed_in[..])?;
            self.sealed_in.advance(n);
            tls.process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}")))?;
            if n == 0 {
                // rustls takes nothing after close_notify.
                self.sealed_in.clear();
                return Ok(true);
            }
        }
    }

    /// Says the connection ends cleanly (TLS' close_notify, so the client tells it from a
    /// cut connection); sent by the next flush.
    pub(super) fn close(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
        }
    }

    /// The names of the certificate the client showed.
    pub(super) fn peer(&self) -> PeerNames {
        PeerNames::of_chain(self.tls.as_ref().and_then(|t| t.peer_certificates()))
    }

    /// Something to write: answers in `output`, or records the TLS session sends itself.
    pub(super) fn wants_write(&self, output: &BytesMut) -> bool {
        !output.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
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
            tls.writer().write_all(output)?;
            output.clear();
        }
        let mut sealed = (&mut self.sealed_out).writer();
        while tls.wants_write() {
            tls.write_tls(&mut sealed)?;
        }
        if !self.sealed_out.is_empty() {
            wr.write_all(&self.sealed_out).await?;
            self.sealed_out.clear();
        }
        Ok(())
    }
}
