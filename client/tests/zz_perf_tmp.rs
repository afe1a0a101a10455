mod support;
use std::time::{Duration, Instant};
use futures::stream::{FuturesUnordered, StreamExt};
use sluice_client::{ClientConfig, Message, Producer};
use sluice_proto::v1::{broker_client::BrokerClient, SendRequest};
use support::{start_broker, FakeNameServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf() {
    let ns = FakeNameServer::start().await;
    let a = start_broker("broker-a", &[&ns]).await;
    a.add_topic("t", 8);
    let p = Producer::builder(ClientConfig::new([ns.addr.clone()]).request_timeout(Duration::from_secs(5))).max_in_flight(256).build().unwrap();
    for inflight in [1usize, 64, 256] {
        let t = Instant::now();
        let mut hs = std::collections::VecDeque::new();
        for i in 0..10000 {
            hs.push_back(p.send_async(Message::new("t", format!("{i}"))).await.unwrap());
            if hs.len() >= inflight { hs.pop_front().unwrap().await.unwrap(); }
        }
        while let Some(h) = hs.pop_front() { h.await.unwrap(); }
        println!("producer inflight {inflight}: {:.0} msg/s", 10000.0 / t.elapsed().as_secs_f64());
    }
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", a.addr())).unwrap().connect().await.unwrap();
    let client = BrokerClient::new(ch);
    for inflight in [1usize, 64, 256] {
        let t = Instant::now();
        let mut fu = FuturesUnordered::new();
        for i in 0..10000u32 {
            let mut c = client.clone();
            fu.push(async move { c.send(SendRequest { topic: "t".into(), queue_id: i % 8, messages: vec![sluice_proto::v1::Message { body: format!("{i}").into(), ..Default::default() }] }).await.unwrap() });
            if fu.len() >= inflight { fu.next().await; }
        }
        while fu.next().await.is_some() {}
        println!("raw inflight {inflight}: {:.0} msg/s", 10000.0 / t.elapsed().as_secs_f64());
    }
}
