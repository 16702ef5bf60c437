//! The session factory: the one place a DataFusion session is made, for the CLI, the
//! Flight SQL server and the tests alike. It registers every function of `tidepool-udfs`,
//! the JSON functions for `properties`, the warehouse's tables and any extra tables.

use object_store::ObjectStoreExt as _;
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::TableProvider;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{cast, lit, when, Expr};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::error::{EngineError, Result};
use crate::import::TimeUnitSpec;
use crate::mapping::{ColumnMapping, ColumnSource};
use crate::schema::{core_columns, ColumnType, EVENT_TIME};
use crate::storage::{Location, S3Options};
use crate::table::provider::EventsProvider;
use crate::warehouse::{check_table_name, ExternalTable, Warehouse, EVENTS_TABLE};

pub const CATALOG: &str = "tidepool";
pub const SCHEMA: &str = "public";

/// What a session should see.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// The warehouse whose tables are registered (None: only `tables`).
    pub warehouse: Option<Warehouse>,
    /// Extra read-only Parquet tables: (name, file or prefix URL).
    pub tables: Vec<(String, String)>,
    pub s3: S3Options,
    /// Parallelism; None for one per core.
    pub target_partitions: Option<usize>,
    /// Let `INSERT INTO events` append to the warehouse.
    pub writable: bool,
}

/// A new session with every function and table registered.
pub async fn new_session(options: &SessionOptions) -> Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_option_extension(tidepool_udfs::settings::TidepoolOptions::default())
        .with_information_schema(true)
        .with_default_catalog_and_schema(CATALOG, SCHEMA);
    if let Some(n) = options.target_partitions {
        config = config.with_target_partitions(n);
    }
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_optimizer_rule(Arc::new(tidepool_udfs::prefilter::PrefilterConditionRows))
        .with_physical_optimizer_rule(Arc::new(
            tidepool_udfs::single_phase::SinglePhaseEventAggregates,
        ))
        // After the single-phase rule, and before the string key rule: both look for
        // DataFusion's AggregateExec.
        .with_physical_optimizer_rule(Arc::new(
            tidepool_udfs::clustered_aggregate::ClusteredAggregates,
        ))
        .with_physical_optimizer_rule(Arc::new(
            tidepool_udfs::string_key_aggregate::StringKeyAggregates,
        ))
        .with_physical_optimizer_rule(Arc::new(tidepool_udfs::fast_exprs::FasterFilters))
        .with_physical_optimizer_rule(Arc::new(tidepool_udfs::list_unnest::ListUnnests))
        .build();
    register_functions(&mut state)?;
    let ctx = SessionContext::new_with_state(state);

    if let Some(wh) = &options.warehouse {
        register_location(&ctx, &wh.root);
        let events = wh.events();
        let manifest = events.manifest().await?;
        let mut provider = EventsProvider::new(events.location, &manifest);
        if options.writable {
            provider = provider.writable();
        }
        ctx.register_table(EVENTS_TABLE, Arc::new(provider))?;
        for ext in wh.external_tables().await? {
            let provider = external_event_table(&ctx, &ext, &options.s3).await?;
            ctx.register_table(ext.name.as_str(), provider)?;
        }
    }
    for (name, url) in &options.tables {
        check_table_name(name)?;
        let loc = Location::parse(url, &options.s3)?;
        let provider = parquet_table(&ctx, &loc).await?;
        // A table given for this session replaces a warehouse table of the same name.
        ctx.deregister_table(name.as_str())?;
        ctx.register_table(name.as_str(), provider)?;
    }
    Ok(ctx)
}

/// Every function a tidepool session has beyond DataFusion's own.
pub fn register_functions(
    state: &mut datafusion::execution::session_state::SessionState,
) -> Result<()> {
    tidepool_udfs::register_all(state)?;
    datafusion_functions_json::register_all(state)?;
    Ok(())
}

fn register_location(ctx: &SessionContext, loc: &Location) {
    ctx.register_object_store(loc.store_url.as_ref(), Arc::clone(&loc.store));
}

