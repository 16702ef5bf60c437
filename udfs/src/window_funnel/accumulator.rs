//! State for `window_funnel`: the events of every group in one flat buffer.
//!
//! Only (row, condition) pairs that match a condition are kept (plus non-matching rows in
//! strict_order mode, where they break chains), 32 bytes each (see [`GroupedEvents`]). At the end the buffer is
//! sorted by (group, ts, step, row) — a no-op check when the input was already sorted by
//! person and time — and each group's run is scanned once.
//!
//! The partial-aggregation state is three lists per group: ts, step, row.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, UInt64Array, UInt8Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, UInt64Type, UInt8Type};
use datafusion::error::Result;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::scalar::ScalarValue;

use super::level::{funnel_level, Event};
use super::options::FunnelOptions;
use crate::grouped::{list_offsets, runs, EvaluateInPlace, GroupedEvents};

/// Events sort by (ts, step, row).
fn order(e: &Event) -> Event {
    *e
}

#[derive(Debug)]
pub struct FunnelGroups {
    options: FunnelOptions,
    events: GroupedEvents<Event>,
    /// The next input row's id; rows merged from partial states get fresh ids.
    next_row: u64,
}

fn timestamps_as_i64(ts: &ArrayRef) -> Result<Int64Array> {
    // Timestamps of any unit are i64 counts of that unit; integers are widened.
    Ok(datafusion::arrow::compute::cast(ts, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

impl FunnelGroups {
    pub fn new(options: FunnelOptions) -> Self {
        FunnelGroups {
            options,
            events: GroupedEvents::default(),
            next_row: 0,
        }
    }

    /// The (row, condition) events of `values` = [window, mode, ts, cond1..condN]; calls
    /// `emit(row, event)` for each, skipping rows the filter drops or with a NULL ts.
    /// Returns the next free row id.
    fn events_of(
        &self,
        values: &[ArrayRef],
        filter: Option<&BooleanArray>,
        first_row_id: u64,
        mut emit: impl FnMut(usize, Event),
    ) -> Result<u64> {
        let ts = timestamps_as_i64(&values[2])?;
        // NULL conditions count as false.
        let conds: Vec<BooleanArray> = values[3..]
            .iter()
            .map(|c| {
                let c = c.as_boolean();
                if c.null_count() == 0 {
                    c.clone()
                } else {
                    datafusion::arrow::compute::prep_null_mask_filter(c)
                }
            })
            .collect();
        let strict_order = self.options.mode.strict_order;
        let usable =
            |row: usize| filter.is_none_or(|f| f.is_valid(row) && f.value(row)) && ts.is_valid(row);
        let mut row_id = first_row_id;
        if strict_order {
            // Every row matters: a row matching no step breaks the chain.
            for row in (0..ts.len()).filter(|r| usable(*r)) {
                let t = ts.value(row);
                let mut any = false;
                for (k, cond) in conds.iter().enumerate() {
                    if cond.value(row) {
                        emit(
                            row,
                            Event {
                                ts: t,
                                step: k as u8 + 1,
                                row: row_id,
                            },
                        );
                        any = true;
                    }
                }
                if !any {
                    emit(
                        row,
                        Event {
                            ts: t,
                            step: 0,
                            row: row_id,
                        },
                    );
                }
                row_id += 1;
            }
            return Ok(row_id);
        }
        // Only rows matching some step matter: visit just those.
        let mut matching = conds[0].values().clone();
        for c in &conds[1..] {
            matching = &matching | c.values();
        }
        for row in matching.set_indices().filter(|r| usable(*r)) {
            let t = ts.value(row);
            for (k, cond) in conds.iter().enumerate() {
                if cond.value(row) {
                    emit(
                        row,
                        Event {
                            ts: t,
                            step: k as u8 + 1,
                            row: row_id + row as u64,
                        },
                    );
                }
            }
        }
        row_id += ts.len() as u64;
        Ok(row_id)
    }

    /// The levels of groups 0..n of sorted `entries`.
    fn levels(&self, entries: &[(u32, Event)], n: usize) -> Vec<u8> {
        let mut scratch: Vec<Event> = vec![];
        runs(entries, n)
            .map(|run| {
                scratch.clear();
                scratch.extend(run.iter().map(|e| e.1));
                funnel_level(&scratch, &self.options)
            })
            .collect()
    }

    fn state_lists(entries: &[(u32, Event)], n: usize) -> Vec<ArrayRef> {
        let ts = Int64Array::from_iter_values(entries.iter().map(|e| e.1.ts));
        let step = UInt8Array::from_iter_values(entries.iter().map(|e| e.1.step));
        let row = UInt64Array::from_iter_values(entries.iter().map(|e| e.1.row));
        let offsets = list_offsets(entries, n);
        let list = |values: ArrayRef| -> ArrayRef {
            let field = Arc::new(Field::new_list_field(values.data_type().clone(), false));
            Arc::new(ListArray::new(field, offsets.clone(), values, None))
        };
        vec![
            list(Arc::new(ts)),
            list(Arc::new(step)),
            list(Arc::new(row)),
        ]
    }
}
impl GroupsAccumulator for FunnelGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.events.saw_groups(total_num_groups);
        let mut events = std::mem::take(&mut self.events);
        self.next_row = self.events_of(values, opt_filter, self.next_row, |row, event| {
            events.push(group_indices[row], event)
        })?;
        self.events = events;
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let (entries, n) = self.events.take(emit_to, order);
        Ok(Arc::new(UInt8Array::from(self.levels(&entries, n))))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let (entries, n) = self.events.take(emit_to, order);
        Ok(Self::state_lists(&entries, n))
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.events.saw_groups(total_num_groups);
        let ts = values[0].as_list::<i32>();
        let step = values[1].as_list::<i32>();
        let row = values[2].as_list::<i32>();
        let ts_values = ts.values().as_primitive::<Int64Type>();
        let step_values = step.values().as_primitive::<UInt8Type>();
        let row_values = row.values().as_primitive::<UInt64Type>();
        for (i, &g) in group_indices.iter().enumerate() {
            if ts.is_null(i) {
                continue;
            }
            // Rows of another partial state get ids of their own, after ours.
            let base = self.next_row;
            let range = ts.value_offsets()[i] as usize..ts.value_offsets()[i + 1] as usize;
            for j in range {
                let event = Event {
                    ts: ts_values.value(j),
                    step: step_values.value(j),
                    row: base + row_values.value(j),
                };
                self.next_row = self.next_row.max(event.row + 1);
                self.events.push(g, event);
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // Each input row becomes its own group's state.
        let rows = values[2].len();
        let mut entries = vec![];
        self.events_of(values, opt_filter, 0, |row, event| {
            entries.push((row as u32, event))
        })?;
        Ok(Self::state_lists(&entries, rows))
    }

    fn size(&self) -> usize {
        self.events.size() + std::mem::size_of::<Self>()
    }
}

impl EvaluateInPlace for FunnelGroups {
    fn evaluate_kept(&mut self) -> Result<ScalarValue> {
        self.events.sort_by_key(order);
        Ok(ScalarValue::UInt8(Some(
            self.levels(self.events.entries(), 1)[0],
        )))
    }

    fn state_kept(&mut self) -> Result<Vec<ScalarValue>> {
        FunnelGroups::state_lists(self.events.sorted(order), 1)
            .iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect()
    }
}
