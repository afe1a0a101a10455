//! Message filters for subscriptions: RocketMQ-compatible tag expressions and SQL92 selectors.
//!
//! The broker compiles a subscription's expression once ([`Filter::compile`]) and evaluates
//! it per message ([`Filter::matches`]); clients compile expressions to validate them.
//! Compiling reports errors with a position; matching never fails and never panics.
//!
//! ```
//! use sluice_filter::{Filter, Kind, Limits};
//! use std::collections::HashMap;
//!
//! let f = Filter::compile(Kind::Sql, "region IN ('eu', 'us') AND price > 10.5", &Limits::default())?;
//! let props = HashMap::from([("region".to_string(), "eu".to_string()), ("price".to_string(), "11".to_string())]);
//! assert!(f.matches(None, &props));
//!
//! let t = Filter::compile(Kind::Tag, "TagA || TagB", &Limits::default())?;
//! assert_eq!(t.tags(), Some(&["TagA".to_string(), "TagB".to_string()][..]));
//! assert!(t.matches_tag(Some("TagB")));
//! # Ok::<(), sluice_filter::FilterError>(())
//! ```
//!
//! # Semantics
//!
//! The grammar and evaluation follow Apache RocketMQ's `filter` module (`SelectorParser.jj`,
//! `ComparisonExpression`, `UnaryExpression`, `LogicExpression`, `ConstantExpression`) and the
//! broker's use of it (`ExpressionMessageFilter`: an exception while evaluating means "no
//! match"); tag expressions follow `FilterAPI.buildSubscriptionData`. Highlights, several of
//! them surprising but kept for compatibility with RocketMQ clients:
//!
//! * Literals: integers (`0` or `[1-9][0-9]*`, optional `L`; no hex or octal), floats (`1.5`,
//!   `1.`, `.5`, `1e3`; zero and overflowing values are rejected, as RocketMQ's range check
//!   does), strings in `'...'` with `''` for a quote, `TRUE`, `FALSE`, `NULL`. No negative
//!   literals: `-5` is negation. Keywords are case-insensitive, property names are not.
//!   Identifiers are `[A-Za-z_$][A-Za-z0-9_$]*` (no `.`). `/* */` comments are allowed, and
//!   `--` comments up to a line break, which they need: without one, `a = 1 -- note` is an
//!   error, as in RocketMQ. Blanks are space, tab, CR, LF and form feed.
//! * The message tag is the property `TAGS` ([`TAGS_PROPERTY`]).
//! * Precedence, loosest first: `OR`; `AND`; `=` `<>` `IS [NOT] NULL`; `>` `>=` `<` `<=`
//!   `[NOT] BETWEEN` `[NOT] IN` `[NOT] CONTAINS|STARTSWITH|ENDSWITH`; prefix `+` `-` `NOT`.
//!   Prefix `NOT` binding tighter than comparisons means `NOT a = 1` is `(NOT a) = 1`: write
//!   `NOT (a = 1)`.
//! * A property used as a condition (`a AND ...`, `NOT a`, or the whole expression) is FALSE
//!   when present (RocketMQ casts it to Boolean and a string never is one) and unknown when
//!   missing. Compare it instead: `a = TRUE` is true for `"true"` in any letter case.
//! * Comparing a string property with a number converts the string to the literal's Java
//!   type: `Integer` for literals that fit in 32 bits, `Long` for larger ones, `Double` for
//!   floats. So `a = 5` with `a = "5.0"` (or `"abc"`, or `"3000000000"`) fails to convert, and
//!   a failed conversion makes the whole message not match, even under `OR` (RocketMQ throws).
//!   `a > b` with two string properties parses both as doubles. A TRUE/FALSE value on the
//!   left of `=` with a string on the right (`TRUE = a`) also fails (RocketMQ casts the
//!   boolean to a string), while `a = TRUE` works; a boolean against a number is unequal.
//! * `=` with a NULL side: both NULL is TRUE, a NULL left side is unknown, a NULL right side is
//!   FALSE (RocketMQ tests the left side first); `<>` is the negation of that.
//! * Three-valued logic: a missing property is NULL; `>`, `IN` and friends on NULL are unknown;
//!   `NOT unknown` is unknown; `unknown AND FALSE` is FALSE; `unknown OR TRUE` is TRUE; the
//!   message matches only if the whole expression is TRUE. `IS [NOT] NULL` is never unknown.
//! * `CONTAINS`/`STARTSWITH`/`ENDSWITH` (and their `NOT` forms) are FALSE, not unknown, for a
//!   missing or non-string operand and for an empty pattern.
//! * `IN` takes a property on the left and string literals in the list.
//! * The compile-time checks RocketMQ's parser makes are made here too: no string, boolean or
//!   NULL literal or condition as an operand of `>`-like operators or `BETWEEN`; no `NULL`
//!   literal in `=`/`<>`; `TRUE = 1` rejected; literal `BETWEEN` bounds must be in order.
//!
//! # Choices
//!
//! * Errors at evaluation time (RocketMQ exceptions) end the evaluation as "no match", in
//!   RocketMQ's left-to-right, short-circuit order, rather than being turned into unknown:
//!   that is what a RocketMQ broker delivers. The error-free cases follow SQL's three-valued
//!   logic exactly as asked.
//! * Java's string-to-number parsing is followed (`Integer.valueOf`, `Double.valueOf` with its
//!   trimming, `NaN`, `Infinity` and `d`/`f` suffixes), except that only ASCII digits count and
//!   hexadecimal floating-point strings are not numbers.
//! * `AND`/`OR` chains are one n-ary node (evaluation order and results are the same as
//!   RocketMQ's nested binary nodes) so long chains do not count as nesting; other chains
//!   (`a = b = c`, `x IS NULL IS NULL`) do, like parentheses and prefix operators.
//! * Error columns count characters from the start of the expression, newlines included.
//! * For a SQL filter the tag is visible as `TAGS` unless the properties carry `TAGS`
//!   themselves, and [`Filter::matches_tag`] is always true (no tag pre-filter).
//! * Tag expressions: `""` and `"*"` match every message (tagged or not); otherwise a message
//!   without a tag never matches. Whitespace-only or `"||"` expressions give an empty tag set
//!   that matches nothing, as in RocketMQ.

