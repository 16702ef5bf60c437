//! `attribution(lookback, options, ts, channel, conversion, value)`: rule-based
//! multi-touch attribution over one person's rows. Each conversion's credit goes to the
//! touches (rows with a channel) in `[ts - lookback, ts]` by the model in `options`; the
//! result lists, per channel, the credited conversions and value, so that
//! `unnest` + `GROUP BY channel` gives the channel report.
//!
//! Docs with examples and the formulas: `docs/functions/attribution.md`.

mod accumulator;
pub mod models;

use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, TimeUnit};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, GroupsAccumulator, Signature,
    Volatility,
};

use crate::args::{duration_in_ts_units, literal, string_literal};
use crate::grouped::SingleGroup;
use accumulator::{AttributionGroups, AttributionSpec};

pub const NAME: &str = "attribution";
/// The channel conversions without a touch in their lookback are credited to.
pub const NO_TOUCH: &str = "(none)";

const ARG_LOOKBACK: usize = 0;
const ARG_OPTIONS: usize = 1;
const ARG_TS: usize = 2;
const ARG_CHANNEL: usize = 3;
const ARG_CONVERSION: usize = 4;
const ARG_VALUE: usize = 5;

pub fn attribution_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(Attribution::new())));
    Arc::clone(&UDAF)
}

fn plan_err(msg: String) -> DataFusionError {
    crate::args::plan_err(NAME, msg)
}

/// The fields of one result item: {channel, conversions, value}.
pub fn credit_fields() -> Fields {
    Fields::from(vec![
        Field::new("channel", DataType::Utf8, false),
        Field::new("conversions", DataType::Float64, false),
        Field::new("value", DataType::Float64, false),
    ])
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Attribution {
    signature: Signature,
}

impl Default for Attribution {
    fn default() -> Self {
        Self::new()
    }
}

impl Attribution {
    pub fn new() -> Self {
        Attribution {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    fn groups(&self, args: &AccumulatorArgs) -> Result<AttributionGroups> {
        let ts = args.expr_fields[ARG_TS].data_type();
        let lookback = literal(NAME, &args.exprs[ARG_LOOKBACK], "argument 1 (lookback)")?;
        let lookback = duration_in_ts_units(NAME, &lookback, ts, "argument 1 (lookback)")?;
        let options = string_literal(NAME, &args.exprs[ARG_OPTIONS], "argument 2 (options)")?;
        let us_per_unit = match ts {
            DataType::Timestamp(TimeUnit::Second, _) => Some(1e6),
            DataType::Timestamp(TimeUnit::Millisecond, _) => Some(1e3),
            DataType::Timestamp(TimeUnit::Microsecond, _) => Some(1.0),
            DataType::Timestamp(TimeUnit::Nanosecond, _) => Some(1e-3),
            _ => None,
        };
        let model = models::parse_options(NAME, &options, us_per_unit)?;
        Ok(AttributionGroups::new(AttributionSpec::new(
            model,
            lookback,
            credit_fields(),
        )))
    }
}

impl AggregateUDFImpl for Attribution {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        if types.len() != 6 {
            return Err(plan_err(format!(
                "expected attribution(lookback, options, ts, channel, conversion, value), got {} \
                 arguments",
                types.len()
            )));
        }
        let lookback = &types[ARG_LOOKBACK];
        if !(lookback.is_integer() || matches!(lookback, DataType::Interval(_))) {
            return Err(plan_err(format!(
                "argument 1 (lookback) must be an INTERVAL or an integer, got {lookback}"
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
        let Some(channel) = crate::args::string_column_type(&types[ARG_CHANNEL]) else {
            return Err(plan_err(format!(
                "argument 4 (channel) must be a string (NULL on rows that are not touches), got {}",
                types[ARG_CHANNEL]
            )));
        };
        if !matches!(types[ARG_CONVERSION], DataType::Boolean | DataType::Null) {
            return Err(plan_err(format!(
                "argument 5 (conversion) must be a boolean, got {}",
                types[ARG_CONVERSION]
            )));
        }
        let value = &types[ARG_VALUE];
        if !(value.is_numeric() || value == &DataType::Null) {
            return Err(plan_err(format!(
                "argument 6 (value) must be a number or NULL, got {value}"
            )));
        }
        Ok(vec![
            lookback.clone(),
            DataType::Utf8,
            ts.clone(),
            // As read (no copy of Parquet's string views); the accumulator takes any.
            channel,
            DataType::Boolean,
            DataType::Float64,
        ])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new_list_field(
            DataType::Struct(credit_fields()),
            false,
        ))))
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
                (
                    "channel",
                    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                ),
                ("conversion", DataType::Boolean),
                ("value", DataType::Float64),
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
                crate::args::doc_section("tidepool attribution"),
                "Rule-based attribution of one person's conversions to the channels that \
                 touched them within a lookback window: a list of {channel, conversions, \
                 value}; conversions without a touch go to '(none)'.",
                "attribution(lookback, options, ts, channel, conversion, value)",
            )
            .with_sql_example(
                "SELECT c['channel'], sum(c['conversions']), sum(c['value']) FROM (\n  SELECT unnest(attribution(INTERVAL '7 days', 'model=linear', event_time, channel,\n                             event_name = 'purchase', revenue)) AS c\n  FROM events GROUP BY anonymous_id) GROUP BY 1",
            )
            .with_argument("lookback", "INTERVAL or integer literal: how far before a conversion touches count (both ends included)")
            .with_argument("options", "string literal: model=first_touch|last_touch|last_non_direct|linear|participation|position_based|time_decay, with first=, last= (position_based), half_life= (time_decay, default 7d), direct= (last_non_direct, default 'direct')")
            .with_argument("ts", "timestamp or integer")
            .with_argument("channel", "the touch's channel; NULL on rows that are not touches")
            .with_argument("conversion", "boolean: the row is a conversion")
            .with_argument("value", "the conversion's value (NULL counts as 0)")
            .build()
        });
        Some(&DOC)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionConfig;

    /// Parquet's strings arrive as views; the channel argument takes them as they are
    /// (the accumulator interns a short name by its view), so no cast copies every
    /// batch's channels into a new string array.
    #[tokio::test]
    async fn channels_are_read_without_a_cast() {
        let ctx = crate::test_session::session(SessionConfig::new(), |_| {}, |b| b);
        for (name, ty) in [
            ("views", "Utf8View"),
            ("strings", "Utf8"),
            ("large", "LargeUtf8"),
        ] {
            ctx.sql(&format!(
                "CREATE VIEW {name} AS SELECT p, ts, arrow_cast(ch, '{ty}') AS ch, conv FROM \
                 (VALUES (1, 0, 'email', false), (1, 5, NULL, true)) AS v(p, ts, ch, conv)"
            ))
            .await
            .unwrap();
            let plan = ctx
                .sql(&format!(
                    "SELECT attribution(10, 'model=linear', ts, ch, conv, 1.0) FROM {name} GROUP BY p"
                ))
                .await
                .unwrap()
                .into_optimized_plan()
                .unwrap();
            let text = plan.display_indent().to_string();
            // The view's own arrow_cast shows lower down; the aggregate's line must not cast.
            let aggregate = text.lines().find(|l| l.contains("Aggregate:")).unwrap();
            assert!(aggregate.contains("attribution("), "{text}");
            assert!(!aggregate.contains("CAST("), "{ty}: {text}");
        }
    }
}
