//! Running one query for a client: SQL to a checked plan, and the plan to a stream of
//! batches that carries its limits (memory, time, cancellation) and says how it ended.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::error::FlightError;
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tonic::Status;

use crate::results::conform;

/// The limits every query runs under.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes of memory one query may hold (operators that can spill do so first).
    pub query_memory: usize,
    pub query_timeout: Duration,
    pub max_concurrent_queries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            query_memory: 4 << 30,
            query_timeout: Duration::from_secs(600),
            max_concurrent_queries: 16,
        }
    }
}

/// A user-facing status for a DataFusion error: what the user got wrong is
/// INVALID_ARGUMENT, a limit is RESOURCE_EXHAUSTED, the rest INTERNAL.
pub fn df_status(e: DataFusionError) -> Status {
    let root = e.find_root();
    match root {
        DataFusionError::ResourcesExhausted(m) => Status::resource_exhausted(format!(
            "the query needs more memory than its limit allows: {m}"
        )),
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Configuration(_)
        | DataFusionError::Execution(_)
        | DataFusionError::External(_) => Status::invalid_argument(root.to_string()),
        _ => Status::internal(root.to_string()),
    }
}

/// Number `?` placeholders as `$1, $2, ...` (DataFusion gives every `?` the same name),
/// leaving `?` inside strings and comments alone.
pub fn number_placeholders(sql: &str) -> Result<String, Status> {
    if !sql.contains('?') {
        return Ok(sql.to_string());
    }
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize()
        .map_err(|e| Status::invalid_argument(format!("SQL error: {e}")))?;
    let mut n = 0;
    let mut out = String::with_capacity(sql.len() + 8);
    for token in tokens {
        match token {
            Token::Placeholder(p) if p == "?" => {
                n += 1;
                out.push_str(&format!("${n}"));
            }
            other => out.push_str(&other.to_string()),
        }
    }
    Ok(out)
}

/// The logical plan of one SQL statement, not yet executed (DDL included).
pub async fn plan_sql(ctx: &SessionContext, sql: &str) -> Result<LogicalPlan, Status> {
    let sql = number_placeholders(sql)?;
    ctx.state()
        .create_logical_plan(&sql)
        .await
        .map_err(df_status)
}

/// Whether `plan` returns rows (a query) rather than a count or nothing (an update).
pub fn is_query(plan: &LogicalPlan) -> bool {
    !matches!(
        plan,
        LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Statement(_)
    )
}

/// The placeholders of `plan` in order, as the parameter schema (type Null where the
/// plan does not fix one).
pub fn parameter_schema(plan: &LogicalPlan) -> Result<Schema, Status> {
    let types = plan.get_parameter_types().map_err(df_status)?;
    let mut ids: Vec<(usize, String, Option<DataType>)> = types
        .into_iter()
        .map(|(id, t)| {
            let n = id
                .trim_start_matches('$')
                .parse::<usize>()
                .unwrap_or(usize::MAX);
            (n, id, t)
        })
        .collect();
    ids.sort();
    Ok(Schema::new(
        ids.into_iter()
            .map(|(_, id, t)| Field::new(id, t.unwrap_or(DataType::Null), true))
            .collect::<Vec<_>>(),
    ))
}

/// `plan` once per bound row: column i of the parameters fills `$i+1`.
pub fn bind(plan: &LogicalPlan, params: &[RecordBatch]) -> Result<Vec<LogicalPlan>, Status> {
    let wanted = parameter_schema(plan)?;
    if wanted.fields().is_empty() {
        return Ok(vec![plan.clone()]);
    }
    let rows: usize = params.iter().map(|b| b.num_rows()).sum();
    if rows == 0 {
        return Err(Status::invalid_argument(format!(
            "the statement has {} parameter(s) but none were bound",
            wanted.fields().len()
        )));
    }
    let mut plans = Vec::with_capacity(rows);
    for batch in params {
        if batch.num_columns() != wanted.fields().len() {
            return Err(Status::invalid_argument(format!(
                "the statement has {} parameter(s) but {} were bound",
                wanted.fields().len(),
                batch.num_columns()
            )));
        }
        for row in 0..batch.num_rows() {
            let mut values = Vec::with_capacity(batch.num_columns());
            for (col, field) in batch.columns().iter().zip(wanted.fields()) {
                let mut v =
                    datafusion::common::ScalarValue::try_from_array(col, row).map_err(df_status)?;
                // Some clients (flightsql-dbapi) send each parameter as a dense union
                // of the possible types: the value is the union's selected child.
                if let datafusion::common::ScalarValue::Union(value, _, _) = v {
                    v = match value {
                        Some((_, inner)) => *inner,
                        None => datafusion::common::ScalarValue::Null,
                    };
                }
                if field.data_type() != &DataType::Null && &v.data_type() != field.data_type() {
                    v = v.cast_to(field.data_type()).map_err(|e| {
                        Status::invalid_argument(format!(
                            "parameter {}: cannot use a {} value as {}: {e}",
                            field.name(),
                            col.data_type(),
                            field.data_type()
                        ))
                    })?;
                }
                values.push(v);
            }
            plans.push(plan.clone().with_param_values(values).map_err(df_status)?);
        }
    }
    Ok(plans)
}

