//! State for `funnel`: matched rows of every group in one flat buffer, with the hold and
//! breakdown values interned as small integers.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Int64Array, ListArray,
    PrimitiveBuilder, StringArray, StringBuilder, StructArray, UInt64Array, UInt8Builder,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Int64Type, UInt64Type};
use datafusion::error::Result;

use super::chain::{find_chain, FunnelEvent};
use super::options::FunnelOptions;
use super::{ARG_BREAKDOWN, ARG_CONDS, ARG_HOLD, ARG_TIEBREAK, ARG_TS};
use crate::grouped::{for_each_element, list_offsets, runs, Entry, FlatAggregate, FlatEvents};

pub type FunnelGroups = FlatAggregate<FunnelSpec>;

#[derive(Debug)]
pub struct FunnelSpec {
    options: FunnelOptions,
    /// The type of `ts`, which entry_time and step_times keep.
    time_type: DataType,
    result_fields: Fields,
    strings: Vec<String>,
    string_ids: HashMap<String, u32>,
    next_row: u64,
}

fn as_i64(a: &ArrayRef) -> Result<Int64Array> {
    Ok(datafusion::arrow::compute::cast(a, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

fn as_text(a: &ArrayRef) -> Result<StringArray> {
    Ok(datafusion::arrow::compute::cast(a, &DataType::Utf8)?
        .as_string::<i32>()
        .clone())
}

impl FunnelSpec {
    pub fn new(options: FunnelOptions, time_type: DataType, result_fields: Fields) -> Self {
        FunnelSpec {
            options,
            time_type,
            result_fields,
            strings: vec![],
            string_ids: HashMap::new(),
            next_row: 0,
        }
    }

    /// 0 for NULL, else 1 + the value's index.
    fn intern(&mut self, value: Option<&str>) -> u32 {
        let Some(v) = value else { return 0 };
        if let Some(id) = self.string_ids.get(v) {
            return *id;
        }
        self.strings.push(v.to_string());
        let id = self.strings.len() as u32;
        self.string_ids.insert(v.to_string(), id);
        id
    }

    fn value(&self, id: u32) -> Option<&str> {
        (id != 0).then(|| self.strings[id as usize - 1].as_str())
    }

    /// Append the matched rows of `values` (all the call's arguments).
    fn add_matching_rows(
        &mut self,
        values: &[ArrayRef],
        filter: Option<&BooleanArray>,
        push: &mut dyn FnMut(usize, FunnelEvent),
    ) -> Result<()> {
        let ts = as_i64(&values[ARG_TS])?;
        let tiebreak = as_i64(&values[ARG_TIEBREAK])?;
        let hold = as_text(&values[ARG_HOLD])?;
        let breakdown = as_text(&values[ARG_BREAKDOWN])?;
        let conds: Vec<&BooleanArray> =
            values[ARG_CONDS..].iter().map(|c| c.as_boolean()).collect();
        for row in 0..ts.len() {
            if filter.is_some_and(|f| !f.is_valid(row) || !f.value(row)) || ts.is_null(row) {
                continue;
            }
            let mut mask = 0u64;
            for (k, c) in conds.iter().enumerate() {
                if c.is_valid(row) && c.value(row) {
                    mask |= 1 << k;
                }
            }
            let row_id = self.next_row;
            self.next_row += 1;
            if mask == 0 {
                continue;
            }
            let hold_id = self.intern(hold.is_valid(row).then(|| hold.value(row)));
            let breakdown_id = self.intern(breakdown.is_valid(row).then(|| breakdown.value(row)));
            let event = FunnelEvent {
                ts: ts.value(row),
                tiebreak: if tiebreak.is_valid(row) {
                    tiebreak.value(row)
                } else {
                    i64::MIN
                },
                row: row_id,
                mask,
                hold: hold_id,
                breakdown: breakdown_id,
            };
            push(row, event);
        }
        Ok(())
    }

    fn chains(&self, entries: &[Entry<FunnelEvent>], n: usize) -> Result<ArrayRef> {
        let steps = self.options.steps;
        let mut level = UInt8Builder::with_capacity(n);
        let mut entry_time = PrimitiveBuilder::<Int64Type>::with_capacity(n);
        let mut step_times = PrimitiveBuilder::<Int64Type>::with_capacity(n * steps);
        let mut excluded = BooleanBuilder::with_capacity(n);
        let mut breakdown = StringBuilder::with_capacity(n, n * 8);
        let mut events: Vec<FunnelEvent> = vec![];
        for run in runs(entries, n) {
            events.clear();
            events.extend(run.iter().map(|e| e.event));
            match find_chain(&events, &self.options) {
                Some(chain) => {
                    level.append_value(chain.level() as u8);
                    entry_time
                        .append_option(chain.steps.iter().flatten().map(|i| events[*i].ts).min());
                    for s in &chain.steps {
                        step_times.append_option(s.map(|i| events[i].ts));
                    }
                    excluded.append_value(chain.excluded);
                    let at = chain.steps[self.options.breakdown_step - 1];
                    breakdown.append_option(at.and_then(|i| self.value(events[i].breakdown)));
                }
                None => {
                    level.append_value(0);
                    entry_time.append_null();
                    step_times.append_nulls(steps);
                    excluded.append_value(false);
                    breakdown.append_null();
                }
            }
        }
        let time = |a: ArrayRef| datafusion::arrow::compute::cast(&a, &self.time_type);
        let times = time(Arc::new(step_times.finish()))?;
        let list_field = Arc::new(Field::new_list_field(self.time_type.clone(), true));
        let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(steps, n));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(level.finish()),
            time(Arc::new(entry_time.finish()))?,
            Arc::new(ListArray::new(list_field, offsets, times, None)),
            Arc::new(excluded.finish()),
            Arc::new(breakdown.finish()),
        ];
        Ok(Arc::new(StructArray::new(
            self.result_fields.clone(),
            columns,
            None::<NullBuffer>,
        )))
    }

    fn lists(&self, entries: &[Entry<FunnelEvent>], n: usize) -> Vec<ArrayRef> {
        let offsets = list_offsets(entries, n);
        let list = |values: ArrayRef| -> ArrayRef {
            let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
            Arc::new(ListArray::new(field, offsets.clone(), values, None))
        };
        let ints = |f: &dyn Fn(&FunnelEvent) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(
                entries.iter().map(|e| f(&{ e.event })),
            ))
        };
        let texts = |f: &dyn Fn(&FunnelEvent) -> u32| -> ArrayRef {
            Arc::new(StringArray::from_iter(
                entries.iter().map(|e| self.value(f(&{ e.event }))),
            ))
        };
        vec![
            list(ints(&|e| e.ts)),
            list(ints(&|e| e.tiebreak)),
            list(Arc::new(UInt64Array::from_iter_values(
                entries.iter().map(|e| e.event.row),
            ))),
            list(Arc::new(UInt64Array::from_iter_values(
                entries.iter().map(|e| e.event.mask),
            ))),
            list(texts(&|e| e.hold)),
            list(texts(&|e| e.breakdown)),
        ]
    }
}