mod ast;
mod error;
mod eval;
mod lexer;
mod parser;
mod tag;

pub use ast::{CompareOp, Expr, Literal, MatchOp};
pub use error::{FilterError, LimitExceeded};

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use tag::TagFilter;

/// The property under which RocketMQ exposes the message tag to SQL filters.
pub const TAGS_PROPERTY: &str = "TAGS";

/// The kind of expression a subscription carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `*`, or tags separated by `||`.
    Tag,
    /// A SQL92 selector over message properties.
    Sql,
}

/// Bounds on what [`Filter::compile`] accepts, so that a hostile expression costs little to
/// reject and a compiled one little to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest expression, in bytes (default 4096).
    pub max_len: usize,
    /// Deepest nesting of parentheses, prefix operators and operator nodes (default 64). The
    /// parser and evaluator recurse this deep, so keep it in the low thousands at most.
    pub max_depth: usize,
    /// Most items in an `IN` list or tags in a tag expression (default 1024).
    pub max_in_list: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_len: 4096,
            max_depth: 64,
            max_in_list: 1024,
        }
    }
}

/// A message's properties, as SQL filters read them. All values are strings.
pub trait Properties {
    /// The value of property `name`, if the message has it.
    fn get(&self, name: &str) -> Option<&str>;
}

impl<K, V, S> Properties for HashMap<K, V, S>
where
    K: Borrow<str> + Hash + Eq,
    V: AsRef<str>,
    S: BuildHasher,
{
    fn get(&self, name: &str) -> Option<&str> {
        HashMap::get(self, name).map(AsRef::as_ref)
    }
}

impl<K: Borrow<str> + Ord, V: AsRef<str>> Properties for BTreeMap<K, V> {
    fn get(&self, name: &str) -> Option<&str> {
        BTreeMap::get(self, name).map(AsRef::as_ref)
    }
}

