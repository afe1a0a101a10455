//! Tokens of RocketMQ's selector grammar (`SelectorParser.jj`), produced one at a time so that
//! a grammar error early in the text is reported before a lexical error later on, as there.

use crate::error::{FilterError, END_OF_INPUT};

/// Reserved words; matched case-insensitively, and a longer identifier wins (`NOTE` is a name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kw {
    Not,
    And,
    Or,
    Between,
    In,
    True,
    False,
    Null,
    Is,
    Contains,
    StartsWith,
    EndsWith,
}

const KEYWORDS: [(&str, Kw); 12] = [
    ("NOT", Kw::Not),
    ("AND", Kw::And),
    ("OR", Kw::Or),
    ("BETWEEN", Kw::Between),
    ("IN", Kw::In),
    ("TRUE", Kw::True),
    ("FALSE", Kw::False),
    ("NULL", Kw::Null),
    ("IS", Kw::Is),
    ("CONTAINS", Kw::Contains),
    ("STARTSWITH", Kw::StartsWith),
    ("ENDSWITH", Kw::EndsWith),
];

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Kw(Kw),
    Int(i64),
    Float(f64),
    /// A string literal, already unescaped (`''` -> `'`).
    Str(String),
    Ident(String),
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Eof,
}

/// A token and the byte range it was read from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub start: usize,
    pub end: usize,
}

