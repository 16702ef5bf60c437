//! A physical optimizer rule and operator: aggregations grouped by one string key (the
//! person key, `coalesce(user_id, anonymous_id)`) find their groups with
//! [`StringKeyMap`] instead of DataFusion's general group-by map.
//!
//! Every per-person query groups millions of rows by a short string. Profiled on 10M
//! time-ordered events, finding the group was half of a plain `count(*) GROUP BY person`
//! (`memcmp` of keys just over the 12 bytes a string view holds inline, into a separate
//! buffer). [`StringKeyAggregateExec`] does exactly what the `AggregateExec` it replaces
//! does in the same mode (the same accumulators, arguments, filters, output schema and
//! partitioning, skipping the partial phase when it does not shrink the input) with the
//! key map of [`crate::key_map`].
//!
//! It takes over only the plain cases: one string group key (no grouping sets), every
//! aggregate with a `GroupsAccumulator`, no `DISTINCT` or `ORDER BY` inside an aggregate,
//! no `LIMIT` pushed into the aggregation and input in no useful order. Unlike
//! `AggregateExec` it does not spill: past the memory limit a partial aggregation emits
//! what it has and starts again, and any other mode fails with the pool's message.
//! `SET tidepool.string_key_aggregation = false` plans DataFusion's own operator.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::plan_rewrite::replace_each;
use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{internal_datafusion_err, internal_err, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{aggregate_expressions, AggregateExec, AggregateMode};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputDistributionRequirements, InputOrderMode,
    PhysicalExpr, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};

use crate::fast_exprs::faster;
use crate::key_map::StringKeyMap;

/// The rule: replaces each `AggregateExec` that [`StringKeyAggregateExec`] can run.
#[derive(Debug, Default)]
pub struct StringKeyAggregates;

