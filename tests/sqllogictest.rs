//! Runs every `tests/slt/*.slt` file against a tidepool session over a fresh warehouse
//! holding `tests/fixtures/events_small.csv` (16 hand-written events; see the comments in
//! the .slt files for the hand-worked answers).
//!
//! It also runs the `slt` blocks of every page in `docs/functions/`, so that the examples
//! in the docs are tested.
//!
//! `cargo test --test sqllogictest -- NAME` runs only files whose name contains NAME.

use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use sqllogictest::{DBOutput, DefaultColumnType};
use tidepool_engine::import::{import_file, ImportOptions, NoProgress};
use tidepool_engine::{new_session, SessionOptions, Warehouse};

#[derive(Clone)]
struct Tidepool {
    ctx: SessionContext,
}

#[async_trait]
impl sqllogictest::AsyncDB for Tidepool {
    type Error = DataFusionError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DataFusionError> {
        let df = self.ctx.sql(sql).await?;
        let schema = df.schema().clone();
        let batches = df.collect().await?;
        if schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; schema.fields().len()],
            rows: rows_as_text(&batches)?,
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "tidepool"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// Values as text: NULL for nulls, (empty) for empty strings, timestamps in RFC 3339.
fn rows_as_text(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, DataFusionError> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = vec![];
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            rows.push(
                formatters
                    .iter()
                    .map(|f| {
                        let v = f.value(row).to_string();
                        if v.is_empty() {
                            "(empty)".to_string()
                        } else {
                            v
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(rows)
}

async fn fixture_session(dir: &Path) -> SessionContext {
    let wh = Warehouse::open(dir.to_str().unwrap(), &Default::default()).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events_small.csv");
    import_file(
        &wh.events(),
        fixture.to_str().unwrap(),
        &wh.s3,
        &ImportOptions::default(),
        &NoProgress,
    )
    .await
    .expect("the fixture imports");
    let options = SessionOptions {
        warehouse: Some(wh),
        target_partitions: Some(2),
        ..Default::default()
    };
    new_session(&options).await.unwrap()
}

/// The `slt` fenced blocks of a markdown page, joined into one script.
fn doc_script(page: &Path) -> String {
    let text = std::fs::read_to_string(page).unwrap();
    let mut script = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.trim() == "```slt" {
            inside = true;
        } else if inside && line.trim() == "```" {
            inside = false;
            script.push('\n');
        } else if inside {
            script.push_str(line);
            script.push('\n');
        }
    }
    script
}

fn doc_pages() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/functions");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    pages.retain(|p| p.extension().is_some_and(|e| e == "md"));
    pages.sort();
    pages
}

fn slt_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/slt exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    files
}

#[tokio::main]
async fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut failed = 0;
    let mut passed = 0;
    let scripts = slt_files()
        .into_iter()
        .map(|f| (f, false))
        .chain(doc_pages().into_iter().map(|p| (p, true)));
    for (file, is_doc) in scripts {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let db = Tidepool {
            ctx: fixture_session(dir.path()).await,
        };
        let mut runner = sqllogictest::Runner::new(move || {
            let db = db.clone();
            async move { Ok::<_, DataFusionError>(db) }
        });
        let result = if is_doc {
            let script = doc_script(&file);
            if script.trim().is_empty() {
                continue;
            }
            runner.run_script_async(&script).await
        } else {
            runner.run_file_async(&file).await
        };
        match result {
            Ok(()) => {
                passed += 1;
                println!("slt {name} ... ok");
            }
            Err(e) => {
                failed += 1;
                println!("slt {name} ... FAILED\n{e}");
            }
        }
    }
    println!("\nsqllogictest: {passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        std::process::exit(1);
    }
}
