// TEMPORARY probe (deleted before hand-off).
use std::time::Instant;
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::*;

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let broker = a[1].clone();
    let n: usize = a[2].parse().unwrap();
    let batch: usize = a[3].parse().unwrap();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{broker}")).unwrap().tcp_nodelay(true).connect().await.unwrap();
    let mut c = BrokerClient::new(ch);
    let size: usize = a[4].parse().unwrap(); let body = bytes::Bytes::from(vec![b'x'; size]);
    let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let msgs = (0..batch).map(|j| sluice_proto::v1::Message { body: body.clone(), message_id: format!("{i:016x}{j:016x}"), born_host: "h".into(), ..Default::default() }).collect();
        c.send(SendRequest { topic: "base".into(), queue_id: (i % 8) as u32, messages: msgs }).await.unwrap();
        h.record(t.elapsed().as_micros() as u64).unwrap();
    }
    let el = t0.elapsed().as_secs_f64();
    println!("batch {batch}: n={} p50={} p90={} p99={} max={}  {:.0} msgs/s", h.len(), h.value_at_quantile(0.5), h.value_at_quantile(0.9), h.value_at_quantile(0.99), h.max(), (n*batch) as f64 / el);
}
