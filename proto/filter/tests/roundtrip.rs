//! Random well-formed trees are printed, parsed back and evaluated; results must agree with a
//! small reference evaluator transcribed from RocketMQ's Java classes, and printing must be
//! stable.

mod reference;

use proptest::collection::vec;
use proptest::prelude::*;
use reference::{reference_matches, Msg, POOL};
use sluice_filter::{CompareOp, Expr, Filter, Kind, Limits, Literal, MatchOp};
use std::collections::HashMap;

// Generator of trees that pass RocketMQ's compile-time checks.

const NAMES: &[&str] = &["a", "b", "TAGS", "x_1", "$d"];

fn is_condition(e: &Expr) -> bool {
    !matches!(
        e,
        Expr::Prop(_)
            | Expr::Neg(_)
            | Expr::Lit(Literal::Int(_) | Literal::Float(_) | Literal::Str(_))
    )
}

/// Where a condition is required: wrap anything else in `IS NULL`.
fn as_condition(e: Expr) -> Expr {
    if is_condition(&e) || matches!(e, Expr::Prop(_)) {
        e
    } else {
        Expr::IsNull {
            expr: Box::new(e),
            negated: false,
        }
    }
}

/// Operands of `>` and BETWEEN: a negation is always accepted.
fn numeric(e: Expr) -> Box<Expr> {
    let ok = match &e {
        Expr::Lit(lit) => matches!(lit, Literal::Int(_) | Literal::Float(_)),
        other => !is_condition(other),
    };
    Box::new(if ok { e } else { Expr::Neg(Box::new(e)) })
}

fn lit_number(e: &Expr) -> Option<f64> {
    match e {
        Expr::Lit(Literal::Int(v)) => Some(*v as f64),
        Expr::Lit(Literal::Float(v)) => Some(*v),
        _ => None,
    }
}

fn leaf() -> impl Strategy<Value = Expr> {
    // Mostly numbers that the pool's strings parse to, so comparisons often succeed.
    let int = prop_oneof![
        4 => proptest::sample::select(&[0i64, 1, 5][..]),
        1 => 0i64..10,
        1 => proptest::sample::select(&[2147483647i64, 2147483648, i64::MAX][..]),
        1 => 0..=i64::MAX,
    ];
    let float = prop_oneof![
        4 => proptest::sample::select(&[0.5, 1.5, 2.5, 5.0, 1000.0, 2147483648.0][..]),
        1 => (1u32..100_000).prop_map(|n| f64::from(n) / 8.0),
        1 => proptest::sample::select(&[5e-324, 1e300, 9.223372036854776e18][..]),
    ];
    prop_oneof![
        proptest::sample::select(NAMES).prop_map(|n| Expr::Prop(n.to_string())),
        int.prop_map(|v| Expr::Lit(Literal::Int(v.max(0)))),
        float.prop_map(|v| Expr::Lit(Literal::Float(v))),
        proptest::sample::select(POOL).prop_map(|s| Expr::Lit(Literal::Str(s.to_string()))),
        any::<bool>().prop_map(|b| Expr::Lit(Literal::Bool(b))),
        Just(Expr::Lit(Literal::Null)),
    ]
}

