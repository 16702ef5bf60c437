//! `local_period(ts, unit, tz)`: the first local date of the day, week (Monday) or month
//! `ts` falls in, in time zone `tz` — calendar bucketing for stickiness, dormancy and any
//! report that must follow a zone's calendar rather than UTC's.
//!
//! Docs with examples: `docs/functions/local_period.md`.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, AsArray, Date32Builder};
use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::args::plan_err;
use crate::periods::{self, Unit};

pub const NAME: &str = "local_period";

pub fn local_period_udf() -> Arc<ScalarUDF> {
    static UDF: LazyLock<Arc<ScalarUDF>> =
        LazyLock::new(|| Arc::new(ScalarUDF::from(LocalPeriod::new())));
    Arc::clone(&UDF)
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LocalPeriod {
    signature: Signature,
}

impl Default for LocalPeriod {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalPeriod {
    pub fn new() -> Self {
        LocalPeriod {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn text_arg(v: &ColumnarValue, what: &str) -> Result<String> {
    match v {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::Utf8View(Some(s))
            | ScalarValue::LargeUtf8(Some(s)),
        ) => Ok(s.clone()),
        _ => Err(plan_err(NAME, format!("{what} must be a string literal"))),
    }
}

impl ScalarUDFImpl for LocalPeriod {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        if types.len() != 3 {
            return Err(plan_err(
                NAME,
                format!(
                    "expected local_period(ts, unit, tz), got {} arguments",
                    types.len()
                ),
            ));
        }
        if !matches!(types[0], DataType::Timestamp(_, _)) {
            return Err(plan_err(
                NAME,
                format!("argument 1 (ts) must be a timestamp, got {}", types[0]),
            ));
        }
        Ok(vec![types[0].clone(), DataType::Utf8, DataType::Utf8])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Date32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let unit_text = text_arg(&args.args[1], "argument 2 (unit)")?;
        let unit = Unit::parse(&unit_text).ok_or_else(|| {
            plan_err(
                NAME,
                format!("argument 2 (unit) must be day, week or month, got '{unit_text}'"),
            )
        })?;
        let tz_text = text_arg(&args.args[2], "argument 3 (tz)")?;
        let calendar = crate::periods::Calendar::parse(&tz_text).ok_or_else(|| {
            plan_err(
                NAME,
                format!("argument 3 (tz): unknown time zone '{tz_text}'"),
            )
        })?;
        let ts = args.args[0].to_array(args.number_rows)?;
        let us = datafusion::arrow::compute::cast(
            &ts,
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )?;
        let us = datafusion::arrow::compute::cast(&us, &DataType::Int64)?;
        let us = us.as_primitive::<Int64Type>();
        let mut out = Date32Builder::with_capacity(us.len());
        for v in us.iter() {
            out.append_option(v.map(|v| {
                let p = periods::calendar_period(v, unit, &calendar);
                periods::days_since_epoch(periods::period_first_day(p, unit)) as i32
            }));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            Documentation::builder(
                crate::args::doc_section("tidepool retention"),
                "The first local date of the day, week (Monday first) or month ts falls in, in time zone tz.",
                "local_period(ts, unit, tz)",
            )
            .with_sql_example("SELECT local_period(event_time, 'week', 'Asia/Shanghai') AS week, count(DISTINCT anonymous_id) FROM events GROUP BY 1")
            .with_argument("ts", "timestamp")
            .with_argument("unit", "'day', 'week' or 'month'")
            .with_argument("tz", "an IANA time zone name or an offset like '+08:00'")
            .build()
        });
        Some(&DOC)
    }
}
