//! The load under attack: producers sending unique messages one at a time (each waits for its
//! ack, so a producer's acks are ordered; with `--orderly` each under its own key) and the
//! members of one consumer group, all reporting to the ledger.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_client::{ClientConfig, Message, Producer, PullConsumer, StartPosition};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::features::{FEvent, Kind, Mix};
use crate::ledger::{Event, MsgId, Position};
use crate::txmix::Fate;

/// What every load task needs to know.
#[derive(Clone)]
pub struct Load {
    pub run: Arc<str>,
    pub topic: Arc<str>,
    pub body_size: usize,
    /// Broker group name -> index used in positions.
    pub groups: Arc<HashMap<String, u16>>,
    pub events: mpsc::UnboundedSender<Event>,
    /// Delayed and failing messages (none when the knobs are off).
    pub mix: Mix,
    pub features: mpsc::UnboundedSender<FEvent>,
    /// `--orderly`: each producer sends with its own key, so its messages share one queue.
    pub orderly: bool,
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
        let key = load.orderly.then(|| crate::orderly::key(index));
        let mut seq = 0u64;
        while !*stop.borrow() {
            seq += 1;
            let id = MsgId {
                producer: index,
                seq,
            };
            let (kind, delay) = load.mix.draw();
            let mut message = Message::new(
                load.topic.to_string(),
                id.body_tagged(&load.run, &kind.tag(), load.body_size),
            );
            if kind == Kind::Delayed {
                message = message.with_delay(delay);
            }
            let started = Instant::now();
            if let Kind::Tx(fate) = kind {
                let sent = tokio::select! {
                    r = send_in_transaction(&load, &producer, id, fate, message) => r,
                    _ = stop.changed() => break,
                };
                match sent {
                    Ok(Some(r)) => match load.group(&r.broker_name) {
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
                        None => {
                            tracing::warn!(broker = %r.broker_name, "ack from an unknown group")
                        }
                    },
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(producer = index, error = %e, "transactional send failed");
                        let _ = load.events.send(Event::SendFailed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                continue;
            }
            let send = async {
                match &key {
                    Some(k) => producer.send_with_key(message, k).await,
                    None => producer.send(message).await,
                }
            };
            let result = tokio::select! {
                r = send => r,
                // A send cut short here may still be stored: it counts as unacknowledged.
                _ = stop.changed() => break,
            };
            match result {
                Ok(r) if kind == Kind::Delayed => {
                    // Acknowledged on the timer queue: its position comes when it is due.
                    let _ = load.features.send(FEvent::DelayedAcked {
                        id,
                        due_ms: r.deliver_at_ms.unwrap_or(0),
                    });
                }
                Ok(r) => match load.group(&r.broker_name) {
                    Some(group) => {
                        if let Kind::Failing(fails) = kind {
                            let _ = load.features.send(FEvent::FailingAcked { id, fails });
                        }
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

pub fn producer(
    config: &ClientConfig,
    send_timeout: Duration,
    idempotence: bool,
    run: &str,
) -> sluice_client::Result<Producer> {
    Producer::builder(config.clone())
        .retries(4)
        .send_timeout(send_timeout)
        .idempotence(idempotence)
        .producer_group(&format!("chaos-{run}"))
        .transaction_checker(Arc::new(crate::txmix::checker(run.to_string())))
        .build()
}

/// One message in a transaction with its fate; the commit's receipt when the producer
/// committed it (an ordinary acknowledged message from then on).
async fn send_in_transaction(
    load: &Load,
    producer: &Producer,
    id: MsgId,
    fate: Fate,
    message: Message,
) -> sluice_client::Result<Option<sluice_client::SendReceipt>> {
    let mut tx = producer.begin_transaction()?;
    tx.send(message).await?;
    match fate {
        Fate::Commit => match tx.commit().await {
            Ok(mut r) => {
                let _ = load.features.send(FEvent::TxSent {
                    id,
                    fate,
                    committed: Some(true),
                });
                Ok(r.pop())
            }
            Err(e) => {
                // Maybe committed after all (or by the checker): not acknowledged.
                let _ = load.features.send(FEvent::TxSent {
                    id,
                    fate,
                    committed: Some(false),
                });
                Err(e)
            }
        },
        Fate::Rollback => {
            // Recorded before the rollback: it must never be delivered, whatever the
            // rollback's own outcome (the checker rolls it back otherwise).
            let _ = load.features.send(FEvent::TxSent {
                id,
                fate,
                committed: None,
            });
            tx.rollback().await.map(|()| None)
        }
        Fate::AbandonCommit | Fate::AbandonRollback => {
            let _ = load.features.send(FEvent::TxSent {
                id,
                fate,
                committed: None,
            });
            drop(tx);
            Ok(None)
        }
    }
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
                let from_retry = m.topic() != &*load.topic;
                match Kind::of(&load.run, m.body()) {
                    Kind::Tx(fate) if fate != Fate::Commit => {
                        let _ = load.features.send(FEvent::TxDelivered { id });
                        continue;
                    }
                    Kind::Delayed if !from_retry => {
                        let props = &m.message.properties;
                        let num = |k: &str| props.get(k).and_then(|v| v.parse::<i64>().ok());
                        let _ = load.features.send(FEvent::DelayedDelivered {
                            id,
                            store_ms: m.message.store_timestamp_ms,
                            due_ms: num("__DELIVER_AT").unwrap_or(i64::MAX),
                            timer_of: props.get("__TIMER_OF").cloned().unwrap_or_default(),
                            at: (group, m.queue_id(), m.offset()),
                        });
                        continue;
                    }
                    Kind::Failing(fails) => {
                        fail_or_finish(&load, &consumer, &m, id, fails).await;
                        if from_retry {
                            continue;
                        }
                    }
                    _ => {}
                }
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

/// A failing message: sent back (nack) while its attempts are below its failure count, else
/// finished. The nack is retried through a failover; it must succeed before the next poll
/// (which acknowledges this one).
async fn fail_or_finish(
    load: &Load,
    consumer: &PullConsumer,
    m: &sluice_client::ReceivedMessage,
    id: MsgId,
    fails: u32,
) {
    let attempt = m.reconsume_times();
    if attempt >= fails {
        let _ = load.features.send(FEvent::Attempt {
            id,
            attempt,
            succeeded: true,
        });
        return;
    }
    let _ = load.features.send(FEvent::Attempt {
        id,
        attempt,
        succeeded: false,
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match consumer
            .nack(m, None, &format!("chaos failure {attempt}"))
            .await
        {
            Ok(sluice_client::SendBackOutcome::DeadLetter { attempts }) => {
                let _ = load.features.send(FEvent::DeadLettered { id, attempts });
                return;
            }
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "nack failed; retrying");
                // Not a synchronisation: a failover takes about a second.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, %id, "nack kept failing");
                let _ = load.features.send(FEvent::NackFailed { id });
                return;
            }
        }
    }
}
