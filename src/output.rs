//! Writing query results as a table, CSV, JSON lines or Parquet. CSV, JSON and Parquet
//! are written batch by batch as the query produces them, so an export never holds the
//! whole result in memory; the table format needs every row to size its columns.

use std::io::Write;

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use clap::ValueEnum;

/// Where results go: standard output or a file.
pub type Out = dyn Write + Send;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON object per row; lists and structs kept as JSON arrays and objects.
    Json,
    /// A Parquet file (needs --output, or standard output that is not a terminal).
    Parquet,
}

/// One statement's result being written.
pub enum ResultWriter<'a> {
    Table {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        out: &'a mut Out,
    },
    Csv(arrow::csv::Writer<&'a mut Out>),
    Json(arrow::json::LineDelimitedWriter<&'a mut Out>),
    Parquet(parquet::arrow::ArrowWriter<&'a mut Out>),
}

impl<'a> ResultWriter<'a> {
    pub fn new(format: Format, schema: SchemaRef, out: &'a mut Out) -> Result<Self> {
        Ok(match format {
            Format::Table => ResultWriter::Table {
                schema,
                batches: vec![],
                out,
            },
            Format::Csv => ResultWriter::Csv(
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(out),
            ),
            Format::Json => ResultWriter::Json(arrow::json::LineDelimitedWriter::new(out)),
            Format::Parquet => {
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                    .build();
                ResultWriter::Parquet(
                    parquet::arrow::ArrowWriter::try_new(out, schema, Some(props))
                        .context("writing Parquet")?,
                )
            }
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match self {
            ResultWriter::Table { batches, .. } => batches.push(batch.clone()),
            ResultWriter::Csv(w) => w.write(batch)?,
            ResultWriter::Json(w) => w.write(batch)?,
            ResultWriter::Parquet(w) => w.write(batch)?,
        }
        Ok(())
    }

    pub fn finish(self) -> Result<()> {
        match self {
            ResultWriter::Table {
                schema,
                batches,
                out,
            } => {
                if batches.iter().all(|b| b.num_rows() == 0) {
                    // Statements without output (CREATE VIEW, SET) have no columns either.
                    if !schema.fields().is_empty() {
                        let names: Vec<&str> =
                            schema.fields().iter().map(|f| f.name().as_str()).collect();
                        writeln!(out, "({} | no rows)", names.join(", "))?;
                    }
                } else {
                    writeln!(
                        out,
                        "{}",
                        arrow::util::pretty::pretty_format_batches(&batches)?
                    )?;
                }
            }
            ResultWriter::Csv(_) => {}
            ResultWriter::Json(mut w) => w.finish()?,
            ResultWriter::Parquet(w) => {
                w.close()?;
            }
        }
        Ok(())
    }
}