impl PhysicalOptimizerRule for StringKeyAggregates {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let on = crate::settings::TidepoolOptions::of(config).string_key_aggregation;
        if !on {
            return Ok(plan);
        }
        replace_each(plan, |agg: &AggregateExec| {
            Ok(StringKeyAggregateExec::try_new(agg)?.map(|exec| Arc::new(exec) as _))
        })
    }

    fn name(&self) -> &str {
        "string_key_aggregation"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// An `AggregateExec` grouped by one string key, run with [`StringKeyMap`].
#[derive(Debug)]
pub struct StringKeyAggregateExec {
    /// The operator this one stands for: its mode, expressions, schema and properties.
    agg: AggregateExec,
    key: Arc<dyn PhysicalExpr>,
    /// Per aggregate, the columns it reads: its arguments, or its state in merge modes.
    args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// Per aggregate, its FILTER (none in merge modes).
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    metrics: ExecutionPlanMetricsSet,
    /// A hash of the plan this operator runs (see [`GROUP_COUNTS`]).
    plan_id: u64,
}

/// How many groups each partition of an aggregation ended with, by the hash of its plan
/// (input files, filters, key and aggregates, as `EXPLAIN` shows them), so that the same
/// query run again starts its key map at that size ([`StringKeyMap::expecting`]), as
/// ClickHouse keeps hash table sizes between runs. A wrong guess only costs time.
static GROUP_COUNTS: std::sync::LazyLock<Mutex<HashMap<(u64, usize), usize>>> =
    std::sync::LazyLock::new(Default::default);
/// Plans × partitions remembered; past that the oldest guesses are all forgotten.
const GROUP_COUNTS_KEPT: usize = 4096;

fn expected_groups(plan_id: u64, partition: usize) -> usize {
    let counts = GROUP_COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    counts.get(&(plan_id, partition)).copied().unwrap_or(0)
}

fn remember_groups(plan_id: u64, partition: usize, groups: usize) {
    let mut counts = GROUP_COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    if counts.len() >= GROUP_COUNTS_KEPT {
        counts.clear();
    }
    counts.insert((plan_id, partition), groups);
}

impl StringKeyAggregateExec {
    /// The operator for `agg`, or None when it is not one of the plain cases.
    pub fn try_new(agg: &AggregateExec) -> Result<Option<Self>> {
        let group = agg.group_expr();
        if group.expr().len() != 1 || group.has_grouping_set() || !group.is_single() {
            return Ok(None);
        }
        let schema = agg.input().schema();
        let key = faster(Arc::clone(&group.expr()[0].0), &schema)?;
        let key_type = key.data_type(&schema)?;
        if !matches!(
            key_type,
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
        ) {
            return Ok(None);
        }
        let plain_aggregates = agg.aggr_expr().iter().all(|a| {
            a.groups_accumulator_supported() && !a.is_distinct() && a.order_bys().is_empty()
        });
        let plain_mode = matches!(
            agg.mode(),
            AggregateMode::Partial
                | AggregateMode::Final
                | AggregateMode::FinalPartitioned
                | AggregateMode::Single
                | AggregateMode::SinglePartitioned
        );
        if !plain_aggregates
            || !plain_mode
            || agg.limit_options().is_some()
            || !agg.dynamic_expressions_produced().is_empty()
            || *agg.input_order_mode() != InputOrderMode::Linear
        {
            return Ok(None);
        }
        // The key is column 0 of a partial aggregation's output, so states start at 1.
        let mut args = aggregate_expressions(agg.aggr_expr(), agg.mode(), 1)?;
        let mut filters = agg.filter_expr().to_vec();
        if !merges_states(agg.mode()) {
            for arg in args.iter_mut().flatten() {
                *arg = faster(Arc::clone(arg), &schema)?;
            }
            for filter in filters.iter_mut().flatten() {
                *filter = faster(Arc::clone(filter), &schema)?;
            }
        }
        Ok(Some(Self {
            agg: agg.clone(),
            key,
            args,
            filters,
            metrics: ExecutionPlanMetricsSet::new(),
            plan_id: {
                use std::hash::{Hash, Hasher};
                let plan = datafusion::physical_plan::displayable(agg as &dyn ExecutionPlan)
                    .indent(true)
                    .to_string();
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                plan.hash(&mut hasher);
                hasher.finish()
            },
        }))
    }

    /// One partition's running aggregation in this operator's mode, fed batch by batch
    /// (also used by [`crate::clustered_aggregate`]).
    pub(crate) fn aggregation(
        &self,
        partition: usize,
        context: &Arc<TaskContext>,
    ) -> Result<Aggregation> {
        let options = &context.session_config().options().execution;
        let accumulators = self
            .agg
            .aggr_expr()
            .iter()
            .map(|a| a.create_groups_accumulator())
            .collect::<Result<Vec<_>>>()?;
        // Skip the partial phase as DataFusion does: when after the probe rows nearly
        // every row is its own group, turn rows straight into states.
        let probe = (*self.agg.mode() == AggregateMode::Partial
            && options.skip_partial_aggregation_probe_ratio_threshold < 1.0)
            .then_some((
                options.skip_partial_aggregation_probe_rows_threshold,
                options.skip_partial_aggregation_probe_ratio_threshold,
            ));
        Ok(Aggregation {
            schema: self.agg.schema(),
            inputs: self.inputs(),
            row_inputs: None,
            merge: self.merges_states(),
            partial_output: *self.agg.mode() == AggregateMode::Partial,
            map: StringKeyMap::new().expecting(expected_groups(self.plan_id, partition)),
            plan_id: self.plan_id,
            partition,
            accumulators,
            groups: Vec::new(),
            batch_size: context.session_config().batch_size(),
            reservation: MemoryConsumer::new(format!("StringKeyAggregate[{partition}]"))
                .register(context.memory_pool()),
            probe,
            rows_seen: 0,
            skipping: false,
            metrics: BaselineMetrics::new(&self.metrics, partition),
            sorted: true,
        })
    }

    /// What this operator reads from each row it is given (states in merge modes,
    /// which have no filters).
    fn inputs(&self) -> Inputs {
        // A literal argument is the same array every batch: made once here, long enough
        // for a batch of the default size, and sliced (an options string of 40 bytes
        // was otherwise copied 8192 times per batch, 4% of a retention matrix's time).
        let literals = self
            .args
            .iter()
            .map(|exprs| {
                exprs
                    .iter()
                    .map(|e| {
                        let literal = e.downcast_ref::<Literal>()?;
                        literal.value().to_array_of_size(LITERAL_ROWS).ok()
                    })
                    .collect()
            })
            .collect();
        Inputs {
            key: Arc::clone(&self.key),
            args: self.args.clone(),
            literals: Arc::new(literals),
            filters: if self.merges_states() {
                vec![None; self.args.len()]
            } else {
                self.filters.clone()
            },
        }
    }

    /// What a first phase reads from an input row: its key, its aggregates' arguments
    /// and filters. For [`crate::clustered_aggregate`], whose input partitions hand
    /// these on ([`Inputs::evaluate_to_batch`]) to a final phase that adds them with
    /// [`Aggregation::push_rows`].
    pub(crate) fn row_inputs(&self) -> Result<Inputs> {
        if self.merges_states() {
            return internal_err!("the rows of a final aggregation are states");
        }
        Ok(self.inputs())
    }

    /// The operator it stands for.
    pub(crate) fn aggregate(&self) -> &AggregateExec {
        &self.agg
    }

    fn merges_states(&self) -> bool {
        merges_states(self.agg.mode())
    }
}

fn merges_states(mode: &AggregateMode) -> bool {
    matches!(mode, AggregateMode::Final | AggregateMode::FinalPartitioned)
}

impl DisplayAs for StringKeyAggregateExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "StringKeyAggregateExec: mode={:?}, gby=[{}], aggr=[",
            self.agg.mode(),
            self.key
        )?;
        let names: Vec<&str> = self.agg.aggr_expr().iter().map(|a| a.name()).collect();
        write!(f, "{}]", names.join(", "))?;
        if matches!(t, DisplayFormatType::Verbose) {
            write!(f, ", schema={:?}", self.agg.schema())?;
        }
        Ok(())
    }
}

