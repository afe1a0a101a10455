//! Recursive-descent parser for RocketMQ's selector grammar (`SelectorParser.jj`), with the
//! operand checks RocketMQ makes while it builds its expression tree, so the same texts are
//! rejected at compile time.
//!
//! Levels, loosest first: `OR`; `AND`; `=` `<>` `IS [NOT] NULL`; `>` `>=` `<` `<=`
//! `[NOT] BETWEEN|IN|CONTAINS|STARTSWITH|ENDSWITH`; prefix `+` `-` `NOT`; literals, names,
//! parentheses. Binary levels associate to the left. Note that prefix `NOT` binds tighter than
//! comparisons: `NOT a = 1` is `(NOT a) = 1`, exactly as in RocketMQ.
//!
//! Every parenthesis and prefix operator counts one nesting level, and every tree node one
//! level of height, both against `Limits::max_depth`: the parser's recursion and the
//! evaluator's are bounded whatever the input.

use crate::ast::{CompareOp, Expr, Literal, MatchOp};
use crate::error::{excerpt, FilterError, LimitExceeded, END_OF_INPUT};
use crate::eval::{compare, Value};
use crate::lexer::{Kw, Lexer, Tok, Token};
use crate::Limits;
use std::cmp::Ordering;

/// A parsed operand with its source span (for error messages) and height (leaves are 0).
struct Node {
    expr: Expr,
    start: usize,
    end: usize,
    height: usize,
}

struct Parser<'a> {
    src: &'a str,
    lexer: Lexer<'a>,
    next: Token,
    depth: usize,
    limits: &'a Limits,
}

/// Parses a whole SQL92 filter expression.
pub(crate) fn parse(src: &str, limits: &Limits) -> Result<Expr, FilterError> {
    if src.len() > limits.max_len {
        let limit = LimitExceeded::Length {
            len: src.len(),
            max: limits.max_len,
        };
        return Err(FilterError::limit(src, limits.max_len, limit));
    }
    let mut lexer = Lexer::new(src);
    let next = lexer.next_token()?;
    let mut p = Parser {
        src,
        lexer,
        next,
        depth: 0,
        limits,
    };
    let root = p.or_expr()?;
    if p.next.tok != Tok::Eof {
        return Err(p.unexpected("an operator or end of input"));
    }
    p.check_condition(&root)?;
    Ok(root.expr)
}

impl<'a> Parser<'a> {
    fn bump(&mut self) -> Result<Token, FilterError> {
        let following = self.lexer.next_token()?;
        Ok(std::mem::replace(&mut self.next, following))
    }

    fn at_kw(&self, kw: Kw) -> bool {
        self.next.tok == Tok::Kw(kw)
    }

    fn error_at(&self, start: usize, end: usize, expected: &str) -> FilterError {
        let text = self.src.get(start..end).unwrap_or("");
        FilterError::syntax(self.src, start, expected, &excerpt(text))
    }

    fn unexpected(&self, expected: &str) -> FilterError {
        if self.next.tok == Tok::Eof {
            FilterError::syntax(self.src, self.next.start, expected, END_OF_INPUT)
        } else {
            self.error_at(self.next.start, self.next.end, expected)
        }
    }

