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
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};
use datafusion::scalar::ScalarValue;

use super::chain::{find_chain, FunnelEvent};
use super::options::FunnelOptions;
use super::{ARG_BREAKDOWN, ARG_CONDS, ARG_HOLD, ARG_TIEBREAK, ARG_TS};

#[derive(Debug, Clone, Copy)]
struct Entry {
    group: u32,
    event: FunnelEvent,
}

#[derive(Debug)]
pub struct FunnelGroups {
    options: FunnelOptions,
    /// The type of `ts`, which entry_time and step_times keep.
    time_type: DataType,
    result_fields: Fields,
    entries: Vec<Entry>,
    strings: Vec<String>,
    string_ids: HashMap<String, u32>,
    groups: usize,
    next_row: u64,
}

fn as_i64(a: &ArrayRef) -> Result<Int64Array> {
    Ok(datafusion::arrow::compute::cast(a, &DataType::Int64)?.as_primitive::<Int64Type>().clone())
}

fn as_text(a: &ArrayRef) -> Result<StringArray> {
    Ok(datafusion::arrow::compute::cast(a, &DataType::Utf8)?.as_string::<i32>().clone())
}

impl FunnelGroups {
    pub fn new(options: FunnelOptions, time_type: DataType, result_fields: Fields) -> Self {
        FunnelGroups {
            options,
            time_type,
            result_fields,
            entries: vec![],
            strings: vec![],
            string_ids: HashMap::new(),
            groups: 0,
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
    fn add_rows(
        &mut self,
        values: &[ArrayRef],
        filter: Option<&BooleanArray>,
        group_of: impl Fn(usize) -> usize,
    ) -> Result<()> {
        let ts = as_i64(&values[ARG_TS])?;
        let tiebreak = as_i64(&values[ARG_TIEBREAK])?;
        let hold = as_text(&values[ARG_HOLD])?;
        let breakdown = as_text(&values[ARG_BREAKDOWN])?;
        let conds: Vec<&BooleanArray> = values[ARG_CONDS..].iter().map(|c| c.as_boolean()).collect();
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
                tiebreak: if tiebreak.is_valid(row) { tiebreak.value(row) } else { i64::MIN },
                row: row_id,
                mask,
                hold: hold_id,
                breakdown: breakdown_id,
            };
            self.entries.push(Entry { group: group_id(group_of(row)), event });
        }
        Ok(())
    }

    fn sort(&mut self) {
        crate::group_sort::sort_by_group(&mut self.entries, self.groups, |e| e.group, |e| {
            (e.event.ts, e.event.tiebreak, e.event.row)
        });
    }

    fn take(&mut self, emit_to: EmitTo) -> (Vec<Entry>, usize) {
        self.sort();
        match emit_to {
            EmitTo::All => {
                let n = std::mem::take(&mut self.groups);
                (std::mem::take(&mut self.entries), n)
            }
            EmitTo::First(n) => {
                let split = self.entries.partition_point(|e| (e.group as usize) < n);
                let mut rest = self.entries.split_off(split);
                rest.iter_mut().for_each(|e| e.group -= n as u32);
                self.groups -= n;
                (std::mem::replace(&mut self.entries, rest), n)
            }
        }
    }

