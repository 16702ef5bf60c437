//! `window_funnel(window, mode, ts, cond1, ..., condN)`: the funnel level a group (one
//! person, normally) reached, with the same answers as ClickHouse's
//! `windowFunnel(window, mode...)(ts, cond1, ..., condN)`.
//!
//! Docs with examples: `docs/functions/window_funnel.md`.
//!
//! Layout: [`options`] reads the literal arguments, [`level`] computes the level of one
//! group's sorted events, [`accumulator`] keeps the events of every group in one flat
//! buffer (a `GroupsAccumulator`, with `convert_to_state` so that partial aggregation
//! can be skipped).

mod accumulator;
mod level;
pub(crate) mod options;
#[cfg(test)]
mod tests;

use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, GroupsAccumulator, Signature,
    Volatility,
};

pub use level::{funnel_level, Event};
pub use options::{FunnelMode, FunnelOptions};

use crate::grouped::SingleGroup;
use accumulator::{FunnelGroups, FunnelSpec};

pub const NAME: &str = "window_funnel";
/// The most conditions one call may have.
pub const MAX_STEPS: usize = 64;

pub fn window_funnel_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(WindowFunnel::new())));
    Arc::clone(&UDAF)
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WindowFunnel {
    signature: Signature,
}

impl Default for WindowFunnel {
    fn default() -> Self {
        Self::new()
    }
}

impl WindowFunnel {
    pub fn new() -> Self {
        WindowFunnel {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn plan_err(msg: String) -> DataFusionError {
    crate::args::plan_err(NAME, msg)
}

impl AggregateUDFImpl for WindowFunnel {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        options::check_argument_types(arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::UInt8)
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let options = FunnelOptions::from_args(&args)?;
        Ok(Box::new(SingleGroup(FunnelGroups::new(FunnelSpec::new(
            options,
        )))))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(crate::args::list_state_fields(
            args.name,
            &[
                ("ts", DataType::Int64),
                ("step", DataType::UInt8),
                ("row", DataType::UInt64),
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
        Ok(Box::new(FunnelGroups::new(FunnelSpec::new(
            FunnelOptions::from_args(&args)?,
        ))))
    }

    fn default_value(&self, _data_type: &DataType) -> Result<datafusion::scalar::ScalarValue> {
        Ok(datafusion::scalar::ScalarValue::UInt8(Some(0)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            Documentation::builder(
                crate::args::doc_section("tidepool funnels"),
                "The funnel level (0..N) a group reached: the longest chain cond1 → cond2 → … \
                 whose events all fall within `window` of the chain's first event. Same \
                 answers as ClickHouse's windowFunnel.",
                "window_funnel(window, mode, ts, cond1, ..., condN)",
            )
            .with_sql_example(
                "SELECT level, count(*) FROM (\n  SELECT window_funnel(INTERVAL '1 day', '', event_time,\n    event_name = 'view_item', event_name = 'add_to_cart', event_name = 'purchase') AS level\n  FROM events GROUP BY anonymous_id) GROUP BY level ORDER BY level",
            )
            .with_argument("window", "INTERVAL literal, or an integer literal: seconds for a timestamp `ts`, the integer's own unit for an integer `ts`")
            .with_argument("mode", "string literal: '' or a comma-separated set of strict_deduplication, strict_order, strict_increase, strict_once, allow_reentry")
            .with_argument("ts", "timestamp (any unit) or integer")
            .with_argument("cond1, ..., condN", "boolean conditions, 1 to 64")
            .build()
        });
        Some(&DOC)
    }
}
