//! The Flight SQL service: every RPC authenticates, every plan is checked against the
//! caller's role, and every handle is random, expires and belongs to its maker.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionCancelQueryRequest, ActionCancelQueryResult, ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
    CommandGetCatalogs, CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys,
    CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, CommandGetXdbcTypeInfo, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, FlightDescriptor,
    FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc,
    Ticket,
};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use futures::{Stream, TryStreamExt};
use prost::Message;
use tidepool_engine::session::{CATALOG, SCHEMA};
use tidepool_engine::{new_session, SessionOptions, Warehouse};
use tokio::sync::{Notify, Semaphore};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{random_id, Authenticator, Identity};
use crate::metadata::{sql_info, xdbc_type_info, STATEMENT_TIMEOUT_MS};
use crate::policy::{can_see_schema, check_plan, EVENTS_TABLE, INFORMATION_SCHEMA};
use crate::query::{
    bind, df_status, execute, is_query, parameter_schema, plan_sql, query_context, Limits,
    QueryLog, QueryStream,
};
use crate::results::wire_schema;
use datafusion::catalog::SchemaProvider;
use datafusion::common::TableReference;

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

/// How long a ticket from GetFlightInfo stays good.
const TICKET_TTL: Duration = Duration::from_secs(15 * 60);
/// How often the events table is checked for commits made by other processes.
const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// A result waiting to be fetched with DoGet.
struct Ticketed {
    owner: String,
    plans: Vec<LogicalPlan>,
    /// The result of a statement that ran when its FlightInfo was asked for.
    done: Option<Vec<RecordBatch>>,
    schema: SchemaRef,
    expires: Instant,
}

/// A prepared statement and its bound parameters.
struct Prepared {
    owner: String,
    plan: LogicalPlan,
    params: Vec<RecordBatch>,
    expires: Instant,
}

struct Base {
    ctx: SessionContext,
    events_version: u64,
    checked: Instant,
}

pub struct TidepoolFlightSql {
    auth: Arc<Authenticator>,
    warehouse: Warehouse,
    base: tokio::sync::Mutex<Base>,
    limits: Limits,
    running: Arc<Semaphore>,
    tickets: Mutex<HashMap<String, Ticketed>>,
    prepared: Mutex<HashMap<String, Prepared>>,
    /// Queries being streamed, by ticket handle, so that they can be cancelled.
    cancels: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    /// No writes whatever the role.
    read_only: bool,
    info_read_only: SqlInfoData,
    info_writable: SqlInfoData,
    xdbc: XdbcTypeInfoData,
}

fn ipc_schema(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

fn batches_stream(schema: SchemaRef, batches: Vec<RecordBatch>) -> DoGetStream {
    let input = futures::stream::iter(batches.into_iter().map(Ok));
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(input)
            .map_err(Status::from),
    )
}

fn flight_info(
    schema: &Schema,
    ticket: bytes::Bytes,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Status> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor)
        .with_total_records(-1)
        .with_total_bytes(-1))
}

fn arrow_status(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// The schemas GetPrimaryKeys and the key calls answer with (always empty: tables here
/// have no declared keys).
fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

fn foreign_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}

fn table_type_name(t: datafusion::datasource::TableType) -> &'static str {
    match t {
        datafusion::datasource::TableType::Base => "TABLE",
        datafusion::datasource::TableType::View => "VIEW",
        datafusion::datasource::TableType::Temporary => "LOCAL TEMPORARY",
    }
}

impl TidepoolFlightSql {
    pub async fn new(
        warehouse: Warehouse,
        session: SessionOptions,
        auth: Arc<Authenticator>,
        limits: Limits,
        read_only: bool,
    ) -> anyhow::Result<Self> {
        let mut session = session;
        session.warehouse = Some(warehouse.clone());
        session.writable = !read_only;
        let ctx = new_session(&session).await?;
        let events_version = warehouse.events().manifest().await?.version;
        Ok(TidepoolFlightSql {
            auth,
            warehouse,
            base: tokio::sync::Mutex::new(Base {
                ctx,
                events_version,
                checked: Instant::now(),
            }),
            running: Arc::new(Semaphore::new(limits.max_concurrent_queries)),
            limits,
            tickets: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
            cancels: Arc::new(Mutex::new(HashMap::new())),
            read_only,
            info_read_only: sql_info(true),
            info_writable: sql_info(false),
            xdbc: xdbc_type_info(),
        })
    }

