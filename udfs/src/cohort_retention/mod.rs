//! `cohort_retention(options, ts, cohort_cond, return_cond, value)`: per person, the
//! cohort(s) they belong to and the periods they came back in — the rows of a cohort
//! retention matrix, ready for `unnest` and `GROUP BY cohort_start, period`.
//!
//! Docs with examples: `docs/functions/cohort_retention.md`.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Float64Array, Float64Builder, Int32Array,
    Int64Array, ListArray, StructArray, TimestampMicrosecondArray, UInt8Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Fields, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType,
    UInt8Type,
};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, GroupsAccumulator, Signature,
    Volatility,
};

use crate::args::{
    calendar_option, coerce_conditions, key_values, plan_err, string_literal, unit_option,
};
use crate::grouped::{
    for_each_element, list_offsets, runs, Entry, FlatAggregate, FlatEvents, SingleGroup,
};
pub use crate::periods::Unit;
use crate::periods::{self, Calendar};
use crate::true_rows::TrueRows;

pub const NAME: &str = "cohort_retention";
const US_PER_DAY: i64 = 86_400_000_000;

pub fn cohort_retention_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(CohortRetention::new())));
    Arc::clone(&UDAF)
}

fn err(msg: String) -> datafusion::error::DataFusionError {
    plan_err(NAME, msg)
}

/// The options string, parsed.
#[derive(Debug, Clone)]
pub struct CohortOptions {
    pub unit: Unit,
    /// Periods after the cohort's own (period 0) that are reported.
    pub periods: i64,
    pub calendar: Calendar,
    pub tz_name: String,
    /// Every period with a cohort event starts a cohort (else only the first).
    pub recurring: bool,
    /// Retained at period k if back in period k or any later one.
    pub on_or_after: bool,
    /// Periods are 24 h / 7 days counted from the cohort event, not calendar periods.
    pub rolling: bool,
}

impl CohortOptions {
    pub fn parse(text: &str) -> Result<Self> {
        let mut o = CohortOptions {
            unit: Unit::Day,
            periods: 7,
            calendar: Calendar::parse("UTC").expect("UTC"),
            tz_name: "UTC".into(),
            recurring: false,
            on_or_after: false,
            rolling: false,
        };
        let bad = |k: &str, v: &str, expected: &str| {
            err(format!("option {k}={v} in argument 1: expected {expected}"))
        };
        for (k, v) in key_values(NAME, text, "argument 1")? {
            match k {
                "unit" => o.unit = unit_option(NAME, v, "argument 1")?,
                "periods" => {
                    o.periods = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| bad(k, v, "a number from 1 to 1000"))?
                }
                "tz" => {
                    o.calendar = calendar_option(NAME, v, "argument 1")?;
                    o.tz_name = v.to_string();
                }
                "cohort" => {
                    o.recurring = match v {
                        "first" => false,
                        "recurring" => true,
                        _ => return Err(bad(k, v, "first or recurring")),
                    }
                }
                "retained" => {
                    o.on_or_after = match v {
                        "on" => false,
                        "on_or_after" => true,
                        _ => return Err(bad(k, v, "on or on_or_after")),
                    }
                }
                "window" => {
                    o.rolling = match v {
                        "calendar" => false,
                        "rolling" => true,
                        _ => return Err(bad(k, v, "calendar or rolling")),
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown option '{other}' in argument 1 (expected unit, periods, tz, \
                         cohort, retained, window)"
                    )))
                }
            }
        }
        if o.rolling && o.unit == Unit::Month {
            return Err(err(
                "window=rolling needs unit=day or unit=week (months vary in length)".into(),
            ));
        }
        if o.rolling && o.recurring {
            return Err(err("cohort=recurring needs window=calendar".into()));
        }
        Ok(o)
    }
}

/// One row matching the cohort or the return condition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CohortEvent {
    /// Microseconds since the epoch.
    pub ts: i64,
    /// Bit 0: the cohort condition held; bit 1: the return condition held.
    pub flags: u8,
    /// The value column (NaN when NULL or absent).
    pub value: f64,
    /// The calendar period `ts` falls in ([`NO_PERIOD`] with rolling windows).
    pub period: i32,
}

// Buffered with its group in 28 bytes (24, the fields in the order Rust lays them out,
// and 4; see [`Entry`]).
const _: () = assert!(std::mem::size_of::<Entry<CohortEvent>>() == 28);

