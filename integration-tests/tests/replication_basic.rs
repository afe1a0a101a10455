//! A replica group of three real brokers: election, replication of messages and metadata to
//! the slaves, NOT_MASTER redirects, status, and the fault-injection switch.

use std::time::Duration;

use sluice_client::{ClientConfig, Message, Producer};
use sluice_integration_tests::replica::{ReplicaCluster, ReplicaOptions, GROUP};
use sluice_integration_tests::{connect_broker, create_topic_request, wait_until};
use sluice_proto::v1::fault_request::Fault;
use sluice_proto::v1::{
    CommitOffsetsRequest, DeleteTopicRequest, Heal, OffsetEntry, QueryOffsetRequest, Role,
    SendRequest,
};
use sluice_proto::{ApiError, ErrorCode};

const TOPIC: &str = "orders";

fn one_message(body: &str) -> SendRequest {
    SendRequest {
        topic: TOPIC.into(),
        queue_id: 0,
        messages: vec![sluice_proto::v1::Message {
            body: body.as_bytes().to_vec().into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_elect_a_master_and_replicate_messages_and_metadata() {
    let cluster = ReplicaCluster::start(ReplicaOptions::default()).unwrap();
    let master = cluster
        .await_master(Duration::from_secs(10), None, None)
        .await
        .unwrap();
    let slaves: Vec<u64> = cluster
        .peers
        .keys()
        .copied()
        .filter(|&id| id != master)
        .collect();
    let master_addr = cluster.address(master).to_string();
    for &s in &slaves {
        // The master needs one follower to commit its first entry; the other may hear of it
        // a heartbeat later.
        wait_until(
            Duration::from_secs(5),
            "slave follows the master",
            || async {
                cluster
                    .status(s)
                    .await
                    .is_ok_and(|st| st.leader_id == master)
            },
        )
        .await
        .unwrap();
        let st = cluster.status(s).await.unwrap();
        assert_eq!(st.role, Role::Slave as i32, "{st:?}");
        assert!(st.replicated && st.raft_role == "FOLLOWER", "{st:?}");
    }

    // Topic changes only on the master; a slave names it.
    let mut slave = connect_broker(cluster.address(slaves[0])).await.unwrap();
    let err = ApiError::from_status(
        &slave
            .create_topic(create_topic_request(TOPIC, 4))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, ErrorCode::NotMaster);
    assert_eq!(err.master_address, master_addr);
    let mut m = connect_broker(&master_addr).await.unwrap();
    assert!(
        m.create_topic(create_topic_request(TOPIC, 4))
            .await
            .unwrap()
            .into_inner()
            .created
    );
    // The nameserver routes the topic to the master (slaves register it too, as SLAVE).
    cluster
        .await_master(Duration::from_secs(10), None, Some(TOPIC))
        .await
        .unwrap();

    // Produce through the client library; every replica ends up with the same queues.
    let producer = Producer::builder(
        ClientConfig::new([cluster.nameserver.addr.clone()])
            .request_timeout(Duration::from_secs(5)),
    )
    .build()
    .unwrap();
    let mut receipts = Vec::new();
    for i in 0..200 {
        let r = producer
            .send(Message::new(TOPIC, format!("m-{i}").into_bytes()))
            .await
            .unwrap();
        assert_eq!(r.broker_name, GROUP);
        receipts.push(r);
    }
    let st = cluster.status(master).await.unwrap();
    assert_eq!(st.role, Role::Master as i32);
    assert_eq!(st.raft_role, "LEADER");
    assert!(
        st.commit_index >= 200 && st.applied_index == st.commit_index,
        "{st:?}"
    );
    cluster
        .await_caught_up(master, &slaves, Duration::from_secs(10))
        .await
        .unwrap();
    let st = cluster.status(master).await.unwrap();
    assert_eq!(st.replicas.len(), 3, "{st:?}");
    for p in &st.replicas {
        assert_eq!(p.address, cluster.address(p.replica_id));
        assert!(p.match_index >= 200 && p.active, "{p:?}");
    }
    for q in 0..4 {
        let on_master = cluster.read_queue(master, TOPIC, q).await.unwrap();
        for r in receipts.iter().filter(|r| r.queue_id == q) {
            let m = &on_master[r.queue_offset as usize];
            assert_eq!(m.message_id, r.message_id);
            assert_eq!(m.commit_log_offset, r.commit_log_offset);
        }
        for &s in &slaves {
            let on_slave = cluster.read_queue(s, TOPIC, q).await.unwrap();
            let ids = |v: &[sluice_proto::v1::StoredMessage]| {
                v.iter()
                    .map(|m| (m.queue_offset, m.message_id.clone(), m.commit_log_offset))
                    .collect::<Vec<_>>()
            };
            assert_eq!(ids(&on_slave), ids(&on_master), "replica {s} queue {q}");
        }
    }

    // Garbage in a peer's name is dropped by the master's replica, which keeps serving.
    let ch = tonic::transport::Channel::from_shared(format!("http://{master_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let garbage = sluice_proto::v1::RaftBatch {
        broker_name: GROUP.into(),
        from: slaves[0],
        to: master,
        messages: vec![
            b"\xff\xfe garbage".to_vec().into(),
            vec![0u8; 64].into(),
            Vec::new().into(),
        ],
    };
    sluice_proto::v1::replication_client::ReplicationClient::new(ch)
        .raft(garbage)
        .await
        .unwrap();
    let r = producer
        .send(Message::new(TOPIC, b"after garbage".to_vec()))
        .await
        .unwrap();
    receipts.push(r);
    assert_eq!(
        cluster.status(master).await.unwrap().role,
        Role::Master as i32
    );

    // A slave refuses sends and names the master.
    let err = ApiError::from_status(&slave.send(one_message("x")).await.unwrap_err());
    assert_eq!(err.code, ErrorCode::NotMaster);
    assert_eq!(err.master_address, master_addr);

    // Offsets committed on the master are readable on every replica.
    let commit = CommitOffsetsRequest {
        group: "billing".into(),
        offsets: vec![OffsetEntry {
            topic: TOPIC.into(),
            queue_id: 2,
            offset: 17,
        }],
        reset_epoch: None,
        lock_owner: String::new(),
    };
    let err = ApiError::from_status(&slave.commit_offsets(commit.clone()).await.unwrap_err());
    assert_eq!(err.code, ErrorCode::NotMaster);
    m.commit_offsets(commit).await.unwrap();
    for &s in &slaves {
        let c = connect_broker(cluster.address(s)).await.unwrap();
        wait_until(Duration::from_secs(5), "offset on slave", || {
            let mut c = c.clone();
            async move {
                c.query_offset(QueryOffsetRequest {
                    group: "billing".into(),
                    topic: TOPIC.into(),
                    queue_id: 2,
                })
                .await
                .is_ok_and(|r| r.into_inner().offset == 17)
            }
        })
        .await
        .unwrap();
        // Queue offsets are served by slaves too (once applied entries are dispatched).
        wait_until(Duration::from_secs(5), "queue offsets on slave", || {
            let mut c = c.clone();
            async move {
                c.get_queue_offsets(sluice_proto::v1::GetQueueOffsetsRequest {
                    topic: TOPIC.into(),
                })
                .await
                .is_ok_and(|r| {
                    r.into_inner()
                        .queues
                        .iter()
                        .map(|q| q.max_offset)
                        .sum::<u64>()
                        == 201
                })
            }
        })
        .await
        .unwrap();
    }

    // Fault injection is off unless configured.
    let err = cluster
        .fault(master, Fault::Heal(Heal {}))
        .await
        .unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().unwrap();
    assert_eq!(ApiError::from_status(status).code, ErrorCode::NoPermission);
    assert!(status.message().contains("enable_fault_injection"));

    // A topic deletion reaches every replica (the trace topic the master made itself stays).
    m.delete_topic(DeleteTopicRequest {
        topic: TOPIC.into(),
    })
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(5),
        "topic gone on every replica",
        || async {
            for &s in &slaves {
                match cluster.status(s).await {
                    Ok(st) if st.topic_count == 1 => {}
                    _ => return false,
                }
            }
            true
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_ack_policy_answers_after_the_local_append() {
    let cluster = ReplicaCluster::start(ReplicaOptions {
        ack: "leader",
        flush: "sync",
        ..ReplicaOptions::default()
    })
    .unwrap();
    let master = cluster
        .await_master(Duration::from_secs(10), None, None)
        .await
        .unwrap();
    let st = cluster.status(master).await.unwrap();
    assert_eq!(
        (st.ack_policy.as_str(), st.flush_mode.as_str()),
        ("leader", "sync")
    );
    let mut m = connect_broker(cluster.address(master)).await.unwrap();
    m.create_topic(create_topic_request(TOPIC, 1))
        .await
        .unwrap();
    let mut acked = Vec::new();
    for i in 0..100 {
        let r = m
            .send(one_message(&format!("l-{i}")))
            .await
            .unwrap()
            .into_inner();
        acked.push((r.results[0].queue_offset, r.results[0].message_id.clone()));
    }
    // Acked offsets are the ones every replica ends up with.
    assert_eq!(
        acked.iter().map(|a| a.0).collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>()
    );
    let all: Vec<u64> = cluster.peers.keys().copied().collect();
    // Acked locally, committed shortly after: wait for the last entry everywhere.
    let last = cluster.status(master).await.unwrap().last_index;
    cluster
        .await_applied(&all, last, Duration::from_secs(10))
        .await
        .unwrap();
    for &r in &all {
        let stored = cluster.read_queue(r, TOPIC, 0).await.unwrap();
        let got: Vec<(u64, String)> = stored
            .iter()
            .map(|m| (m.queue_offset, m.message_id.clone()))
            .collect();
        assert_eq!(got, acked, "replica {r}");
    }
}
