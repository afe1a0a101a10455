//! The broker's data port (framed TCP Send, docs/protocol.md) on a real broker: announced in
//! routes, answers like the gRPC Send, and every malformed frame gets its error code without
//! losing the connection or the sends around it.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use sluice_client::{ClientConfig, Message, Producer};
use sluice_integration_tests::replica::{read_all, ReplicaCluster, ReplicaOptions};
use sluice_integration_tests::{
    connect_broker, create_topic_request, wait_until, Cluster, ClusterOptions,
};
use sluice_proto::frame::{self, Kind, PREFACE};
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::{
    BrokerStatus, GetBrokerStatusRequest, GetTopicRouteRequest, SendRequest, SendResponse,
};
use sluice_proto::{ApiError, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

async fn data_address(cluster: &Cluster, topic: &str) -> String {
    let mut ns = cluster.nameserver_client().await.unwrap();
    // The broker re-registers right after a topic change; poll until the route shows it.
    let deadline = Instant::now() + IO_TIMEOUT;
    let route = loop {
        let req = GetTopicRouteRequest {
            topic: topic.into(),
        };
        match ns.get_topic_route(req).await {
            Ok(r) => break r.into_inner(),
            Err(e) if Instant::now() > deadline => panic!("no route for {topic}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let replica = &route.brokers[0].replicas[0];
    assert!(
        !replica.data_address.is_empty(),
        "route has no data port: {route:?}"
    );
    assert_ne!(replica.data_address, replica.address);
    replica.data_address.clone()
}

/// A raw data-port connection, to send what a well-behaved client never would.
struct Raw {
    sock: TcpStream,
    input: BytesMut,
}

impl Raw {
    async fn connect(addr: &str) -> Raw {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        sock.write_all(&PREFACE).await.unwrap();
        Raw {
            sock,
            input: BytesMut::new(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
    }

    /// The next answer: (request id, Ok(body) or the error).
    async fn answer(&mut self) -> (u64, Result<Bytes, ApiError>) {
        loop {
            if let Some(answer) = frame::take_response(&mut self.input, 1 << 20).unwrap() {
                return answer;
            }
            let n = tokio::time::timeout(IO_TIMEOUT, self.sock.read_buf(&mut self.input))
                .await
                .expect("answer within the timeout")
                .unwrap();
            assert!(n > 0, "the broker closed the connection");
        }
    }
}

fn send_request(topic: &str, queue_id: u32, body: &[u8]) -> SendRequest {
    SendRequest {
        topic: topic.into(),
        queue_id,
        messages: vec![sluice_proto::v1::Message {
            body: body.to_vec().into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn frame_of(kind: u8, id: u64, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u32(body.len() as u32);
    out.put_u8(kind);
    out.put_u64(id);
    out.put_slice(body);
    out
}

#[tokio::test]
async fn malformed_frames_get_error_codes_and_the_connection_carries_on() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let mut b = cluster.broker_client(0).await.unwrap();
    b.create_topic(create_topic_request("orders", 2))
        .await
        .unwrap();
    let addr = data_address(&cluster, "orders").await;
    let mut raw = Raw::connect(&addr).await;

    // A good send, pipelined with bad ones on the same connection.
    let mut out = BytesMut::new();
    frame::encode_request(Kind::Send, 1, &send_request("orders", 0, b"one"), &mut out);
    // Unknown call kind.
    out.extend_from_slice(&frame_of(77, 2, b"whatever"));
    // Not a SendRequest.
    out.extend_from_slice(&frame_of(Kind::Send as u8, 3, &[0xff; 9]));
    // Handler errors travel with their code: a queue that does not exist.
    frame::encode_request(Kind::Send, 4, &send_request("orders", 9, b"x"), &mut out);
    raw.write(&out).await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(raw.answer().await);
    }
    answers.sort_by_key(|(id, _)| *id);
    let ok = SendResponse::decode(answers[0].1.clone().unwrap()).unwrap();
    assert_eq!(ok.results.len(), 1);
    assert_eq!(ok.results[0].queue_offset, 0);
    let codes: Vec<ErrorCode> = answers[1..]
        .iter()
        .map(|(_, r)| r.clone().unwrap_err().code)
        .collect();
    assert_eq!(
        codes,
        [
            ErrorCode::InvalidArgument,
            ErrorCode::InvalidArgument,
            ErrorCode::QueueNotFound
        ]
    );
    let unknown = answers[1].1.clone().unwrap_err();
    assert!(unknown.message.contains("kind 77"), "{unknown}");

    // A frame above the request limit (32 MiB + 64 KiB by default) is answered without being
    // read into memory; its body is skipped and the next frame is served.
    let too_big = (33u32 << 20) as usize;
    let mut header = BytesMut::new();
    header.put_u32(too_big as u32);
    header.put_u8(Kind::Send as u8);
    header.put_u64(5);
    raw.write(&header).await;
    let (id, r) = raw.answer().await;
    assert_eq!(id, 5);
    assert_eq!(r.unwrap_err().code, ErrorCode::MessageTooLarge);
    let chunk = vec![0u8; 1 << 20];
    let mut left = too_big;
    while left > 0 {
        let n = left.min(chunk.len());
        raw.write(&chunk[..n]).await;
        left -= n;
    }
    let mut out = BytesMut::new();
    frame::encode_request(Kind::Send, 6, &send_request("orders", 0, b"two"), &mut out);
    raw.write(&out).await;
    let (id, r) = raw.answer().await;
    assert_eq!(id, 6);
    let two = SendResponse::decode(r.unwrap()).unwrap();
    assert_eq!(two.results[0].queue_offset, 1);

    // A peer that does not speak the protocol is disconnected; the broker keeps serving.
    let mut stranger = TcpStream::connect(&addr).await.unwrap();
    stranger.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(IO_TIMEOUT, stranger.read(&mut buf))
        .await
        .expect("closed within the timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "a bad preface gets no answer, only a close");

    // Half a frame, then the client goes away: nothing breaks.
    let mut half = Raw::connect(&addr).await;
    let mut out = BytesMut::new();
    frame::encode_request(Kind::Send, 7, &send_request("orders", 0, b"cut"), &mut out);
    half.write(&out[..out.len() / 2]).await;
    drop(half);

    let mut out = BytesMut::new();
    frame::encode_request(
        Kind::Send,
        8,
        &send_request("orders", 0, b"three"),
        &mut out,
    );
    raw.write(&out).await;
    let (_, r) = raw.answer().await;
    let three = SendResponse::decode(r.unwrap()).unwrap();
    assert_eq!(
        three.results[0].queue_offset, 2,
        "the cut send must not be stored"
    );
}

#[tokio::test]
async fn producer_sends_through_the_data_port_or_grpc_alike() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let mut b = cluster.broker_client(0).await.unwrap();
    b.create_topic(create_topic_request("mixed", 1))
        .await
        .unwrap();
    data_address(&cluster, "mixed").await;
    let config = ClientConfig::from_list(&cluster.nameservers()).unwrap();
    let fast = Producer::builder(config.clone()).build().unwrap();
    let grpc = Producer::builder(config.use_data_port(false))
        .build()
        .unwrap();
    let mut sent = Vec::new();
    for i in 0..200u32 {
        let p = if i % 2 == 0 { &fast } else { &grpc };
        let r = p
            .send(Message::new("mixed", format!("m-{i}")))
            .await
            .unwrap();
        sent.push((r.queue_offset, format!("m-{i}")));
    }
    // Batches go through the data port too.
    let batch: Vec<Message> = (200..300u32)
        .map(|i| Message::new("mixed", format!("m-{i}")))
        .collect();
    let receipts = fast.send_batch(batch).await.unwrap();
    for (i, r) in (200..300u32).zip(&receipts) {
        sent.push((r.queue_offset, format!("m-{i}")));
    }
    let offsets: Vec<u64> = sent.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..300).collect::<Vec<u64>>());

    // 100 single sends and one batch came through the data port, on one connection.
    let status = b
        .get_broker_status(GetBrokerStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.data_port_sends, 101, "{status:?}");
    assert_eq!(status.data_port_connections, 1, "{status:?}");
    assert!(!status.data_address.is_empty());
    // `sluice cluster status --json` shows the same.
    let json: serde_json::Value =
        serde_json::from_str(&cluster.cli(&["cluster", "status", "--json"]).unwrap()).unwrap();
    let row = &json["brokers"][0];
    assert_eq!(row["data_address"], status.data_address.as_str(), "{row}");
    assert_eq!(row["data_port_sends"], 101, "{row}");

    let stored = read_all(&status.address, "mixed", 0).await.unwrap();
    let bodies: Vec<String> = stored
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect();
    let expected: Vec<String> = sent.into_iter().map(|(_, b)| b).collect();
    assert_eq!(bodies, expected);
    fast.shutdown().await;
    grpc.shutdown().await;
}

/// A batch of `n` 1 KiB messages whose bodies start with their number.
fn batch_request(topic: &str, first: u32, n: u32) -> SendRequest {
    SendRequest {
        topic: topic.into(),
        queue_id: 0,
        messages: (first..first + n)
            .map(|i| {
                let mut body = format!("m-{i:06}-").into_bytes();
                body.resize(1024, b'.');
                sluice_proto::v1::Message {
                    body: body.into(),
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_connection_that_pipelines_batches_moves_off_the_writer_thread_and_keeps_its_sends() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let mut b = cluster.broker_client(0).await.unwrap();
    b.create_topic(create_topic_request("piped", 1))
        .await
        .unwrap();
    let addr = data_address(&cluster, "piped").await;
    let mut raw = Raw::connect(&addr).await;
    // Body of every acked message by the queue offset the broker gave it.
    let mut acked = std::collections::BTreeMap::new();
    let mut next_msg = 0u32;
    let mut next_id = 1u64;
    // Writes `batches` batches of 40 (> 32 KiB each) and `singles` single sends in one go, and
    // checks every answer.
    async fn exchange(
        raw: &mut Raw,
        acked: &mut std::collections::BTreeMap<u64, String>,
        next_msg: &mut u32,
        next_id: &mut u64,
        batches: u32,
        singles: u32,
    ) {
        let mut out = BytesMut::new();
        let mut sent = std::collections::HashMap::new();
        for k in 0..batches + singles {
            let n = if k < batches { 40 } else { 1 };
            let req = batch_request("piped", *next_msg, n);
            sent.insert(*next_id, (*next_msg, n));
            frame::encode_request(Kind::Send, *next_id, &req, &mut out);
            *next_msg += n;
            *next_id += 1;
        }
        raw.write(&out).await;
        for _ in 0..sent.len() {
            let (id, r) = raw.answer().await;
            let (first, n) = sent.remove(&id).expect("an answer per request, once");
            let resp = SendResponse::decode(r.unwrap()).unwrap();
            assert_eq!(resp.results.len(), n as usize);
            for (i, res) in (first..first + n).zip(&resp.results) {
                let prior = acked.insert(res.queue_offset, format!("m-{i:06}-"));
                assert!(
                    prior.is_none(),
                    "queue offset {} given twice",
                    res.queue_offset
                );
            }
        }
    }
    async fn moved(b: &mut BrokerClient<Channel>) -> u64 {
        let s = b
            .get_broker_status(GetBrokerStatusRequest {})
            .await
            .unwrap();
        s.into_inner().data_port_moved
    }

    // One batch at a time: the connection stays beside the writer.
    for _ in 0..3 {
        exchange(&mut raw, &mut acked, &mut next_msg, &mut next_id, 1, 0).await;
    }
    assert_eq!(moved(&mut b).await, 0);
    // Small sends, many at once: still beside the writer.
    exchange(&mut raw, &mut acked, &mut next_msg, &mut next_id, 0, 50).await;
    assert_eq!(moved(&mut b).await, 0);
    // Batches pipelined: the broker takes the second while the first is in flight (all come
    // in one write; a round where the writer finished each before the next was read is
    // retried).
    let mut rounds = 0;
    while moved(&mut b).await == 0 {
        rounds += 1;
        assert!(rounds <= 10, "the connection never moved to the workers");
        exchange(&mut raw, &mut acked, &mut next_msg, &mut next_id, 6, 2).await;
    }
    assert_eq!(moved(&mut b).await, 1);
    // The moved connection goes on serving, pipelined and not.
    exchange(&mut raw, &mut acked, &mut next_msg, &mut next_id, 8, 20).await;
    exchange(&mut raw, &mut acked, &mut next_msg, &mut next_id, 1, 0).await;
    assert_eq!(
        moved(&mut b).await,
        1,
        "a moved connection does not move again"
    );

    // Every acked message is stored once, at the offset it was given.
    assert_eq!(acked.len(), next_msg as usize);
    let offsets: Vec<u64> = acked.keys().copied().collect();
    assert_eq!(offsets, (0..next_msg as u64).collect::<Vec<u64>>());
    let status = b
        .get_broker_status(GetBrokerStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let stored = read_all(&status.address, "piped", 0).await.unwrap();
    assert_eq!(stored.len(), acked.len());
    for (m, (offset, prefix)) in stored.iter().zip(&acked) {
        assert!(
            m.body.starts_with(prefix.as_bytes()),
            "offset {offset}: stored {:?}, acked {prefix}",
            String::from_utf8_lossy(&m.body[..12])
        );
    }
    drop(raw);
    // The connection is counted out wherever it ended.
    wait_until(IO_TIMEOUT, "the connection counted out", || async {
        let mut b = cluster.broker_client(0).await.unwrap();
        let s = b
            .get_broker_status(GetBrokerStatusRequest {})
            .await
            .unwrap();
        s.into_inner().data_port_connections == 0
    })
    .await
    .unwrap();
}

/// Replicates 50 sends through a 3-replica group; returns the master and every replica's
/// status afterwards.
async fn replicate(cluster: &ReplicaCluster) -> (u64, Vec<BrokerStatus>) {
    let master = cluster
        .await_master(Duration::from_secs(10), None, None)
        .await
        .unwrap();
    let mut b = connect_broker(cluster.address(master)).await.unwrap();
    b.create_topic(create_topic_request("rep", 1))
        .await
        .unwrap();
    let producer = Producer::builder(ClientConfig::from_list(&cluster.nameserver.addr).unwrap())
        .build()
        .unwrap();
    for i in 0..50 {
        let r = producer
            .send(Message::new("rep", format!("r-{i}")))
            .await
            .unwrap();
        assert_eq!(r.queue_offset, i);
    }
    producer.shutdown().await;
    let ids: Vec<u64> = cluster.peers.keys().copied().collect();
    cluster
        .await_caught_up(master, &ids, Duration::from_secs(10))
        .await
        .unwrap();
    for &id in &ids {
        let stored = cluster.read_queue(id, "rep", 0).await.unwrap();
        assert_eq!(stored.len(), 50, "replica {id}");
    }
    let mut statuses = Vec::new();
    for &id in &ids {
        statuses.push(cluster.status(id).await.unwrap());
    }
    (master, statuses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_move_raft_traffic_to_the_data_port() {
    let mut cluster = ReplicaCluster::start(ReplicaOptions::default()).unwrap();
    let (master, _) = replicate(&cluster).await;
    cluster
        .await_data_port_links(master, Duration::from_secs(10))
        .await
        .unwrap();
    let ids: Vec<u64> = cluster.peers.keys().copied().collect();
    let m = cluster.status(master).await.unwrap();
    // The 50 producer sends came through the master's data port.
    assert!(m.data_port_sends >= 50, "{m:?}");

    // A restarted slave comes back on a new data port (port 0 picks another one): the master
    // learns it from the next gRPC ack and moves its link there.
    let slave = ids.iter().copied().find(|&id| id != master).unwrap();
    let before = cluster.status(slave).await.unwrap().data_address;
    cluster.node(slave).kill9();
    cluster.node(slave).restart().unwrap();
    wait_until(
        Duration::from_secs(15),
        "master's link to the restarted slave",
        || async {
            cluster.status(slave).await.is_ok_and(|s| {
                s.data_address != before && s.leader_id == master && s.data_port_connections >= 1
            })
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_groups_without_data_ports_replicate_over_grpc() {
    let cluster = ReplicaCluster::start(ReplicaOptions {
        extra_broker_toml: "data_port_enable = false\n".into(),
        ..ReplicaOptions::default()
    })
    .unwrap();
    let (_, statuses) = replicate(&cluster).await;
    for s in statuses {
        assert!(s.data_address.is_empty(), "{s:?}");
        assert_eq!((s.data_port_connections, s.data_port_sends), (0, 0));
    }
}