    fn expect(&mut self, tok: Tok, expected: &str) -> Result<Token, FilterError> {
        if self.next.tok == tok {
            self.bump()
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn string_literal(&mut self) -> Result<String, FilterError> {
        match &self.next.tok {
            Tok::Str(s) => {
                let s = s.clone();
                self.bump()?;
                Ok(s)
            }
            _ => Err(self.unexpected("a string literal")),
        }
    }

    /// A node of the given height, refusing trees taller than the limit.
    fn node(
        &self,
        expr: Expr,
        start: usize,
        end: usize,
        height: usize,
    ) -> Result<Node, FilterError> {
        if height > self.limits.max_depth {
            return Err(self.too_deep(start));
        }
        Ok(Node {
            expr,
            start,
            end,
            height,
        })
    }

    fn too_deep(&self, at: usize) -> FilterError {
        let limit = LimitExceeded::Depth {
            max: self.limits.max_depth,
        };
        FilterError::limit(self.src, at, limit)
    }

    /// One more level of parser recursion (a parenthesis or a prefix operator).
    fn enter(&mut self) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > self.limits.max_depth {
            return Err(self.too_deep(self.next.start));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn or_expr(&mut self) -> Result<Node, FilterError> {
        self.chain(Kw::Or)
    }

    fn chain_operand(&mut self, kw: Kw) -> Result<Node, FilterError> {
        if kw == Kw::Or {
            self.chain(Kw::And)
        } else {
            self.equality_expr()
        }
    }

    /// `x (OR x)*` or `x (AND x)*`, flattened into one n-ary node: evaluation goes left to
    /// right and stops at the first deciding operand either way, so grouping does not matter
    /// (and long chains do not make the tree deep).
    fn chain(&mut self, kw: Kw) -> Result<Node, FilterError> {
        let first = self.chain_operand(kw)?;
        if !self.at_kw(kw) {
            return Ok(first);
        }
        self.check_condition(&first)?;
        let (start, mut end) = (first.start, first.end);
        let mut items = Vec::new();
        let mut tallest = 0;
        absorb(kw, first, &mut items, &mut tallest);
        while self.at_kw(kw) {
            self.bump()?;
            let next = self.chain_operand(kw)?;
            self.check_condition(&next)?;
            end = next.end;
            absorb(kw, next, &mut items, &mut tallest);
        }
        let expr = if kw == Kw::Or {
            Expr::Or(items)
        } else {
            Expr::And(items)
        };
        self.node(expr, start, end, tallest + 1)
    }

    fn equality_expr(&mut self) -> Result<Node, FilterError> {
        let mut left = self.comparison_expr()?;
        loop {
            let op = match self.next.tok {
                Tok::Eq => CompareOp::Eq,
                Tok::Ne => CompareOp::Ne,
                Tok::Kw(Kw::Is) => {
                    self.bump()?;
                    let negated = self.at_kw(Kw::Not);
                    if negated {
                        self.bump()?;
                    }
                    let expected = if negated { "NULL" } else { "NULL or NOT NULL" };
                    let end = self.expect(Tok::Kw(Kw::Null), expected)?.end;
                    let (start, height) = (left.start, left.height + 1);
                    let expr = Expr::IsNull {
                        expr: Box::new(left.expr),
                        negated,
                    };
                    left = self.node(expr, start, end, height)?;
                    continue;
                }
                _ => return Ok(left),
            };
            self.bump()?;
            let right = self.comparison_expr()?;
            self.check_equality(&left, &right)?;
            left = self.binary(op, left, right)?;
        }
    }

    /// `Compare { op }` over two nodes.
    fn binary(&self, op: CompareOp, left: Node, right: Node) -> Result<Node, FilterError> {
        let (start, end) = (left.start, right.end);
        let height = 1 + left.height.max(right.height);
        let expr = Expr::Compare {
            op,
            lhs: Box::new(left.expr),
            rhs: Box::new(right.expr),
        };
        self.node(expr, start, end, height)
    }

    fn comparison_expr(&mut self) -> Result<Node, FilterError> {
        let mut left = self.unary_expr()?;
        loop {
            let op = match self.next.tok {
                Tok::Gt => CompareOp::Gt,
                Tok::Ge => CompareOp::Ge,
                Tok::Lt => CompareOp::Lt,
                Tok::Le => CompareOp::Le,
                Tok::Kw(Kw::Not) => {
                    self.bump()?;
                    left = self.negatable(left, true)?;
                    continue;
                }
                Tok::Kw(Kw::Contains | Kw::StartsWith | Kw::EndsWith | Kw::Between | Kw::In) => {
                    left = self.negatable(left, false)?;
                    continue;
                }
                _ => return Ok(left),
            };
            self.bump()?;
            let right = self.unary_expr()?;
            self.check_numeric(&left)?;
            self.check_numeric(&right)?;
            left = self.binary(op, left, right)?;
        }
    }

    /// The operators that may follow `NOT`: string matches, `BETWEEN` and `IN`.
    fn negatable(&mut self, left: Node, negated: bool) -> Result<Node, FilterError> {
        let op = match self.next.tok {
            Tok::Kw(Kw::Contains) => MatchOp::Contains,
            Tok::Kw(Kw::StartsWith) => MatchOp::StartsWith,
            Tok::Kw(Kw::EndsWith) => MatchOp::EndsWith,
            Tok::Kw(Kw::Between) => return self.between(left, negated),
            Tok::Kw(Kw::In) => return self.in_list(left, negated),
            _ => return Err(self.unexpected("CONTAINS, STARTSWITH, ENDSWITH, BETWEEN or IN")),
        };
        self.bump()?;
        let end = self.next.end;
        let pattern = self.string_literal()?;
        let (start, height) = (left.start, left.height + 1);
        let expr = Expr::Match {
            op,
            expr: Box::new(left.expr),
            pattern,
            negated,
        };
        self.node(expr, start, end, height)
    }

    fn between(&mut self, left: Node, negated: bool) -> Result<Node, FilterError> {
        self.bump()?;
        let low = self.unary_expr()?;
        self.expect(Tok::Kw(Kw::And), "AND")?;
        let high = self.unary_expr()?;
        // RocketMQ checks constant bounds only for BETWEEN, not for NOT BETWEEN.
        if !negated {
            self.check_bounds(&low, &high)?;
        }
        for n in [&left, &low, &high] {
            self.check_numeric(n)?;
        }
        let (start, end) = (left.start, high.end);
        let height = 1 + left.height.max(low.height).max(high.height);
        let expr = Expr::Between {
            expr: Box::new(left.expr),
            low: Box::new(low.expr),
            high: Box::new(high.expr),
            negated,
        };
        self.node(expr, start, end, height)
    }

    fn in_list(&mut self, left: Node, negated: bool) -> Result<Node, FilterError> {
        self.bump()?;
        self.expect(Tok::LParen, "'('")?;
        let mut list = Vec::new();
        loop {
            if list.len() >= self.limits.max_in_list {
                let limit = LimitExceeded::ListItems {
                    max: self.limits.max_in_list,
                };
                return Err(FilterError::limit(self.src, self.next.start, limit));
            }
            list.push(self.string_literal()?);
            if self.next.tok != Tok::Comma {
                break;
            }
            self.bump()?;
        }
        let end = self.expect(Tok::RParen, "',' or ')'")?.end;
        let Expr::Prop(prop) = left.expr else {
            return Err(self.error_at(left.start, left.end, "a property name before IN"));
        };
        let expr = Expr::In {
            prop,
            list,
            negated,
        };
        self.node(expr, left.start, end, left.height + 1)
    }

    fn unary_expr(&mut self) -> Result<Node, FilterError> {
        let start = self.next.start;
        if !matches!(self.next.tok, Tok::Plus | Tok::Minus | Tok::Kw(Kw::Not)) {
            return self.primary_expr();
        }
        self.enter()?;
        let prefix = self.bump()?.tok;
        let inner = self.unary_expr()?;
        self.leave();
        let (end, height) = (inner.end, inner.height + 1);
        let expr = match prefix {
            // Unary plus builds nothing in RocketMQ: `+5` is still the constant 5.
            Tok::Plus => return Ok(Node { start, ..inner }),
            Tok::Minus => Expr::Neg(Box::new(inner.expr)),
            _ => {
                self.check_condition(&inner)?;
                Expr::Not(Box::new(inner.expr))
            }
        };
        self.node(expr, start, end, height)
    }

    fn primary_expr(&mut self) -> Result<Node, FilterError> {
        let token = &self.next;
        let (start, end) = (token.start, token.end);
        let expr = match &token.tok {
            Tok::Int(v) => Expr::Lit(Literal::Int(*v)),
            Tok::Float(v) => Expr::Lit(Literal::Float(*v)),
            Tok::Str(s) => Expr::Lit(Literal::Str(s.clone())),
            Tok::Kw(Kw::True) => Expr::Lit(Literal::Bool(true)),
            Tok::Kw(Kw::False) => Expr::Lit(Literal::Bool(false)),
            Tok::Kw(Kw::Null) => Expr::Lit(Literal::Null),
            Tok::Ident(name) => Expr::Prop(name.clone()),
            Tok::LParen => {
                self.enter()?;
                self.bump()?;
                let inner = self.or_expr()?;
                self.leave();
                let end = self.expect(Tok::RParen, "an operator or ')'")?.end;
                // Parentheses only group: the node keeps its height, its span grows.
                return Ok(Node {
                    start,
                    end,
                    ..inner
                });
            }
            _ => return Err(self.unexpected("a literal, an identifier or '('")),
        };
        self.bump()?;
        Ok(Node {
            expr,
            start,
            end,
            height: 0,
        })
    }

    // RocketMQ's operand checks (its parser throws for these, so the selector is invalid).

    /// Operands of AND, OR, NOT and the whole expression must be conditions or properties
    /// (RocketMQ's `asBooleanExpression`).
    fn check_condition(&self, n: &Node) -> Result<(), FilterError> {
        if is_condition(&n.expr) || matches!(n.expr, Expr::Prop(_)) {
            return Ok(());
        }
        Err(self.error_at(
            n.start,
            n.end,
            "a condition (a comparison, a property, TRUE, FALSE or NULL)",
        ))
    }

    /// Operands of `>`, `>=`, `<`, `<=` and BETWEEN: no string, boolean or NULL literal and no
    /// condition (RocketMQ's `checkLessThanOperand`).
    fn check_numeric(&self, n: &Node) -> Result<(), FilterError> {
        let ok = match &n.expr {
            Expr::Lit(lit) => matches!(lit, Literal::Int(_) | Literal::Float(_)),
            other => !is_condition(other),
        };
        if ok {
            return Ok(());
        }
        Err(self.error_at(n.start, n.end, "a numeric operand"))
    }

    /// `=` and `<>` take no NULL literal, and a TRUE/FALSE literal on the left compares only
    /// with a condition or a non-literal (RocketMQ's `checkEqualOperand[Compatability]`).
    fn check_equality(&self, left: &Node, right: &Node) -> Result<(), FilterError> {
        for n in [left, right] {
            if n.expr == Expr::Lit(Literal::Null) {
                return Err(self.error_at(
                    n.start,
                    n.end,
                    "an operand other than NULL (use IS NULL)",
                ));
            }
        }
        if let (Expr::Lit(Literal::Bool(_)), Expr::Lit(lit)) = (&left.expr, &right.expr) {
            if !matches!(lit, Literal::Bool(_)) {
                return Err(self.error_at(
                    right.start,
                    right.end,
                    "TRUE, FALSE or a non-literal operand",
                ));
            }
        }
        Ok(())
    }

    /// Literal BETWEEN bounds must be non-NULL and in order (RocketMQ's `createBetween`).
    fn check_bounds(&self, low: &Node, high: &Node) -> Result<(), FilterError> {
        let (Expr::Lit(lo), Expr::Lit(hi)) = (&low.expr, &high.expr) else {
            return Ok(());
        };
        let (lo, hi) = (Value::from(lo), Value::from(hi));
        if lo == Value::Null || hi == Value::Null {
            let n = if lo == Value::Null { low } else { high };
            return Err(self.error_at(n.start, n.end, "a bound other than NULL"));
        }
        match compare(&hi, &lo) {
            Ok(Ordering::Less) => Err(self.error_at(
                high.start,
                high.end,
                "an upper bound not below the lower bound",
            )),
            Ok(_) => Ok(()),
            Err(_) => Err(self.error_at(high.start, high.end, "a numeric operand")),
        }
    }
}

/// Moves a chain operand into `items`, splicing in the operands of a same-kind chain.
fn absorb(kw: Kw, n: Node, items: &mut Vec<Expr>, tallest: &mut usize) {
    match (kw, n.expr) {
        (Kw::Or, Expr::Or(inner)) | (Kw::And, Expr::And(inner)) => {
            // Its operands sit one level below it.
            *tallest = (*tallest).max(n.height.saturating_sub(1));
            items.extend(inner);
        }
        (_, expr) => {
            *tallest = (*tallest).max(n.height);
            items.push(expr);
        }
    }
}

/// Expressions RocketMQ types as boolean (`BooleanExpression`): conditions and the TRUE, FALSE
/// and NULL literals. A bare property is not one, but may stand where a condition is expected.
fn is_condition(e: &Expr) -> bool {
    match e {
        Expr::Lit(lit) => matches!(lit, Literal::Bool(_) | Literal::Null),
        Expr::Prop(_) | Expr::Neg(_) => false,
        Expr::Not(_)
        | Expr::And(_)
        | Expr::Or(_)
        | Expr::Compare { .. }
        | Expr::IsNull { .. }
        | Expr::Between { .. }
        | Expr::In { .. }
        | Expr::Match { .. } => true,
    }
}
