//! The rule-based models: how one conversion's credit is split over the touches in its
//! lookback window. Pure functions over (time, channel) lists, so that each model can be
//! checked by hand.

use datafusion::error::Result;

use crate::args::{key_values, plan_err};

/// A model and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Model {
    FirstTouch,
    LastTouch,
    /// The last touch whose channel is not `direct` (the last touch if all are).
    LastNonDirect {
        direct: String,
    },
    Linear,
    /// Every distinct channel gets a full conversion (credits exceed the total).
    Participation,
    /// U-shape: `first` and `last` to the ends, the rest shared by the middle.
    PositionBased {
        first: f64,
        last: f64,
    },
    /// Weight 2^(-(t_conv - t_touch) / half_life), normalised; half_life in ts units.
    TimeDecay {
        half_life: f64,
    },
}

/// The options string of `attribution`: `model=...` and the model's parameters.
pub fn parse_options(function: &str, text: &str, us_per_unit: Option<f64>) -> Result<Model> {
    let err = |m: String| plan_err(function, m);
    let pairs = key_values(function, text, "argument 2 (options)")?;
    let get = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    for (k, _) in &pairs {
        if !matches!(*k, "model" | "first" | "last" | "half_life" | "direct") {
            return Err(err(format!(
                "unknown option '{k}' in argument 2 (options); expected model, first, last, \
                 half_life or direct"
            )));
        }
    }
    let model = get("model").ok_or_else(|| {
        err("argument 2 (options) must name a model, e.g. 'model=last_touch'".to_string())
    })?;
    let only = |allowed: &[&str]| -> Result<()> {
        for (k, _) in &pairs {
            if *k != "model" && !allowed.contains(k) {
                return Err(err(format!("option '{k}' does not apply to model={model}")));
            }
        }
        Ok(())
    };
    let share = |key: &str, default: f64| -> Result<f64> {
        match get(key) {
            None => Ok(default),
            Some(v) => match v.parse::<f64>() {
                Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
                _ => Err(err(format!(
                    "option {key}={v}: expected a share between 0 and 1"
                ))),
            },
        }
    };
    Ok(match model {
        "first_touch" => {
            only(&[])?;
            Model::FirstTouch
        }
        "last_touch" => {
            only(&[])?;
            Model::LastTouch
        }
        "last_non_direct" => {
            only(&["direct"])?;
            Model::LastNonDirect {
                direct: get("direct").unwrap_or("direct").to_string(),
            }
        }
        "linear" => {
            only(&[])?;
            Model::Linear
        }
        "participation" => {
            only(&[])?;
            Model::Participation
        }
        "position_based" => {
            only(&["first", "last"])?;
            let (first, last) = (share("first", 0.4)?, share("last", 0.4)?);
            if first + last > 1.0 + 1e-12 {
                return Err(err(format!(
                    "position_based shares first={first} and last={last} add up to more than 1"
                )));
            }
            Model::PositionBased { first, last }
        }
        "time_decay" => {
            only(&["half_life"])?;
            let text = get("half_life").unwrap_or("7d");
            let half_life = parse_half_life(text, us_per_unit)
                .ok_or_else(|| err(format!(
                    "option half_life={text}: expected a positive duration like 7d, 12h, 30m or 3600s \
                     (a plain number for an integer ts, in its units)"
                )))?;
            Model::TimeDecay { half_life }
        }
        other => {
            return Err(err(format!(
                "unknown model '{other}'; expected first_touch, last_touch, last_non_direct, \
                 linear, participation, position_based or time_decay"
            )))
        }
    })
}

/// `7d`, `12h`, `30m`, `3600s` (or a plain number of seconds) in ts units, for a
/// timestamp ts with `us_per_unit` microseconds per unit; for an integer ts (None), a
/// plain number in its units.
fn parse_half_life(text: &str, us_per_unit: Option<f64>) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: f64 = num.parse().ok()?;
    let seconds = match unit.trim() {
        "" if us_per_unit.is_none() => return (n > 0.0).then_some(n),
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        "w" => n * 7.0 * 86_400.0,
        _ => return None,
    };
    let per_unit = us_per_unit?;
    let v = seconds * 1e6 / per_unit;
    (v > 0.0).then_some(v)
}

/// A touch in a conversion's window: its time and channel id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Touch {
    pub ts: i64,
    pub channel: u32,
}

