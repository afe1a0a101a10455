//! A push consumer that prints what it receives.
//!
//! cargo run -p sluice-client --example push_consumer -- NAMESERVERS TOPIC GROUP [SECONDS]
//!
//! Runs for SECONDS (default 30), then shuts down cleanly: in-flight messages finish, offsets
//! are committed and the group is left, so other members take the queues over at once.

use std::time::Duration;

use sluice_client::{ClientConfig, ConsumerBuilder, HandlerError, ReceivedMessage, StartPosition};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [nameservers, topic, group, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: push_consumer NAMESERVERS TOPIC GROUP [SECONDS]");
    };
    let seconds: f64 = rest.first().map_or(Ok(30.0), |s| s.parse())?;
    let config = ClientConfig::from_list(nameservers)?;
    let consumer = ConsumerBuilder::new(config, group.as_str())
        .subscribe(topic.as_str())
        .start_position(StartPosition::Earliest)
        .heartbeat_interval(Duration::from_secs(1))
        .rebalance_interval(Duration::from_secs(2))
        .concurrency(8)
        .start_push(|m: ReceivedMessage| async move {
            println!(
                "{}:{}@{} {}",
                m.broker_name,
                m.queue_id(),
                m.offset(),
                String::from_utf8_lossy(m.body())
            );
            Ok::<(), HandlerError>(())
        })
        .await?;
    eprintln!("consumer {} started", consumer.client_id());
    let mut last = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
    while tokio::time::Instant::now() < deadline {
        let now = consumer.assignment();
        if now != last {
            let queues: Vec<String> = now.iter().map(|q| q.to_string()).collect();
            eprintln!("assignment: [{}]", queues.join(", "));
            last = now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    consumer.shutdown().await;
    eprintln!("consumer stopped");
    Ok(())
}
