//! Writes a batch of events as Parquet data files: one folder per UTC date, each file
//! sorted by (person key, event_time), zstd, row groups with page statistics.

use object_store::ObjectStoreExt as _;
use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::kernels::zip::zip;
use arrow::compute::{is_not_null, lexsort_to_indices, take_record_batch, SortColumn};
use arrow::datatypes::TimestampMicrosecondType;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::manifest::DataFile;
use crate::error::{EngineError, Result};
use crate::schema::{ANONYMOUS_ID, EVENT_TIME, USER_ID};
use crate::storage::Location;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Knobs for the files a write produces.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub max_rows_per_file: usize,
    pub row_group_rows: usize,
    pub zstd_level: i32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            max_rows_per_file: 2_000_000,
            row_group_rows: 128 * 1024,
            zstd_level: 3,
        }
    }
}

/// The key rows of one person share: the known user id once there is one, else the
/// device id. Files are sorted by it so per-person functions read runs of one person.
pub fn person_key(batch: &RecordBatch) -> Result<ArrayRef> {
    let user = column(batch, USER_ID)?;
    let anon = column(batch, ANONYMOUS_ID)?;
    Ok(zip(&is_not_null(user.as_ref())?, user, anon)?)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| EngineError::invalid(format!("batch has no column '{name}'")))
}

/// Write `batch` (in the events schema) below `table/data/`, returning the files written.
/// Nothing here makes them visible: the caller commits them to the manifest.
pub async fn write_data_files(
    table: &Location,
    batch: RecordBatch,
    batch_id: &str,
    options: &WriteOptions,
) -> Result<Vec<DataFile>> {
    if batch.num_rows() == 0 {
        return Ok(vec![]);
    }
    let parts = tokio::task::spawn_blocking({
        let options = options.clone();
        move || split_by_date(&batch, &options)
    })
    .await
    .map_err(|e| EngineError::invalid(format!("write task failed: {e}")))??;

    let writes = parts.into_iter().map(|part| {
        let table = table.clone();
        let batch_id = batch_id.to_string();
        let options = options.clone();
        async move {
            let (bytes, rows) = tokio::task::spawn_blocking(move || {
                let rows = part.batch.num_rows() as u64;
                encode_parquet(&part.batch, &options).map(|b| (b, rows))
            })
            .await
            .map_err(|e| EngineError::invalid(format!("encode task failed: {e}")))??;
            let rel = format!(
                "data/date={}/part-{}.parquet",
                part.date,
                uuid::Uuid::new_v4().simple()
            );
            let size = bytes.len() as u64;
            table.store.put(&table.path(&rel), bytes.into()).await?;
            Ok::<_, EngineError>(DataFile {
                path: rel,
                size,
                rows,
                date: part.date,
                min_time_us: part.min_time_us,
                max_time_us: part.max_time_us,
                batch_id,
            })
        }
    });
    // Two at a time: encoding is CPU-bound and the machines are small.
    futures::stream::iter(writes)
        .buffer_unordered(2)
        .try_collect()
        .await
}

struct DatePart {
    date: String,
    batch: RecordBatch,
    min_time_us: i64,
    max_time_us: i64,
}

fn split_by_date(batch: &RecordBatch, options: &WriteOptions) -> Result<Vec<DatePart>> {
    let times = column(batch, EVENT_TIME)?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| EngineError::invalid("event_time must be a microsecond timestamp"))?
        .clone();
    if times.null_count() > 0 {
        return Err(EngineError::invalid("event_time must not be null"));
    }
    let mut by_day: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for (row, t) in times.values().iter().enumerate() {
        by_day
            .entry(t.div_euclid(MICROS_PER_DAY))
            .or_default()
            .push(row as u32);
    }
    let mut parts = vec![];
    for (day, rows) in by_day {
        let day_batch = take_record_batch(batch, &UInt32Array::from(rows))?;
        let sorted = sort_by_person_and_time(&day_batch)?;
        let date = day
            .checked_mul(MICROS_PER_DAY)
            .and_then(chrono::DateTime::from_timestamp_micros)
            .ok_or_else(|| {
                EngineError::invalid("event_time is outside the years the table stores")
            })?
            .format("%Y-%m-%d")
            .to_string();
        let mut offset = 0;
        while offset < sorted.num_rows() {
            let len = options.max_rows_per_file.min(sorted.num_rows() - offset);
            let slice = sorted.slice(offset, len);
            let t = slice
                .column_by_name(EVENT_TIME)
                .expect("checked above")
                .as_primitive::<TimestampMicrosecondType>();
            let (min, max) = (
                arrow::compute::min(t).expect("non-empty"),
                arrow::compute::max(t).expect("non-empty"),
            );
            parts.push(DatePart {
                date: date.clone(),
                batch: slice,
                min_time_us: min,
                max_time_us: max,
            });
            offset += len;
        }
    }
    Ok(parts)
}

fn sort_by_person_and_time(batch: &RecordBatch) -> Result<RecordBatch> {
    let key = person_key(batch)?;
    let time = Arc::clone(column(batch, EVENT_TIME)?);
    let indices = lexsort_to_indices(
        &[
            SortColumn {
                values: key,
                options: None,
            },
            SortColumn {
                values: time,
                options: None,
            },
        ],
        None,
    )?;
    Ok(take_record_batch(batch, &indices)?)
}

fn encode_parquet(batch: &RecordBatch, options: &WriteOptions) -> Result<Bytes> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(options.zstd_level)?))
        .set_max_row_group_row_count(Some(options.row_group_rows))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_created_by(format!("tidepool {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut out = Vec::with_capacity(batch.get_array_memory_size() / 4);
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(Bytes::from(out))
}