/// Add the shares of one conversion at `conv_ts` over `touches` (its window, in order)
/// to `credit(channel, share)`. Shares sum to 1 except for participation.
pub fn split<'a>(
    model: &Model,
    conv_ts: i64,
    touches: &[Touch],
    names: &dyn Fn(u32) -> &'a str,
    credit: &mut dyn FnMut(u32, f64),
) {
    let n = touches.len();
    if n == 0 {
        return;
    }
    match model {
        Model::FirstTouch => credit(touches[0].channel, 1.0),
        Model::LastTouch => credit(touches[n - 1].channel, 1.0),
        Model::LastNonDirect { direct } => {
            let pick = touches
                .iter()
                .rev()
                .find(|t| names(t.channel) != direct)
                .unwrap_or(&touches[n - 1]);
            credit(pick.channel, 1.0)
        }
        Model::Linear => {
            let share = 1.0 / n as f64;
            for t in touches {
                credit(t.channel, share);
            }
        }
        Model::Participation => {
            let mut seen: Vec<u32> = touches.iter().map(|t| t.channel).collect();
            seen.sort_unstable();
            seen.dedup();
            for c in seen {
                credit(c, 1.0);
            }
        }
        Model::PositionBased { first, last } => match n {
            1 => credit(touches[0].channel, 1.0),
            2 => {
                credit(touches[0].channel, 0.5);
                credit(touches[1].channel, 0.5);
            }
            _ => {
                let middle = (1.0 - first - last) / (n - 2) as f64;
                credit(touches[0].channel, *first);
                for t in &touches[1..n - 1] {
                    credit(t.channel, middle);
                }
                credit(touches[n - 1].channel, *last);
            }
        },
        Model::TimeDecay { half_life } => {
            let weights: Vec<f64> = touches
                .iter()
                .map(|t| (-((conv_ts - t.ts) as f64) / half_life).exp2())
                .collect();
            let total: f64 = weights.iter().sum();
            for (t, w) in touches.iter().zip(&weights) {
                credit(t.channel, w / total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 4] = ["search", "email", "direct", "wechat"];

    fn shares(model: &Model, conv_ts: i64, touches: &[(i64, u32)]) -> Vec<(String, f64)> {
        let touches: Vec<Touch> = touches
            .iter()
            .map(|&(ts, channel)| Touch { ts, channel })
            .collect();
        let mut out: Vec<(String, f64)> = vec![];
        split(
            model,
            conv_ts,
            &touches,
            &|c| NAMES[c as usize],
            &mut |c, s| {
                let name = NAMES[c as usize].to_string();
                match out.iter_mut().find(|(n, _)| *n == name) {
                    Some(e) => e.1 += s,
                    None => out.push((name, s)),
                }
            },
        );
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn close(got: &[(String, f64)], want: &[(&str, f64)]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for ((gn, gv), (wn, wv)) in got.iter().zip(want) {
            assert_eq!(gn, wn);
            assert!((gv - wv).abs() < 1e-12, "{gn}: {gv} vs {wv}");
        }
    }

    // Touches: search at 0, email at 10, direct at 20, search at 30; conversion at 40.
    const PATH: [(i64, u32); 4] = [(0, 0), (10, 1), (20, 2), (30, 0)];

    #[test]
    fn single_touch_models() {
        close(&shares(&Model::FirstTouch, 40, &PATH), &[("search", 1.0)]);
        close(&shares(&Model::LastTouch, 40, &PATH), &[("search", 1.0)]);
        let lnd = Model::LastNonDirect {
            direct: "direct".into(),
        };
        close(&shares(&lnd, 40, &PATH[..3]), &[("email", 1.0)]);
        // All direct: the last touch after all.
        close(&shares(&lnd, 40, &[(5, 2), (6, 2)]), &[("direct", 1.0)]);
    }

    #[test]
    fn shared_models() {
        close(
            &shares(&Model::Linear, 40, &PATH),
            &[("direct", 0.25), ("email", 0.25), ("search", 0.5)],
        );
        close(
            &shares(&Model::Participation, 40, &PATH),
            &[("direct", 1.0), ("email", 1.0), ("search", 1.0)],
        );
        let u = Model::PositionBased {
            first: 0.4,
            last: 0.4,
        };
        // 40% first (search), 40% last (search), 20% over email and direct.
        close(
            &shares(&u, 40, &PATH),
            &[("direct", 0.1), ("email", 0.1), ("search", 0.8)],
        );
        close(
            &shares(&u, 40, &PATH[1..3]),
            &[("direct", 0.5), ("email", 0.5)],
        );
        close(&shares(&u, 40, &PATH[1..2]), &[("email", 1.0)]);
        // Half-life 10: weights 1/16, 1/8, 1/4, 1/2 of the total 15/16.
        let d = Model::TimeDecay { half_life: 10.0 };
        close(
            &shares(&d, 40, &PATH),
            &[
                ("direct", 4.0 / 15.0),
                ("email", 2.0 / 15.0),
                ("search", 9.0 / 15.0),
            ],
        );
    }

    #[test]
    fn options_parse_and_errors_name_the_problem() {
        let p = |t: &str| parse_options("attribution", t, Some(1.0));
        assert_eq!(p("model=linear").unwrap(), Model::Linear);
        assert_eq!(
            p("model=position_based; first=0.3; last=0.5").unwrap(),
            Model::PositionBased {
                first: 0.3,
                last: 0.5
            }
        );
        assert_eq!(
            p("model=time_decay; half_life=1d").unwrap(),
            Model::TimeDecay {
                half_life: 86_400e6
            }
        );
        assert_eq!(
            parse_options("attribution", "model=time_decay; half_life=2", None).unwrap(),
            Model::TimeDecay { half_life: 2.0 }
        );
        for (text, needle) in [
            ("", "must name a model"),
            ("model=magic", "unknown model 'magic'"),
            ("model=linear; first=0.2", "does not apply"),
            ("model=position_based; first=0.7; last=0.7", "more than 1"),
            ("model=position_based; first=2", "between 0 and 1"),
            ("model=time_decay; half_life=soon", "half_life=soon"),
            ("model=linear; colour=red", "unknown option 'colour'"),
        ] {
            let e = p(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
