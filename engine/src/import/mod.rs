//! `tidepool import`: CSV, NDJSON and Parquet files into the events table.
//!
//! A file is read whole, mapped and converted; if any value is bad the import fails with
//! the first bad value's line and column and commits nothing, unless rejects are asked
//! for, in which case the bad rows go to the rejects file and the rest is committed. The
//! batch id is a hash of the file's bytes and the options that shape its rows, so running
//! the same import again commits nothing.

pub mod convert;
pub mod read;

use arrow::array::{Array, AsArray};
use futures::StreamExt;
use object_store::ObjectStoreExt as _;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};
use crate::mapping::ColumnMapping;
use crate::storage::{Location, S3Options};
use crate::table::{BatchRecord, CommitOutcome, EventTable, WriteOptions};
pub use convert::TimeUnitSpec;
pub use read::{CsvOptions, InputFormat};

#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportOptions {
    pub mapping: ColumnMapping,
    /// None: from the file name's extension.
    pub format: Option<InputFormat>,
    pub csv: CsvOptions,
    pub time_unit: TimeUnitSpec,
    /// Leave out source columns that no events column takes, instead of keeping them.
    pub drop_unmapped: bool,
    /// Write bad rows here (NDJSON) and commit the rest.
    pub rejects: Option<String>,
    /// Use this batch id instead of the content hash.
    pub batch_id: Option<String>,
}

/// Reports progress of long imports; the CLI draws it as a progress bar.
pub trait Progress: Send + Sync {
    fn stage(&self, name: &str, total: Option<u64>);
    fn advance(&self, n: u64);
    fn finish(&self);
}

pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportReport {
    pub source: String,
    pub batch_id: String,
    pub rows_read: u64,
    pub rows_imported: u64,
    pub rows_rejected: u64,
    /// The table version that holds the rows; None when nothing was committed.
    pub version: Option<u64>,
    pub already_imported: bool,
}

pub async fn import_file(
    table: &EventTable,
    source: &str,
    s3: &S3Options,
    opts: &ImportOptions,
    progress: &dyn Progress,
) -> Result<ImportReport> {
    let format = match opts.format {
        Some(f) => f,
        None => InputFormat::from_name(source).ok_or_else(|| {
            EngineError::invalid(format!(
                "{source}: cannot tell the format from the name; pass --format csv|ndjson|parquet"
            ))
        })?,
    };
    let bytes = download(source, s3, progress).await?;
    let batch_id = match &opts.batch_id {
        Some(id) => id.clone(),
        None => content_hash(&bytes, opts),
    };
    let mut report = ImportReport {
        source: source.to_string(),
        batch_id: batch_id.clone(),
        rows_read: 0,
        rows_imported: 0,
        rows_rejected: 0,
        version: None,
        already_imported: false,
    };
    let manifest = table.manifest().await?;
    if manifest.has_batch(&batch_id) {
        report.already_imported = true;
        progress.finish();
        return Ok(report);
    }

    progress.stage("converting", None);
    let (raw, converted) = tokio::task::spawn_blocking({
        let source = source.to_string();
        let opts = opts.clone();
        let extras = manifest.extra_columns.clone();
        move || -> Result<_> {
            let raw = read::read_input(&source, bytes, format, &opts.csv)?;
            let schema = raw.batch.schema();
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            opts.mapping.validate(&names, &source)?;
            let converted = convert::convert(
                &raw.batch,
                &opts.mapping,
                &extras,
                opts.time_unit,
                opts.drop_unmapped,
            )?;
            Ok((raw, converted))
        }
    })
    .await
    .map_err(|e| EngineError::invalid(format!("import task failed: {e}")))??;

    report.rows_read = raw.batch.num_rows() as u64;
    let mut batch = converted.batch;
    if !converted.errors.is_empty() {
        let bad_rows = count_rows(&converted.errors);
        let Some(rejects) = &opts.rejects else {
            let first = &converted.errors[0];
            let value = first
                .value
                .as_ref()
                .map(|v| format!(" (value '{v}')"))
                .unwrap_or_default();
            let more = match bad_rows - 1 {
                0 => String::new(),
                1 => "; 1 more bad row".to_string(),
                n => format!("; {n} more bad rows"),
            };
            return Err(EngineError::BadInput {
                location: format!(
                    "{source}: {}, column '{}'",
                    raw.origin.describe(first.row),
                    first.column
                ),
                message: format!(
                    "{}{value}{more}; nothing was imported (--rejects FILE imports the good \
                     rows and writes the bad ones there)",
                    first.message
                ),
            });
        };
        write_rejects(rejects, s3, source, &raw, &converted.errors).await?;
        let keep = convert::good_rows(batch.num_rows(), &converted.errors);
        batch = arrow::compute::filter_record_batch(&batch, &keep)?;
        report.rows_rejected = bad_rows as u64;
    }
    let batch = convert::strict(batch, &converted.extra_columns)?;
    report.rows_imported = batch.num_rows() as u64;

    progress.stage("writing", Some(report.rows_imported));
    let record = BatchRecord {
        id: batch_id,
        source: source.to_string(),
        rows: report.rows_imported,
        committed_at: chrono::Utc::now().to_rfc3339(),
    };
    let outcome = table
        .append(
            batch,
            record,
            &converted.extra_columns,
            &WriteOptions::default(),
        )
        .await?;
    progress.advance(report.rows_imported);
    progress.finish();
    match outcome {
        CommitOutcome::Committed { version } => report.version = Some(version),
        CommitOutcome::AlreadyCommitted => {
            report.already_imported = true;
            report.rows_imported = 0;
        }
    }
    Ok(report)
}

