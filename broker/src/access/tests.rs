use std::sync::Arc;

use sluice_proto::acl::{Action, Resource};
use sluice_proto::auth::{Credentials, Signer};
use sluice_proto::v1::meta_op::Op;
use sluice_proto::v1::{AclPolicy, AclUser};
use sluice_proto::ErrorCode;
use tokio::sync::Notify;

use super::*;
use crate::meta::MemMeta;
use crate::state::{StateMachine, StateOp};

const SEND: &str = "/sluice.v1.Broker/Send";

fn creds(key: &str, secret: &str) -> Credentials {
    Credentials {
        access_key: key.into(),
        secret: secret.as_bytes().to_vec(),
    }
}

fn op(o: Op) -> StateOp {
    StateOp { op: Some(o) }
}

/// Applies one op, as the log would.
fn apply(state: &StateMachine, o: Op) {
    state.apply(None, &[op(o)], true).unwrap();
}

fn policy(user: &str, resource: &str, actions: &[&str], decision: &str) -> AclPolicy {
    AclPolicy {
        user: user.into(),
        resource: resource.into(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
        decision: decision.into(),
    }
}

/// A state with users alice (pub on orders-*, sub denied on orders-secret) and bob (none).
fn setup(enabled: bool) -> (StateMachine, Access) {
    let state = StateMachine::open(Arc::new(MemMeta::default()), Arc::new(Notify::new())).unwrap();
    state
        .apply(
            None,
            &[
                op(Op::PutUser(AclUser {
                    access_key: "alice".into(),
                    secret: b"a-secret".to_vec().into(),
                })),
                op(Op::PutUser(AclUser {
                    access_key: "bob".into(),
                    secret: b"b-secret".to_vec().into(),
                })),
                op(Op::Grant(policy(
                    "alice",
                    "topic:orders-*",
                    &["pub", "sub"],
                    "allow",
                ))),
                op(Op::Grant(policy(
                    "alice",
                    "topic:orders-secret",
                    &["sub"],
                    "deny",
                ))),
            ],
            true,
        )
        .unwrap();
    let access = Access::new(
        AccessConfig {
            enabled,
            admin: Some(creds("root", "root-secret")),
            super_users: vec!["bob".into()],
            cluster: Some(creds("c1", "cluster-secret")),
            window_ms: 60_000,
            // Signed with an empty target, a resource is the method alone.
            targets: vec![String::new()],
            data_targets: vec![String::new()],
        },
        state.acl.clone(),
        audit::Audit::off(),
        Some(Default::default()),
    );
    (state, access)
}

fn login(access: &Access, who: &Credentials, method: &str) -> Result<Principal, ApiError> {
    let signer = Signer::new(who.clone(), rand::random());
    let h = signer.sign(method, crate::store::now_ms());
    access.authenticate(method, Some(h.as_bytes()), None)
}

#[test]
fn requests_are_authenticated_once_and_by_their_method() {
    let (_s, access) = setup(true);
    let alice = creds("alice", "a-secret");
    let p = login(&access, &alice, SEND).unwrap();
    assert_eq!(p.name(), "alice");
    assert_eq!(p.caller().unwrap().kind, Kind::User);
    assert_eq!(
        login(&access, &creds("root", "root-secret"), SEND)
            .unwrap()
            .caller()
            .unwrap()
            .kind,
        Kind::Super
    );
    assert_eq!(
        login(&access, &creds("bob", "b-secret"), SEND)
            .unwrap()
            .caller()
            .unwrap()
            .kind,
        Kind::Super
    );
    assert_eq!(
        login(&access, &creds("c1", "cluster-secret"), SEND)
            .unwrap()
            .caller()
            .unwrap()
            .kind,
        Kind::Cluster
    );

    let unauth = |r: Result<Principal, ApiError>| r.unwrap_err().code;
    assert_eq!(
        unauth(access.authenticate(SEND, None, None)),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        unauth(login(&access, &creds("alice", "wrong"), SEND)),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        unauth(login(&access, &creds("nobody", "x"), SEND)),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        unauth(access.authenticate(SEND, Some(b"\xff"), None)),
        ErrorCode::Unauthenticated
    );
    // Signed for another method.
    let signer = Signer::new(alice.clone(), [1; 8]);
    let h = signer.sign("/sluice.v1.Broker/DeleteTopic", crate::store::now_ms());
    assert_eq!(
        unauth(access.authenticate(SEND, Some(h.as_bytes()), None)),
        ErrorCode::Unauthenticated
    );
    // Replayed, and stale.
    let h = signer.sign(SEND, crate::store::now_ms());
    access.authenticate(SEND, Some(h.as_bytes()), None).unwrap();
    let e = access
        .authenticate(SEND, Some(h.as_bytes()), None)
        .unwrap_err();
    assert!(e.message.contains("replayed"), "{}", e.message);
    let h = signer.sign(SEND, crate::store::now_ms() - 120_000);
    let e = access
        .authenticate(SEND, Some(h.as_bytes()), None)
        .unwrap_err();
    assert!(e.message.contains("stale"), "{}", e.message);
}

#[test]
fn policies_decide_for_users_only() {
    let (state, access) = setup(true);
    let alice = login(&access, &creds("alice", "a-secret"), SEND).unwrap();
    access
        .check(&alice, Action::Pub, Resource::Topic("orders-eu"))
        .unwrap();
    access
        .check(&alice, Action::Sub, Resource::Topic("orders-eu"))
        .unwrap();
    let e = access
        .check(&alice, Action::Sub, Resource::Topic("orders-secret"))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    assert!(
        e.message.contains("sub on topic:orders-secret"),
        "{}",
        e.message
    );
    let e = access
        .check(&alice, Action::Pub, Resource::Topic("payments"))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    assert!(access
        .check(&alice, Action::Delete, Resource::Topic("orders-eu"))
        .is_err());
    let bob = login(&access, &creds("bob", "b-secret"), SEND).unwrap();
    access
        .check(&bob, Action::Admin, Resource::Cluster)
        .unwrap();
    // A change applies to the next request, no restart.
    apply(
        &state,
        Op::Grant(policy("alice", "topic:payments", &["pub"], "allow")),
    );
    access
        .check(&alice, Action::Pub, Resource::Topic("payments"))
        .unwrap();
    apply(
        &state,
        Op::Revoke(policy("alice", "topic:payments", &["pub"], "allow")),
    );
    assert!(access
        .check(&alice, Action::Pub, Resource::Topic("payments"))
        .is_err());
    // A group's retry and dead-letter topics go by the group's policies.
    apply(
        &state,
        Op::Grant(policy("alice", "group:billing", &["sub"], "allow")),
    );
    access
        .check(&alice, Action::Sub, Resource::Topic("%RETRY%billing"))
        .unwrap();
    access
        .check(&alice, Action::Sub, Resource::Topic("%DLQ%billing"))
        .unwrap();
    assert!(access
        .check(&alice, Action::Sub, Resource::Topic("%RETRY%other"))
        .is_err());
    // A deleted user cannot sign in, nor act on a session it opened before.
    let signed_in = login(&access, &creds("alice", "a-secret"), SEND).unwrap();
    apply(&state, Op::DeleteUser("alice".into()));
    assert!(login(&access, &creds("alice", "a-secret"), SEND).is_err());
    let e = access
        .check(&signed_in, Action::Pub, Resource::Topic("orders-eu"))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unauthenticated);
    assert!(state.acl.view().policies("alice").is_empty());
}

