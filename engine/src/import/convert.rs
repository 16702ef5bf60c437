//! Turning a raw input batch into rows of the events table: the column mapping, type
//! conversion and timestamp parsing, with every bad value recorded by row and column.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Float64Builder, Int64Builder,
    RecordBatch, StringArray, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::mapping::{ColumnMapping, ColumnSource};
use crate::schema::{core_columns, events_schema, ColumnType, ExtraColumn, PROPERTIES, UTC};

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z: the times the table stores.
const MIN_US: i64 = -62_135_596_800_000_000;
const MAX_US: i64 = 253_402_300_799_999_999;

/// How integer timestamps are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnitSpec {
    /// By magnitude: below 10^11 seconds, below 10^14 milliseconds, below 10^17
    /// microseconds, else nanoseconds.
    #[default]
    Auto,
    Seconds,
    Millis,
    Micros,
    Nanos,
}

impl TimeUnitSpec {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => TimeUnitSpec::Auto,
            "s" | "seconds" => TimeUnitSpec::Seconds,
            "ms" | "millis" => TimeUnitSpec::Millis,
            "us" | "micros" => TimeUnitSpec::Micros,
            "ns" | "nanos" => TimeUnitSpec::Nanos,
            other => {
                return Err(EngineError::invalid(format!(
                    "unknown time unit '{other}' (expected auto, s, ms, us or ns)"
                )))
            }
        })
    }

    /// Microseconds for an integer timestamp, if it lies in years 1 to 9999.
    pub fn to_micros(self, v: i64) -> Option<i64> {
        self.scale(v).filter(|us| (MIN_US..=MAX_US).contains(us))
    }

    fn scale(self, v: i64) -> Option<i64> {
        let unit = match self {
            TimeUnitSpec::Auto => {
                let a = v.unsigned_abs();
                if a < 100_000_000_000 {
                    TimeUnitSpec::Seconds
                } else if a < 100_000_000_000_000 {
                    TimeUnitSpec::Millis
                } else if a < 100_000_000_000_000_000 {
                    TimeUnitSpec::Micros
                } else {
                    TimeUnitSpec::Nanos
                }
            }
            other => other,
        };
        match unit {
            TimeUnitSpec::Seconds => v.checked_mul(1_000_000),
            TimeUnitSpec::Millis => v.checked_mul(1_000),
            TimeUnitSpec::Micros => Some(v),
            TimeUnitSpec::Nanos => Some(v.div_euclid(1_000)),
            TimeUnitSpec::Auto => unreachable!(),
        }
    }
}

/// One value that could not be converted.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    pub row: usize,
    /// The source column (or the events column for a missing required value).
    pub column: String,
    pub value: Option<String>,
    pub message: String,
}

/// The converted rows (all of them, bad ones included) and the errors found.
pub struct Converted {
    pub batch: RecordBatch,
    pub extra_columns: Vec<ExtraColumn>,
    pub errors: Vec<RowError>,
}

