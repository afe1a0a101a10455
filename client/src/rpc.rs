//! One place that turns a gRPC call into a bounded, typed result.

use std::future::Future;
use std::time::Duration;

use crate::error::{Error, Result};

/// Builds a request that tells the server our deadline (`grpc-timeout`).
pub(crate) fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.set_timeout(timeout);
    req
}

/// Awaits a call for at most `timeout`. Dropping the call on timeout resets its HTTP/2 stream,
/// so the server stops working on it.
pub(crate) async fn call<T, F>(addr: &str, timeout: Duration, fut: F) -> Result<T>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(match Error::from_status(addr, status) {
            Error::Timeout { addr, .. } => Error::Timeout { addr, timeout },
            e => e,
        }),
        Err(_) => Err(Error::Timeout {
            addr: addr.to_string(),
            timeout,
        }),
    }
}
