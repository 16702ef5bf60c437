//! A logical optimizer rule: when only groups where something matched survive a
//! filter, drop the rows where nothing matched before grouping.
//!
//! `sequence_match`, `sequence_count`, `window_funnel` (except in `strict_order` mode)
//! and `retention` look only at the rows where at least one of their conditions holds;
//! a group without such rows gets a fixed answer (false, 0, 0, all zeros). A query like
//!
//! ```sql
//! SELECT count(*) FROM (SELECT sequence_match('(?1).*(?2)', ts, a, b) AS m
//!                       FROM events GROUP BY person) WHERE m
//! ```
//!
//! drops exactly those groups again. When the filter above the aggregation is false or
//! NULL for every such fixed answer, no row where every condition is false can change
//! the result, so the rule adds `WHERE a OR b` below the aggregation: the grouping (the
//! costly part, a hash of every row's person key) then sees only the rows that matter,
//! as a hand-written query would. A whole-table total above the aggregation that an
//! unmatched group adds nothing to (`sum(c)` where c is 0 for it, `count(*) FILTER
//! (WHERE c > 0)`) gets the same filter; a sum over no groups at all would then be NULL
//! where it was 0, so that case is told apart by reading one input row. Conditions
//! that are ranges of one expression and overlap or touch are OR'ed as one range.
//! Everything else is left alone: other aggregates in
//! the same aggregation, DISTINCT, FILTER or ORDER BY clauses, grouping sets, volatile
//! conditions, or a filter that an unmatched group could pass.
//! `SET tidepool.prefilter_condition_rows = false` switches it off.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ListArray, UInt8Array};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchemaRef};
use datafusion::error::Result;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::utils::{disjunction, split_conjunction};
use datafusion::logical_expr::{
    col, lit, when, Aggregate, Expr, Filter, LogicalPlan, LogicalPlanBuilder, Projection,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::scalar::ScalarValue;

use crate::retention::Retention;
use crate::sequence_match::{Answer, Sequence};
use crate::window_funnel::{FunnelMode, WindowFunnel};

#[derive(Debug, Default)]
pub struct PrefilterConditionRows;

/// For a call of one of the functions this rule knows: its answer for a group with no
/// row where a condition holds, and its conditions.
fn unmatched_answer(call: &AggregateFunction) -> Option<(ScalarValue, &[Expr])> {
    let p = &call.params;
    if p.distinct || p.filter.is_some() || !p.order_by.is_empty() {
        return None;
    }
    let f: &dyn std::any::Any = call.func.inner().as_ref();
    if let Some(seq) = f.downcast_ref::<Sequence>() {
        let answer = match seq.answer() {
            Answer::Match => ScalarValue::Boolean(Some(false)),
            Answer::Count => ScalarValue::UInt64(Some(0)),
        };
        return Some((answer, p.args.get(2..)?));
    }
    if f.is::<WindowFunnel>() {
        // In strict_order mode a row matching no step breaks a chain: it matters.
        let Some(Expr::Literal(mode, _)) = p.args.get(1) else {
            return None;
        };
        let mode = FunnelMode::parse(mode.try_as_str().flatten()?).ok()?;
        if mode.strict_order {
            return None;
        }
        return Some((ScalarValue::UInt8(Some(0)), p.args.get(3..)?));
    }
    if f.is::<Retention>() {
        let zeros = UInt8Array::from(vec![0; p.args.len()]);
        let list = ListArray::new(
            crate::retention::item_field(),
            OffsetBuffer::from_lengths([zeros.len()]),
            Arc::new(zeros),
            None,
        );
        return Some((ScalarValue::List(Arc::new(list)), &p.args));
    }
    None
}

/// The output column of each of an aggregation's aggregates.
fn aggregate_columns(agg: &Aggregate) -> Vec<Column> {
    let groups = agg.group_expr.len();
    (0..agg.aggr_expr.len())
        .map(|i| Column::from(agg.schema.qualified_field(groups + i)))
        .collect()
}

/// `expr` with each column that `columns` names replaced.
fn replace_columns(expr: Expr, columns: &HashMap<Column, Expr>) -> Result<Expr> {
    expr.transform(|e| match &e {
        Expr::Column(c) => Ok(match columns.get(c) {
            Some(to) => Transformed::yes(to.clone()),
            None => Transformed::no(e),
        }),
        _ => Ok(Transformed::no(e)),
    })
    .map(|t| t.data)
}

/// Whether every conjunct of `predicate` is already a conjunct of the filters at the top
/// of `plan` (or of its table scan's filters): the rule has run here before, and other
/// rules may since have split the predicate or pushed it into the scan.
fn already_filtered(plan: &LogicalPlan, predicate: &Expr) -> bool {
    fn applied<'a>(plan: &'a LogicalPlan, out: &mut Vec<&'a Expr>) {
        match plan {
            LogicalPlan::Filter(f) => {
                out.extend(split_conjunction(&f.predicate));
                applied(&f.input, out);
            }
            LogicalPlan::TableScan(s) => {
                out.extend(s.filters.iter().flat_map(split_conjunction));
            }
            _ => {}
        }
    }
    let mut filters = vec![];
    applied(plan, &mut filters);
    split_conjunction(predicate)
        .iter()
        .all(|c| filters.contains(c))
}

