//! `sluice bench produce|consume|e2e`: throughput and latency against a running cluster.

pub mod args;
mod consume;
mod gaps;
pub mod modes;
mod payload;
mod produce;
mod progress;
mod stats;
pub mod timers;
mod workers;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sluice_client::{Admin, ClientConfig, ErrorCode};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::output::print_json;
use args::{Amount, Plan, Workload};
use consume::{ReceiveOutcome, ReceiveShared};
use gaps::GapClock;
use produce::{SendOutcome, SendShared};
use progress::Counters;
use stats::{BrokerSettings, Report, RunSettings, Section, Throughput};
use workers::{Gate, Ready, Worker};

/// How long workers may take to connect, and an e2e run's consumers to own every queue.
const SETUP_WAIT: Duration = Duration::from_secs(60);

pub async fn bench(config: ClientConfig, plan: Plan) -> anyhow::Result<()> {
    let admin = Admin::new(config.clone())?;
    let queues = ensure_topic(&admin, &plan).await?;
    let broker = broker_settings(&admin).await;
    let counters = Arc::new(Counters::default());
    let (gate_tx, gate) = watch::channel(Gate::Closed);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Ready>();
    let setup_started = Instant::now();

    // Consumers first: they must own every queue before the clock starts (and, e2e, before the
    // first message is sent). What they fetch meanwhile (at most their buffers) is delivered
    // after the start.
    let mut consumers: Vec<Worker<ReceiveOutcome>> = Vec::new();
    let owned: Arc<Vec<AtomicUsize>> = Arc::new(
        (0..plan.receive.as_ref().map_or(0, |r| r.consumers))
            .map(|_| AtomicUsize::new(0))
            .collect(),
    );
    let receive_shared = plan.receive.as_ref().map(|rp| {
        Arc::new(ReceiveShared {
            plan: rp.clone(),
            amount: plan.amount,
            counters: counters.clone(),
            gaps: GapClock::new(setup_started),
            sending_over: (plan.workload == Workload::E2e).then(|| AtomicBool::new(false)),
        })
    });
    if let Some(shared) = &receive_shared {
        let group = shared.plan.group.clone().unwrap_or_else(|| {
            format!("bench-{}-{:08x}", std::process::id(), rand::random::<u32>())
        });
        for i in 0..shared.plan.consumers {
            let (config, topic, group) = (config.clone(), plan.topic.clone(), group.clone());
            let (shared, owned, ready, mut gate) = (
                shared.clone(),
                owned.clone(),
                ready_tx.clone(),
                gate.clone(),
            );
            consumers.push(workers::spawn(
                format!("bench-consumer-{i}"),
                move || async move {
                    let consumer = match consume::consumer(&config, &topic, &group, &shared).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready.send(Err(format!("starting a consumer: {e}")));
                            anyhow::bail!("starting a consumer: {e}");
                        }
                    };
                    let _ = ready.send(Ok(()));
                    // Tell the main task which queues this consumer owns until the run starts.
                    let opened = loop {
                        owned[i].store(consumer.assignment().len(), Ordering::Relaxed);
                        tokio::select! {
                            r = workers::wait_open(&mut gate) => break r,
                            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                        }
                    };
                    let (_, deadline) = match opened {
                        Ok(o) => o,
                        Err(e) => {
                            consumer.shutdown().await;
                            return Err(e);
                        }
                    };
                    Ok(consume::run(consumer, shared, deadline).await)
                },
            )?);
        }
    }

    let send_shared = plan.send.as_ref().map(|sp| {
        Arc::new(SendShared {
            topic: plan.topic.clone(),
            size: plan.size,
            plan: sp.clone(),
            amount: plan.amount,
            tickets: AtomicU64::new(0),
            counters: counters.clone(),
            gaps: GapClock::new(setup_started),
            built: AtomicU64::new(0),
        })
    });
    let mut producers: Vec<Worker<SendOutcome>> = Vec::new();
    if let Some(shared) = &send_shared {
        for i in 0..shared.plan.producers {
            let config = config.clone();
            let (shared, ready, mut gate) = (shared.clone(), ready_tx.clone(), gate.clone());
            producers.push(workers::spawn(
                format!("bench-producer-{i}"),
                move || async move {
                    // Route and connections before the clock starts.
                    let setup = async {
                        let p = produce::producer(&config, &shared.plan)?;
                        p.prepare(&shared.topic).await?;
                        Ok::<_, sluice_client::Error>(p)
                    };
                    let producer = match setup.await {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = ready.send(Err(format!("preparing a producer: {e}")));
                            anyhow::bail!("preparing a producer: {e}");
                        }
                    };
                    let _ = ready.send(Ok(()));
                    let (start, deadline) = match workers::wait_open(&mut gate).await {
                        Ok(o) => o,
                        Err(e) => {
                            producer.shutdown().await;
                            return Err(e);
                        }
                    };
                    Ok(produce::run(producer, shared, start, deadline).await)
                },
            )?);
        }
    }
    drop(ready_tx);

    let setup = async {
        workers::all_ready(&mut ready_rx, consumers.len() + producers.len(), SETUP_WAIT).await?;
        if !owned.is_empty() {
            // Every queue has its consumer before the clock starts.
            wait_assigned(&owned, queues).await?;
        }
        anyhow::Ok(())
    };
    if let Err(e) = setup.await {
        let _ = gate_tx.send(Gate::Abort);
        return Err(e);
    }

    let start = Instant::now();
    let deadline = match plan.amount {
        Amount::Duration(d) => Some(start + d),
        _ => None,
    };
    let _ = gate_tx.send(Gate::Open { start, deadline });
    let progress = tokio::spawn(progress::report(counters.clone(), plan.size, start));
    let stopper = counters.clone();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: finishing what is in flight");
            stopper.stop.store(true, Ordering::Relaxed);
        }
    });

    let mut sent = SendOutcome::default();
    let mut send_elapsed = Duration::ZERO;
    for w in producers {
        sent.merge(w.join().await?);
    }
    if send_shared.is_some() {
        send_elapsed = start.elapsed();
    }
    if let Some(over) = receive_shared
        .as_ref()
        .and_then(|r| r.sending_over.as_ref())
    {
        over.store(true, Ordering::Release);
    }
    let mut received = ReceiveOutcome::default();
    for w in consumers {
        received.merge(w.join().await?);
    }
    counters.stop.store(true, Ordering::Relaxed);
    progress.abort();
    ctrl_c.abort();

    let send_plan = plan.send.clone();
    let report = Report {
        settings: RunSettings {
            workload: plan.workload.name().to_string(),
            topic: plan.topic.clone(),
            queues,
            message_size: plan.size,
            producers: send_plan.as_ref().map_or(0, |s| s.producers),
            consumers: plan.receive.as_ref().map_or(0, |r| r.consumers),
            in_flight: send_plan.as_ref().map_or(0, |s| s.in_flight),
            batching: send_plan.as_ref().is_some_and(|s| s.batching),
            send_batch: send_plan.as_ref().and_then(|s| s.send_batch),
            batch_max_messages: send_plan.as_ref().map_or(0, |s| s.batch_size),
            batch_max_bytes: send_plan.as_ref().map_or(0, |s| s.batch_bytes),
            linger_ms: send_plan
                .as_ref()
                .map_or(0.0, |s| s.linger.as_secs_f64() * 1000.0),
            pull_batch: plan.receive.as_ref().map_or(0, |r| r.pull_batch),
            consume_mode: plan.receive.as_ref().map_or("pull", |r| r.mode.name()),
            rate: send_plan.as_ref().and_then(|s| s.rate),
        },
        broker,
        produce: send_shared.as_ref().map(|shared| {
            let kind = if shared.plan.send_batch.is_some() {
                "send to ack, per batch"
            } else if shared.plan.in_flight == 1 {
                "send to ack, one at a time"
            } else {
                "send to ack, per message"
            };
            Section {
                throughput: Throughput::new(
                    sent.ok,
                    sent.failed,
                    sent.ok * plan.size as u64,
                    send_elapsed,
                ),
                latency_us: sent.latencies.summary(kind),
                max_gap_ms: shared.gaps.longest().as_secs_f64() * 1000.0,
                first_error: sent.first_error.clone(),
            }
        }),
        consume: receive_shared.as_ref().map(|shared| {
            // Up to the last delivery: the idle wait at the end is not consumption time.
            let end = shared.gaps.last().unwrap_or(start);
            let kind = if received.unstamped > 0 {
                format!(
                    "send to delivery, per message ({} without a send time)",
                    received.unstamped
                )
            } else {
                "send to delivery, per message".to_string()
            };
            Section {
                throughput: Throughput::new(
                    received.messages,
                    0,
                    received.bytes,
                    end.saturating_duration_since(start),
                ),
                latency_us: received.latencies.summary(&kind),
                max_gap_ms: shared.gaps.longest().as_secs_f64() * 1000.0,
                first_error: received.error.clone(),
            }
        }),
    };
    if plan.json {
        print_json(&report)?;
    } else {
        print!("{}", report.render());
    }
    if let Some(e) = &received.error {
        anyhow::bail!("consuming failed: {e}");
    }
    if sent.ok == 0 && sent.failed > 0 {
        anyhow::bail!(
            "every send failed; first error: {}",
            sent.first_error.unwrap_or_default()
        );
    }
    Ok(())
}

