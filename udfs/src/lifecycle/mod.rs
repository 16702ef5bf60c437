//! `lifecycle(options, ts, active_cond)`: per person, their status in each period —
//! new, returning, resurrecting, or dormant — as a list of {period_date, status}, so that
//! one `unnest` and `GROUP BY period_date, status` gives the counts of a lifecycle chart.
//!
//! Docs with examples: `docs/functions/lifecycle.md`.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Builder, Int64Array, ListArray, StringBuilder,
    StructArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Int64Type, TimeUnit};
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
use crate::periods::{self, Calendar, Unit};
use crate::true_rows::TrueRows;

pub const NAME: &str = "lifecycle";

pub fn lifecycle_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(Lifecycle::new())));
    Arc::clone(&UDAF)
}

#[derive(Debug, Clone)]
pub struct LifecycleOptions {
    pub unit: Unit,
    pub calendar: Calendar,
}

impl LifecycleOptions {
    pub fn parse(text: &str) -> Result<Self> {
        let mut o = LifecycleOptions {
            unit: Unit::Week,
            calendar: Calendar::parse("UTC").expect("UTC"),
        };
        for (k, v) in key_values(NAME, text, "argument 1")? {
            match k {
                "unit" => o.unit = unit_option(NAME, v, "argument 1")?,
                "tz" => o.calendar = calendar_option(NAME, v, "argument 1")?,
                other => {
                    return Err(plan_err(
                        NAME,
                        format!("unknown option '{other}' in argument 1 (expected unit, tz)"),
                    ))
                }
            }
        }
        Ok(o)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    New,
    Returning,
    Resurrecting,
    Dormant,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Returning => "returning",
            Status::Resurrecting => "resurrecting",
            Status::Dormant => "dormant",
        }
    }
}

/// Statuses from a person's sorted, distinct active periods: the first active period is
/// new; an active period after an active one is returning, after a gap resurrecting; the
/// period after an active one without activity is dormant.
pub fn statuses(active: &[i64]) -> Vec<(i64, Status)> {
    let mut out = vec![];
    for (i, &p) in active.iter().enumerate() {
        let status = match i {
            0 => Status::New,
            _ if active[i - 1] == p - 1 => Status::Returning,
            _ => Status::Resurrecting,
        };
        out.push((p, status));
        if active.get(i + 1) != Some(&(p + 1)) {
            out.push((p + 1, Status::Dormant));
        }
    }
    out
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Lifecycle {
    signature: Signature,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub fn new() -> Self {
        Lifecycle {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn item() -> FieldRef {
    Arc::new(Field::new_list_field(
        DataType::Struct(Fields::from(vec![
            Field::new("period_date", DataType::Date32, false),
            Field::new("status", DataType::Utf8, false),
        ])),
        false,
    ))
}

impl AggregateUDFImpl for Lifecycle {
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
                    "expected lifecycle(options, ts, active_cond), got {} arguments",
                    types.len()
                ),
            ));
        }
        if !matches!(
            types[0],
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
        ) {
            return Err(plan_err(
                NAME,
                format!("argument 1 (options) must be a string, got {}", types[0]),
            ));
        }
        if !matches!(types[1], DataType::Timestamp(_, _)) {
            return Err(plan_err(
                NAME,
                format!("argument 2 (ts) must be a timestamp, got {}", types[1]),
            ));
        }
        coerce_conditions(NAME, types, 2)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(item()))
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleGroup(LifecycleGroups::new(LifecycleSpec {
            options: options_of(&args)?,
        }))))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(crate::args::list_state_fields(
            args.name,
            &[("periods", DataType::Int64)],
        ))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(LifecycleGroups::new(LifecycleSpec {
            options: options_of(&args)?,
        })))
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            Documentation::builder(
                crate::args::doc_section("tidepool retention"),
                "Per person, their status in each period (new, returning, resurrecting, dormant) \
                 as a list of {period_date, status}.",
                "lifecycle(options, ts, active_cond)",
            )
            .with_sql_example("SELECT l['period_date'], l['status'], count(*) FROM (\n  SELECT unnest(lifecycle('unit=week; tz=Asia/Shanghai', event_time, true)) AS l\n  FROM events GROUP BY coalesce(user_id, anonymous_id))\nGROUP BY 1, 2 ORDER BY 1, 2")
            .with_argument("options", "string literal: unit=day|week|month; tz=ZONE")
            .with_argument("ts", "timestamp")
            .with_argument("active_cond", "boolean: which events make a person active")
            .build()
        });
        Some(&DOC)
    }
}

fn options_of(args: &AccumulatorArgs) -> Result<LifecycleOptions> {
    LifecycleOptions::parse(&string_literal(
        NAME,
        &args.exprs[0],
        "argument 1 (options)",
    )?)
}

