//! Every bad input gets a clear error code, never a panic or a dropped connection.

use std::time::Duration;

use sluice_integration_tests::{create_topic_request, wait_until, Cluster, ClusterOptions};
use sluice_proto::v1::*;
use sluice_proto::{ApiError, ErrorCode};

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> ApiError {
    ApiError::from_status(&r.expect_err("request should fail"))
}

fn msg(body: &[u8]) -> Message {
    Message {
        body: body.to_vec().into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn bad_inputs_get_clear_errors() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let mut b = cluster.broker_client(0).await.unwrap();
    b.create_topic(create_topic_request("orders", 2))
        .await
        .unwrap();

    // Unknown topic (auto-creation is off by default).
    let e = code(
        b.send(SendRequest {
            topic: "nope".into(),
            queue_id: 0,
            messages: vec![msg(b"x")],
            ..Default::default()
        })
        .await,
    );
    assert_eq!(e.code, ErrorCode::TopicNotFound, "{e}");

    // Oversized message: 4 MiB + 1 byte body.
    let e = code(
        b.send(SendRequest {
            topic: "orders".into(),
            queue_id: 0,
            messages: vec![msg(&vec![7u8; (4 << 20) + 1])],
            ..Default::default()
        })
        .await,
    );
    assert_eq!(e.code, ErrorCode::MessageTooLarge, "{e}");

    // Empty and illegal topic names, on send and on create.
    for bad in ["", "a b", "x/y", "caf\u{e9}"] {
        let e = code(
            b.send(SendRequest {
                topic: bad.into(),
                queue_id: 0,
                messages: vec![msg(b"x")],
                ..Default::default()
            })
            .await,
        );
        assert_eq!(e.code, ErrorCode::InvalidTopicName, "{bad:?}: {e}");
        let e = code(b.create_topic(create_topic_request(bad, 1)).await);
        assert_eq!(e.code, ErrorCode::InvalidTopicName, "{bad:?}: {e}");
    }

    // Send to and pull from a queue that does not exist.
    let e = code(
        b.send(SendRequest {
            topic: "orders".into(),
            queue_id: 2,
            messages: vec![msg(b"x")],
            ..Default::default()
        })
        .await,
    );
    assert_eq!(e.code, ErrorCode::QueueNotFound, "{e}");
    let e = code(
        b.pull(PullRequest {
            group: "g".into(),
            topic: "orders".into(),
            queue_id: 9,
            offset: 0,
            ..Default::default()
        })
        .await,
    );
    assert_eq!(e.code, ErrorCode::QueueNotFound, "{e}");

    // An empty send.
    let e = code(
        b.send(SendRequest {
            topic: "orders".into(),
            queue_id: 0,
            messages: vec![],
            ..Default::default()
        })
        .await,
    );
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");

    // An offset past the end: the error names the valid range.
    let sent = b
        .send(SendRequest {
            topic: "orders".into(),
            queue_id: 1,
            messages: vec![msg(b"a"), msg(b"b"), msg(b"c")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.results.len(), 3);
    // Acked means written; consume queues are built just after (dispatch), so wait for them.
    let probe = b.clone();
    wait_until(
        Duration::from_secs(10),
        "the three messages visible",
        || {
            let mut probe = probe.clone();
            async move {
                probe
                    .get_queue_offsets(GetQueueOffsetsRequest {
                        topic: "orders".into(),
                    })
                    .await
                    .map(|r| {
                        r.into_inner()
                            .queues
                            .iter()
                            .any(|q| q.queue_id == 1 && q.max_offset == 3)
                    })
                    .unwrap_or(false)
            }
        },
    )
    .await
    .unwrap();
    let e = code(
        b.pull(PullRequest {
            group: "g".into(),
            topic: "orders".into(),
            queue_id: 1,
            offset: 100,
            ..Default::default()
        })
        .await,
    );
    assert_eq!(e.code, ErrorCode::OffsetOutOfRange, "{e}");
    assert_eq!((e.min_offset, e.max_offset), (0, 3));

    // A bad group name, a topic config with no queues, a message query with no criteria.
    let e = code(
        b.commit_offsets(CommitOffsetsRequest {
            group: "bad group".into(),
            offsets: vec![],
            reset_epoch: None,
            lock_owner: String::new(),
        })
        .await,
    );
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
    let e = code(b.create_topic(create_topic_request("empty", 0)).await);
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
    let e = code(
        b.get_message(GetMessageRequest {
            message_id: "0".repeat(32),
        })
        .await,
    );
    assert_eq!(e.code, ErrorCode::MessageNotFound, "{e}");

    // After all that the same connection and a fresh one still work, and the data is intact.
    let pulled = b
        .pull(PullRequest {
            group: "g".into(),
            topic: "orders".into(),
            queue_id: 1,
            offset: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let bodies: Vec<&[u8]> = pulled.messages.iter().map(|m| &m.body[..]).collect();
    assert_eq!(bodies, vec![&b"a"[..], b"b", b"c"]);
    let mut other = cluster.broker_client(0).await.unwrap();
    other
        .get_broker_status(GetBrokerStatusRequest {})
        .await
        .unwrap();
}

#[tokio::test]
async fn long_poll_returns_when_a_message_arrives_and_at_timeout() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let mut b = cluster.broker_client(0).await.unwrap();
    b.create_topic(create_topic_request("lp", 1)).await.unwrap();

    // Nothing there: held until the poll timeout, then an empty answer.
    let started = std::time::Instant::now();
    let r = b
        .pull(PullRequest {
            topic: "lp".into(),
            poll_timeout_ms: 300,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.messages.is_empty());
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));

    // A held pull is answered by a send (the pull waits up to 20 s; the send comes right after it starts).
    let mut puller = cluster.broker_client(0).await.unwrap();
    let pull = tokio::spawn(async move {
        puller
            .pull(PullRequest {
                topic: "lp".into(),
                poll_timeout_ms: 20_000,
                ..Default::default()
            })
            .await
    });
    // Let the pull reach the broker; if the send wins the race the pull still returns it at once.
    tokio::task::yield_now().await;
    b.send(SendRequest {
        topic: "lp".into(),
        queue_id: 0,
        messages: vec![msg(b"wake")],
        ..Default::default()
    })
    .await
    .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), pull)
        .await
        .expect("held pull answered well before its 20 s timeout")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(&got.messages[0].body[..], b"wake");
    assert_eq!(got.next_offset, 1);
}

#[tokio::test]
async fn auto_create_topics_creates_on_first_send_with_the_default_queue_count() {
    let opts = ClusterOptions {
        extra_broker_toml: "auto_create_topics = true\ndefault_queues = 3\n".into(),
        ..Default::default()
    };
    let cluster = Cluster::start(1, opts).unwrap();
    let mut b = cluster.broker_client(0).await.unwrap();
    let r = b
        .send(SendRequest {
            topic: "born-on-send".into(),
            queue_id: 2,
            messages: vec![msg(b"first")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].queue_offset, 0);
    let topics = b
        .list_topics(BrokerListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics;
    let t = topics
        .iter()
        .find(|t| t.name == "born-on-send")
        .expect("auto-created");
    assert_eq!((t.read_queues, t.write_queues), (3, 3));
    // Queue ids past the default count are still refused, and bad names are not auto-created.
    let e = code(
        b.send(SendRequest {
            topic: "born-on-send".into(),
            queue_id: 3,
            messages: vec![msg(b"x")],
            ..Default::default()
        })
        .await,
    );
    assert_eq!(e.code, ErrorCode::QueueNotFound, "{e}");
    let e = code(
        b.send(SendRequest {
            topic: "bad name".into(),
            queue_id: 0,
            messages: vec![msg(b"x")],
            ..Default::default()
        })
        .await,
    );
    assert_eq!(e.code, ErrorCode::InvalidTopicName, "{e}");
}

#[tokio::test]
async fn a_transactional_send_reusing_another_sends_first_message_id_is_refused() {
    let cluster = Cluster::start(1, ClusterOptions::default()).unwrap();
    let mut b = cluster.broker_client(0).await.unwrap();
    b.create_topic(create_topic_request("orders", 2))
        .await
        .unwrap();
    let send = |queue_id: u32| SendRequest {
        topic: "orders".into(),
        queue_id,
        messages: vec![Message {
            message_id: "m-1".into(),
            body: b"x".to_vec().into(),
            ..Default::default()
        }],
        transaction_id: "tx-dup".into(),
        producer_group: "orders-service".into(),
        ..Default::default()
    };
    b.send(send(0)).await.unwrap();
    // The same send again (a retry): answered, counted once.
    b.send(send(0)).await.unwrap();
    // Another send whose first message has that id: the transaction would leave it out.
    let e = code(b.send(send(1)).await);
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
}
