//! Reading an input file into one Arrow batch, remembering where each row came from so
//! that an error can name the line.

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{ArrayBuilder, ArrayRef, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Csv,
    Ndjson,
    Parquet,
}

impl InputFormat {
    /// The format a file name suggests, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        let ext = lower.rsplit('.').next()?;
        match ext {
            "csv" | "tsv" | "txt" => Some(InputFormat::Csv),
            "json" | "jsonl" | "ndjson" => Some(InputFormat::Ndjson),
            "parquet" | "pq" => Some(InputFormat::Parquet),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(InputFormat::Csv),
            "ndjson" | "json" | "jsonl" => Ok(InputFormat::Ndjson),
            "parquet" => Ok(InputFormat::Parquet),
            other => Err(EngineError::invalid(format!(
                "unknown input format '{other}' (expected csv, ndjson or parquet)"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CsvOptions {
    /// Whether the first line names the columns.
    pub header: bool,
    /// Column names for a file without a header (or to rename the header's).
    pub columns: Option<Vec<String>>,
    pub delimiter: u8,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            header: true,
            columns: None,
            delimiter: b',',
        }
    }
}

/// An input file as strings (CSV, NDJSON) or typed columns (Parquet).
pub struct RawInput {
    pub batch: RecordBatch,
    pub origin: RowOrigin,
}

/// How a row index maps back to the input file.
pub enum RowOrigin {
    /// Row r is on line `first_line + r` (CSV; a quoted value spanning lines shifts it).
    Lines { first_line: u64 },
    /// Row r is on line `lines[r]` (NDJSON, where blank lines are skipped).
    ExplicitLines(Vec<u64>),
    /// Row r is row r+1 of the file (Parquet).
    Rows,
}

impl RowOrigin {
    pub fn describe(&self, row: usize) -> String {
        match self {
            RowOrigin::Lines { first_line } => format!("line {}", first_line + row as u64),
            RowOrigin::ExplicitLines(lines) => format!("line {}", lines[row]),
            RowOrigin::Rows => format!("row {}", row + 1),
        }
    }
}

pub fn read_input(
    name: &str,
    bytes: Bytes,
    format: InputFormat,
    csv: &CsvOptions,
) -> Result<RawInput> {
    match format {
        InputFormat::Csv => read_csv(name, bytes, csv),
        InputFormat::Ndjson => read_ndjson(name, &bytes),
        InputFormat::Parquet => read_parquet(name, bytes),
    }
}

fn bad(name: &str, message: impl Into<String>) -> EngineError {
    EngineError::BadInput {
        location: name.to_string(),
        message: message.into(),
    }
}

fn read_csv(name: &str, bytes: Bytes, opts: &CsvOptions) -> Result<RawInput> {
    // Every column is read as text; conversion to types happens per row, later, so that
    // one bad value is reported with its line and column instead of failing the batch.
    let mut header_names: Vec<String> = vec![];
    if opts.header {
        header_names = csv_first_record(&bytes, opts.delimiter).unwrap_or_default();
    }
    let names: Vec<String> = match (&opts.columns, opts.header) {
        (Some(cols), true) if cols.len() != header_names.len() => {
            return Err(bad(
                name,
                format!(
                    "--columns names {} columns but the header has {}",
                    cols.len(),
                    header_names.len()
                ),
            ))
        }
        (Some(cols), _) => cols.clone(),
        (None, true) => header_names,
        (None, false) => {
            let n = csv_first_record(&bytes, opts.delimiter)
                .map(|r| r.len())
                .unwrap_or(0);
            (1..=n).map(|i| format!("column_{i}")).collect()
        }
    };
    if names.is_empty() {
        return Err(bad(name, "the file is empty (no header and no rows)"));
    }
    let mut seen = std::collections::HashSet::new();
    for n in &names {
        if !seen.insert(n) {
            return Err(bad(
                name,
                format!("column '{n}' appears twice in the header"),
            ));
        }
    }
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let reader = arrow::csv::ReaderBuilder::new(Arc::clone(&schema))
        .with_header(opts.header)
        .with_delimiter(opts.delimiter)
        .with_batch_size(64 * 1024)
        .build(Cursor::new(bytes))
        .map_err(|e| bad(name, e.to_string()))?;
    let mut batches = vec![];
    for batch in reader {
        batches.push(batch.map_err(|e| bad(name, csv_error_message(e)))?);
    }
    let batch = arrow::compute::concat_batches(&schema, &batches)?;
    Ok(RawInput {
        batch,
        origin: RowOrigin::Lines {
            first_line: if opts.header { 2 } else { 1 },
        },
    })
}

fn csv_error_message(e: arrow::error::ArrowError) -> String {
    match e {
        arrow::error::ArrowError::CsvError(m) => m,
        other => other.to_string(),
    }
}

/// The fields of the first record, parsed with the same CSV rules as the reader.
fn csv_first_record(bytes: &[u8], delimiter: u8) -> Option<Vec<String>> {
    let format = arrow::csv::reader::Format::default()
        .with_header(true)
        .with_delimiter(delimiter);
    let (schema, _) = format.infer_schema(Cursor::new(bytes), Some(0)).ok()?;
    Some(schema.fields().iter().map(|f| f.name().clone()).collect())
}

fn read_ndjson(name: &str, bytes: &[u8]) -> Result<RawInput> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        bad(
            name,
            format!(
                "not UTF-8 text (byte {}): NDJSON must be UTF-8",
                e.valid_up_to()
            ),
        )
    })?;
    let mut names: Vec<String> = vec![];
    let mut builders: Vec<StringBuilder> = vec![];
    let mut lines: Vec<u64> = vec![];
    for (i, line) in text.lines().enumerate() {
        let line_no = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            bad(
                &format!("{name}: line {line_no}"),
                format!("invalid JSON: {e}"),
            )
        })?;
        let serde_json::Value::Object(object) = value else {
            return Err(bad(
                &format!("{name}: line {line_no}"),
                "expected a JSON object per line",
            ));
        };
        let row = lines.len();
        for (key, v) in object {
            let idx = match names.iter().position(|n| *n == key) {
                Some(idx) => idx,
                None => {
                    let mut b = StringBuilder::new();
                    b.append_nulls(row);
                    names.push(key);
                    builders.push(b);
                    names.len() - 1
                }
            };
            let b = &mut builders[idx];
            if b.len() > row {
                continue; // a duplicate key: serde_json keeps the last, so do we
            }
            match v {
                serde_json::Value::Null => b.append_null(),
                serde_json::Value::String(s) => b.append_value(s),
                other => b.append_value(other.to_string()),
            }
        }
        lines.push(line_no);
        for b in builders.iter_mut() {
            if b.len() == row {
                b.append_null();
            }
        }
    }
    if names.is_empty() {
        return Err(bad(name, "the file has no JSON objects"));
    }
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let columns: Vec<ArrayRef> = builders
        .iter_mut()
        .map(|b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    Ok(RawInput {
        batch: RecordBatch::try_new(schema, columns)?,
        origin: RowOrigin::ExplicitLines(lines),
    })
}