type LifecycleGroups = FlatAggregate<LifecycleSpec>;

/// Per group, the periods it was active in (duplicates removed when sorted).
#[derive(Debug)]
pub struct LifecycleSpec {
    options: LifecycleOptions,
}

impl LifecycleSpec {
    fn rows(
        &mut self,
        values: &[ArrayRef],
        filter: Option<&BooleanArray>,
        push: &mut dyn FnMut(usize, i64),
    ) -> Result<()> {
        let ts = datafusion::arrow::compute::cast(
            &values[1],
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )?;
        let ts = datafusion::arrow::compute::cast(&ts, &DataType::Int64)?;
        let ts = ts.as_primitive::<Int64Type>();
        let active = TrueRows::new(values[2].as_boolean());
        let filter = TrueRows::of_filter(filter);
        let mut last: Option<(usize, i64)> = None;
        for row in 0..ts.len() {
            let keep = TrueRows::passes(&filter, row) && ts.is_valid(row) && active.get(row);
            if !keep {
                continue;
            }
            let p =
                periods::calendar_period(ts.value(row), self.options.unit, &self.options.calendar);
            // Runs of one row's group in one period are common: keep one entry per run.
            if last != Some((row, p)) {
                push(row, p);
                last = Some((row, p));
            }
        }
        Ok(())
    }

    fn period_statuses(&self, entries: &[Entry<i64>], n: usize) -> ArrayRef {
        let mut dates = Date32Builder::new();
        let mut names = StringBuilder::new();
        let mut lengths = Vec::with_capacity(n);
        let mut active = vec![];
        for run in runs(entries, n) {
            active.clear();
            active.extend(run.iter().map(|e| e.event));
            active.dedup();
            let s = statuses(&active);
            lengths.push(s.len());
            for (p, status) in s {
                dates.append_value(periods::days_since_epoch(periods::period_first_day(
                    p,
                    self.options.unit,
                )) as i32);
                names.append_value(status.name());
            }
        }
        let DataType::Struct(fields) = item().data_type().clone() else {
            unreachable!()
        };
        let structs = StructArray::new(
            fields,
            vec![Arc::new(dates.finish()), Arc::new(names.finish())],
            None,
        );
        Arc::new(ListArray::new(
            item(),
            OffsetBuffer::from_lengths(lengths),
            Arc::new(structs),
            None,
        ))
    }

    fn state_list(entries: &[Entry<i64>], n: usize) -> Vec<ArrayRef> {
        let values = Int64Array::from_iter_values(entries.iter().map(|e| e.event));
        let field = Arc::new(Field::new_list_field(DataType::Int64, true));
        vec![Arc::new(ListArray::new(
            field,
            list_offsets(entries, n),
            Arc::new(values),
            None,
        ))]
    }
}

impl FlatEvents for LifecycleSpec {
    type Event = i64;
    type Key = i64;

    fn key(p: &i64) -> i64 {
        *p
    }

    // Only the set of active periods matters: a repeat of the period just seen adds nothing.
    fn compacts(&self) -> bool {
        true
    }
    fn compact_key(p: &i64) -> Option<u64> {
        Some(*p as u64)
    }

    fn fresh(&self) -> Self {
        LifecycleSpec {
            options: self.options.clone(),
        }
    }

    fn add_rows(
        &mut self,
        values: &[ArrayRef],
        filter: Option<&BooleanArray>,
        push: &mut impl FnMut(usize, i64),
    ) -> Result<()> {
        self.rows(values, filter, push)
    }

    fn results(&self, entries: &[Entry<i64>], n: usize) -> Result<ArrayRef> {
        Ok(self.period_statuses(entries, n))
    }

    fn state_lists(&self, entries: &[Entry<i64>], n: usize) -> Vec<ArrayRef> {
        Self::state_list(entries, n)
    }

    fn merge_lists(&mut self, states: &[ArrayRef], push: &mut dyn FnMut(usize, i64)) -> Result<()> {
        let lists = states[0].as_list::<i32>();
        let items = lists.values().as_primitive::<Int64Type>();
        for_each_element(lists, |row, j| push(row, items.value(j)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_active_periods() {
        let names = |v: Vec<(i64, Status)>| {
            v.into_iter()
                .map(|(p, s)| format!("{p}:{}", s.name()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(statuses(&[3, 4, 7])),
            vec![
                "3:new",
                "4:returning",
                "5:dormant",
                "7:resurrecting",
                "8:dormant"
            ]
        );
        assert_eq!(names(statuses(&[1])), vec!["1:new", "2:dormant"]);
        assert!(statuses(&[]).is_empty());
    }
}