impl ExecutionPlan for StringKeyAggregateExec {
    fn name(&self) -> &str {
        "StringKeyAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.agg.properties()
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.agg.input_distribution_requirements()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.agg.input()]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.agg.apply_expressions(f)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let agg = Arc::new(self.agg.clone()).with_new_children(children)?;
        let Some(agg) = agg.downcast_ref::<AggregateExec>() else {
            return internal_err!("AggregateExec::with_new_children gave another plan");
        };
        match Self::try_new(agg)? {
            Some(exec) => Ok(Arc::new(exec)),
            None => Ok(Arc::new(agg.clone())),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.agg.input().execute(partition, Arc::clone(&context))?;
        let state = self.aggregation(partition, &context)?;
        let schema = self.agg.schema();
        let stream = futures::stream::try_unfold(
            (input, state, VecDeque::<RecordBatch>::new(), false),
            |(mut input, mut state, mut ready, mut done)| async move {
                loop {
                    if let Some(batch) = ready.pop_front() {
                        state.metrics.record_output(batch.num_rows());
                        return Ok(Some((batch, (input, state, ready, done))));
                    }
                    if done {
                        state.metrics.done();
                        return Ok(None);
                    }
                    match input.next().await {
                        Some(batch) => state.push(batch?, &mut ready)?,
                        None => {
                            state.emit(&mut ready)?;
                            done = true;
                        }
                    }
                }
            },
        )
        .into_stream()
        .boxed();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// One input batch's group keys, aggregate inputs and per-aggregate filters.
struct Evaluated {
    keys: ArrayRef,
    values: Vec<Vec<ArrayRef>>,
    filters: Vec<Option<BooleanArray>>,
}

/// The expressions an aggregation reads from each row it is given.
#[derive(Clone)]
pub(crate) struct Inputs {
    key: Arc<dyn PhysicalExpr>,
    /// Per aggregate, the columns it reads: its arguments, or its state in merge modes.
    args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// For each literal argument, its value repeated [`LITERAL_ROWS`] times.
    literals: Arc<Vec<Vec<Option<ArrayRef>>>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
}

/// Rows of a literal argument's array made in advance (DataFusion's default batch size;
/// a larger batch makes its own).
const LITERAL_ROWS: usize = 8192;

impl Inputs {
    /// `batch`'s key, arguments and filters as the columns of one batch, key first:
    /// what an input partition hands on (fewer and cheaper columns than the input's,
    /// and the key is computed once).
    pub(crate) fn evaluate_to_batch(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        let mut columns = vec![self.key.evaluate(batch)?.into_array(rows)?];
        // Literal arguments (a funnel's window and mode) are made again where the batch
        // arrives ([`Inputs::from_batch`]) instead of being copied row by row.
        for e in self.args.iter().flatten().filter(|e| !is_literal(e)) {
            columns.push(e.evaluate(batch)?.into_array(rows)?);
        }
        let filters = self.filter_arrays(batch)?;
        columns.extend(
            filters
                .into_iter()
                .flatten()
                .map(|f| Arc::new(f) as ArrayRef),
        );
        let mut fields: Vec<_> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
            .collect();
        // Cheaper to hand on (the key, a string, stays column 0).
        crate::packed_booleans::pack(&mut columns, &mut fields);
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            columns,
            &options,
        )?)
    }

