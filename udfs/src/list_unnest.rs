//! A physical optimizer rule and operator: `unnest` of one list column, the way the
//! list-returning aggregates are read (`SELECT unnest(cohort_retention(...)) AS r ...`,
//! `unnest(attribution(...))`), without copying the lists' items.
//!
//! DataFusion's `UnnestExec` builds a take index for every item, one at a time, and then
//! copies every item (all fields of a struct) with `take`. When a batch's lists lie one
//! after another in their values array, with no NULL row to add (no NULL list kept, no
//! empty list expanded), the unnested column is just a slice of that array.
//! [`ListUnnestExec`] hands on that slice and repeats the other columns with one `take`;
//! in the other cases it takes the items as `UnnestExec` does. On 10M events the
//! retention matrix unnests 1.66M rows per query, which cost `UnnestExec` 31 ms of CPU.
//!
//! It takes over `UnnestExec`s that unnest exactly one `List` or `LargeList` column, one
//! level deep, and no struct column. `SET tidepool.list_unnest = false` keeps
//! DataFusion's operator.

use std::fmt;
use std::sync::Arc;

use crate::plan_rewrite::replace_each;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, GenericListArray, OffsetSizeTrait, RecordBatch, RecordBatchOptions,
    UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{internal_err, Result, UnnestOptions};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::unnest::UnnestExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputDistributionRequirements, PhysicalExpr,
    PlanProperties,
};
use futures::StreamExt;

/// The rule: replaces each `UnnestExec` that [`ListUnnestExec`] can run.
#[derive(Debug, Default)]
pub struct ListUnnests;

