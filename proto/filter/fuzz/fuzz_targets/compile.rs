//! Compiles arbitrary input as a SQL and a tag filter and evaluates whatever compiles against
//! a few messages; libFuzzer reports any panic, overflow or timeout.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_filter::{Filter, Kind, Limits};

const MESSAGES: &[&[(&str, &str)]] = &[
    &[],
    &[("a", "1"), ("b", "x"), ("TAGS", "TagA")],
    &[("a", "2.5"), ("b", "true"), ("c", "NaN")],
    &[("a", "2147483648"), ("b", "-0"), ("c", "")],
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits::default();
    for kind in [Kind::Sql, Kind::Tag] {
        match Filter::compile(kind, text, &limits) {
            Ok(filter) => {
                for props in MESSAGES {
                    for tag in [None, Some("TagA")] {
                        let _ = filter.matches(tag, props);
                        let _ = filter.matches_tag(tag);
                    }
                }
                // The normalized text must compile to the same filter.
                let printed = filter.to_string();
                let wide = Limits {
                    max_len: usize::MAX,
                    ..limits
                };
                let again =
                    Filter::compile(kind, &printed, &wide).expect("printed filter compiles");
                assert_eq!(
                    again.expr(),
                    filter.expr(),
                    "{text:?} printed as {printed:?}"
                );
                assert_eq!(again.tags(), filter.tags());
            }
            Err(e) => assert!(e.position() <= text.len(), "{text:?}: {e:?}"),
        }
    }
});
