//! Channels to servers, one per address, created lazily and shared by every caller.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::RwLock;
use sluice_proto::auth::{Signer, AUTH_HEADER};
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::name_server_client::NameServerClient;
use tonic::transport::{Channel, Endpoint};

use crate::config::validate_addr;
use crate::error::{Error, Result};

/// Pull responses carry up to the broker's batch limit (4 MiB default) plus framing, and a send
/// batch may be larger still, so tonic's 4 MiB default would cut them off.
const MAX_GRPC_MESSAGE: usize = 64 << 20;

/// A channel that signs each request it carries (with the method's path) when it has a
/// signer.
#[derive(Clone)]
pub(crate) struct Transport {
    channel: Channel,
    signer: Option<Arc<Signer>>,
    /// The server as signatures name it (a broker's address; empty for a nameserver).
    target: Arc<str>,
}

type HttpRequest = http::Request<tonic::body::Body>;

impl tower_service::Service<HttpRequest> for Transport {
    type Response = <Channel as tower_service::Service<HttpRequest>>::Response;
    type Error = <Channel as tower_service::Service<HttpRequest>>::Error;
    type Future = <Channel as tower_service::Service<HttpRequest>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        tower_service::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, mut req: HttpRequest) -> Self::Future {
        // A request signed by its maker (one that wraps a secret under its nonce) stays as is.
        if let Some(s) = self
            .signer
            .as_ref()
            .filter(|_| !req.headers().contains_key(AUTH_HEADER))
        {
            let resource = sluice_proto::auth::resource(&self.target, req.uri().path());
            let header = s.sign(&resource, crate::time::now_ms());
            // Always ASCII (the access key is checked when credentials are made).
            if let Ok(v) = http::HeaderValue::from_str(&header) {
                req.headers_mut().insert(AUTH_HEADER, v);
            }
        }
        self.channel.call(req)
    }
}

pub(crate) struct ChannelPool {
    connect_timeout: Duration,
    signer: Option<Arc<Signer>>,
    tls: Option<sluice_proto::tls::net::Connector>,
    channels: RwLock<HashMap<String, Channel>>,
}

impl ChannelPool {
    pub(crate) fn new(
        connect_timeout: Duration,
        signer: Option<Arc<Signer>>,
        tls: Option<sluice_proto::tls::net::Connector>,
    ) -> Self {
        ChannelPool {
            connect_timeout,
            signer,
            tls,
            channels: RwLock::new(HashMap::new()),
        }
    }

    /// The transport to the broker at `addr`: its channel, signing as this pool's user.
    pub(crate) fn transport(&self, addr: &str) -> Result<Transport> {
        Ok(Transport {
            channel: self.channel(addr)?,
            signer: self.signer.clone(),
            target: Arc::from(addr),
        })
    }

    /// The channel to `addr`. It connects on first use and reconnects by itself after a failure.
    fn channel(&self, addr: &str) -> Result<Channel> {
        if let Some(ch) = self.channels.read().get(addr) {
            return Ok(ch.clone());
        }
        validate_addr(addr)?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| {
            Error::InvalidAddress {
                addr: addr.to_string(),
                reason: e.to_string(),
            }
        })?;
        let endpoint = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // HTTP/2's default 64 KiB windows make batched sends and large pull answers on one
            // connection wait a round trip per window update.
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(32 << 20)
            // Let the broker send a pull answer in large DATA frames: each 16 KiB frame (the
            // default) is a separate read, parse and copy on this side.
            .max_frame_size(1u32 << 20)
            // Notice dead peers on idle connections (a long poll can sit quiet for 15 s).
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = match &self.tls {
            Some(c) => endpoint.connect_with_connector_lazy(c.clone()),
            None => endpoint.connect_lazy(),
        };
        // Another caller may have raced us; keep whichever got in first.
        let mut map = self.channels.write();
        Ok(map.entry(addr.to_string()).or_insert(channel).clone())
    }

    pub(crate) fn broker(&self, addr: &str) -> Result<BrokerClient<Transport>> {
        Ok(BrokerClient::new(self.transport(addr)?)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE))
    }

    /// A raw gRPC client to `addr`, for calls with hand-made codecs.
    pub(crate) fn grpc(&self, addr: &str) -> Result<tonic::client::Grpc<Transport>> {
        Ok(tonic::client::Grpc::new(self.transport(addr)?)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE))
    }

    pub(crate) fn nameserver(&self, addr: &str) -> Result<NameServerClient<Transport>> {
        // Nameserver signatures name no server: a nameserver does not know every address
        // clients reach it at.
        let transport = Transport {
            target: Arc::from(""),
            ..self.transport(addr)?
        };
        Ok(NameServerClient::new(transport)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE))
    }
}
