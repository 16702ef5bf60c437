//! A physical optimizer rule and operator: an aggregation by the person key over input
//! partitions that each hold people sorted by key finishes most people where it read
//! them, without a second phase.
//!
//! Events are often stored sorted by person (and time), and DataFusion reads a file as
//! a few partitions of consecutive row groups, so each partition sees whole people in
//! ascending key order, and only a person at the edge between two partitions is split.
//! The two-phase plan, `Final(Repartition(Hash(key), Partial(input)))`, still writes
//! every person's state, shuffles it and merges it again in a second hash table: on 10M
//! person-sorted events that was about a third of the CPU time of a funnel.
//!
//! [`ClusteredAggregateExec`] runs each input partition's aggregation on a task of its
//! own. While a partition's keys come in ascending order it assigns groups by comparing
//! each key with the last one (no hashing; see [`StringKeyMap::push_sorted`]); at the
//! first key out of order it goes on as an ordinary hash aggregation. When every
//! partition has read all its input, each one knows which of its people can also be in
//! another partition: those whose key lies within another sorted partition's first and
//! last key, or all of them when another partition was not sorted. Those are sent as
//! states to the output partition of their key's hash, which merges them as the final
//! phase would; every other person's value is computed in place and sent to that same
//! output partition. On time-ordered data nothing is sorted, every person is merged, and
//! the work is that of the two-phase plan; when the plan replaced was one phase
//! (`SinglePartitioned`, see [`crate::single_phase`]), an unsorted partition instead
//! hands its rows on unaggregated from the first batch out of order, and the output
//! partition aggregates them once, as that plan did (merging it with a partial phase
//! had made attribution 25% slower and doubled its memory on time-ordered data). The
//! output is hash-partitioned by the key exactly as the final aggregation's was, unless
//! nothing above relies on that (see [`values_in_place`]): then the people finished in
//! an input partition stay in the output partition of the same number. A filter right
//! below passes its batches on uncopied (see [`uncoalesced_filters`]).
//!
//! `SET tidepool.clustered_aggregation = false` keeps the two-phase plan.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::BatchCoalescer;
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::common::config::ConfigOptions;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{internal_datafusion_err, internal_err, DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{Distribution, Partitioning};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::repartition::{BatchPartitioner, RepartitionExec};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    InputDistributionRequirements, PhysicalExpr, PlanProperties,
};
use futures::channel::mpsc;
use futures::{FutureExt, StreamExt, TryStreamExt};

use crate::key_routing::{KeySplitter, Seeds};
use crate::string_key_aggregate::{Aggregation, Inputs, StringKeyAggregateExec};

/// The rule: replaces `Final(Repartition(Hash(key), Partial(input)))` and
/// `SinglePartitioned(Repartition(Hash(key), input))` by a [`ClusteredAggregateExec`]
/// when [`StringKeyAggregateExec`] can run both phases.
#[derive(Debug, Default)]
pub struct ClusteredAggregates;

impl PhysicalOptimizerRule for ClusteredAggregates {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let options = crate::settings::TidepoolOptions::of(config);
        if !options.clustered_aggregation || !options.string_key_aggregation {
            return Ok(plan);
        }
        let plan = plan.transform_up(rewrite)?.data;
        let plan = values_in_place(plan, false)?.data;
        Ok(plan.transform_up(uncoalesced_filters)?.data)
    }

    fn name(&self) -> &str {
        "clustered_aggregates"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

fn rewrite(plan: Arc<dyn ExecutionPlan>) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    let Some(top) = plan.downcast_ref::<AggregateExec>() else {
        return Ok(Transformed::no(plan));
    };
    let Some(shuffle) = top.input().downcast_ref::<RepartitionExec>() else {
        return Ok(Transformed::no(plan));
    };
    if !matches!(shuffle.partitioning(), Partitioning::Hash(..)) || shuffle.preserve_order() {
        return Ok(Transformed::no(plan));
    }
    let partial = match top.mode() {
        AggregateMode::FinalPartitioned => match shuffle.input().downcast_ref::<AggregateExec>() {
            Some(p) if *p.mode() == AggregateMode::Partial => p.clone(),
            _ => return Ok(Transformed::no(plan)),
        },
        AggregateMode::SinglePartitioned => AggregateExec::try_new(
            AggregateMode::Partial,
            top.group_expr().clone(),
            top.aggr_expr().to_vec(),
            top.filter_expr().to_vec(),
            Arc::clone(shuffle.input()),
            top.input_schema(),
        )?,
        _ => return Ok(Transformed::no(plan)),
    };
    let one_phase = *top.mode() == AggregateMode::SinglePartitioned;
    match ClusteredAggregateExec::try_new(
        partial,
        top.schema(),
        Arc::clone(top.properties()),
        one_phase,
    )? {
        Some(exec) => Ok(Transformed::yes(Arc::new(exec))),
        None => Ok(Transformed::no(plan)),
    }
}

