use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_proto::v1::{Role, TopicConfig};
use sluice_proto::{perm, ErrorCode};

use super::*;

const EXPIRY: Duration = Duration::from_secs(120);

fn topic(name: &str, queues: u32, perm: u32) -> TopicConfig {
    TopicConfig {
        name: name.into(),
        read_queues: queues,
        write_queues: queues,
        perm,
    }
}

fn reg(broker: &str, replica: u64, role: Role, term: u64, topics: &[TopicConfig]) -> Registration {
    Registration {
        cluster_name: "c1".into(),
        broker_name: broker.into(),
        replica_id: replica,
        role,
        address: format!("10.0.0.{replica}:{}", 10000 + broker.len()),
        data_address: format!("10.0.0.{replica}:{}", 20000 + broker.len()),
        term,
        max_offset: 0,
        topics: topics
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn unreg(broker: &str, replica: u64) -> Unregistration {
    Unregistration {
        cluster_name: "c1".into(),
        broker_name: broker.into(),
        replica_id: replica,
        address: String::new(),
    }
}

/// (replica id, role) of every replica in the route of `topic` for `broker`, and the master id.
fn roles(registry: &Registry, topic: &str, broker: &str) -> (Vec<(u64, Role)>, u64) {
    let route = registry.topic_route(topic).unwrap();
    let b = route
        .brokers
        .iter()
        .find(|b| b.broker_name == broker)
        .unwrap();
    let replicas = b
        .replicas
        .iter()
        .map(|r| (r.replica_id, Role::try_from(r.role).unwrap()))
        .collect();
    (replicas, b.master_replica_id)
}

#[test]
fn register_then_route() {
    let t0 = Instant::now();
    let mut r = Registry::new(EXPIRY);
    let out = r
        .register(
            reg(
                "a",
                1,
                Role::Master,
                0,
                &[topic("orders", 8, perm::READ_WRITE)],
            ),
            t0,
        )
        .unwrap();
    assert!(out.new_replica);
    assert_eq!(out.master_change, MasterChange::Elected { previous: None });

    let route = r.topic_route("orders").unwrap();
    assert_eq!(route.topic, "orders");
    assert_eq!(route.brokers.len(), 1);
    let b = &route.brokers[0];
    assert_eq!(
        (b.cluster_name.as_str(), b.broker_name.as_str()),
        ("c1", "a")
    );
    assert_eq!((b.read_queues, b.write_queues, b.perm), (8, 8, 6));
    assert_eq!(b.master_replica_id, 1);
    assert_eq!(b.replicas.len(), 1);
    assert_eq!(b.replicas[0].address, "10.0.0.1:10001");
    assert_eq!(b.replicas[0].data_address, "10.0.0.1:20001");
    assert_eq!(b.replicas[0].role, Role::Master as i32);
}

#[test]
fn unknown_topic_is_topic_not_found() {
    let mut r = Registry::new(EXPIRY);
    r.register(
        reg("a", 1, Role::Master, 0, &[topic("x", 1, 6)]),
        Instant::now(),
    )
    .unwrap();
    let err = r.topic_route("nope").unwrap_err();
    assert_eq!(err.code, ErrorCode::TopicNotFound);
    assert_eq!(err.message, "no route for topic nope");
    assert_eq!(
        r.topic_route("").unwrap_err().code,
        ErrorCode::InvalidTopicName
    );
}

#[test]
fn heartbeat_refreshes_liveness_and_replaces_topics() {
    let t0 = Instant::now();
    let mut r = Registry::new(EXPIRY);
    r.register(reg("a", 1, Role::Master, 0, &[topic("old", 4, 6)]), t0)
        .unwrap();
    let t1 = t0 + Duration::from_secs(100);
    let out = r
        .register(reg("a", 1, Role::Master, 0, &[topic("new", 2, 4)]), t1)
        .unwrap();
    assert!(!out.new_replica);
    assert_eq!(out.master_change, MasterChange::Unchanged);
    // The latest registration is the replica's whole topic list.
    assert_eq!(r.list_topics(), vec!["new".to_string()]);
    assert_eq!(
        r.topic_route("old").unwrap_err().code,
        ErrorCode::TopicNotFound
    );
    // 200 s after the first registration but only 100 s after the heartbeat: still alive.
    assert!(r.expire(t0 + Duration::from_secs(200)).is_empty());
    assert_eq!(
        r.cluster_info(t0 + Duration::from_secs(200)).brokers[0].last_heartbeat_ago_ms,
        100_000
    );
}

#[test]
fn silent_broker_expires_only_after_the_expiry() {
    let t0 = Instant::now();
    let mut r = Registry::new(EXPIRY);
    r.register(reg("a", 1, Role::Master, 0, &[topic("t", 1, 6)]), t0)
        .unwrap();
    r.register(
        reg("b", 1, Role::Master, 0, &[topic("t", 1, 6)]),
        t0 + EXPIRY,
    )
    .unwrap();
    assert!(
        r.expire(t0 + EXPIRY).is_empty(),
        "exactly at the expiry is not past it"
    );
    let expired = r.expire(t0 + EXPIRY + Duration::from_millis(1));
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].broker_name, "a");
    assert!(expired[0].was_master);
    assert_eq!(expired[0].silent_for, EXPIRY + Duration::from_millis(1));
    let route = r.topic_route("t").unwrap();
    assert_eq!(route.brokers.len(), 1);
    assert_eq!(route.brokers[0].broker_name, "b");
    assert_eq!(r.replica_count(), 1);
    // Expiry of the last replica hosting a topic removes the topic.
    r.expire(t0 + EXPIRY * 3);
    assert_eq!(r.replica_count(), 0);
    assert!(r.list_topics().is_empty());
    assert_eq!(
        r.topic_route("t").unwrap_err().code,
        ErrorCode::TopicNotFound
    );
}

