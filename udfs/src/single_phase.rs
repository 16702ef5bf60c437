//! A physical optimizer rule: aggregations made only of tidepool's per-person event
//! aggregates run in one phase.
//!
//! DataFusion aggregates in two phases (Partial, then a hash repartition, then Final) so
//! that each partition can shrink its input before the shuffle. tidepool's per-person
//! aggregates keep events in their state, so the partial phase shrinks little: it sorts
//! the events, writes them as list states, and the final phase reads, re-interns and
//! sorts them again. This rule replaces `Final(Repartition(Hash(keys), Partial(input)))`
//! with `SinglePartitioned(Repartition(Hash(keys), input))` when every aggregate is one
//! of [`ONE_PHASE_AGGREGATES`]: the rows are shuffled once and aggregated once.
//!
//! On input sorted by person, [`crate::clustered_aggregate`] then finishes people in
//! place, so this choice only matters for unsorted (time-ordered) input. Measured there
//! on 10M events (2 cores): cohort_retention 25–29% faster, attribution 15–20%,
//! lifecycle ~6%; and, once the clustered operator handed an unsorted partition's rows
//! on unaggregated, sequence_match 22%, sequence_count 25%, window_funnel 14% and
//! retention 22% (benches/README.md). sequence_next_node and path_edges keep every row
//! too.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_expr::Partitioning;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::ExecutionPlan;

/// The aggregates whose state holds their input's events, or those that meet a
/// condition (see [`crate::grouped`]), so that a partial phase shrinks little.
pub const ONE_PHASE_AGGREGATES: [&str; 10] = [
    crate::cohort_retention::NAME,
    crate::lifecycle::NAME,
    crate::attribution::NAME,
    crate::sequence_next_node::NAME,
    crate::path_edges::NAME,
    crate::window_funnel::NAME,
    crate::funnel::NAME,
    crate::retention::NAME,
    crate::sequence_match::Answer::Match.name(),
    crate::sequence_match::Answer::Count.name(),
];

#[derive(Debug, Default)]
pub struct SinglePhaseEventAggregates;

/// The partial aggregate below a final one, through the repartition between them, with
/// the repartition's partition count.
fn partial_below(final_agg: &AggregateExec) -> Option<(&AggregateExec, usize)> {
    let repartition = final_agg.input().downcast_ref::<RepartitionExec>()?;
    let Partitioning::Hash(_, n) = repartition.partitioning() else {
        return None;
    };
    let partial = repartition.input().downcast_ref::<AggregateExec>()?;
    (*partial.mode() == AggregateMode::Partial).then_some((partial, *n))
}

fn rewrite(plan: Arc<dyn ExecutionPlan>) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    let Some(final_agg) = plan.downcast_ref::<AggregateExec>() else {
        return Ok(Transformed::no(plan));
    };
    if *final_agg.mode() != AggregateMode::FinalPartitioned {
        return Ok(Transformed::no(plan));
    }
    let Some((partial, partitions)) = partial_below(final_agg) else {
        return Ok(Transformed::no(plan));
    };
    let all_one_phase = !partial.aggr_expr().is_empty()
        && partial
            .aggr_expr()
            .iter()
            .all(|a| ONE_PHASE_AGGREGATES.contains(&a.fun().name()));
    if !all_one_phase || !partial.group_expr().is_single() || partial.group_expr().is_empty() {
        return Ok(Transformed::no(plan));
    }
    let keys = partial.group_expr().input_exprs();
    let shuffle = Arc::new(RepartitionExec::try_new(
        Arc::clone(partial.input()),
        Partitioning::Hash(keys, partitions),
    )?);
    let single = AggregateExec::try_new(
        AggregateMode::SinglePartitioned,
        partial.group_expr().clone(),
        partial.aggr_expr().to_vec(),
        partial.filter_expr().to_vec(),
        shuffle,
        partial.input_schema(),
    )?;
    // Keep the plan's schema exactly (field names and nullability) as the final had it.
    if single.schema() != final_agg.schema() {
        return Ok(Transformed::no(plan));
    }
    Ok(Transformed::yes(Arc::new(single)))
}

impl PhysicalOptimizerRule for SinglePhaseEventAggregates {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let on = crate::settings::TidepoolOptions::of(config).single_phase_event_aggregates;
        if !on {
            return Ok(plan);
        }
        Ok(plan.transform_up(rewrite)?.data)
    }

    fn name(&self) -> &str {
        "single_phase_event_aggregates"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::SessionConfig;

    async fn plan(sql: &str, single_phase: bool) -> String {
        let ctx = crate::test_session::session(
            SessionConfig::new().with_target_partitions(2),
            |o| o.single_phase_event_aggregates = single_phase,
            |b| b.with_physical_optimizer_rule(Arc::new(SinglePhaseEventAggregates)),
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("p", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                false,
            ),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(TimestampMicrosecondArray::from(vec![0, 1])),
            ],
        )
        .unwrap();
        let table = MemTable::try_new(schema, vec![vec![batch.clone()], vec![batch]]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        let plan = crate::test_session::physical_plan(&ctx, sql).await;
        let text = displayable(plan.as_ref()).indent(false).to_string();
        text
    }

    #[tokio::test]
    async fn per_person_aggregates_run_in_one_phase() {
        let lifecycle = "SELECT lifecycle('unit=day', ts, true) FROM t GROUP BY p";
        let one = plan(lifecycle, true).await;
        assert!(one.contains("mode=SinglePartitioned"), "{one}");
        assert!(!one.contains("mode=Partial"), "{one}");
        let funnel = "SELECT window_funnel(10, '', ts, true), sequence_count('(?1)', ts, true) FROM t GROUP BY p";
        assert!(plan(funnel, true).await.contains("mode=SinglePartitioned"));
        // Switched off, or mixed with another aggregate: two phases as usual.
        let two = plan(lifecycle, false).await;
        assert!(two.contains("mode=Partial"), "{two}");
        let mixed = "SELECT lifecycle('unit=day', ts, true), count(*) FROM t GROUP BY p";
        assert!(plan(mixed, true).await.contains("mode=Partial"));
    }
}