#[test]
fn replica_traffic_is_the_clusters_alone() {
    let (_s, access) = setup(true);
    let raft = "/sluice.v1.Replication/Raft";
    let cluster = login(&access, &creds("c1", "cluster-secret"), raft).unwrap();
    access.check_cluster(&cluster).unwrap();
    for who in [creds("root", "root-secret"), creds("alice", "a-secret")] {
        let p = login(&access, &who, raft).unwrap();
        assert_eq!(
            access.check_cluster(&p).unwrap_err().code,
            ErrorCode::PermissionDenied
        );
    }
    assert!(access.check_cluster(&Principal(None)).is_err());
}

#[test]
fn with_authentication_off_unsigned_requests_pass_and_signed_ones_are_still_verified() {
    let (_s, access) = setup(false);
    let anon = access.authenticate(SEND, None, None).unwrap();
    access
        .check(&anon, Action::Delete, Resource::Topic("x"))
        .unwrap();
    // Policies are not enforced; signatures are.
    let alice = login(&access, &creds("alice", "a-secret"), SEND).unwrap();
    access
        .check(&alice, Action::Delete, Resource::Topic("x"))
        .unwrap();
    assert!(login(&access, &creds("alice", "wrong"), SEND).is_err());
    // The cluster secret still guards replica traffic.
    assert!(access.check_cluster(&anon).is_err());
    let counted = access
        .refusals
        .as_ref()
        .unwrap()
        .get_or_create(&RefusalLabels {
            kind: "unauthenticated".into(),
            reason: "bad_signature".into(),
        });
    assert_eq!(counted.get(), 1);
}

