//! A reference evaluator for the round-trip test, transcribed from RocketMQ's Java classes
//! (`ComparisonExpression`, `LogicExpression`, `UnaryExpression`) as directly as possible:
//! values are Java objects, exceptions are `Err`, and AND/OR fold as RocketMQ's nested binary
//! nodes. It shares no code with the crate's evaluator.

use sluice_filter::{CompareOp, Expr, Literal, MatchOp};
use std::collections::HashMap;

/// Strings used for property values and string literals. Conversions of exactly these are
/// tabulated below from Java's `Integer/Long/Double.valueOf`, so the reference needs no parser.
pub const POOL: &[&str] = &[
    "",
    "0",
    "1",
    "-1",
    "5",
    "+5",
    "-0",
    "2.5",
    "1e3",
    ".5",
    "5.",
    "1.5f",
    " 5",
    "5.0",
    "NaN",
    "-Infinity",
    "true",
    "TRUE",
    "false",
    "abc",
    "a'b",
    "2147483648",
    "9223372036854775807",
    "1e",
    "x\ny",
    "日本",
];

/// `(Integer.valueOf, Long.valueOf, Double.valueOf)` of a pool string, `None` where Java throws.
fn java_parse(s: &str) -> (Option<i32>, Option<i64>, Option<f64>) {
    match s {
        "0" => (Some(0), Some(0), Some(0.0)),
        "1" => (Some(1), Some(1), Some(1.0)),
        "-1" => (Some(-1), Some(-1), Some(-1.0)),
        "5" | "+5" => (Some(5), Some(5), Some(5.0)),
        "-0" => (Some(0), Some(0), Some(-0.0)),
        "2.5" => (None, None, Some(2.5)),
        "1e3" => (None, None, Some(1000.0)),
        ".5" => (None, None, Some(0.5)),
        "5." | " 5" | "5.0" => (None, None, Some(5.0)),
        "1.5f" => (None, None, Some(1.5)),
        "NaN" => (None, None, Some(f64::NAN)),
        "-Infinity" => (None, None, Some(f64::NEG_INFINITY)),
        "2147483648" => (None, Some(2147483648), Some(2147483648.0)),
        "9223372036854775807" => (None, Some(i64::MAX), Some(9.223372036854776e18)),
        _ => (None, None, None),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum J {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    Str(String),
}

struct Thrown;
type R<T> = Result<T, Thrown>;

pub struct Msg<'a> {
    pub props: &'a HashMap<String, String>,
    pub tag: Option<&'a str>,
}

impl Msg<'_> {
    fn get(&self, name: &str) -> J {
        match (self.props.get(name), name) {
            (Some(v), _) => J::Str(v.clone()),
            (None, "TAGS") => self.tag.map_or(J::Null, |t| J::Str(t.to_string())),
            _ => J::Null,
        }
    }
}

fn java_double_compare(a: f64, b: f64) -> i32 {
    let bits = |d: f64| {
        if d.is_nan() {
            0x7ff8_0000_0000_0000
        } else {
            d.to_bits() as i64
        }
    };
    if a < b {
        -1
    } else if a > b {
        1
    } else {
        bits(a).cmp(&bits(b)) as i32
    }
}

/// `ComparisonExpression.__compare(lv, rv, true)`: widen `lv` or `rv` by class, then compareTo.
fn jcompare(lv: &J, rv: &J) -> R<i32> {
    use J::*;
    let num = |x: &J| match x {
        Int(v) => *v as f64,
        Long(v) => *v as f64,
        Double(v) => *v,
        _ => unreachable!(),
    };
    Ok(match (lv, rv) {
        (Null, _) | (_, Null) => return Err(Thrown),
        // lc == Boolean: only a String is converted, by casting the Boolean to String (throws).
        (Bool(a), Bool(b)) => a.cmp(b) as i32,
        (Bool(_), Str(_)) => return Err(Thrown),
        (Bool(_), _) => -1,
        (Str(a), Str(b)) => (a != b) as i32,
        (Str(s), Bool(b)) => s.eq_ignore_ascii_case("true").cmp(b) as i32,
        (Str(s), Int(b)) => java_parse(s).0.ok_or(Thrown)?.cmp(b) as i32,
        (Str(s), Long(b)) => java_parse(s).1.ok_or(Thrown)?.cmp(b) as i32,
        (Str(s), Double(b)) => java_double_compare(java_parse(s).2.ok_or(Thrown)?, *b),
        (_, Bool(_)) => -1,
        (Int(a), Str(s)) => a.cmp(&java_parse(s).0.ok_or(Thrown)?) as i32,
        (Long(a), Str(s)) => a.cmp(&java_parse(s).1.ok_or(Thrown)?) as i32,
        (Double(a), Str(s)) => java_double_compare(*a, java_parse(s).2.ok_or(Thrown)?),
        (Int(a), Int(b)) => a.cmp(b) as i32,
        (Long(a), Long(b)) => a.cmp(b) as i32,
        (Int(a), Long(b)) => i64::from(*a).cmp(b) as i32,
        (Long(a), Int(b)) => a.cmp(&i64::from(*b)) as i32,
        (Int(_) | Long(_) | Double(_), Int(_) | Long(_) | Double(_)) => {
            java_double_compare(num(lv), num(rv))
        }
    })
}

/// Java's `equals`: same class and value; doubles by their bits.
fn jequals(a: &J, b: &J) -> bool {
    match (a, b) {
        (J::Double(x), J::Double(y)) => java_double_compare(*x, *y) == 0,
        _ => a == b,
    }
}