    /// The FlightInfo of a metadata command: its ticket is the command itself, which the
    /// DoGet answers (after authenticating again).
    async fn metadata_info(
        &self,
        request: Request<FlightDescriptor>,
        schema: &Schema,
        command: Vec<u8>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.who(&request).await?;
        let info = flight_info(schema, command.into(), request.into_inner())?;
        Ok(Response::new(info))
    }

    /// An empty answer with `schema` (the key calls: tables here declare no keys).
    async fn empty_answer<T>(
        &self,
        request: Request<T>,
        schema: SchemaRef,
    ) -> Result<Response<DoGetStream>, Status> {
        self.who(&request).await?;
        Ok(Response::new(batches_stream(schema, vec![])))
    }

    /// The caller, as the [`crate::auth::AuthLayer`] found them (or, for a service run
    /// without the layer, as the request's credentials say).
    async fn who<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        match request.extensions().get::<Identity>() {
            Some(identity) => Ok(identity.clone()),
            None => self.auth.authenticate(request.metadata()).await,
        }
    }

    /// The shared session, with the events table as of its newest commit (checked at
    /// most every couple of seconds, and at once after a write here).
    async fn base(&self, force: bool) -> Result<SessionContext, Status> {
        let mut base = self.base.lock().await;
        if force || base.checked.elapsed() >= REFRESH_EVERY {
            let events = self.warehouse.events();
            let manifest = events
                .manifest()
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            if manifest.version != base.events_version {
                let mut provider = tidepool_engine::table::provider::EventsProvider::new(
                    events.location,
                    &manifest,
                );
                if !self.read_only {
                    provider = provider.writable();
                }
                base.ctx.deregister_table(EVENTS_TABLE).map_err(df_status)?;
                base.ctx
                    .register_table(EVENTS_TABLE, Arc::new(provider))
                    .map_err(df_status)?;
                base.events_version = manifest.version;
            }
            base.checked = Instant::now();
        }
        Ok(base.ctx.clone())
    }

    /// Plan `sql` for `who`, refusing what their role may not run.
    async fn checked_plan(&self, who: &Identity, sql: &str) -> Result<LogicalPlan, Status> {
        let base = self.base(false).await?;
        let plan = plan_sql(&base, sql).await?;
        check_plan(who.role, &plan)?;
        if self.read_only && matches!(plan, LogicalPlan::Dml(_)) {
            return Err(self.read_only_refusal());
        }
        Ok(plan)
    }

    fn new_ticket(
        &self,
        owner: &Identity,
        plans: Vec<LogicalPlan>,
        done: Option<Vec<RecordBatch>>,
        schema: SchemaRef,
    ) -> String {
        let handle = random_id();
        let mut tickets = self.tickets.lock().unwrap();
        let now = Instant::now();
        tickets.retain(|_, t| t.expires > now);
        tickets.insert(
            handle.clone(),
            Ticketed {
                owner: owner.user.clone(),
                plans,
                done,
                schema,
                expires: now + TICKET_TTL,
            },
        );
        handle
    }

    /// A FlightInfo for `plans`. Queries run when their ticket is fetched; statements
    /// (INSERT, and DDL for admins) run now, since clients often never fetch their
    /// result.
    async fn statement_info(
        &self,
        who: &Identity,
        plans: Vec<LogicalPlan>,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let schema = wire_schema(plans[0].schema().as_arrow());
        let done = if plans.iter().any(|p| !is_query(p)) {
            let batches = self.run_collect(plans.clone()).await?;
            let batches = batches
                .iter()
                .map(|b| crate::results::conform(b, &schema))
                .collect::<Result<Vec<_>, _>>()
                .map_err(arrow_status)?;
            Some(batches)
        } else {
            None
        };
        let handle = self.new_ticket(who, plans, done, Arc::clone(&schema));
        let ticket = TicketStatementQuery {
            statement_handle: handle.into_bytes().into(),
        };
        flight_info(&schema, ticket.as_any().encode_to_vec().into(), descriptor)
    }

    fn prepared_plan(
        &self,
        who: &Identity,
        handle: &[u8],
    ) -> Result<(LogicalPlan, Vec<RecordBatch>), Status> {
        let handle = String::from_utf8_lossy(handle).to_string();
        let mut prepared = self.prepared.lock().unwrap();
        let now = Instant::now();
        prepared.retain(|_, p| p.expires > now);
        let p = prepared
            .get_mut(&handle)
            .ok_or_else(|| Status::not_found("unknown or expired prepared statement"))?;
        if p.owner != who.user {
            return Err(Status::permission_denied(
                "this prepared statement belongs to another user",
            ));
        }
        p.expires = now + Duration::from_millis(STATEMENT_TIMEOUT_MS as u64);
        Ok((p.plan.clone(), p.params.clone()))
    }

    /// Run an update (INSERT, or DDL for admins) and return the rows it changed.
    async fn run_update(&self, plans: Vec<LogicalPlan>) -> Result<i64, Status> {
        let batches = self.run_collect(plans).await?;
        let mut count = 0i64;
        for b in &batches {
            if let Some(c) = b
                .column_by_name("count")
                .and_then(|c| c.as_any().downcast_ref::<arrow::array::UInt64Array>())
            {
                count += c.iter().flatten().sum::<u64>() as i64;
            }
        }
        Ok(count)
    }

    /// Run `plans` to the end under the limits and return their output.
    async fn run_collect(&self, plans: Vec<LogicalPlan>) -> Result<Vec<RecordBatch>, Status> {
        let _permit = self
            .running
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.busy())?;
        let base = self.base(false).await?;
        let ctx = query_context(&base, &self.limits)?;
        let run = async {
            let batches: Vec<RecordBatch> = execute(ctx, plans).try_collect().await?;
            Ok::<_, datafusion::error::DataFusionError>(batches)
        };
        let batches = tokio::time::timeout(self.limits.query_timeout, run)
            .await
            .map_err(|_| Status::deadline_exceeded("the statement ran longer than its limit"))?
            .map_err(df_status)?;
        // Make a write here visible to the next query at once.
        self.base(true).await?;
        Ok(batches)
    }

    fn read_only_refusal(&self) -> Status {
        Status::permission_denied(
            "this server serves its warehouse read-only (the sample); start it with \
             --warehouse URL to accept writes",
        )
    }

    fn busy(&self) -> Status {
        Status::resource_exhausted(format!(
            "the server is running its limit of {} concurrent queries; try again shortly",
            self.limits.max_concurrent_queries
        ))
    }

    fn cancel_info(&self, who: &Identity, info: &FlightInfo) -> Result<CancelStatus, Status> {
        let mut found = false;
        for endpoint in &info.endpoint {
            let Some(ticket) = &endpoint.ticket else {
                continue;
            };
            let Ok(any) = Any::decode(ticket.ticket.clone()) else {
                continue;
            };
            let Ok(Some(t)) = any.unpack::<TicketStatementQuery>() else {
                continue;
            };
            let handle = String::from_utf8_lossy(&t.statement_handle).to_string();
            let owner = self
                .tickets
                .lock()
                .unwrap()
                .get(&handle)
                .map(|t| t.owner.clone());
            if let Some(owner) = owner {
                if owner != who.user {
                    return Err(Status::permission_denied(
                        "this query belongs to another user",
                    ));
                }
            }
            if let Some(notify) = self.cancels.lock().unwrap().get(&handle) {
                notify.notify_one();
                found = true;
            }
            self.tickets.lock().unwrap().remove(&handle);
        }
        Ok(if found {
            CancelStatus::Cancelled
        } else {
            CancelStatus::NotCancellable
        })
    }

    /// The schemas of every catalog that `who` may see, `information_schema` included
    /// (DataFusion answers it beside the catalog rather than inside it).
    async fn visible_schema_providers(
        &self,
        who: &Identity,
    ) -> Result<Vec<(String, String, Arc<dyn SchemaProvider>)>, Status> {
        let base = self.base(false).await?;
        let state = base.state();
        let mut out = vec![];
        for catalog_name in base.catalog_names() {
            let Some(catalog) = base.catalog(&catalog_name) else {
                continue;
            };
            let mut names = catalog.schema_names();
            if state.config().information_schema() && !names.iter().any(|n| n == INFORMATION_SCHEMA)
            {
                names.push(INFORMATION_SCHEMA.to_string());
            }
            for schema_name in names {
                if !can_see_schema(who.role, &catalog_name, &schema_name) {
                    continue;
                }
                let provider = if schema_name == INFORMATION_SCHEMA {
                    state
                        .schema_for_ref(TableReference::full(
                            catalog_name.as_str(),
                            INFORMATION_SCHEMA,
                            "tables",
                        ))
                        .ok()
                } else {
                    catalog.schema(&schema_name)
                };
                if let Some(p) = provider {
                    out.push((catalog_name.clone(), schema_name, p));
                }
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok(out)
    }

    /// The tables `who` may see, as (catalog, schema, table, type, schema).
    async fn visible_tables(
        &self,
        who: &Identity,
    ) -> Result<Vec<(String, String, String, &'static str, SchemaRef)>, Status> {
        let mut out = vec![];
        for (catalog, schema_name, schema) in self.visible_schema_providers(who).await? {
            let mut names = schema.table_names();
            names.sort();
            for table_name in names {
                if let Ok(Some(t)) = schema.table(&table_name).await {
                    out.push((
                        catalog.clone(),
                        schema_name.clone(),
                        table_name,
                        table_type_name(t.table_type()),
                        wire_schema(&t.schema()),
                    ));
                }
            }
        }
        Ok(out)
    }

    async fn visible_schemas(&self, who: &Identity) -> Result<Vec<(String, String)>, Status> {
        Ok(self
            .visible_schema_providers(who)
            .await?
            .into_iter()
            .map(|(c, s, _)| (c, s))
            .collect())
    }

    async fn read_put_batches(
        stream: PeekableFlightDataStream,
    ) -> Result<Vec<RecordBatch>, Status> {
        let decoded = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            stream.map_err(|s| FlightError::Tonic(Box::new(s))),
        );
        decoded.try_collect().await.map_err(|e| match e {
            FlightError::Tonic(s) => *s,
            other => Status::invalid_argument(format!("the uploaded data is not valid: {other}")),
        })
    }
}

