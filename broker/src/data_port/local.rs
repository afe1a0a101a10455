//! Where a standalone broker's data-port connections run: beside its commit-log writer, and
//! how an idle latency-bound connection reads its socket there without sleeping.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Served;

/// Where a standalone broker's connections run, and where their sends may.
#[derive(Clone)]
pub(super) struct Local {
    /// The store writer's runtime: connections run here.
    pub(super) rt: tokio::runtime::Handle,
    /// The broker's multi-threaded runtime, where connections that pipeline batches move.
    pub(super) workers: tokio::runtime::Handle,
    /// Sends in flight of the connections on the writer's thread (a moved connection's count
    /// down as they finish).
    pub(super) running: Arc<AtomicUsize>,
    pub(super) busy_poll: Duration,
}

/// The store writer's runtime, where a standalone broker serves its data-port connections.
pub struct WriterThread {
    pub runtime: tokio::runtime::Handle,
    /// How long an idle connection whose client sends one at a time reads its socket without
    /// sleeping (`data_port_busy_poll_us`; zero: never).
    pub busy_poll: Duration,
}

/// What [`busy_poll_read`] found.
pub(super) enum Polled {
    Read,
    Closed,
    Nothing,
}

/// Reads `rd` without sleeping for up to `limit`, yielding to the thread's other tasks between
/// tries. A thread asleep in `epoll_wait` costs every request that wakes it an inter-processor
/// interrupt and, on a VM, waking a halted vCPU: most of the round trip of one small send on
/// loopback (p50 ~175 -> ~105 us on the 2-core VM of docs/benchmarks.md).
pub(super) async fn busy_poll_read(
    rd: &tokio::net::tcp::OwnedReadHalf,
    st: &mut Served,
    limit: Duration,
) -> std::io::Result<Polled> {
    if limit.is_zero() {
        return Ok(Polled::Nothing);
    }
    let until = std::time::Instant::now() + limit;
    loop {
        match rd.try_read_buf(st.wire.read_into(&mut st.input)) {
            Ok(0) => return Ok(Polled::Closed),
            Ok(_) => {
                return Ok(match st.wire.open(&mut st.input)? {
                    true => Polled::Closed,
                    false => Polled::Read,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= until {
                    return Ok(Polled::Nothing);
                }
                tokio::task::yield_now().await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Counts a standalone broker's send in flight while it lives.
pub(super) struct Counted(pub(super) Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
