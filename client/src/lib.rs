//! Sluice client library: a [`Producer`], a [`PushConsumer`] and a [`PullConsumer`] sharing
//! consumer-group rebalancing, and an [`Admin`] client.
//!
//! Every client finds brokers through the nameservers in its [`ClientConfig`] and must be
//! created inside a tokio runtime.

pub mod admin;
mod client;
mod config;
mod consumer;
mod error;
mod message;
pub mod message_id;
mod nameserver;
mod pool;
mod producer;
mod route;
mod rpc;
pub mod time;

pub use admin::{Admin, BrokerStatusRow, LagRow, TopicCreated};
pub use config::ClientConfig;
pub use consumer::{
    allocate_averagely, ConsumerBuilder, HandlerError, MessageHandler, PullConsumer, PushConsumer,
    StartPosition,
};
pub use error::{Error, Result};
pub use message::{Message, ReceivedMessage, SendReceipt};
pub use producer::{Producer, ProducerBuilder, QueueSelector, SendHandle};
pub use route::{BrokerRouteInfo, MessageQueue, ReplicaInfo, TopicRouteInfo};
pub use sluice_proto::{ApiError, ErrorCode};
