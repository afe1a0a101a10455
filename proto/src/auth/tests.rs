use proptest::strategy::Strategy as _;

use super::*;

fn alice() -> Credentials {
    Credentials {
        access_key: "alice".into(),
        secret: b"s3cret".to_vec(),
    }
}

const METHOD: &str = "/sluice.v1.Broker/Send";
const NOW: i64 = 1_800_000_000_000;

fn secret_of(key: &str) -> Option<Vec<u8>> {
    (key == "alice").then(|| b"s3cret".to_vec())
}

#[test]
fn a_signed_request_verifies_once() {
    let header = sign(&alice(), METHOD, NOW, [7; 16]);
    assert!(header
        .starts_with("SLUICE-HMAC-SHA256 Credential=alice, Timestamp=1800000000000, Nonce=0707"));
    let signed = parse(&header).unwrap();
    assert_eq!(signed.access_key, "alice");
    assert_eq!(signed.timestamp_ms, NOW);
    verify(
        &signed,
        &[METHOD],
        secret_of,
        NOW + 1_000,
        DEFAULT_WINDOW_MS,
    )
    .unwrap();
    let mut guard = ReplayGuard::new(DEFAULT_WINDOW_MS, 100, 100, NOW);
    guard.admit(&signed, NOW).unwrap();
    assert_eq!(guard.admit(&signed, NOW + 5), Err(AuthError::Replayed));
    // Still remembered a window later.
    assert_eq!(
        guard.admit(&signed, NOW + DEFAULT_WINDOW_MS + 5),
        Err(AuthError::Replayed)
    );
}

fn nonce(session: u8, counter: u64) -> [u8; 16] {
    let mut n = [session; 16];
    n[8..].copy_from_slice(&counter.to_be_bytes());
    n
}

fn signed_with(n: [u8; 16]) -> Signed {
    parse(&sign(&alice(), METHOD, NOW, n)).unwrap()
}

#[test]
fn the_guard_keeps_a_sliding_window_per_session() {
    let mut guard = ReplayGuard::new(1_000, 10, 10, NOW);
    for c in [5u64, 7, 6, 100] {
        guard.admit(&signed_with(nonce(1, c)), NOW).unwrap();
    }
    // Used ones, and ones too far behind the highest, are refused.
    for c in [5u64, 6, 7, 100] {
        assert_eq!(
            guard.admit(&signed_with(nonce(1, c)), NOW),
            Err(AuthError::Replayed)
        );
    }
    let far = 100 + replay::REORDER_SPAN;
    guard.admit(&signed_with(nonce(1, far)), NOW).unwrap();
    // Counter 99 was never used, but is too far behind.
    assert_eq!(
        guard.admit(&signed_with(nonce(1, 99)), NOW),
        Err(AuthError::Replayed)
    );
    guard
        .admit(&signed_with(nonce(1, far - replay::REORDER_SPAN + 1)), NOW)
        .unwrap();
    guard.admit(&signed_with(nonce(1, far - 1)), NOW).unwrap();
    // Another session is counted apart.
    guard.admit(&signed_with(nonce(2, 5)), NOW).unwrap();
    assert_eq!(guard.sessions(), 2);
    // More than two windows of silence: forgotten.
    guard.admit(&signed_with(nonce(3, 1)), NOW + 2_001).unwrap();
    assert_eq!(guard.sessions(), 1);
}

#[test]
fn a_signer_never_repeats_a_nonce() {
    let signer = Signer::new(alice(), [4; 8]);
    let mut guard = ReplayGuard::new(DEFAULT_WINDOW_MS, 10, 10, NOW);
    for _ in 0..10_000 {
        let s = parse(&signer.sign(METHOD, NOW)).unwrap();
        verify(&s, &[METHOD], secret_of, NOW, DEFAULT_WINDOW_MS).unwrap();
        guard.admit(&s, NOW).unwrap();
    }
    assert_eq!(guard.sessions(), 1);
}