/// Rows that arrive as Arrow batches (Flight SQL bulk ingest, `INSERT INTO events`) into
/// the events table, through the same conversion and atomic commit as a file import.
/// Columns are matched by name; source columns no events column takes are kept as extra
/// columns. Any bad value fails the whole call and commits nothing. Each call is its own
/// batch (a fresh id), so sending the same rows twice stores them twice, as INSERT does.
pub async fn import_batches(
    table: &EventTable,
    batches: &[arrow::array::RecordBatch],
    source: &str,
) -> Result<ImportReport> {
    let batch_id = uuid::Uuid::new_v4().to_string();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut report = ImportReport {
        source: source.to_string(),
        batch_id: batch_id.clone(),
        rows_read: rows as u64,
        rows_imported: 0,
        rows_rejected: 0,
        version: None,
        already_imported: false,
    };
    if rows == 0 {
        return Ok(report);
    }
    let schema = batches[0].schema();
    let raw = fill_anonymous_ids(arrow::compute::concat_batches(&schema, batches)?)?;
    let manifest = table.manifest().await?;
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mapping = ColumnMapping::default();
    mapping.validate(&names, source)?;
    let converted = convert::convert(
        &raw,
        &mapping,
        &manifest.extra_columns,
        TimeUnitSpec::default(),
        false,
    )?;
    if let Some(first) = converted.errors.first() {
        let value = first
            .value
            .as_ref()
            .map(|v| format!(" (value '{v}')"))
            .unwrap_or_default();
        let row = if first.row == usize::MAX {
            String::new()
        } else {
            format!("row {}, ", first.row + 1)
        };
        return Err(EngineError::BadInput {
            location: format!("{source}: {row}column '{}'", first.column),
            message: format!(
                "{}{value}; {} bad value(s) in all, nothing was written",
                first.message,
                converted.errors.len()
            ),
        });
    }
    let batch = convert::strict(converted.batch, &converted.extra_columns)?;
    let record = BatchRecord {
        id: batch_id,
        source: source.to_string(),
        rows: rows as u64,
        committed_at: chrono::Utc::now().to_rfc3339(),
    };
    let outcome = table
        .append(
            batch,
            record,
            &converted.extra_columns,
            &WriteOptions::default(),
        )
        .await?;
    if let CommitOutcome::Committed { version } = outcome {
        report.version = Some(version);
        report.rows_imported = rows as u64;
    }
    Ok(report)
}