pub(crate) struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    /// From here on there is no line break, so `--` is no comment (saves rescanning the
    /// rest of the input for every `-` of a long `----...`).
    no_line_break_from: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str) -> Self {
        Lexer {
            src,
            pos: 0,
            no_line_break_from: usize::MAX,
        }
    }

    fn byte(&self, i: usize) -> Option<u8> {
        self.src.as_bytes().get(i).copied()
    }

    fn digits_end(&self, mut i: usize) -> usize {
        while self.byte(i).is_some_and(|b| b.is_ascii_digit()) {
            i += 1;
        }
        i
    }

    /// End of an exponent (`E [+-] digits`) starting at `i`, if there is a complete one.
    fn exponent_end(&self, i: usize) -> Option<usize> {
        if !matches!(self.byte(i), Some(b'e' | b'E')) {
            return None;
        }
        let mut j = i + 1;
        if matches!(self.byte(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let end = self.digits_end(j);
        (end > j).then_some(end)
    }

    fn error(&self, at: usize, expected: &str, found: &str) -> FilterError {
        FilterError::syntax(self.src, at, expected, found)
    }

    /// Skips blanks and comments. Only the five blanks RocketMQ's grammar knows are skipped.
    fn skip_blanks(&mut self) -> Result<(), FilterError> {
        loop {
            match (self.byte(self.pos), self.byte(self.pos + 1)) {
                (Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0c'), _) => self.pos += 1,
                // A `--` comment needs its line break: without one, `--5` is two minus signs.
                (Some(b'-'), Some(b'-')) if self.pos < self.no_line_break_from => {
                    let rest = self.src.as_bytes().get(self.pos..).unwrap_or_default();
                    match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                        Some(eol) => self.pos += eol + 1,
                        None => {
                            self.no_line_break_from = self.pos;
                            return Ok(());
                        }
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    let body = self.src.get(self.pos + 2..).unwrap_or("");
                    match body.find("*/") {
                        Some(close) => self.pos += 2 + close + 2,
                        None => {
                            return Err(self.error(
                                self.pos,
                                "'*/' to close the comment",
                                END_OF_INPUT,
                            ))
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    pub fn next_token(&mut self) -> Result<Token, FilterError> {
        self.skip_blanks()?;
        let start = self.pos;
        let Some(b) = self.byte(start) else {
            return Ok(Token {
                tok: Tok::Eof,
                start,
                end: start,
            });
        };
        let (tok, end) = match b {
            b'0'..=b'9' => self.number(start)?,
            b'.' if self.byte(start + 1).is_some_and(|c| c.is_ascii_digit()) => {
                self.number(start)?
            }
            b'\'' => self.string(start)?,
            b'a'..=b'z' | b'A'..=b'Z' | b'_' | b'$' => self.word(start),
            b'=' => (Tok::Eq, start + 1),
            b'<' => match self.byte(start + 1) {
                Some(b'>') => (Tok::Ne, start + 2),
                Some(b'=') => (Tok::Le, start + 2),
                _ => (Tok::Lt, start + 1),
            },
            b'>' => match self.byte(start + 1) {
                Some(b'=') => (Tok::Ge, start + 2),
                _ => (Tok::Gt, start + 1),
            },
            b'(' => (Tok::LParen, start + 1),
            b')' => (Tok::RParen, start + 1),
            b',' => (Tok::Comma, start + 1),
            b'+' => (Tok::Plus, start + 1),
            b'-' => (Tok::Minus, start + 1),
            _ => {
                let bad = self
                    .src
                    .get(start..)
                    .and_then(|s| s.chars().next())
                    .unwrap_or('?');
                let expected = "a literal, an identifier, a keyword or an operator";
                return Err(self.error(start, expected, &bad.to_string()));
            }
        };
        self.pos = end;
        Ok(Token { tok, start, end })
    }

    /// Numbers, with the longest match between RocketMQ's two literal rules:
    /// `DECIMAL: 0 | [1-9][0-9]* [lL]?` and `FLOAT: d+ . d* E? | . d+ E? | d+ E`.
    fn number(&self, start: usize) -> Result<(Tok, usize), FilterError> {
        let int_end = self.digits_end(start);
        let float_end = if self.byte(int_end) == Some(b'.') {
            let frac_end = self.digits_end(int_end + 1);
            Some(self.exponent_end(frac_end).unwrap_or(frac_end))
        } else if int_end > start {
            self.exponent_end(int_end)
        } else {
            None
        };
        if let Some(end) = float_end {
            let text = self.src.get(start..end).unwrap_or("");
            // RocketMQ's createFloat rejects values that overflow to infinity and, because it
            // compares with Double.MIN_VALUE (the smallest positive double), also zero.
            return match text.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => Ok((Tok::Float(v), end)),
                _ => Err(self.error(start, "a finite floating-point literal above zero", text)),
            };
        }
        // `0` stands alone (so `0123` is two tokens and a grammar error, as in RocketMQ).
        let digits_end = if self.byte(start) == Some(b'0') {
            start + 1
        } else {
            int_end
        };
        let text = self.src.get(start..digits_end).unwrap_or("");
        let value = text.parse::<i64>().map_err(|_| {
            self.error(start, "an integer no larger than 9223372036854775807", text)
        })?;
        let end = match self.byte(digits_end) {
            Some(b'l' | b'L') if self.byte(start) != Some(b'0') => digits_end + 1,
            _ => digits_end,
        };
        Ok((Tok::Int(value), end))
    }

    /// `'...'` with `''` standing for one quote; any other character, newlines included, is
    /// taken as is.
    fn string(&self, start: usize) -> Result<(Tok, usize), FilterError> {
        let mut value = String::new();
        let mut chars = self
            .src
            .get(start + 1..)
            .unwrap_or("")
            .char_indices()
            .peekable();
        while let Some((i, c)) = chars.next() {
            if c == '\'' {
                if chars.peek().is_some_and(|&(_, n)| n == '\'') {
                    chars.next();
                } else {
                    return Ok((Tok::Str(value), start + 1 + i + 1));
                }
            }
            value.push(c);
        }
        Err(self.error(start, "a closing quote for this string", END_OF_INPUT))
    }

    /// Identifiers are `[A-Za-z_$][A-Za-z0-9_$]*` (no dots, no non-ASCII letters).
    fn word(&self, start: usize) -> (Tok, usize) {
        let mut end = start + 1;
        while self
            .byte(end)
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        {
            end += 1;
        }
        let text = self.src.get(start..end).unwrap_or("");
        let tok = KEYWORDS
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(text))
            .map_or_else(|| Tok::Ident(text.to_owned()), |&(_, kw)| Tok::Kw(kw));
        (tok, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(src: &str) -> Vec<Tok> {
        let mut lexer = Lexer::new(src);
        let mut out = Vec::new();
        loop {
            let t = lexer.next_token().unwrap();
            if t.tok == Tok::Eof {
                return out;
            }
            out.push(t.tok);
        }
    }

    #[test]
    fn numbers_follow_rocketmq_literal_rules() {
        assert_eq!(lex("12 12L 0"), [Tok::Int(12), Tok::Int(12), Tok::Int(0)]);
        assert_eq!(lex("0123"), [Tok::Int(0), Tok::Int(123)]);
        assert_eq!(lex("0L"), [Tok::Int(0), Tok::Ident("L".into())]);
        assert_eq!(
            lex("5. .5 5e2 5.E-1"),
            [
                Tok::Float(5.0),
                Tok::Float(0.5),
                Tok::Float(500.0),
                Tok::Float(0.5)
            ]
        );
        assert_eq!(lex("5e"), [Tok::Int(5), Tok::Ident("e".into())]);
        assert_eq!(lex("0123.5"), [Tok::Float(123.5)]);
        assert!(Lexer::new("0.0").next_token().is_err());
        assert!(Lexer::new("1e400").next_token().is_err());
        assert!(Lexer::new("9223372036854775808").next_token().is_err());
        assert_eq!(lex("9223372036854775807"), [Tok::Int(i64::MAX)]);
    }

    #[test]
    fn words_strings_operators_and_comments() {
        assert_eq!(
            lex("not NoTe In"),
            [Tok::Kw(Kw::Not), Tok::Ident("NoTe".into()), Tok::Kw(Kw::In)]
        );
        assert_eq!(lex("$a_1"), [Tok::Ident("$a_1".into())]);
        assert_eq!(
            lex("'it''s' ''"),
            [Tok::Str("it's".into()), Tok::Str(String::new())]
        );
        assert_eq!(
            lex("<><=>=<>="),
            [Tok::Ne, Tok::Le, Tok::Ge, Tok::Ne, Tok::Eq]
        );
        assert_eq!(
            lex("a -- note\n/* x */ b"),
            [Tok::Ident("a".into()), Tok::Ident("b".into())]
        );
        assert_eq!(lex("--5"), [Tok::Minus, Tok::Minus, Tok::Int(5)]);
        assert!(Lexer::new("/* open").next_token().is_err());
        assert!(Lexer::new("'open").next_token().is_err());
    }
}