fn is_false_or_null(e: &Expr) -> bool {
    matches!(e, Expr::Literal(v, _) if v.is_null() || v == &ScalarValue::Boolean(Some(false)))
}

/// The aggregation below `plan` (through projections), with `predicate` written over
/// its output columns.
fn aggregate_below(plan: &LogicalPlan, predicate: Expr) -> Result<Option<(&Aggregate, Expr)>> {
    match plan {
        LogicalPlan::Aggregate(agg) => Ok(Some((agg, predicate))),
        LogicalPlan::Projection(p) => {
            let columns: HashMap<Column, Expr> = p
                .expr
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let to = match e {
                        Expr::Alias(a) => a.expr.as_ref().clone(),
                        e => e.clone(),
                    };
                    (Column::from(p.schema.qualified_field(i)), to)
                })
                .collect();
            aggregate_below(&p.input, replace_columns(predicate, &columns)?)
        }
        _ => Ok(None),
    }
}

/// `plan` (projections down to an aggregation) with the aggregation replaced.
fn with_new_aggregate(plan: &LogicalPlan, agg: LogicalPlan) -> Result<LogicalPlan> {
    match plan {
        LogicalPlan::Aggregate(_) => Ok(agg),
        LogicalPlan::Projection(p) => Ok(LogicalPlan::Projection(Projection::try_new_with_schema(
            p.expr.clone(),
            Arc::new(with_new_aggregate(&p.input, agg)?),
            Arc::clone(&p.schema),
        )?)),
        _ => unreachable!("aggregate_below walked only projections"),
    }
}

fn simplify(expr: Expr, schema: &DFSchemaRef, config: &dyn OptimizerConfig) -> Result<Expr> {
    let context = SimplifyContext::builder()
        .with_schema(Arc::clone(schema))
        .with_query_execution_start_time(config.query_execution_start_time())
        .with_config_options(config.options())
        .build();
    ExprSimplifier::new(context).simplify(expr)
}

/// One end of a range condition: the bound and whether it is included.
type Bound = (ScalarValue, bool);