#[tonic::async_trait]
impl FlightSqlService for TidepoolFlightSql {
    type FlightService = TidepoolFlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let (who, token) = self.auth.handshake(request.metadata()).await?;
        tracing::info!(user = %who.user, role = %who.role, "logged in");
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        };
        let stream = futures::stream::iter(vec![Ok(response)]);
        let mut resp: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(stream));
        let header = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Status::internal("token is not a valid header"))?;
        resp.metadata_mut().insert("authorization", header);
        Ok(resp)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let who = self.who(&request).await?;
        let plan = self.checked_plan(&who, &query.query).await?;
        let info = self
            .statement_info(&who, vec![plan], request.into_inner())
            .await?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let who = self.who(&request).await?;
        let (plan, params) = self.prepared_plan(&who, &cmd.prepared_statement_handle)?;
        let plans = bind(&plan, &params)?;
        let info = self
            .statement_info(&who, plans, request.into_inner())
            .await?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let who = self.who(&request).await?;
        let handle = String::from_utf8_lossy(&ticket.statement_handle).to_string();
        let (plans, done, schema) = {
            let tickets = self.tickets.lock().unwrap();
            let t = tickets
                .get(&handle)
                .filter(|t| t.expires > Instant::now())
                .ok_or_else(|| Status::not_found("unknown or expired ticket"))?;
            if t.owner != who.user {
                return Err(Status::permission_denied(
                    "this ticket belongs to another user",
                ));
            }
            (t.plans.clone(), t.done.clone(), Arc::clone(&t.schema))
        };
        if let Some(batches) = done {
            return Ok(Response::new(batches_stream(schema, batches)));
        }
        let permit = self
            .running
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.busy())?;
        let base = self.base(false).await?;
        let ctx = query_context(&base, &self.limits)?;
        let cancel = Arc::new(Notify::new());
        self.cancels
            .lock()
            .unwrap()
            .insert(handle.clone(), Arc::clone(&cancel));
        let mut log = QueryLog::new(handle.chars().take(8).collect(), who.user.clone());
        let cancels = Arc::clone(&self.cancels);
        log.on_drop(move || {
            cancels.lock().unwrap().remove(&handle);
        });
        let results = QueryStream::new(
            execute(ctx, plans),
            Arc::clone(&schema),
            self.limits.query_timeout,
            cancel,
            permit,
            log,
        );
        let encoded = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(results)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(encoded)))
    }

    async fn do_put_statement_update(
        &self,
        cmd: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let who = self.who(&request).await?;
        let plan = self.checked_plan(&who, &cmd.query).await?;
        self.run_update(vec![plan]).await
    }

    async fn do_put_statement_ingest(
        &self,
        cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        use arrow_flight::sql::TableExistsOption;
        let who = self.who(&request).await?;
        if self.read_only {
            return Err(self.read_only_refusal());
        }
        if !who.role.can_write() {
            return Err(Status::permission_denied(format!(
                "bulk ingest is not allowed for role {}",
                who.role
            )));
        }
        let catalog_ok = cmd.catalog.as_deref().is_none_or(|c| c == CATALOG);
        let schema_ok = cmd.schema.as_deref().is_none_or(|s| s == SCHEMA);
        if cmd.temporary || !catalog_ok || !schema_ok || cmd.table != EVENTS_TABLE {
            return Err(Status::invalid_argument(format!(
                "bulk ingest appends to {CATALOG}.{SCHEMA}.{EVENTS_TABLE} only, not '{}'",
                cmd.table
            )));
        }
        if let Some(opts) = &cmd.table_definition_options {
            if opts.if_exists() != TableExistsOption::Append
                && opts.if_exists() != TableExistsOption::Unspecified
            {
                return Err(Status::already_exists(format!(
                    "the table {EVENTS_TABLE} exists and only takes appends (ingest mode 'append')"
                )));
            }
        }
        let batches = Self::read_put_batches(request.into_inner()).await?;
        let source = format!("flight ingest by {}", who.user);
        let report =
            tidepool_engine::import::import_batches(&self.warehouse.events(), &batches, &source)
                .await
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.base(true).await?;
        tracing::info!(user = %who.user, rows = report.rows_imported, "ingested");
        Ok(report.rows_imported as i64)
    }

    async fn do_put_prepared_statement_query(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let who = self.who(&request).await?;
        let handle = String::from_utf8_lossy(&cmd.prepared_statement_handle).to_string();
        self.prepared_plan(&who, handle.as_bytes())?;
        let batches = Self::read_put_batches(request.into_inner()).await?;
        if let Some(p) = self.prepared.lock().unwrap().get_mut(&handle) {
            p.params = batches;
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.into_bytes().into()),
        })
    }

    async fn do_put_prepared_statement_update(
        &self,
        cmd: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let who = self.who(&request).await?;
        let (plan, bound) = self.prepared_plan(&who, &cmd.prepared_statement_handle)?;
        let sent = Self::read_put_batches(request.into_inner()).await?;
        let params = if sent.iter().any(|b| b.num_rows() > 0) {
            sent
        } else {
            bound
        };
        let plans = bind(&plan, &params)?;
        self.run_update(plans).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let who = self.who(&request).await?;
        let plan = self.checked_plan(&who, &query.query).await?;
        let dataset = if is_query(&plan) {
            wire_schema(plan.schema().as_arrow())
        } else {
            Arc::new(Schema::empty())
        };
        let parameters = parameter_schema(&plan)?;
        let handle = random_id();
        {
            let mut prepared = self.prepared.lock().unwrap();
            let now = Instant::now();
            prepared.retain(|_, p| p.expires > now);
            prepared.insert(
                handle.clone(),
                Prepared {
                    owner: who.user.clone(),
                    plan,
                    params: vec![],
                    expires: now + Duration::from_millis(STATEMENT_TIMEOUT_MS as u64),
                },
            );
        }
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into_bytes().into(),
            dataset_schema: ipc_schema(&dataset)?,
            parameter_schema: ipc_schema(&parameters)?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        let who = self.who(&request).await?;
        self.prepared_plan(&who, &query.prepared_statement_handle)?;
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).to_string();
        self.prepared.lock().unwrap().remove(&handle);
        Ok(())
    }

    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        let who = self.who(&request).await?;
        let info = FlightInfo::decode(query.info)
            .map_err(|e| Status::invalid_argument(format!("not a FlightInfo: {e}")))?;
        let status = self.cancel_info(&who, &info)?;
        // The legacy result's values follow CancelStatus (1 = cancelled).
        Ok(ActionCancelQueryResult {
            result: status as i32,
        })
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let who = self.who(&request).await?;
        let action = request.into_inner();
        if action.r#type == "CancelFlightInfo" {
            let req = CancelFlightInfoRequest::decode(action.body).map_err(|e| {
                Status::invalid_argument(format!("not a CancelFlightInfoRequest: {e}"))
            })?;
            let info = req
                .info
                .ok_or_else(|| Status::invalid_argument("CancelFlightInfo without a FlightInfo"))?;
            let status = self.cancel_info(&who, &info)?;
            let result = CancelFlightInfoResult {
                status: status as i32,
            };
            let body = arrow_flight::Result {
                body: result.encode_to_vec().into(),
            };
            return Ok(Response::new(Box::pin(futures::stream::iter(vec![Ok(
                body,
            )]))));
        }
        Err(Status::unimplemented(format!(
            "unknown action '{}'",
            action.r#type
        )))
    }

    // Metadata: each call returns a FlightInfo whose ticket is the command itself; the
    // DoGet answers it (after authenticating again) with what the caller may see.

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(request, &schema, query.as_any().encode_to_vec())
            .await
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let who = self.who(&request).await?;
        let mut builder = query.into_builder();
        let mut catalogs: Vec<String> = self
            .visible_schemas(&who)
            .await?
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        catalogs.dedup();
        for c in catalogs {
            builder.append(c);
        }
        let schema = builder.schema();
        let batch = builder.build().map_err(arrow_status)?;
        Ok(Response::new(batches_stream(schema, vec![batch])))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(request, &schema, query.as_any().encode_to_vec())
            .await
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let who = self.who(&request).await?;
        let mut builder = query.into_builder();
        for (catalog, schema) in self.visible_schemas(&who).await? {
            builder.append(catalog, schema);
        }
        let schema = builder.schema();
        let batch = builder.build().map_err(arrow_status)?;
        Ok(Response::new(batches_stream(schema, vec![batch])))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(request, &schema, query.as_any().encode_to_vec())
            .await
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let who = self.who(&request).await?;
        let mut builder = query.into_builder();
        for (catalog, schema, table, kind, table_schema) in self.visible_tables(&who).await? {
            builder
                .append(catalog, schema, table, kind, &table_schema)
                .map_err(arrow_status)?;
        }
        let schema = builder.schema();
        let batch = builder.build().map_err(arrow_status)?;
        Ok(Response::new(batches_stream(schema, vec![batch])))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(request, &schema, query.as_any().encode_to_vec())
            .await
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.who(&request).await?;
        let mut builder = query.into_builder();
        builder.append("TABLE");
        builder.append("VIEW");
        let schema = builder.schema();
        let batch = builder.build().map_err(arrow_status)?;
        Ok(Response::new(batches_stream(schema, vec![batch])))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.info_read_only).schema();
        self.metadata_info(request, &schema, query.as_any().encode_to_vec())
            .await
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let who = self.who(&request).await?;
        let data = if who.role.can_write() && !self.read_only {
            &self.info_writable
        } else {
            &self.info_read_only
        };
        let builder = query.into_builder(data);
        let schema = builder.schema();
        let batch = builder.build().map_err(arrow_status)?;
        Ok(Response::new(batches_stream(schema, vec![batch])))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(
            request,
            &primary_keys_schema(),
            query.as_any().encode_to_vec(),
        )
        .await
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.empty_answer(request, primary_keys_schema()).await
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(
            request,
            &foreign_keys_schema(),
            query.as_any().encode_to_vec(),
        )
        .await
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.empty_answer(request, foreign_keys_schema()).await
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(
            request,
            &foreign_keys_schema(),
            query.as_any().encode_to_vec(),
        )
        .await
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.empty_answer(request, foreign_keys_schema()).await
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(
            request,
            &foreign_keys_schema(),
            query.as_any().encode_to_vec(),
        )
        .await
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.empty_answer(request, foreign_keys_schema()).await
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.xdbc).schema();
        self.metadata_info(request, &schema, query.as_any().encode_to_vec())
            .await
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.who(&request).await?;
        let builder = query.into_builder(&self.xdbc);
        let schema = builder.schema();
        let batch = builder.build().map_err(arrow_status)?;
        Ok(Response::new(batches_stream(schema, vec![batch])))
    }

    async fn do_get_fallback(
        &self,
        request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<DoGetStream>, Status> {
        self.who(&request).await?;
        Err(Status::unimplemented(format!(
            "DoGet for {} is not supported",
            message.type_url
        )))
    }

    async fn get_flight_info_fallback(
        &self,
        cmd: arrow_flight::sql::Command,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.who(&request).await?;
        Err(Status::unimplemented(format!(
            "{} is not supported",
            cmd.type_url()
        )))
    }

    async fn do_put_fallback(
        &self,
        request: Request<PeekableFlightDataStream>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoPutStream>, Status> {
        self.who(&request).await?;
        Err(Status::unimplemented(format!(
            "DoPut for {} is not supported",
            message.type_url
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