/// Convert `raw` into the events schema. `table_extras` are the table's extra columns,
/// whose types incoming columns of the same name must take.
pub fn convert(
    raw: &RecordBatch,
    mapping: &ColumnMapping,
    table_extras: &[ExtraColumn],
    time_unit: TimeUnitSpec,
    drop_unmapped: bool,
) -> Result<Converted> {
    let schema = raw.schema();
    let source_names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let rows = raw.num_rows();
    let mut errors = vec![];
    let mut columns: Vec<ArrayRef> = vec![];

    for (target, ty, nullable) in core_columns() {
        let array = match mapping.source_of(target, &source_names) {
            ColumnSource::Column(src) => {
                let input = raw.column_by_name(src).expect("validated by the mapping");
                let mut errs = vec![];
                let out = convert_column(input, ty, time_unit, &mut |row, value, message| {
                    errs.push(RowError {
                        row,
                        column: src.to_string(),
                        value,
                        message,
                    })
                })?;
                let out = if target == PROPERTIES {
                    check_json(out, src, &mut errs)
                } else {
                    out
                };
                if !nullable {
                    for row in (0..rows).filter(|r| out.is_null(*r)) {
                        if !errs.iter().any(|e| e.row == row) {
                            errs.push(RowError {
                                row,
                                column: src.to_string(),
                                value: None,
                                message: format!("missing value for required column '{target}'"),
                            });
                        }
                    }
                }
                errors.extend(errs);
                out
            }
            ColumnSource::Constant(value) => {
                let one = Arc::new(StringArray::from(vec![value])) as ArrayRef;
                let converted = convert_column(&one, ty, time_unit, &mut |_, _, m| {
                    errors.push(RowError {
                        row: usize::MAX,
                        column: target.to_string(),
                        value: Some(value.to_string()),
                        message: m,
                    })
                })?;
                if errors.iter().any(|e| e.row == usize::MAX) {
                    return Err(EngineError::invalid(format!(
                        "constant {target}={value} is not a valid {}",
                        ty.name()
                    )));
                }
                repeat(&converted, rows)?
            }
            ColumnSource::Missing => arrow::array::new_null_array(&ty.data_type(), rows),
        };
        columns.push(array);
    }

    let mut extras = vec![];
    if !drop_unmapped {
        for src in mapping.unmapped(&source_names) {
            let input = raw.column_by_name(src).expect("a source column");
            let ty = match table_extras.iter().find(|c| c.name == src) {
                Some(existing) => existing.column_type,
                None => infer_type(input).ok_or_else(|| {
                    EngineError::invalid(format!(
                        "column '{src}' has type {} which the events table cannot store; \
                         leave it out with --drop-unmapped",
                        input.data_type()
                    ))
                })?,
            };
            let out = convert_column(input, ty, time_unit, &mut |row, value, message| {
                errors.push(RowError {
                    row,
                    column: src.to_string(),
                    value,
                    message,
                })
            })?;
            extras.push(ExtraColumn {
                name: src.to_string(),
                column_type: ty,
            });
            columns.push(out);
        }
    }
    // The table's extra columns first, then new ones; columns this input lacks are null.
    let ordered_extras = crate::table::merge_extra_columns(table_extras, &extras)?;
    let core_len = core_columns().len();
    let mut final_columns = columns[..core_len].to_vec();
    for col in &ordered_extras {
        match extras.iter().position(|c| c.name == col.name) {
            Some(i) => final_columns.push(Arc::clone(&columns[core_len + i])),
            None => final_columns.push(arrow::array::new_null_array(
                &col.column_type.data_type(),
                rows,
            )),
        }
    }
    let schema = events_schema(&ordered_extras);
    // Required columns may hold nulls in rows that are about to be rejected: build the
    // batch with a nullable schema and let the caller filter before writing.
    let relaxed = Arc::new(arrow::datatypes::Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(relaxed, final_columns)?;
    errors.sort_by_key(|e| e.row);
    Ok(Converted {
        batch,
        extra_columns: ordered_extras,
        errors,
    })
}

/// Restore the strict events schema after bad rows are gone.
pub fn strict(batch: RecordBatch, extras: &[ExtraColumn]) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        events_schema(extras),
        batch.columns().to_vec(),
    )?)
}

fn repeat(one: &ArrayRef, rows: usize) -> Result<ArrayRef> {
    let indices = arrow::array::UInt32Array::from(vec![0u32; rows]);
    Ok(arrow::compute::take(one.as_ref(), &indices, None)?)
}

type OnError<'a> = dyn FnMut(usize, Option<String>, String) + 'a;

fn text_values(input: &ArrayRef) -> Result<Option<StringArray>> {
    Ok(match input.data_type() {
        DataType::Utf8 => Some(input.as_string::<i32>().clone()),
        DataType::LargeUtf8 | DataType::Utf8View => {
            Some(cast(input, &DataType::Utf8)?.as_string::<i32>().clone())
        }
        _ => None,
    })
}

