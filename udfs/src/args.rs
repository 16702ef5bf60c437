//! Argument checks the funnel functions share, with errors that name the function and
//! the argument.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
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