#[test]
fn unregister_drops_at_once_and_checks_identity() {
    let t0 = Instant::now();
    let mut r = Registry::new(EXPIRY);
    r.register(reg("a", 1, Role::Master, 0, &[topic("t", 1, 6)]), t0)
        .unwrap();
    r.register(reg("a", 2, Role::Slave, 0, &[topic("t", 1, 6)]), t0)
        .unwrap();

    // A late unregister from an old incarnation (other address) or another cluster is ignored.
    let mut stale = unreg("a", 1);
    stale.address = "10.9.9.9:1".into();
    assert!(!r.unregister(&stale));
    let mut other_cluster = unreg("a", 1);
    other_cluster.cluster_name = "c2".into();
    assert!(!r.unregister(&other_cluster));
    assert!(!r.unregister(&unreg("zzz", 1)));

    let mut exact = unreg("a", 1);
    exact.address = "10.0.0.1:10001".into();
    assert!(r.unregister(&exact));
    assert!(!r.unregister(&exact), "second unregister finds nothing");
    let (replicas, master) = roles(&r, "t", "a");
    assert_eq!(replicas, vec![(2, Role::Slave)]);
    assert_eq!(master, 0, "the group has no master until one registers");

    assert!(r.unregister(&unreg("a", 2)));
    assert_eq!(r.replica_count(), 0);
    assert!(r.list_topics().is_empty());
}

#[test]
fn routes_cover_several_groups_and_replicas() {
    let t0 = Instant::now();
    let mut r = Registry::new(EXPIRY);
    r.register(reg("b", 1, Role::Master, 0, &[topic("shared", 4, 6)]), t0)
        .unwrap();
    r.register(reg("b", 2, Role::Slave, 0, &[topic("shared", 4, 6)]), t0)
        .unwrap();
    r.register(reg("b", 3, Role::Slave, 0, &[topic("shared", 4, 6)]), t0)
        .unwrap();
    r.register(
        reg(
            "a",
            1,
            Role::Master,
            0,
            &[topic("shared", 2, 6), topic("only-a", 1, 4)],
        ),
        t0,
    )
    .unwrap();
    r.register(reg("c", 1, Role::Master, 0, &[topic("other", 1, 6)]), t0)
        .unwrap();

    let route = r.topic_route("shared").unwrap();
    let names: Vec<&str> = route
        .brokers
        .iter()
        .map(|b| b.broker_name.as_str())
        .collect();
    assert_eq!(
        names,
        vec!["a", "b"],
        "sorted by broker name, only hosting groups"
    );
    assert_eq!(route.brokers[0].read_queues, 2);
    assert_eq!(route.brokers[1].write_queues, 4);
    let (replicas, master) = roles(&r, "shared", "b");
    assert_eq!(
        replicas,
        vec![(1, Role::Master), (2, Role::Slave), (3, Role::Slave)]
    );
    assert_eq!(master, 1);

    let only_a = r.topic_route("only-a").unwrap();
    assert_eq!(only_a.brokers.len(), 1);
    assert_eq!(only_a.brokers[0].perm, perm::READ);

    assert_eq!(r.list_topics(), vec!["only-a", "other", "shared"]);
}

