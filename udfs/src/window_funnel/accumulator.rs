//! State for `window_funnel`: the (row, condition) pairs that match a condition (plus
//! non-matching rows in strict_order mode, where they break chains), 20 bytes each with
//! their group, in one flat buffer for all groups (see [`FlatAggregate`]). At the end the
//! buffer is sorted by (group, ts, step, row) — close to linear for person- or
//! time-ordered input — and each group's run is scanned once.
//!
//! The partial-aggregation state is three lists per group: ts, step, row.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, UInt64Array, UInt8Array,
};
use datafusion::arrow::datatypes::{DataType, Int64Type, UInt64Type, UInt8Type};
use datafusion::error::Result;

use super::level::{funnel_level, Event};
use super::options::FunnelOptions;
use crate::grouped::{for_each_element, group_lists, runs, Entry, FlatAggregate, FlatEvents};
use crate::true_rows::TrueRows;

pub type FunnelGroups = FlatAggregate<FunnelSpec>;

#[derive(Debug)]
pub struct FunnelSpec {
    options: FunnelOptions,
    /// The next input row's id; rows merged from partial states get fresh ids.
    next_row: u64,
}

impl FunnelSpec {
    pub fn new(options: FunnelOptions) -> Self {
        FunnelSpec {
            options,
            next_row: 0,
        }
    }

    fn events_of(
        &self,
        values: &[ArrayRef],
        filter: Option<&BooleanArray>,
        first_row_id: u64,
        mut emit: impl FnMut(usize, Event),
    ) -> Result<u64> {
        let ts = timestamps_as_i64(&values[2])?;
        // NULL conditions count as false.
        let conds: Vec<TrueRows> = values[3..]
            .iter()
            .map(|c| TrueRows::new(c.as_boolean()))
            .collect();
        let strict_order = self.options.mode.strict_order;
        let filter = TrueRows::of_filter(filter);
        let usable = |row: usize| TrueRows::passes(&filter, row) && ts.is_valid(row);
        let mut row_id = first_row_id;
        if strict_order {
            // Every row matters: a row matching no step breaks the chain.
            for row in (0..ts.len()).filter(|r| usable(*r)) {
                let t = ts.value(row);
                let mut any = false;
                for (k, cond) in conds.iter().enumerate() {
                    if cond.get(row) {
                        emit(row, Event::new(t, k as u8 + 1, row_id));
                        any = true;
                    }
                }
                if !any {
                    emit(row, Event::new(t, 0, row_id));
                }
                row_id += 1;
            }
            return Ok(row_id);
        }
        // Only rows matching some step matter: visit just those.
        let mut matching = conds[0].bits().clone();
        for c in &conds[1..] {
            matching = &matching | c.bits();
        }
        for row in matching.set_indices().filter(|r| usable(*r)) {
            let t = ts.value(row);
            for (k, cond) in conds.iter().enumerate() {
                if cond.get(row) {
                    emit(row, Event::new(t, k as u8 + 1, row_id + row as u64));
                }
            }
        }
        row_id += ts.len() as u64;
        Ok(row_id)
    }
}

fn timestamps_as_i64(ts: &ArrayRef) -> Result<Int64Array> {
    // Timestamps of any unit are i64 counts of that unit; integers are widened.
    Ok(datafusion::arrow::compute::cast(ts, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

impl FlatEvents for FunnelSpec {
    type Event = Event;
    type Key = Event;

    /// Events sort by (ts, step, row).
    fn key(e: &Event) -> Event {
        *e
    }

    fn fresh(&self) -> Self {
        FunnelSpec::new(self.options.clone())
    }

    fn add_rows(
        &mut self,
        values: &[ArrayRef],
        filter: Option<&BooleanArray>,
        push: &mut impl FnMut(usize, Event),
    ) -> Result<()> {
        self.next_row = self.events_of(values, filter, self.next_row, |row, e| push(row, e))?;
        Ok(())
    }

    fn results(&self, entries: &[Entry<Event>], n: usize) -> Result<ArrayRef> {
        let mut scratch: Vec<Event> = vec![];
        let levels: Vec<u8> = runs(entries, n)
            .map(|run| {
                scratch.clear();
                scratch.extend(run.iter().map(|e| e.event));
                funnel_level(&scratch, &self.options)
            })
            .collect();
        Ok(Arc::new(UInt8Array::from(levels)))
    }

    fn state_lists(&self, entries: &[Entry<Event>], n: usize) -> Vec<ArrayRef> {
        let ts = Int64Array::from_iter_values(entries.iter().map(|e| e.event.ts));
        let step = UInt8Array::from_iter_values(entries.iter().map(|e| { e.event }.step()));
        let row = UInt64Array::from_iter_values(entries.iter().map(|e| { e.event }.row()));
        group_lists(
            entries,
            n,
            vec![Arc::new(ts), Arc::new(step), Arc::new(row)],
        )
    }

    fn merge_lists(
        &mut self,
        states: &[ArrayRef],
        push: &mut dyn FnMut(usize, Event),
    ) -> Result<()> {
        let ts = states[0].as_list::<i32>();
        let ts_values = ts.values().as_primitive::<Int64Type>();
        let step_values = states[1]
            .as_list::<i32>()
            .values()
            .as_primitive::<UInt8Type>()
            .clone();
        let row_values = states[2]
            .as_list::<i32>()
            .values()
            .as_primitive::<UInt64Type>()
            .clone();
        // Rows of each partial state get ids of their own, after the ones seen so far.
        let (mut current, mut base) = (usize::MAX, 0);
        for_each_element(ts, |row, j| {
            if row != current {
                current = row;
                base = self.next_row;
            }
            let event = Event::new(
                ts_values.value(j),
                step_values.value(j),
                base + row_values.value(j),
            );
            self.next_row = self.next_row.max(event.row() + 1);
            push(row, event);
        });
        Ok(())
    }
}
