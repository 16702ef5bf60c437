//! Writing query results as a table, CSV, JSON lines or Parquet.

use std::io::Write;

use anyhow::{bail, Context, Result};
use arrow::array::RecordBatch;
use clap::ValueEnum;

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

pub fn write_batches(format: Format, batches: &[RecordBatch], out: &mut dyn Write) -> Result<()> {
    match format {
        Format::Table => {
            if batches.iter().all(|b| b.num_rows() == 0) {
                let names: Vec<&str> = batches
                    .first()
                    .map(|b| {
                        b.schema_ref()
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                if !names.is_empty() {
                    writeln!(out, "({} | no rows)", names.join(", "))?;
                }
            } else {
                writeln!(
                    out,
                    "{}",
                    arrow::util::pretty::pretty_format_batches(batches)?
                )?;
            }
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut *out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        Format::Parquet => {
            let Some(schema) = batches.first().map(|b| b.schema()) else {
                bail!("the query returned no schema to write as Parquet");
            };
            let mut buf = Vec::new();
            let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None)
                .context("writing Parquet")?;
            for b in batches {
                w.write(b)?;
            }
            w.close()?;
            out.write_all(&buf)?;
        }
    }
    Ok(())
}