#[test]
fn queue_counts_come_from_the_master_else_from_a_replica() {
    let t0 = Instant::now();
    let mut r = Registry::new(EXPIRY);
    r.register(reg("a", 2, Role::Slave, 0, &[topic("t", 4, 6)]), t0)
        .unwrap();
    r.register(reg("a", 3, Role::Slave, 0, &[topic("t", 5, 6)]), t0)
        .unwrap();
    // No master yet: the lowest replica id hosting the topic speaks.
    assert_eq!(r.topic_route("t").unwrap().brokers[0].read_queues, 4);
    assert_eq!(r.topic_route("t").unwrap().brokers[0].master_replica_id, 0);
    r.register(reg("a", 1, Role::Master, 0, &[topic("t", 8, 2)]), t0)
        .unwrap();
    let b = &r.topic_route("t").unwrap().brokers[0];
    assert_eq!((b.read_queues, b.perm), (8, 2));
    assert_eq!(b.master_replica_id, 1);
    // A topic only a slave knows yet is still routed (from the slave's view).
    r.register(
        reg(
            "a",
            2,
            Role::Slave,
            0,
            &[topic("t", 4, 6), topic("fresh", 3, 6)],
        ),
        t0,
    )
    .unwrap();
    assert_eq!(r.topic_route("fresh").unwrap().brokers[0].read_queues, 3);
}

#[test]
fn higher_or_equal_term_master_takes_over() {
    let t0 = Instant::now();
    let mut r = Registry::new(EXPIRY);
    let ts = [topic("t", 1, 6)];
    r.register(reg("a", 1, Role::Master, 5, &ts), t0).unwrap();
    r.register(reg("a", 2, Role::Slave, 5, &ts), t0).unwrap();

    // Replica 2 wins an election at term 6: it is master, replica 1 is shown as SLAVE.
    let out = r.register(reg("a", 2, Role::Master, 6, &ts), t0).unwrap();
    assert_eq!(
        out.master_change,
        MasterChange::Elected { previous: Some(1) }
    );
    assert_eq!(
        roles(&r, "t", "a"),
        (vec![(1, Role::Slave), (2, Role::Master)], 2)
    );

    // The deposed master re-registers as MASTER with its old term: refused, stays SLAVE.
    let out = r.register(reg("a", 1, Role::Master, 5, &ts), t0).unwrap();
    assert_eq!(
        out.master_change,
        MasterChange::StaleClaim {
            claimed_term: 5,
            master_term: 6
        }
    );
    assert_eq!(
        roles(&r, "t", "a"),
        (vec![(1, Role::Slave), (2, Role::Master)], 2)
    );

    // An equal term is accepted (the rule is >=), e.g. a standalone pair with term 0 switched over.
    let out = r.register(reg("a", 1, Role::Master, 6, &ts), t0).unwrap();
    assert_eq!(
        out.master_change,
        MasterChange::Elected { previous: Some(2) }
    );
    assert_eq!(roles(&r, "t", "a").1, 1);
}