fn read_parquet(name: &str, bytes: Bytes) -> Result<RawInput> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| bad(name, format!("not a readable Parquet file: {e}")))?;
    let schema = Arc::clone(builder.schema());
    let reader = builder.build().map_err(|e| bad(name, e.to_string()))?;
    let mut batches = vec![];
    for batch in reader {
        batches.push(batch.map_err(|e| bad(name, format!("corrupt Parquet data: {e}")))?);
    }
    Ok(RawInput {
        batch: arrow::compute::concat_batches(&schema, &batches)?,
        origin: RowOrigin::Rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};

    #[test]
    fn csv_reads_text_columns_with_line_numbers() {
        let data = Bytes::from("a,b\n1,x\n2,\"y,z\"\n");
        let raw = read_input("f.csv", data, InputFormat::Csv, &CsvOptions::default()).unwrap();
        assert_eq!(raw.batch.num_rows(), 2);
        assert_eq!(raw.batch.column(1).as_string::<i32>().value(1), "y,z");
        assert_eq!(raw.origin.describe(1), "line 3");
    }

    #[test]
    fn csv_without_header_gets_given_names() {
        let opts = CsvOptions {
            header: false,
            columns: Some(vec!["u".into(), "t".into()]),
            delimiter: b',',
        };
        let raw = read_input("f.csv", Bytes::from("1,2\n3,4\n"), InputFormat::Csv, &opts).unwrap();
        assert_eq!(raw.batch.schema().field(1).name(), "t");
        assert_eq!(raw.batch.num_rows(), 2);
        assert_eq!(raw.origin.describe(0), "line 1");
    }

    #[test]
    fn csv_with_a_short_row_names_the_line() {
        let data = Bytes::from("a,b\n1,2\n3\n");
        let err = read_input("f.csv", data, InputFormat::Csv, &CsvOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("f.csv: "), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn ndjson_keeps_nested_values_as_json_and_skips_blank_lines() {
        let data = Bytes::from("{\"a\":1,\"p\":{\"k\":[1,2]}}\n\n{\"b\":\"x\"}\n");
        let raw = read_input(
            "f.ndjson",
            data,
            InputFormat::Ndjson,
            &CsvOptions::default(),
        )
        .unwrap();
        let b = &raw.batch;
        assert_eq!(b.num_rows(), 2);
        let p = b.column_by_name("p").unwrap().as_string::<i32>();
        assert_eq!(p.value(0), "{\"k\":[1,2]}");
        assert!(p.is_null(1));
        let col_b = b.column_by_name("b").unwrap().as_string::<i32>();
        assert!(col_b.is_null(0));
        assert_eq!(col_b.value(1), "x");
        assert_eq!(raw.origin.describe(1), "line 3");
    }

    #[test]
    fn ndjson_syntax_errors_name_the_line() {
        let data = Bytes::from("{\"a\":1}\n{\"a\":\n");
        let err = read_input(
            "f.ndjson",
            data,
            InputFormat::Ndjson,
            &CsvOptions::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.starts_with("f.ndjson: line 2: invalid JSON"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_parquet_is_named() {
        let err = read_input(
            "x.parquet",
            Bytes::from("nope"),
            InputFormat::Parquet,
            &CsvOptions::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.starts_with("x.parquet: not a readable Parquet file"),
            "{err}"
        );
    }
}
