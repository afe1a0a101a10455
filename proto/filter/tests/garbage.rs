//! Arbitrary text and token soups: compiling never panics, errors point inside the input, and
//! whatever compiles evaluates without panicking and survives a print/parse round trip.

use proptest::collection::vec;
use proptest::prelude::*;
use sluice_filter::{Filter, FilterError, Kind, Limits};

const TOKENS: &[&str] = &[
    "(",
    ")",
    ",",
    "=",
    "<>",
    ">",
    ">=",
    "<",
    "<=",
    "+",
    "-",
    "--",
    "/*",
    "*/",
    "\n",
    "NOT",
    "and",
    "OR",
    "BETWEEN",
    "IN",
    "IS",
    "NULL",
    "TRUE",
    "false",
    "CONTAINS",
    "STARTSWITH",
    "EndsWith",
    "a",
    "b",
    "TAGS",
    "$x",
    "_",
    "'x'",
    "''",
    "'it''s'",
    "'",
    "0",
    "1",
    "5L",
    "0123",
    "2147483648",
    "9223372036854775808",
    "1.5",
    ".5",
    "5.",
    "1e3",
    "0.0",
    "1e400",
    "日本",
    "!",
    ".",
    "#",
];

const PROPS: &[(&str, &str)] = &[
    ("a", "1"),
    ("b", "x"),
    ("$x", "2.5"),
    ("_", "true"),
    ("TAGS", "t"),
];

fn check_error(input: &str, e: &FilterError) -> Result<(), TestCaseError> {
    prop_assert!(e.position() <= input.len(), "{:?}: {:?}", input, e);
    prop_assert!(
        e.column() >= 1 && e.column() <= input.chars().count() + 1,
        "{:?}: {:?}",
        input,
        e
    );
    prop_assert!(!e.to_string().is_empty());
    Ok(())
}

/// Compiles `input` both ways; what compiles is evaluated and round-tripped.
fn exercise(input: &str) -> Result<(), TestCaseError> {
    let limits = Limits {
        max_len: 1 << 16,
        max_depth: 16,
        max_in_list: 8,
    };
    match Filter::compile(Kind::Sql, input, &limits) {
        Err(e) => check_error(input, &e)?,
        Ok(f) => {
            for tag in [None, Some("t"), Some("")] {
                let _ = f.matches(tag, &PROPS);
                let _ = f.matches(tag, &[("a", "NaN"), ("b", "-0")]);
            }
            let printed = f.to_string();
            let again = Filter::compile(
                Kind::Sql,
                &printed,
                &Limits {
                    max_len: 1 << 20,
                    ..limits
                },
            )
            .map_err(|e| TestCaseError::fail(format!("{input:?} printed as {printed:?}: {e}")))?;
            prop_assert_eq!(
                again.expr(),
                f.expr(),
                "{:?} printed as {:?}",
                input,
                printed
            );
            prop_assert_eq!(
                again.matches(Some("t"), &PROPS),
                f.matches(Some("t"), &PROPS)
            );
        }
    }
    match Filter::compile(Kind::Tag, input, &limits) {
        Err(e) => check_error(input, &e)?,
        Ok(f) => {
            let _ = f.matches(Some("a"), &PROPS);
            let again = Filter::compile(Kind::Tag, &f.to_string(), &Limits::default()).unwrap();
            prop_assert_eq!(again.tags(), f.tags());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_strings(input in any::<String>()) {
        exercise(&input)?;
    }

    #[test]
    fn arbitrary_bytes(bytes in vec(any::<u8>(), 0..64)) {
        exercise(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn token_soup(tokens in vec(proptest::sample::select(TOKENS), 0..24), glue in proptest::sample::select(&[" ", ""][..])) {
        exercise(&tokens.join(glue))?;
    }

    /// Soups that start from a valid expression and get a few tokens spliced in.
    #[test]
    fn mutated_valid_expressions(
        base in proptest::sample::select(&[
            "a = 1 AND b <> 'x'",
            "NOT (a BETWEEN 1 AND 5) OR b IN ('x', 'y')",
            "a IS NOT NULL AND b NOT CONTAINS 'q'",
            "(a > -1.5 OR TAGS = 't') AND $x <= 3",
        ][..]),
        at in any::<proptest::sample::Index>(),
        insert in vec(proptest::sample::select(TOKENS), 1..4),
    ) {
        let words: Vec<&str> = base.split(' ').collect();
        let cut = at.index(words.len() + 1);
        let mut mixed = words[..cut].to_vec();
        mixed.extend(insert);
        mixed.extend(&words[cut..]);
        exercise(&mixed.join(" "))?;
    }
}
