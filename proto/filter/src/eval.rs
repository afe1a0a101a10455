//! Evaluation with RocketMQ's semantics (`ComparisonExpression`, `LogicExpression`,
//! `UnaryExpression` and Java's number parsing), over properties that are all strings.
//!
//! A condition is TRUE, FALSE or unknown (`None`, SQL's NULL). Where RocketMQ's evaluation
//! throws (a property that does not parse as the number it is compared with, say) the broker
//! catches the exception and does not deliver the message: that is [`Abort`], which ends the
//! whole evaluation as "no match". Operands are evaluated in RocketMQ's order, short-circuits
//! included, so an abort happens exactly where it would there.

use crate::ast::{CompareOp, Expr, Literal, MatchOp};
use crate::Properties;
use std::cmp::Ordering;

/// The evaluation stopped the way RocketMQ's throws: the message does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Abort;

/// A value as RocketMQ types it: integer literals that fit in 32 bits are Java `Integer`s,
/// larger ones `Long`s; properties are always strings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value<'a> {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    Str(&'a str),
}

impl<'a> From<&'a Literal> for Value<'a> {
    fn from(lit: &'a Literal) -> Self {
        match lit {
            Literal::Int(v) => i32::try_from(*v).map_or(Value::Long(*v), Value::Int),
            Literal::Float(v) => Value::Double(*v),
            Literal::Str(s) => Value::Str(s),
            Literal::Bool(b) => Value::Bool(*b),
            Literal::Null => Value::Null,
        }
    }
}

type Truth = Result<Option<bool>, Abort>;

/// Whether the message's properties satisfy `expr`: only a TRUE result matches.
pub(crate) fn matches(expr: &Expr, props: &dyn Properties) -> bool {
    condition(expr, props) == Ok(Some(true))
}

fn condition(e: &Expr, props: &dyn Properties) -> Truth {
    match e {
        // RocketMQ's boolean cast of a property: a present value is a String, never a Boolean,
        // so it is FALSE whatever it says; a missing one is unknown.
        Expr::Prop(name) => Ok(props.get(name).map(|_| false)),
        Expr::Not(inner) => Ok(condition(inner, props)?.map(|b| !b)),
        Expr::And(items) => chain(items, false, props),
        Expr::Or(items) => chain(items, true, props),
        Expr::Compare { op, lhs, rhs } => match op {
            CompareOp::Eq => equal(lhs, rhs, props),
            CompareOp::Ne => Ok(equal(lhs, rhs, props)?.map(|b| !b)),
            _ => ordered(*op, lhs, rhs, props),
        },
        // IS NULL is RocketMQ's `=` against NULL: never unknown.
        Expr::IsNull { expr, negated } => {
            Ok(Some(matches!(value(expr, props)?, Value::Null) != *negated))
        }
        // BETWEEN is `x >= low AND x <= high`, NOT BETWEEN `x < low OR x > high`, with the
        // same short-circuit as AND / OR.
        Expr::Between {
            expr,
            low,
            high,
            negated,
        } => {
            let (low_op, high_op, decisive) = if *negated {
                (CompareOp::Lt, CompareOp::Gt, true)
            } else {
                (CompareOp::Ge, CompareOp::Le, false)
            };
            let first = ordered(low_op, expr, low, props)?;
            if first == Some(decisive) {
                return Ok(first);
            }
            let second = ordered(high_op, expr, high, props)?;
            Ok(if second == Some(decisive) {
                second
            } else {
                first.and(second)
            })
        }
        Expr::In {
            prop,
            list,
            negated,
        } => Ok(props
            .get(prop)
            .map(|v| list.iter().any(|item| item == v) != *negated)),
        // RocketMQ answers FALSE (not unknown) for an empty pattern, a missing value or a
        // non-string value, for the NOT forms too; the empty-pattern test comes first.
        Expr::Match {
            op,
            expr,
            pattern,
            negated,
        } => {
            if pattern.is_empty() {
                return Ok(Some(false));
            }
            let Value::Str(s) = value(expr, props)? else {
                return Ok(Some(false));
            };
            let hit = match op {
                MatchOp::Contains => s.contains(pattern.as_str()),
                MatchOp::StartsWith => s.starts_with(pattern.as_str()),
                MatchOp::EndsWith => s.ends_with(pattern.as_str()),
            };
            Ok(Some(hit != *negated))
        }
        // Literals and negations where a condition is expected: RocketMQ casts the value to
        // Boolean, which throws unless it is one (the parser only lets TRUE/FALSE/NULL through).
        Expr::Lit(_) | Expr::Neg(_) => match value(e, props)? {
            Value::Bool(b) => Ok(Some(b)),
            Value::Null => Ok(None),
            _ => Err(Abort),
        },
    }
}

