//! Evaluation of every SQL operator, precedence, NULL logic and RocketMQ's conversions.

use sluice_filter::{Filter, Kind, Limits};
use std::collections::HashMap;

fn compile(expr: &str) -> Filter {
    Filter::compile(Kind::Sql, expr, &Limits::default())
        .unwrap_or_else(|e| panic!("{expr:?} should compile: {e}"))
}

/// Whether `expr` matches a message with these properties (and no tag).
fn m(expr: &str, props: &[(&str, &str)]) -> bool {
    compile(expr).matches(None, &props)
}

const NONE: [(&str, &str); 0] = [];

#[test]
fn equality_on_strings_numbers_and_booleans() {
    let p = &[
        ("a", "hello"),
        ("n", "5"),
        ("f", "2.5"),
        ("b", "TRUE"),
        ("big", "3000000000"),
    ];
    assert!(m("a = 'hello'", p));
    assert!(!m("a = 'Hello'", p));
    assert!(m("a <> 'x'", p));
    assert!(!m("a <> 'hello'", p));
    assert!(m("n = 5", p));
    assert!(
        m("n = 5.0", p),
        "string converts to a double for a float literal"
    );
    assert!(m("5 = n", p));
    assert!(m("f = 2.5", p));
    assert!(
        m("big = 3000000000", p),
        "a literal beyond 32 bits converts as a Long"
    );
    assert!(m("b = TRUE", p), "Boolean.valueOf ignores case");
    assert!(m("b <> FALSE", p));
    assert!(m("n = '5'", p));
    assert!(!m("n = '05'", p), "two strings compare as strings");
    assert!(m("5 = 5.0", &NONE));
    assert!(m("3000000000 = 3000000000.0", &NONE));
    assert!(m("TRUE = TRUE", &NONE));
    assert!(m("(n = 5) = TRUE", p));
}

#[test]
fn failed_conversions_never_match_even_under_or() {
    let p = &[
        ("f", "2.5"),
        ("s", "abc"),
        ("big", "3000000000"),
        ("b", "true"),
        ("sp", " 5"),
    ];
    assert!(
        !m("f = 2", p),
        "Integer.valueOf(\"2.5\") throws in RocketMQ"
    );
    assert!(!m("f <> 2", p));
    assert!(
        !m("s = 1 OR TRUE", p),
        "the exception ends the whole evaluation"
    );
    assert!(m("TRUE OR s = 1", p), "... unless OR already decided");
    assert!(
        m("FALSE AND s = 1 OR TRUE", p),
        "AND stops at FALSE before the bad operand"
    );
    assert!(!m("big = 5", p), "3000000000 does not fit an Integer");
    assert!(!m("big > -5", p), "-5 is still an Integer");
    assert!(m("big > -3000000000", p), "... and -3000000000 a Long");
    assert!(
        m("min = -2147483648", &[("min", "-2147483648")]),
        "negated Long stays a Long"
    );
    assert!(!m("sp = 5", p), "Integer.valueOf does not trim");
    assert!(m("sp = 5.0", p), "Double.valueOf does");
    assert!(
        !m("TRUE = b", p),
        "RocketMQ casts the Boolean to String and fails"
    );
    assert!(!m("NOT (s > 1)", p));
    assert!(!m("s > 1 IS NULL", p));
}

#[test]
fn ordering_comparisons() {
    let p = &[
        ("n", "10"),
        ("f", "3.1415"),
        ("x", "20"),
        ("e", "1e3"),
        ("nan", "NaN"),
        ("neg", "-4"),
    ];
    assert!(m("n > 9", p) && !m("n > 10", p) && m("n >= 10", p));
    assert!(m("n < 11", p) && !m("n < 10", p) && m("n <= 10", p));
    assert!(m("f > 3.14", p));
    assert!(m("n < x", p), "two strings compare as doubles");
    assert!(m("e = 1000.0", p) && m("e > n", p));
    assert!(m("nan > 1e300", p), "Java orders NaN above everything");
    assert!(m("neg < -3", p) && m("neg = -4", p));
    assert!(m("n > - -9", p));
    assert!(!m("f > 3", p), "\"3.1415\" is no Integer");
    assert!(m("+n > +9", p));
    assert!(m("2 < 3 AND 2.5 > 2 AND 3000000000 > 2", &NONE));
    assert!(!m("-n < 0", p), "negating a string gives NULL");
}

#[test]
fn between_and_not_between() {
    let p = &[("n", "5"), ("f", "5.5")];
    assert!(m("n BETWEEN 1 AND 5", p) && m("n BETWEEN 5 AND 9", p));
    assert!(!m("n BETWEEN 6 AND 9", p));
    assert!(m("n NOT BETWEEN 6 AND 9", p) && !m("n NOT BETWEEN 1 AND 9", p));
    assert!(m("f BETWEEN 5.0 AND 6.0", p));
    assert!(m("n BETWEEN -1 AND 5", p));
    assert!(
        m("n BETWEEN 1 AND 5 AND n = 5", p),
        "BETWEEN takes the first AND"
    );
    assert!(!m("missing BETWEEN 1 AND 5", p));
    assert!(!m("missing NOT BETWEEN 1 AND 5", p));
    assert!(!m("NOT (missing BETWEEN 1 AND 5)", p));
    assert!(
        m("n NOT BETWEEN 9 AND 1", p),
        "NOT BETWEEN bounds are not checked"
    );
    assert!(m("(missing BETWEEN 1 AND 9) IS NULL", p));
}

