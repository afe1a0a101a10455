//! Every RPC of every service, enumerated from the protos, and every data-port frame kind,
//! called as each kind of caller against a secured replica group and nameserver: each gets
//! the answer its rule says. A new RPC without an entry here (and so, without a decided
//! check) fails the test.

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message as _;
use sluice_client::{Admin, ClientConfig, Credentials, Message, PolicyRow, Producer};
use sluice_integration_tests::raw::{exchange, Raw};
use sluice_integration_tests::replica::ReplicaCluster;
use sluice_integration_tests::repo_root;
use sluice_integration_tests::secure::{self, Secrets, ADMIN, CLUSTER, SUPER};
use sluice_proto::auth::{self, Signer};
use sluice_proto::v1::*;
use sluice_proto::ErrorCode;
use tonic::transport::Channel;

/// Who each rule lets through (beyond refusing callers who cannot prove who they are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// A policy decides (alice has one, mallory none).
    Policy,
    /// Any authenticated caller.
    SignedIn,
    /// The cluster secret only (replica traffic).
    ClusterOnly,
    /// Anyone, signed or not (nameserver reads).
    Open,
    /// Broker registration: the cluster secret under the cluster's name.
    Registration,
    /// Nameserver config writes: the admin or the cluster secret.
    NsAdmin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Passed,
    Unauthenticated,
    Denied,
}

const CALLERS: &[&str] = &[
    "anonymous",
    "wrong-secret",
    "stale",
    "replayed",
    "alice",
    "mallory",
    SUPER,
    ADMIN,
    CLUSTER,
];

fn expected(rule: Rule, caller: &str) -> Answer {
    use Answer::*;
    let proven = !matches!(caller, "anonymous" | "wrong-secret" | "stale" | "replayed");
    match rule {
        Rule::Open => Passed,
        _ if !proven => Unauthenticated,
        Rule::Policy if caller == "mallory" => Denied,
        Rule::Policy | Rule::SignedIn => Passed,
        Rule::ClusterOnly if caller == CLUSTER => Passed,
        Rule::ClusterOnly => Denied,
        Rule::Registration if caller == CLUSTER => Passed,
        Rule::NsAdmin if caller == CLUSTER || caller == ADMIN => Passed,
        Rule::Registration | Rule::NsAdmin => Unauthenticated,
    }
}

fn answer_of(code: Option<ErrorCode>) -> Answer {
    match code {
        Some(ErrorCode::Unauthenticated) => Answer::Unauthenticated,
        Some(ErrorCode::PermissionDenied) => Answer::Denied,
        _ => Answer::Passed,
    }
}

