//! Sluice client library: a [`Producer`], a [`PushConsumer`] and a [`PullConsumer`] sharing
//! consumer-group rebalancing, and an [`Admin`] client.
//!
//! Every client finds brokers through the nameservers in its [`ClientConfig`] and must be
//! created inside a tokio runtime.
//!
//! ```no_run
//! use sluice_client::{
//!     Admin, ClientConfig, ConsumerBuilder, HandlerError, Message, Producer, ReceivedMessage,
//!     StartPosition,
//! };
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ClientConfig::from_list("127.0.0.1:9876")?;
//! Admin::new(config.clone())?.create_topic("orders", 8, None).await?;
//!
//! let producer = Producer::builder(config.clone()).retries(2).build()?;
//! let receipt = producer.send(Message::new("orders", "hello").with_key("order-1")).await?;
//! println!("stored as {} at {}:{}", receipt.message_id, receipt.queue_id, receipt.queue_offset);
//! // Same key, same queue: per-key order.
//! producer.send_with_key(Message::new("orders", "paid"), "order-1").await?;
//!
//! let consumer = ConsumerBuilder::new(config, "billing")
//!     .subscribe("orders")
//!     .start_position(StartPosition::Earliest)
//!     .concurrency(16)
//!     .start_push(|m: ReceivedMessage| async move {
//!         println!("{}", String::from_utf8_lossy(m.body()));
//!         Ok::<(), HandlerError>(())
//!     })
//!     .await?;
//! // ... later: finish in-flight messages, commit, leave the group.
//! consumer.shutdown().await;
//! producer.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Delivery is at-least-once: a consumer commits a queue's offset only past messages its handler
//! finished, so a crash or a rebalance can deliver a message again. A failing handler gets its
//! message again after a backoff; moving such messages to retry and dead-letter topics comes in a
//! later issue.

pub mod admin;
mod client;
mod config;
mod consumer;
mod data_port;
mod error;
mod message;
pub mod message_id;
mod nameserver;
mod pool;
mod producer;
mod route;
mod rpc;
pub mod time;
pub mod trace;

pub use admin::{
    AclChange, Admin, BrokerStatusRow, DeadLetter, GroupDescription, GroupPolicy, GroupRow,
    HeldQueue, LagRow, MessageTrace, PolicyRow, QueueLockRow, QueueOffsetsRow, QueueResetRow,
    ReadRow, Redriven, ReplicaProgressRow, ResetPosition, TopicCreated, TopicUpdate, TopicUpdated,
    TransactionRow, UserRow,
};
pub use config::{ClientConfig, Credentials};
pub use consumer::{
    allocate_averagely, ConsumerBuilder, HandlerError, MessageHandler, OrderlyFailure,
    PullConsumer, PushConsumer, RetryLater, Selector, SendBackOutcome, StartPosition,
};
pub use error::{Error, Result};
pub use message::{Delay, Message, ReceivedMessage, SendReceipt};
pub use producer::{
    CancelOutcome, CheckedTransaction, Producer, ProducerBuilder, QueueSelector, Resolution,
    SendHandle, Transaction, TransactionChecker,
};
pub use route::{BrokerRouteInfo, MessageQueue, ReplicaInfo, TopicRouteInfo};
pub use sluice_proto::{ApiError, ErrorCode};