#[test]
fn master_that_expires_or_steps_down_leaves_no_master() {
    let t0 = Instant::now();
    let mut r = Registry::new(EXPIRY);
    let ts = [topic("t", 1, 6)];
    r.register(reg("a", 1, Role::Master, 2, &ts), t0).unwrap();
    r.register(reg("a", 2, Role::Slave, 2, &ts), t0 + EXPIRY)
        .unwrap();
    let expired = r.expire(t0 + EXPIRY + Duration::from_secs(1));
    assert_eq!(expired.len(), 1);
    assert!(expired[0].was_master);
    assert_eq!(roles(&r, "t", "a"), (vec![(2, Role::Slave)], 0));

    // A stale master claim still cannot take the group after the master left...
    let t1 = t0 + EXPIRY + Duration::from_secs(2);
    let out = r.register(reg("a", 3, Role::Master, 1, &ts), t1).unwrap();
    assert!(matches!(out.master_change, MasterChange::StaleClaim { .. }));
    assert_eq!(roles(&r, "t", "a").1, 0);
    // ...but the next elected master (term >= the last master's) does.
    r.register(reg("a", 2, Role::Master, 3, &ts), t1).unwrap();
    assert_eq!(roles(&r, "t", "a").1, 2);

    // The master re-registering as SLAVE (it stepped down) leaves the group without master.
    let out = r.register(reg("a", 2, Role::Slave, 3, &ts), t1).unwrap();
    assert_eq!(out.master_change, MasterChange::SteppedDown);
    assert_eq!(
        roles(&r, "t", "a"),
        (vec![(2, Role::Slave), (3, Role::Slave)], 0)
    );
}

#[test]
fn current_master_keeps_its_role_when_its_own_term_changes() {
    let t0 = Instant::now();
    let mut r = Registry::new(EXPIRY);
    let ts = [topic("t", 1, 6)];
    r.register(reg("a", 1, Role::Master, 4, &ts), t0).unwrap();
    // The term comparison arbitrates between replicas; the master's own heartbeat is not a rival.
    let out = r.register(reg("a", 1, Role::Master, 0, &ts), t0).unwrap();
    assert_eq!(out.master_change, MasterChange::Unchanged);
    assert_eq!(roles(&r, "t", "a").1, 1);
}

#[test]
fn group_is_one_cluster() {
    let t0 = Instant::now();
    let mut r = Registry::new(EXPIRY);
    r.register(reg("a", 1, Role::Master, 0, &[]), t0).unwrap();
    let mut other = reg("a", 2, Role::Slave, 0, &[]);
    other.cluster_name = "c2".into();
    let err = r.register(other, t0).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("cluster c1"), "{}", err.message);
    // The same replica moving cluster is a reconfiguration, allowed.
    let mut moved = reg("a", 1, Role::Master, 0, &[]);
    moved.cluster_name = "c2".into();
    r.register(moved, t0).unwrap();
    assert_eq!(r.cluster_info(t0).brokers[0].cluster_name, "c2");
}

#[test]
fn cluster_info_lists_every_replica_sorted() {
    let t0 = Instant::now();
    let mut r = Registry::new(EXPIRY);
    let mut z = reg(
        "z",
        1,
        Role::Master,
        7,
        &[topic("t1", 1, 6), topic("t2", 1, 6)],
    );
    z.cluster_name = "alpha".into();
    z.max_offset = 1234;
    r.register(z, t0).unwrap();
    r.register(reg("b", 2, Role::Slave, 1, &[topic("t1", 1, 6)]), t0)
        .unwrap();
    r.register(
        reg("b", 1, Role::Master, 1, &[]),
        t0 + Duration::from_millis(10),
    )
    .unwrap();
    r.register(reg("a", 1, Role::Master, 0, &[]), t0).unwrap();

    let info = r.cluster_info(t0 + Duration::from_millis(50));
    let keys: Vec<(&str, &str, u64)> = info
        .brokers
        .iter()
        .map(|b| {
            (
                b.cluster_name.as_str(),
                b.broker_name.as_str(),
                b.replica_id,
            )
        })
        .collect();
    assert_eq!(
        keys,
        vec![
            ("alpha", "z", 1),
            ("c1", "a", 1),
            ("c1", "b", 1),
            ("c1", "b", 2)
        ]
    );
    let z = &info.brokers[0];
    assert_eq!((z.term, z.max_offset, z.topic_count), (7, 1234, 2));
    assert_eq!(z.role, Role::Master as i32);
    assert_eq!(z.address, "10.0.0.1:10001");
    assert_eq!(z.last_heartbeat_ago_ms, 50);
    assert_eq!(info.brokers[2].last_heartbeat_ago_ms, 40);
    assert_eq!(info.brokers[3].role, Role::Slave as i32);
    assert_eq!(info.brokers[3].topic_count, 1);
}