/// The period of an event when periods are rolling windows from the cohort event.
pub const NO_PERIOD: i32 = i32::MIN;

impl CohortEvent {
    pub fn new(ts: i64, flags: u8, value: f64, o: &CohortOptions) -> Self {
        // Calendar periods of any real date fit in 32 bits (days since 1970 do until
        // the year 5.8 million).
        let period = if o.rolling {
            NO_PERIOD
        } else {
            periods::calendar_period(ts, o.unit, &o.calendar) as i32
        };
        CohortEvent {
            ts,
            flags,
            value,
            period,
        }
    }
}

/// Writes the matrix rows of one person after another into column buffers: no
/// allocation per person, and each period's start worked out once, not per row (with
/// hundreds of thousands of people both were most of the time spent emitting).
pub struct RowWriter<'a> {
    o: &'a CohortOptions,
    pub starts: Vec<i64>,
    pub dates: Vec<i32>,
    pub periods: Vec<i32>,
    /// Each row's sum of values; None without a value column, whose rows are all NULL
    /// (see [`RowWriter::values`]).
    sums_written: Option<Float64Builder>,
    /// Rows written per person.
    pub lengths: Vec<usize>,
    /// Scratch, per person: the indexes of the events that start a cohort; per cohort:
    /// a bit per period offset that saw a return, and the sum of each one's values.
    cohorts: Vec<usize>,
    seen: Vec<u64>,
    sums: Vec<Option<f64>>,
    /// Recently used calendar periods: (period, start, first local day), by period
    /// modulo the length.
    period_starts: Vec<(i32, i64, i32)>,
}

impl<'a> RowWriter<'a> {
    /// A writer of rows with the sums of values (`values`) or NULL in their place.
    pub fn new(o: &'a CohortOptions, values: bool) -> Self {
        RowWriter {
            o,
            starts: vec![],
            dates: vec![],
            periods: vec![],
            sums_written: values.then(Float64Builder::new),
            lengths: vec![],
            cohorts: vec![],
            seen: vec![],
            sums: vec![],
            period_starts: vec![(NO_PERIOD, 0, 0); 64],
        }
    }

    /// The value column of the rows written so far (all NULL without values), and an
    /// empty one.
    pub fn values(&mut self) -> Float64Array {
        match &mut self.sums_written {
            Some(sums) => sums.finish(),
            None => Float64Array::new_null(self.periods.len()),
        }
    }

    /// When calendar period `period` starts (µs, UTC), and its first local date.
    fn period_start(&mut self, period: i32) -> (i64, i32) {
        let slot = &mut self.period_starts[period as usize % 64];
        if slot.0 != period {
            let (unit, calendar) = (self.o.unit, &self.o.calendar);
            let first_day = periods::period_first_day(period as i64, unit);
            *slot = (
                period,
                periods::period_start(period as i64, unit, calendar),
                periods::days_since_epoch(first_day) as i32,
            );
        }
        (slot.1, slot.2)
    }

