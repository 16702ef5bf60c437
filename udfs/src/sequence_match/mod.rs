//! `sequence_match(pattern, ts, cond1, ..., condN)` → boolean and
//! `sequence_count(pattern, ts, cond1, ..., condN)` → integer: ClickHouse's
//! `sequenceMatch` and `sequenceCount`, with the same answers, rows of equal time in a
//! fixed order, and no iteration limit (the matcher is linear in the rows).
//!
//! Docs with examples: `docs/functions/sequence_match.md`.
//!
//! Layout: [`pattern`] parses the pattern, [`matcher`] answers for one group's sorted
//! events, [`accumulator`] keeps the rows where some condition holds — (ts, conditions)
//! pairs, 16 bytes each — for every group in one flat buffer.

mod accumulator;
pub mod matcher;
pub mod pattern;
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
use datafusion::scalar::ScalarValue;

use crate::args::{coerce_conditions, duration_in_ts_units, string_literal};
use crate::grouped::SingleGroup;
use accumulator::{SequenceGroups, SequenceSpec};
use matcher::Matcher;

/// The most conditions one call may have (ClickHouse allows 32).
pub const MAX_CONDITIONS: usize = 64;

pub fn sequence_match_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(Sequence::new(Answer::Match))));
    Arc::clone(&UDAF)
}

pub fn sequence_count_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(Sequence::new(Answer::Count))));
    Arc::clone(&UDAF)
}

/// What a call answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// `sequence_match`: whether the pattern matches.
    Match,
    /// `sequence_count`: how many non-overlapping matches.
    Count,
}

impl Answer {
    pub const fn name(self) -> &'static str {
        match self {
            Answer::Match => "sequence_match",
            Answer::Count => "sequence_count",
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Sequence {
    answer: Answer,
    signature: Signature,
}

impl Sequence {
    /// Which of the two functions this is.
    pub fn answer(&self) -> Answer {
        self.answer
    }

    pub fn new(answer: Answer) -> Self {
        Sequence {
            answer,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    fn plan_err(&self, msg: String) -> DataFusionError {
        crate::args::plan_err(self.answer.name(), msg)
    }

    fn spec(&self, args: &AccumulatorArgs) -> Result<SequenceSpec> {
        let name = self.answer.name();
        let text = string_literal(name, &args.exprs[0], "argument 1 (pattern)")?;
        let conditions = args.exprs.len() - 2;
        let pattern = pattern::parse(&text, conditions).map_err(|m| self.plan_err(m))?;
        // Pattern times are seconds for a timestamp, the integer's own units otherwise.
        let ts = args.expr_fields[1].data_type();
        let scale =
            duration_in_ts_units(name, &ScalarValue::Int64(Some(1)), ts, "argument 2 (ts)")?;
        let matcher = Matcher::new(&pattern, scale).map_err(|m| self.plan_err(m))?;
        Ok(SequenceSpec::new(self.answer, matcher))
    }
}

impl AggregateUDFImpl for Sequence {
    fn name(&self) -> &str {
        self.answer.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let name = self.answer.name();
        if types.len() < 3 {
            return Err(self.plan_err(format!(
                "expected {name}(pattern, ts, cond1, ..., condN), got {} arguments",
                types.len()
            )));
        }
        if types.len() - 2 > MAX_CONDITIONS {
            return Err(self.plan_err(format!(
                "at most {MAX_CONDITIONS} conditions, got {}",
                types.len() - 2
            )));
        }
        if !matches!(
            types[0],
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null
        ) {
            return Err(self.plan_err(format!(
                "argument 1 (pattern) must be a string, got {}",
                types[0]
            )));
        }
        if !(types[1].is_integer() || matches!(types[1], DataType::Timestamp(_, _))) {
            return Err(self.plan_err(format!(
                "argument 2 (ts) must be a timestamp or an integer, got {}",
                types[1]
            )));
        }
        coerce_conditions(name, types, 2)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.answer {
            Answer::Match => DataType::Boolean,
            Answer::Count => DataType::UInt64,
        })
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleGroup(SequenceGroups::new(
            self.spec(&args)?,
        ))))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(crate::args::list_state_fields(
            args.name,
            &[("ts", DataType::Int64), ("conditions", DataType::UInt64)],
        ))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(SequenceGroups::new(self.spec(&args)?)))
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(match self.answer {
            Answer::Match => ScalarValue::Boolean(Some(false)),
            Answer::Count => ScalarValue::UInt64(Some(0)),
        })
    }

    fn documentation(&self) -> Option<&Documentation> {
        static MATCH: LazyLock<Documentation> = LazyLock::new(|| documentation(Answer::Match));
        static COUNT: LazyLock<Documentation> = LazyLock::new(|| documentation(Answer::Count));
        Some(match self.answer {
            Answer::Match => &MATCH,
            Answer::Count => &COUNT,
        })
    }
}

fn documentation(answer: Answer) -> Documentation {
    let (what, example) = match answer {
        Answer::Match => (
            "Whether a group's rows, in time order, contain the pattern. Same answers as \
             ClickHouse's sequenceMatch.",
            "SELECT count(*) FROM (\n  SELECT anonymous_id FROM events GROUP BY anonymous_id\n  HAVING sequence_match('(?1)(?t<=3600)(?2)', event_time,\n    event_name = 'view_item', event_name = 'purchase'))",
        ),
        Answer::Count => (
            "How many non-overlapping times a group's rows, in time order, contain the \
             pattern. Same answers as ClickHouse's sequenceCount.",
            "SELECT anonymous_id, sequence_count('(?1).*(?2)', event_time,\n    event_name = 'view_item', event_name = 'add_to_cart') AS carts\nFROM events GROUP BY anonymous_id",
        ),
    };
    let signature = format!("{}(pattern, ts, cond1, ..., condN)", answer.name());
    Documentation::builder(crate::args::doc_section("tidepool paths"), what, signature)
        .with_sql_example(example)
        .with_argument(
            "pattern",
            "string literal: (?N) a row where condN holds, . any row, .* any rows, \
             (?t op n) with op <, <=, >, >=, == the time since the previous matched row \
             (seconds for a timestamp ts)",
        )
        .with_argument("ts", "timestamp (any unit) or integer")
        .with_argument("cond1, ..., condN", "boolean conditions, 1 to 64")
        .build()
}