/// AND (`decisive` FALSE) or OR (`decisive` TRUE): left to right, stopping at the first
/// decisive operand; otherwise unknown if any operand was, else the other value.
fn chain(items: &[Expr], decisive: bool, props: &dyn Properties) -> Truth {
    let mut unknown = false;
    for item in items {
        match condition(item, props)? {
            Some(b) if b == decisive => return Ok(Some(decisive)),
            Some(_) => {}
            None => unknown = true,
        }
    }
    Ok(if unknown { None } else { Some(!decisive) })
}

fn value<'a>(e: &'a Expr, props: &'a dyn Properties) -> Result<Value<'a>, Abort> {
    Ok(match e {
        Expr::Lit(lit) => Value::from(lit),
        Expr::Prop(name) => props.get(name).map_or(Value::Null, Value::Str),
        // Only numbers negate; RocketMQ gives NULL for anything else. Wrapping as Java does
        // (it cannot actually overflow: literals are at most i64::MAX).
        Expr::Neg(inner) => match value(inner, props)? {
            Value::Int(v) => Value::Int(v.wrapping_neg()),
            Value::Long(v) => Value::Long(v.wrapping_neg()),
            Value::Double(v) => Value::Double(-v),
            _ => Value::Null,
        },
        _ => condition(e, props)?.map_or(Value::Null, Value::Bool),
    })
}

/// RocketMQ's `=`: both sides are evaluated; NULL = NULL is TRUE, NULL = x unknown, but
/// x = NULL is FALSE (it tests the left side first).
fn equal(lhs: &Expr, rhs: &Expr, props: &dyn Properties) -> Truth {
    let (l, r) = (value(lhs, props)?, value(rhs, props)?);
    Ok(match (l, r) {
        (Value::Null, Value::Null) => Some(true),
        (Value::Null, _) => None,
        (_, Value::Null) => Some(false),
        _ => Some(compare(&l, &r)? == Ordering::Equal),
    })
}

/// `>`, `>=`, `<`, `<=`: unknown if either side is NULL (the right side is not evaluated when
/// the left is NULL); two strings are both parsed as doubles.
fn ordered(op: CompareOp, lhs: &Expr, rhs: &Expr, props: &dyn Properties) -> Truth {
    let l = value(lhs, props)?;
    if l == Value::Null {
        return Ok(None);
    }
    let r = value(rhs, props)?;
    if r == Value::Null {
        return Ok(None);
    }
    let ord = match (l, r) {
        (Value::Str(a), Value::Str(b)) => java_double_cmp(parse_double(a)?, parse_double(b)?),
        _ => compare(&l, &r)?,
    };
    Ok(Some(match op {
        CompareOp::Gt => ord == Ordering::Greater,
        CompareOp::Ge => ord != Ordering::Less,
        CompareOp::Lt => ord == Ordering::Less,
        CompareOp::Le => ord != Ordering::Greater,
        CompareOp::Eq => ord == Ordering::Equal,
        CompareOp::Ne => ord != Ordering::Equal,
    }))
}

/// RocketMQ's `__compare` for two non-NULL values: numbers widen (int -> long -> double), a
/// string converts to the other side's type (an error if it does not parse), and a boolean
/// against a number is "less" without looking at either.
pub(crate) fn compare(l: &Value<'_>, r: &Value<'_>) -> Result<Ordering, Abort> {
    use Value::{Bool, Double, Int, Long, Null, Str};
    Ok(match (*l, *r) {
        (Null, _) | (_, Null) => return Err(Abort),
        (Bool(a), Bool(b)) => a.cmp(&b),
        (Int(a), Int(b)) => a.cmp(&b),
        (Long(a), Long(b)) => a.cmp(&b),
        (Double(a), Double(b)) => java_double_cmp(a, b),
        // Only equality is ever asked of two strings (ordering goes through doubles).
        (Str(a), Str(b)) => a.cmp(b),
        (Int(a), Long(b)) => i64::from(a).cmp(&b),
        (Long(a), Int(b)) => a.cmp(&i64::from(b)),
        (Int(a), Double(b)) => java_double_cmp(f64::from(a), b),
        (Double(a), Int(b)) => java_double_cmp(a, f64::from(b)),
        (Long(a), Double(b)) => java_double_cmp(a as f64, b),
        (Double(a), Long(b)) => java_double_cmp(a, b as f64),
        (Int(a), Str(s)) => a.cmp(&s.parse::<i32>().map_err(|_| Abort)?),
        (Str(s), Int(b)) => s.parse::<i32>().map_err(|_| Abort)?.cmp(&b),
        (Long(a), Str(s)) => a.cmp(&s.parse::<i64>().map_err(|_| Abort)?),
        (Str(s), Long(b)) => s.parse::<i64>().map_err(|_| Abort)?.cmp(&b),
        (Double(a), Str(s)) => java_double_cmp(a, parse_double(s)?),
        (Str(s), Double(b)) => java_double_cmp(parse_double(s)?, b),
        // Java's Boolean.valueOf: "true" in any case is true, anything else false.
        (Str(s), Bool(b)) => s.eq_ignore_ascii_case("true").cmp(&b),
        // RocketMQ casts the Boolean itself to String here, which throws.
        (Bool(_), Str(_)) => return Err(Abort),
        (Bool(_), Int(_) | Long(_) | Double(_)) | (Int(_) | Long(_) | Double(_), Bool(_)) => {
            Ordering::Less
        }
    })
}