/// A filter right below a [`ClusteredAggregateExec`] passes on each filtered batch as it
/// is. `FilterExec` copies its output into batches of the session's batch size; below
/// an aggregation that is wasted work (on person-sorted events the copies of a
/// selective `WHERE`'s string columns were a tenth of `attribution_last`'s CPU time),
/// and when rows are handed on unaggregated [`Router::send_rows`] gathers small batches
/// itself. (A coalescer whose target is one row lets every batch through: arrow passes
/// on unchanged each batch larger than half its target.)
fn uncoalesced_filters(
    plan: Arc<dyn ExecutionPlan>,
) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    let Some(exec) = plan.downcast_ref::<ClusteredAggregateExec>() else {
        return Ok(Transformed::no(plan));
    };
    let Some(filter) = exec.input().downcast_ref::<FilterExec>() else {
        return Ok(Transformed::no(plan));
    };
    if filter.batch_size() == 1 || filter.fetch().is_some() {
        return Ok(Transformed::no(plan));
    }
    let filter: Arc<dyn ExecutionPlan> = Arc::new(filter.with_batch_size(1)?);
    Ok(Transformed::yes(replace_children_if_necessary(
        plan,
        vec![filter],
    )?))
}

/// Walks down from the root and gives each [`ClusteredAggregateExec`] whose output's
/// hash partitioning nothing above relies on its values in place. `needed`: the
/// partitioning of `plan`'s output may be relied on (by an operator that requires a
/// hash partitioning, through operators that pass it on).
fn values_in_place(
    plan: Arc<dyn ExecutionPlan>,
    needed: bool,
) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    let mut changed = false;
    let mut plan = plan;
    if let Some(exec) = plan.downcast_ref::<ClusteredAggregateExec>() {
        if !needed && !exec.values_in_place {
            plan = Arc::new(exec.with_values_in_place()?);
            changed = true;
        }
    }
    let requirements = plan.input_distribution_requirements();
    // An operator whose output is hash-partitioned may have that partitioning from its
    // input (a repartition, or a clustered aggregation, which routes by its own key,
    // makes its own). Operators of several inputs (joins, unions, interleaves) may need
    // them partitioned alike: left as they are.
    let passes_on = matches!(plan.output_partitioning(), Partitioning::Hash(..))
        && plan.downcast_ref::<RepartitionExec>().is_none()
        && plan.downcast_ref::<ClusteredAggregateExec>().is_none();
    let several = plan.children().len() > 1;
    let mut children_changed = false;
    let children = plan
        .children()
        .into_iter()
        .enumerate()
        .map(|(i, child)| {
            let required = !matches!(
                requirements.child_distribution(i),
                Some(Distribution::UnspecifiedDistribution | Distribution::SinglePartition)
            );
            let child_needed = required || several || (passes_on && needed);
            let child = values_in_place(Arc::clone(child), child_needed)?;
            children_changed |= child.transformed;
            Ok(child.data)
        })
        .collect::<Result<Vec<_>>>()?;
    if !children_changed {
        return Ok(Transformed::new_transformed(plan, changed));
    }
    Ok(Transformed::yes(replace_children_if_necessary(
        plan, children,
    )?))
}

/// See the module docs.
#[derive(Debug)]
pub struct ClusteredAggregateExec {
    /// The first phase over the input, and the final phase over its states.
    partial: StringKeyAggregateExec,
    merge: StringKeyAggregateExec,
    /// Those of the aggregation replaced: output schema, hash partitioning by the key.
    hashed: Arc<PlanProperties>,
    /// What it declares: `hashed`, or with `values_in_place` the same with the
    /// partitioning unknown.
    properties: Arc<PlanProperties>,
    /// Nothing above relies on the output being partitioned by the key's hash: people
    /// finished where they were read stay in that partition's output instead of being
    /// hashed and copied into another's (states still meet by the key's hash). With
    /// hundreds of thousands of people, copying a list per person was 9% of a
    /// retention matrix on person-sorted data.
    values_in_place: bool,
    partition_exprs: Vec<Arc<dyn PhysicalExpr>>,
    partitions: usize,
    /// The plan replaced ran in one phase (`SinglePartitioned`): an input partition
    /// whose keys are not sorted hands its rows on unaggregated, as that plan's
    /// shuffle did, rather than aggregating them twice.
    one_phase: bool,
    /// The running execution, started by the first `execute`.
    execution: Mutex<Option<Arc<Execution>>>,
    metrics: ExecutionPlanMetricsSet,
}