    /// The inverse of [`Inputs::evaluate_to_batch`].
    fn from_batch(&self, batch: &RecordBatch) -> Result<Evaluated> {
        let columns = crate::packed_booleans::unpack(batch.columns(), batch.schema_ref().fields())?;
        let mut columns = columns.into_iter();
        let Some(keys) = columns.next() else {
            return internal_err!("an evaluated batch without its key column");
        };
        let rows = batch.num_rows();
        let values = self.arg_arrays(rows, |_| {
            columns
                .next()
                .ok_or_else(|| internal_datafusion_err!("an evaluated batch without an argument"))
        })?;
        let filters = self
            .filters
            .iter()
            .map(|f| {
                f.as_ref()
                    .and_then(|_| columns.next())
                    .map(|c| c.as_boolean().clone())
            })
            .collect();
        Ok(Evaluated {
            keys,
            values,
            filters,
        })
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<Evaluated> {
        let rows = batch.num_rows();
        Ok(Evaluated {
            keys: self.key.evaluate(batch)?.into_array(rows)?,
            values: self.arg_arrays(rows, |e| e.evaluate(batch)?.into_array(rows))?,
            filters: self.filter_arrays(batch)?,
        })
    }

    /// Per aggregate, the arrays of its arguments for a batch of `rows` rows, in order:
    /// literals from [`Inputs::literals`], the others made by `array`.
    fn arg_arrays(
        &self,
        rows: usize,
        mut array: impl FnMut(&Arc<dyn PhysicalExpr>) -> Result<ArrayRef>,
    ) -> Result<Vec<Vec<ArrayRef>>> {
        self.args
            .iter()
            .zip(self.literals.iter())
            .map(|(exprs, literals)| {
                exprs
                    .iter()
                    .zip(literals)
                    .map(
                        |(e, literal)| match (e.downcast_ref::<Literal>(), literal) {
                            (Some(_), Some(made)) if made.len() >= rows => Ok(made.slice(0, rows)),
                            (Some(l), _) => l.value().to_array_of_size(rows),
                            (None, _) => array(e),
                        },
                    )
                    .collect()
            })
            .collect()
    }

    /// Per aggregate, its FILTER's values for `batch`.
    fn filter_arrays(&self, batch: &RecordBatch) -> Result<Vec<Option<BooleanArray>>> {
        let rows = batch.num_rows();
        self.filters
            .iter()
            .map(|f| {
                f.as_ref()
                    .map(|f| Ok(f.evaluate(batch)?.into_array(rows)?.as_boolean().clone()))
                    .transpose()
            })
            .collect()
    }
}

fn is_literal(expr: &Arc<dyn PhysicalExpr>) -> bool {
    expr.downcast_ref::<Literal>().is_some()
}

/// One partition's running aggregation.
pub(crate) struct Aggregation {
    schema: SchemaRef,
    inputs: Inputs,
    /// A final aggregation that also takes input rows: how to read them (see
    /// [`Aggregation::push_rows`]).
    row_inputs: Option<Inputs>,
    /// Input rows are states to merge (Final modes), not arguments.
    merge: bool,
    /// Output states (Partial mode), not values.
    partial_output: bool,
    map: StringKeyMap,
    /// Where to remember how many groups it ended with (see [`GROUP_COUNTS`]).
    plan_id: u64,
    partition: usize,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// The current batch's group per row (kept to reuse its allocation).
    groups: Vec<usize>,
    batch_size: usize,
    reservation: MemoryReservation,
    /// (rows to see, groups per row above which to skip) for a partial aggregation.
    probe: Option<(usize, f64)>,
    rows_seen: usize,
    skipping: bool,
    metrics: BaselineMetrics,
    /// Keys have come in ascending order so far and are appended without hashing
    /// (see [`StringKeyMap::push_sorted`]).
    sorted: bool,
}

impl Aggregation {
    /// A final aggregation that also accepts rows of the input of `first_phase` with
    /// [`Aggregation::push_rows`] (see [`StringKeyAggregateExec::row_inputs`]).
    pub(crate) fn accepting_rows(mut self, inputs: Inputs) -> Self {
        self.row_inputs = Some(inputs);
        self
    }