/// `e` as `x >= lo AND x < hi` (either end included or not, either order), if it is
/// one.
fn as_range(e: &Expr) -> Option<(Expr, Bound, Bound)> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::And,
        right,
    }) = e
    else {
        return None;
    };
    // One side of the range: (x, bound, is_lower).
    let side = |e: &Expr| -> Option<(Expr, Bound, bool)> {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
            return None;
        };
        let (x, v, op) = match (left.as_ref(), right.as_ref()) {
            (x, Expr::Literal(v, _)) => (x, v, *op),
            (Expr::Literal(v, _), x) => (x, v, op.swap()?),
            _ => return None,
        };
        if v.is_null() || matches!(x, Expr::Literal(..)) {
            return None;
        }
        let (inclusive, lower) = match op {
            Operator::GtEq => (true, true),
            Operator::Gt => (false, true),
            Operator::LtEq => (true, false),
            Operator::Lt => (false, false),
            _ => return None,
        };
        Some((x.clone(), (v.clone(), inclusive), lower))
    };
    let (a, b) = (side(left)?, side(right)?);
    let (lo, hi) = match (a.2, b.2) {
        (true, false) => (a, b),
        (false, true) => (b, a),
        _ => return None,
    };
    (lo.0 == hi.0 && lo.1 .0.data_type() == hi.1 .0.data_type()).then(|| (lo.0, lo.1, hi.1))
}

/// `conditions` (to be OR'ed) with ranges over the same expression that overlap or
/// touch made one: a retention query's "day 1", "day 2", ... become one range, so the
/// rows are filtered with two comparisons instead of two per day.
fn merge_ranges(conditions: Vec<Expr>) -> Vec<Expr> {
    use std::cmp::Ordering;
    let mut others = vec![];
    let mut ranges: Vec<(Expr, Bound, Bound)> = vec![];
    for c in conditions {
        match as_range(&c) {
            Some(r) => ranges.push(r),
            None => others.push(c),
        }
    }
    // By expression, then by lower bound; bounds of one expression share a type.
    let mut merged: Vec<(Expr, Bound, Bound)> = vec![];
    while !ranges.is_empty() {
        let x = ranges[0].0.clone();
        let (mut same, rest): (Vec<_>, Vec<_>) = ranges.into_iter().partition(|r| r.0 == x);
        ranges = rest;
        if same
            .iter()
            .any(|r| r.1 .0.data_type() != same[0].1 .0.data_type())
        {
            merged.extend(same);
            continue;
        }
        // An included lower bound sorts before an excluded one at the same value.
        let lower_order = |a: &Bound, b: &Bound| -> Option<Ordering> {
            Some(a.0.partial_cmp(&b.0)?.then(b.1.cmp(&a.1)))
        };
        if same
            .windows(2)
            .any(|w| lower_order(&w[0].1, &w[1].1).is_none())
        {
            merged.extend(same);
            continue;
        }
        same.sort_by(|a, b| lower_order(&a.1, &b.1).unwrap_or(Ordering::Equal));
        let mut current = same.remove(0);
        for next in same {
            // Overlapping, or touching with the shared value in one of them.
            let joins = match next.1 .0.partial_cmp(&current.2 .0) {
                Some(Ordering::Less) => true,
                Some(Ordering::Equal) => next.1 .1 || current.2 .1,
                _ => false,
            };
            if !joins {
                merged.push(std::mem::replace(&mut current, next));
                continue;
            }
            match next.2 .0.partial_cmp(&current.2 .0) {
                Some(Ordering::Greater) => current.2 = next.2,
                Some(Ordering::Equal) => current.2 .1 |= next.2 .1,
                Some(Ordering::Less) => {}
                None => {
                    merged.push(std::mem::replace(&mut current, next));
                }
            }
        }
        merged.push(current);
    }
    let range = |(x, lo, hi): (Expr, Bound, Bound)| {
        let lower = if lo.1 {
            x.clone().gt_eq(lit(lo.0))
        } else {
            x.clone().gt(lit(lo.0))
        };
        let upper = if hi.1 {
            x.lt_eq(lit(hi.0))
        } else {
            x.lt(lit(hi.0))
        };
        lower.and(upper)
    };
    others.extend(merged.into_iter().map(range));
    others
}