#[test]
fn wrapped_secrets_open_only_with_the_same_key_and_nonce() {
    let signer = Signer::new(alice(), [4; 8]);
    let (header, wrapped) = signer.sign_wrapping("/x", NOW, b"bob's secret");
    assert!(!wrapped.windows(6).any(|w| w == b"secret"));
    let n = parse(&header).unwrap().nonce;
    assert_eq!(
        unwrap_secret(b"s3cret", &n, &wrapped).unwrap(),
        b"bob's secret"
    );
    assert!(unwrap_secret(b"other", &n, &wrapped).is_err());
    assert!(unwrap_secret(b"s3cret", &[0; 16], &wrapped).is_err());
    let mut altered = wrapped.clone();
    altered[0] ^= 1;
    assert!(unwrap_secret(b"s3cret", &n, &altered).is_err());
    assert!(unwrap_secret(b"s3cret", &n, &wrapped[..10]).is_err());
    let empty = wrap_secret(b"s3cret", &n, b"");
    assert!(unwrap_secret(b"s3cret", &n, &empty).is_err());
}

#[test]
fn a_signature_binds_the_server_and_the_key() {
    let at_a = resource("10.0.0.1:10911", METHOD);
    let signed = parse(&sign(&alice(), &at_a, NOW, [1; 16])).unwrap();
    verify(
        &signed,
        &["10.0.0.9:1", at_a.as_str()],
        secret_of,
        NOW,
        DEFAULT_WINDOW_MS,
    )
    .unwrap();
    let at_b = resource("10.0.0.2:10911", METHOD);
    assert_eq!(
        verify(&signed, &[at_b], secret_of, NOW, DEFAULT_WINDOW_MS),
        Err(AuthError::BadSignature)
    );
    // Relabelled with another key that has the same secret.
    let header =
        sign(&alice(), &at_a, NOW, [1; 16]).replace("Credential=alice", "Credential=alicf");
    let relabelled = parse(&header).unwrap();
    let same_secret = |_: &str| Some(b"s3cret".to_vec());
    assert_eq!(
        verify(&relabelled, &[at_a], same_secret, NOW, DEFAULT_WINDOW_MS),
        Err(AuthError::BadSignature)
    );
}

#[test]
fn each_refusal_says_why() {
    let signed = parse(&sign(&alice(), METHOD, NOW, [1; 16])).unwrap();
    // Signed for another method, or with another secret.
    assert_eq!(
        verify(
            &signed,
            &["/sluice.v1.Broker/DeleteTopic"],
            secret_of,
            NOW,
            DEFAULT_WINDOW_MS
        ),
        Err(AuthError::BadSignature)
    );
    let mallory = Credentials {
        secret: b"guess".to_vec(),
        ..alice()
    };
    let forged = parse(&sign(&mallory, METHOD, NOW, [1; 16])).unwrap();
    assert_eq!(
        verify(&forged, &[METHOD], secret_of, NOW, DEFAULT_WINDOW_MS),
        Err(AuthError::BadSignature)
    );
    let bob = Credentials {
        access_key: "bob".into(),
        ..alice()
    };
    let unknown = parse(&sign(&bob, METHOD, NOW, [1; 16])).unwrap();
    assert_eq!(
        verify(&unknown, &[METHOD], secret_of, NOW, DEFAULT_WINDOW_MS),
        Err(AuthError::UnknownKey("bob".into()))
    );
    // Too old and too far ahead.
    for skew in [-DEFAULT_WINDOW_MS - 1, DEFAULT_WINDOW_MS + 1] {
        let s = parse(&sign(&alice(), METHOD, NOW + skew, [1; 16])).unwrap();
        assert!(matches!(
            verify(&s, &[METHOD], secret_of, NOW, DEFAULT_WINDOW_MS),
            Err(AuthError::Stale { .. })
        ));
    }
    let e: ApiError = AuthError::BadSignature.into();
    assert_eq!(e.code, ErrorCode::Unauthenticated);
    assert_eq!(e.grpc_code(), tonic::Code::Unauthenticated);
}

