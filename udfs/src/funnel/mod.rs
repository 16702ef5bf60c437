//! `funnel(window, options, ts, tiebreak, hold, breakdown, cond1, ..., condN)`: a
//! person's funnel with the details a report needs — level, entry time, the time of each
//! step, whether an exclusion fired, and a breakdown value — and the policies peers
//! disagree on as explicit options.
//!
//! Docs with examples: `docs/functions/funnel.md`.

mod accumulator;
mod chain;
mod options;
#[cfg(test)]
mod tests;

use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, GroupsAccumulator, Signature,
    Volatility,
};

pub use chain::{find_chain, Chain, FunnelEvent};
pub use options::{Entry, Exclusion, FunnelOptions, Ties};

use crate::args::{coerce_conditions, literal, string_literal};
use crate::grouped::SingleGroup;
use accumulator::{FunnelGroups, FunnelSpec};

pub const NAME: &str = "funnel";
const ARG_WINDOW: usize = 0;
const ARG_OPTIONS: usize = 1;
const ARG_TS: usize = 2;
const ARG_TIEBREAK: usize = 3;
const ARG_HOLD: usize = 4;
const ARG_BREAKDOWN: usize = 5;
const ARG_CONDS: usize = 6;

pub fn funnel_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(Funnel::new())));
    Arc::clone(&UDAF)
}

fn plan_err(msg: String) -> DataFusionError {
    crate::args::plan_err(NAME, msg)
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Funnel {
    signature: Signature,
}

impl Default for Funnel {
    fn default() -> Self {
        Self::new()
    }
}

impl Funnel {
    pub fn new() -> Self {
        Funnel {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

/// entry_time and step_times keep the type of `ts` (Int64 for an integer `ts`).
fn time_type(ts: &DataType) -> DataType {
    match ts {
        DataType::Timestamp(_, _) => ts.clone(),
        _ => DataType::Int64,
    }
}

fn result_fields(ts: &DataType) -> Fields {
    let t = time_type(ts);
    Fields::from(vec![
        Field::new("level", DataType::UInt8, false),
        Field::new("entry_time", t.clone(), true),
        Field::new(
            "step_times",
            DataType::List(Arc::new(Field::new_list_field(t, true))),
            false,
        ),
        Field::new("excluded", DataType::Boolean, false),
        Field::new("breakdown", DataType::Utf8, true),
    ])
}

fn options_from(args: &AccumulatorArgs) -> Result<FunnelOptions> {
    let ts = args.expr_fields[ARG_TS].data_type();
    let window = literal(NAME, &args.exprs[ARG_WINDOW], "argument 1 (window)")?;
    let text = string_literal(NAME, &args.exprs[ARG_OPTIONS], "argument 2 (options)")?;
    let conds = args.exprs.len() - ARG_CONDS;
    let mut options = FunnelOptions::parse(&window, &text, conds, ts)?;
    options.hold = args.expr_fields[ARG_HOLD].data_type() != &DataType::Null;
    Ok(options)
}

impl AggregateUDFImpl for Funnel {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        if types.len() < ARG_CONDS + 1 {
            return Err(plan_err(format!(
                "expected funnel(window, options, ts, tiebreak, hold, breakdown, cond1, ..., \
                 condN), got {} arguments",
                types.len()
            )));
        }
        if types.len() - ARG_CONDS > 64 {
            return Err(plan_err(format!(
                "at most 64 conditions, got {}",
                types.len() - ARG_CONDS
            )));
        }
        if !(types[ARG_WINDOW].is_integer() || matches!(types[ARG_WINDOW], DataType::Interval(_))) {
            return Err(plan_err(format!(
                "argument 1 (window) must be an INTERVAL or an integer, got {}",
                types[ARG_WINDOW]
            )));
        }
        if !matches!(
            types[ARG_OPTIONS],
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
        ) {
            return Err(plan_err(format!(
                "argument 2 (options) must be a string, got {}",
                types[ARG_OPTIONS]
            )));
        }
        let ts = &types[ARG_TS];
        if !(ts.is_integer() || matches!(ts, DataType::Timestamp(_, _))) {
            return Err(plan_err(format!(
                "argument 3 (ts) must be a timestamp or an integer, got {ts}"
            )));
        }
        let tb = &types[ARG_TIEBREAK];
        if !(tb.is_integer() || matches!(tb, DataType::Timestamp(_, _) | DataType::Null)) {
            return Err(plan_err(format!(
                "argument 4 (tiebreak) must be NULL, an integer or a timestamp, got {tb}"
            )));
        }
        coerce_conditions(NAME, types, ARG_CONDS)
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(result_fields(&arg_types[ARG_TS])))
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleGroup(self.groups(&args)?)))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(crate::args::list_state_fields(
            args.name,
            &[
                ("ts", DataType::Int64),
                ("tiebreak", DataType::Int64),
                ("row", DataType::UInt64),
                ("mask", DataType::UInt64),
                ("hold", DataType::Utf8),
                ("breakdown", DataType::Utf8),
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
        Ok(Box::new(self.groups(&args)?))
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            Documentation::builder(
                crate::args::doc_section("tidepool funnels"),
                "A person's funnel as a struct {level, entry_time, step_times, excluded, \
                 breakdown}, with the entry policy, tie policy, exclusions, unordered steps, \
                 per-step windows, a held property and a breakdown as options.",
                "funnel(window, options, ts, tiebreak, hold, breakdown, cond1, ..., condN)",
            )
            .with_sql_example(
                "SELECT funnel(INTERVAL '1 day', 'entry=best; ties=strict', event_time, NULL, NULL, channel,\n  event_name = 'view_item', event_name = 'add_to_cart', event_name = 'purchase')\nFROM events GROUP BY anonymous_id",
            )
            .with_argument("window", "INTERVAL or integer literal: the whole funnel's window from the entry")
            .with_argument("options", "string literal of key=value pairs separated by ';': entry=first|latest|best, ties=advance|strict, order=ordered|unordered, steps=N, step_windows=D,D,..., exclude=C:I-J,..., breakdown_step=K")
            .with_argument("ts", "timestamp or integer")
            .with_argument("tiebreak", "NULL, or an integer/timestamp column ordering events at equal ts")
            .with_argument("hold", "NULL, or a column every step must share with the entry")
            .with_argument("breakdown", "NULL, or a column whose value at the breakdown step is returned (as text)")
            .with_argument("cond1, ..., condN", "booleans: the steps, then any exclusion conditions")
            .build()
        });
        Some(&DOC)
    }
}

impl Funnel {
    fn groups(&self, args: &AccumulatorArgs) -> Result<FunnelGroups> {
        let ts = args.expr_fields[ARG_TS].data_type();
        Ok(FunnelGroups::new(FunnelSpec::new(
            options_from(args)?,
            time_type(ts),
            result_fields(ts),
        )))
    }
}