/// Convert one column to `ty`, calling `on_error` for each value that does not fit.
fn convert_column(
    input: &ArrayRef,
    ty: ColumnType,
    unit: TimeUnitSpec,
    on_error: &mut OnError<'_>,
) -> Result<ArrayRef> {
    if let Some(text) = text_values(input)? {
        return Ok(parse_text(&text, ty, unit, on_error));
    }
    let n = input.len();
    let out: ArrayRef = match ty {
        ColumnType::Utf8 if can_cast_types(input.data_type(), &DataType::Utf8) => {
            cast(input, &DataType::Utf8)?
        }
        ColumnType::Timestamp => match input.data_type() {
            DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
                // A timestamp without a zone is taken as UTC.
                let naive = cast(input, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
                cast(&naive, &ColumnType::Timestamp.data_type())?
            }
            t if t.is_integer() => {
                let ints = cast(input, &DataType::Int64)?;
                let ints = ints.as_primitive::<Int64Type>();
                let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone(UTC);
                for (row, v) in ints.iter().enumerate() {
                    match v.map(|v| (v, unit.to_micros(v))) {
                        None => b.append_null(),
                        Some((_, Some(us))) => b.append_value(us),
                        Some((v, None)) => {
                            on_error(
                                row,
                                Some(v.to_string()),
                                "timestamp out of range (years 1 to 9999)".into(),
                            );
                            b.append_null()
                        }
                    }
                }
                Arc::new(b.finish())
            }
            t if t.is_floating() => {
                let floats = cast(input, &DataType::Float64)?;
                let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone(UTC);
                for v in floats.as_primitive::<Float64Type>().iter() {
                    match v {
                        Some(v) => b.append_value((v * 1e6).round() as i64),
                        None => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            other => return Err(unsupported(other, ty)),
        },
        ColumnType::Int64 if input.data_type().is_integer() => {
            let out = cast(input, &DataType::Int64)?;
            // Values too large for int64 (from uint64) come out null: report them.
            for row in (0..n).filter(|r| out.is_null(*r) && !input.is_null(*r)) {
                on_error(row, None, "value does not fit in int64".into());
            }
            out
        }
        ColumnType::Float64 if input.data_type().is_numeric() => cast(input, &DataType::Float64)?,
        ColumnType::Boolean if *input.data_type() == DataType::Boolean => Arc::clone(input),
        _ => return Err(unsupported(input.data_type(), ty)),
    };
    Ok(out)
}

fn unsupported(from: &DataType, to: ColumnType) -> EngineError {
    EngineError::invalid(format!("cannot convert a {from} column to {}", to.name()))
}

fn parse_text(
    text: &StringArray,
    ty: ColumnType,
    unit: TimeUnitSpec,
    on_error: &mut OnError<'_>,
) -> ArrayRef {
    let n = text.len();
    // Empty text is a missing value in every column.
    let values = text
        .iter()
        .map(|v| v.map(str::trim).filter(|v| !v.is_empty()));
    macro_rules! parse_with {
        ($builder:expr, $parse:expr, $what:expr) => {{
            let mut b = $builder;
            for (row, v) in values.enumerate() {
                match v {
                    None => b.append_null(),
                    Some(s) => match $parse(s) {
                        Some(x) => b.append_value(x),
                        None => {
                            on_error(row, Some(s.to_string()), $what.to_string());
                            b.append_null()
                        }
                    },
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    match ty {
        ColumnType::Utf8 => {
            let mut b = StringBuilder::with_capacity(n, text.value_data().len());
            for v in text.iter() {
                match v {
                    Some(s) if !s.is_empty() => b.append_value(s),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::Int64 => parse_with!(
            Int64Builder::with_capacity(n),
            |s: &str| s.parse::<i64>().ok(),
            "not an integer"
        ),
        ColumnType::Float64 => parse_with!(
            Float64Builder::with_capacity(n),
            |s: &str| s.parse::<f64>().ok(),
            "not a number"
        ),
        ColumnType::Boolean => parse_with!(
            BooleanBuilder::with_capacity(n),
            parse_bool,
            "not a boolean (true/false)"
        ),
        ColumnType::Timestamp => parse_with!(
            TimestampMicrosecondBuilder::with_capacity(n).with_timezone(UTC),
            |s: &str| parse_timestamp(s, unit),
            "not a timestamp (expected RFC 3339, 'YYYY-MM-DD HH:MM:SS[.ffffff]' in UTC, \
             'YYYY-MM-DD', or unix seconds/milliseconds/microseconds)"
        ),
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "yes" => Some(true),
        "false" | "f" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Parse a timestamp written as RFC 3339, a UTC date-time, a date or a unix number.
pub fn parse_timestamp(s: &str, unit: TimeUnitSpec) -> Option<i64> {
    if let Ok(v) = s.parse::<i64>() {
        return unit.to_micros(v);
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let seconds: f64 = s.parse().ok()?;
        let us = (seconds * 1e6).round();
        return match unit {
            TimeUnitSpec::Auto | TimeUnitSpec::Seconds
                if us >= MIN_US as f64 && us <= MAX_US as f64 =>
            {
                Some(us as i64)
            }
            _ => None,
        };
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    if s.len() > 10 && s.as_bytes()[10] == b' ' {
        let with_t = format!("{}T{}", &s[..10], &s[11..]);
        if let Ok(t) = DateTime::parse_from_rfc3339(&with_t) {
            return Some(t.timestamp_micros());
        }
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().map(|d| {
        d.and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_micros()
    })
}

/// `properties` holds JSON text: values that do not parse are errors.
fn check_json(array: ArrayRef, column: &str, errors: &mut Vec<RowError>) -> ArrayRef {
    let text = array.as_string::<i32>();
    for (row, v) in text.iter().enumerate() {
        if let Some(v) = v {
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(v) {
                errors.push(RowError {
                    row,
                    column: column.to_string(),
                    value: Some(v.to_string()),
                    message: format!("not valid JSON for 'properties': {e}"),
                });
            }
        }
    }
    array
}

/// The stored type for a new column: typed sources keep their type; text is read as
/// integers, numbers or booleans when every value is one (an integer with a leading
/// zero, like an id "007", stays text).
pub fn infer_type(input: &ArrayRef) -> Option<ColumnType> {
    let dt = input.data_type();
    if dt.is_integer() {
        return Some(ColumnType::Int64);
    }
    if dt.is_floating() || matches!(dt, DataType::Decimal128(_, _) | DataType::Decimal256(_, _)) {
        return Some(ColumnType::Float64);
    }
    match dt {
        DataType::Boolean => return Some(ColumnType::Boolean),
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
            return Some(ColumnType::Timestamp)
        }
        _ => {}
    }
    let Ok(Some(text)) = text_values(input) else {
        return can_cast_types(dt, &DataType::Utf8).then_some(ColumnType::Utf8);
    };
    let values: Vec<&str> = text
        .iter()
        .flatten()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return Some(ColumnType::Utf8);
    }
    let leading_zero = |v: &&str| {
        let digits = v.trim_start_matches('-');
        digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0.")
    };
    if values.iter().any(leading_zero) {
        return Some(ColumnType::Utf8);
    }
    if values.iter().all(|v| v.parse::<i64>().is_ok()) {
        Some(ColumnType::Int64)
    } else if values.iter().all(|v| v.parse::<f64>().is_ok()) {
        Some(ColumnType::Float64)
    } else if values
        .iter()
        .all(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "false"))
    {
        Some(ColumnType::Boolean)
    } else {
        Some(ColumnType::Utf8)
    }
}

/// Rows without errors.
pub fn good_rows(rows: usize, errors: &[RowError]) -> BooleanArray {
    let mut keep = vec![true; rows];
    for e in errors {
        keep[e.row] = false;
    }
    BooleanArray::from(keep)
}

#[cfg(test)]
mod tests;