/// Name/value pairs (`(String, String)`, `(&str, &str)`, ...); the first pair with the name
/// wins. Also implemented for references to slices, vectors and arrays of pairs, which can be
/// passed as `&dyn Properties`.
impl<K: AsRef<str>, V: AsRef<str>> Properties for [(K, V)] {
    fn get(&self, name: &str) -> Option<&str> {
        find_pair(self, name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Properties for &[(K, V)] {
    fn get(&self, name: &str) -> Option<&str> {
        find_pair(self, name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Properties for Vec<(K, V)> {
    fn get(&self, name: &str) -> Option<&str> {
        find_pair(self, name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> Properties for [(K, V); N] {
    fn get(&self, name: &str) -> Option<&str> {
        find_pair(self, name)
    }
}

fn find_pair<'a, K: AsRef<str>, V: AsRef<str>>(pairs: &'a [(K, V)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k.as_ref() == name)
        .map(|(_, v)| v.as_ref())
}

/// The message's properties plus its tag as `TAGS`, unless a `TAGS` property exists.
struct WithTag<'a> {
    tag: Option<&'a str>,
    props: &'a dyn Properties,
}

impl Properties for WithTag<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        match self.props.get(name) {
            None if name == TAGS_PROPERTY => self.tag,
            found => found,
        }
    }
}

/// A compiled filter, cheap to share between threads and to evaluate.
#[derive(Debug, Clone)]
pub struct Filter {
    compiled: Compiled,
}

#[derive(Debug, Clone)]
enum Compiled {
    Tag(TagFilter),
    Sql(Expr),
}

impl Filter {
    /// Compiles `expr` as a tag expression or a SQL92 selector. An empty SQL expression is an
    /// error; an empty tag expression matches everything.
    pub fn compile(kind: Kind, expr: &str, limits: &Limits) -> Result<Filter, FilterError> {
        let compiled = match kind {
            Kind::Tag => Compiled::Tag(tag::parse(expr, limits)?),
            Kind::Sql => Compiled::Sql(parser::parse(expr, limits)?),
        };
        Ok(Filter { compiled })
    }

    /// Which kind of expression this is.
    pub fn kind(&self) -> Kind {
        match self.compiled {
            Compiled::Tag(_) => Kind::Tag,
            Compiled::Sql(_) => Kind::Sql,
        }
    }

    /// Whether a message with this tag and these properties passes the filter. A tag filter
    /// looks only at the tag; a SQL filter sees the tag as the `TAGS` property.
    pub fn matches(&self, tag: Option<&str>, props: &dyn Properties) -> bool {
        match &self.compiled {
            Compiled::Tag(tags) => tags.matches(tag),
            Compiled::Sql(expr) => eval::matches(expr, &WithTag { tag, props }),
        }
    }

    /// Whether the tag alone lets a message through: the tag filter's answer, and always true
    /// for a SQL filter (which needs the properties).
    pub fn matches_tag(&self, tag: Option<&str>) -> bool {
        match &self.compiled {
            Compiled::Tag(tags) => tags.matches(tag),
            Compiled::Sql(_) => true,
        }
    }

    /// The tags a tag filter accepts, for pre-filtering by tag hash; `None` for filters that
    /// do not restrict by tag (`*` and SQL).
    pub fn tags(&self) -> Option<&[String]> {
        match &self.compiled {
            Compiled::Tag(TagFilter::Tags(tags)) => Some(tags),
            Compiled::Tag(TagFilter::All) | Compiled::Sql(_) => None,
        }
    }

    /// The syntax tree of a SQL filter.
    pub fn expr(&self) -> Option<&Expr> {
        match &self.compiled {
            Compiled::Sql(expr) => Some(expr),
            Compiled::Tag(_) => None,
        }
    }
}

/// The normalized expression: tags joined by ` || ` (or `*`), or the SQL re-printed.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.compiled {
            Compiled::Tag(TagFilter::All) => f.write_str("*"),
            Compiled::Tag(TagFilter::Tags(tags)) => match tags.as_slice() {
                // `""` and `"*"` would read back as "everything".
                [] => f.write_str("||"),
                [only] if only == "*" => f.write_str("* ||"),
                _ => f.write_str(&tags.join(" || ")),
            },
            Compiled::Sql(expr) => write!(f, "{expr}"),
        }
    }
}