    /// The rows of one person, from events sorted by (ts, flags).
    pub fn person(&mut self, events: &[CohortEvent]) {
        let o = self.o;
        let written = self.periods.len();
        self.cohorts.clear();
        for (i, e) in events.iter().enumerate() {
            if e.flags & 1 == 0 {
                continue;
            }
            let new_period = self
                .cohorts
                .last()
                .is_none_or(|c| events[*c].period != e.period);
            if self.cohorts.is_empty() || (o.recurring && new_period) {
                self.cohorts.push(i);
            }
            if !o.recurring {
                break;
            }
        }
        let n = o.periods as usize + 1;
        let window = if o.unit == Unit::Week {
            7 * US_PER_DAY
        } else {
            US_PER_DAY
        };
        for c_index in 0..self.cohorts.len() {
            let c = events[self.cohorts[c_index]];
            let (start, date) = if o.rolling {
                let day = periods::local_date(c.ts, &o.calendar);
                (c.ts, periods::days_since_epoch(day) as i32)
            } else {
                self.period_start(c.period)
            };
            // Period 0 is always retained.
            self.seen.clear();
            self.seen.resize(n.div_ceil(64), 0);
            self.seen[0] = 1;
            let values = self.sums_written.is_some();
            if values {
                self.sums.clear();
                self.sums.resize(n, None);
            }
            let mut furthest = 0i64;
            // Returns count from the cohort event's time on (events are sorted by
            // time); activity before it is not a return.
            let from = events.partition_point(|e| e.ts < c.ts);
            for e in &events[from..] {
                if e.flags & 2 == 0 {
                    continue;
                }
                let k = if o.rolling {
                    (e.ts - c.ts).div_euclid(window)
                } else {
                    e.period as i64 - c.period as i64
                };
                furthest = furthest.max(k);
                // (A period before the cohort's can only come from a zone whose clocks
                // once went back past midnight; it is not a return.)
                if (0..n as i64).contains(&k) {
                    let k = k as usize;
                    self.seen[k / 64] |= 1 << (k % 64);
                    if values && !e.value.is_nan() {
                        *self.sums[k].get_or_insert(0.0) += e.value;
                    }
                }
            }
            if o.on_or_after {
                // Every period up to the furthest return.
                for k in 0..=(furthest.max(0) as usize).min(n - 1) {
                    self.seen[k / 64] |= 1 << (k % 64);
                }
            }
            // One row per retained period, found bit by bit rather than by a test per
            // period (which the branch predictor cannot learn: it is the data).
            for word in 0..self.seen.len() {
                let mut bits = self.seen[word];
                while bits != 0 {
                    let k = word * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    self.starts.push(start);
                    self.dates.push(date);
                    self.periods.push(k as i32);
                    if let Some(sums) = &mut self.sums_written {
                        sums.append_option(self.sums[k]);
                    }
                }
            }
        }
        self.lengths.push(self.periods.len() - written);
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CohortRetention {
    signature: Signature,
}

impl Default for CohortRetention {
    fn default() -> Self {
        Self::new()
    }
}

impl CohortRetention {
    pub fn new() -> Self {
        CohortRetention {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn row_fields(tz: Option<&str>) -> Fields {
    Fields::from(vec![
        Field::new(
            "cohort_start",
            DataType::Timestamp(TimeUnit::Microsecond, tz.map(Into::into)),
            false,
        ),
        Field::new("cohort_date", DataType::Date32, false),
        Field::new("period", DataType::Int32, false),
        Field::new("value", DataType::Float64, true),
    ])
}

fn item(tz: Option<&str>) -> FieldRef {
    Arc::new(Field::new_list_field(
        DataType::Struct(row_fields(tz)),
        false,
    ))
}

impl AggregateUDFImpl for CohortRetention {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        if types.len() != 5 {
            return Err(err(format!(
                "expected cohort_retention(options, ts, cohort_cond, return_cond, value), got {} \
                 arguments",
                types.len()
            )));
        }
        if !matches!(
            types[0],
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
        ) {
            return Err(err(format!(
                "argument 1 (options) must be a string, got {}",
                types[0]
            )));
        }
        if !matches!(types[1], DataType::Timestamp(_, _)) {
            return Err(err(format!(
                "argument 2 (ts) must be a timestamp, got {}",
                types[1]
            )));
        }
        let mut out = coerce_conditions(NAME, &types[..4], 2)?;
        match &types[4] {
            DataType::Null => out.push(DataType::Float64),
            t if t.is_numeric() => out.push(DataType::Float64),
            other => {
                return Err(err(format!(
                    "argument 5 (value) must be NULL or a number, got {other}"
                )))
            }
        }
        Ok(out)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        // The time zone comes from the options, which are only known with the literal:
        // cohort_start is given in UTC here and carries its zone through the value.
        Ok(DataType::List(item(Some("UTC"))))
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleGroup(CohortGroups::new(CohortSpec {
            options: options_of(&args)?,
            values: has_values(&args),
        }))))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(crate::args::list_state_fields(
            args.name,
            &[
                ("ts", DataType::Int64),
                ("flags", DataType::UInt8),
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
        Ok(Box::new(CohortGroups::new(CohortSpec {
            options: options_of(&args)?,
            values: has_values(&args),
        })))
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            Documentation::builder(
                crate::args::doc_section("tidepool retention"),
                "Per person, the cohort(s) they belong to and the periods they came back in, as \
                 a list of {cohort_start, period, value}: unnest it and count per (cohort_start, \
                 period) for a retention matrix.",
                "cohort_retention(options, ts, cohort_cond, return_cond, value)",
            )
            .with_sql_example(
                "SELECT r['cohort_start'], r['period'], count(*) FROM (\n  SELECT unnest(cohort_retention('unit=week; periods=8; tz=Asia/Shanghai', event_time,\n    event_name = 'signup', true, NULL)) AS r\n  FROM events GROUP BY coalesce(user_id, anonymous_id))\nGROUP BY 1, 2 ORDER BY 1, 2",
            )
            .with_argument("options", "string literal, key=value pairs separated by ';': unit=day|week|month, periods=N, tz=ZONE, cohort=first|recurring, retained=on|on_or_after, window=calendar|rolling")
            .with_argument("ts", "timestamp")
            .with_argument("cohort_cond", "boolean: the event that puts a person in a cohort")
            .with_argument("return_cond", "boolean: the event that counts as coming back")
            .with_argument("value", "NULL, or a number summed per period (value retention)")
            .build()
        });
        Some(&DOC)
    }
}

fn options_of(args: &AccumulatorArgs) -> Result<CohortOptions> {
    CohortOptions::parse(&string_literal(
        NAME,
        &args.exprs[0],
        "argument 1 (options)",
    )?)
}

type CohortGroups = FlatAggregate<CohortSpec>;

/// Whether the value argument can hold values (anything but a NULL literal).
fn has_values(args: &AccumulatorArgs) -> bool {
    use datafusion::physical_expr::expressions::Literal;
    args.exprs[4]
        .downcast_ref::<Literal>()
        .is_none_or(|l| !l.value().is_null())
}

#[derive(Debug)]
pub struct CohortSpec {
    options: CohortOptions,
    /// The value argument is not the NULL literal.
    values: bool,
}

impl CohortSpec {
    fn rows(
        &mut self,
        values: &[ArrayRef],
        filter: Option<&BooleanArray>,
        push: &mut impl FnMut(usize, CohortEvent),
    ) -> Result<()> {
        let ts = datafusion::arrow::compute::cast(
            &values[1],
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )?;
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        let cohort = TrueRows::new(values[2].as_boolean());
        let back = TrueRows::new(values[3].as_boolean());
        let filter = TrueRows::of_filter(filter);
        // Without a value column (a NULL literal) there is nothing to cast per batch.
        let value = match self.values {
            true => Some(datafusion::arrow::compute::cast(
                &values[4],
                &DataType::Float64,
            )?),
            false => None,
        };
        let value = value.as_ref().map(|v| v.as_primitive::<Float64Type>());
        let o = &self.options;
        let mut finder = periods::PeriodFinder::new(o.unit, &o.calendar);
        for row in 0..ts.len() {
            if !TrueRows::passes(&filter, row) || ts.is_null(row) {
                continue;
            }
            let flags = cohort.get(row) as u8 | (back.get(row) as u8) << 1;
            if flags == 0 {
                continue;
            }
            let v = match value {
                Some(value) if value.is_valid(row) => value.value(row),
                _ => f64::NAN,
            };
            let t = ts.value(row);
            // Calendar periods of any real date fit in 32 bits (days since 1970 do until
            // the year 5.8 million).
            let period = if o.rolling {
                NO_PERIOD
            } else {
                finder.period(t) as i32
            };
            push(
                row,
                CohortEvent {
                    ts: t,
                    flags,
                    value: v,
                    period,
                },
            );
        }
        Ok(())
    }

    fn matrix_rows(&self, entries: &[Entry<CohortEvent>], n: usize) -> ArrayRef {
        let mut writer = RowWriter::new(&self.options, self.values);
        let mut scratch = vec![];
        for run in runs(entries, n) {
            scratch.clear();
            scratch.extend(run.iter().map(|e| e.event));
            writer.person(&scratch);
        }
        let tz = Some(self.options.tz_name.as_str());
        let values = writer.values();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                TimestampMicrosecondArray::new(writer.starts.into(), None)
                    .with_timezone(self.options.tz_name.as_str()),
            ),
            Arc::new(Date32Array::new(writer.dates.into(), None)),
            Arc::new(Int32Array::new(writer.periods.into(), None)),
            Arc::new(values),
        ];
        let structs = StructArray::new(row_fields(tz), columns, None);
        // Declared as UTC in the plan; the zone only changes how times print, so cast.
        let list = ListArray::new(
            item(tz),
            OffsetBuffer::from_lengths(writer.lengths),
            Arc::new(structs),
            None,
        );
        datafusion::arrow::compute::cast(&list, &DataType::List(item(Some("UTC"))))
            .expect("same values, another zone")
    }

    fn lists(entries: &[Entry<CohortEvent>], n: usize) -> Vec<ArrayRef> {
        let offsets = list_offsets(entries, n);
        let list = |values: ArrayRef| -> ArrayRef {
            let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
            Arc::new(ListArray::new(field, offsets.clone(), values, None))
        };
        vec![
            list(Arc::new(Int64Array::from_iter_values(
                entries.iter().map(|e| e.event.ts),
            ))),
            list(Arc::new(UInt8Array::from_iter_values(
                entries.iter().map(|e| e.event.flags),
            ))),
            list(Arc::new(Float64Array::from_iter_values(
                entries.iter().map(|e| e.event.value),
            ))),
        ]
    }
}

impl FlatEvents for CohortSpec {
    type Event = CohortEvent;
    type Key = (i64, u8);

