//! The syntax tree of a SQL92 filter, and a printer that writes it back as text which parses
//! to an equivalent tree (parentheses only where the grammar's precedence needs them).

use std::fmt::{self, Display, Formatter, Write};

/// A parsed SQL92 filter expression.
///
/// Trees built by the parser keep numeric literals non-negative (a minus sign is [`Expr::Neg`],
/// which matters because RocketMQ types `-5` differently from `5`), never nest an `And` directly
/// in an `And` (or `Or` in `Or`), and give `And`/`Or` at least two operands.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal value.
    Lit(Literal),
    /// A message property, looked up by its exact (case-sensitive) name.
    Prop(String),
    /// `-x`. Only numbers negate; anything else gives NULL.
    Neg(Box<Expr>),
    /// `NOT x`.
    Not(Box<Expr>),
    /// `x AND y AND ...`, evaluated left to right.
    And(Vec<Expr>),
    /// `x OR y OR ...`, evaluated left to right.
    Or(Vec<Expr>),
    /// `lhs op rhs`.
    Compare {
        op: CompareOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `x IS NULL`, or `x IS NOT NULL` when `negated`.
    IsNull { expr: Box<Expr>, negated: bool },
    /// `x [NOT] BETWEEN low AND high`.
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    /// `prop [NOT] IN ('a', 'b', ...)`: RocketMQ allows only a property on the left and only
    /// string literals in the list.
    In {
        prop: String,
        list: Vec<String>,
        negated: bool,
    },
    /// `x [NOT] CONTAINS|STARTSWITH|ENDSWITH 'pattern'`.
    Match {
        op: MatchOp,
        expr: Box<Expr>,
        pattern: String,
        negated: bool,
    },
}

/// A literal as written in the expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// An integer literal (`123`, `123L`). RocketMQ treats values that fit in 32 bits as Java
    /// `Integer`s and larger ones as `Long`s, which changes how property strings convert.
    Int(i64),
    /// A floating-point literal (`1.5`, `.5`, `1e3`); always finite and above zero.
    Float(f64),
    /// A string literal, unescaped.
    Str(String),
    /// `TRUE` or `FALSE`.
    Bool(bool),
    /// `NULL`.
    Null,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `=`
    Eq,
    /// `<>`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

/// String-matching operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// `CONTAINS`
    Contains,
    /// `STARTSWITH`
    StartsWith,
    /// `ENDSWITH`
    EndsWith,
}

impl CompareOp {
    fn symbol(self) -> &'static str {
        match self {
            CompareOp::Eq => "=",
            CompareOp::Ne => "<>",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
        }
    }
}

impl MatchOp {
    fn keyword(self) -> &'static str {
        match self {
            MatchOp::Contains => "CONTAINS",
            MatchOp::StartsWith => "STARTSWITH",
            MatchOp::EndsWith => "ENDSWITH",
        }
    }
}

// Binding strength, following the grammar's levels: OR < AND < equality (`=`, `<>`, `IS`) <
// comparison (`>`, `BETWEEN`, `IN`, `CONTAINS`, ...) < prefix (`-`, `NOT`) < primary.
const OR: u8 = 1;
const AND: u8 = 2;
const EQUALITY: u8 = 3;
const COMPARISON: u8 = 4;
const PREFIX: u8 = 5;
const PRIMARY: u8 = 6;

impl Expr {
    fn level(&self) -> u8 {
        match self {
            Expr::Or(_) => OR,
            Expr::And(_) => AND,
            Expr::Compare {
                op: CompareOp::Eq | CompareOp::Ne,
                ..
            }
            | Expr::IsNull { .. } => EQUALITY,
            Expr::Compare { .. } | Expr::Between { .. } | Expr::In { .. } | Expr::Match { .. } => {
                COMPARISON
            }
            Expr::Neg(_) | Expr::Not(_) => PREFIX,
            Expr::Lit(_) | Expr::Prop(_) => PRIMARY,
        }
    }
}

/// Writes `e`, in parentheses if it binds more loosely than `min`.
fn operand(f: &mut Formatter<'_>, e: &Expr, min: u8) -> fmt::Result {
    if e.level() < min {
        write!(f, "({e})")
    } else {
        write!(f, "{e}")
    }
}

/// Writes `AND`/`OR` operands; a nested operator of the same kind needs no parentheses since
/// both group the same way (and the parser flattens them).
fn chain(f: &mut Formatter<'_>, items: &[Expr], sep: &str, level: u8, empty: &str) -> fmt::Result {
    if items.is_empty() {
        return f.write_str(empty);
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        let min = if item.level() == level {
            level
        } else {
            level + 1
        };
        operand(f, item, min)?;
    }
    Ok(())
}

pub(crate) fn write_string(f: &mut impl Write, s: &str) -> fmt::Result {
    f.write_char('\'')?;
    for part in s.split_inclusive('\'') {
        f.write_str(part)?;
        if part.ends_with('\'') {
            f.write_char('\'')?;
        }
    }
    f.write_char('\'')
}

impl Display for Literal {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Int(v) => write!(f, "{v}"),
            // `{:?}` keeps a `.` or an exponent, so the text reads back as a float literal.
            Literal::Float(v) => write!(f, "{v:?}"),
            Literal::Str(s) => write_string(f, s),
            Literal::Bool(true) => f.write_str("TRUE"),
            Literal::Bool(false) => f.write_str("FALSE"),
            Literal::Null => f.write_str("NULL"),
        }
    }
}

impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Lit(lit) => write!(f, "{lit}"),
            Expr::Prop(name) => f.write_str(name),
            Expr::Neg(inner) => {
                f.write_char('-')?;
                // `--` would start a comment: keep a space between two minus signs.
                if matches!(**inner, Expr::Neg(_)) {
                    f.write_char(' ')?;
                }
                operand(f, inner, PREFIX)
            }
            Expr::Not(inner) => {
                f.write_str("NOT ")?;
                operand(f, inner, PREFIX)
            }
            Expr::And(items) => chain(f, items, " AND ", AND, "TRUE"),
            Expr::Or(items) => chain(f, items, " OR ", OR, "FALSE"),
            Expr::Compare { op, lhs, rhs } => {
                // Both levels associate to the left: the right operand must bind tighter.
                let level = self.level();
                operand(f, lhs, level)?;
                write!(f, " {} ", op.symbol())?;
                operand(f, rhs, level + 1)
            }
            Expr::IsNull { expr, negated } => {
                operand(f, expr, EQUALITY)?;
                f.write_str(if *negated { " IS NOT NULL" } else { " IS NULL" })
            }
            Expr::Between {
                expr,
                low,
                high,
                negated,
            } => {
                operand(f, expr, COMPARISON)?;
                f.write_str(if *negated {
                    " NOT BETWEEN "
                } else {
                    " BETWEEN "
                })?;
                operand(f, low, PREFIX)?;
                f.write_str(" AND ")?;
                operand(f, high, PREFIX)
            }
            Expr::In {
                prop,
                list,
                negated,
            } => {
                f.write_str(prop)?;
                f.write_str(if *negated { " NOT IN (" } else { " IN (" })?;
                for (i, item) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write_string(f, item)?;
                }
                f.write_char(')')
            }
            Expr::Match {
                op,
                expr,
                pattern,
                negated,
            } => {
                operand(f, expr, COMPARISON)?;
                f.write_str(if *negated { " NOT " } else { " " })?;
                write!(f, "{} ", op.keyword())?;
                write_string(f, pattern)
            }
        }
    }
}
