//! Compile errors. Matching never fails, so these only come out of [`crate::Filter::compile`].

use std::fmt;

/// Why an expression did not compile.
///
/// Every variant carries the byte offset it refers to (always `<=` the input length) and the
/// matching 1-based column, counted in characters from the start of the expression (a newline
/// counts as one character: expressions are normally one line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The text is not a valid expression: a lexical or grammar error, or an operand of the
    /// wrong kind that RocketMQ also rejects when it compiles the selector (e.g. `a > 'x'`).
    #[error("at column {column}: expected {expected} but found {}", Quoted(found))]
    Syntax {
        /// Byte offset of the offending token.
        position: usize,
        /// 1-based character column of `position`.
        column: usize,
        /// What would have been valid here, e.g. `a literal, an identifier or '('`.
        expected: String,
        /// The offending token as written (shortened if long), or `end of input`.
        found: String,
    },
    /// The expression is larger than [`crate::Limits`] allow.
    #[error("{limit}")]
    Limit {
        /// Byte offset where the limit was crossed.
        position: usize,
        /// 1-based character column of `position`.
        column: usize,
        /// Which limit.
        limit: LimitExceeded,
    },
}

/// The limit a [`FilterError::Limit`] refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// The expression text is longer than `max_len` bytes.
    #[error("expression is {len} bytes, the limit is {max}")]
    Length { len: usize, max: usize },
    /// Parentheses, prefix operators or chained operators nest deeper than `max_depth`.
    #[error("nesting deeper than {max}")]
    Depth { max: usize },
    /// An `IN` list (or a tag expression) has more than `max_in_list` items.
    #[error("more than {max} items in a list")]
    ListItems { max: usize },
}

impl FilterError {
    /// Byte offset in the expression that the error refers to.
    pub fn position(&self) -> usize {
        match self {
            FilterError::Syntax { position, .. } | FilterError::Limit { position, .. } => *position,
        }
    }

    /// 1-based character column of [`Self::position`].
    pub fn column(&self) -> usize {
        match self {
            FilterError::Syntax { column, .. } | FilterError::Limit { column, .. } => *column,
        }
    }

    pub(crate) fn syntax(src: &str, position: usize, expected: &str, found: &str) -> Self {
        FilterError::Syntax {
            position,
            column: column_at(src, position),
            expected: expected.to_owned(),
            found: found.to_owned(),
        }
    }

    pub(crate) fn limit(src: &str, position: usize, limit: LimitExceeded) -> Self {
        FilterError::Limit {
            position,
            column: column_at(src, position),
            limit,
        }
    }
}

/// What `found` says when the input ran out.
pub(crate) const END_OF_INPUT: &str = "end of input";

/// 1-based character column of byte offset `pos` (which need not be on a char boundary).
pub(crate) fn column_at(src: &str, pos: usize) -> usize {
    src.char_indices().take_while(|(i, _)| *i < pos).count() + 1
}

/// Source text of a token or operand for `found`: long operands are cut so messages stay short.
pub(crate) fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 32;
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}...", text.get(..cut).unwrap_or(text)),
        None => text.to_owned(),
    }
}

/// Quotes `found` for display unless it already is a quoted string literal or "end of input".
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == END_OF_INPUT || self.0.starts_with('\'') {
            f.write_str(self.0)
        } else {
            write!(f, "'{}'", self.0)
        }
    }
}