/// Java's `Double.compare`: -0.0 below 0.0, NaN above everything and equal to itself.
fn java_double_cmp(a: f64, b: f64) -> Ordering {
    fn bits(d: f64) -> i64 {
        // Java's doubleToLongBits folds every NaN into one canonical pattern.
        if d.is_nan() {
            0x7ff8_0000_0000_0000
        } else {
            d.to_bits() as i64
        }
    }
    a.partial_cmp(&b)
        .filter(|o| o.is_ne())
        .unwrap_or_else(|| bits(a).cmp(&bits(b)))
}

/// Java's `Double.valueOf(String)`: surrounding characters up to U+0020 trimmed, an optional
/// sign, `NaN`, `Infinity` or a decimal number with an optional exponent and an optional
/// `f`/`F`/`d`/`D` suffix. (Java's hexadecimal form, `0x1p3`, is not accepted here.)
pub(crate) fn parse_double(s: &str) -> Result<f64, Abort> {
    let t = s.trim_matches(|c: char| c <= ' ');
    let (negative, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let magnitude = match body {
        "NaN" => f64::NAN,
        "Infinity" => f64::INFINITY,
        _ => {
            let number = body.strip_suffix(['f', 'F', 'd', 'D']).unwrap_or(body);
            if !is_decimal(number) {
                return Err(Abort);
            }
            number.parse::<f64>().map_err(|_| Abort)?
        }
    };
    Ok(if negative { -magnitude } else { magnitude })
}

/// `digits [. digits] [(e|E) [+|-] digits]` with at least one mantissa digit.
fn is_decimal(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (s.get(..i).unwrap_or(""), s.get(i + 1..)),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = all_digits(int) && all_digits(frac) && !(int.is_empty() && frac.is_empty());
    let exponent_ok = exponent.is_none_or(|e| {
        let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
        !digits.is_empty() && all_digits(digits)
    });
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_double_parsing() {
        for (s, v) in [
            ("1.5", 1.5),
            (" 2 ", 2.0),
            ("+3.", 3.0),
            (".5", 0.5),
            ("1e3", 1000.0),
            ("2.5f", 2.5),
            ("-1D", -1.0),
        ] {
            assert_eq!(parse_double(s), Ok(v), "{s}");
        }
        assert_eq!(parse_double("-Infinity"), Ok(f64::NEG_INFINITY));
        assert!(parse_double("NaN").unwrap().is_nan());
        for bad in [
            "", ".", "e5", "1e", "1e+", "inf", "nan", "1.5x", "0x10", "1..2", "--1", "1ef",
        ] {
            assert_eq!(parse_double(bad), Err(Abort), "{bad}");
        }
    }

    #[test]
    fn java_compare_rules() {
        use Value::*;
        assert_eq!(compare(&Int(5), &Str("5")), Ok(Ordering::Equal));
        assert_eq!(compare(&Int(5), &Str("5.0")), Err(Abort));
        assert_eq!(compare(&Long(5), &Double(5.0)), Ok(Ordering::Equal));
        assert_eq!(compare(&Str("TRUE"), &Bool(true)), Ok(Ordering::Equal));
        assert_eq!(compare(&Bool(true), &Str("true")), Err(Abort));
        assert_eq!(compare(&Bool(true), &Int(1)), Ok(Ordering::Less));
        assert_eq!(compare(&Int(1), &Bool(true)), Ok(Ordering::Less));
        assert_eq!(java_double_cmp(-0.0, 0.0), Ordering::Less);
        assert_eq!(java_double_cmp(f64::NAN, f64::INFINITY), Ordering::Greater);
        assert_eq!(java_double_cmp(f64::NAN, f64::NAN), Ordering::Equal);
    }
}
