//! `sequence_next_node(direction, base, ts, event_column, base_cond, event1, ..., eventK)`:
//! ClickHouse's `sequenceNextNode`. In a group's rows ordered by (ts, value), find the
//! base row, check that it and the rows after it (forward) or before it (backward)
//! match event1..eventK in turn, and answer the value of the row after that chain
//! (NULL when there is none).
//!
//! Bases: `head` (the first row, forward only), `tail` (the last row, backward only),
//! `first_match` / `last_match` (the first / last row where event1 holds). The base row
//! must also satisfy `base_cond`.
//!
//! Docs with examples: `docs/functions/sequence_next_node.md`.

mod accumulator;

use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, GroupsAccumulator, Signature,
    Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::args::{coerce_conditions, is_string, string_column_type, string_literal};
use crate::grouped::SingleGroup;
use accumulator::{NextNodeGroups, NextNodeSpec};

pub const NAME: &str = "sequence_next_node";
/// The most event conditions one call may have (as in ClickHouse).
pub const MAX_EVENTS: usize = 64;

pub fn sequence_next_node_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(SequenceNextNode::new())));
    Arc::clone(&UDAF)
}

fn plan_err(msg: String) -> DataFusionError {
    crate::args::plan_err(NAME, msg)
}

/// Which way the chain runs from the base row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// Which row the chain starts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Head,
    Tail,
    FirstMatch,
    LastMatch,
}

/// Everything a call fixes before it sees a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextNodeOptions {
    pub direction: Direction,
    pub base: Base,
    /// How many event conditions (K).
    pub events: usize,
}

impl NextNodeOptions {
    pub fn parse(direction: &str, base: &str, events: usize) -> Result<Self> {
        let direction = match direction {
            "forward" => Direction::Forward,
            "backward" => Direction::Backward,
            other => {
                return Err(plan_err(format!(
                    "argument 1 (direction) must be 'forward' or 'backward', got '{other}'"
                )))
            }
        };
        let base = match base {
            "head" => Base::Head,
            "tail" => Base::Tail,
            "first_match" => Base::FirstMatch,
            "last_match" => Base::LastMatch,
            other => {
                return Err(plan_err(format!(
                    "argument 2 (base) must be 'head', 'tail', 'first_match' or 'last_match', got '{other}'"
                )))
            }
        };
        match (direction, base) {
            (Direction::Backward, Base::Head) => {
                return Err(plan_err(
                    "base 'head' goes forward only: nothing comes before the first row".to_string(),
                ))
            }
            (Direction::Forward, Base::Tail) => {
                return Err(plan_err(
                    "base 'tail' goes backward only: nothing comes after the last row".to_string(),
                ))
            }
            _ => {}
        }
        if matches!(base, Base::FirstMatch | Base::LastMatch) && events == 0 {
            return Err(plan_err(
                "bases 'first_match' and 'last_match' need at least one event condition (event1 finds the base)"
                    .to_string(),
            ));
        }
        Ok(NextNodeOptions {
            direction,
            base,
            events,
        })
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SequenceNextNode {
    signature: Signature,
}

impl Default for SequenceNextNode {
    fn default() -> Self {
        Self::new()
    }
}

impl SequenceNextNode {
    pub fn new() -> Self {
        SequenceNextNode {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    fn spec(&self, args: &AccumulatorArgs) -> Result<NextNodeSpec> {
        let direction = string_literal(NAME, &args.exprs[0], "argument 1 (direction)")?;
        let base = string_literal(NAME, &args.exprs[1], "argument 2 (base)")?;
        let options = NextNodeOptions::parse(&direction, &base, args.exprs.len() - 5)?;
        Ok(NextNodeSpec::new(
            options,
            args.return_field.data_type().clone(),
        ))
    }
}

impl AggregateUDFImpl for SequenceNextNode {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        if types.len() < 5 {
            return Err(plan_err(format!(
                "expected sequence_next_node(direction, base, ts, event_column, base_cond, event1, ..., eventK), got {} arguments",
                types.len()
            )));
        }
        if types.len() - 5 > MAX_EVENTS {
            return Err(plan_err(format!(
                "at most {MAX_EVENTS} event conditions, got {}",
                types.len() - 5
            )));
        }
        for (i, what) in [(0, "direction"), (1, "base")] {
            if !(is_string(&types[i]) || types[i] == DataType::Null) {
                return Err(plan_err(format!(
                    "argument {} ({what}) must be a string, got {}",
                    i + 1,
                    types[i]
                )));
            }
        }
        if !(types[2].is_integer() || matches!(types[2], DataType::Timestamp(_, _))) {
            return Err(plan_err(format!(
                "argument 3 (ts) must be a timestamp or an integer, got {}",
                types[2]
            )));
        }
        let mut out = types.to_vec();
        // Any string-like column: dictionary-encoded strings are read as their values.
        out[3] = string_column_type(&types[3]).ok_or_else(|| {
            plan_err(format!(
                "argument 4 (event_column) must be a string, got {}",
                types[3]
            ))
        })?;
        match &types[4] {
            DataType::Boolean => {}
            DataType::Null => out[4] = DataType::Boolean,
            other => {
                return Err(plan_err(format!(
                    "argument 5 (base_cond) must be a boolean, got {other}"
                )))
            }
        }
        let conditions =
            coerce_conditions(NAME, types, 5).map_err(|_| plan_err(event_type_error(types)))?;
        out[5..].clone_from_slice(&conditions[5..]);
        Ok(out)
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[3].clone())
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleGroup(NextNodeGroups::new(
            self.spec(&args)?,
        ))))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(crate::args::list_state_fields(
            args.name,
            &[
                ("ts", DataType::Int64),
                ("value", DataType::Utf8),
                ("base", DataType::Boolean),
                ("events", DataType::UInt64),
            ],
        ))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(NextNodeGroups::new(self.spec(&args)?)))
    }

    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        ScalarValue::try_from(data_type)
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            Documentation::builder(
                crate::args::doc_section("tidepool paths"),
                "The value of the row right after (forward) or before (backward) a chain of \
                 rows matching event1..eventK from a base row, in (ts, value) order; NULL when \
                 there is none. Same answers as ClickHouse's sequenceNextNode.",
                "sequence_next_node(direction, base, ts, event_column, base_cond, event1, ..., eventK)",
            )
            .with_sql_example(
                "SELECT next, count(*) FROM (\n  SELECT sequence_next_node('forward', 'first_match', event_time, event_name, true,\n    event_name = 'add_to_cart') AS next\n  FROM events GROUP BY anonymous_id) GROUP BY next ORDER BY 2 DESC",
            )
            .with_argument("direction", "'forward' or 'backward'")
            .with_argument("base", "'head' (forward), 'tail' (backward), 'first_match' or 'last_match' (the first or last row where event1 holds)")
            .with_argument("ts", "timestamp (any unit, kept exactly) or integer")
            .with_argument("event_column", "any string column: the values answered")
            .with_argument("base_cond", "boolean: the base row must satisfy it")
            .with_argument("event1, ..., eventK", "boolean conditions the chain's rows must match in turn, 0 to 64")
            .build()
        });
        Some(&DOC)
    }
}

fn event_type_error(types: &[DataType]) -> String {
    let (i, t) = types
        .iter()
        .enumerate()
        .skip(5)
        .find(|(_, t)| !matches!(t, DataType::Boolean | DataType::Null))
        .expect("a non-boolean event");
    format!(
        "argument {} (event{}) must be a boolean, got {t}",
        i + 1,
        i - 4
    )
}