    fn results(&self, entries: &[Entry], n: usize) -> Result<ArrayRef> {
        let steps = self.options.steps;
        let mut level = UInt8Builder::with_capacity(n);
        let mut entry_time = PrimitiveBuilder::<Int64Type>::with_capacity(n);
        let mut step_times = PrimitiveBuilder::<Int64Type>::with_capacity(n * steps);
        let mut excluded = BooleanBuilder::with_capacity(n);
        let mut breakdown = StringBuilder::with_capacity(n, n * 8);
        let mut events: Vec<FunnelEvent> = vec![];
        let mut runs = entries.chunk_by(|a, b| a.group == b.group).peekable();
        for g in 0..n {
            let run = match runs.peek() {
                Some(r) if r[0].group as usize == g => runs.next().expect("peeked"),
                _ => &[][..],
            };
            events.clear();
            events.extend(run.iter().map(|e| e.event));
            match find_chain(&events, &self.options) {
                Some(chain) => {
                    level.append_value(chain.level() as u8);
                    entry_time.append_option(chain.steps.iter().flatten().map(|i| events[*i].ts).min());
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
        Ok(Arc::new(StructArray::new(self.result_fields.clone(), columns, None::<NullBuffer>)))
    }

    fn state_lists(&self, entries: &[Entry], n: usize) -> Vec<ArrayRef> {
        let mut lengths = vec![0usize; n];
        for e in entries {
            lengths[e.group as usize] += 1;
        }
        let offsets = OffsetBuffer::from_lengths(lengths);
        let list = |values: ArrayRef| -> ArrayRef {
            let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
            Arc::new(ListArray::new(field, offsets.clone(), values, None))
        };
        let ints = |f: &dyn Fn(&FunnelEvent) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(entries.iter().map(|e| f(&e.event))))
        };
        let texts = |f: &dyn Fn(&FunnelEvent) -> u32| -> ArrayRef {
            Arc::new(StringArray::from_iter(entries.iter().map(|e| self.value(f(&e.event)))))
        };
        vec![
            list(ints(&|e| e.ts)),
            list(ints(&|e| e.tiebreak)),
            list(Arc::new(UInt64Array::from_iter_values(entries.iter().map(|e| e.event.row)))),
            list(Arc::new(UInt64Array::from_iter_values(entries.iter().map(|e| e.event.mask)))),
            list(texts(&|e| e.hold)),
            list(texts(&|e| e.breakdown)),
        ]
    }
}

fn group_id(g: usize) -> u32 {
    u32::try_from(g).expect("funnel supports up to 2^32 groups")
}

impl GroupsAccumulator for FunnelGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups = self.groups.max(total_num_groups);
        self.add_rows(values, opt_filter, |row| group_indices[row])
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let (entries, n) = self.take(emit_to);
        self.results(&entries, n)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let (entries, n) = self.take(emit_to);
        Ok(self.state_lists(&entries, n))
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups = self.groups.max(total_num_groups);
        let lists: Vec<&ListArray> = values.iter().map(|v| v.as_list::<i32>()).collect();
        let ts = lists[0].values().as_primitive::<Int64Type>().clone();
        let tiebreak = lists[1].values().as_primitive::<Int64Type>().clone();
        let row = lists[2].values().as_primitive::<UInt64Type>().clone();
        let mask = lists[3].values().as_primitive::<UInt64Type>().clone();
        let hold = lists[4].values().as_string::<i32>().clone();
        let breakdown = lists[5].values().as_string::<i32>().clone();
        for (i, &g) in group_indices.iter().enumerate() {
            if lists[0].is_null(i) {
                continue;
            }
            let base = self.next_row;
            let offsets = lists[0].value_offsets();
            for j in offsets[i] as usize..offsets[i + 1] as usize {
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
                self.entries.push(Entry { group: group_id(g), event });
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let rows = values[ARG_TS].len();
        let mut single = FunnelGroups::new(self.options.clone(), self.time_type.clone(), self.result_fields.clone());
        single.add_rows(values, opt_filter, |row| row)?;
        // Row ids restart in every state; merge_batch gives them fresh ones.
        single.entries.iter_mut().for_each(|e| e.event.row = 0);
        Ok(single.state_lists(&single.entries, rows))
    }

    fn size(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.strings.iter().map(|s| s.capacity() * 2 + 48).sum::<usize>()
            + std::mem::size_of::<Self>()
    }
}

/// The same state for a single group (an aggregate without GROUP BY).
#[derive(Debug)]
pub struct FunnelAccumulator {
    groups: FunnelGroups,
}

impl FunnelAccumulator {
    pub fn new(groups: FunnelGroups) -> Self {
        FunnelAccumulator { groups }
    }
}

impl Accumulator for FunnelAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.groups.groups = 1;
        self.groups.add_rows(values, None, |_| 0)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.groups.sort();
        let result = self.groups.results(&self.groups.entries, 1)?;
        ScalarValue::try_from_array(&result, 0)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.groups.sort();
        self.groups
            .state_lists(&self.groups.entries, 1)
            .iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let zeros = vec![0usize; states[0].len()];
        self.groups.merge_batch(states, &zeros, 1)
    }

    fn size(&self) -> usize {
        self.groups.size()
    }
}
