use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::TimestampMicrosecondType;
use futures::TryStreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;
use crate::schema::{events_schema, ColumnType};
use crate::storage::{Location, S3Options};

const DAY: i64 = 86_400_000_000;

/// Events over two UTC days for three people, deliberately out of order.
fn sample_batch() -> RecordBatch {
    let t0 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
    let times = vec![
        t0 + DAY + 5,
        t0 + 30,
        t0 + 10,
        t0 + DAY + 1,
        t0 + 20,
        t0 + 40,
    ];
    let anon = vec!["d3", "d1", "d2", "d1", "d1", "d9"];
    let user: Vec<Option<&str>> = vec![None, Some("u1"), None, Some("u1"), None, Some("u1")];
    let schema = events_schema(&[]);
    let n = times.len();
    let strings = |v: Vec<Option<&str>>| Arc::new(StringArray::from(v)) as Arc<dyn Array>;
    let nulls = || strings(vec![None; n]);
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC")),
            strings(vec![Some("page_view"); n]),
            strings(anon.into_iter().map(Some).collect()),
            strings(user),
            nulls(),
            nulls(),
            nulls(),
            nulls(),
            Arc::new(Float64Array::from(vec![None; n])),
            nulls(),
        ],
    )
    .unwrap()
}

fn record(id: &str, rows: u64) -> BatchRecord {
    BatchRecord {
        id: id.into(),
        source: "test".into(),
        rows,
        committed_at: "now".into(),
    }
}

fn temp_table(dir: &tempfile::TempDir) -> EventTable {
    let loc = Location::parse(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
    EventTable::new(loc.child("events"))
}

#[tokio::test]
async fn append_partitions_by_date_and_sorts_by_person_then_time() {
    let dir = tempfile::tempdir().unwrap();
    let table = temp_table(&dir);
    let outcome = table
        .append(
            sample_batch(),
            record("b1", 6),
            &[],
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(outcome, CommitOutcome::Committed { version: 1 });
    let m = table.manifest().await.unwrap();
    assert_eq!(m.total_rows(), 6);
    let mut dates: Vec<_> = m.files.iter().map(|f| f.date.clone()).collect();
    dates.sort();
    assert_eq!(dates, vec!["2026-01-01", "2026-01-02"]);

    let first_day = m.files.iter().find(|f| f.date == "2026-01-01").unwrap();
    assert!(first_day.path.starts_with("data/date=2026-01-01/"));
    let path = dir.path().join("events").join(&first_day.path);
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
    let b = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    // person key = user_id, else anonymous_id: d1 (t+20), d2 (t+10), u1 (t+30, t+40)
    let anon: Vec<&str> = b
        .column(2)
        .as_string::<i32>()
        .iter()
        .map(|v| v.unwrap())
        .collect();
    assert_eq!(anon, vec!["d1", "d2", "d1", "d9"]);
    let t = b.column(0).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(t.value(2) < t.value(3), true);
    assert_eq!(first_day.min_time_us, 1_767_225_600_000_010);
    assert_eq!(first_day.max_time_us, 1_767_225_600_000_040);
}

#[tokio::test]
async fn the_same_batch_id_commits_once() {
    let dir = tempfile::tempdir().unwrap();
    let table = temp_table(&dir);
    let opts = WriteOptions::default();
    table
        .append(sample_batch(), record("same", 6), &[], &opts)
        .await
        .unwrap();
    let again = table
        .append(sample_batch(), record("same", 6), &[], &opts)
        .await
        .unwrap();
    assert_eq!(again, CommitOutcome::AlreadyCommitted);
    assert_eq!(table.manifest().await.unwrap().total_rows(), 6);
}

#[tokio::test]
async fn files_written_but_not_committed_stay_invisible() {
    let dir = tempfile::tempdir().unwrap();
    let table = temp_table(&dir);
    let written = writer::write_data_files(
        &table.location,
        sample_batch(),
        "crashed",
        &WriteOptions::default(),
    )
    .await
    .unwrap();
    assert!(!written.is_empty());
    // The files are there, but no manifest names them: the table is still empty.
    let data = table.location.child("data");
    let listed: Vec<_> = data
        .store
        .list(Some(&data.prefix))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed.len(), written.len());
    let m = table.manifest().await.unwrap();
    assert_eq!(m.version, 0);
    assert_eq!(m.total_rows(), 0);
}

#[tokio::test]
async fn concurrent_commits_all_land_in_distinct_versions() {
    let dir = tempfile::tempdir().unwrap();
    let table = temp_table(&dir);
    let mut tasks = vec![];
    for i in 0..8 {
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            table
                .commit(vec![], record(&format!("b{i}"), 0), &[])
                .await
                .unwrap()
        }));
    }
    let mut versions = vec![];
    for t in tasks {
        match t.await.unwrap() {
            CommitOutcome::Committed { version } => versions.push(version),
            other => panic!("unexpected {other:?}"),
        }
    }
    versions.sort();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());
    assert_eq!(table.manifest().await.unwrap().batches.len(), 8);
}

#[test]
fn extra_columns_keep_their_type() {
    let int = |n: &str| ExtraColumn {
        name: n.into(),
        column_type: ColumnType::Int64,
    };
    let merged = merge_extra_columns(&[int("a")], &[int("b"), int("a")]).unwrap();
    assert_eq!(merged, vec![int("a"), int("b")]);
    let text = ExtraColumn {
        name: "a".into(),
        column_type: ColumnType::Utf8,
    };
    let err = merge_extra_columns(&[int("a")], &[text]).unwrap_err();
    assert!(
        err.to_string()
            .contains("column 'a' is int64 in the table but string"),
        "{err}"
    );
}

#[tokio::test]
async fn a_newer_manifest_format_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let table = temp_table(&dir);
    let log = dir.path().join("events/_log");
    std::fs::create_dir_all(&log).unwrap();
    let mut m = Manifest {
        version: 1,
        ..Manifest::default()
    };
    m.format_version = 99;
    std::fs::write(
        log.join(manifest::log_name(1)),
        serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
    let err = table.manifest().await.unwrap_err().to_string();
    assert!(err.contains("v99 is not one this build reads"), "{err}");
}

#[tokio::test]
async fn time_filters_skip_files_by_their_manifest_time_range() {
    let dir = tempfile::tempdir().unwrap();
    let wh = crate::Warehouse::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
    wh.events()
        .append(
            sample_batch(),
            record("b", 6),
            &[],
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let options = crate::SessionOptions {
        warehouse: Some(wh),
        target_partitions: Some(1),
        ..Default::default()
    };
    let ctx = crate::new_session(&options).await.unwrap();
    ctx.sql("SET datafusion.optimizer.repartition_file_scans = false")
        .await
        .unwrap();
    let plan = ctx
        .sql("EXPLAIN ANALYZE SELECT count(*) FROM events WHERE event_time >= '2026-01-02T00:00:00Z'")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&plan)
        .unwrap()
        .to_string();
    // Two files (one per day); the first day's file is skipped from its statistics.
    assert!(
        text.contains("files_ranges_pruned_statistics=2 total → 1 matched"),
        "{text}"
    );
    let rows = ctx
        .sql("SELECT count(*) FROM events WHERE event_time >= '2026-01-02T00:00:00Z'")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let n = rows[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0);
    assert_eq!(n, 2);
}
