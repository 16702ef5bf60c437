//! Expressions with a faster form of tidepool's own, and the rule that puts it into
//! DataFusion's filters.
//!
//! [`faster`] replaces the person key `coalesce(a, b)` ([`crate::first_non_null`]) and
//! conditions such as `event_name = 'view_item'` ([`crate::view_eq`]) wherever they occur
//! in an expression; both give the same values. [`crate::string_key_aggregate`] applies
//! it to its key, arguments and filters, and [`FasterFilters`] to the predicate of every
//! `FilterExec`, which evaluates on every row the conditions the prefilter rule
//! (`event_name = 'view_item' OR event_name = 'purchase'`) or a query's `WHERE` adds.

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};

use crate::{first_non_null, view_eq};

/// `expr` with every part that has a faster form of ours replaced by it.
pub fn faster(expr: Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Arc<dyn PhysicalExpr>> {
    expr.transform_up(|e| {
        let new = view_eq::rewrite(first_non_null::rewrite(Arc::clone(&e), schema)?, schema)?;
        Ok(if Arc::ptr_eq(&new, &e) {
            Transformed::no(e)
        } else {
            Transformed::yes(new)
        })
    })
    .map(|t| t.data)
}

/// The physical rule: each `FilterExec`'s predicate in its [`faster`] form.
#[derive(Debug, Default)]
pub struct FasterFilters;

impl PhysicalOptimizerRule for FasterFilters {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(filter) = node.downcast_ref::<FilterExec>() else {
                return Ok(Transformed::no(node));
            };
            let predicate = faster(Arc::clone(filter.predicate()), &filter.input().schema())?;
            if Arc::ptr_eq(&predicate, filter.predicate()) {
                return Ok(Transformed::no(node));
            }
            let rebuilt = FilterExecBuilder::from(filter)
                .with_predicate(predicate)
                .build()?;
            Ok(Transformed::yes(Arc::new(rebuilt) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "tidepool_faster_filters"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view_eq::ViewEqLiteral;
    use datafusion::arrow::array::{RecordBatch, StringViewArray};
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::{SessionConfig, SessionContext};

    async fn session(faster_filters: bool) -> SessionContext {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Utf8View, true)]));
        let names = [
            Some("view_item"),
            Some("purchase"),
            None,
            Some("begin_checkout"),
            Some("begin_checkouts"),
            Some("add_to_cart"),
            Some("view_items"),
        ];
        let column = StringViewArray::from_iter((0..700).map(|i| names[i % names.len()]));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(column)]).unwrap();
        let mut state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_default_features();
        if faster_filters {
            state = state.with_physical_optimizer_rule(Arc::new(FasterFilters));
        }
        let ctx = SessionContext::new_with_state(state.build());
        let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx
    }

    /// The filter's conditions become [`ViewEqLiteral`]s, with the same rows passing.
    #[tokio::test]
    async fn filters_keep_their_rows() -> Result<()> {
        let sql = "SELECT n, count(*) FROM t \
                   WHERE n = 'view_item' OR 'begin_checkout' = n OR n = 'nope' GROUP BY n ORDER BY n";
        let mut answers = vec![];
        for on in [false, true] {
            let ctx = session(on).await;
            let plan = ctx.sql(sql).await?.create_physical_plan().await?;
            let mut fast_conditions = 0;
            plan.apply(|node| {
                if let Some(filter) = node.downcast_ref::<FilterExec>() {
                    filter.predicate().apply(|e| {
                        fast_conditions += usize::from(e.downcast_ref::<ViewEqLiteral>().is_some());
                        Ok(TreeNodeRecursion::Continue)
                    })?;
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
            assert_eq!(fast_conditions, if on { 3 } else { 0 });
            answers.push(pretty_format_batches(&collect(plan, ctx.task_ctx()).await?)?.to_string());
        }
        assert_eq!(answers[0], answers[1]);
        assert!(
            answers[1].contains("| view_item      | 100      |"),
            "{}",
            answers[1]
        );
        assert!(
            answers[1].contains("| begin_checkout | 100      |"),
            "{}",
            answers[1]
        );
        Ok(())
    }
}
