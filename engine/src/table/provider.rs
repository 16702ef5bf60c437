//! The events table as a DataFusion table: a Parquet scan over exactly the files one
//! manifest names, each with its row count and time range so that a time filter skips
//! files without opening them.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::plan_err;
use datafusion::common::stats::Precision;
use datafusion::common::{project_schema, ColumnStatistics, ScalarValue, Statistics};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType};
use futures::TryStreamExt;

use super::manifest::{DataFile, Manifest};
use crate::schema::{events_schema, EVENT_TIME, UTC};
use crate::storage::Location;
use crate::table::EventTable;

/// A snapshot of an events table. Scans read exactly the snapshot's files; when made
/// writable, `INSERT INTO` appends one atomic batch (a new snapshot, which later
/// sessions see).
#[derive(Debug)]
pub struct EventsProvider {
    schema: SchemaRef,
    location: Location,
    files: Vec<DataFile>,
    writable: bool,
}

impl EventsProvider {
    pub fn new(location: Location, manifest: &Manifest) -> Self {
        EventsProvider {
            schema: events_schema(&manifest.extra_columns),
            location,
            files: manifest.files.clone(),
            writable: false,
        }
    }

    /// Accept `INSERT INTO` (appends through the import path's atomic commit).
    pub fn writable(mut self) -> Self {
        self.writable = true;
        self
    }

    fn file_statistics(&self, file: &DataFile) -> Statistics {
        let time = |us| {
            Precision::Exact(ScalarValue::TimestampMicrosecond(
                Some(us),
                Some(UTC.into()),
            ))
        };
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|f| {
                if f.name() == EVENT_TIME {
                    ColumnStatistics::new_unknown()
                        .with_min_value(time(file.min_time_us))
                        .with_max_value(time(file.max_time_us))
                        .with_null_count(Precision::Exact(0))
                } else {
                    ColumnStatistics::new_unknown()
                }
            })
            .collect();
        Statistics {
            num_rows: Precision::Exact(file.rows as usize),
            total_byte_size: Precision::Absent,
            column_statistics: columns,
        }
    }

    /// Spread files over `n` groups, largest first into the lightest group.
    fn file_groups(&self, n: usize) -> Vec<FileGroup> {
        let mut order: Vec<&DataFile> = self.files.iter().collect();
        order.sort_by_key(|f| std::cmp::Reverse(f.size));
        let n = n.max(1).min(order.len());
        let mut groups: Vec<(u64, Vec<PartitionedFile>)> = vec![(0, vec![]); n];
        for f in order {
            let lightest = groups
                .iter_mut()
                .min_by_key(|(bytes, _)| *bytes)
                .expect("at least one group");
            lightest.0 += f.size;
            let path = self.location.path(&f.path);
            lightest.1.push(
                PartitionedFile::new(path.to_string(), f.size)
                    .with_statistics(Arc::new(self.file_statistics(f))),
            );
        }
        groups
            .into_iter()
            .map(|(_, files)| FileGroup::new(files))
            .collect()
    }
}

#[async_trait]
impl TableProvider for EventsProvider {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters prune files, row groups and pages; the rows themselves are still
        // filtered above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if self.files.is_empty() {
            let schema = project_schema(&self.schema, projection)?;
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let source = format.file_source(Arc::clone(&self.schema).into());
        let config = FileScanConfigBuilder::new(self.location.store_url.clone(), source)
            .with_file_groups(self.file_groups(state.config().target_partitions()))
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        format.create_physical_plan(state, config).await
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !self.writable {
            return plan_err!(
                "the events table is read-only here (the CLI writes only to a warehouse named \
                 with --warehouse)"
            );
        }
        if insert_op != InsertOp::Append {
            return plan_err!(
                "events is append-only: {insert_op} is not supported, use INSERT INTO"
            );
        }
        // The import path checks required values itself (and fills anonymous_id from
        // user_id), so the sink declares every column nullable.
        let relaxed = self
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>();
        let sink = EventsSink {
            schema: Arc::new(arrow::datatypes::Schema::new(relaxed)),
            table: EventTable::new(self.location.clone()),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// Collects the rows of one INSERT and commits them as one batch.
#[derive(Debug)]
struct EventsSink {
    schema: SchemaRef,
    table: EventTable,
}

impl DisplayAs for EventsSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "EventsSink: {}", self.table.location.url)
    }
}

#[async_trait]
impl DataSink for EventsSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let batches: Vec<_> = data.try_collect().await?;
        let report = crate::import::import_batches(&self.table, &batches, "INSERT")
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(report.rows_imported)
    }
}
