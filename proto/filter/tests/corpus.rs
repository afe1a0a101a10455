//! Runs every file of `corpus/` (shared with the cargo-fuzz target) and some large inputs
//! built here through compile and match. `valid-*` files must compile as SQL, `invalid-*`
//! must not, `*.tag` must compile as tag expressions; nothing may panic.

use sluice_filter::{Filter, Kind, Limits};
use std::path::Path;

const PROPS: &[(&str, &str)] = &[
    ("a", "1"),
    ("b", "2"),
    ("name", "xyz"),
    ("flag", "true"),
    ("TAGS", "TagA"),
];

/// Compiles `input` as both kinds and evaluates whatever compiled; returns the SQL outcome.
fn run(input: &str, limits: &Limits) -> bool {
    let sql = Filter::compile(Kind::Sql, input, limits);
    if let Ok(f) = &sql {
        for tag in [None, Some("TagA")] {
            let _ = f.matches(tag, &PROPS);
            let _ = f.matches(tag, &[("a", "abc")]);
            let _ = f.matches(tag, &[("x", "y")]);
        }
    }
    if let Ok(f) = Filter::compile(Kind::Tag, input, limits) {
        let _ = (
            f.matches(Some("TagA"), &PROPS),
            f.matches_tag(None),
            f.tags(),
        );
    }
    sql.is_ok()
}

#[test]
fn corpus_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let compiled = run(&text, &Limits::default());
        if name.starts_with("valid-") {
            assert!(compiled, "{name} should compile");
        } else if name.starts_with("invalid-") {
            assert!(!compiled, "{name} should not compile");
        } else if name.ends_with(".tag") {
            assert!(
                Filter::compile(Kind::Tag, &text, &Limits::default()).is_ok(),
                "{name}"
            );
        }
        count += 1;
    }
    assert!(count >= 30, "only {count} corpus files");
}

#[test]
fn large_inputs_built_here() {
    let unlimited = Limits {
        max_len: usize::MAX,
        ..Limits::default()
    };
    let huge = [
        "(".repeat(1_000_000),
        ")".repeat(1_000_000),
        "NOT ".repeat(250_000) + "a",
        "-".repeat(1_000_000),
        "- ".repeat(500_000) + "1 = a",
        "a".repeat(1_000_000),
        format!("a = '{}'", "x".repeat(1_000_000)),
        "'".repeat(1_000_001),
        "a = 1 AND ".repeat(100_000) + "a = 1",
        "a = 1 OR ".repeat(100_000) + "a = 1",
        "a IN (".to_string() + &"'x',".repeat(100_000) + "'y')",
        "/*".repeat(500_000),
        "-- x\n".repeat(200_000) + "a = 1",
    ];
    for input in &huge {
        run(input, &unlimited);
        // With the default limits every one of these is refused by length.
        assert!(!run(input, &Limits::default()));
    }
    // A flat chain that fills the default length limit compiles and evaluates.
    let chain = vec!["a = 1"; 409].join(" OR ");
    assert!(chain.len() <= 4096);
    let f = Filter::compile(Kind::Sql, &chain, &Limits::default()).unwrap();
    assert!(f.matches(None, &PROPS));
}
