//! The gRPC side of authentication: a tower layer in front of every service that checks the
//! `authorization` header against the method's path and hands the handlers a [`Principal`]
//! (a request extension). A refused request never reaches a handler.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{ready, Either, Ready};
use sluice_proto::tls::identity::PeerNames;
use sluice_proto::tls::net::ConnInfo;

use super::{Access, Principal};

#[derive(Clone)]
pub struct AuthLayer {
    access: Arc<Access>,
}

impl AuthLayer {
    pub fn new(access: Arc<Access>) -> AuthLayer {
        AuthLayer { access }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            access: self.access.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    access: Arc<Access>,
}

impl<S, B> tower_service::Service<http::Request<B>> for Authenticated<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let conn = req.extensions().get::<ConnInfo>();
        let peer = conn.and_then(ConnInfo::remote_addr);
        let names = conn.map(|c| c.peer.clone()).unwrap_or_default();
        let header = req
            .headers()
            .get(sluice_proto::auth::AUTH_HEADER)
            .map(http::HeaderValue::as_bytes);
        match self.access.authenticate(req.uri().path(), header, peer) {
            Ok(p) => {
                req.extensions_mut().insert::<Principal>(p);
                // For the handlers that check who a certificate names (Raft between replicas).
                req.extensions_mut().insert::<PeerNames>(names);
                Either::Left(self.inner.call(req))
            }
            Err(e) => Either::Right(ready(Ok(tonic::Status::from(e).into_http()))),
        }
    }
}