/// A row without an anonymous_id (INSERT leaves it NULL) uses its user id, as a file
/// without the column does.
fn fill_anonymous_ids(batch: arrow::array::RecordBatch) -> Result<arrow::array::RecordBatch> {
    use crate::schema::{ANONYMOUS_ID, USER_ID};
    let schema = batch.schema();
    let (Ok(anon_at), Ok(user_at)) = (schema.index_of(ANONYMOUS_ID), schema.index_of(USER_ID))
    else {
        return Ok(batch);
    };
    let anon = batch.column(anon_at);
    if anon.null_count() == 0 {
        return Ok(batch);
    }
    let user = arrow::compute::cast(batch.column(user_at), anon.data_type())?;
    let present = arrow::compute::is_not_null(anon)?;
    let filled = arrow::compute::kernels::zip::zip(&present, anon, &user)?;
    let mut columns = batch.columns().to_vec();
    columns[anon_at] = filled;
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let f = f.as_ref().clone();
            if i == anon_at {
                f.with_nullable(true)
            } else {
                f
            }
        })
        .collect();
    Ok(arrow::array::RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
        columns,
    )?)
}

async fn download(source: &str, s3: &S3Options, progress: &dyn Progress) -> Result<bytes::Bytes> {
    let loc = Location::parse(source, s3)?;
    let result = loc.store.get(&loc.prefix).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => EngineError::BadInput {
            location: source.to_string(),
            message: "no such file".into(),
        },
        other => other.into(),
    })?;
    progress.stage("reading", Some(result.meta.size));
    let mut buf = Vec::with_capacity(result.meta.size as usize);
    let mut stream = result.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        progress.advance(chunk.len() as u64);
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.into())
}

fn content_hash(bytes: &[u8], opts: &ImportOptions) -> String {
    // The rejects location and an explicit batch id do not change which rows land.
    let shaping = serde_json::json!({
        "mapping": opts.mapping,
        "format": opts.format,
        "csv": opts.csv,
        "time_unit": opts.time_unit,
        "drop_unmapped": opts.drop_unmapped,
    });
    let mut h = Sha256::new();
    h.update(bytes);
    h.update(shaping.to_string().as_bytes());
    hex::encode(h.finalize())
}

fn count_rows(errors: &[convert::RowError]) -> usize {
    let mut rows: Vec<usize> = errors.iter().map(|e| e.row).collect();
    rows.dedup();
    rows.len()
}

/// One NDJSON line per bad row: where it was, what was wrong, and its values.
async fn write_rejects(
    target: &str,
    s3: &S3Options,
    source: &str,
    raw: &read::RawInput,
    errors: &[convert::RowError],
) -> Result<()> {
    let as_text: Vec<_> = raw
        .batch
        .columns()
        .iter()
        .map(|c| arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8))
        .collect::<std::result::Result<_, _>>()?;
    let schema = raw.batch.schema();
    let mut out = String::new();
    let mut i = 0;
    while i < errors.len() {
        let row = errors[i].row;
        let mut problems = vec![];
        while i < errors.len() && errors[i].row == row {
            let e = &errors[i];
            problems.push(
                serde_json::json!({"column": e.column, "value": e.value, "error": e.message}),
            );
            i += 1;
        }
        let record: serde_json::Map<String, serde_json::Value> = schema
            .fields()
            .iter()
            .zip(&as_text)
            .map(|(f, col)| {
                let text = col.as_string::<i32>();
                let v = if text.is_null(row) {
                    serde_json::Value::Null
                } else {
                    text.value(row).into()
                };
                (f.name().clone(), v)
            })
            .collect();
        let line = serde_json::json!({
            "source": source,
            "at": raw.origin.describe(row),
            "errors": problems,
            "record": record,
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    let loc = Location::parse(target, s3)?;
    loc.store.put(&loc.prefix, out.into_bytes().into()).await?;
    Ok(())
}