/// Creates the topic if it does not exist; returns its queue count (all broker groups).
async fn ensure_topic(admin: &Admin, plan: &Plan) -> anyhow::Result<u32> {
    let route = match admin.topic_route(&plan.topic).await {
        Ok(r) => r,
        Err(e) if e.code() == Some(ErrorCode::TopicNotFound) => {
            if plan.workload == Workload::Consume {
                anyhow::bail!("topic {} does not exist: nothing to consume", plan.topic);
            }
            admin
                .create_topic(&plan.topic, plan.queues, None)
                .await
                .with_context(|| format!("creating topic {}", plan.topic))?;
            admin.topic_route(&plan.topic).await?
        }
        Err(e) => return Err(e).context("looking up the topic"),
    };
    Ok(route.readable_queues().len() as u32)
}

async fn broker_settings(admin: &Admin) -> BrokerSettings {
    let rows = match admin.cluster_status().await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the brokers' settings");
            return BrokerSettings::default();
        }
    };
    let masters: Vec<_> = rows.iter().filter(|r| r.role == "MASTER").collect();
    BrokerSettings {
        brokers: masters.len(),
        flush_mode: masters.iter().find_map(|r| r.flush_mode.clone()),
        replicated: masters.iter().any(|r| r.raft_role.is_some()),
        ack_policy: masters.iter().find_map(|r| r.ack_policy.clone()),
    }
}

/// Waits (bounded) until the group's consumers together own every queue and, when there are
/// enough queues, each owns some: the assignment has settled.
async fn wait_assigned(owned: &[AtomicUsize], queues: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETUP_WAIT;
    loop {
        let counts: Vec<usize> = owned.iter().map(|o| o.load(Ordering::Relaxed)).collect();
        let total: usize = counts.iter().sum();
        let spread = counts.len() > queues as usize || counts.iter().all(|&c| c > 0);
        if total >= queues as usize && spread {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "consumers own {total} of {queues} queues after {}s",
                SETUP_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
