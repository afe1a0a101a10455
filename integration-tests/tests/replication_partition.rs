//! A master cut off from its group (fault injection): it stops acknowledging at once, steps
//! down within two election timeouts, a new master takes over, and after the partition heals
//! no acknowledged write is lost or found at another offset (no split brain).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_integration_tests::replica::{ReplicaCluster, ReplicaOptions};
use sluice_integration_tests::{connect_broker, create_topic_request, wait_until};
use sluice_proto::v1::{Role, SendRequest};
use sluice_proto::{ApiError, ErrorCode};

const TOPIC: &str = "ledger";
const QUEUES: u32 = 2;

/// (queue, offset) of every acknowledged message id.
type Acked = HashMap<String, (u32, u64)>;

/// Sends one message to replica `addr`; returns its (queue, offset) or the error.
async fn send_one(addr: &str, id: &str, queue_id: u32) -> Result<(u32, u64), ApiError> {
    let mut c = connect_broker(addr)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Unavailable, e.to_string()))?;
    let req = SendRequest {
        topic: TOPIC.into(),
        queue_id,
        messages: vec![sluice_proto::v1::Message {
            message_id: id.into(),
            body: id.as_bytes().to_vec().into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    match tokio::time::timeout(Duration::from_secs(2), c.send(req)).await {
        Ok(Ok(r)) => Ok((queue_id, r.into_inner().results[0].queue_offset)),
        Ok(Err(s)) => Err(ApiError::from_status(&s)),
        Err(_) => Err(ApiError::new(ErrorCode::StoreTimeout, "client timeout")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolated_master_stops_acking_and_nothing_acked_is_lost() {
    let opts = ReplicaOptions {
        fault_injection: true,
        ..ReplicaOptions::default()
    };
    let election_timeout = Duration::from_millis(opts.raft_tick_ms * opts.election_ticks as u64);
    let cluster = ReplicaCluster::start(opts).unwrap();
    let old = cluster
        .await_master(Duration::from_secs(10), None, None)
        .await
        .unwrap();
    let old_addr = cluster.address(old).to_string();
    connect_broker(&old_addr)
        .await
        .unwrap()
        .create_topic(create_topic_request(TOPIC, QUEUES))
        .await
        .unwrap();

    let mut acked = Acked::new();
    let mut seq = 0u64;
    let mut next_id = || {
        seq += 1;
        format!("msg-{seq}")
    };
    for i in 0..50 {
        let id = next_id();
        let at = send_one(&old_addr, &id, i % QUEUES).await.unwrap();
        acked.insert(id, at);
    }

    // Cut the master off from both peers (it drops their traffic both ways), and keep sending
    // to it.
    let others: Vec<u64> = cluster
        .peers
        .keys()
        .copied()
        .filter(|&id| id != old)
        .collect();
    let cut = Instant::now();
    assert_eq!(cluster.isolate(old, &others).await.unwrap(), others);
    let mut last_ack_after_cut = None;
    let mut refusals = 0;
    let mut i = 0;
    while cut.elapsed() < election_timeout * 3 {
        let id = next_id();
        i += 1;
        match send_one(&old_addr, &id, i % QUEUES).await {
            Ok(at) => {
                last_ack_after_cut = Some(cut.elapsed());
                acked.insert(id, at);
            }
            Err(e) => {
                assert!(
                    matches!(e.code, ErrorCode::NotMaster | ErrorCode::StoreTimeout),
                    "{e}"
                );
                refusals += 1;
            }
        }
    }
    // Nothing can commit without a quorum: at most a send already in flight at the cut.
    assert!(
        last_ack_after_cut.is_none_or(|t| t < election_timeout),
        "the isolated master acknowledged a write {last_ack_after_cut:?} after the cut"
    );
    assert!(refusals > 0);
    // Check-quorum: the isolated master steps down (to SLAVE) within two election timeouts.
    let st = cluster.status(old).await.unwrap();
    assert_eq!(st.role, Role::Slave as i32, "{st:?}");
    assert_ne!(st.raft_role, "LEADER");

    // The majority elected a new master; it takes writes and the nameserver routes to it.
    let new = cluster
        .await_master(Duration::from_secs(10), Some(old), Some(TOPIC))
        .await
        .unwrap();
    let new_addr = cluster.address(new).to_string();
    for i in 0..50 {
        let id = next_id();
        let at = send_one(&new_addr, &id, i % QUEUES).await.unwrap();
        acked.insert(id, at);
    }
    // The old master still refuses (it knows no leader while cut off).
    let err = send_one(&old_addr, "late", 0).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotMaster, "{err}");

    // The sends it took after the cut sit in its log, uncommitted.
    let cut_off = cluster.status(old).await.unwrap();
    assert!(
        cut_off.last_index > cut_off.commit_index,
        "no uncommitted tail on the isolated master: {cut_off:?}"
    );

    // Heal: the old master rejoins as a slave, truncates that tail and catches up; every
    // replica holds the same log and queues, with every acknowledged message at its
    // acknowledged offset, once.
    cluster.heal(old).await.unwrap();
    let st = cluster.status(new).await.unwrap();
    cluster
        .await_applied(&[old], st.commit_index, Duration::from_secs(10))
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "old master follows", || async {
        cluster
            .status(old)
            .await
            .is_ok_and(|s| s.leader_id == new && s.role == Role::Slave as i32)
    })
    .await
    .unwrap();
    let (a, b) = (
        cluster.status(new).await.unwrap(),
        cluster.status(old).await.unwrap(),
    );
    assert_eq!(
        (a.last_index, a.max_offset, a.confirmed_offset),
        (b.last_index, b.max_offset, b.confirmed_offset),
        "the old master's log differs from the new master's"
    );
    for q in 0..QUEUES {
        let reference = cluster.read_queue(new, TOPIC, q).await.unwrap();
        let mut seen = HashMap::new();
        for (i, m) in reference.iter().enumerate() {
            assert_eq!(m.queue_offset, i as u64);
            assert!(
                seen.insert(m.message_id.clone(), m.queue_offset).is_none(),
                "{} stored twice",
                m.message_id
            );
        }
        for (id, &(queue, offset)) in &acked {
            if queue == q {
                assert_eq!(seen.get(id), Some(&offset), "acked {id} lost or moved");
            }
        }
        for &r in cluster.peers.keys() {
            let copy = cluster.read_queue(r, TOPIC, q).await.unwrap();
            let key = |v: &[sluice_proto::v1::StoredMessage]| {
                v.iter()
                    .map(|m| (m.queue_offset, m.message_id.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(key(&copy), key(&reference), "replica {r} queue {q}");
        }
    }
}
