//! The gRPC service end to end, in-process on 127.0.0.1:0, through the generated client.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_nameserver::{run, Config, MemoryConfigStore, Nameserver, RunningNameserver, Timing};
use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::{
    DeleteConfigRequest, GetClusterInfoRequest, GetConfigRequest, GetTopicRouteRequest,
    ListConfigRequest, ListTopicsRequest, PutConfigRequest, RegisterBrokerRequest, Role,
    TopicConfig, UnregisterBrokerRequest,
};
use sluice_proto::{perm, ApiError, ErrorCode};
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(10);

async fn start(timing: Timing) -> (RunningNameserver, NameServerClient<Channel>) {
    let ns = Nameserver::bind(
        "127.0.0.1:0",
        timing,
        Arc::new(MemoryConfigStore::default()),
    )
    .await
    .unwrap();
    let running = ns.start();
    let client = connect(running.local_addr()).await;
    (running, client)
}

async fn connect(addr: SocketAddr) -> NameServerClient<Channel> {
    tokio::time::timeout(WAIT, NameServerClient::connect(format!("http://{addr}")))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

/// Polls `check` until it returns true, failing after `WAIT`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn register_req(
    broker: &str,
    replica: u64,
    role: Role,
    term: u64,
    topics: &[(&str, u32)],
) -> RegisterBrokerRequest {
    RegisterBrokerRequest {
        cluster_name: "DefaultCluster".into(),
        broker_name: broker.into(),
        replica_id: replica,
        role: role as i32,
        address: format!("127.0.0.{replica}:{}", 20000 + broker.len()),
        data_address: String::new(),
        topics: topics
            .iter()
            .map(|(name, queues)| TopicConfig {
                name: (*name).into(),
                read_queues: *queues,
                write_queues: *queues,
                perm: perm::READ_WRITE,
            })
            .collect(),
        term,
        max_offset: 42,
    }
}

fn api_error<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> ApiError {
    ApiError::from_status(&r.unwrap_err())
}