/// A Parquet file, or every `.parquet` file below a prefix, as a read-only table.
pub async fn parquet_table(ctx: &SessionContext, loc: &Location) -> Result<Arc<dyn TableProvider>> {
    register_location(ctx, loc);
    let is_file = if loc.is_local() {
        std::path::Path::new(&format!("/{}", loc.prefix)).is_file()
    } else {
        loc.store.head(&loc.prefix).await.is_ok()
    };
    let mut url = loc.table_url();
    if !is_file {
        url.push('/');
    }
    let table_url = ListingTableUrl::parse(&url)?;
    let listing = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(if is_file { "" } else { ".parquet" });
    let config = ListingTableConfig::new(table_url)
        .with_listing_options(listing)
        .infer_schema(&ctx.state())
        .await
        .map_err(|e| EngineError::InvalidLocation {
            url: loc.url.clone(),
            reason: format!("cannot read it as Parquet: {e}"),
        })?;
    Ok(Arc::new(ListingTable::try_new(config)?))
}

/// An external Parquet source seen through its column mapping as an events table.
pub async fn external_event_table(
    ctx: &SessionContext,
    ext: &ExternalTable,
    s3: &S3Options,
) -> Result<Arc<dyn TableProvider>> {
    let loc = Location::parse(&ext.url, s3)?;
    let source = parquet_table(ctx, &loc).await?;
    let schema = source.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    ext.mapping.validate(&names, &ext.url)?;
    let exprs = mapped_columns(&ext.mapping, &schema, ext.time_unit)?;
    Ok(ctx.read_table(source)?.select(exprs)?.into_view())
}

/// The select list that turns a source schema into the events schema.
pub fn mapped_columns(
    mapping: &ColumnMapping,
    schema: &arrow::datatypes::Schema,
    unit: TimeUnitSpec,
) -> Result<Vec<Expr>> {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut exprs = vec![];
    for (target, ty, _) in core_columns() {
        let expr = match mapping.source_of(target, &names) {
            ColumnSource::Column(src) => {
                let from = schema.field_with_name(src)?.data_type().clone();
                let column = Expr::Column(Column::from_name(src));
                if target == EVENT_TIME {
                    time_expr(column, &from, unit)?
                } else {
                    cast(column, ty.data_type())
                }
            }
            ColumnSource::Constant(v) => cast(lit(v), ty.data_type()),
            ColumnSource::Missing => cast(lit(ScalarValue::Null), ty.data_type()),
        };
        exprs.push(expr.alias(target));
    }
    for extra in mapping.unmapped(&names) {
        exprs.push(Expr::Column(Column::from_name(extra)));
    }
    Ok(exprs)
}

fn time_expr(column: Expr, from: &DataType, unit: TimeUnitSpec) -> Result<Expr> {
    let target = ColumnType::Timestamp.data_type();
    if from.is_integer() {
        let micros = |factor: i64| cast(column.clone(), DataType::Int64) * lit(factor);
        let value = match unit {
            TimeUnitSpec::Seconds => micros(1_000_000),
            TimeUnitSpec::Millis => micros(1_000),
            TimeUnitSpec::Micros => micros(1),
            TimeUnitSpec::Nanos => cast(column.clone(), DataType::Int64) / lit(1_000i64),
            TimeUnitSpec::Auto => {
                // The same magnitude rule as import, per value.
                let magnitude = datafusion::functions::math::expr_fn::abs(cast(
                    column.clone(),
                    DataType::Int64,
                ));
                when(
                    magnitude.clone().lt(lit(100_000_000_000i64)),
                    micros(1_000_000),
                )
                .when(
                    magnitude.clone().lt(lit(100_000_000_000_000i64)),
                    micros(1_000),
                )
                .when(magnitude.lt(lit(100_000_000_000_000_000i64)), micros(1))
                .otherwise(cast(column.clone(), DataType::Int64) / lit(1_000i64))?
            }
        };
        return Ok(cast(value, target));
    }
    match from {
        DataType::Timestamp(_, _)
        | DataType::Date32
        | DataType::Date64
        | DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View => Ok(cast(column, target)),
        other => Err(EngineError::invalid(format!(
            "an event time column of type {other} cannot be read as a timestamp"
        ))),
    }
}
