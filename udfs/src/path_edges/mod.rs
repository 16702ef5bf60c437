//! `path_edges(options, ts, event)`: a group's path through its events as Sankey edges,
//! a list of {step, from_event, to_event}. Options (`key=value; ...`): `start=E` /
//! `end=E` anchor the path at the first E, `max_steps=N` (default 10), `session_gap=D`
//! stops at a longer pause, `window=D` keeps within D of the anchor, `collapse=true`
//! merges immediate repeats, and `replace=REGEX => REPLACEMENT` (repeatable) cleans
//! event names, e.g. URLs into templates.
//!
//! Docs, and the query that turns edges into the top-K per step with an "other"
//! bucket: `docs/functions/path_edges.md`.

mod accumulator;
pub mod options;
pub mod path;

use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, GroupsAccumulator, Signature,
    Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::args::{duration_in_ts_units, is_string, string_column_type, string_literal};
use crate::grouped::SingleGroup;
use accumulator::{PathGroups, PathSpec};
use options::PathOptions;

pub const NAME: &str = "path_edges";

pub fn path_edges_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(PathEdges::new())));
    Arc::clone(&UDAF)
}

fn plan_err(msg: String) -> DataFusionError {
    crate::args::plan_err(NAME, msg)
}

/// The fields of one edge.
pub fn edge_fields() -> Fields {
    Fields::from(vec![
        Field::new("step", DataType::Int32, false),
        Field::new("from_event", DataType::Utf8, false),
        Field::new("to_event", DataType::Utf8, false),
    ])
}

fn item_field() -> FieldRef {
    Arc::new(Field::new_list_field(
        DataType::Struct(edge_fields()),
        false,
    ))
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PathEdges {
    signature: Signature,
}

impl Default for PathEdges {
    fn default() -> Self {
        Self::new()
    }
}

impl PathEdges {
    pub fn new() -> Self {
        PathEdges {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    fn spec(&self, args: &AccumulatorArgs) -> Result<PathSpec> {
        let text = string_literal(NAME, &args.exprs[0], "argument 1 (options)")?;
        let options = PathOptions::parse(&text)?;
        // Durations are seconds for a timestamp, the integer's own units otherwise.
        let ts = args.expr_fields[1].data_type();
        let scale =
            duration_in_ts_units(NAME, &ScalarValue::Int64(Some(1)), ts, "argument 2 (ts)")?;
        Ok(PathSpec::new(options, scale))
    }
}

impl AggregateUDFImpl for PathEdges {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        if types.len() != 3 {
            return Err(plan_err(format!(
                "expected path_edges(options, ts, event), got {} arguments",
                types.len()
            )));
        }
        if !(is_string(&types[0]) || types[0] == DataType::Null) {
            return Err(plan_err(format!(
                "argument 1 (options) must be a string, got {}",
                types[0]
            )));
        }
        if !(types[1].is_integer() || matches!(types[1], DataType::Timestamp(_, _))) {
            return Err(plan_err(format!(
                "argument 2 (ts) must be a timestamp or an integer, got {}",
                types[1]
            )));
        }
        let event = string_column_type(&types[2]).ok_or_else(|| {
            plan_err(format!(
                "argument 3 (event) must be a string, got {}",
                types[2]
            ))
        })?;
        Ok(vec![types[0].clone(), types[1].clone(), event])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(item_field()))
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleGroup(PathGroups::new(self.spec(&args)?))))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(crate::args::list_state_fields(
            args.name,
            &[("ts", DataType::Int64), ("event", DataType::Utf8)],
        ))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(PathGroups::new(self.spec(&args)?)))
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        empty_list()
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            Documentation::builder(
                crate::args::doc_section("tidepool paths"),
                "A group's path through its events, in time order, as Sankey edges: a list of \
                 {step, from_event, to_event}. unnest + GROUP BY step, from_event, to_event \
                 counts the transitions; docs/functions/path_edges.md has the top-K query.",
                "path_edges(options, ts, event)",
            )
            .with_sql_example(
                "SELECT e['step'] AS step, e['from_event'] AS from_event, e['to_event'] AS to_event, count(*) AS people\nFROM (SELECT unnest(path_edges('start=view_item; max_steps=3; collapse=true', event_time, event_name)) AS e\n      FROM events GROUP BY anonymous_id)\nGROUP BY 1, 2, 3 ORDER BY 1, 4 DESC",
            )
            .with_argument("options", "string literal, key=value pairs separated by ';': start=E, end=E, max_steps=N (default 10), session_gap=D, window=D (D like 90s, 30m, 1h, 2d), collapse=true, replace=REGEX => REPLACEMENT (repeatable)")
            .with_argument("ts", "timestamp (any unit) or integer")
            .with_argument("event", "any string column: the event names")
            .build()
        });
        Some(&DOC)
    }
}

/// An empty edge list, the answer for a group without rows.
fn empty_list() -> Result<ScalarValue> {
    let values = datafusion::arrow::array::new_empty_array(&DataType::Struct(edge_fields()));
    Ok(ScalarValue::List(Arc::new(crate::grouped::one_row_list(
        values, false,
    ))))
}