fn tree(depth: u32, size: u32) -> impl Strategy<Value = Expr> {
    let op = |ops: &'static [CompareOp]| proptest::sample::select(ops);
    let pool = || proptest::sample::select(POOL).prop_map(str::to_string);
    leaf()
        .prop_recursive(depth, size, 3, move |inner| {
            let sub = || inner.clone();
            prop_oneof![
                sub().prop_map(|e| Expr::Neg(Box::new(e))),
                sub().prop_map(|e| Expr::Not(Box::new(as_condition(e)))),
                vec(sub(), 2..4).prop_map(|v| Expr::And(v.into_iter().map(as_condition).collect())),
                vec(sub(), 2..4).prop_map(|v| Expr::Or(v.into_iter().map(as_condition).collect())),
                (op(&[CompareOp::Eq, CompareOp::Ne]), sub(), sub()).prop_map(|(op, l, r)| {
                    let fix = |e: Expr| {
                        if e == Expr::Lit(Literal::Null) {
                            Expr::Neg(Box::new(e))
                        } else {
                            e
                        }
                    };
                    let (l, mut r) = (fix(l), fix(r));
                    if matches!(l, Expr::Lit(Literal::Bool(_)))
                        && matches!(r, Expr::Lit(ref x) if !matches!(x, Literal::Bool(_)))
                    {
                        r = Expr::Neg(Box::new(r));
                    }
                    Expr::Compare {
                        op,
                        lhs: Box::new(l),
                        rhs: Box::new(r),
                    }
                }),
                (
                    op(&[CompareOp::Gt, CompareOp::Ge, CompareOp::Lt, CompareOp::Le]),
                    sub(),
                    sub()
                )
                    .prop_map(|(op, l, r)| Expr::Compare {
                        op,
                        lhs: numeric(l),
                        rhs: numeric(r)
                    }),
                (sub(), any::<bool>()).prop_map(|(e, negated)| Expr::IsNull {
                    expr: Box::new(e),
                    negated
                }),
                (sub(), sub(), sub(), any::<bool>()).prop_map(|(e, lo, hi, negated)| {
                    let (mut low, mut high) = (numeric(lo), numeric(hi));
                    if let (Some(l), Some(h)) = (lit_number(&low), lit_number(&high)) {
                        if h < l && !negated {
                            std::mem::swap(&mut low, &mut high);
                        }
                    }
                    Expr::Between {
                        expr: numeric(e),
                        low,
                        high,
                        negated,
                    }
                }),
                (
                    proptest::sample::select(NAMES),
                    vec(pool(), 1..4),
                    any::<bool>()
                )
                    .prop_map(|(p, list, negated)| Expr::In {
                        prop: p.to_string(),
                        list,
                        negated
                    }),
                (
                    proptest::sample::select(
                        &[MatchOp::Contains, MatchOp::StartsWith, MatchOp::EndsWith][..]
                    ),
                    sub(),
                    pool(),
                    any::<bool>()
                )
                    .prop_map(|(op, e, pattern, negated)| Expr::Match {
                        op,
                        expr: Box::new(e),
                        pattern,
                        negated
                    }),
            ]
        })
        .prop_map(as_condition)
}

fn message() -> impl Strategy<Value = (HashMap<String, String>, Option<String>)> {
    let props = vec(
        (
            proptest::sample::select(NAMES),
            proptest::sample::select(POOL),
        ),
        0..6,
    )
    .prop_map(|kv| {
        kv.into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    });
    (
        props,
        proptest::option::of(proptest::sample::select(POOL).prop_map(str::to_string)),
    )
}

/// Print, parse back, print again; evaluate the parsed tree against the reference.
fn check(
    ast: &Expr,
    messages: &[(HashMap<String, String>, Option<String>)],
) -> Result<(), TestCaseError> {
    let limits = Limits {
        max_len: 1 << 20,
        ..Limits::default()
    };
    let text = ast.to_string();
    let filter = Filter::compile(Kind::Sql, &text, &limits)
        .map_err(|e| TestCaseError::fail(format!("{text:?} does not compile: {e}")))?;
    let parsed = filter.expr().unwrap();
    let reprinted = parsed.to_string();
    prop_assert_eq!(&reprinted, &text);
    let again = Filter::compile(Kind::Sql, &reprinted, &limits).unwrap();
    prop_assert_eq!(again.expr().unwrap(), parsed);
    for (props, tag) in messages {
        let m = Msg {
            props,
            tag: tag.as_deref(),
        };
        prop_assert_eq!(
            filter.matches(tag.as_deref(), props),
            reference_matches(ast, &m),
            "{} with {:?}, tag {:?}",
            text,
            props,
            tag
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Small trees: results are often decided by single comparisons, so they are sensitive.
    #[test]
    fn small_trees(ast in tree(3, 8), messages in vec(message(), 1..8)) {
        check(&ast, &messages)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn large_trees(ast in tree(6, 64), messages in vec(message(), 1..8)) {
        check(&ast, &messages)?;
    }
}
