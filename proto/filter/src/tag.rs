//! Tag expressions, parsed as RocketMQ's `FilterAPI.buildSubscriptionData` does.

use crate::error::{FilterError, LimitExceeded};
use crate::Limits;
use std::collections::HashSet;

/// A compiled tag expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TagFilter {
    /// `*` or the empty string: every message, tagged or not.
    All,
    /// Messages whose tag is one of these (first-seen order, no duplicates).
    Tags(Vec<String>),
}

/// Parses `a || b || c`.
///
/// Exactly `""` or `"*"` subscribe to everything. Anything else is split on `||`, each part
/// trimmed of characters up to U+0020 (Java's `String.trim`) and empty parts dropped. So
/// `" * "` is the literal tag `*`, and `"||"` or `"  "` give an empty set that matches no
/// message; both are what RocketMQ does.
pub(crate) fn parse(src: &str, limits: &Limits) -> Result<TagFilter, FilterError> {
    if src.len() > limits.max_len {
        let limit = LimitExceeded::Length {
            len: src.len(),
            max: limits.max_len,
        };
        return Err(FilterError::limit(src, limits.max_len, limit));
    }
    if src.is_empty() || src == "*" {
        return Ok(TagFilter::All);
    }
    let mut tags = Vec::new();
    let mut seen = HashSet::new();
    let mut offset = 0;
    for part in src.split("||") {
        let tag = part.trim_matches(|c: char| c <= ' ');
        if !tag.is_empty() && seen.insert(tag) {
            if tags.len() >= limits.max_in_list {
                let limit = LimitExceeded::ListItems {
                    max: limits.max_in_list,
                };
                return Err(FilterError::limit(src, offset, limit));
            }
            tags.push(tag.to_owned());
        }
        offset += part.len() + 2;
    }
    Ok(TagFilter::Tags(tags))
}

impl TagFilter {
    /// A message without a tag matches only `*`.
    pub(crate) fn matches(&self, tag: Option<&str>) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Tags(tags) => tag.is_some_and(|t| tags.iter().any(|x| x == t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(src: &str) -> TagFilter {
        parse(src, &Limits::default()).unwrap()
    }

    fn set(items: &[&str]) -> TagFilter {
        TagFilter::Tags(items.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn splits_trims_and_dedups() {
        assert_eq!(tags(""), TagFilter::All);
        assert_eq!(tags("*"), TagFilter::All);
        assert_eq!(tags(" * "), set(&["*"]));
        assert_eq!(tags("a || b ||a|| \tc\n"), set(&["a", "b", "c"]));
        assert_eq!(tags("a|b"), set(&["a|b"]));
        assert_eq!(tags("a|||b"), set(&["a", "|b"]));
        assert_eq!(tags("||"), set(&[]));
        assert_eq!(tags("  "), set(&[]));
        assert_eq!(tags("a b"), set(&["a b"]));
    }

    #[test]
    fn matching() {
        assert!(tags("*").matches(None));
        assert!(tags("").matches(Some("x")));
        assert!(tags("a||b").matches(Some("b")));
        assert!(!tags("a||b").matches(Some("B")));
        assert!(!tags("a||b").matches(None));
        assert!(!tags("a||b").matches(Some("")));
        assert!(!tags("||").matches(Some("a")));
    }

    #[test]
    fn limits() {
        let limits = Limits {
            max_in_list: 2,
            max_len: 10,
            ..Limits::default()
        };
        assert!(parse("a||b||a", &limits).is_ok());
        let err = parse("a||b||c", &limits).unwrap_err();
        assert_eq!(err.to_string(), "more than 2 items in a list");
        assert_eq!(err.position(), 6);
        let err = parse("abcdefghijk", &limits).unwrap_err();
        assert_eq!(err.to_string(), "expression is 11 bytes, the limit is 10");
    }
}
