//! Users and permissions on a secured three-replica group (TLS on every node, authentication
//! on), through the real client and CLI: a user sends and reads only what its policies allow,
//! changes apply to running clients with no restart, and users and policies survive a
//! failover (replicated state).

use std::time::Duration;

use sluice_client::{
    Admin, ClientConfig, Credentials, ErrorCode, Message, PolicyRow, Producer, PullConsumer,
    StartPosition,
};
use sluice_integration_tests::replica::ReplicaCluster;
use sluice_integration_tests::secure::{self, Secrets};
use sluice_integration_tests::{bin, signed, wait_until};
use sluice_proto::v1::{CommitOffsetsRequest, OffsetEntry, PullRequest};

fn policy(user: &str, resource: &str, actions: &[&str], decision: &str) -> PolicyRow {
    PolicyRow {
        user: user.into(),
        resource: resource.into(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
        decision: decision.into(),
    }
}

fn app() -> Credentials {
    secure::credentials("app", "app-secret")
}

fn config(secrets: &Secrets, cluster: &ReplicaCluster, creds: Credentials) -> ClientConfig {
    secrets.client(&cluster.nameserver.addr, creds).unwrap()
}

/// The `sluice` CLI as `key` (secret in the environment), its stdout; fails on a non-zero exit.
fn cli(
    secrets: &Secrets,
    cluster: &ReplicaCluster,
    key: &str,
    secret: &str,
    args: &[&str],
) -> Result<String, String> {
    let mut cmd = std::process::Command::new(bin("sluice"));
    if let Some(t) = &secrets.tls {
        cmd.env("SLUICE_TLS_CA_FILE", &t.ca);
    }
    let out = cmd
        .args(["--nameservers", &cluster.nameserver.addr])
        .args(args)
        .env("SLUICE_ACCESS_KEY", key)
        .env("SLUICE_SECRET_KEY", secret)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_get_what_their_policies_allow_across_changes_and_failover() {
    let secrets_dir = tempfile::tempdir().unwrap();
    let secrets = Secrets::write_with_tls(secrets_dir.path()).unwrap();
    let mut cluster = ReplicaCluster::start(secrets.replica_options(3)).unwrap();
    let t = Duration::from_secs(30);
    for topic in ["orders", "payments"] {
        cluster.create_topic_on_master(topic, 2, t).await.unwrap();
    }
    let admin = Admin::new(config(&secrets, &cluster, secure::admin())).unwrap();

    // Users from the CLI, the secret from a file; unsigned or wrongly signed, it is refused.
    let secret_file = secrets_dir.path().join("app.secret");
    std::fs::write(&secret_file, "app-secret\n").unwrap();
    let file = secret_file.display().to_string();
    let add = ["acl", "user", "add", "app", "--secret-file", &file];
    let err = cli(&secrets, &cluster, "root", "wrong", &add).unwrap_err();
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
    let out = cli(&secrets, &cluster, "root", secure::ADMIN_SECRET, &add).unwrap();
    assert!(out.contains("user app added"), "{out}");
    let out = cli(
        &secrets,
        &cluster,
        "root",
        secure::ADMIN_SECRET,
        &["acl", "user", "list"],
    )
    .unwrap();
    assert!(out.contains("app") && out.contains("root"), "{out}");
    // A user may not manage users.
    let err = cli(
        &secrets,
        &cluster,
        "app",
        "app-secret",
        &["acl", "user", "list"],
    )
    .unwrap_err();
    assert!(err.contains("PERMISSION_DENIED"), "{err}");

    // Nothing is allowed yet.
    let producer = Producer::builder(config(&secrets, &cluster, app()))
        .build()
        .unwrap();
    let err = producer
        .send(Message::new("orders", "o-0"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PermissionDenied), "{err}");
    // Granted: the same producer sends, and to that topic only.
    let grant = ["acl", "policy", "grant", "app", "topic:orders", "pub"];
    cli(&secrets, &cluster, "root", secure::ADMIN_SECRET, &grant).unwrap();
    for i in 1..=20 {
        producer
            .send(Message::new("orders", format!("o-{i}")))
            .await
            .unwrap();
    }
    let err = producer
        .send(Message::new("payments", "p"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PermissionDenied), "{err}");
    assert!(err.to_string().contains("pub on topic:payments"), "{err}");

    // Reading needs sub on the topic and on the group.
    let master = cluster.await_master(t, None, None).await.unwrap();
    let mut raw = sluice_integration_tests::connect_broker_with(
        cluster.address(master),
        cluster.opts.tls.as_ref(),
    )
    .await
    .unwrap();
    let pull = |group: &str| PullRequest {
        group: group.into(),
        topic: "orders".into(),
        queue_id: 0,
        offset: 0,
        max_messages: 10,
        ..Default::default()
    };
    let status = raw
        .pull(signed(
            pull("billing"),
            cluster.address(master),
            "/sluice.v1.Broker/Pull",
            Some(&app()),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    admin
        .change_policy(policy("app", "topic:orders", &["sub"], "allow"), true)
        .await
        .unwrap();
    admin
        .change_policy(policy("app", "group:billing", &["sub"], "allow"), true)
        .await
        .unwrap();
    let mut consumer = PullConsumer::builder(config(&secrets, &cluster, app()), "billing")
        .subscribe("orders")
        .start_position(StartPosition::Earliest)
        .start_pull()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut got = 0;
    while got < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "app read {got} of 20 orders"
        );
        got += consumer
            .poll(100, Duration::from_millis(500))
            .await
            .unwrap()
            .len();
    }
    consumer.commit().await.unwrap();
    // Another group stays closed.
    let commit = CommitOffsetsRequest {
        group: "audit".into(),
        offsets: vec![OffsetEntry {
            topic: "orders".into(),
            queue_id: 0,
            offset: 1,
        }],
        ..Default::default()
    };
    let status = raw
        .commit_offsets(signed(
            commit,
            cluster.address(master),
            "/sluice.v1.Broker/CommitOffsets",
            Some(&app()),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // Sending back a message of a topic it may not read (to read the copy in the group's
    // retry topic) is refused.
    let secret_msg = Producer::builder(config(&secrets, &cluster, secure::admin()))
        .build()
        .unwrap()
        .send(Message::new("payments", "secret"))
        .await
        .unwrap();
    let stored = admin.get_message(&secret_msg.message_id).await.unwrap();
    let back = sluice_proto::v1::SendBackRequest {
        group: "billing".into(),
        commit_log_offset: stored.message.commit_log_offset,
        message_id: secret_msg.message_id.clone(),
        ..Default::default()
    };
    let status = raw
        .send_back(signed(
            back,
            cluster.address(master),
            "/sluice.v1.Broker/SendBack",
            Some(&app()),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("topic:payments"), "{status:?}");

    // With get on a topic, a message of it is found by id, but not a transaction's message
    // before its commit: that is a half message of the broker's internal topic.
    admin
        .change_policy(policy("app", "topic:orders", &["get"], "allow"), true)
        .await
        .unwrap();
    let app_admin = Admin::new(config(&secrets, &cluster, app())).unwrap();
    let tx_producer = Producer::builder(config(&secrets, &cluster, app()))
        .producer_group("order-service")
        .build()
        .unwrap();
    let mut tx = tx_producer.begin_transaction().unwrap();
    let half = tx.send(Message::new("orders", "pending")).await.unwrap();
    // Found (dispatched) for the admin first; the broker's internal topics are the
    // cluster's, so the broker holding it denies app (the others do not have it).
    wait_until(t, "the half message found by id", || {
        let admin = admin.clone();
        let id = half.message_id.clone();
        async move {
            admin
                .get_message(&id)
                .await
                .is_ok_and(|m| m.message.topic == sluice_proto::props::TX_HALF_TOPIC)
        }
    })
    .await
    .unwrap();
    let err = app_admin.get_message(&half.message_id).await.unwrap_err();
    assert!(err.to_string().contains("PERMISSION_DENIED"), "{err}");
    tx.commit().await.unwrap();
    wait_until(t, "the committed message found by id", || {
        let app_admin = app_admin.clone();
        let id = half.message_id.clone();
        async move {
            app_admin
                .get_message(&id)
                .await
                .is_ok_and(|m| m.message.topic == "orders")
        }
    })
    .await
    .unwrap();
    tx_producer.shutdown().await;

    // A deny wins over the allow, at once.
    admin
        .change_policy(policy("app", "topic:orders", &["pub"], "deny"), true)
        .await
        .unwrap();
    let err = producer
        .send(Message::new("orders", "o-denied"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PermissionDenied), "{err}");

    // Failover: the new master holds the same users and policies.
    let before = admin.list_policies(Some("app")).await.unwrap();
    assert_eq!(before.len(), 3, "{before:?}");
    cluster.node(master).kill9();
    let new_master = cluster
        .await_master(t, Some(master), Some("orders"))
        .await
        .unwrap();
    assert_ne!(new_master, master);
    wait_until(t, "the admin sees the new master", || {
        let admin = admin.clone();
        let before = before.clone();
        async move {
            admin
                .list_policies(Some("app"))
                .await
                .is_ok_and(|p| p == before)
        }
    })
    .await
    .unwrap();
    let err = producer
        .send(Message::new("orders", "still denied"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PermissionDenied), "{err}");
    // Lifting the deny on the new master lets the running producer send again.
    admin
        .change_policy(policy("app", "topic:orders", &["pub"], "deny"), false)
        .await
        .unwrap();
    producer
        .send(Message::new("orders", "after failover"))
        .await
        .unwrap();
    // A deleted user is unknown everywhere.
    admin.delete_user("app").await.unwrap();
    let err = producer
        .send(Message::new("orders", "gone"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated), "{err}");
    consumer.shutdown().await;
}
