//! `sessionize(ts [, gap])`: a window function that numbers a person's sessions, for
//! data without a session id. Over `PARTITION BY person ORDER BY ts`, the first row is
//! in session 1 and a row starts the next session when more than `gap` (default 30
//! minutes) has passed since the row before it.
//!
//! Docs with examples: `docs/functions/sessionize.md`.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, UInt64Builder};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{
    Documentation, PartitionEvaluator, Signature, Volatility, WindowUDF, WindowUDFImpl,
};
use datafusion::scalar::ScalarValue;

use crate::args::{duration_in_ts_units, literal};

pub const NAME: &str = "sessionize";
/// The inactivity gap when none is given: 30 minutes.
pub const DEFAULT_GAP_SECONDS: i64 = 30 * 60;

pub fn sessionize_udwf() -> Arc<WindowUDF> {
    static UDWF: LazyLock<Arc<WindowUDF>> =
        LazyLock::new(|| Arc::new(WindowUDF::from(Sessionize::new())));
    Arc::clone(&UDWF)
}

fn plan_err(msg: String) -> DataFusionError {
    crate::args::plan_err(NAME, msg)
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Sessionize {
    signature: Signature,
}

impl Default for Sessionize {
    fn default() -> Self {
        Self::new()
    }
}

impl Sessionize {
    pub fn new() -> Self {
        Sessionize {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl WindowUDFImpl for Sessionize {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        if types.is_empty() || types.len() > 2 {
            return Err(plan_err(format!(
                "expected sessionize(ts) or sessionize(ts, gap), got {} arguments",
                types.len()
            )));
        }
        let ts = &types[0];
        if !(ts.is_integer() || matches!(ts, DataType::Timestamp(_, _))) {
            return Err(plan_err(format!(
                "argument 1 (ts) must be a timestamp or an integer, got {ts}"
            )));
        }
        if let Some(gap) = types.get(1) {
            if !(gap.is_integer() || matches!(gap, DataType::Interval(_))) {
                return Err(plan_err(format!(
                    "argument 2 (gap) must be an INTERVAL or an integer, got {gap}"
                )));
            }
        }
        Ok(types.to_vec())
    }

    fn partition_evaluator(
        &self,
        args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        let ts = args.input_fields()[0].data_type();
        let gap = match args.input_exprs().get(1) {
            Some(expr) => literal(NAME, expr, "argument 2 (gap)")?,
            None => match ts {
                DataType::Timestamp(_, _) => ScalarValue::Int64(Some(DEFAULT_GAP_SECONDS)),
                _ => {
                    return Err(plan_err(
                        "with an integer ts, give the gap in its units: sessionize(ts, gap)"
                            .to_string(),
                    ))
                }
            },
        };
        let gap = duration_in_ts_units(NAME, &gap, ts, "argument 2 (gap)")?;
        Ok(Box::new(SessionEvaluator { gap }))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(
            field_args.name(),
            DataType::UInt64,
            true,
        )))
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            Documentation::builder(
                crate::args::doc_section("tidepool paths"),
                "Numbers a person's sessions (1, 2, ...) over PARTITION BY person ORDER BY ts: \
                 a row starts a new session when more than gap has passed since the previous \
                 row.",
                "sessionize(ts [, gap]) OVER (PARTITION BY person ORDER BY ts)",
            )
            .with_sql_example(
                "SELECT anonymous_id, event_time,\n       sessionize(event_time, INTERVAL '30 minutes') OVER (PARTITION BY anonymous_id ORDER BY event_time) AS session\nFROM events",
            )
            .with_argument("ts", "timestamp or integer; the window must be ordered by it")
            .with_argument("gap", "INTERVAL or integer literal (seconds for a timestamp ts); default 30 minutes")
            .build()
        });
        Some(&DOC)
    }
}

#[derive(Debug)]
struct SessionEvaluator {
    gap: i64,
}

impl PartitionEvaluator for SessionEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let ts = datafusion::arrow::compute::cast(&values[0], &DataType::Int64)?;
        let ts = ts.as_primitive::<Int64Type>();
        let mut out = UInt64Builder::with_capacity(num_rows);
        let mut session = 0u64;
        let mut previous: Option<i64> = None;
        for row in 0..num_rows {
            if ts.is_null(row) {
                out.append_null();
                continue;
            }
            let t = ts.value(row);
            match previous {
                Some(p) if t < p => {
                    return Err(DataFusionError::Execution(format!(
                        "{NAME}: rows are not in time order; order the window by ts: \
                         sessionize(ts) OVER (PARTITION BY person ORDER BY ts)"
                    )))
                }
                Some(p) if t - p <= self.gap => {}
                _ => session += 1,
            }
            previous = Some(t);
            out.append_value(session);
        }
        Ok(Arc::new(out.finish()))
    }
}
