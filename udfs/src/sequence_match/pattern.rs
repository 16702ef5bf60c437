//! ClickHouse's sequence pattern language, parsed into a list of actions:
//!
//! - `(?N)`: one row where condition N holds;
//! - `.`: any one row;
//! - `.*`: any run of rows, possibly empty;
//! - `(?t op n)`, op one of `<`, `<=`, `>`, `>=`, `==`: the time since the row the
//!   previous action stopped at.
//!
//! Spaces between the parts are allowed. A pattern always starts with an implicit `.*`,
//! so it may match anywhere. Errors give the position (counted from 0) and the rest of
//! the pattern from there.

/// A time comparison of `(?t op n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeOp {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    Equal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A row where the condition (0-based) holds.
    Event(u8),
    /// Any row.
    Any,
    /// Any run of rows.
    Star,
    /// The time since the base row compared with a duration, in the pattern's units
    /// (seconds for a timestamp `ts`).
    Time(TimeOp, u64),
}

impl Action {
    /// Actions that may be left unmatched at the end of the rows: they never need a
    /// row of their own.
    pub fn can_end_unmatched(&self) -> bool {
        matches!(
            self,
            Action::Star
                | Action::Time(TimeOp::Less | TimeOp::LessOrEqual, _)
                | Action::Time(TimeOp::GreaterOrEqual, 0)
        )
    }

    /// Actions that take a row.
    pub fn consumes(&self) -> bool {
        matches!(self, Action::Event(_) | Action::Any)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The actions, starting with the implicit `.*`.
    pub actions: Vec<Action>,
    /// Whether some action is a time condition.
    pub has_time: bool,
}

/// Parse `text` for a call with `conditions` conditions. The error is a sentence
/// without the function's name.
pub fn parse(text: &str, conditions: usize) -> Result<Pattern, String> {
    let bytes = text.as_bytes();
    let mut pos = 0;
    let mut actions = vec![Action::Star];
    let mut has_time = false;
    let err = |at: usize, msg: &str| -> String {
        let rest = &text[at.min(text.len())..];
        if rest.is_empty() {
            format!("pattern '{text}': {msg} at position {at} (the end)")
        } else {
            format!("pattern '{text}': {msg} at position {at}: '{rest}'")
        }
    };
    let skip_spaces = |pos: &mut usize| {
        while *pos < bytes.len() && bytes[*pos].is_ascii_whitespace() {
            *pos += 1;
        }
    };
    let number = |pos: &mut usize| -> Option<u64> {
        let start = *pos;
        while *pos < bytes.len() && bytes[*pos].is_ascii_digit() {
            *pos += 1;
        }
        text[start..*pos].parse().ok()
    };
    loop {
        skip_spaces(&mut pos);
        if pos >= bytes.len() {
            break;
        }
        let start = pos;
        if text[pos..].starts_with("(?") {
            pos += 2;
            skip_spaces(&mut pos);
            if bytes.get(pos) == Some(&b't') {
                pos += 1;
                skip_spaces(&mut pos);
                let rest = &text[pos..];
                let (op, len) = if rest.starts_with("<=") {
                    (TimeOp::LessOrEqual, 2)
                } else if rest.starts_with(">=") {
                    (TimeOp::GreaterOrEqual, 2)
                } else if rest.starts_with("==") {
                    (TimeOp::Equal, 2)
                } else if rest.starts_with('<') {
                    (TimeOp::Less, 1)
                } else if rest.starts_with('>') {
                    (TimeOp::Greater, 1)
                } else {
                    return Err(err(
                        pos,
                        "expected a time comparison <, <=, >, >= or == after '(?t'",
                    ));
                };
                pos += len;
                skip_spaces(&mut pos);
                let at = pos;
                let Some(n) = number(&mut pos) else {
                    return Err(err(at, "expected a whole number of seconds"));
                };
                if !matches!(
                    actions.last(),
                    Some(Action::Event(_) | Action::Any | Action::Star)
                ) {
                    return Err(err(
                        start,
                        "a time condition must follow a row ((?N) or .) or .*, not another time condition",
                    ));
                }
                actions.push(Action::Time(op, n));
                has_time = true;
            } else {
                let at = pos;
                let Some(n) = number(&mut pos) else {
                    return Err(err(at, "expected a condition number or t after '(?'"));
                };
                if n == 0 || n as usize > conditions {
                    return Err(err(
                        at,
                        &format!(
                            "condition {n} does not exist (the call has conditions 1 to {conditions})"
                        ),
                    ));
                }
                actions.push(Action::Event((n - 1) as u8));
            }
            skip_spaces(&mut pos);
            if bytes.get(pos) != Some(&b')') {
                return Err(err(pos, "expected ')'"));
            }
            pos += 1;
        } else if text[pos..].starts_with(".*") {
            actions.push(Action::Star);
            pos += 2;
        } else if bytes[pos] == b'.' {
            actions.push(Action::Any);
            pos += 1;
        } else {
            return Err(err(pos, "expected (?N), (?t op seconds), . or .*"));
        }
    }
    Ok(Pattern { actions, has_time })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    #[test]
    fn parses_every_construct() {
        let p = parse("(?1).*(?2)(?t<=3600).(?3)(?t>5)(?t==0)", 3);
        // The last time condition follows another one: an error.
        assert!(p.unwrap_err().contains("must follow a row"));
        let p = parse("(?1) .* (?2)(?t <= 3600). (?3)(?t>5)", 3).unwrap();
        assert_eq!(
            p.actions,
            vec![
                Star,
                Event(0),
                Star,
                Event(1),
                Time(TimeOp::LessOrEqual, 3600),
                Any,
                Event(2),
                Time(TimeOp::Greater, 5)
            ]
        );
        assert!(p.has_time);
        for (text, op) in [
            ("(?1)(?t<1)", TimeOp::Less),
            ("(?1)(?t>=1)", TimeOp::GreaterOrEqual),
            ("(?1)(?t==1)", TimeOp::Equal),
        ] {
            assert_eq!(parse(text, 1).unwrap().actions[2], Time(op, 1));
        }
        assert!(!parse("(?1)(?2)", 2).unwrap().has_time);
        assert_eq!(parse("", 1).unwrap().actions, vec![Star]);
    }

    #[test]
    fn errors_point_at_the_position() {
        let e = parse("(?1)(?x)", 2).unwrap_err();
        assert_eq!(
            e,
            "pattern '(?1)(?x)': expected a condition number or t after '(?' at position 6: 'x)'"
        );
        let e = parse("(?1)(?3)", 2).unwrap_err();
        assert!(
            e.contains("condition 3 does not exist (the call has conditions 1 to 2) at position 6"),
            "{e}"
        );
        assert!(parse("(?0)", 2)
            .unwrap_err()
            .contains("condition 0 does not exist"));
        let e = parse("(?1", 2).unwrap_err();
        assert!(e.contains("expected ')' at position 3 (the end)"), "{e}");
        let e = parse("(?1)(?t~5)", 2).unwrap_err();
        assert!(e.contains("expected a time comparison"), "{e}");
        assert!(e.contains("position 7"), "{e}");
        let e = parse("(?1)(?t<=x)", 2).unwrap_err();
        assert!(e.contains("whole number of seconds at position 9"), "{e}");
        let e = parse("(?1)+", 2).unwrap_err();
        assert!(e.contains("at position 4: '+'"), "{e}");
    }
}