impl PhysicalOptimizerRule for ListUnnests {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !crate::settings::TidepoolOptions::of(config).list_unnest {
            return Ok(plan);
        }
        replace_each(plan, |unnest: &UnnestExec| {
            Ok(ListUnnestExec::try_new(unnest).map(|exec| Arc::new(exec) as _))
        })
    }

    fn name(&self) -> &str {
        "list_unnest"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// An `UnnestExec` of one list column, run without copying the items where it can.
#[derive(Debug)]
pub struct ListUnnestExec {
    /// The operator this one stands for: its input, output schema and properties.
    unnest: UnnestExec,
    /// The list column, in the input and (unnested, in its place) in the output.
    column: usize,
    metrics: ExecutionPlanMetricsSet,
}

impl ListUnnestExec {
    /// None unless `unnest` unnests one list column one level, and nothing else.
    pub fn try_new(unnest: &UnnestExec) -> Option<Self> {
        let [list] = unnest.list_column_indices() else {
            return None;
        };
        let options = unnest.options();
        if list.depth != 1
            || !unnest.struct_column_indices().is_empty()
            || options.recursions.iter().any(|r| r.depth != 1)
        {
            return None;
        }
        // The output must be the input with the list column replaced by its items.
        let (input, output) = (unnest.input().schema(), unnest.schema());
        if input.fields().len() != output.fields().len() {
            return None;
        }
        for (i, (from, to)) in input.fields().iter().zip(output.fields()).enumerate() {
            let expected = if i == list.index_in_input_schema {
                match from.data_type() {
                    DataType::List(item) | DataType::LargeList(item) => item.data_type(),
                    _ => return None,
                }
            } else {
                from.data_type()
            };
            if to.data_type() != expected {
                return None;
            }
        }
        Some(ListUnnestExec {
            unnest: unnest.clone(),
            column: list.index_in_input_schema,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for ListUnnestExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ListUnnestExec: column={}", self.column)
    }
}

impl ExecutionPlan for ListUnnestExec {
    fn name(&self) -> &str {
        "ListUnnestExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.unnest.properties()
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.unnest.input_distribution_requirements()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        self.unnest.maintains_input_order()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.unnest.input()]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let unnest = Arc::new(self.unnest.clone()).with_new_children(children)?;
        let Some(unnest) = unnest.downcast_ref::<UnnestExec>() else {
            return internal_err!("UnnestExec with new children is no longer an UnnestExec");
        };
        match ListUnnestExec::try_new(unnest) {
            Some(exec) => Ok(Arc::new(exec)),
            None => internal_err!("ListUnnestExec no longer applies to its new input"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let batch_size = context.session_config().batch_size();
        let input = self.unnest.input().execute(partition, context)?;
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let (schema, column) = (self.schema(), self.column);
        let options = self.unnest.options().clone();
        let unnested = Arc::clone(&schema);
        let stream = input.flat_map(move |batch| {
            let result = batch.and_then(|batch| {
                let _timer = metrics.elapsed_compute().timer();
                let out = unnest_batch(&batch, &unnested, column, &options)?;
                metrics.record_output(out.num_rows());
                Ok(out)
            });
            // Batches of at most `batch_size` rows, as `UnnestExec` hands on.
            let pieces = match result {
                Ok(out) => (0..out.num_rows())
                    .step_by(batch_size.max(1))
                    .map(|start| Ok(out.slice(start, batch_size.min(out.num_rows() - start))))
                    .collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(pieces)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// `batch` with its list column `column` unnested, as `schema` (the `UnnestExec`'s).
pub fn unnest_batch(
    batch: &RecordBatch,
    schema: &SchemaRef,
    column: usize,
    options: &UnnestOptions,
) -> Result<RecordBatch> {
    let lists = batch.column(column);
    match lists.data_type() {
        DataType::List(_) => unnest_lists(batch, lists.as_list::<i32>(), schema, column, options),
        DataType::LargeList(_) => {
            unnest_lists(batch, lists.as_list::<i64>(), schema, column, options)
        }
        other => internal_err!("ListUnnestExec given a {other} column"),
    }
}

fn unnest_lists<O: OffsetSizeTrait>(
    batch: &RecordBatch,
    lists: &GenericListArray<O>,
    schema: &SchemaRef,
    column: usize,
    options: &UnnestOptions,
) -> Result<RecordBatch> {
    let offsets = lists.value_offsets();
    let range = |row: usize| offsets[row].as_usize()..offsets[row + 1].as_usize();
    let n = lists.len();
    let (keep_nulls, expand_empty) = (options.preserve_nulls(), options.expand_empty_as_null());
    // Whether row `row` becomes one NULL row, as UnnestExec makes it.
    let null_row = |row: usize| {
        if lists.is_null(row) {
            keep_nulls
        } else {
            expand_empty && range(row).is_empty()
        }
    };
    // Every row's items are its values in place, and nothing is added: the output
    // column is a slice of the values. (A NULL list dropped must hold no values.)
    let in_place = (lists.null_count() == 0 && !expand_empty)
        || (0..n).all(|row| !null_row(row) && (lists.is_valid(row) || range(row).is_empty()));
    let (items, repeat): (ArrayRef, Vec<u32>) = if in_place {
        let (start, end) = (offsets[0].as_usize(), offsets[n].as_usize());
        let items = lists.values().slice(start, end - start);
        let mut repeat = vec![];
        if batch.num_columns() > 1 {
            repeat.reserve(end - start);
            for row in 0..n {
                repeat.extend(std::iter::repeat_n(row as u32, range(row).len()));
            }
        }
        (items, repeat)
    } else {
        let (mut at, mut repeat) = (vec![], vec![]);
        for row in 0..n {
            if null_row(row) {
                at.push(None);
                repeat.push(row as u32);
            } else if lists.is_valid(row) {
                let r = range(row);
                repeat.extend(std::iter::repeat_n(row as u32, r.len()));
                at.extend(r.map(|i| Some(i as u64)));
            }
        }
        (take(lists.values(), &UInt64Array::from(at), None)?, repeat)
    };
    let rows = items.len();
    let repeat = UInt32Array::from(repeat);
    let columns = batch
        .columns()
        .iter()
        .enumerate()
        .map(|(i, c)| match i == column {
            true => Ok(Arc::clone(&items)),
            false => Ok(take(c, &repeat, None)?),
        })
        .collect::<Result<Vec<_>>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &options,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_random::Random;
    use datafusion::arrow::array::{
        Int64Array, LargeListArray, ListArray, StringArray, StructArray,
    };
    use datafusion::arrow::datatypes::{Field, Fields, Int64Type, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::common::NullHandling;
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_plan::unnest::ListUnnest;
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// Lists of structs (a tag and a number, as the aggregates' rows are) with NULL
    /// lists, empty lists, and NULL lists that still hold values (allowed by Arrow),
    /// beside a string column.
    fn batch(rng: &mut Random, rows: usize, odd: bool, large: bool) -> RecordBatch {
        let fields = Fields::from(vec![
            Field::new("tag", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]);
        let mut lengths = vec![];
        let mut valid = vec![];
        for _ in 0..rows {
            lengths.push(rng.below(4) as usize);
            valid.push(!odd || rng.below(5) != 0);
        }
        let items: usize = lengths.iter().sum();
        let tags =
            StringArray::from_iter((0..items).map(|i| (i % 7 != 3).then(|| format!("t{i}"))));
        let numbers = Int64Array::from_iter((0..items).map(|i| (i % 5 != 1).then_some(i as i64)));
        let values = StructArray::new(
            fields.clone(),
            vec![Arc::new(tags), Arc::new(numbers)],
            None,
        );
        let item = Arc::new(Field::new_list_field(DataType::Struct(fields), true));
        let nulls = odd.then(|| valid.clone().into());
        let lists: ArrayRef = if large {
            Arc::new(LargeListArray::new(
                item,
                datafusion::arrow::buffer::OffsetBuffer::from_lengths(lengths),
                Arc::new(values),
                nulls,
            ))
        } else {
            Arc::new(ListArray::new(
                item,
                datafusion::arrow::buffer::OffsetBuffer::from_lengths(lengths),
                Arc::new(values),
                nulls,
            ))
        };
        let person =
            StringArray::from_iter((0..rows).map(|r| (r % 9 != 4).then(|| format!("p{r}"))));
        let schema = Schema::new(vec![
            Field::new("person", DataType::Utf8, true),
            Field::new("r", lists.data_type().clone(), true),
        ]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(person), lists]).unwrap()
    }

    /// DataFusion's `UnnestExec` of column `r` (the second) of `batches`.
    fn unnest_exec(batches: &[RecordBatch], null_handling: NullHandling) -> UnnestExec {
        let input = batches[0].schema();
        let (DataType::List(item) | DataType::LargeList(item)) = input.field(1).data_type() else {
            unreachable!()
        };
        let output = Schema::new(vec![
            input.field(0).clone(),
            Field::new("r", item.data_type().clone(), true),
        ]);
        let source =
            MemorySourceConfig::try_new_exec(&[batches.to_vec()], Arc::clone(&input), None)
                .unwrap();
        UnnestExec::new(
            source,
            vec![ListUnnest {
                index_in_input_schema: 1,
                depth: 1,
            }],
            vec![],
            Arc::new(output),
            UnnestOptions {
                null_handling,
                recursions: vec![],
            },
        )
        .unwrap()
    }

    async fn rows(plan: Arc<dyn ExecutionPlan>, batch_size: usize) -> String {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_batch_size(batch_size));
        let batches = collect(plan, ctx.task_ctx()).await.unwrap();
        assert!(batches.iter().all(|b| b.num_rows() <= batch_size));
        pretty_format_batches(&batches).unwrap().to_string()
    }

    /// The same rows as DataFusion's operator for every way of handling NULL and empty
    /// lists, with and without NULL lists, for both offset sizes.
    #[tokio::test]
    async fn same_rows_as_datafusion() {
        let mut rng = Random(5);
        for large in [false, true] {
            for odd in [false, true] {
                let batches: Vec<_> = (0..3).map(|_| batch(&mut rng, 40, odd, large)).collect();
                for handling in [
                    NullHandling::Drop,
                    NullHandling::Preserve,
                    NullHandling::PreserveAndExpandEmpty,
                ] {
                    let theirs = unnest_exec(&batches, handling);
                    let ours = Arc::new(ListUnnestExec::try_new(&theirs).unwrap());
                    let expected = rows(Arc::new(theirs), 16).await;
                    assert_eq!(rows(ours, 16).await, expected, "{handling:?} {odd} {large}");
                    assert!(expected.lines().count() > 60, "{expected}");
                }
            }
        }
    }

    /// Without NULL rows to add, the unnested column is the lists' own values, not a
    /// copy.
    #[test]
    fn lists_in_place_are_not_copied() {
        let mut rng = Random(8);
        let input = batch(&mut rng, 50, false, false);
        let theirs = unnest_exec(std::slice::from_ref(&input), NullHandling::Preserve);
        let out = unnest_batch(&input, &theirs.schema(), 1, theirs.options()).unwrap();
        let values = input.column(1).as_list::<i32>().values().as_struct();
        let items = out.column(1).as_struct();
        let numbers = |s: &StructArray| s.column(1).as_primitive::<Int64Type>().values().as_ptr();
        assert_eq!(items.len(), values.len());
        assert_eq!(numbers(items), numbers(values));
        // With NULL rows to add, they are taken.
        let mut rng = Random(8);
        let input = batch(&mut rng, 50, true, false);
        let out = unnest_batch(&input, &theirs.schema(), 1, theirs.options()).unwrap();
        let values = input.column(1).as_list::<i32>().values().as_struct();
        assert_ne!(numbers(out.column(1).as_struct()), numbers(values));
    }

    /// The rule replaces the unnest of an aggregate's list, the answers stay the same,
    /// and it leaves alone what it does not run (two list columns).
    #[tokio::test]
    async fn replaces_the_unnest_of_an_aggregates_list() {
        let sql = "SELECT r['period'] AS period, count(*) AS people FROM (\
                   SELECT unnest(cohort_retention('unit=day; periods=3', ts, true, true, NULL)) AS r \
                   FROM t GROUP BY p) GROUP BY 1 ORDER BY 1";
        let two =
            "SELECT unnest(make_array(p, p)), unnest(make_array(1, 2, 3)) FROM t ORDER BY 1, 2";
        let mut answers = vec![];
        for on in [false, true] {
            let ctx = crate::test_session::session(
                SessionConfig::new().with_target_partitions(2),
                |o| o.list_unnest = on,
                |b| b.with_physical_optimizer_rule(Arc::new(ListUnnests)),
            );
            ctx.sql(
                "CREATE TABLE t AS SELECT 'p' || (v % 13) AS p, \
                 to_timestamp_micros(1767225600000000 + v * 3600000000) AS ts FROM range(2000) r(v)",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
            let plan = crate::test_session::physical_plan(&ctx, sql).await;
            let shown = displayable(plan.as_ref()).indent(false).to_string();
            assert_eq!(shown.contains("ListUnnestExec"), on, "{shown}");
            answers.push(
                pretty_format_batches(&collect(plan, ctx.task_ctx()).await.unwrap())
                    .unwrap()
                    .to_string(),
            );
            let plan = crate::test_session::physical_plan(&ctx, two).await;
            let shown = displayable(plan.as_ref()).indent(false).to_string();
            assert!(!shown.contains("ListUnnestExec"), "{shown}");
        }
        assert_eq!(answers[0], answers[1]);
        assert!(answers[1].contains("| 3      |"), "{}", answers[1]);
    }
}
