// TEMPORARY latency probe (deleted before hand-off).
use sluice_client::{ClientConfig, Message, Producer};
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::*;
use std::time::{Duration, Instant};

fn pr(name: &str, h: &hdrhistogram::Histogram<u64>) {
    println!(
        "{name}: n={} p50={} p90={} p99={} max={}",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.max()
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let broker = a[1].clone();
    let ns = a[2].clone();
    let n: usize = a[3].parse().unwrap();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{broker}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    let mut c = BrokerClient::new(ch);
    let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for _ in 0..n {
        let t = Instant::now();
        c.query_offset(QueryOffsetRequest {
            group: "g".into(),
            topic: "base".into(),
            queue_id: 0,
        })
        .await
        .unwrap();
        h.record(t.elapsed().as_micros() as u64).unwrap();
    }
    pr("query_offset", &h);
    let body = bytes::Bytes::from(vec![b'x'; 1024]);
    let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for i in 0..n {
        let t = Instant::now();
        c.send(SendRequest {
            topic: "base".into(),
            queue_id: (i % 8) as u32,
            messages: vec![sluice_proto::v1::Message {
                body: body.clone(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
        h.record(t.elapsed().as_micros() as u64).unwrap();
    }
    pr("raw send", &h);
    let p = Producer::builder(ClientConfig::from_list(&ns).unwrap())
        .build()
        .unwrap();
    let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for _ in 0..n {
        let t = Instant::now();
        p.send(Message::new("base", body.clone())).await.unwrap();
        h.record(t.elapsed().as_micros() as u64).unwrap();
    }
    pr("producer send", &h);
    let _ = Duration::ZERO;
}