#[test]
fn malformed_headers_are_refused() {
    let good = sign(&alice(), METHOD, NOW, [1; 16]);
    let bad = [
        String::new(),
        "Bearer x".into(),
        good.replace("Credential=alice", "Credential="),
        good.replace("Credential=alice", "Credential=al ice"),
        good.replace(", Timestamp=", ",Timestamp="),
        good.replace("Timestamp=1800000000000", "Timestamp=-5"),
        good.replace(
            "Timestamp=1800000000000",
            "Timestamp=99999999999999999999999",
        ),
        good.replace("Nonce=01", "Nonce=1"),
        good.replace("Nonce=01", "Nonce=0G"),
        format!("{good}, Extra=1"),
        good[..good.len() - 2].to_string(),
        "x".repeat(MAX_HEADER_LEN + 1),
    ];
    for h in bad {
        assert!(matches!(parse(&h), Err(AuthError::Malformed(_))), "{h:?}");
    }
}

#[test]
fn a_full_guard_fails_closed_and_secrets_are_never_printed() {
    let mut guard = ReplayGuard::new(1_000, 3, 2, NOW);
    for n in 0..2u8 {
        guard.admit(&signed_with(nonce(n, 1)), NOW).unwrap();
    }
    // Alice has used her sessions; another user still gets one, then the guard is full.
    let third = signed_with(nonce(9, 1));
    assert_eq!(guard.admit(&third, NOW), Err(AuthError::TooManySessions));
    let bob = Credentials {
        access_key: "bob".into(),
        secret: b"x".to_vec(),
    };
    guard
        .admit(&parse(&sign(&bob, METHOD, NOW, nonce(1, 1))).unwrap(), NOW)
        .unwrap();
    let carol = Credentials {
        access_key: "carol".into(),
        secret: b"x".to_vec(),
    };
    let c = parse(&sign(&carol, METHOD, NOW, nonce(1, 1))).unwrap();
    assert_eq!(guard.admit(&c, NOW), Err(AuthError::TooManySessions));
    // Known sessions go on.
    guard.admit(&signed_with(nonce(0, 2)), NOW).unwrap();
    // Past two windows everything remembered could no longer pass the timestamp check.
    guard.admit(&third, NOW + 2_001).unwrap();
    let printed = format!("{:?}", alice());
    assert!(!printed.contains("s3cret"), "{printed}");
    let printed = format!("{:?}", Signer::new(alice(), [0; 8]));
    assert!(!printed.contains("s3cret"), "{printed}");
}

proptest::proptest! {
    #[test]
    fn parse_never_panics(s in ".{0,600}") {
        let _ = parse(&s);
    }

    #[test]
    fn what_is_signed_parses_and_verifies(
        key in "[A-Za-z0-9_.-]{1,64}",
        secret in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        resource in ".{0,80}",
        ts in 0i64..4_000_000_000_000,
        nonce in proptest::array::uniform16(proptest::num::u8::ANY),
    ) {
        let creds = Credentials { access_key: key.clone(), secret: secret.clone() };
        let signed = parse(&sign(&creds, &resource, ts, nonce)).unwrap();
        proptest::prop_assert_eq!(&signed.access_key, &key);
        proptest::prop_assert_eq!(signed.nonce, nonce);
        let lookup = |k: &str| (k == key).then(|| secret.clone());
        proptest::prop_assert_eq!(verify(&signed, &[&resource], lookup, ts, 1), Ok(()));
    }

    #[test]
    fn each_counter_is_admitted_once_in_any_order(
        order in proptest::sample::subsequence((1u64..600).collect::<Vec<_>>(), 300)
            .prop_shuffle(),
    ) {
        let mut guard = ReplayGuard::new(DEFAULT_WINDOW_MS, 4, 4, NOW);
        for c in &order {
            proptest::prop_assert!(guard.admit(&signed_with(nonce(1, *c)), NOW).is_ok());
        }
        for c in &order {
            proptest::prop_assert!(guard.admit(&signed_with(nonce(1, *c)), NOW).is_err());
        }
    }

    #[test]
    fn wrapping_round_trips(
        key in proptest::collection::vec(proptest::num::u8::ANY, 1..64),
        secret in proptest::collection::vec(proptest::num::u8::ANY, 1..MAX_SECRET_LEN),
        n in proptest::array::uniform16(proptest::num::u8::ANY),
    ) {
        let w = wrap_secret(&key, &n, &secret);
        proptest::prop_assert_eq!(unwrap_secret(&key, &n, &w).unwrap(), secret);
    }
}