    /// Whether every key so far came in ascending order, with no NULL.
    pub(crate) fn keys_sorted(&self) -> bool {
        self.sorted
    }

    /// Each row's group into `groups`: by order while the keys are sorted, else hashed.
    fn assign_groups(
        map: &mut StringKeyMap,
        sorted: &mut bool,
        keys: &dyn datafusion::arrow::array::Array,
        groups: &mut Vec<usize>,
    ) -> Result<()> {
        groups.clear();
        if *sorted {
            if map.push_sorted(keys, groups)? {
                return Ok(());
            }
            *sorted = false;
            map.index_all();
        }
        map.intern(keys, groups)
    }

    /// Input rows that are not states, in a final aggregation made
    /// [`Aggregation::accepting_rows`], as [`Inputs::evaluate_to_batch`] made them: each
    /// row's arguments are accumulated as a single-phase aggregation would, into the
    /// same groups as the merged states.
    pub(crate) fn push_rows(&mut self, batch: RecordBatch) -> Result<()> {
        let time = self.metrics.elapsed_compute().clone();
        let _timer = time.timer();
        let evaluated = match &self.row_inputs {
            Some(inputs) => inputs.from_batch(&batch)?,
            None => return internal_err!("this aggregation takes only states"),
        };
        self.accumulate(evaluated, false)?;
        self.reserve()
    }

    fn accumulate(&mut self, evaluated: Evaluated, merge: bool) -> Result<usize> {
        let Evaluated {
            keys,
            values,
            filters,
        } = evaluated;
        Self::assign_groups(
            &mut self.map,
            &mut self.sorted,
            keys.as_ref(),
            &mut self.groups,
        )?;
        let total = self.map.len();
        for ((acc, values), filter) in self.accumulators.iter_mut().zip(&values).zip(&filters) {
            if merge {
                acc.merge_batch(values, &self.groups, total)?;
            } else {
                acc.update_batch(values, &self.groups, filter.as_ref(), total)?;
            }
        }
        Ok(total)
    }

    fn reserve(&mut self) -> Result<()> {
        let size = self.map.size() + self.accumulators.iter().map(|a| a.size()).sum::<usize>();
        self.reservation.try_resize(size)
    }

