//! Compile errors: positions, expected/found texts, RocketMQ's operand checks and limits.

use sluice_filter::{Filter, FilterError, Kind, LimitExceeded, Limits};

fn err_with(expr: &str, limits: &Limits) -> FilterError {
    match Filter::compile(Kind::Sql, expr, limits) {
        Ok(f) => panic!("{expr:?} compiled to {f}"),
        Err(e) => e,
    }
}

fn err(expr: &str) -> FilterError {
    err_with(expr, &Limits::default())
}

/// Checks column, expected and found of a syntax error.
fn syntax(expr: &str, column: usize, expected: &str, found: &str) {
    match err(expr) {
        FilterError::Syntax {
            column: c,
            expected: e,
            found: f,
            position,
        } => {
            assert_eq!(
                (c, e.as_str(), f.as_str()),
                (column, expected, found),
                "{expr:?}"
            );
            assert!(position <= expr.len());
        }
        other => panic!("{expr:?}: unexpected {other:?}"),
    }
}

const PRIMARY: &str = "a literal, an identifier or '('";
const CONDITION: &str = "a condition (a comparison, a property, TRUE, FALSE or NULL)";

#[test]
fn grammar_errors_with_positions() {
    syntax("", 1, PRIMARY, "end of input");
    syntax("   ", 4, PRIMARY, "end of input");
    syntax("a = 1 AND", 10, PRIMARY, "end of input");
    syntax("a == 1", 4, PRIMARY, "=");
    syntax("(a = 1 AND b = 2", 17, "an operator or ')'", "end of input");
    syntax("a = 1)", 6, "an operator or end of input", ")");
    syntax("a = 1 b", 7, "an operator or end of input", "b");
    syntax("a IN ()", 7, "a string literal", ")");
    syntax("a IN ('x' AND 'y')", 11, "',' or ')'", "AND");
    syntax("a IN 'x'", 6, "'('", "'x'");
    syntax("a IN (1)", 7, "a string literal", "1");
    syntax(
        "a NOT x",
        7,
        "CONTAINS, STARTSWITH, ENDSWITH, BETWEEN or IN",
        "x",
    );
    syntax("a IS 5", 6, "NULL or NOT NULL", "5");
    syntax("a IS NOT 5", 10, "NULL", "5");
    syntax("a CONTAINS b", 12, "a string literal", "b");
    syntax("a BETWEEN 1 OR 2", 13, "AND", "OR");
    syntax("0123 = a", 2, "an operator or end of input", "123");
    syntax("x = 'héllo' AND y >", 20, PRIMARY, "end of input");
}

#[test]
fn lexical_errors() {
    let token = "a literal, an identifier, a keyword or an operator";
    syntax("a.b = 1", 2, token, ".");
    syntax("a != 1", 3, token, "!");
    syntax("a = \"x\"", 5, token, "\"");
    syntax("ünïcode = 1", 1, token, "ü");
    syntax(
        "a = 'open",
        5,
        "a closing quote for this string",
        "end of input",
    );
    syntax(
        "a = 1 /* open",
        7,
        "'*/' to close the comment",
        "end of input",
    );
    // A `--` comment needs its line break, as in RocketMQ's grammar.
    syntax("a = 1 -- note", 7, "an operator or end of input", "-");
    syntax(
        "a = 99999999999999999999",
        5,
        "an integer no larger than 9223372036854775807",
        "99999999999999999999",
    );
    syntax(
        "a > 0.0",
        5,
        "a finite floating-point literal above zero",
        "0.0",
    );
    syntax(
        "a > 1e-400",
        5,
        "a finite floating-point literal above zero",
        "1e-400",
    );
    syntax(
        "a > 1e400",
        5,
        "a finite floating-point literal above zero",
        "1e400",
    );
}