/// Every `/sluice.v1.Service/Method` of the protos.
fn rpcs_from_protos() -> Vec<String> {
    let dir = repo_root().join("proto/proto/sluice/v1");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let mut service = None;
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().map(String::from);
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let name = rest.split('(').next().unwrap().trim();
                out.push(format!("/sluice.v1.{}/{name}", service.clone().unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// What the setup made for the calls to act on.
struct Fixtures {
    message_id: String,
    delay_handle: String,
    transaction_id: String,
}

fn topic_req(topic: &str) -> Vec<u8> {
    GetQueueOffsetsRequest {
        topic: topic.into(),
    }
    .encode_to_vec()
}

/// The rule of `path` and a request for it, or `None` for an RPC this test does not know.
fn case(path: &str, fx: &Fixtures) -> Option<(Rule, Vec<u8>)> {
    let group = || "billing".to_string();
    let policy = || {
        Some(AclPolicy {
            user: SUPER.into(),
            resource: "topic:zzz".into(),
            actions: vec!["pub".into()],
            decision: "allow".into(),
        })
    };
    let method = path.rsplit('/').next()?;
    let service = path.split('/').nth(1)?;
    let body = match (service, method) {
        ("sluice.v1.Broker", "Send") => SendRequest {
            topic: "orders".into(),
            messages: vec![sluice_proto::v1::Message {
                body: b"m".to_vec().into(),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "Pull") => PullRequest {
            group: group(),
            topic: "orders".into(),
            max_messages: 1,
            ..Default::default()
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "CommitOffsets") => CommitOffsetsRequest {
            group: group(),
            offsets: vec![OffsetEntry {
                topic: "orders".into(),
                queue_id: 0,
                offset: 0,
            }],
            ..Default::default()
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "QueryOffset") => QueryOffsetRequest {
            group: group(),
            topic: "orders".into(),
            queue_id: 0,
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "GetQueueOffsets") => topic_req("orders"),
        ("sluice.v1.Broker", "SearchOffset") => SearchOffsetRequest {
            topic: "orders".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "ConsumerHeartbeat") => ConsumerHeartbeatRequest {
            client_id: "c1".into(),
            subscriptions: vec![Subscription {
                group: group(),
                topics: vec!["orders".into()],
                ..Default::default()
            }],
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "UnregisterConsumer") => UnregisterConsumerRequest {
            client_id: "c1".into(),
            group: group(),
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "GetConsumerList" | "GetGroupConfig") => {
            GetConsumerListRequest { group: group() }.encode_to_vec()
        }
        ("sluice.v1.Broker", "GetGroupOffsets") => GetGroupOffsetsRequest {
            group: group(),
            ..Default::default()
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "ResetOffsets") => ResetOffsetsRequest {
            group: "billing-doomed".into(),
            topic: "orders".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "DeleteGroup") => DeleteGroupRequest {
            group: "billing-doomed".into(),
            force: true,
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "LockQueues" | "UnlockQueues") => LockQueuesRequest {
            group: group(),
            client_id: "c1".into(),
            queues: vec![],
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "CreateTopic") => CreateTopicRequest {
            config: Some(TopicConfig {
                name: "orders-new".into(),
                read_queues: 1,
                write_queues: 1,
                perm: 6,
            }),
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "DeleteTopic") => DeleteTopicRequest {
            topic: "orders-doomed".into(),
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "ListTopics" | "ListGroups" | "ListTransactions") => Vec::new(),
        // Producers read it to choose their data path.
        ("sluice.v1.Broker", "GetBrokerStatus") => return Some((Rule::SignedIn, Vec::new())),
        ("sluice.v1.Broker", "GetMessage") => GetMessageRequest {
            message_id: fx.message_id.clone(),
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "QueryMessages") => QueryMessagesRequest {
            topic: "orders".into(),
            key: "k".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "CancelDelayed") => CancelDelayedRequest {
            handle: fx.delay_handle.clone(),
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "SendBack") => SendBackRequest {
            group: group(),
            message_id: fx.message_id.clone(),
            ..Default::default()
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "UpdateGroupConfig") => UpdateGroupConfigRequest {
            config: Some(GroupConfig {
                group: group(),
                max_retries: 3,
                ..Default::default()
            }),
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "RedriveDeadLetters") => RedriveRequest {
            group: group(),
            all: true,
            ..Default::default()
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "InitProducer") => {
            let b = InitProducerRequest {
                producer_group: "pg".into(),
            };
            return Some((Rule::SignedIn, b.encode_to_vec()));
        }
        ("sluice.v1.Broker", "EndTransaction") => EndTransactionRequest {
            transaction_id: fx.transaction_id.clone(),
            resolution: TransactionResolution::Rollback as i32,
            ..Default::default()
        }
        .encode_to_vec(),
        ("sluice.v1.Broker", "WatchTransactionChecks") => WatchTransactionChecksRequest {
            producer_group: "billing-tx".into(),
            client_id: "c1".into(),
        }
        .encode_to_vec(),
        ("sluice.v1.Access", "PutUser") => PutUserRequest {
            access_key: "carol".into(),
            wrapped_secret: vec![0; 40].into(),
            create_only: true,
        }
        .encode_to_vec(),
        ("sluice.v1.Access", "DeleteUser") => DeleteUserRequest {
            access_key: "nobody".into(),
        }
        .encode_to_vec(),
        ("sluice.v1.Access", "ListUsers" | "ListPolicies") => Vec::new(),
        ("sluice.v1.Access", "Grant") => GrantRequest { policy: policy() }.encode_to_vec(),
        ("sluice.v1.Access", "Revoke") => RevokeRequest { policy: policy() }.encode_to_vec(),
        ("sluice.v1.Replication", "Raft") => {
            let b = RaftBatch {
                broker_name: "elsewhere".into(),
                ..Default::default()
            };
            return Some((Rule::ClusterOnly, b.encode_to_vec()));
        }
        ("sluice.v1.Replication", "InjectFault") => {
            let b = FaultRequest { fault: None };
            return Some((Rule::ClusterOnly, b.encode_to_vec()));
        }
        ("sluice.v1.NameServer", "RegisterBroker") => {
            // Invalid past the check (no broker name): nothing gets registered.
            let b = RegisterBrokerRequest {
                cluster_name: CLUSTER.into(),
                ..Default::default()
            };
            return Some((Rule::Registration, b.encode_to_vec()));
        }
        ("sluice.v1.NameServer", "UnregisterBroker") => {
            let b = UnregisterBrokerRequest {
                cluster_name: CLUSTER.into(),
                broker_name: "nobody".into(),
                ..Default::default()
            };
            return Some((Rule::Registration, b.encode_to_vec()));
        }
        ("sluice.v1.NameServer", "GetTopicRoute") => {
            return Some((Rule::Open, topic_req("orders")));
        }
        ("sluice.v1.NameServer", "ListTopics" | "GetClusterInfo" | "GetConfig" | "ListConfig") => {
            let b = GetConfigRequest {
                namespace: "ns".into(),
                key: "k".into(),
            };
            return Some((Rule::Open, b.encode_to_vec()));
        }
        ("sluice.v1.NameServer", "PutConfig" | "DeleteConfig") => {
            let b = PutConfigRequest {
                namespace: "ns".into(),
                key: "k".into(),
                value: "v".into(),
            };
            return Some((Rule::NsAdmin, b.encode_to_vec()));
        }
        _ => return None,
    };
    Some((Rule::Policy, body))
}

async fn call(
    channel: &Channel,
    path: &str,
    body: Vec<u8>,
    header: Option<&str>,
) -> Option<ErrorCode> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(body);
    req.set_timeout(Duration::from_secs(5));
    if let Some(h) = header {
        req.metadata_mut()
            .insert(auth::AUTH_HEADER, h.parse().unwrap());
    }
    let p: http::uri::PathAndQuery = path.parse().unwrap();
    let status = if path.ends_with("/WatchTransactionChecks") {
        grpc.server_streaming(req, p, Raw).await.err()
    } else {
        grpc.unary(req, p, Raw).await.err()
    };
    status.map(|s| sluice_proto::ApiError::from_status(&s).code)
}

fn creds_of(caller: &str) -> Option<Credentials> {
    Some(match caller {
        "alice" | "stale" | "replayed" => secure::credentials("alice", "alice-secret"),
        "wrong-secret" => secure::credentials("alice", "not-alices"),
        "mallory" => secure::credentials("mallory", "mallory-secret"),
        SUPER => secure::credentials(SUPER, "ops-secret"),
        ADMIN => secure::admin(),
        CLUSTER => secure::cluster(),
        _ => return None,
    })
}

/// The caller's answer to one call of `path`.
async fn answer(channel: &Channel, target: &str, path: &str, body: &[u8], caller: &str) -> Answer {
    let resource = auth::resource(target, path);
    let now = sluice_client::time::now_ms();
    let signer = creds_of(caller).map(|c| Signer::new(c, rand::random()));
    let header = signer.as_ref().map(|s| match caller {
        "stale" => s.sign(&resource, now - 10 * 60 * 1000),
        _ => s.sign(&resource, now),
    });
    if caller == "replayed" {
        // Once as alice, then the very same header again.
        call(channel, path, body.to_vec(), header.as_deref()).await;
    }
    answer_of(call(channel, path, body.to_vec(), header.as_deref()).await)
}

async fn setup_acl(admin: &Admin) {
    for (user, secret) in [
        ("alice", "alice-secret"),
        ("mallory", "mallory-secret"),
        (SUPER, "ops-secret"),
    ] {
        admin
            .put_user(user, secret.as_bytes(), false)
            .await
            .unwrap();
    }
    for resource in ["cluster", "topic:orders*", "group:billing*"] {
        let p = PolicyRow {
            user: "alice".into(),
            resource: resource.into(),
            actions: vec!["all".into()],
            decision: "allow".into(),
        };
        admin.change_policy(p, true).await.unwrap();
    }
    // Mallory may do everything, elsewhere.
    for resource in ["topic:other", "group:other"] {
        let p = PolicyRow {
            user: "mallory".into(),
            resource: resource.into(),
            actions: vec!["all".into()],
            decision: "allow".into(),
        };
        admin.change_policy(p, true).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_and_frame_answers_each_caller_by_its_rule() {
    let secrets_dir = tempfile::tempdir().unwrap();
    let secrets = Secrets::write(secrets_dir.path()).unwrap();
    let cluster = ReplicaCluster::start(secrets.replica_options(1)).unwrap();
    cluster
        .create_topic_on_master("orders", 2, Duration::from_secs(30))
        .await
        .unwrap();
    let config = ClientConfig::new([cluster.nameserver.addr.clone()]).credentials(secure::admin());
    let admin = Admin::new(config.clone()).unwrap();
    setup_acl(&admin).await;
    let producer = Producer::builder(config.clone())
        .producer_group("billing-tx")
        .build()
        .unwrap();
    let sent = producer
        .send(Message::new("orders", "hello").with_key("k"))
        .await
        .unwrap();
    let delayed = producer
        .send(Message::new("orders", "later").with_delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    let mut tx = producer.begin_transaction().unwrap();
    tx.send(Message::new("orders", "in a transaction"))
        .await
        .unwrap();
    let fx = Fixtures {
        message_id: sent.message_id.clone(),
        delay_handle: delayed.delay_handle.clone().unwrap(),
        transaction_id: tx.id().to_string(),
    };

    let broker = Channel::from_shared(format!("http://{}", cluster.address(1)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let nameserver = Channel::from_shared(format!("http://{}", cluster.nameserver.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let rpcs = rpcs_from_protos();
    assert!(rpcs.len() >= 45, "{rpcs:?}");
    let mut wrong = Vec::new();
    let mut rules = BTreeMap::new();
    for path in &rpcs {
        let Some((rule, body)) = case(path, &fx) else {
            panic!("{path} has no entry in the auth matrix: decide its check and add it");
        };
        rules.insert(path.clone(), rule);
        // Signatures to a nameserver name no server.
        let (channel, target) = if path.starts_with("/sluice.v1.NameServer/") {
            (&nameserver, "")
        } else {
            (&broker, cluster.address(1))
        };
        for caller in CALLERS {
            let got = answer(channel, target, path, &body, caller).await;
            let want = expected(rule, caller);
            if got != want {
                wrong.push(format!("{path} as {caller}: {got:?}, expected {want:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    // The table is not all one rule.
    for rule in [
        Rule::Policy,
        Rule::SignedIn,
        Rule::ClusterOnly,
        Rule::Open,
        Rule::Registration,
        Rule::NsAdmin,
    ] {
        assert!(rules.values().any(|r| *r == rule), "no RPC with {rule:?}");
    }

    data_port_matrix(&cluster, &fx).await;
    // The refusals were counted and audited.
    let audit = std::fs::read_to_string(cluster.dir.path().join("replica-1/data/audit.log"))
        .unwrap_or_default();
    assert!(audit.contains("\"user\":\"mallory\""), "{audit}");
    drop(tx);
}

/// One frame on a fresh data-port connection, after an Auth frame as `caller` (none for
/// anonymous); the answers of the Auth frame and of the call.
async fn frame_answer(
    addr: &str,
    caller: &str,
    kind: frame::Kind,
    body: Vec<u8>,
) -> (Answer, Answer) {
    let now = sluice_client::time::now_ms();
    let resource = auth::resource(addr, auth::DATA_PORT_RESOURCE);
    let header = creds_of(caller).map(|c| {
        let s = Signer::new(c, rand::random());
        match caller {
            "stale" => s.sign(&resource, now - 10 * 60 * 1000),
            _ => s.sign(&resource, now),
        }
    });
    let mut frames = Vec::new();
    if let Some(h) = &header {
        let auth_req = DataPortAuthRequest {
            authorization: h.clone(),
        }
        .encode_to_vec();
        frames.push((frame::Kind::Auth, 1, auth_req.clone()));
        if caller == "replayed" {
            frames.push((frame::Kind::Auth, 2, auth_req));
        }
    }
    frames.push((kind, 9, body));
    let answers = exchange(addr, &frames).await;
    let auth = answers
        .get(&2)
        .or(answers.get(&1))
        .map(|c| answer_of(*c))
        .filter(|_| header.is_some());
    (auth.unwrap_or(Answer::Passed), answer_of(answers[&9]))
}

use sluice_proto::frame;

async fn data_port_matrix(cluster: &ReplicaCluster, fx: &Fixtures) {
    let data = cluster.status(1).await.unwrap().data_address;
    assert!(!data.is_empty());
    let kinds: Vec<frame::Kind> = (0..=255u8).filter_map(frame::Kind::from_wire).collect();
    let mut wrong = Vec::new();
    for kind in kinds {
        let (rule, body) = match kind {
            frame::Kind::Send => case("/sluice.v1.Broker/Send", fx).unwrap(),
            frame::Kind::EndTransaction => case("/sluice.v1.Broker/EndTransaction", fx).unwrap(),
            frame::Kind::Raft => case("/sluice.v1.Replication/Raft", fx).unwrap(),
            // Its own answer is checked with every call below.
            frame::Kind::Auth => continue,
        };
        for caller in CALLERS {
            let (auth, got) = frame_answer(&data, caller, kind, body.clone()).await;
            let proven = !matches!(*caller, "anonymous" | "wrong-secret" | "stale" | "replayed");
            let want_auth = if proven || *caller == "anonymous" {
                Answer::Passed
            } else {
                Answer::Unauthenticated
            };
            if auth != want_auth {
                wrong.push(format!(
                    "{kind:?} auth frame as {caller}: {auth:?}, expected {want_auth:?}"
                ));
            }
            // A refused Auth frame leaves the connection as it was: anonymous, or alice's
            // after the first of a replayed pair.
            let want = match *caller {
                "replayed" => expected(rule, "alice"),
                c if proven => expected(rule, c),
                _ => Answer::Unauthenticated,
            };
            if got != want {
                wrong.push(format!(
                    "{kind:?} frame as {caller}: {got:?}, expected {want:?}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "wrong data-port answers:\n{}",
        wrong.join("\n")
    );
}