#[test]
fn in_and_not_in() {
    let p = &[("a", "3"), ("q", "it's")];
    assert!(m("a IN ('3', '4')", p) && !m("a IN ('4')", p));
    assert!(m("a NOT IN ('4', '5')", p) && !m("a not in ('3')", p));
    assert!(m("q IN ('it''s')", p));
    assert!(!m("missing IN ('x')", p) && !m("missing NOT IN ('x')", p));
    assert!(m("(missing NOT IN ('x')) IS NULL", p));
    assert!(
        m("(a) IN ('3')", p),
        "parentheses keep a property a property"
    );
}

#[test]
fn contains_startswith_endswith() {
    let p = &[("v", "axb"), ("sp", " ")];
    assert!(m("v CONTAINS 'x'", p) && m("v STARTSWITH 'ax'", p) && m("v ENDSWITH 'xb'", p));
    assert!(
        !m("v NOT CONTAINS 'x'", p)
            && !m("v NOT STARTSWITH 'ax'", p)
            && !m("v NOT ENDSWITH 'xb'", p)
    );
    assert!(
        m("v NOT CONTAINS 'u'", p) && m("v NOT STARTSWITH 'u'", p) && m("v NOT ENDSWITH 'u'", p)
    );
    assert!(
        !m("v CONTAINS ''", p) && !m("v NOT CONTAINS ''", p),
        "an empty pattern is FALSE"
    );
    assert!(!m("missing CONTAINS 'x'", p) && !m("missing NOT CONTAINS 'x'", p));
    assert!(
        m("NOT (missing CONTAINS 'x')", p),
        "FALSE, not unknown, for a missing value"
    );
    assert!(m("'axb' contains 'x'", &NONE));
    assert!(m("sp CONTAINS ' '", p));
    assert!(
        !m("(v = 'axb') CONTAINS 't'", p),
        "a boolean is not a string"
    );
    assert!(!m("5 NOT CONTAINS 'x'", p));
}

#[test]
fn is_null() {
    let p = &[("a", "")];
    assert!(m("a IS NOT NULL", p) && !m("a IS NULL", p));
    assert!(m("missing IS NULL", p) && !m("missing IS NOT NULL", p));
    assert!(m("NULL IS NULL", &NONE));
    assert!(m("(missing = 1) IS NULL", p));
    assert!(m("a = ''", p), "an empty value is present");
}

#[test]
fn three_valued_logic() {
    let p = &[("t", "1"), ("f", "0")];
    let (t, f, u) = ("t = 1", "f = 1", "missing = 1");
    let cases = [
        (format!("{u} AND {f}"), false, true),
        (format!("{f} AND {u}"), false, true),
        (format!("{u} OR {t}"), true, false),
        (format!("{t} OR {u}"), true, false),
        (format!("{u} AND {t}"), false, false),
        (format!("{u} OR {f}"), false, false),
        (format!("NOT ({u})"), false, false),
        (format!("NOT ({f})"), true, false),
        (format!("NOT ({t})"), false, true),
    ];
    for (expr, want, want_negated) in cases {
        assert_eq!(m(&expr, p), want, "{expr}");
        assert_eq!(m(&format!("NOT ({expr})"), p), want_negated, "NOT ({expr})");
    }
    assert!(!m("NULL", &NONE) && !m("NOT NULL", &NONE));
    assert!(m("TRUE", &NONE) && !m("FALSE", &NONE) && m("NOT FALSE", &NONE));
}

#[test]
fn null_sides_of_equality() {
    let p = &[("a", "1")];
    assert!(m("missing = other", p), "NULL = NULL is TRUE in RocketMQ");
    assert!(!m("missing <> other", p));
    assert!(
        !m("missing = a", p) && !m("missing <> a", p),
        "NULL on the left: unknown"
    );
    assert!(
        !m("a = missing", p) && m("a <> missing", p),
        "NULL on the right: FALSE"
    );
    assert!(!m("missing > 1", p) && !m("missing <= 1", p) && !m("1 < missing", p));
}

#[test]
fn properties_as_conditions() {
    let p = &[("flag", "true")];
    assert!(!m("flag", p), "a present property is FALSE as a condition");
    assert!(m("NOT flag", p));
    assert!(!m("missing", p) && !m("NOT missing", p));
    assert!(m("flag = TRUE", p));
    assert!(
        m("NOT flag = TRUE", p),
        "(NOT flag) = TRUE, and NOT flag is TRUE"
    );
    assert!(
        !m("NOT flag = 'true'", p),
        "a boolean against a string literal fails"
    );
}

