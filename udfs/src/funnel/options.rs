//! The literal arguments of `funnel`: the window and the options string.

use datafusion::arrow::datatypes::DataType;
use datafusion::error::Result;
use datafusion::scalar::ScalarValue;

use super::plan_err;
use crate::args::key_values;

/// Which step-1 event a person's chain starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Entry {
    /// The first step-1 event.
    First,
    /// Of the chains that get furthest, the one that started last (ClickHouse's level).
    Latest,
    /// Of the chains that get furthest, the one that started first.
    #[default]
    Best,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ties {
    /// Events at the same time (and tiebreak value) may advance the funnel.
    #[default]
    Advance,
    /// Each step must come strictly after the previous one in (ts, tiebreak).
    Strict,
}

/// An exclusion: an event matching condition `cond` strictly between the events of
/// steps `from` and `to` disqualifies the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exclusion {
    /// 0-based index among the conditions.
    pub cond: usize,
    /// 1-based steps.
    pub from: usize,
    pub to: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunnelOptions {
    /// The whole funnel's window from the entry, in ts units.
    pub window: i64,
    pub entry: Entry,
    pub ties: Ties,
    pub unordered: bool,
    /// Number of step conditions; conditions after them are exclusion conditions.
    pub steps: usize,
    /// Max time from the previous step, per step (index 0, the entry, is always None).
    pub step_windows: Vec<Option<i64>>,
    pub exclusions: Vec<Exclusion>,
    /// 1-based step whose event gives the breakdown value.
    pub breakdown_step: usize,
    /// Whether the call has a hold column (every step shares the entry's value).
    pub hold: bool,
}

impl FunnelOptions {
    /// Parse `text` (`key=value` pairs separated by `;`) for a call with `conds`
    /// conditions and a `ts` of type `ts`.
    pub fn parse(window: &ScalarValue, text: &str, conds: usize, ts: &DataType) -> Result<Self> {
        let window =
            crate::args::duration_in_ts_units(super::NAME, window, ts, "argument 1 (window)")?;
        let mut o = FunnelOptions {
            window,
            entry: Entry::Best,
            ties: Ties::Advance,
            unordered: false,
            steps: conds,
            step_windows: vec![],
            exclusions: vec![],
            breakdown_step: 1,
            hold: false,
        };
        let mut step_windows_text: Option<String> = None;
        let mut exclusions_text: Option<String> = None;
        for (key, value) in key_values(super::NAME, text, "argument 2")? {
            match key {
                "entry" => {
                    o.entry = match value {
                        "first" => Entry::First,
                        "latest" => Entry::Latest,
                        "best" => Entry::Best,
                        _ => return Err(bad_value(key, value, "first, latest or best")),
                    }
                }
                "ties" => {
                    o.ties = match value {
                        "advance" => Ties::Advance,
                        "strict" => Ties::Strict,
                        _ => return Err(bad_value(key, value, "advance or strict")),
                    }
                }
                "order" => {
                    o.unordered = match value {
                        "ordered" => false,
                        "unordered" => true,
                        _ => return Err(bad_value(key, value, "ordered or unordered")),
                    }
                }
                "steps" => {
                    o.steps = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=conds).contains(n))
                        .ok_or_else(|| {
                            bad_value(key, value, &format!("a number from 1 to {conds}"))
                        })?
                }
                "step_windows" => step_windows_text = Some(value.to_string()),
                "exclude" => exclusions_text = Some(value.to_string()),
                "breakdown_step" => {
                    o.breakdown_step = value
                        .parse()
                        .map_err(|_| bad_value(key, value, "a step number"))?
                }
                other => {
                    return Err(plan_err(format!(
                        "unknown option '{other}' in argument 2 (expected entry, ties, order, \
                         steps, step_windows, exclude, breakdown_step)"
                    )))
                }
            }
        }
        if o.breakdown_step == 0 || o.breakdown_step > o.steps {
            return Err(bad_value(
                "breakdown_step",
                &o.breakdown_step.to_string(),
                &format!("a step from 1 to {}", o.steps),
            ));
        }
        o.step_windows = vec![None; o.steps];
        if let Some(text) = step_windows_text {
            if o.unordered {
                return Err(plan_err("step_windows needs ordered steps".to_string()));
            }
            let parts: Vec<&str> = text.split(',').map(str::trim).collect();
            if parts.len() != o.steps - 1 {
                return Err(plan_err(format!(
                    "step_windows has {} values but a {}-step funnel needs {} (one per step after \
                     the first; '-' for none)",
                    parts.len(),
                    o.steps,
                    o.steps - 1
                )));
            }
            for (i, p) in parts.iter().enumerate() {
                o.step_windows[i + 1] = if *p == "-" {
                    None
                } else {
                    Some(duration(p, ts)?)
                };
            }
        }
        if let Some(text) = exclusions_text {
            for spec in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                o.exclusions.push(exclusion(spec, conds, o.steps)?);
            }
        }
        if o.steps < conds && o.exclusions.is_empty() {
            return Err(plan_err(format!(
                "conditions {} to {conds} are neither steps nor exclusions (steps={})",
                o.steps + 1,
                o.steps
            )));
        }
        Ok(o)
    }
}

fn bad_value(key: &str, value: &str, expected: &str) -> datafusion::error::DataFusionError {
    plan_err(format!(
        "option {key}={value} in argument 2: expected {expected}"
    ))
}

/// `30s`, `10m`, `2h`, `1d`, or a plain number (seconds for a timestamp `ts`, its own
/// unit for an integer `ts`), in ts units.
fn duration(text: &str, ts: &DataType) -> Result<i64> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let n: i64 = digits.parse().map_err(|_| {
        bad_value(
            "step_windows",
            text,
            "durations like 30s, 10m, 2h, 1d, or -",
        )
    })?;
    let seconds = match unit {
        "" => {
            return crate::args::duration_in_ts_units(
                super::NAME,
                &ScalarValue::Int64(Some(n)),
                ts,
                "step_windows",
            )
        }
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(bad_value(
                "step_windows",
                text,
                "durations like 30s, 10m, 2h, 1d, or -",
            ))
        }
    };
    if !matches!(ts, DataType::Timestamp(_, _)) {
        return Err(plan_err(format!(
            "step_windows value '{text}' has a unit but ts is an integer: give plain numbers in ts's units"
        )));
    }
    crate::args::duration_in_ts_units(
        super::NAME,
        &ScalarValue::Int64(Some(seconds)),
        ts,
        "step_windows",
    )
}

/// `X:I-J`: condition X between steps I and J.
fn exclusion(spec: &str, conds: usize, steps: usize) -> Result<Exclusion> {
    let err = || {
        plan_err(format!(
            "exclusion '{spec}' in argument 2: expected COND:FROM-TO, with COND one of the \
             conditions after the {steps} steps (so {} to {conds}) and 1 <= FROM < TO <= {steps}",
            steps + 1
        ))
    };
    let (cond, span) = spec.split_once(':').ok_or_else(err)?;
    let (from, to) = span.split_once('-').ok_or_else(err)?;
    let cond: usize = cond.trim().parse().map_err(|_| err())?;
    let from: usize = from.trim().parse().map_err(|_| err())?;
    let to: usize = to.trim().parse().map_err(|_| err())?;
    if cond <= steps || cond > conds || from == 0 || from >= to || to > steps {
        return Err(err());
    }
    Ok(Exclusion {
        cond: cond - 1,
        from,
        to,
    })
}
