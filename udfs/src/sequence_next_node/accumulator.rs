//! State for `sequence_next_node`: every row of every group in one flat buffer (see
//! [`FlatAggregate`]) as (ts, value, base, events), 24 bytes each; the values are
//! interned once per accumulator, so repeated event names cost an id, not a string.
//!
//! Rows sort by (ts, value) as in ClickHouse: the buffer sorts by (ts, value id), then
//! each run of equal times is put in value order (ids are in first-seen order), then by
//! events and base so that the order is the same however the rows arrived.
//!
//! The partial-aggregation state is four lists per group: ts, value, base, events.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, StringBuilder, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Int64Type, UInt64Type};
use datafusion::error::Result;

use super::{Base, Direction, NextNodeOptions};
use crate::grouped::{for_each_element, group_lists, runs, Entry, FlatAggregate, FlatEvents};
use crate::intern::{for_each_str, order_ties, Interner};

pub type NextNodeGroups = FlatAggregate<NextNodeSpec>;

#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub ts: i64,
    /// The interned value.
    pub value: u32,
    /// Bit k: event k + 1 holds.
    pub events: u64,
    /// Whether base_cond holds.
    pub base: bool,
}

#[derive(Debug)]
pub struct NextNodeSpec {
    options: NextNodeOptions,
    output: DataType,
    values: Interner,
}

impl NextNodeSpec {
    pub fn new(options: NextNodeOptions, output: DataType) -> Self {
        NextNodeSpec {
            options,
            output,
            values: Interner::default(),
        }
    }

    /// The index of the answer row in one group's sorted rows.
    fn answer(&self, rows: &[Row]) -> Option<usize> {
        let k = self.options.events;
        // ClickHouse needs more rows than event conditions.
        if rows.len() <= k {
            return None;
        }
        let is_first_event = |r: &Row| r.events & 1 != 0 && r.base;
        let base = match self.options.base {
            Base::Head => rows[0].base.then_some(0)?,
            Base::Tail => rows[rows.len() - 1].base.then_some(rows.len() - 1)?,
            Base::FirstMatch => rows.iter().position(is_first_event)?,
            Base::LastMatch => rows.iter().rposition(is_first_event)?,
        };
        let holds = |row: usize, i: usize| rows[row].events & (1 << i) != 0;
        match self.options.direction {
            Direction::Forward => {
                let chain = (0..k).all(|i| base + i < rows.len() && holds(base + i, i));
                (chain && base + k < rows.len()).then_some(base + k)
            }
            // The chain's rows come before the base, never at row 0 (ClickHouse's rule).
            Direction::Backward => {
                let chain = (0..k).all(|i| i < base && holds(base - i, i));
                (chain && k <= base).then(|| base - k)
            }
        }
    }
}

impl FlatEvents for NextNodeSpec {
    type Event = Row;
    type Key = (i64, u32, u64, bool);

    fn key(r: &Row) -> Self::Key {
        (r.ts, r.value, r.events, r.base)
    }

    fn fresh(&self) -> Self {
        NextNodeSpec::new(self.options, self.output.clone())
    }

    fn add_rows(
        &mut self,
        values: &[ArrayRef],
        filter: Option<&BooleanArray>,
        push: &mut impl FnMut(usize, Row),
    ) -> Result<()> {
        let ts = datafusion::arrow::compute::cast(&values[2], &DataType::Int64)?;
        let ts = ts.as_primitive::<Int64Type>();
        // NULL conditions count as false.
        let holds = |b: &BooleanArray, row: usize| b.is_valid(row) && b.value(row);
        let base = values[4].as_boolean();
        let events: Vec<&BooleanArray> = values[5..].iter().map(|e| e.as_boolean()).collect();
        let keep =
            |row: usize| ts.is_valid(row) && filter.is_none_or(|f| f.is_valid(row) && f.value(row));
        let mut rows: Vec<(usize, u32)> = Vec::with_capacity(ts.len());
        let interner = &mut self.values;
        for_each_str(&values[3], |row, text| {
            if keep(row) {
                rows.push((row, interner.id(text)));
            }
        });
        for (row, id) in rows {
            let mut mask = 0u64;
            for (k, e) in events.iter().enumerate() {
                if holds(e, row) {
                    mask |= 1 << k;
                }
            }
            push(
                row,
                Row {
                    ts: ts.value(row),
                    value: id,
                    events: mask,
                    base: holds(base, row),
                },
            );
        }
        Ok(())
    }

    fn results(&self, entries: &[Entry<Row>], n: usize) -> Result<ArrayRef> {
        let mut out = StringBuilder::new();
        let mut rows: Vec<Row> = vec![];
        for run in runs(entries, n) {
            rows.clear();
            rows.extend(run.iter().map(|e| e.event));
            // Rows of equal time: in value order, then events, then base.
            order_ties(
                &mut rows,
                |r| r.ts,
                |a, b| {
                    self.values
                        .text(a.value)
                        .cmp(self.values.text(b.value))
                        .then(a.events.cmp(&b.events))
                        .then(a.base.cmp(&b.base))
                },
            );
            match self.answer(&rows) {
                Some(i) => out.append_value(self.values.text(rows[i].value)),
                None => out.append_null(),
            }
        }
        let out: ArrayRef = Arc::new(out.finish());
        Ok(datafusion::arrow::compute::cast(&out, &self.output)?)
    }

    fn state_lists(&self, entries: &[Entry<Row>], n: usize) -> Vec<ArrayRef> {
        let ts = Int64Array::from_iter_values(entries.iter().map(|e| e.event.ts));
        let mut values = StringBuilder::new();
        for e in entries {
            values.append_value(self.values.text(e.event.value));
        }
        let base = BooleanArray::from_iter(entries.iter().map(|e| Some(e.event.base)));
        let events = UInt64Array::from_iter_values(entries.iter().map(|e| e.event.events));
        group_lists(
            entries,
            n,
            vec![
                Arc::new(ts),
                Arc::new(values.finish()),
                Arc::new(base),
                Arc::new(events),
            ],
        )
    }

    fn merge_lists(&mut self, states: &[ArrayRef], push: &mut dyn FnMut(usize, Row)) -> Result<()> {
        let ts = states[0].as_list::<i32>();
        let ts_values = ts.values().as_primitive::<Int64Type>();
        let values = states[1]
            .as_list::<i32>()
            .values()
            .as_string::<i32>()
            .clone();
        let base = states[2].as_list::<i32>().values().as_boolean().clone();
        let events = states[3]
            .as_list::<i32>()
            .values()
            .as_primitive::<UInt64Type>()
            .clone();
        let interner = &mut self.values;
        for_each_element(ts, |row, j| {
            push(
                row,
                Row {
                    ts: ts_values.value(j),
                    value: interner.id(values.value(j)),
                    events: events.value(j),
                    base: base.value(j),
                },
            )
        });
        Ok(())
    }

    fn extra_size(&self) -> usize {
        self.values.size()
    }
}
