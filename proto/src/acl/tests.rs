use super::*;

fn rule(user: &str, resource: &str, actions: &[&str], decision: &str) -> Rule {
    Rule::from_policy(&AclPolicy {
        user: user.into(),
        resource: resource.into(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
        decision: decision.into(),
    })
    .unwrap()
}

#[test]
fn patterns_match_their_kind_and_names() {
    let lit = Pattern::parse("topic:orders").unwrap();
    assert!(lit.matches(&Resource::Topic("orders")));
    assert!(!lit.matches(&Resource::Topic("orders2")));
    assert!(!lit.matches(&Resource::Group("orders")));
    let pre = Pattern::parse("group:billing-*").unwrap();
    assert!(pre.matches(&Resource::Group("billing-eu")));
    assert!(pre.matches(&Resource::Group("billing-")));
    assert!(!pre.matches(&Resource::Group("billing")));
    let any = Pattern::parse("topic:*").unwrap();
    assert!(any.matches(&Resource::Topic("%RETRY%g")));
    assert!(!any.matches(&Resource::Cluster));
    assert!(Pattern::parse("cluster")
        .unwrap()
        .matches(&Resource::Cluster));
    for p in ["topic:orders", "group:billing-*", "topic:*", "cluster"] {
        assert_eq!(Pattern::parse(p).unwrap().to_string(), p);
    }
    for bad in [
        "",
        "topic:",
        "queue:x",
        "topic:a*b",
        "topic:**",
        "topic:a b",
        "cluster:x",
        "Topic:x",
    ] {
        assert!(Pattern::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn deny_wins_and_default_is_deny() {
    let rules = [
        rule("u", "topic:*", &["pub", "sub"], "allow"),
        rule("u", "topic:secret-*", &["sub"], "deny"),
    ];
    assert_eq!(
        evaluate(&rules, Action::Sub, &Resource::Topic("orders")),
        Verdict::Allowed
    );
    assert_eq!(
        evaluate(&rules, Action::Sub, &Resource::Topic("secret-pay")),
        Verdict::Denied("topic:secret-*".into())
    );
    // The deny is for sub only.
    assert_eq!(
        evaluate(&rules, Action::Pub, &Resource::Topic("secret-pay")),
        Verdict::Allowed
    );
    assert_eq!(
        evaluate(&rules, Action::Delete, &Resource::Topic("orders")),
        Verdict::NotAllowed
    );
    assert_eq!(
        evaluate(&rules, Action::Sub, &Resource::Group("orders")),
        Verdict::NotAllowed
    );
    assert_eq!(
        evaluate([], Action::Get, &Resource::Cluster),
        Verdict::NotAllowed
    );
    let e = refusal(
        "u",
        Action::Sub,
        &Resource::Topic("secret-pay"),
        &Verdict::Denied("topic:secret-*".into()),
    );
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    assert!(
        e.message.contains("sub on topic:secret-pay"),
        "{}",
        e.message
    );
}

#[test]
fn policies_are_checked_and_made_canonical() {
    let r = rule("u", "topic:a", &["sub", "pub", "sub"], "allow");
    assert_eq!(r.to_policy().actions, vec!["pub", "sub"]);
    assert_eq!(rule("u", "cluster", &["all"], "deny").actions.len(), 8);
    for (user, res, actions, decision) in [
        ("", "topic:a", vec!["pub"], "allow"),
        ("u u", "topic:a", vec!["pub"], "allow"),
        ("u", "topic:a", vec![], "allow"),
        ("u", "topic:a", vec!["publish"], "allow"),
        ("u", "topic:a", vec!["pub"], "maybe"),
    ] {
        let p = AclPolicy {
            user: user.into(),
            resource: res.into(),
            actions: actions.into_iter().map(String::from).collect(),
            decision: decision.into(),
        };
        assert!(Rule::from_policy(&p).is_err(), "{p:?}");
    }
}

proptest::proptest! {
    #[test]
    fn parsing_never_panics_and_round_trips(s in ".{0,300}") {
        if let Ok(p) = Pattern::parse(&s) {
            proptest::prop_assert_eq!(Pattern::parse(&p.to_string()).unwrap(), p);
        }
    }

    #[test]
    fn a_matching_deny_always_wins(
        name in "[a-z]{1,8}",
        prefix_len in 0usize..8,
        allows in proptest::collection::vec(0usize..8, 0..8),
    ) {
        let prefix: String = name.chars().take(prefix_len).collect();
        let mut rules: Vec<Rule> = allows
            .iter()
            .map(|a| rule("u", "topic:*", &[Action::ALL[*a].as_str()], "allow"))
            .collect();
        rules.push(rule("u", &format!("topic:{prefix}*"), &["sub"], "deny"));
        let verdict = evaluate(&rules, Action::Sub, &Resource::Topic(&name));
        proptest::prop_assert!(matches!(verdict, Verdict::Denied(_)), "{verdict:?}");
    }
}
