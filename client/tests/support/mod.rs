//! In-process fake nameserver and brokers on 127.0.0.1:0 for client tests. They implement the
//! documented semantics of the API in memory (append, long-poll pull, offsets, group
//! membership, route registration) and let tests inject failures.
#![allow(dead_code)]

mod broker;
mod nameserver;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tonic::{Response, Status};

#[allow(unused_imports)]
pub use broker::{dead_address, start_broker};
pub use nameserver::FakeNameServer;

pub(crate) type Res<T> = Result<Response<T>, Status>;

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub(crate) async fn bind() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// Polls `cond` every 20 ms until it holds; panics after `timeout`.
pub async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut cond: F) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
