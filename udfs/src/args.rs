//! Argument checks the funnel functions share, with errors that name the function and
//! the argument.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::scalar::ScalarValue;

pub fn plan_err(function: &str, msg: String) -> DataFusionError {
    DataFusionError::Plan(format!("{function}: {msg}"))
}

/// The value of a literal argument; `what` names it, e.g. "argument 1 (window)".
pub fn literal(function: &str, expr: &Arc<dyn PhysicalExpr>, what: &str) -> Result<ScalarValue> {
    match expr.downcast_ref::<Literal>() {
        Some(lit) if !lit.value().is_null() => Ok(lit.value().clone()),
        Some(_) => Err(plan_err(function, format!("{what} must not be NULL"))),
        None => Err(plan_err(
            function,
            format!("{what} must be a literal, not {expr}"),
        )),
    }
}

/// The text of a string literal argument.
pub fn string_literal(function: &str, expr: &Arc<dyn PhysicalExpr>, what: &str) -> Result<String> {
    match literal(function, expr, what)? {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Ok(s),
        other => Err(plan_err(
            function,
            format!("{what} must be a string literal, got {}", other.data_type()),
        )),
    }
}

/// Whether `t` is a plain string type.
pub fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// The type a string-like argument is read as: plain strings as they are,
/// dictionary-encoded strings as their values, NULL as Utf8; None for other types.
pub fn string_column_type(t: &DataType) -> Option<DataType> {
    match t {
        t if is_string(t) => Some(t.clone()),
        DataType::Dictionary(_, v) if is_string(v) => Some(v.as_ref().clone()),
        DataType::Null => Some(DataType::Utf8),
        _ => None,
    }
}

/// Condition arguments from index `first` on must be booleans (NULL literals become
/// booleans); returns the coerced types.
pub fn coerce_conditions(
    function: &str,
    types: &[DataType],
    first: usize,
) -> Result<Vec<DataType>> {
    let mut out = types.to_vec();
    for (i, t) in types.iter().enumerate().skip(first) {
        match t {
            DataType::Boolean => {}
            DataType::Null => out[i] = DataType::Boolean,
            other => {
                return Err(plan_err(
                    function,
                    format!(
                        "argument {} (cond{}) must be a boolean, got {other}",
                        i + 1,
                        i + 1 - first
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// The `key=value` pairs of an options string (separated by `;`), trimmed; `argument`
/// names the argument in errors, e.g. "argument 2".
pub fn key_values<'a>(
    function: &str,
    text: &'a str,
    argument: &str,
) -> Result<Vec<(&'a str, &'a str)>> {
    text.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            part.split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| {
                    plan_err(
                        function,
                        format!("option '{part}' in {argument} is not key=value"),
                    )
                })
        })
        .collect()
}

/// `unit=` option value: day, week or month.
pub fn unit_option(function: &str, value: &str, argument: &str) -> Result<crate::periods::Unit> {
    crate::periods::Unit::parse(value).ok_or_else(|| {
        plan_err(
            function,
            format!("option unit={value} in {argument}: expected day, week or month"),
        )
    })
}

/// `tz=` option value: an IANA zone or a fixed offset.
pub fn calendar_option(
    function: &str,
    value: &str,
    argument: &str,
) -> Result<crate::periods::Calendar> {
    crate::periods::Calendar::parse(value).ok_or_else(|| {
        plan_err(
            function,
            format!(
                "option tz={value} in {argument}: expected an IANA time zone like Asia/Shanghai, or an offset like +08:00"
            ),
        )
    })
}

/// State fields that are lists, one per (name, item type), named after the aggregate.
pub fn list_state_fields(
    aggregate: &str,
    lists: &[(&str, datafusion::arrow::datatypes::DataType)],
) -> Vec<datafusion::arrow::datatypes::FieldRef> {
    use datafusion::arrow::datatypes::{DataType, Field};
    lists
        .iter()
        .map(|(name, item)| {
            Arc::new(Field::new(
                format!("{aggregate}[{name}]"),
                DataType::List(Arc::new(Field::new_list_field(item.clone(), true))),
                true,
            ))
        })
        .collect()
}

/// Nanoseconds per unit of `ts`, or None for an integer `ts`.
fn ts_unit_nanos(ts: &DataType) -> Option<i64> {
    match ts {
        DataType::Timestamp(TimeUnit::Second, _) => Some(1_000_000_000),
        DataType::Timestamp(TimeUnit::Millisecond, _) => Some(1_000_000),
        DataType::Timestamp(TimeUnit::Microsecond, _) => Some(1_000),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => Some(1),
        _ => None,
    }
}

/// A duration argument (an INTERVAL without months, or an integer: seconds for a
/// timestamp `ts`, `ts`'s own unit for an integer `ts`) in `ts`'s units.
pub fn duration_in_ts_units(
    function: &str,
    value: &ScalarValue,
    ts: &DataType,
    argument: &str,
) -> Result<i64> {
    let plan_err = |m: String| plan_err(function, m);
    let unit = ts_unit_nanos(ts);
    let negative = || plan_err(format!("{argument} must not be negative"));
    let nanos = match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) => {
            if v.months != 0 {
                return Err(plan_err(format!(
                    "{argument} cannot be in months or years, which vary in length; use days"
                )));
            }
            Some(v.days as i64 * 86_400_000_000_000 + v.nanoseconds)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Some(v.days as i64 * 86_400_000_000_000 + v.milliseconds as i64 * 1_000_000)
        }
        ScalarValue::IntervalYearMonth(Some(_)) => {
            return Err(plan_err(format!(
                "{argument} cannot be in months or years, which vary in length; use days"
            )))
        }
        v if v.data_type().is_integer() => {
            let n = match v.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(Some(n)) => n,
                _ => return Err(plan_err(format!("{argument} is out of range"))),
            };
            if n < 0 {
                return Err(negative());
            }
            // Seconds for a timestamp, the integer's own unit otherwise.
            return Ok(match unit {
                Some(u) => n.saturating_mul(1_000_000_000 / u),
                None => n,
            });
        }
        other => {
            return Err(plan_err(format!(
                "{argument} must be an INTERVAL or an integer literal, got {}",
                other.data_type()
            )))
        }
    };
    let nanos = nanos.expect("an interval");
    if nanos < 0 {
        return Err(negative());
    }
    match unit {
        Some(u) => Ok(nanos / u),
        None => Err(plan_err(format!(
            "{argument} is an INTERVAL but ts is an integer: give it as an integer in ts's units"
        ))),
    }
}

/// The section of the function docs (`information_schema.routines`, DataFusion's doc
/// generator) a tidepool function is listed under.
pub fn doc_section(label: &'static str) -> datafusion::logical_expr::DocSection {
    datafusion::logical_expr::DocSection {
        include: true,
        label,
        description: None,
    }
}