    pub(crate) fn push(
        &mut self,
        batch: RecordBatch,
        ready: &mut VecDeque<RecordBatch>,
    ) -> Result<()> {
        let time = self.metrics.elapsed_compute().clone();
        let timer = time.timer();
        let evaluated = self.inputs.evaluate(&batch)?;
        if self.skipping {
            let Evaluated {
                keys,
                values,
                filters,
            } = evaluated;
            let mut columns = vec![keys];
            for ((acc, values), filter) in self.accumulators.iter().zip(&values).zip(&filters) {
                columns.extend(acc.convert_to_state(values, filter.as_ref())?);
            }
            ready.push_back(RecordBatch::try_new(Arc::clone(&self.schema), columns)?);
            return Ok(());
        }
        let total = self.accumulate(evaluated, self.merge)?;
        self.rows_seen += batch.num_rows();
        if let Some((probe_rows, ratio)) = self.probe {
            if self.rows_seen >= probe_rows && total as f64 / self.rows_seen as f64 > ratio {
                self.skipping = true;
                drop(timer);
                return self.emit(ready);
            }
        }
        if let Err(e) = self.reserve() {
            // A partial aggregation may hand on what it has and start again; the final
            // one needs every group at once.
            if self.partial_output {
                drop(timer);
                return self.emit(ready);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Every group, in group order, and an empty map: the groups in `shared` as states
    /// (this aggregation's output schema), the others before and after them as final
    /// values (`values_schema`). For [`crate::clustered_aggregate`].
    pub(crate) fn take_split(
        &mut self,
        shared: std::ops::Range<usize>,
        values_schema: &SchemaRef,
    ) -> Result<(Vec<RecordBatch>, Option<RecordBatch>)> {
        let _timer = self.metrics.elapsed_compute().timer();
        let n = self.map.len();
        remember_groups(self.plan_id, self.partition, n);
        let key_type = self.schema.field(0).data_type().clone();
        let keys = self.map.take_keys(&key_type)?;
        let (mut values, mut states) = (Vec::new(), None);
        let mut done = 0;
        for (end, as_states) in [(shared.start, false), (shared.end, true), (n, false)] {
            let len = end - done;
            if len == 0 {
                continue;
            }
            let emit_to = if end == n {
                EmitTo::All
            } else {
                EmitTo::First(len)
            };
            let mut columns = vec![keys.slice(done, len)];
            for acc in &mut self.accumulators {
                if as_states {
                    columns.extend(acc.state(emit_to)?);
                } else {
                    columns.push(acc.evaluate(emit_to)?);
                }
            }
            if as_states {
                states = Some(RecordBatch::try_new(Arc::clone(&self.schema), columns)?);
            } else {
                values.push(RecordBatch::try_new(Arc::clone(values_schema), columns)?);
            }
            done = end;
        }
        self.reservation.free();
        Ok((values, states))
    }

    /// The number of groups so far.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Group `group`'s key (while [`Self::keys_sorted`], groups are in key order).
    pub(crate) fn key(&self, group: usize) -> &[u8] {
        self.map.key(group)
    }

    /// Every group so far as output batches, and an empty map.
    pub(crate) fn emit(&mut self, ready: &mut VecDeque<RecordBatch>) -> Result<()> {
        let _timer = self.metrics.elapsed_compute().timer();
        if self.map.is_empty() {
            return Ok(());
        }
        remember_groups(self.plan_id, self.partition, self.map.len());
        let key_type = self.schema.field(0).data_type().clone();
        let mut columns = vec![self.map.take_keys(&key_type)?];
        for acc in &mut self.accumulators {
            if self.partial_output {
                columns.extend(acc.state(EmitTo::All)?);
            } else {
                columns.push(acc.evaluate(EmitTo::All)?);
            }
        }
        let all = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        let mut offset = 0;
        while offset < all.num_rows() {
            let len = self.batch_size.min(all.num_rows() - offset);
            ready.push_back(all.slice(offset, len));
            offset += len;
        }
        self.reservation.free();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_random::Random;
    use datafusion::arrow::array::{Int64Array, LargeStringArray, StringArray, StringViewArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::common::tree_node::TreeNode;
    use datafusion::datasource::MemTable;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// Keys of every length class (inline in a view, packed, long), NULLs, and runs.
    fn keys(rng: &mut Random, n: usize) -> Vec<Option<String>> {
        let pool: Vec<String> = (0..400)
            .map(|i| {
                let len = [1, 9, 12, 13, 15, 16, 24][i % 7];
                let id = format!("{i:x}");
                format!("{id:x>len$}")
            })
            .collect();
        let mut out: Vec<Option<String>> = Vec::with_capacity(n);
        while out.len() < n {
            let key = (rng.below(30) != 0).then(|| pool[rng.below(400) as usize].clone());
            for _ in 0..=rng.below(4) {
                out.push(key.clone());
            }
        }
        out.truncate(n);
        out
    }

    async fn session(key_type: DataType, partitions: usize, on: bool) -> SessionContext {
        let ctx = crate::test_session::session(
            SessionConfig::new()
                .with_target_partitions(partitions)
                .with_batch_size(64),
            |o| o.string_key_aggregation = on,
            |b| b.with_physical_optimizer_rule(Arc::new(StringKeyAggregates)),
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", key_type.clone(), true),
            Field::new("ts", DataType::Int64, false),
            Field::new("v", DataType::Int64, true),
        ]));
        let mut rng = Random(11);
        let parts: Vec<Vec<RecordBatch>> = (0..3)
            .map(|_| {
                (0..4)
                    .map(|_| {
                        let k = keys(&mut rng, 500);
                        let k: ArrayRef = match key_type {
                            DataType::Utf8View => Arc::new(StringViewArray::from_iter(k)),
                            DataType::Utf8 => Arc::new(StringArray::from_iter(k)),
                            _ => Arc::new(LargeStringArray::from_iter(k)),
                        };
                        let ts =
                            Int64Array::from_iter_values((0..500).map(|_| rng.below(100) as i64));
                        let v = Int64Array::from_iter(
                            (0..500).map(|_| (rng.below(8) != 0).then(|| rng.below(10) as i64)),
                        );
                        RecordBatch::try_new(
                            Arc::clone(&schema),
                            vec![k, Arc::new(ts), Arc::new(v)],
                        )
                        .unwrap()
                    })
                    .collect()
            })
            .collect();
        let table = MemTable::try_new(schema, parts).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx
    }

    /// The query's rows, sorted, and its plan.
    async fn run(ctx: &SessionContext, sql: &str) -> (Vec<String>, String) {
        let df = ctx.sql(sql).await.unwrap();
        let plan = df.clone().create_physical_plan().await.unwrap();
        let plan = displayable(plan.as_ref()).indent(false).to_string();
        let batches = df.collect().await.unwrap();
        let text = pretty_format_batches(&batches).unwrap().to_string();
        let mut rows: Vec<String> = text.lines().map(str::to_string).collect();
        rows.sort();
        (rows, plan)
    }

    const QUERIES: [&str; 7] = [
        // DataFusion plans this as a group by (k, v) under a group by k.
        "SELECT k, count(DISTINCT v) FROM t GROUP BY k",
        "SELECT k, count(*), sum(v), count(v) FILTER (WHERE v > 5), min(ts), max(v) FROM t GROUP BY k",
        "SELECT k, window_funnel(10, '', ts, v > 2, v > 5, v > 7) AS level FROM t GROUP BY k",
        "SELECT k, retention(v = 1, v = 2), sequence_count('(?1)(?2)', ts, v = 1, v = 2) FROM t GROUP BY k",
        "SELECT count(*), sum(c), count(k) FROM (SELECT k, count(*) AS c FROM t GROUP BY k)",
        "SELECT substr(k, 2) AS s, avg(v) FROM t GROUP BY substr(k, 2)",
        "SELECT k FROM t GROUP BY k",
    ];

    #[tokio::test]
    async fn same_answers_as_datafusion_in_every_mode_and_key_type() {
        for key_type in [DataType::Utf8View, DataType::Utf8, DataType::LargeUtf8] {
            // One partition plans Partial + Final over one stream; three, Partial +
            // FinalPartitioned across a shuffle.
            for partitions in [1, 3] {
                let ours = session(key_type.clone(), partitions, true).await;
                let theirs = session(key_type.clone(), partitions, false).await;
                for sql in QUERIES {
                    let (got, plan) = run(&ours, sql).await;
                    let (want, their_plan) = run(&theirs, sql).await;
                    assert!(plan.contains("StringKeyAggregateExec"), "{plan}");
                    assert!(
                        !their_plan.contains("StringKeyAggregateExec"),
                        "{their_plan}"
                    );
                    assert_eq!(got, want, "{key_type} / {partitions} partitions: {sql}");
                }
            }
        }
    }

    #[tokio::test]
    async fn skipped_partial_aggregation_gives_the_same_answers() {
        let ours = session(DataType::Utf8View, 3, true).await;
        let theirs = session(DataType::Utf8View, 3, false).await;
        for ctx in [&ours, &theirs] {
            // Skip after the first 100 rows whatever the ratio of groups to rows.
            ctx.sql("SET datafusion.execution.skip_partial_aggregation_probe_rows_threshold = 100")
                .await
                .unwrap();
            ctx.sql(
                "SET datafusion.execution.skip_partial_aggregation_probe_ratio_threshold = 0.0",
            )
            .await
            .unwrap();
        }
        for sql in QUERIES {
            assert_eq!(run(&ours, sql).await.0, run(&theirs, sql).await.0, "{sql}");
        }
    }

    #[tokio::test]
    async fn a_query_run_again_expects_the_groups_it_ended_with() {
        let ctx = session(DataType::Utf8View, 1, true).await;
        let sql = "SELECT k, count(*) FROM t GROUP BY k";
        let plan_ids = |plan: &Arc<dyn ExecutionPlan>| {
            let mut ids = vec![];
            plan.apply(|node| {
                if let Some(exec) = node.downcast_ref::<StringKeyAggregateExec>() {
                    ids.push(exec.plan_id);
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
            ids
        };
        let session = &ctx;
        let physical_plan = |sql| async move {
            let df = session.sql(sql).await.unwrap();
            df.create_physical_plan().await.unwrap()
        };
        let plan = physical_plan(sql).await;
        // The final aggregation (the partial one is below it), over one partition.
        let final_id = plan_ids(&plan)[0];
        datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .unwrap();
        let count = "SELECT count(DISTINCT k) + max(CASE WHEN k IS NULL THEN 1 ELSE 0 END) FROM t";
        let groups: usize = run(&ctx, count)
            .await
            .0
            .iter()
            .find_map(|line| line.trim_matches(|c| c == '|' || c == ' ').parse().ok())
            .unwrap();
        assert_eq!(expected_groups(final_id, 0), groups);
        // The same query planned again is the same plan, and will expect as many.
        assert_eq!(plan_ids(&physical_plan(sql).await)[0], final_id);
    }

    #[tokio::test]
    async fn declines_what_it_does_not_run() {
        let ctx = session(DataType::Utf8View, 3, true).await;
        for sql in [
            "SELECT k, array_agg(v ORDER BY ts) FROM t GROUP BY k",
            "SELECT k, v, count(*) FROM t GROUP BY k, v",
            "SELECT v, count(*) FROM t GROUP BY v",
        ] {
            let (_, plan) = run(&ctx, sql).await;
            assert!(!plan.contains("StringKeyAggregateExec"), "{sql}\n{plan}");
        }
    }

    #[tokio::test]
    async fn past_the_memory_limit_a_clear_error_not_a_crash() {
        use datafusion::execution::runtime_env::RuntimeEnvBuilder;
        let ctx = session(DataType::Utf8View, 1, true).await;
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(16 << 10, 1.0)
            .build_arc()
            .unwrap();
        let state = SessionStateBuilder::new_from_existing(ctx.state())
            .with_runtime_env(runtime)
            .build();
        let ctx = SessionContext::new_with_state(state);
        let sql = "SELECT k, window_funnel(10, '', ts, v > 2) FROM t GROUP BY k";
        let err = ctx.sql(sql).await.unwrap().collect().await.unwrap_err();
        assert!(err.to_string().contains("Resources exhausted"), "{err}");
    }
}
