//! Policies and wrapped secrets: an admin (or anyone, for the unwrap) sends them; a broker
//! must never panic on one, and evaluation must keep deny-wins.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proto::acl::{evaluate, Action, Resource, Rule, Verdict};
use sluice_proto::auth::{unwrap_secret, ReplayGuard, Signed};
use sluice_proto::v1::AclPolicy;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let resource = parts.next().unwrap_or_default().to_string();
    let actions: Vec<String> = parts.next().unwrap_or_default().split(',').map(String::from).collect();
    let name = parts.next().unwrap_or_default();
    let policy = |decision: &str| AclPolicy {
        user: "u".into(),
        resource: resource.clone(),
        actions: actions.clone(),
        decision: decision.into(),
    };
    if let (Ok(allow), Ok(deny)) = (Rule::from_policy(&policy("allow")), Rule::from_policy(&policy("deny"))) {
        // Canonical form is stable.
        assert_eq!(Rule::from_policy(&allow.to_policy()).ok(), Some(allow.clone()));
        for action in Action::ALL {
            for r in [Resource::Cluster, Resource::Topic(name), Resource::Group(name)] {
                let v = evaluate([&allow, &deny], action, &r);
                if allow.actions.contains(&action) && allow.pattern.matches(&r) {
                    assert!(matches!(v, Verdict::Denied(_)));
                } else {
                    assert_eq!(v, Verdict::NotAllowed);
                }
            }
        }
    }
    // Unwrapping arbitrary bytes fails cleanly; the guard takes any nonce.
    let _ = unwrap_secret(b"key", &[0; 16], data);
    let mut nonce = [0u8; 16];
    for (n, d) in nonce.iter_mut().zip(data) {
        *n = *d;
    }
    let mut guard = ReplayGuard::new(1_000, 4, 4, 0);
    let s = Signed { access_key: "u".into(), timestamp_ms: 0, nonce, signature: [0; 32] };
    let _ = guard.admit(&s, 0);
    assert!(guard.admit(&s, 0).is_err());
});