/// For a per-person aggregation whose every aggregate is one this rule knows: each
/// aggregate column's answer for an unmatched group, and the rows any condition keeps.
fn unmatched_answers(agg: &Aggregate) -> Option<(HashMap<Column, Expr>, Expr)> {
    if agg.group_expr.is_empty()
        || agg.aggr_expr.is_empty()
        || agg
            .group_expr
            .iter()
            .any(|g| matches!(g, Expr::GroupingSet(_)))
    {
        return None;
    }
    let mut answers = HashMap::new();
    let mut conditions: Vec<Expr> = vec![];
    for (e, column) in agg.aggr_expr.iter().zip(aggregate_columns(agg)) {
        let call = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            e => e,
        };
        let Expr::AggregateFunction(call) = call else {
            return None;
        };
        let (answer, conds) = unmatched_answer(call)?;
        if conds.is_empty() || conds.iter().any(|c| c.is_volatile()) {
            return None;
        }
        answers.insert(column, lit(answer));
        for c in conds {
            if !conditions.contains(c) {
                conditions.push(c.clone());
            }
        }
    }
    Some((answers, disjunction(merge_ranges(conditions))?))
}

/// `agg` reading only the rows `rows` keeps, unless it already does.
fn prefiltered_aggregate(agg: &Aggregate, rows: Expr) -> Result<Option<LogicalPlan>> {
    if already_filtered(&agg.input, &rows) {
        return Ok(None);
    }
    let input = LogicalPlan::Filter(Filter::try_new(rows, Arc::clone(&agg.input))?);
    Ok(Some(LogicalPlan::Aggregate(
        Aggregate::try_new_with_schema(
            Arc::new(input),
            agg.group_expr.clone(),
            agg.aggr_expr.clone(),
            Arc::clone(&agg.schema),
        )?,
    )))
}

/// How an aggregate over the per-person rows treats a person with no matching row.
enum OuterAggregate {
    /// It ignores that row, whatever the other rows are.
    Ignores,
    /// A sum that adds 0 for it: over no rows at all the sum would be NULL where it was
    /// 0, so NULL becomes 0 again when the per-person input had any row.
    AddsZero(ScalarValue),
}

/// `call` (over the per-person rows, written over `agg`'s columns by `to_inner`) with
/// an unmatched person's answers in `answers`, if it is a count or sum that such a
/// person cannot change.
fn outer_aggregate(
    call: &Expr,
    to_inner: &dyn Fn(Expr) -> Result<Option<Expr>>,
    answers: &HashMap<Column, Expr>,
    schema: &DFSchemaRef,
    config: &dyn OptimizerConfig,
) -> Result<Option<OuterAggregate>> {
    let call = match call {
        Expr::Alias(a) => a.expr.as_ref(),
        e => e,
    };
    let Expr::AggregateFunction(call) = call else {
        return Ok(None);
    };
    let p = &call.params;
    if p.distinct || !p.order_by.is_empty() || p.args.len() != 1 {
        return Ok(None);
    }
    // An expression over the per-person row, evaluated for an unmatched person.
    let unmatched = |e: &Expr| -> Result<Option<Expr>> {
        let Some(e) = to_inner(e.clone())? else {
            return Ok(None);
        };
        Ok(Some(simplify(
            replace_columns(e, answers)?,
            schema,
            config,
        )?))
    };
    if let Some(filter) = &p.filter {
        match unmatched(filter)? {
            Some(f) if is_false_or_null(&f) => return Ok(Some(OuterAggregate::Ignores)),
            // Whether a filtered sum over unmatched people is 0 or NULL depends on the
            // rows its filter lets through, which are gone.
            _ => return Ok(None),
        }
    }
    let Some(arg) = unmatched(&p.args[0])? else {
        return Ok(None);
    };
    Ok(match (call.func.name(), arg) {
        ("count", Expr::Literal(v, _)) if v.is_null() => Some(OuterAggregate::Ignores),
        ("sum", Expr::Literal(v, _))
            if !v.is_null() && v == ScalarValue::new_zero(&v.data_type())? =>
        {
            Some(OuterAggregate::AddsZero(v))
        }
        _ => None,
    })
}