#[tokio::test]
async fn registration_routes_and_cluster_info() {
    let (ns, mut c) = start(Timing::default()).await;

    let resp = c
        .register_broker(register_req(
            "broker-a",
            1,
            Role::Master,
            1,
            &[("orders", 8), ("audit", 1)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.expiry_ms, 120_000);
    c.register_broker(register_req(
        "broker-a",
        2,
        Role::Slave,
        1,
        &[("orders", 8), ("audit", 1)],
    ))
    .await
    .unwrap();
    c.register_broker(register_req(
        "broker-b",
        1,
        Role::Master,
        0,
        &[("orders", 4)],
    ))
    .await
    .unwrap();

    let route = c
        .get_topic_route(GetTopicRouteRequest {
            topic: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.topic, "orders");
    let names: Vec<&str> = route
        .brokers
        .iter()
        .map(|b| b.broker_name.as_str())
        .collect();
    assert_eq!(names, ["broker-a", "broker-b"]);
    let a = &route.brokers[0];
    assert_eq!(
        (a.read_queues, a.write_queues, a.perm),
        (8, 8, perm::READ_WRITE)
    );
    assert_eq!(a.master_replica_id, 1);
    let replicas: Vec<(u64, &str, i32)> = a
        .replicas
        .iter()
        .map(|r| (r.replica_id, r.address.as_str(), r.role))
        .collect();
    assert_eq!(
        replicas,
        [
            (1, "127.0.0.1:20008", Role::Master as i32),
            (2, "127.0.0.2:20008", Role::Slave as i32)
        ]
    );
    assert_eq!(route.brokers[1].read_queues, 4);

    let topics = c
        .list_topics(ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics;
    assert_eq!(topics, ["audit", "orders"]);

    let info = c
        .get_cluster_info(GetClusterInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let rows: Vec<(&str, u64, i32, u32, u64)> = info
        .brokers
        .iter()
        .map(|b| {
            (
                b.broker_name.as_str(),
                b.replica_id,
                b.role,
                b.topic_count,
                b.max_offset,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("broker-a", 1, Role::Master as i32, 2, 42),
            ("broker-a", 2, Role::Slave as i32, 2, 42),
            ("broker-b", 1, Role::Master as i32, 1, 42)
        ]
    );
    assert!(info
        .brokers
        .iter()
        .all(|b| b.last_heartbeat_ago_ms < WAIT.as_millis() as u64));

    // A new master at a higher term takes the group; the old one is shown as slave.
    c.register_broker(register_req(
        "broker-a",
        2,
        Role::Master,
        2,
        &[("orders", 8)],
    ))
    .await
    .unwrap();
    let route = c
        .get_topic_route(GetTopicRouteRequest {
            topic: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.brokers[0].master_replica_id, 2);
    assert_eq!(route.brokers[0].replicas[0].role, Role::Slave as i32);

    // Unregister drops the replica at once.
    c.unregister_broker(UnregisterBrokerRequest {
        cluster_name: "DefaultCluster".into(),
        broker_name: "broker-b".into(),
        replica_id: 1,
        address: "127.0.0.1:20008".into(),
    })
    .await
    .unwrap();
    let route = c
        .get_topic_route(GetTopicRouteRequest {
            topic: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.brokers.len(), 1);

    ns.stop().await.unwrap();
}

#[tokio::test]
async fn errors_are_api_errors() {
    let (ns, mut c) = start(Timing::default()).await;

    let err = api_error(
        c.get_topic_route(GetTopicRouteRequest {
            topic: "ghost".into(),
        })
        .await,
    );
    assert_eq!(err.code, ErrorCode::TopicNotFound);
    assert_eq!(err.message, "no route for topic ghost");

    let mut bad = register_req("b", 1, Role::Master, 0, &[]);
    bad.role = Role::Unspecified as i32;
    let err = api_error(c.register_broker(bad).await);
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(
        err.message.contains("role must be MASTER or SLAVE"),
        "{}",
        err.message
    );

    let mut bad = register_req("b", 1, Role::Master, 0, &[]);
    bad.broker_name.clear();
    let err = api_error(c.register_broker(bad).await);
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert_eq!(err.message, "broker name is empty");

    let mut bad = register_req("b", 1, Role::Master, 0, &[]);
    bad.address.clear();
    assert_eq!(
        api_error(c.register_broker(bad).await).code,
        ErrorCode::InvalidArgument
    );

    // Nothing was registered by the rejected calls.
    let info = c
        .get_cluster_info(GetClusterInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(info.brokers.is_empty());

    let err = api_error(
        c.unregister_broker(UnregisterBrokerRequest::default())
            .await,
    );
    assert_eq!(err.code, ErrorCode::InvalidArgument);

    ns.stop().await.unwrap();
}

#[tokio::test]
async fn silent_broker_expires_and_live_one_stays() {
    let expiry = Duration::from_millis(800);
    let (ns, mut c) = start(Timing::new(expiry, Some(Duration::from_millis(20)))).await;

    let registered_at = Instant::now();
    c.register_broker(register_req("silent", 1, Role::Master, 0, &[("t", 1)]))
        .await
        .unwrap();

    // "live" keeps heartbeating much faster than the expiry while we wait.
    let mut hb = c.clone();
    let heartbeat = tokio::spawn(async move {
        loop {
            hb.register_broker(register_req("live", 1, Role::Master, 0, &[("t", 1)]))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let mut poll = c.clone();
    eventually("the silent broker to expire", || {
        let mut poll = poll.clone();
        async move {
            let info = poll
                .get_cluster_info(GetClusterInfoRequest {})
                .await
                .unwrap()
                .into_inner();
            !info.brokers.iter().any(|b| b.broker_name == "silent")
        }
    })
    .await;
    assert!(
        registered_at.elapsed() > expiry,
        "dropped after {:?}, before the {expiry:?} expiry",
        registered_at.elapsed()
    );

    let info = poll
        .get_cluster_info(GetClusterInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = info
        .brokers
        .iter()
        .map(|b| b.broker_name.as_str())
        .collect();
    assert_eq!(names, ["live"]);
    let route = poll
        .get_topic_route(GetTopicRouteRequest { topic: "t".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.brokers.len(), 1);
    assert_eq!(route.brokers[0].broker_name, "live");

    heartbeat.abort();
    ns.stop().await.unwrap();
}

#[tokio::test]
async fn config_store_over_grpc() {
    let (ns, mut c) = start(Timing::default()).await;
    let put = |ns: &str, k: &str, v: &str| PutConfigRequest {
        namespace: ns.into(),
        key: k.into(),
        value: v.into(),
    };

    c.put_config(put("app", "b", "2")).await.unwrap();
    c.put_config(put("app", "a", "1")).await.unwrap();
    c.put_config(put("other", "a", "x")).await.unwrap();

    let got = c
        .get_config(GetConfigRequest {
            namespace: "app".into(),
            key: "a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.found);
    assert_eq!(got.value, "1");
    let missing = c
        .get_config(GetConfigRequest {
            namespace: "app".into(),
            key: "zz".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!missing.found);

    let list = c
        .list_config(ListConfigRequest {
            namespace: "app".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let entries: Vec<(&str, &str)> = list
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(entries, [("a", "1"), ("b", "2")]);

    let del = |k: &str| DeleteConfigRequest {
        namespace: "app".into(),
        key: k.into(),
    };
    assert!(
        c.delete_config(del("a"))
            .await
            .unwrap()
            .into_inner()
            .existed
    );
    assert!(
        !c.delete_config(del("a"))
            .await
            .unwrap()
            .into_inner()
            .existed
    );

    for bad in [put("", "k", "v"), put("ns", "", "v")] {
        let err = api_error(c.put_config(bad).await);
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("empty"), "{}", err.message);
    }
    let huge = "v".repeat(sluice_nameserver::store::MAX_VALUE_LEN + 1);
    let err = api_error(c.put_config(put("ns", "k", &huge)).await);
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    let err = api_error(c.list_config(ListConfigRequest::default()).await);
    assert_eq!(err.code, ErrorCode::InvalidArgument);

    ns.stop().await.unwrap();
}

/// `run` as the binary uses it: sled store in the data dir, ready file, clean shutdown, restart.
#[tokio::test]
async fn run_writes_ready_file_and_persists_config() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let mut config = Config::new("127.0.0.1:0", dir.path().join("data"));
    config.ready_file = Some(ready.clone());

    for round in 0..2 {
        let _ = std::fs::remove_file(&ready);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(config.clone(), async {
            let _ = stop_rx.await;
        }));
        eventually("the ready file", || {
            let exists = ready.exists();
            async move { exists }
        })
        .await;
        let addr: SocketAddr = std::fs::read_to_string(&ready).unwrap().parse().unwrap();
        let mut c = connect(addr).await;
        if round == 0 {
            c.put_config(PutConfigRequest {
                namespace: "ns".into(),
                key: "k".into(),
                value: "survives".into(),
            })
            .await
            .unwrap();
        } else {
            let got = c
                .get_config(GetConfigRequest {
                    namespace: "ns".into(),
                    key: "k".into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(got.value, "survives");
        }
        drop(c);
        stop_tx.send(()).unwrap();
        tokio::time::timeout(WAIT, server)
            .await
            .expect("run did not stop")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn bind_failure_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = match Nameserver::bind(
        &addr,
        Timing::default(),
        Arc::new(MemoryConfigStore::default()),
    )
    .await
    {
        Ok(_) => panic!("bound an address in use"),
        Err(e) => e,
    };
    assert!(
        err.to_string()
            .starts_with(&format!("cannot listen on {addr}")),
        "{err}"
    );
}