impl ClusteredAggregateExec {
    /// The operator for `partial` followed by its final aggregation, with the output
    /// `schema` and `properties` of the plan it replaces, or None when it is not one of
    /// the plain cases.
    fn try_new(
        partial: AggregateExec,
        schema: datafusion::arrow::datatypes::SchemaRef,
        properties: Arc<PlanProperties>,
        one_phase: bool,
    ) -> Result<Option<Self>> {
        let Partitioning::Hash(exprs, partitions) = properties.output_partitioning() else {
            return Ok(None);
        };
        let final_agg = AggregateExec::try_new(
            AggregateMode::FinalPartitioned,
            partial.group_expr().as_final(),
            partial.aggr_expr().to_vec(),
            vec![None; partial.aggr_expr().len()],
            Arc::new(partial.clone()),
            partial.input_schema(),
        )?;
        if final_agg.schema() != schema {
            return Ok(None);
        }
        let (Some(partial), Some(merge)) = (
            StringKeyAggregateExec::try_new(&partial)?,
            StringKeyAggregateExec::try_new(&final_agg)?,
        ) else {
            return Ok(None);
        };
        Ok(Some(Self {
            partial,
            merge,
            partition_exprs: exprs.clone(),
            partitions: *partitions,
            one_phase,
            hashed: Arc::clone(&properties),
            properties,
            values_in_place: false,
            execution: Mutex::new(None),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    /// The same operator, leaving values in the partition that finished them.
    fn with_values_in_place(&self) -> Result<Self> {
        let mut exec = Self::try_new(
            self.partial.aggregate().clone(),
            self.schema(),
            Arc::clone(&self.hashed),
            self.one_phase,
        )?
        .ok_or_else(|| internal_datafusion_err!("ClusteredAggregateExec no longer applies"))?;
        exec.properties = Arc::new(
            self.hashed
                .as_ref()
                .clone()
                .with_partitioning(Partitioning::UnknownPartitioning(self.partitions)),
        );
        exec.values_in_place = true;
        Ok(exec)
    }

    fn input(&self) -> &Arc<dyn ExecutionPlan> {
        self.partial.aggregate().input()
    }

    /// Start one task per input partition.
    fn start(&self, context: &Arc<TaskContext>) -> Result<Execution> {
        let inputs = self.input().output_partitioning().partition_count();
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..self.partitions).map(|_| mpsc::unbounded()).unzip();
        let meeting = Arc::new(Meeting {
            ranges: Mutex::new(vec![KeyRange::Nothing; inputs]),
            barrier: tokio::sync::Barrier::new(inputs),
        });
        let mut tasks = Vec::with_capacity(inputs);
        // Every input task splits by the same hash, so a person's rows and states meet.
        let seeds = Seeds::random();
        let split = |exprs: Vec<Arc<dyn PhysicalExpr>>, i: usize| -> Result<Split> {
            let time = MetricBuilder::new(&self.metrics).subset_time("route_time", i);
            Ok(match exprs.as_slice() {
                // Nothing relies on DataFusion's partitioning by the key: our own.
                [key] if self.values_in_place => Split::Own {
                    key: Arc::clone(key),
                    splitter: KeySplitter::new(self.partitions, seeds),
                    time,
                },
                _ => Split::DataFusion(BatchPartitioner::new_hash_partitioner(
                    exprs,
                    self.partitions,
                    time,
                )?),
            })
        };
        for i in 0..inputs {
            let input = self.input().execute(i, Arc::clone(context))?;
            let aggregation = self.partial.aggregation(i, context)?;
            // One-phase plans: evaluated input rows, split by their key (column 0) as
            // states of the same key are.
            let row_routing = if self.one_phase {
                let key: Arc<dyn PhysicalExpr> = Arc::new(Column::new("c0", 0));
                Some((self.partial.row_inputs()?, split(vec![key], i)?))
            } else {
                None
            };
            let router = Router {
                partitioner: split(self.partition_exprs.clone(), i)?,
                row_routing,
                rows: MetricBuilder::new(&self.metrics).counter("rows_sent_unaggregated", i),
                gathering: None,
                senders: senders.clone(),
                batch_size: context.session_config().batch_size(),
                finished: MetricBuilder::new(&self.metrics).counter("groups_finished_in_place", i),
                merged: MetricBuilder::new(&self.metrics).counter("groups_sent_to_merge", i),
                values_to: self.values_in_place.then_some(i % self.partitions),
            };
            let values_schema = self.schema();
            let meeting = Arc::clone(&meeting);
            tasks.push(SpawnedTask::spawn(async move {
                aggregate_partition(i, input, aggregation, router, meeting, values_schema).await
            }));
        }
        Ok(Execution {
            outputs: receivers.into_iter().map(|r| Mutex::new(Some(r))).collect(),
            _tasks: tasks,
        })
    }
}

/// What the input tasks send an output partition.
enum Message {
    /// People finished where they were read.
    Values(RecordBatch),
    /// States of people another partition may also hold, to merge.
    States(RecordBatch),
    /// Input rows of an unsorted partition, to aggregate (one-phase plans only).
    Rows(RecordBatch),
}

type Sender = mpsc::UnboundedSender<Result<Message>>;

impl fmt::Debug for Execution {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Execution({} outputs)", self.outputs.len())
    }
}

struct Execution {
    outputs: Vec<Mutex<Option<mpsc::UnboundedReceiver<Result<Message>>>>>,
    /// Aborted when dropped.
    _tasks: Vec<SpawnedTask<()>>,
}

/// The keys an input partition may hold, told to the others once it has read all.
#[derive(Clone, Debug)]
enum KeyRange {
    Nothing,
    /// Sorted: its first and last key.
    Between(Vec<u8>, Vec<u8>),
    /// Not sorted, or it has already sent states.
    Everything,
}

struct Meeting {
    ranges: Mutex<Vec<KeyRange>>,
    barrier: tokio::sync::Barrier,
}

/// How batches are split among the output partitions by their key.
enum Split {
    /// By DataFusion's hash, as a repartition by the key would: what the declared
    /// output partitioning promises.
    DataFusion(BatchPartitioner),
    /// By [`crate::key_routing`]'s, cheaper, when the output's partitioning is unknown
    /// (values in place); `key` is evaluated on each batch.
    Own {
        key: Arc<dyn PhysicalExpr>,
        splitter: KeySplitter,
        time: Time,
    },
}

impl Split {
    fn split(
        &mut self,
        batch: RecordBatch,
        send: impl FnMut(usize, RecordBatch) -> Result<()>,
    ) -> Result<()> {
        match self {
            Split::DataFusion(partitioner) => partitioner.partition(batch, send),
            Split::Own {
                key,
                splitter,
                time,
            } => {
                let _timer = time.timer();
                let keys = key.evaluate(&batch)?.into_array(batch.num_rows())?;
                splitter.split(batch, &keys, send)
            }
        }
    }
}

/// Sends batches to the output partition of each row's key.
struct Router {
    partitioner: Split,
    /// For one-phase plans: what to evaluate of each input row, and how to split the
    /// evaluated rows.
    row_routing: Option<(Inputs, Split)>,
    rows: Count,
    /// Input rows gathered to be handed on together (see [`Router::send_rows`]).
    gathering: Option<BatchCoalescer>,
    senders: Vec<Sender>,
    batch_size: usize,
    /// Rows sent as values, and as states.
    finished: Count,
    merged: Count,
    /// Values go to this output partition, not by their key's hash (see
    /// [`ClusteredAggregateExec::values_in_place`]).
    values_to: Option<usize>,
}

impl Router {
    fn send(&mut self, batch: &RecordBatch, states: bool) -> Result<()> {
        let Self {
            partitioner,
            senders,
            batch_size,
            finished,
            merged,
            values_to,
            ..
        } = self;
        if states {
            merged.add(batch.num_rows());
        } else {
            finished.add(batch.num_rows());
        }
        let mut offset = 0;
        if let (false, Some(p)) = (states, *values_to) {
            while offset < batch.num_rows() {
                let len = (*batch_size).min(batch.num_rows() - offset);
                let _ = senders[p].unbounded_send(Ok(Message::Values(batch.slice(offset, len))));
                offset += len;
            }
            return Ok(());
        }
        while offset < batch.num_rows() {
            let len = (*batch_size).min(batch.num_rows() - offset);
            partitioner.split(batch.slice(offset, len), |p, part| {
                let message = if states {
                    Message::States(part)
                } else {
                    Message::Values(part)
                };
                // A closed channel is an output no longer read: nothing to do.
                let _ = senders[p].unbounded_send(Ok(message));
                Ok(())
            })?;
            offset += len;
        }
        Ok(())
    }

    /// Input rows to be aggregated by the output partition of their key (one-phase
    /// plans only).
    ///
    /// Batches of fewer than half [`Router::batch_size`] rows (what a selective filter
    /// below passes on, its own coalescing being off: see [`uncoalesced_filters`]) are
    /// gathered first, as that filter would have, so that each hand-on moves a full
    /// batch.
    fn send_rows(&mut self, batch: RecordBatch) -> Result<()> {
        self.rows.add(batch.num_rows());
        let batch_size = self.batch_size;
        let coalescer = self.gathering.get_or_insert_with(|| {
            BatchCoalescer::new(batch.schema(), batch_size)
                .with_biggest_coalesce_batch_size(Some(batch_size / 2))
        });
        coalescer.push_batch(batch)?;
        self.route_gathered()
    }

    /// Hands on what [`Router::send_rows`] still holds, at the end of the input.
    fn flush_rows(&mut self) -> Result<()> {
        if let Some(coalescer) = &mut self.gathering {
            coalescer.finish_buffered_batch()?;
        }
        self.route_gathered()
    }

    fn route_gathered(&mut self) -> Result<()> {
        let Some(coalescer) = &mut self.gathering else {
            return Ok(());
        };
        let Some((inputs, partitioner)) = &mut self.row_routing else {
            return internal_err!("rows are routed only in one-phase plans");
        };
        let senders = &self.senders;
        while let Some(batch) = coalescer.next_completed_batch() {
            let rows = inputs.evaluate_to_batch(&batch)?;
            match &mut *partitioner {
                // Hashed as strings, then packed (see [`with_packed_keys`]).
                Split::DataFusion(by_hash) => by_hash.partition(rows, |p, part| {
                    let _ = senders[p].unbounded_send(Ok(Message::Rows(with_packed_keys(part)?)));
                    Ok(())
                })?,
                // Packed once, then split by the packed keys.
                own => own.split(with_packed_keys(rows)?, |p, part| {
                    let _ = senders[p].unbounded_send(Ok(Message::Rows(part)));
                    Ok(())
                })?,
            }
        }
        Ok(())
    }

    /// Every output partition fails with `e`.
    fn fail(&self, e: DataFusionError) {
        let e = Arc::new(e);
        for sender in &self.senders {
            let _ = sender.unbounded_send(Err(DataFusionError::Shared(Arc::clone(&e))));
        }
    }
}

/// Evaluated `rows` with their key (column 0) packed where it can be, for the map of the
/// partition they go to (see [`crate::key_map::packed_keys`]).
fn with_packed_keys(rows: RecordBatch) -> Result<RecordBatch> {
    let Some(packed) = crate::key_map::packed_keys(rows.column(0).as_ref()) else {
        return Ok(rows);
    };
    let mut fields = rows.schema().fields().to_vec();
    fields[0] = Arc::new(Field::new("packed_key", packed.data_type().clone(), true));
    let mut columns = rows.columns().to_vec();
    columns[0] = packed;
    let options = RecordBatchOptions::new().with_row_count(Some(rows.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &options,
    )?)
}

/// Input partition `i`: aggregate it, meet the others, then send each person on.
async fn aggregate_partition(
    i: usize,
    mut input: SendableRecordBatchStream,
    mut aggregation: Aggregation,
    mut router: Router,
    meeting: Arc<Meeting>,
    values_schema: datafusion::arrow::datatypes::SchemaRef,
) {
    let read = AssertUnwindSafe(async {
        // Set once states or rows have been sent (memory limit, partial aggregation
        // skipped, or rows handed on unaggregated).
        let mut sent_states = false;
        let mut ready = VecDeque::new();
        let mut routing_rows = false;
        while let Some(batch) = input.next().await {
            let batch = batch?;
            if routing_rows {
                router.send_rows(batch)?;
                continue;
            }
            aggregation.push(batch, &mut ready)?;
            if router.row_routing.is_some() && !aggregation.keys_sorted() {
                // Not sorted by person: what was aggregated so far goes on as states,
                // the rest as rows, aggregated once where they arrive.
                aggregation.emit(&mut ready)?;
                routing_rows = true;
                sent_states = true;
            }
            for states in ready.drain(..) {
                sent_states = true;
                router.send(&states, true)?;
            }
        }
        if routing_rows {
            router.flush_rows()?;
        }
        Ok::<bool, DataFusionError>(sent_states)
    })
    .catch_unwind()
    .await;
    drop(input);
    let read = match read {
        Ok(result) => result,
        Err(_) => Err(DataFusionError::Execution(
            "an aggregation task panicked".to_string(),
        )),
    };
    let mine = match &read {
        Ok(false) if aggregation.keys_sorted() && aggregation.len() > 0 => KeyRange::Between(
            aggregation.key(0).to_vec(),
            aggregation.key(aggregation.len() - 1).to_vec(),
        ),
        Ok(false) if aggregation.keys_sorted() => KeyRange::Nothing,
        Ok(_) => KeyRange::Everything,
        Err(_) => KeyRange::Nothing,
    };
    meeting.ranges.lock().unwrap()[i] = mine.clone();
    meeting.barrier.wait().await;
    // The last partition to arrive woke the others into its worker's slot for the next
    // task, which no other worker may take: they would run only after it has sent all
    // its people, one core idle meanwhile.
    run_woken_tasks_elsewhere().await;
    let ranges = meeting.ranges.lock().unwrap().clone();
    let result = read.and_then(|_| {
        let shared = match mine {
            KeyRange::Between(..) => shared_groups(&aggregation, i, &ranges),
            _ => 0..aggregation.len(),
        };
        let (values, states) = aggregation.take_split(shared, &values_schema)?;
        for batch in &values {
            router.send(batch, false)?;
        }
        if let Some(states) = states {
            router.send(&states, true)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        router.fail(e);
    }
}

/// Let the other workers take the tasks this one has just woken. Tokio runs a task
/// woken from a worker next on that same worker, and no other may steal it meanwhile;
/// a task that wakes itself while it runs goes to the back of the worker's queue
/// instead, from where the idle workers (told of it) take it or the task it woke.
async fn run_woken_tasks_elsewhere() {
    let mut woke = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut woke, true) {
            return std::task::Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// The groups (sorted by key) of partition `i` that another partition may also hold:
/// one span, from the first to the last key within another partition's range.
fn shared_groups(aggregation: &Aggregation, i: usize, ranges: &[KeyRange]) -> Range<usize> {
    let n = aggregation.len();
    // The first group whose key is not before `bound` (or after it, with `inclusive`).
    let first_past = |bound: &[u8], inclusive: bool| {
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let key = aggregation.key(mid);
            if key < bound || (inclusive && key == bound) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    };
    let (mut start, mut end) = (n, 0);
    for (j, range) in ranges.iter().enumerate() {
        match range {
            _ if j == i => {}
            KeyRange::Nothing => {}
            KeyRange::Everything => return 0..n,
            KeyRange::Between(first, last) => {
                let (a, b) = (first_past(first, false), first_past(last, true));
                if a < b {
                    start = start.min(a);
                    end = end.max(b);
                }
            }
        }
    }
    if start < end {
        start..end
    } else {
        0..0
    }
}

impl DisplayAs for ClusteredAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let agg = self.partial.aggregate();
        let key = &agg.group_expr().expr()[0].0;
        let names: Vec<&str> = agg.aggr_expr().iter().map(|a| a.name()).collect();
        write!(
            f,
            "ClusteredAggregateExec: gby=[{key}], aggr=[{}], partitions={}",
            names.join(", "),
            self.partitions
        )?;
        if self.values_in_place {
            write!(f, ", values=in_place")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ClusteredAggregateExec {
    fn name(&self) -> &str {
        "ClusteredAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.partial.aggregate().input_distribution_requirements()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.input()]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.partial.aggregate().apply_expressions(f)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let partial = Arc::new(self.partial.aggregate().clone()).with_new_children(children)?;
        let Some(partial) = partial.downcast_ref::<AggregateExec>() else {
            return internal_err!("AggregateExec::with_new_children gave another plan");
        };
        match Self::try_new(
            partial.clone(),
            self.schema(),
            Arc::clone(&self.hashed),
            self.one_phase,
        )? {
            Some(exec) if self.values_in_place => Ok(Arc::new(exec.with_values_in_place()?)),
            Some(exec) => Ok(Arc::new(exec)),
            None => internal_err!("ClusteredAggregateExec no longer applies to its new input"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let execution = {
            let mut running = self.execution.lock().unwrap();
            match running.as_ref() {
                Some(e) => Arc::clone(e),
                None => Arc::clone(running.insert(Arc::new(self.start(&context)?))),
            }
        };
        let Some(received) = execution.outputs[partition].lock().unwrap().take() else {
            return internal_err!("ClusteredAggregateExec partition {partition} executed twice");
        };
        let mut merge = self.merge.aggregation(partition, &context)?;
        if self.one_phase {
            merge = merge.accepting_rows(self.partial.row_inputs()?);
        }
        let stream = futures::stream::try_unfold(
            (received, merge, VecDeque::new(), false, execution),
            |(mut received, mut merge, mut ready, mut done, execution)| async move {
                loop {
                    if let Some(batch) = ready.pop_front() {
                        return Ok(Some((batch, (received, merge, ready, done, execution))));
                    }
                    if done {
                        return Ok(None);
                    }
                    match received.next().await {
                        Some(Ok(Message::Values(batch))) => ready.push_back(batch),
                        Some(Ok(Message::States(batch))) => merge.push(batch, &mut ready)?,
                        Some(Ok(Message::Rows(batch))) => merge.push_rows(batch)?,
                        Some(Err(e)) => return Err(e),
                        None => {
                            merge.emit(&mut ready)?;
                            done = true;
                        }
                    }
                }
            },
        )
        .into_stream()
        .boxed();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::string_key_aggregate::StringKeyAggregates;
    use crate::test_random::Random;
    use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, StringViewArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// A task woken just before the hand-over runs while the task that woke it goes on
    /// without yielding (left in the waker's slot for the next task, it would not run
    /// until the waker finished).
    #[test]
    fn a_task_woken_before_the_hand_over_runs_beside_its_waker() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let ran = runtime.block_on(async {
            let ran = Arc::new(AtomicBool::new(false));
            let wake = Arc::new(tokio::sync::Notify::new());
            let (waiting_tx, waiting_rx) = tokio::sync::oneshot::channel();
            let waiter = {
                let (ran, wake) = (Arc::clone(&ran), Arc::clone(&wake));
                tokio::spawn(async move {
                    let woken = wake.notified();
                    tokio::pin!(woken);
                    woken.as_mut().enable();
                    waiting_tx.send(()).unwrap();
                    woken.await;
                    ran.store(true, Ordering::SeqCst);
                })
            };
            waiting_rx.await.unwrap();
            let waker = tokio::spawn(async move {
                wake.notify_one();
                run_woken_tasks_elsewhere().await;
                // Busy, as a partition computing its people is: no await from here on.
                let start = Instant::now();
                while !ran.load(Ordering::SeqCst) {
                    if start.elapsed() > Duration::from_secs(10) {
                        return false;
                    }
                    std::hint::spin_loop();
                }
                true
            });
            let ran = waker.await.unwrap();
            waiter.await.unwrap();
            ran
        });
        assert!(ran, "the woken task did not run while its waker was busy");
    }

    /// How the test table's rows lie in its three partitions.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Layout {
        /// Sorted by key, cut into three: only people at a cut are in two partitions.
        Sorted,
        /// Each partition sorted on its own, the same people in all three.
        EachSorted,
        /// Sorted, with rows of a NULL key at the end of each partition.
        SortedWithNulls,
        /// The first partition sorted, the others not.
        OneUnsorted,
        Unsorted,
    }

    /// (key, ts, v) rows: people of several key lengths with 1 to 6 rows each.
    fn rows(rng: &mut Random, people: usize) -> Vec<(Option<String>, i64, Option<i64>)> {
        let mut out = Vec::new();
        for p in 0..people {
            let len = [3, 9, 12, 13, 16, 24][p % 6];
            let key = format!("{:x>len$}", format!("{:x}", rng.below(1 << 30)));
            for _ in 0..=rng.below(6) {
                let v = (rng.below(8) != 0).then(|| rng.below(10) as i64);
                out.push((Some(key.clone()), rng.below(100) as i64, v));
            }
        }
        out
    }

    fn batches(
        schema: &Arc<Schema>,
        rows: &[(Option<String>, i64, Option<i64>)],
    ) -> Vec<RecordBatch> {
        rows.chunks(97)
            .map(|chunk| {
                let k = StringViewArray::from_iter(chunk.iter().map(|r| r.0.clone()));
                let ts = Int64Array::from_iter_values(chunk.iter().map(|r| r.1));
                let v = Int64Array::from_iter(chunk.iter().map(|r| r.2));
                let columns: Vec<ArrayRef> = vec![Arc::new(k), Arc::new(ts), Arc::new(v)];
                RecordBatch::try_new(Arc::clone(schema), columns).unwrap()
            })
            .collect()
    }

    async fn session(layout: Layout, partitions: usize, on: bool) -> SessionContext {
        let ctx = crate::test_session::session(
            SessionConfig::new()
                .with_target_partitions(partitions)
                .with_batch_size(64),
            |o| {
                o.clustered_aggregation = on;
                o.string_key_aggregation = on;
            },
            |b| {
                b.with_physical_optimizer_rule(Arc::new(
                    crate::single_phase::SinglePhaseEventAggregates,
                ))
                .with_physical_optimizer_rule(Arc::new(ClusteredAggregates))
                .with_physical_optimizer_rule(Arc::new(StringKeyAggregates))
            },
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8View, true),
            Field::new("ts", DataType::Int64, false),
            Field::new("v", DataType::Int64, true),
        ]));
        let mut rng = Random(5);
        let by_key = |mut r: Vec<(Option<String>, i64, Option<i64>)>| {
            r.sort_by(|a, b| a.0.cmp(&b.0));
            r
        };
        let all = by_key(rows(&mut rng, 600));
        let third = all.len() / 3;
        let parts: Vec<Vec<(Option<String>, i64, Option<i64>)>> = match layout {
            Layout::Sorted | Layout::SortedWithNulls => {
                let mut parts = vec![
                    all[..third].to_vec(),
                    all[third..2 * third].to_vec(),
                    all[2 * third..].to_vec(),
                ];
                if layout == Layout::SortedWithNulls {
                    for part in &mut parts {
                        part.push((None, 5, Some(1)));
                        part.push((None, 7, Some(2)));
                    }
                }
                parts
            }
            Layout::EachSorted | Layout::OneUnsorted | Layout::Unsorted => {
                let mut parts: Vec<_> = (0..3)
                    .map(|i| by_key(all.iter().skip(i).step_by(3).cloned().collect()))
                    .collect();
                // Shuffle all but (for OneUnsorted) the first partition's rows.
                let from = usize::from(layout == Layout::OneUnsorted);
                let sorted = usize::from(layout == Layout::EachSorted) * 3;
                for part in parts.iter_mut().skip(from.max(sorted)) {
                    for i in (1..part.len()).rev() {
                        part.swap(i, rng.below(i as u64 + 1) as usize);
                    }
                }
                parts
            }
        };
        let parts = parts.iter().map(|p| batches(&schema, p)).collect();
        let table = MemTable::try_new(schema, parts).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx
    }

    const QUERIES: [&str; 11] = [
        "SELECT k, count(*), sum(v), count(v) FILTER (WHERE v > 5), min(ts), max(v) FROM t GROUP BY k",
        "SELECT k, window_funnel(10, '', ts, v > 2, v > 5, v > 7) AS level FROM t GROUP BY k",
        "SELECT k, retention(v = 1, v = 2), sequence_count('(?1)(?2)', ts, v = 1, v = 2) FROM t GROUP BY k",
        // Planned in one phase (SinglePartitioned) by the single-phase rule, as are the
        // two queries above and the one below.
        "SELECT k, sequence_next_node('forward', 'head', ts, CAST(v AS VARCHAR), true) FROM t GROUP BY k",
        "SELECT level, count(*) FROM (SELECT window_funnel(10, '', ts, v > 2, v > 5) AS level FROM t GROUP BY k) GROUP BY level",
        "SELECT k FROM t GROUP BY k",
        // A selective filter below, which passes on small batches (see
        // `uncoalesced_filters`): gathered again before they are handed on.
        "SELECT k, window_funnel(10, '', ts, v > 4, v > 6) AS level FROM t WHERE v % 7 = 1 OR v > 8 OR v IS NULL GROUP BY k",
        // Grouped again by a string, by a clustered aggregation of its own, which does not
        // need its input partitioned by anything (attribution's channel report).
        "SELECT CAST(level AS VARCHAR) AS l, count(*) FROM (SELECT window_funnel(10, '', ts, v > 2, v > 5) AS level FROM t GROUP BY k) GROUP BY l",
        // Operators above that rely on the output being partitioned by the key: an
        // aggregation by the key again, a window partitioned by it, a join on it.
        "SELECT k, count(*), max(level) FROM (SELECT k, window_funnel(10, '', ts, v > 2, v > 5) AS level FROM t GROUP BY k) GROUP BY k",
        "SELECT k, level, row_number() OVER (PARTITION BY k ORDER BY level) FROM (SELECT k, window_funnel(10, '', ts, v > 2, v > 5) AS level FROM t GROUP BY k)",
        "SELECT a.k, a.level, b.n FROM (SELECT k, window_funnel(10, '', ts, v > 2) AS level FROM t GROUP BY k) a JOIN (SELECT k, count(*) AS n FROM t GROUP BY k) b ON a.k = b.k",
    ];

    /// The rows of `sql`'s answer, sorted; its plan; and the operator's
    /// (groups finished in place, groups sent to merge).
    async fn run(ctx: &SessionContext, sql: &str) -> (Vec<String>, String, (usize, usize)) {
        let (rows, plan, counts) = run_counting(ctx, sql).await;
        (rows, plan, (counts[0], counts[1]))
    }

    /// As [`run`], with the operator's groups finished in place, groups sent to merge
    /// and input rows sent on unaggregated.
    async fn run_counting(ctx: &SessionContext, sql: &str) -> (Vec<String>, String, [usize; 3]) {
        let plan = crate::test_session::physical_plan(ctx, sql).await;
        let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
        let mut counts = [0; 3];
        let names = [
            "groups_finished_in_place",
            "groups_sent_to_merge",
            "rows_sent_unaggregated",
        ];
        let _ = plan.apply(|node| {
            if let Some(m) = node
                .downcast_ref::<ClusteredAggregateExec>()
                .and_then(|e| e.metrics())
            {
                let m = m.aggregate_by_name();
                for (count, name) in counts.iter_mut().zip(names) {
                    *count += m.sum_by_name(name).map_or(0, |v| v.as_usize());
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        let text = pretty_format_batches(&batches).unwrap().to_string();
        let mut rows: Vec<String> = text.lines().map(str::to_string).collect();
        rows.sort();
        let plan = displayable(plan.as_ref()).indent(false).to_string();
        (rows, plan, counts)
    }

    #[tokio::test]
    async fn same_answers_as_datafusion_in_every_layout() {
        for layout in [
            Layout::Sorted,
            Layout::EachSorted,
            Layout::SortedWithNulls,
            Layout::OneUnsorted,
            Layout::Unsorted,
        ] {
            // Three input partitions shuffled to two outputs, or to three.
            for partitions in [2, 3] {
                let ours = session(layout, partitions, true).await;
                let theirs = session(layout, partitions, false).await;
                for sql in QUERIES {
                    let (got, plan, _) = run(&ours, sql).await;
                    let (want, their_plan, _) = run(&theirs, sql).await;
                    assert!(plan.contains("ClusteredAggregateExec"), "{plan}");
                    assert!(
                        !their_plan.contains("ClusteredAggregateExec"),
                        "{their_plan}"
                    );
                    assert_eq!(got, want, "{layout:?} / {partitions} partitions: {sql}");
                }
            }
        }
    }

    #[tokio::test]
    async fn values_stay_in_place_only_where_nothing_needs_the_key_partitioning() {
        let ours = session(Layout::Sorted, 2, true).await;
        let theirs = session(Layout::Sorted, 2, false).await;
        // A join of both sides partitioned by the key, not one side collected: a person
        // left in the partition that read them would not meet their other side.
        for ctx in [&ours, &theirs] {
            for setting in [
                "hash_join_single_partition_threshold",
                "hash_join_single_partition_threshold_rows",
            ] {
                let sql = format!("SET datafusion.optimizer.{setting} = 0");
                ctx.sql(&sql).await.unwrap().collect().await.unwrap();
            }
        }
        // Counted per level: the people finished in place need not move.
        let (_, plan, _) = run(&ours, QUERIES[4]).await;
        assert!(plan.contains("values=in_place"), "{plan}");
        // Grouped again by another string: both clustered aggregations leave them.
        let (got, plan, _) = run(&ours, QUERIES[7]).await;
        assert_eq!(plan.matches("values=in_place").count(), 2, "{plan}");
        assert_eq!(got, run(&theirs, QUERIES[7]).await.0);
        // Grouped, windowed or joined by the key above: they must.
        for sql in &QUERIES[8..] {
            let (got, plan, _) = run(&ours, sql).await;
            assert!(plan.contains("ClusteredAggregateExec"), "{plan}");
            assert!(!plan.contains("values=in_place"), "{sql}\n{plan}");
            let (want, _, _) = run(&theirs, sql).await;
            assert_eq!(got, want, "{sql}");
        }
    }

    #[tokio::test]
    async fn a_filter_below_passes_its_batches_on_uncopied() {
        let ctx = session(Layout::Unsorted, 2, true).await;
        let plan = crate::test_session::physical_plan(&ctx, QUERIES[6]).await;
        let mut filters = vec![];
        let _ = plan.apply(|node| {
            if let Some(filter) = node.downcast_ref::<FilterExec>() {
                filters.push(filter.batch_size());
            }
            Ok(TreeNodeRecursion::Continue)
        });
        assert_eq!(filters, [1]);
        // Without the operator, DataFusion's filter coalesces as usual.
        let ctx = session(Layout::Unsorted, 2, false).await;
        let plan = crate::test_session::physical_plan(&ctx, QUERIES[6]).await;
        let _ = plan.apply(|node| {
            if let Some(filter) = node.downcast_ref::<FilterExec>() {
                assert!(filter.batch_size() > 1);
            }
            Ok(TreeNodeRecursion::Continue)
        });
    }

    #[tokio::test]
    async fn only_people_split_between_partitions_are_merged() {
        let sql = QUERIES[1];
        let people = |ctx: SessionContext| async move {
            let (rows, _, counts) = run(&ctx, sql).await;
            (rows.len() - 4, counts) // less the table's borders and header
        };
        let (n, (finished, merged)) = people(session(Layout::Sorted, 3, true).await).await;
        // At most the last person of one partition and the first of the next, at each
        // of the two cuts.
        assert!(merged <= 4, "{merged} merged");
        assert!(
            finished + merged >= n && finished >= n - 2,
            "{finished} of {n}"
        );
        // Sorted partitions whose keys interleave, or one partition not sorted: the
        // people within another partition's keys are all merged.
        let (n, (finished, merged)) = people(session(Layout::EachSorted, 3, true).await).await;
        assert!(merged >= n, "{merged} of {n} merged, {finished} in place");
        let (n, (finished, merged)) = people(session(Layout::OneUnsorted, 3, true).await).await;
        assert_eq!(finished, 0, "{merged} of {n} merged");
    }

    #[tokio::test]
    async fn unsorted_input_of_a_one_phase_plan_is_aggregated_once() {
        // sequence_next_node is planned in one phase: unsorted partitions hand their rows
        // on (all but the first batch), sorted ones finish people in place.
        let one_phase = QUERIES[3];
        let (_, _, [finished, merged, rows]) =
            run_counting(&session(Layout::Unsorted, 2, true).await, one_phase).await;
        let table_rows = {
            let ctx = session(Layout::Unsorted, 2, false).await;
            let n = ctx
                .sql("SELECT count(*) FROM t")
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            n[0].column(0)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .value(0) as usize
        };
        assert_eq!(finished, 0);
        // Each of the three partitions aggregates its first batch (64 rows) only.
        assert!(
            rows >= table_rows - 3 * 64,
            "{rows} of {table_rows} rows handed on"
        );
        assert!(merged <= 3 * 64, "{merged} groups merged");
        let (_, _, [finished, _, rows]) =
            run_counting(&session(Layout::Sorted, 2, true).await, one_phase).await;
        assert_eq!(rows, 0);
        assert!(finished > 0);
        // A two-phase plan (count, sum, min, ...) never hands on rows.
        let (_, _, [_, _, rows]) =
            run_counting(&session(Layout::Unsorted, 2, true).await, QUERIES[0]).await;
        assert_eq!(rows, 0);
    }

    #[tokio::test]
    async fn an_error_in_one_partition_fails_the_query_without_hanging() {
        let ctx = session(Layout::Sorted, 3, true).await;
        let err = ctx
            .sql("SELECT k, sum(1 / (v - 9)) FROM t GROUP BY k")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("Divide by zero"), "{err}");
    }
}
