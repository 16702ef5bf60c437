//! The options string of `path_edges`: `key=value` pairs separated by `;`.

use regex::Regex;

use super::plan_err;
use datafusion::error::Result;

/// The most edges a path may be asked for.
pub const MAX_STEPS_LIMIT: usize = 1000;
pub const DEFAULT_MAX_STEPS: usize = 10;

#[derive(Debug, Clone)]
pub struct PathOptions {
    /// The path begins at the first row with this (cleaned) event.
    pub start: Option<String>,
    /// The path ends at the first row with this event (after `start`).
    pub end: Option<String>,
    /// The most edges.
    pub max_steps: usize,
    /// The path stops at a pause longer than this, in seconds.
    pub session_gap: Option<i64>,
    /// The path keeps to this long after (before, for `end` alone) its anchor row, in
    /// seconds.
    pub window: Option<i64>,
    /// Immediate repeats of an event count once.
    pub collapse: bool,
    /// Rewrites applied in order to every event name.
    pub replace: Vec<(Regex, String)>,
}

impl PathOptions {
    pub fn parse(text: &str) -> Result<Self> {
        let mut options = PathOptions {
            start: None,
            end: None,
            max_steps: DEFAULT_MAX_STEPS,
            session_gap: None,
            window: None,
            collapse: false,
            replace: vec![],
        };
        let argument = "argument 1 (options)";
        for (key, value) in crate::args::key_values(super::NAME, text, argument)? {
            match key {
                "start" => options.start = Some(value.to_string()),
                "end" => options.end = Some(value.to_string()),
                "max_steps" => {
                    options.max_steps = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_STEPS_LIMIT).contains(n))
                        .ok_or_else(|| {
                            plan_err(format!(
                                "option max_steps={value} in {argument}: expected a whole number from 1 to {MAX_STEPS_LIMIT}"
                            ))
                        })?
                }
                "session_gap" => options.session_gap = Some(seconds(key, value)?),
                "window" => options.window = Some(seconds(key, value)?),
                "collapse" => {
                    options.collapse = match value {
                        "true" | "on" | "1" => true,
                        "false" | "off" | "0" => false,
                        _ => {
                            return Err(plan_err(format!(
                                "option collapse={value} in {argument}: expected true or false"
                            )))
                        }
                    }
                }
                "replace" => {
                    let (pattern, replacement) = value.split_once("=>").ok_or_else(|| {
                        plan_err(format!(
                            "option replace={value} in {argument}: expected replace=REGEX => REPLACEMENT"
                        ))
                    })?;
                    let regex = Regex::new(pattern.trim()).map_err(|e| {
                        plan_err(format!(
                            "option replace in {argument}: bad regular expression '{}': {e}",
                            pattern.trim()
                        ))
                    })?;
                    options.replace.push((regex, replacement.trim().to_string()));
                }
                other => {
                    return Err(plan_err(format!(
                        "unknown option '{other}' in {argument} (expected start, end, max_steps, session_gap, window, collapse or replace)"
                    )))
                }
            }
        }
        Ok(options)
    }

    /// An event name after the `replace` rewrites.
    pub fn clean(&self, name: &str) -> String {
        let mut name = name.to_string();
        for (regex, replacement) in &self.replace {
            name = regex.replace_all(&name, replacement.as_str()).into_owned();
        }
        name
    }
}

/// A duration like 90, 90s, 30m, 1h, 2d or 1w, in seconds.
fn seconds(key: &str, value: &str) -> Result<i64> {
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => value.split_at(i),
        None => (value, "s"),
    };
    let per = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => 0,
    };
    match number.parse::<i64>() {
        Ok(n) if per > 0 => Ok(n.saturating_mul(per)),
        _ => Err(plan_err(format!(
            "option {key}={value} in argument 1 (options): expected a duration like 90s, 30m, 1h, 2d or 1w"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_option() {
        let o = PathOptions::parse(
            "start=home; end=pay; max_steps=4; session_gap=30m; window=2h; collapse=true; \
             replace=^/item/[0-9]+$ => /item/:id; replace=^/ => ",
        )
        .unwrap();
        assert_eq!(o.start.as_deref(), Some("home"));
        assert_eq!(o.end.as_deref(), Some("pay"));
        assert_eq!(o.max_steps, 4);
        assert_eq!(o.session_gap, Some(1800));
        assert_eq!(o.window, Some(7200));
        assert!(o.collapse);
        // Rewrites apply in order: the template first, then the leading slash goes.
        assert_eq!(o.clean("/item/42"), "item/:id");
        assert_eq!(o.clean("/cart"), "cart");
        let d = PathOptions::parse("").unwrap();
        assert_eq!(
            (d.max_steps, d.collapse, d.start),
            (DEFAULT_MAX_STEPS, false, None)
        );
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        let err = |t: &str| PathOptions::parse(t).unwrap_err().to_string();
        assert!(err("max_steps=0").contains(
            "option max_steps=0 in argument 1 (options): expected a whole number from 1 to 1000"
        ));
        assert!(err("window=5y").contains("expected a duration like 90s"));
        assert!(err("replace=([ => x").contains("bad regular expression '(['"));
        assert!(err("replace=abc").contains("expected replace=REGEX => REPLACEMENT"));
        assert!(err("begin=home").contains("unknown option 'begin'"));
        assert!(err("collapse=maybe").contains("expected true or false"));
    }
}