impl PrefilterConditionRows {
    /// `WHERE` / `HAVING` above the per-person aggregation.
    fn below_filter(
        &self,
        filter: &Filter,
        config: &dyn OptimizerConfig,
    ) -> Result<Option<LogicalPlan>> {
        let Some((agg, predicate)) = aggregate_below(&filter.input, filter.predicate.clone())?
        else {
            return Ok(None);
        };
        let Some((answers, rows)) = unmatched_answers(agg) else {
            return Ok(None);
        };
        // The filter, for a group where no condition held anywhere: if it can pass, the
        // unmatched rows decide which groups exist and must stay.
        let unmatched = replace_columns(predicate, &answers)?;
        if !is_false_or_null(&simplify(unmatched, &agg.schema, config)?) {
            return Ok(None);
        }
        let Some(new_agg) = prefiltered_aggregate(agg, rows)? else {
            return Ok(None);
        };
        let below = with_new_aggregate(&filter.input, new_agg)?;
        Ok(Some(LogicalPlan::Filter(Filter::try_new(
            filter.predicate.clone(),
            Arc::new(below),
        )?)))
    }

    /// A whole-table aggregate over the per-person rows (`SELECT sum(c), count(*)
    /// FILTER (WHERE c > 0) FROM (... GROUP BY person)`) whose every aggregate ignores
    /// an unmatched person.
    fn below_total(
        &self,
        outer: &Aggregate,
        config: &dyn OptimizerConfig,
    ) -> Result<Option<LogicalPlan>> {
        if !outer.group_expr.is_empty() || outer.aggr_expr.is_empty() {
            return Ok(None);
        }
        let Some((agg, _)) = aggregate_below(&outer.input, lit(true))? else {
            return Ok(None);
        };
        let Some((answers, rows)) = unmatched_answers(agg) else {
            return Ok(None);
        };
        let to_inner = |e: Expr| -> Result<Option<Expr>> {
            Ok(aggregate_below(&outer.input, e)?.map(|(_, e)| e))
        };
        let mut kinds = vec![];
        for call in &outer.aggr_expr {
            match outer_aggregate(call, &to_inner, &answers, &agg.schema, config)? {
                Some(kind) => kinds.push(kind),
                None => return Ok(None),
            }
        }
        let Some(new_agg) = prefiltered_aggregate(agg, rows)? else {
            return Ok(None);
        };
        let new_outer = LogicalPlan::Aggregate(Aggregate::try_new_with_schema(
            Arc::new(with_new_aggregate(&outer.input, new_agg)?),
            vec![],
            outer.aggr_expr.clone(),
            Arc::clone(&outer.schema),
        )?);
        if kinds.iter().all(|k| matches!(k, OuterAggregate::Ignores)) {
            return Ok(Some(new_outer));
        }
        // Whether the per-person input had any row: one row read, not a second scan.
        const ANY: &str = "__tidepool_any_rows";
        let any_rows = LogicalPlanBuilder::from(agg.input.as_ref().clone())
            .limit(0, Some(1))?
            .aggregate(Vec::<Expr>::new(), vec![count(lit(1)).alias(ANY)])?
            .build()?;
        let joined = LogicalPlanBuilder::from(new_outer)
            .cross_join(any_rows)?
            .build()?;
        let exprs = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                let (qualifier, field) = outer.schema.qualified_field(i);
                let column = Expr::Column(Column::from((qualifier, field)));
                let value = match kind {
                    OuterAggregate::Ignores => column,
                    OuterAggregate::AddsZero(zero) => when(
                        column.clone().is_null().and(col(ANY).gt(lit(0i64))),
                        lit(zero.clone()),
                    )
                    .otherwise(column)?,
                };
                Ok(value.alias_qualified(qualifier.cloned(), field.name()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(LogicalPlan::Projection(
            Projection::try_new_with_schema(exprs, Arc::new(joined), Arc::clone(&outer.schema))?,
        )))
    }
}

impl OptimizerRule for PrefilterConditionRows {
    fn name(&self) -> &str {
        "prefilter_condition_rows"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let on = crate::settings::TidepoolOptions::of(&config.options()).prefilter_condition_rows;
        if !on {
            return Ok(Transformed::no(plan));
        }
        let rewritten = match &plan {
            LogicalPlan::Filter(filter) => self.below_filter(filter, config)?,
            LogicalPlan::Aggregate(outer) => self.below_total(outer, config)?,
            _ => None,
        };
        Ok(match rewritten {
            Some(new) => Transformed::yes(new),
            None => Transformed::no(plan),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_random::Random;
    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray, TimestampSecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// A session over a random event table `t(p, ts, e)`: 40 people, events a..e.
    async fn session(seed: u64) -> SessionContext {
        let ctx = crate::test_session::session(
            SessionConfig::new().with_target_partitions(2),
            |_| {},
            |b| b.with_optimizer_rule(Arc::new(PrefilterConditionRows)),
        );
        let mut r = Random(seed);
        let rows = 600;
        let p: Vec<i64> = (0..rows).map(|_| r.below(40) as i64).collect();
        let ts: Vec<i64> = (0..rows).map(|_| r.below(5000) as i64).collect();
        let names = ["a", "b", "c", "d", "e"];
        // Rarer steps further down the alphabet, so some people never match.
        let e: Vec<&str> = (0..rows)
            .map(|_| names[(r.below(15) as f64).sqrt() as usize])
            .collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("p", DataType::Int64, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Second, None), false),
            Field::new("e", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(p)),
                Arc::new(TimestampSecondArray::from(ts)),
                Arc::new(StringArray::from(e)),
            ],
        )
        .unwrap();
        let half = batch.num_rows() / 2;
        let parts = vec![
            vec![batch.slice(0, half)],
            vec![batch.slice(half, rows - half)],
        ];
        let table = MemTable::try_new(schema, parts).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx
    }