#[test]
fn acl_state_is_canonical_and_travels_in_dumps() {
    let (state, _access) = setup(true);
    // Granting again merges; revoking part keeps the rest.
    apply(
        &state,
        Op::Grant(policy("alice", "topic:orders-*", &["get", "pub"], "allow")),
    );
    apply(
        &state,
        Op::Revoke(policy("alice", "topic:orders-*", &["sub"], "allow")),
    );
    let p = state.acl.view().policies("alice");
    assert_eq!(p.len(), 2);
    assert_eq!(p[0].resource, "topic:orders-*");
    assert_eq!(p[0].actions, vec!["pub", "get"]);
    // Invalid ops are skipped alike everywhere.
    let r = state
        .apply(
            None,
            &[op(Op::Grant(policy("alice", "queue:x", &["pub"], "allow")))],
            true,
        )
        .unwrap();
    assert_eq!(r, vec![crate::state::Applied::Unchanged]);
    let dump = state.dump().unwrap();
    let other = StateMachine::open(Arc::new(MemMeta::default()), Arc::new(Notify::new())).unwrap();
    apply(
        &other,
        Op::PutUser(AclUser {
            access_key: "ghost".into(),
            secret: b"x".to_vec().into(),
        }),
    );
    other.restore(&dump).unwrap();
    let v = other.acl.view();
    assert_eq!(v.users(), vec!["alice", "bob"]);
    assert_eq!(v.policies(""), state.acl.view().policies(""));
}

#[test]
fn broker_topics_are_the_clusters_and_the_acl_is_managed_by_admins_only() {
    let (state, access) = setup(true);
    apply(
        &state,
        Op::Grant(policy("alice", "topic:*", &["sub"], "allow")),
    );
    let alice = login(&access, &creds("alice", "a-secret"), SEND).unwrap();
    access
        .check(&alice, Action::Sub, Resource::Topic("anything"))
        .unwrap();
    // `topic:*` does not reach the timer or half-message topics.
    for internal in ["%TIMER%", "%TX_HALF%"] {
        let e = access
            .check(&alice, Action::Sub, Resource::Topic(internal))
            .unwrap_err();
        assert!(e.message.contains("on cluster"), "{}", e.message);
    }
    // Alice with admin on cluster manages users, but not super ones.
    apply(
        &state,
        Op::Grant(policy("alice", "cluster", &["admin"], "allow")),
    );
    access.check_admin(&alice, Some("carol")).unwrap();
    for reserved in ["bob", "root", "c1"] {
        let e = access.check_admin(&alice, Some(reserved)).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{reserved}");
    }
    let root = login(&access, &creds("root", "root-secret"), SEND).unwrap();
    access.check_admin(&root, Some("bob")).unwrap();
    assert_eq!(
        access.check_admin(&Principal(None), None).unwrap_err().code,
        ErrorCode::Unauthenticated
    );
}

#[test]
fn with_authentication_off_the_acl_is_still_guarded_and_other_schemes_pass() {
    let (_s, access) = setup(false);
    assert!(access.check_admin(&Principal(None), None).is_err());
    let alice = login(&access, &creds("alice", "a-secret"), SEND).unwrap();
    assert!(access.check_admin(&alice, None).is_err());
    let root = login(&access, &creds("root", "root-secret"), SEND).unwrap();
    access.check_admin(&root, None).unwrap();
    // A proxy's header of another scheme is not judged.
    let p = access
        .authenticate(SEND, Some(b"Bearer abc"), None)
        .unwrap();
    assert!(p.caller().is_none());
    let (_s, on) = setup(true);
    assert!(on.authenticate(SEND, Some(b"Bearer abc"), None).is_err());
}