/// A context for one query: the shared catalog and functions, its own memory pool.
pub fn query_context(base: &SessionContext, limits: &Limits) -> Result<SessionContext, Status> {
    let runtime = RuntimeEnvBuilder::from_runtime_env(base.runtime_env().as_ref())
        .with_memory_limit(limits.query_memory, 1.0)
        .build_arc()
        .map_err(df_status)?;
    let state = SessionStateBuilder::new_from_existing(base.state())
        .with_runtime_env(runtime)
        .build();
    Ok(SessionContext::new_with_state(state))
}

/// Execute `plans` one after another as one stream.
pub fn execute(
    ctx: SessionContext,
    plans: Vec<LogicalPlan>,
) -> BoxStream<'static, Result<RecordBatch, DataFusionError>> {
    futures::stream::iter(plans)
        .then(move |plan| {
            let ctx = ctx.clone();
            async move { ctx.execute_logical_plan(plan).await?.execute_stream().await }
        })
        .try_flatten()
        .boxed()
}

/// What one query's stream has done so far; logged when the stream goes away.
pub struct QueryLog {
    pub id: String,
    pub user: String,
    started: Instant,
    rows: u64,
    outcome: Option<String>,
    cleanup: Option<Box<dyn FnOnce() + Send>>,
}

impl QueryLog {
    pub fn new(id: String, user: String) -> Self {
        tracing::info!(query = %id, %user, "query started");
        QueryLog {
            id,
            user,
            started: Instant::now(),
            rows: 0,
            outcome: None,
            cleanup: None,
        }
    }

    /// Run `f` when the query's stream goes away, however it ends.
    pub fn on_drop(&mut self, f: impl FnOnce() + Send + 'static) {
        self.cleanup = Some(Box::new(f));
    }
}

impl Drop for QueryLog {
    fn drop(&mut self) {
        if let Some(f) = self.cleanup.take() {
            f();
        }
        let elapsed = self.started.elapsed();
        let outcome = self
            .outcome
            .as_deref()
            .unwrap_or("stopped: the client cancelled or went away");
        tracing::info!(
            query = %self.id,
            user = %self.user,
            rows = self.rows,
            elapsed_ms = elapsed.as_millis() as u64,
            "query {outcome}"
        );
    }
}

/// A query's result stream: batches in the announced schema until the plan ends, the
/// time limit passes, or someone cancels it. Dropping it (a client that goes away)
/// drops the plan, which stops its work.
pub struct QueryStream {
    inner: BoxStream<'static, Result<RecordBatch, DataFusionError>>,
    stop: Pin<Box<dyn Future<Output = Status> + Send>>,
    schema: SchemaRef,
    done: bool,
    log: QueryLog,
    _permit: OwnedSemaphorePermit,
}

impl QueryStream {
    pub fn new(
        inner: BoxStream<'static, Result<RecordBatch, DataFusionError>>,
        schema: SchemaRef,
        timeout: Duration,
        cancel: Arc<Notify>,
        permit: OwnedSemaphorePermit,
        log: QueryLog,
    ) -> Self {
        let stop = Box::pin(async move {
            tokio::select! {
                _ = tokio::time::sleep(timeout) => Status::deadline_exceeded(format!(
                    "the query ran longer than its limit of {} s and was stopped",
                    timeout.as_secs_f64()
                )),
                _ = cancel.notified() => Status::cancelled("the query was cancelled"),
            }
        });
        QueryStream {
            inner,
            stop,
            schema,
            done: false,
            log,
            _permit: permit,
        }
    }
}

impl Stream for QueryStream {
    type Item = Result<RecordBatch, FlightError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(status) = this.stop.as_mut().poll(cx) {
            this.done = true;
            this.log.outcome = Some(format!("stopped: {}", status.message()));
            return Poll::Ready(Some(Err(FlightError::Tonic(Box::new(status)))));
        }
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => match conform(&batch, &this.schema) {
                Ok(batch) => {
                    this.log.rows += batch.num_rows() as u64;
                    Poll::Ready(Some(Ok(batch)))
                }
                Err(e) => {
                    this.done = true;
                    this.log.outcome = Some(format!("failed: {e}"));
                    Poll::Ready(Some(Err(FlightError::Tonic(Box::new(Status::internal(
                        format!("the result does not match its announced schema: {e}"),
                    ))))))
                }
            },
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                let status = df_status(e);
                this.log.outcome = Some(format!("failed: {}", status.message()));
                Poll::Ready(Some(Err(FlightError::Tonic(Box::new(status)))))
            }
            Poll::Ready(None) => {
                this.done = true;
                this.log.outcome = Some("finished".into());
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_become_numbered_outside_strings() {
        assert_eq!(
            number_placeholders("SELECT ? + ?, '?' FROM t WHERE a = ? -- why?").unwrap(),
            "SELECT $1 + $2, '?' FROM t WHERE a = $3 -- why?"
        );
        assert_eq!(number_placeholders("SELECT 1").unwrap(), "SELECT 1");
    }
}