    fn key(e: &CohortEvent) -> (i64, u8) {
        (e.ts, e.flags)
    }

    fn fresh(&self) -> Self {
        CohortSpec {
            options: self.options.clone(),
            values: self.values,
        }
    }

    fn add_rows(
        &mut self,
        values: &[ArrayRef],
        filter: Option<&BooleanArray>,
        push: &mut impl FnMut(usize, CohortEvent),
    ) -> Result<()> {
        self.rows(values, filter, push)
    }

    fn results(&self, entries: &[Entry<CohortEvent>], n: usize) -> Result<ArrayRef> {
        Ok(self.matrix_rows(entries, n))
    }

    // With calendar periods and no value column only which periods had which flags
    // matters (the exact time of the cohort event decides only which returns in its own
    // period count, and period 0 is always retained), so an event adds nothing after
    // one of the same period and flags. Rolling windows need every event's time, and
    // values the cohort event's time (returns before it in period 0 are not summed).
    fn compacts(&self) -> bool {
        !self.options.rolling && !self.values
    }

    fn compact_key(e: &CohortEvent) -> Option<u64> {
        Some((e.period as u32 as u64) << 8 | e.flags as u64)
    }

    fn state_lists(&self, entries: &[Entry<CohortEvent>], n: usize) -> Vec<ArrayRef> {
        Self::lists(entries, n)
    }