fn bool_of(v: J) -> R<Option<bool>> {
    match v {
        J::Null => Ok(None),
        J::Bool(b) => Ok(Some(b)),
        _ => Err(Thrown),
    }
}

fn jb(b: Option<bool>) -> J {
    b.map_or(J::Null, J::Bool)
}

/// A condition operand: properties get RocketMQ's boolean cast.
fn cond(e: &Expr, m: &Msg) -> R<Option<bool>> {
    match e {
        Expr::Prop(name) => Ok(match m.get(name) {
            J::Null => None,
            J::Bool(b) => Some(b),
            _ => Some(false),
        }),
        other => bool_of(eval(other, m)?),
    }
}

/// `LogicExpression.createAND/OR`, folded as the nested binary nodes RocketMQ builds.
fn logic(items: &[Expr], m: &Msg, is_and: bool) -> R<J> {
    let stop = !is_and;
    let mut acc = cond(&items[0], m)?;
    for item in &items[1..] {
        if acc == Some(stop) {
            continue;
        }
        let rv = cond(item, m)?;
        acc = if rv == Some(stop) {
            rv
        } else if acc.is_none() || rv.is_none() {
            None
        } else {
            Some(!stop)
        };
    }
    Ok(jb(acc))
}

fn ordered(op: CompareOp, l: &Expr, r: &Expr, m: &Msg) -> R<J> {
    let lv = eval(l, m)?;
    if lv == J::Null {
        return Ok(J::Null);
    }
    let rv = eval(r, m)?;
    if rv == J::Null {
        return Ok(J::Null);
    }
    let c = match (&lv, &rv) {
        (J::Str(a), J::Str(b)) => {
            let (a, b) = (
                java_parse(a).2.ok_or(Thrown)?,
                java_parse(b).2.ok_or(Thrown)?,
            );
            java_double_compare(a, b)
        }
        _ => jcompare(&lv, &rv)?,
    };
    Ok(J::Bool(match op {
        CompareOp::Gt => c > 0,
        CompareOp::Ge => c >= 0,
        CompareOp::Lt => c < 0,
        CompareOp::Le => c <= 0,
        _ => unreachable!(),
    }))
}

fn equal(l: &Expr, r: &Expr, m: &Msg) -> R<J> {
    let (lv, rv) = (eval(l, m)?, eval(r, m)?);
    if (lv == J::Null) != (rv == J::Null) {
        return Ok(if lv == J::Null {
            J::Null
        } else {
            J::Bool(false)
        });
    }
    if lv == J::Null || jequals(&lv, &rv) {
        return Ok(J::Bool(true));
    }
    Ok(J::Bool(jcompare(&lv, &rv)? == 0))
}

fn eval(e: &Expr, m: &Msg) -> R<J> {
    Ok(match e {
        Expr::Lit(Literal::Int(v)) => i32::try_from(*v).map_or(J::Long(*v), J::Int),
        Expr::Lit(Literal::Float(v)) => J::Double(*v),
        Expr::Lit(Literal::Str(s)) => J::Str(s.clone()),
        Expr::Lit(Literal::Bool(b)) => J::Bool(*b),
        Expr::Lit(Literal::Null) => J::Null,
        Expr::Prop(name) => m.get(name),
        Expr::Neg(x) => match eval(x, m)? {
            J::Int(v) => J::Int(v.wrapping_neg()),
            J::Long(v) => J::Long(v.wrapping_neg()),
            J::Double(v) => J::Double(-v),
            _ => J::Null,
        },
        Expr::Not(x) => jb(cond(x, m)?.map(|b| !b)),
        Expr::And(items) => logic(items, m, true)?,
        Expr::Or(items) => logic(items, m, false)?,
        Expr::Compare {
            op: CompareOp::Eq,
            lhs,
            rhs,
        } => equal(lhs, rhs, m)?,
        Expr::Compare {
            op: CompareOp::Ne,
            lhs,
            rhs,
        } => jb(bool_of(equal(lhs, rhs, m)?)?.map(|b| !b)),
        Expr::Compare { op, lhs, rhs } => ordered(*op, lhs, rhs, m)?,
        Expr::IsNull { expr, negated } => J::Bool((eval(expr, m)? == J::Null) != *negated),
        Expr::Between {
            expr,
            low,
            high,
            negated,
        } => {
            let (op1, op2) = if *negated {
                (CompareOp::Lt, CompareOp::Gt)
            } else {
                (CompareOp::Ge, CompareOp::Le)
            };
            let first = bool_of(ordered(op1, expr, low, m)?)?;
            let stop = *negated;
            if first == Some(stop) {
                return Ok(J::Bool(stop));
            }
            let second = bool_of(ordered(op2, expr, high, m)?)?;
            if second == Some(stop) {
                J::Bool(stop)
            } else {
                jb(first.and(second))
            }
        }
        Expr::In {
            prop,
            list,
            negated,
        } => match m.get(prop) {
            J::Str(v) => J::Bool(list.contains(&v) != *negated),
            _ => J::Null,
        },
        Expr::Match {
            op,
            expr,
            pattern,
            negated,
        } => {
            if pattern.is_empty() {
                return Ok(J::Bool(false));
            }
            match eval(expr, m)? {
                J::Str(s) => J::Bool(
                    match op {
                        MatchOp::Contains => s.contains(pattern.as_str()),
                        MatchOp::StartsWith => s.starts_with(pattern.as_str()),
                        MatchOp::EndsWith => s.ends_with(pattern.as_str()),
                    } != *negated,
                ),
                _ => J::Bool(false),
            }
        }
    })
}

pub fn reference_matches(e: &Expr, m: &Msg) -> bool {
    matches!(cond(e, m), Ok(Some(true)))
}
