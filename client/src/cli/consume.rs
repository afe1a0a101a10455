//! `sluice consume`: print messages of a group's share of a topic, commit, leave.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use sluice_client::{
    ClientConfig, ConsumerBuilder, OrderlyFailure, ReceivedMessage, Selector, StartPosition,
};
use tokio::time::Instant;

use super::args::{ConsumeArgs, From};
use super::output::{message_line, print_json, MessageView};

#[derive(Serialize)]
struct ConsumedDoc {
    count: usize,
    messages: Vec<MessageView>,
}

/// Longest single poll, so the loop notices --idle-timeout and Ctrl-C promptly.
const POLL_SLICE: Duration = Duration::from_millis(500);

pub async fn consume(config: ClientConfig, args: ConsumeArgs) -> anyhow::Result<()> {
    let start = match args.from {
        From::Earliest => StartPosition::Earliest,
        From::Latest => StartPosition::Latest,
        From::Time(ms) => StartPosition::Timestamp(ms),
    };
    let idle = match args.idle_timeout {
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => anyhow::bail!("--idle-timeout must be a positive number of seconds, not {s}"),
        None => None,
    };
    let builder = ConsumerBuilder::new(config, args.group.clone());
    let builder = match (&args.tag, &args.sql) {
        (Some(t), _) => builder.subscribe_with(args.topic.clone(), Selector::tag(t)),
        (None, Some(q)) => builder.subscribe_with(args.topic.clone(), Selector::sql(q)),
        (None, None) => builder.subscribe(args.topic.clone()),
    };
    let builder = match (args.broadcast, &args.instance) {
        (false, _) => builder,
        (true, Some(id)) => builder.broadcast(id.clone()),
        (true, None) => builder.broadcast(host_instance()),
    };
    let builder = builder.start_position(start).trace(args.trace);
    if args.orderly {
        return consume_orderly(builder, &args, idle).await;
    }
    let mut consumer = builder
        .auto_commit(false)
        .poll_timeout(Duration::from_secs(5))
        .start_pull()
        .await?;
    let mut received: u64 = 0;
    let mut views = Vec::new();
    let mut last_activity = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let outcome: anyhow::Result<()> = loop {
        let want = match args.max {
            Some(max) if received >= max => break Ok(()),
            Some(max) => (max - received).min(256) as usize,
            None => 256,
        };
        if idle.is_some_and(|i| last_activity.elapsed() >= i) {
            break Ok(());
        }
        let slice = idle.map_or(POLL_SLICE, |i| {
            i.saturating_sub(last_activity.elapsed()).min(POLL_SLICE)
        });
        // `poll` is cancel-safe: nothing is taken from the buffer until it returns.
        let batch = tokio::select! {
            r = consumer.poll(want, slice) => r,
            _ = &mut ctrl_c => break Ok(()),
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => break Err(e.into()),
        };
        if batch.is_empty() {
            continue;
        }
        last_activity = Instant::now();
        received += batch.len() as u64;
        if args.out.json {
            views.extend(batch.iter().map(MessageView::from));
        } else if let Err(e) = print_batch(&batch) {
            // Not printed, so not committed: the group gets these messages again.
            break Err(anyhow::Error::new(e).context("cannot write to stdout"));
        }
        if let Err(e) = consumer.commit().await {
            tracing::warn!(error = %e, "commit failed; will retry");
        }
    };
    let committed = match outcome {
        Ok(()) => consumer.commit().await,
        Err(_) => Ok(()),
    };
    consumer.shutdown().await;
    outcome?;
    committed.map_err(|e| anyhow::anyhow!("final offset commit failed: {e}"))?;
    report(&args, views, received)
}

/// The JSON document (with --json) and the count on stderr.
fn report(args: &ConsumeArgs, views: Vec<MessageView>, received: u64) -> anyhow::Result<()> {
    if args.out.json {
        print_json(&ConsumedDoc {
            count: views.len(),
            messages: views,
        })?;
    }
    eprintln!("consumed {received} message(s)");
    Ok(())
}

/// The host name as an instance id: characters a group name cannot hold become `-`.
fn host_instance() -> String {
    sluice_client::message_id::hostname()
        .chars()
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-' => c,
            _ => '-',
        })
        .collect()
}

fn print_batch(batch: &[sluice_client::ReceivedMessage]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for m in batch {
        writeln!(out, "{}", message_line(m))?;
    }
    out.flush()
}

/// `--orderly`: a push consumer whose handler hands each message here and waits until it is
/// printed, so the queue's next one starts only then. Past `--max`, handlers are left waiting:
/// their messages are not committed and go to the group's next consumer.
async fn consume_orderly(
    builder: ConsumerBuilder,
    args: &ConsumeArgs,
    idle: Option<Duration>,
) -> anyhow::Result<()> {
    type Printed = tokio::sync::oneshot::Sender<()>;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(ReceivedMessage, Printed)>(1);
    let consumer = builder
        .orderly(OrderlyFailure::Block)
        .drain_timeout(Duration::from_secs(1))
        .start_push(move |m: ReceivedMessage| {
            let tx = tx.clone();
            async move {
                let (done, printed) = tokio::sync::oneshot::channel();
                if tx.send((m, done)).await.is_ok() && printed.await.is_ok() {
                    return Ok::<(), std::convert::Infallible>(());
                }
                // Not printed: never finished here.
                std::future::pending().await
            }
        })
        .await?;
    let mut received: u64 = 0;
    let mut views = Vec::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let outcome: anyhow::Result<()> = loop {
        if args.max.is_some_and(|max| received >= max) {
            break Ok(());
        }
        let next = tokio::select! {
            m = rx.recv() => m,
            _ = &mut ctrl_c => break Ok(()),
            _ = tokio::time::sleep(idle.unwrap_or(Duration::MAX)), if idle.is_some() => break Ok(()),
        };
        let Some((m, printed)) = next else {
            break Ok(());
        };
        received += 1;
        if args.out.json {
            views.push(MessageView::from(&m));
        } else if let Err(e) = print_batch(std::slice::from_ref(&m)) {
            break Err(anyhow::Error::new(e).context("cannot write to stdout"));
        }
        let _ = printed.send(());
    };
    drop(rx);
    consumer.shutdown().await;
    outcome?;
    report(args, views, received)
}