    fn merge_lists(
        &mut self,
        states: &[ArrayRef],
        push: &mut dyn FnMut(usize, CohortEvent),
    ) -> Result<()> {
        let ts = states[0].as_list::<i32>();
        let ts_values = ts.values().as_primitive::<Int64Type>();
        let flags = states[1]
            .as_list::<i32>()
            .values()
            .as_primitive::<UInt8Type>()
            .clone();
        let value = states[2]
            .as_list::<i32>()
            .values()
            .as_primitive::<Float64Type>()
            .clone();
        let o = &self.options;
        for_each_element(ts, |row, j| {
            push(
                row,
                CohortEvent::new(ts_values.value(j), flags.value(j), value.value(j), o),
            )
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_random::Random;
    use datafusion::arrow::array::{StringArray, TimestampMicrosecondArray};
    use datafusion::logical_expr::EmitTo;

    /// (group, ts, cohort condition, return condition, value)
    type Row = (usize, i64, bool, bool, Option<f64>);

    /// The accumulator's result for `rows` fed in shuffled batches, and how many events
    /// it buffered.
    fn accumulated(options: &str, rows: &[Row], groups: usize) -> (ArrayRef, usize) {
        let o = CohortOptions::parse(options).unwrap();
        let values = rows.iter().any(|r| r.4.is_some());
        let mut acc = CohortGroups::new(CohortSpec { options: o, values });
        for chunk in rows.chunks(7) {
            let values: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(vec![options; chunk.len()])),
                Arc::new(TimestampMicrosecondArray::from_iter_values(
                    chunk.iter().map(|r| r.1),
                )),
                Arc::new(BooleanArray::from_iter(chunk.iter().map(|r| Some(r.2)))),
                Arc::new(BooleanArray::from_iter(chunk.iter().map(|r| Some(r.3)))),
                Arc::new(Float64Array::from_iter(chunk.iter().map(|r| r.4))),
            ];
            let group_of: Vec<usize> = chunk.iter().map(|r| r.0).collect();
            acc.update_batch(&values, &group_of, None, groups).unwrap();
        }
        let buffered = acc.buffered();
        (acc.evaluate(EmitTo::All).unwrap(), buffered)
    }

    #[test]
    fn keeping_one_event_per_period_changes_no_result() {
        let mut r = Random(11);
        let groups = 25;
        let options = [
            "unit=day; periods=5",
            "unit=week; periods=3; cohort=recurring",
            "unit=day; periods=4; retained=on_or_after; tz=Asia/Shanghai",
            "unit=day; periods=4; window=rolling",
            "unit=week; periods=2; window=rolling; retained=on_or_after",
            "unit=month; periods=2; cohort=recurring; tz=America/New_York",
        ];
        for options in options {
            for values in ["none", "some", "all"] {
                let mut rows: Vec<Row> = vec![];
                for g in 0..groups {
                    for _ in 0..r.below(60) {
                        // 8 days in 4-hour steps, plus a little jitter.
                        let ts = r.below(48) as i64 * US_PER_DAY / 6 + r.below(1000) as i64;
                        let with_value = values == "all" || (values == "some" && r.below(2) == 0);
                        let value = with_value.then(|| r.below(50) as f64);
                        rows.push((g, ts, r.below(12) == 0, r.below(4) != 0, value));
                    }
                }
                // Every event, sorted, none dropped.
                let o = CohortOptions::parse(options).unwrap();
                let mut all: Vec<Entry<CohortEvent>> = rows
                    .iter()
                    .filter(|r| r.2 || r.3)
                    .map(|r| {
                        let flags = r.2 as u8 | (r.3 as u8) << 1;
                        let value = r.4.unwrap_or(f64::NAN);
                        Entry::new(r.0 as u32, CohortEvent::new(r.1, flags, value, &o))
                    })
                    .collect();
                all.sort_by_key(|e| (e.group, e.event.ts, e.event.flags));
                let spec = CohortSpec {
                    options: o.clone(),
                    values: true,
                };
                let want = spec.matrix_rows(&all, groups);
                // Rows in time order (as in a time-ordered file), then in any order.
                rows.sort_by_key(|r| r.1);
                let (in_order, buffered) = accumulated(options, &rows, groups);
                r.shuffle(&mut rows);
                let (shuffled, _) = accumulated(options, &rows, groups);
                let case = format!("{options}, values: {values}");
                assert_eq!(in_order.as_ref(), want.as_ref(), "{case}");
                assert_eq!(shuffled.as_ref(), want.as_ref(), "{case}");
                // Calendar periods without a value column keep far fewer events; rolling
                // windows and values keep all.
                if values != "none" || o.rolling {
                    assert_eq!(buffered, all.len(), "{case}");
                } else if values == "none" {
                    assert!(
                        buffered * 3 < all.len() * 2,
                        "{case}: {buffered} of {}",
                        all.len()
                    );
                }
            }
        }
    }

    /// One output row: a person in a cohort, at a period offset.
    #[derive(Debug, Clone, PartialEq)]
    struct CohortRow {
        /// When the cohort's period starts (µs, UTC); for rolling windows, the cohort event.
        cohort_start: i64,
        /// The local date that period starts on, in days since the epoch.
        cohort_date: i32,
        period: i64,
        /// Sum of the values of the return events in that period (None if there were none).
        value: Option<f64>,
    }

    /// The rows of one person, from events sorted by ts, straight from the definition
    /// (what [`RowWriter`] must agree with).
    fn cohort_rows(events: &[CohortEvent], o: &CohortOptions) -> Vec<CohortRow> {
        let period_of: Vec<i64> = events.iter().map(|e| e.period as i64).collect();
        let mut cohorts: Vec<usize> = vec![];
        for (i, _) in events.iter().enumerate().filter(|(_, e)| e.flags & 1 != 0) {
            let new_period = cohorts.last().is_none_or(|c| period_of[*c] != period_of[i]);
            if cohorts.is_empty() || (o.recurring && new_period) {
                cohorts.push(i);
            }
            if !o.recurring {
                break;
            }
        }
        let mut rows = vec![];
        for c_index in cohorts {
            let c = &events[c_index];
            let base = period_of[c_index];
            let offset = |i: usize| -> i64 {
                if o.rolling {
                    let len = if o.unit == Unit::Week {
                        7 * US_PER_DAY
                    } else {
                        US_PER_DAY
                    };
                    (events[i].ts - c.ts).div_euclid(len)
                } else {
                    period_of[i] - base
                }
            };
            let start = if o.rolling {
                c.ts
            } else {
                periods::period_start(base, o.unit, &o.calendar)
            };
            let first_day = if o.rolling {
                periods::local_date(c.ts, &o.calendar)
            } else {
                periods::period_first_day(base, o.unit)
            };
            let date = periods::days_since_epoch(first_day) as i32;
            let mut values: Vec<Option<f64>> = vec![None; o.periods as usize + 1];
            let mut seen = vec![false; o.periods as usize + 1];
            let mut furthest = 0i64;
            // Returns count from the cohort event's time on (events are sorted by time);
            // activity before it is not a return.
            let from = events.partition_point(|e| e.ts < c.ts);
            for i in from..events.len() {
                let e = &events[i];
                if e.flags & 2 == 0 {
                    continue;
                }
                let k = offset(i);
                furthest = furthest.max(k);
                if k <= o.periods {
                    seen[k as usize] = true;
                    if !e.value.is_nan() {
                        *values[k as usize].get_or_insert(0.0) += e.value;
                    }
                }
            }
            for k in 0..=o.periods {
                let retained = k == 0
                    || if o.on_or_after {
                        furthest >= k
                    } else {
                        seen[k as usize]
                    };
                if retained {
                    rows.push(CohortRow {
                        cohort_start: start,
                        cohort_date: date,
                        period: k,
                        value: values[k as usize],
                    });
                }
            }
        }
        rows
    }

    #[test]
    fn the_row_writer_agrees_with_the_definition() {
        let mut r = Random(23);
        let options = [
            "unit=day; periods=5",
            "unit=week; periods=3; cohort=recurring",
            "unit=day; periods=4; retained=on_or_after; tz=Asia/Shanghai",
            "unit=day; periods=70; cohort=recurring; tz=America/New_York",
            "unit=day; periods=4; window=rolling",
            "unit=week; periods=2; window=rolling; retained=on_or_after; tz=Europe/Berlin",
            "unit=month; periods=2; cohort=recurring; tz=America/New_York",
        ];
        // Without a value column every event's value is NaN, and every row's NULL.
        for (options, with_values) in options.iter().flat_map(|o| [(o, true), (o, false)]) {
            let o = CohortOptions::parse(options).unwrap();
            let mut writer = RowWriter::new(&o, with_values);
            let mut want = vec![];
            for _ in 0..300 {
                // Up to 200 days from 2026-01-01 (across both DST changes, and more
                // days than the writer remembers period starts for), some events at
                // the same instant.
                let mut events: Vec<CohortEvent> = (0..r.below(24))
                    .map(|_| {
                        let ts = 1_767_225_600_000_000
                            + r.below(400) as i64 * US_PER_DAY / 2
                            + r.below(3) as i64 * 1_000_000;
                        let flags = 1 + r.below(3) as u8;
                        let value = if r.below(3) == 0 || !with_values {
                            f64::NAN
                        } else {
                            r.below(9) as f64
                        };
                        CohortEvent::new(ts, flags, value, &o)
                    })
                    .collect();
                events.sort_by_key(|e| (e.ts, e.flags));
                writer.person(&events);
                want.push(cohort_rows(&events, &o));
            }
            let values = writer.values();
            assert_eq!(values.len(), writer.periods.len());
            let mut at = 0;
            for (person, rows) in want.iter().enumerate() {
                assert_eq!(
                    writer.lengths[person],
                    rows.len(),
                    "{options}, person {person}"
                );
                for row in rows {
                    let got = CohortRow {
                        cohort_start: writer.starts[at],
                        cohort_date: writer.dates[at],
                        period: writer.periods[at] as i64,
                        value: values.is_valid(at).then(|| values.value(at)),
                    };
                    assert_eq!(&got, row, "{options}, person {person}");
                    at += 1;
                }
            }
            assert!(at > 300, "{options}: only {at} rows");
        }
    }
}