impl FlatEvents for FunnelSpec {
    type Event = FunnelEvent;
    type Key = (i64, i64, u64);

    /// Events sort by (ts, tiebreak, row).
    fn key(e: &FunnelEvent) -> (i64, i64, u64) {
        (e.ts, e.tiebreak, e.row)
    }

    fn fresh(&self) -> Self {
        FunnelSpec::new(
            self.options.clone(),
            self.time_type.clone(),
            self.result_fields.clone(),
        )
    }

    fn add_rows(
        &mut self,
        values: &[ArrayRef],
        filter: Option<&BooleanArray>,
        push: &mut impl FnMut(usize, FunnelEvent),
    ) -> Result<()> {
        self.add_matching_rows(values, filter, push)
    }

    fn results(&self, entries: &[Entry<FunnelEvent>], n: usize) -> Result<ArrayRef> {
        self.chains(entries, n)
    }

    fn state_lists(&self, entries: &[Entry<FunnelEvent>], n: usize) -> Vec<ArrayRef> {
        self.lists(entries, n)
    }

    fn merge_lists(
        &mut self,
        states: &[ArrayRef],
        push: &mut dyn FnMut(usize, FunnelEvent),
    ) -> Result<()> {
        let lists: Vec<&ListArray> = states.iter().map(|v| v.as_list::<i32>()).collect();
        let ts = lists[0].values().as_primitive::<Int64Type>().clone();
        let tiebreak = lists[1].values().as_primitive::<Int64Type>().clone();
        let row = lists[2].values().as_primitive::<UInt64Type>().clone();
        let mask = lists[3].values().as_primitive::<UInt64Type>().clone();
        let hold = lists[4].values().as_string::<i32>().clone();
        let breakdown = lists[5].values().as_string::<i32>().clone();
        // Rows of each partial state get ids of their own, after the ones seen so far.
        let (mut current, mut base) = (usize::MAX, 0);
        for_each_element(lists[0], |i, j| {
            if i != current {
                current = i;
                base = self.next_row;
            }
            let hold_id = self.intern(hold.is_valid(j).then(|| hold.value(j)));
            let breakdown_id = self.intern(breakdown.is_valid(j).then(|| breakdown.value(j)));
            let event = FunnelEvent {
                ts: ts.value(j),
                tiebreak: tiebreak.value(j),
                row: base + row.value(j),
                mask: mask.value(j),
                hold: hold_id,
                breakdown: breakdown_id,
            };
            self.next_row = self.next_row.max(event.row + 1);
            push(i, event);
        });
        Ok(())
    }

    fn extra_size(&self) -> usize {
        self.strings.iter().map(|s| s.capacity() * 2 + 48).sum()
    }
}
