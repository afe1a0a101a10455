//! A nameserver with a cluster secret, in-process: only registrations signed with it are
//! accepted, each once; a stranger cannot take over a broker group's route or unregister it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_nameserver::{MemoryConfigStore, Nameserver, Timing};
use sluice_proto::auth::{self, Credentials};
use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::{
    GetTopicRouteRequest, RegisterBrokerRequest, Role, TopicConfig, UnregisterBrokerRequest,
};
use sluice_proto::{perm, ApiError, ErrorCode};

const CLUSTER: &str = "prod";
const SECRET: &[u8] = b"cluster-secret";
const REGISTER: &str = "/sluice.v1.NameServer/RegisterBroker";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn registration(address: &str, term: u64) -> RegisterBrokerRequest {
    RegisterBrokerRequest {
        cluster_name: CLUSTER.into(),
        broker_name: "broker-a".into(),
        replica_id: 1,
        role: Role::Master as i32,
        address: address.into(),
        data_address: String::new(),
        topics: vec![TopicConfig {
            name: "orders".into(),
            read_queues: 4,
            write_queues: 4,
            perm: perm::READ_WRITE,
        }],
        term,
        max_offset: 0,
    }
}

fn signed<T>(
    req: T,
    key: &str,
    secret: &[u8],
    method: &str,
    at_ms: i64,
    nonce: u8,
) -> tonic::Request<T> {
    let creds = Credentials {
        access_key: key.into(),
        secret: secret.to_vec(),
    };
    let mut r = tonic::Request::new(req);
    let header = auth::sign(&creds, method, at_ms, [nonce; 16]);
    r.metadata_mut()
        .insert(auth::AUTH_HEADER, header.parse().unwrap());
    r
}

fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, why: &str) {
    let e = ApiError::from_status(&r.unwrap_err());
    assert_eq!(e.code, ErrorCode::Unauthenticated, "{e:?}");
    assert!(e.message.contains(why), "{why:?} not in {:?}", e.message);
}

#[tokio::test]
async fn only_signed_registrations_are_accepted_and_a_stranger_cannot_take_over_a_group() {
    let ns = Nameserver::bind(
        "127.0.0.1:0",
        Timing::default(),
        Arc::new(MemoryConfigStore::default()),
    )
    .await
    .unwrap()
    .with_cluster_secret(SECRET.to_vec());
    let running = ns.start();
    let addr = running.local_addr();
    let mut c = tokio::time::timeout(
        Duration::from_secs(10),
        NameServerClient::connect(format!("http://{addr}")),
    )
    .await
    .unwrap()
    .unwrap();
    let now = now_ms();
    let legit = "10.0.0.1:10911";

    // Unsigned, a wrong secret, another cluster's key, a signature for another method, an
    // hour-old one: all refused, each saying why.
    refused(
        c.register_broker(registration(legit, 1)).await,
        "no signature",
    );
    let cases: [(&str, &[u8], &str, i64, &str); 4] = [
        (CLUSTER, b"guess", REGISTER, now, "does not match"),
        ("other", SECRET, REGISTER, now, "unknown access key"),
        (
            CLUSTER,
            SECRET,
            "/sluice.v1.NameServer/PutConfig",
            now,
            "does not match",
        ),
        (
            CLUSTER,
            SECRET,
            REGISTER,
            now - 3_600_000,
            "stale timestamp",
        ),
    ];
    for (nonce, (key, secret, method, at, why)) in (1u8..).zip(cases) {
        let req = signed(registration(legit, 1), key, secret, method, at, nonce);
        refused(c.register_broker(req).await, why);
    }

    // The member registers; the same signed request again is a replay.
    c.register_broker(signed(
        registration(legit, 1),
        CLUSTER,
        SECRET,
        REGISTER,
        now,
        5,
    ))
    .await
    .unwrap();
    refused(
        c.register_broker(signed(
            registration(legit, 1),
            CLUSTER,
            SECRET,
            REGISTER,
            now,
            5,
        ))
        .await,
        "replayed",
    );

    // The takeover from the issue: a higher term and a bogus address, unauthenticated.
    refused(
        c.register_broker(registration("6.6.6.6:10911", 99)).await,
        "no signature",
    );
    refused(
        c.unregister_broker(UnregisterBrokerRequest {
            cluster_name: CLUSTER.into(),
            broker_name: "broker-a".into(),
            replica_id: 1,
            address: legit.into(),
        })
        .await,
        "no signature",
    );
    let route = c
        .get_topic_route(GetTopicRouteRequest {
            topic: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let masters: Vec<String> = route
        .brokers
        .iter()
        .flat_map(|b| b.replicas.iter().map(|r| r.address.clone()))
        .collect();
    assert_eq!(masters, vec![legit.to_string()]);
    running.stop().await.unwrap();
}
