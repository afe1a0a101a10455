//! The load under attack: producers sending unique messages one at a time (each waits for its
//! ack, so a producer's acks are ordered) and the members of one consumer group, all reporting
//! to the ledger.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_client::{ClientConfig, Message, Producer, PullConsumer, StartPosition};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::ledger::{Event, MsgId, Position};

/// What every load task needs to know.
#[derive(Clone)]
pub struct Load {
    pub run: Arc<str>,
    pub topic: Arc<str>,
    pub body_size: usize,
    /// Broker group name -> index used in positions.
    pub groups: Arc<HashMap<String, u16>>,
    pub events: mpsc::UnboundedSender<Event>,
}

impl Load {
    fn group(&self, name: &str) -> Option<u16> {
        self.groups.get(name).copied()
    }
}

/// Sends until `stop` turns true; returns how many sends it started.
pub fn spawn_producer(
    load: Load,
    producer: Producer,
    index: u32,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut seq = 0u64;
        while !*stop.borrow() {
            seq += 1;
            let id = MsgId {
                producer: index,
                seq,
            };
            let message = Message::new(load.topic.to_string(), id.body(&load.run, load.body_size));
            let started = Instant::now();
            let result = tokio::select! {
                r = producer.send(message) => r,
                // A send cut short here may still be stored: it counts as unacknowledged.
                _ = stop.changed() => break,
            };
            match result {
                Ok(r) => match load.group(&r.broker_name) {
                    Some(group) => {
                        let _ = load.events.send(Event::Ack {
                            id,
                            at: Position {
                                group,
                                queue: r.queue_id,
                                offset: r.queue_offset,
                            },
                            started,
                            acked: Instant::now(),
                        });
                    }
                    None => tracing::warn!(broker = %r.broker_name, "ack from an unknown group"),
                },
                Err(e) => {
                    tracing::debug!(producer = index, error = %e, "send failed");
                    let _ = load.events.send(Event::SendFailed);
                    // Not a synchronisation: keeps a producer from spinning on a dead group
                    // once the library's own retries are spent.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        producer.shutdown().await;
        seq
    })
}

pub fn producer(config: &ClientConfig, send_timeout: Duration) -> sluice_client::Result<Producer> {
    Producer::builder(config.clone())
        .retries(4)
        .send_timeout(send_timeout)
        .build()
}

/// Starts one member of `group` reading the topic from the earliest message.
pub async fn consumer(
    config: &ClientConfig,
    group: &str,
    topic: &str,
) -> sluice_client::Result<PullConsumer> {
    PullConsumer::builder(config.clone(), group)
        .subscribe(topic)
        .start_position(StartPosition::Earliest)
        .heartbeat_interval(Duration::from_millis(500))
        .rebalance_interval(Duration::from_secs(1))
        .commit_interval(Duration::from_millis(500))
        .poll_timeout(Duration::from_secs(1))
        .start_pull()
        .await
}

/// Polls until `stop` turns true, reporting every delivery.
pub fn spawn_consumer(
    load: Load,
    mut consumer: PullConsumer,
    member: u32,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while !*stop.borrow() {
            let polled = tokio::select! {
                r = consumer.poll(512, Duration::from_millis(200)) => r,
                _ = stop.changed() => break,
            };
            let messages = match polled {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(member, error = %e, "poll failed");
                    let _ = load.events.send(Event::ConsumeError);
                    // As above: no spinning on a failing poll.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            for m in messages {
                let (Some(id), Some(group)) = (
                    MsgId::parse(&load.run, m.body()),
                    load.group(&m.broker_name),
                ) else {
                    let _ = load.events.send(Event::Foreign);
                    continue;
                };
                let _ = load.events.send(Event::Delivery {
                    member,
                    id,
                    at: Position {
                        group,
                        queue: m.queue_id(),
                        offset: m.offset(),
                    },
                });
            }
        }
        consumer.shutdown().await;
    })
}