#[test]
fn rocketmq_operand_checks() {
    syntax("5", 1, CONDITION, "5");
    syntax("'abc'", 1, CONDITION, "'abc'");
    syntax("-a", 1, CONDITION, "-a");
    syntax("NOT 5", 5, CONDITION, "5");
    syntax("a = 'x' OR 'y'", 12, CONDITION, "'y'");
    syntax("a > 'x'", 5, "a numeric operand", "'x'");
    syntax("TRUE < 1", 1, "a numeric operand", "TRUE");
    syntax("a > b > c", 1, "a numeric operand", "a > b");
    syntax("NOT a > 1", 1, "a numeric operand", "NOT a");
    syntax("a BETWEEN 'x' AND 'y'", 11, "a numeric operand", "'x'");
    syntax(
        "a = NULL",
        5,
        "an operand other than NULL (use IS NULL)",
        "NULL",
    );
    syntax(
        "NULL <> a",
        1,
        "an operand other than NULL (use IS NULL)",
        "NULL",
    );
    syntax("TRUE = 1", 8, "TRUE, FALSE or a non-literal operand", "1");
    syntax(
        "a BETWEEN 5 AND 1",
        17,
        "an upper bound not below the lower bound",
        "1",
    );
    syntax(
        "a BETWEEN 2.5 AND 2",
        19,
        "an upper bound not below the lower bound",
        "2",
    );
    syntax(
        "a BETWEEN NULL AND 1",
        11,
        "a bound other than NULL",
        "NULL",
    );
    syntax("5 IN ('x')", 1, "a property name before IN", "5");
    syntax("NOT a IN ('x')", 1, "a property name before IN", "NOT a");
    let long = format!("{} > 'x'", "a".repeat(100));
    match err(&long) {
        FilterError::Syntax { found, .. } => assert_eq!(found, "'x'"),
        other => panic!("{other:?}"),
    }
    match err(&format!("'{}' > 1", "y".repeat(100))) {
        FilterError::Syntax { found, .. } => assert_eq!(found, format!("'{}...", "y".repeat(31))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn accepted_where_rocketmq_accepts() {
    for ok in [
        "1 = TRUE",
        "TRUE = FALSE",
        "a = -NULL",
        "a BETWEEN -5 AND -9",
        "a NOT BETWEEN 9 AND 1",
        "a BETWEEN 1 AND 1",
        "a BETWEEN 1 AND 1.0",
        "NULL",
        "NOT NULL",
        "NULL IS NULL",
        "5 = 'x'",
        "a > -'x'",
        "(a) IN ('x')",
        "+a IN ('x')",
        "'s' CONTAINS 'x'",
        "a",
        "--5 = a",
    ] {
        Filter::compile(Kind::Sql, ok, &Limits::default())
            .unwrap_or_else(|e| panic!("{ok:?}: {e}"));
    }
}

#[test]
fn display_format() {
    assert_eq!(
        err("(a = 1").to_string(),
        "at column 7: expected an operator or ')' but found end of input"
    );
    assert_eq!(
        err("a IN ('x' AND").to_string(),
        "at column 11: expected ',' or ')' but found 'AND'"
    );
    assert_eq!(
        err("a > 'x'").to_string(),
        "at column 5: expected a numeric operand but found 'x'"
    );
}

#[test]
fn length_limit() {
    let expr = format!("a = '{}'", "x".repeat(4990));
    assert_eq!(expr.len(), 4996);
    let e = err(&expr);
    assert_eq!(e.to_string(), "expression is 4996 bytes, the limit is 4096");
    assert!(matches!(
        e,
        FilterError::Limit {
            limit: LimitExceeded::Length {
                len: 4996,
                max: 4096
            },
            position: 4096,
            ..
        }
    ));
    let small = Limits {
        max_len: 5,
        ..Limits::default()
    };
    assert!(Filter::compile(Kind::Sql, "a = 1", &small).is_ok());
    assert!(Filter::compile(Kind::Sql, "a = 10", &small).is_err());
    assert!(Filter::compile(Kind::Tag, "abcdef", &small).is_err());
}

#[test]
fn depth_limit() {
    let unlimited_len = Limits {
        max_len: usize::MAX,
        ..Limits::default()
    };
    for deep in [
        "(".repeat(1_000_000),
        "NOT ".repeat(1_000_000) + "a",
        "- ".repeat(1_000_000) + "1 = a",
        "+".repeat(1_000_000),
    ] {
        let e = err_with(&deep, &unlimited_len);
        assert_eq!(e.to_string(), "nesting deeper than 64");
        assert!(e.position() <= deep.len());
    }
    let at_limit = "(".repeat(64) + "a" + &")".repeat(64);
    assert!(Filter::compile(Kind::Sql, &at_limit, &Limits::default()).is_ok());
    let e = err(&("(".repeat(65) + "a" + &")".repeat(65)));
    assert_eq!(
        (e.column(), e.to_string().as_str()),
        (65, "nesting deeper than 64")
    );
    let nots = "NOT ".repeat(64) + "a";
    assert!(Filter::compile(Kind::Sql, &nots, &Limits::default()).is_ok());
    assert!(Filter::compile(Kind::Sql, &("NOT ".repeat(65) + "a"), &Limits::default()).is_err());
    // Left-associative chains grow the tree, so they count too ...
    let chain = "a".to_string() + &" = a".repeat(64);
    assert!(Filter::compile(Kind::Sql, &chain, &Limits::default()).is_ok());
    assert_eq!(err(&(chain + " = a")).to_string(), "nesting deeper than 64");
    // ... but AND / OR chains are flat.
    let ands = vec!["a = 1"; 400].join(" AND ");
    assert!(Filter::compile(Kind::Sql, &ands, &Limits::default()).is_ok());
    let tight = Limits {
        max_depth: 2,
        ..Limits::default()
    };
    assert!(Filter::compile(Kind::Sql, "NOT (a = 1)", &tight).is_ok());
    assert!(Filter::compile(Kind::Sql, "NOT NOT (a = 1)", &tight).is_err());
}

#[test]
fn in_list_limit() {
    let items = |n: usize| {
        (0..n)
            .map(|i| format!("'{i}'"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let long = Limits {
        max_len: 1 << 20,
        ..Limits::default()
    };
    assert!(Filter::compile(Kind::Sql, &format!("a IN ({})", items(1024)), &long).is_ok());
    let expr = format!("a IN ({})", items(1025));
    let e = err_with(&expr, &long);
    assert_eq!(e.to_string(), "more than 1024 items in a list");
    assert_eq!(e.position(), expr.find("'1024'").unwrap());
    let tags = (0..3).map(|i| i.to_string()).collect::<Vec<_>>().join("||");
    let two = Limits {
        max_in_list: 2,
        ..Limits::default()
    };
    assert!(Filter::compile(Kind::Tag, &tags, &two).is_err());
}