    async fn run(ctx: &SessionContext, sql: &str, prefilter: bool) -> (String, String) {
        ctx.sql(&format!(
            "SET tidepool.prefilter_condition_rows = {prefilter}"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
        let df = ctx.sql(sql).await.unwrap();
        let plan = df
            .clone()
            .into_optimized_plan()
            .unwrap()
            .display_indent()
            .to_string();
        let batches = df.collect().await.unwrap();
        (pretty_format_batches(&batches).unwrap().to_string(), plan)
    }

    /// Whether a filter on the conditions sits below the per-person aggregation.
    fn prefiltered(plan: &str) -> bool {
        let below = plan
            .split_once("Aggregate: groupBy=[[t.p]]")
            .map(|(_, b)| b);
        below.is_some_and(|b| {
            b.lines()
                .any(|l| l.trim_start().starts_with("Filter:") && l.contains("t.e = "))
        })
    }

    const FIRES: [&str; 13] = [
        "SELECT count(*) FROM (SELECT sequence_match('(?1).*(?2)', ts, e = 'b', e = 'c') AS m FROM t GROUP BY p) WHERE m",
        "SELECT p FROM t GROUP BY p HAVING sequence_match('(?1)(?t<=900)(?2)', ts, e = 'b', e = 'd') ORDER BY p",
        "SELECT p, sequence_count('(?1)(?2)', ts, e = 'c', e = 'b') AS n FROM t GROUP BY p HAVING sequence_count('(?1)(?2)', ts, e = 'c', e = 'b') > 1 ORDER BY p",
        "SELECT p, l FROM (SELECT p, window_funnel(600, '', ts, e = 'b', e = 'c', e = 'd') AS l FROM t GROUP BY p) WHERE l >= 2 ORDER BY p",
        "SELECT p FROM t GROUP BY p HAVING window_funnel(600, 'strict_once', ts, e = 'b', e = 'c') = 2 AND sequence_match('(?1).*(?2)', ts, e = 'd', e = 'b') ORDER BY p",
        "SELECT p, r FROM (SELECT p, retention(e = 'c', e = 'd', e = 'e') AS r FROM t GROUP BY p) WHERE r[1] = 1 ORDER BY p",
        "SELECT count(*) FROM (SELECT p, sequence_match('(?1)', ts, e = 'e') AS m FROM t GROUP BY p) WHERE m AND p > 10",
        // Totals over every person that an unmatched person adds nothing to.
        "SELECT sum(c) AS matches, count(*) FILTER (WHERE c > 0) AS people FROM (SELECT sequence_count('(?1).*(?2)', ts, e = 'b', e = 'c') AS c FROM t GROUP BY p)",
        "SELECT count(*) FILTER (WHERE l >= 2), count(*) FILTER (WHERE m AND p > 5), sum(l * 2) FROM (SELECT p, window_funnel(600, '', ts, e = 'b', e = 'c', e = 'd') AS l, sequence_match('(?1)', ts, e = 'e') AS m FROM t GROUP BY p)",
        "SELECT count(CASE WHEN r[2] = 1 THEN p END) FROM (SELECT p, retention(e = 'c', e = 'd') AS r FROM t GROUP BY p)",
        "SELECT sum(r[1]), sum(r[2]), sum(r[3]) FROM (SELECT retention(ts >= TIMESTAMP '1970-01-01T00:16:40' AND ts < TIMESTAMP '1970-01-01T00:33:20', ts >= TIMESTAMP '1970-01-01T00:33:20' AND ts < TIMESTAMP '1970-01-01T00:50:00', e = 'c') AS r FROM t GROUP BY p)",
        // Nobody matches: the sum over every person is 0, not NULL.
        "SELECT sum(c), count(*) FILTER (WHERE c > 0) FROM (SELECT sequence_count('(?1)', ts, e = 'zzz') AS c FROM t GROUP BY p)",
        // Nobody at all: NULL.
        "SELECT sum(c), count(*) FILTER (WHERE c > 0) FROM (SELECT sequence_count('(?1)', ts, e = 'b') AS c FROM t WHERE p < 0 GROUP BY p)",
    ];

    const LEFT_ALONE: [&str; 13] = [
        // An unmatched group passes these filters, or is counted.
        "SELECT count(*) FROM (SELECT sequence_match('(?1).*(?2)', ts, e = 'b', e = 'c') AS m FROM t GROUP BY p) WHERE NOT m",
        "SELECT count(*) FROM (SELECT p, sequence_match('(?1)', ts, e = 'e') AS m FROM t GROUP BY p) WHERE m OR p > 30",
        "SELECT l, count(*) FROM (SELECT window_funnel(600, '', ts, e = 'b', e = 'c') AS l FROM t GROUP BY p) GROUP BY l ORDER BY l",
        // A row matching no step breaks a strict_order chain.
        "SELECT p FROM t GROUP BY p HAVING window_funnel(600, 'strict_order', ts, e = 'b', e = 'c') = 2 ORDER BY p",
        // count(*) sees every row.
        "SELECT p, count(*) FROM t GROUP BY p HAVING sequence_match('(?1)', ts, e = 'e') ORDER BY p",
        "SELECT p FROM t GROUP BY p HAVING sequence_match('(?1)', ts, e = 'e' OR random() < 0.0) ORDER BY p",
        // Totals that an unmatched person changes.
        "SELECT count(*), sum(c) FROM (SELECT sequence_count('(?1)', ts, e = 'b') AS c FROM t GROUP BY p)",
        "SELECT sum(c + 1) FROM (SELECT sequence_count('(?1)', ts, e = 'b') AS c FROM t GROUP BY p)",
        "SELECT max(c), min(c) FROM (SELECT sequence_count('(?1)', ts, e = 'b') AS c FROM t GROUP BY p)",
        "SELECT avg(c) FROM (SELECT sequence_count('(?1)', ts, e = 'b') AS c FROM t GROUP BY p)",
        "SELECT sum(c) FILTER (WHERE p > 1000) FROM (SELECT p, sequence_count('(?1)', ts, e = 'b') AS c FROM t GROUP BY p)",
        "SELECT count(DISTINCT c) FROM (SELECT sequence_count('(?1)', ts, e = 'b') AS c FROM t GROUP BY p)",
        "SELECT count(*) FILTER (WHERE NOT m) FROM (SELECT sequence_match('(?1)', ts, e = 'b') AS m FROM t GROUP BY p)",
    ];

    /// Whether `x` is in `e`, an `as_range` expression over Int64 bounds.
    fn in_range(e: &Expr, x: i64) -> bool {
        let (_, lo, hi) = as_range(e).expect("a range");
        let (ScalarValue::Int64(Some(l)), ScalarValue::Int64(Some(h))) = (lo.0, hi.0) else {
            panic!("Int64 bounds")
        };
        (x > l || (lo.1 && x == l)) && (x < h || (hi.1 && x == h))
    }

    #[test]
    fn merged_ranges_keep_exactly_the_same_values() {
        use datafusion::prelude::col;
        let mut r = Random(3);
        let x = || col("x");
        for round in 0..300 {
            let n = 1 + r.below(5) as usize;
            let ranges: Vec<Expr> = (0..n)
                .map(|_| {
                    let lo = lit(r.below(20) as i64);
                    let hi = lit(r.below(20) as i64);
                    let lower = if r.below(2) == 0 {
                        x().gt_eq(lo.clone())
                    } else {
                        x().gt(lo.clone())
                    };
                    let upper = if r.below(2) == 0 {
                        x().lt_eq(hi.clone())
                    } else {
                        x().lt(hi.clone())
                    };
                    // Either order, either side of the comparison.
                    match r.below(3) {
                        0 => lower.and(upper),
                        1 => upper.and(lower),
                        _ => lo.lt_eq(x()).and(upper),
                    }
                })
                .collect();
            let merged = merge_ranges(ranges.clone());
            assert!(merged.len() <= ranges.len());
            for v in -1..21 {
                let before = ranges.iter().any(|e| in_range(e, v));
                let after = merged.iter().any(|e| in_range(e, v));
                assert_eq!(
                    before, after,
                    "round {round}, x = {v}: {ranges:?} -> {merged:?}"
                );
            }
        }
        // Days one after another become one range; other conditions stay as they are.
        let day = |d: i64| x().gt_eq(lit(d)).and(x().lt(lit(d + 1)));
        let other = col("e").eq(lit("buy"));
        let merged = merge_ranges(vec![day(3), other.clone(), day(1), day(2), day(5)]);
        assert_eq!(
            merged,
            vec![other, x().gt_eq(lit(1i64)).and(x().lt(lit(4i64))), day(5)]
        );
    }

    #[tokio::test]
    async fn rows_matching_nothing_are_dropped_only_where_that_changes_no_answer() {
        for seed in 1..=4 {
            let ctx = session(seed).await;
            for sql in FIRES {
                let (with, plan) = run(&ctx, sql, true).await;
                let (without, plain) = run(&ctx, sql, false).await;
                assert_eq!(with, without, "seed {seed}: {sql}");
                assert!(prefiltered(&plan), "not rewritten: {sql}\n{plan}");
                if sql.contains("retention(ts") {
                    // Its two day ranges are filtered as one.
                    let filter = plan.lines().find(|l| l.contains("Filter: t.e = ")).unwrap();
                    assert_eq!(filter.matches("t.ts >=").count(), 1, "{plan}");
                }
                assert!(!prefiltered(&plain), "rewritten while off: {sql}\n{plain}");
                // Some groups pass and some do not, so the check means something.
                assert!(with.lines().count() > 4, "{sql}\n{with}");
            }
            for sql in LEFT_ALONE {
                let (_, plan) = run(&ctx, sql, true).await;
                assert!(!prefiltered(&plan), "rewritten: {sql}\n{plan}");
            }
        }
    }
}
