//! Channels to servers, one per address, created lazily and shared by every caller.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::RwLock;
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::name_server_client::NameServerClient;
use tonic::transport::{Channel, Endpoint};

use crate::config::validate_addr;
use crate::error::{Error, Result};

/// Pull responses carry up to the broker's batch limit (4 MiB default) plus framing, and a send
/// batch may be larger still, so tonic's 4 MiB default would cut them off.
const MAX_GRPC_MESSAGE: usize = 64 << 20;

pub(crate) struct ChannelPool {
    connect_timeout: Duration,
    channels: RwLock<HashMap<String, Channel>>,
}

impl ChannelPool {
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        ChannelPool {
            connect_timeout,
            channels: RwLock::new(HashMap::new()),
        }
    }

    /// The channel to `addr`. It connects on first use and reconnects by itself after a failure.
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel> {
        if let Some(ch) = self.channels.read().get(addr) {
            return Ok(ch.clone());
        }
        validate_addr(addr)?;
        let endpoint =
            Endpoint::from_shared(format!("http://{addr}")).map_err(|e| Error::InvalidAddress {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        let channel = endpoint
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
            .keep_alive_while_idle(true)
            .connect_lazy();
        // Another caller may have raced us; keep whichever got in first.
        let mut map = self.channels.write();
        Ok(map.entry(addr.to_string()).or_insert(channel).clone())
    }

    pub(crate) fn broker(&self, addr: &str) -> Result<BrokerClient<Channel>> {
        Ok(BrokerClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE))
    }

    /// A raw gRPC client to `addr`, for calls with hand-made codecs.
    pub(crate) fn grpc(&self, addr: &str) -> Result<tonic::client::Grpc<Channel>> {
        Ok(tonic::client::Grpc::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE))
    }

    pub(crate) fn nameserver(&self, addr: &str) -> Result<NameServerClient<Channel>> {
        Ok(NameServerClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE))
    }
}
