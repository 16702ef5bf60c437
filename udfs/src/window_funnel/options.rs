//! The literal arguments of `window_funnel`: the window and the mode.

use datafusion::arrow::datatypes::DataType;
use datafusion::error::Result;
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::scalar::ScalarValue;

use super::{plan_err, MAX_STEPS, NAME};
use crate::args::{coerce_conditions, literal, string_literal};

/// ClickHouse's windowFunnel modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunnelMode {
    /// A step seen again (before the chain ends) stops the search.
    pub strict_deduplication: bool,
    /// An event that is not the next step (or a row matching no step) stops the chain.
    pub strict_order: bool,
    /// Each step must be strictly later than the previous one.
    pub strict_increase: bool,
    /// One row counts for one step of a chain only.
    pub strict_once: bool,
    /// With strict_order: a later step seen too early is skipped instead of stopping.
    pub allow_reentry: bool,
}

impl FunnelMode {
    pub fn parse(text: &str) -> Result<Self> {
        let mut mode = FunnelMode::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "strict_deduplication" => mode.strict_deduplication = true,
                "strict_order" => mode.strict_order = true,
                "strict_increase" => mode.strict_increase = true,
                "strict_once" => mode.strict_once = true,
                "allow_reentry" => mode.allow_reentry = true,
                "strict" => {
                    return Err(plan_err(
                        "mode 'strict' was renamed strict_deduplication".to_string(),
                    ))
                }
                other => {
                    return Err(plan_err(format!(
                        "unknown mode '{other}' in argument 2 (expected '' or a comma-separated \
                         set of strict_deduplication, strict_order, strict_increase, \
                         strict_once, allow_reentry)"
                    )))
                }
            }
        }
        if mode.allow_reentry && !mode.strict_order {
            return Err(plan_err(
                "mode allow_reentry needs strict_order too".to_string(),
            ));
        }
        Ok(mode)
    }
}

/// Everything a call fixes before it sees a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunnelOptions {
    /// In the units of `ts` as an integer (microseconds for a µs timestamp).
    pub window: i64,
    pub mode: FunnelMode,
    pub steps: usize,
}

impl FunnelOptions {
    pub fn from_args(args: &AccumulatorArgs) -> Result<Self> {
        let steps = args.exprs.len().saturating_sub(3);
        if steps == 0 {
            return Err(plan_err(
                "needs a window, a mode, a timestamp and at least one condition".to_string(),
            ));
        }
        let ts_type = args.expr_fields[2].data_type().clone();
        let window = literal(NAME, &args.exprs[0], "argument 1 (window)")?;
        let mode = FunnelMode::parse(&string_literal(NAME, &args.exprs[1], "argument 2 (mode)")?)?;
        Ok(FunnelOptions {
            window: window_in_ts_units(&window, &ts_type)?,
            mode,
            steps,
        })
    }
}

/// The window in `ts`'s units (see [`crate::args::duration_in_ts_units`]).
pub(crate) fn window_in_ts_units(window: &ScalarValue, ts: &DataType) -> Result<i64> {
    crate::args::duration_in_ts_units(super::NAME, window, ts, "argument 1 (window)")
}

/// Check the argument types; conditions that are NULL literals become booleans.
pub(crate) fn check_argument_types(types: &[DataType]) -> Result<Vec<DataType>> {
    if types.len() < 4 {
        return Err(plan_err(format!(
            "expected window_funnel(window, mode, ts, cond1, ..., condN), got {} arguments",
            types.len()
        )));
    }
    if types.len() - 3 > MAX_STEPS {
        return Err(plan_err(format!(
            "at most {MAX_STEPS} conditions, got {}",
            types.len() - 3
        )));
    }
    let window_ok =
        types[0].is_integer() || matches!(types[0], DataType::Interval(_) | DataType::Null);
    if !window_ok {
        return Err(plan_err(format!(
            "argument 1 (window) must be an INTERVAL or an integer, got {}",
            types[0]
        )));
    }
    if !matches!(
        types[1],
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null
    ) {
        return Err(plan_err(format!(
            "argument 2 (mode) must be a string, got {}",
            types[1]
        )));
    }
    if !(types[2].is_integer() || matches!(types[2], DataType::Timestamp(_, _))) {
        return Err(plan_err(format!(
            "argument 3 (ts) must be a timestamp or an integer, got {}",
            types[2]
        )));
    }
    coerce_conditions(NAME, types, 3)
}