#[test]
fn precedence() {
    let p = &[("a", "1"), ("b", "2"), ("c", "3")];
    assert!(
        m("a = 1 OR b = 9 AND c = 9", p),
        "AND binds tighter than OR"
    );
    assert!(!m("(a = 1 OR b = 9) AND c = 9", p));
    assert!(m("a = 9 AND b = 9 OR c = 3", p));
    assert!(m("a < b = TRUE", p), "comparisons bind tighter than =");
    assert!(m("a = 1 = TRUE", p), "= associates to the left");
    assert!(
        m("NOT a = 1 IS NOT NULL", p),
        "NOT binds tightest: ((NOT a) = 1) IS NOT NULL"
    );
    assert!(m("NOT (a = 2) AND NOT (b = 3)", p));
    assert!(m("a > 0 IS NOT NULL", p));
    assert!(
        !m("- -a = a", p),
        "negating a string gives NULL, and NULL = x is unknown"
    );
}

#[test]
fn case_insensitive_keywords_case_sensitive_names() {
    let p = &[("Key", "v"), ("n", "4")];
    assert!(m("Key = 'v' and n between 1 AnD 5 oR false", p));
    assert!(
        m("key IS null", p),
        "names are case-sensitive: `key` is missing"
    );
    assert!(m(
        "n NoT iN ('1') AND Key StartsWith 'v' AND Key eNdSwItH 'v' AND kEY iS NuLl",
        p
    ));
    assert!(m("true AND NOT False", p));
    assert!(m("n = 4l AND n = 4L", p), "the long suffix");
}

#[test]
fn strings_escapes_and_comments() {
    let p = &[("q", "'quoted'"), ("nl", "a\nb"), ("u", "日本")];
    assert!(m("q = '''quoted'''", p));
    assert!(m("nl = 'a\nb'", p));
    assert!(m("u = '日本' AND u STARTSWITH '日'", p));
    assert!(m("/* comment */ u IS NOT NULL -- trailing\n", p));
    assert!(m("u\t=\r\n'日本'\x0c", p));
}

#[test]
fn tags_are_visible_as_tags_property() {
    let f = compile("TAGS = 'TagA'");
    assert!(f.matches(Some("TagA"), &NONE));
    assert!(!f.matches(Some("TagB"), &NONE));
    assert!(!f.matches(None, &NONE));
    assert!(
        !f.matches(Some("TagA"), &[("TAGS", "TagB")]),
        "the properties' TAGS wins"
    );
    assert!(compile("TAGS IS NULL").matches(None, &NONE));
    assert!(
        compile("tags IS NULL").matches(Some("x"), &NONE),
        "only upper-case TAGS"
    );
    assert!(
        f.matches_tag(Some("other")),
        "SQL filters do not pre-filter by tag"
    );
    assert_eq!(f.tags(), None);
}

#[test]
fn property_sources() {
    let f = compile("a = 'x' AND b = 2");
    let map: HashMap<String, String> = [("a", "x"), ("b", "2")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(f.matches(None, &map));
    let btree: std::collections::BTreeMap<_, _> = map.clone().into_iter().collect();
    assert!(f.matches(None, &btree));
    let pairs: Vec<(String, String)> = map.into_iter().collect();
    assert!(f.matches(None, &pairs));
}

#[test]
fn tag_filters() {
    let limits = Limits::default();
    let f = Filter::compile(Kind::Tag, " TagA || TagB ", &limits).unwrap();
    assert_eq!(f.kind(), Kind::Tag);
    assert_eq!(f.tags().unwrap(), ["TagA", "TagB"]);
    assert!(
        f.matches(Some("TagB"), &NONE)
            && !f.matches(Some("TagC"), &NONE)
            && !f.matches(None, &NONE)
    );
    assert_eq!(f.to_string(), "TagA || TagB");
    let all = Filter::compile(Kind::Tag, "*", &limits).unwrap();
    assert_eq!(all.tags(), None);
    assert!(all.matches(None, &NONE) && all.matches_tag(Some("x")));
    let none = Filter::compile(Kind::Tag, "||", &limits).unwrap();
    assert_eq!(none.tags(), Some(&[][..]));
    assert!(!none.matches_tag(Some("x")));
    assert_eq!(none.to_string(), "||");
    let star = Filter::compile(Kind::Tag, " * ", &limits).unwrap();
    assert_eq!(
        star.tags().unwrap(),
        ["*"],
        "only exactly `*` means everything"
    );
    assert!(!star.matches_tag(Some("x")) && star.matches_tag(Some("*")));
    let again = Filter::compile(Kind::Tag, &star.to_string(), &limits).unwrap();
    assert_eq!(again.tags(), star.tags());
}

#[test]
fn filters_are_shareable() {
    fn assert_traits<T: Clone + std::fmt::Debug + Send + Sync + 'static>() {}
    assert_traits::<Filter>();
    assert_traits::<sluice_filter::FilterError>();
    let f = compile("a = 1");
    std::thread::spawn(move || assert!(f.matches(None, &[("a", "1")])))
        .join()
        .unwrap();
}
