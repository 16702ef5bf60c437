//! State for `attribution`: every group's touches and conversions in one flat buffer,
//! channels interned as small integers.

use std::sync::Arc;

use datafusion::common::HashMap;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, DictionaryArray, Float64Array, Float64Builder,
    Int32Array, Int64Array, ListArray, StringArray, StringBuilder, StringViewArray, StructArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Fields, Float64Type, Int32Type, Int64Type};
use datafusion::common::exec_err;
use datafusion::error::Result;

use super::models::{split, Model, Touch};
use super::{ARG_CHANNEL, ARG_CONVERSION, ARG_TS, ARG_VALUE, NO_TOUCH};
use crate::grouped::{for_each_element, list_offsets, runs, Entry, FlatAggregate, FlatEvents};
use crate::true_rows::TrueRows;

pub type AttributionGroups = FlatAggregate<AttributionSpec>;

/// A row that is a touch (channel set), a conversion, or both. 20 bytes, buffered with
/// its group in 24 (see [`Entry`]): the conversion flag rides in the channel id's top
/// bit, and the fields are packed to 4-byte alignment, so that every matching row of a
/// partition moves 4 bytes less through the buffer and its sort than as a plain struct.
/// Fields are read by value (`e.event.ts`), never borrowed.
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
pub struct AttributionEvent {
    pub ts: i64,
    pub value: f64,
    /// The interned channel (0 for none), and [`CONVERSION`].
    touch: u32,
}

/// The bit of [`AttributionEvent::touch`] set on a conversion; channel ids stay below.
const CONVERSION: u32 = 1 << 31;

impl AttributionEvent {
    pub fn new(ts: i64, channel: u32, conversion: bool, value: f64) -> Self {
        debug_assert!(channel < CONVERSION);
        let touch = channel | if conversion { CONVERSION } else { 0 };
        AttributionEvent { ts, value, touch }
    }

    /// The interned channel, 0 for none.
    pub fn channel(&self) -> u32 {
        self.touch & !CONVERSION
    }

    pub fn conversion(&self) -> bool {
        self.touch & CONVERSION != 0
    }
}

const _: () = assert!(std::mem::size_of::<Entry<AttributionEvent>>() == 24);

#[derive(Debug)]
pub struct AttributionSpec {
    model: Model,
    lookback: i64,
    item_fields: Fields,
    names: Vec<String>,
    ids: HashMap<String, u32>,
    /// Ids of channel names of at most 12 bytes by their whole string view (the view
    /// holds such a name zero-padded, so equal views are equal names): no string is
    /// hashed, compared or copied for them.
    view_ids: HashMap<u128, u32>,
}

impl AttributionSpec {
    pub fn new(model: Model, lookback: i64, item_fields: Fields) -> Self {
        AttributionSpec {
            model,
            lookback,
            item_fields,
            names: vec![],
            ids: HashMap::default(),
            view_ids: HashMap::default(),
        }
    }

    fn intern(&mut self, name: &str) -> Result<u32> {
        if let Some(id) = self.ids.get(name) {
            return Ok(*id);
        }
        if self.names.len() + 1 >= CONVERSION as usize {
            return exec_err!(
                "attribution: more than {} distinct channels",
                CONVERSION - 2
            );
        }
        self.names.push(name.to_string());
        let id = self.names.len() as u32;
        self.ids.insert(name.to_string(), id);
        Ok(id)
    }

    fn intern_view(&mut self, channels: &StringViewArray, row: usize) -> Result<u32> {
        let view = channels.views()[row];
        if view as u32 > 12 {
            return self.intern(channels.value(row));
        }
        if let Some(id) = self.view_ids.get(&view) {
            return Ok(*id);
        }
        let id = self.intern(channels.value(row))?;
        self.view_ids.insert(view, id);
        Ok(id)
    }

    fn name(&self, id: u32) -> &str {
        if id == u32::MAX {
            NO_TOUCH
        } else {
            &self.names[id as usize - 1]
        }
    }

    /// The credits of one person: (channel id, conversions, value), u32::MAX for
    /// conversions without a touch in their lookback.
    /// `touches` is scratch space, reused from person to person.
    fn credits(
        &self,
        run: &[Entry<AttributionEvent>],
        touches: &mut Vec<Touch>,
        out: &mut Vec<(u32, f64, f64)>,
    ) {
        out.clear();
        touches.clear();
        touches.extend(
            run.iter()
                .filter(|e| e.event.channel() != 0)
                .map(|e| Touch {
                    ts: e.event.ts,
                    channel: e.event.channel(),
                }),
        );
        // Ties in time go in channel-name order, so that first/last touch are defined.
        if touches.windows(2).any(|w| w[0].ts == w[1].ts) {
            touches.sort_by(|a, b| {
                a.ts.cmp(&b.ts)
                    .then_with(|| self.name(a.channel).cmp(self.name(b.channel)))
            });
        }
        let mut add = |channel: u32, conversions: f64, value: f64| match out
            .iter_mut()
            .find(|c| c.0 == channel)
        {
            Some(c) => {
                c.1 += conversions;
                c.2 += value;
            }
            None => out.push((channel, conversions, value)),
        };
        let (mut lo, mut hi) = (0, 0);
        for e in run.iter().map(|e| e.event).filter(|e| e.conversion()) {
            // The window is [ts - lookback, ts]: both ends count.
            while hi < touches.len() && touches[hi].ts <= e.ts {
                hi += 1;
            }
            let from = e.ts.saturating_sub(self.lookback);
            while lo < hi && touches[lo].ts < from {
                lo += 1;
            }
            let window = &touches[lo..hi];
            if window.is_empty() {
                add(u32::MAX, 1.0, e.value);
                continue;
            }
            split(
                &self.model,
                e.ts,
                window,
                &|c| self.name(c),
                &mut |c, share| add(c, share, share * e.value),
            );
        }
    }

    fn results(&self, entries: &[Entry<AttributionEvent>], n: usize) -> Result<ArrayRef> {
        let mut lengths = Vec::with_capacity(n);
        let mut channel = StringBuilder::new();
        let mut conversions = Float64Builder::new();
        let mut value = Float64Builder::new();
        let (mut touches, mut credits) = (vec![], vec![]);
        for run in runs(entries, n) {
            self.credits(run, &mut touches, &mut credits);
            credits.sort_by(|a, b| self.name(a.0).cmp(self.name(b.0)));
            lengths.push(credits.len());
            for (c, k, v) in &credits {
                channel.append_value(self.name(*c));
                conversions.append_value(*k);
                value.append_value(*v);
            }
        }
        let items = StructArray::new(
            self.item_fields.clone(),
            vec![
                Arc::new(channel.finish()),
                Arc::new(conversions.finish()),
                Arc::new(value.finish()),
            ],
            None,
        );
        let field = Arc::new(datafusion::arrow::datatypes::Field::new_list_field(
            DataType::Struct(self.item_fields.clone()),
            false,
        ));
        Ok(Arc::new(ListArray::new(
            field,
            OffsetBuffer::from_lengths(lengths),
            Arc::new(items),
            None,
        )))
    }
}

impl FlatEvents for AttributionSpec {
    type Event = AttributionEvent;
    type Key = i64;

    fn key(e: &AttributionEvent) -> i64 {
        e.ts
    }

    fn fresh(&self) -> Self {
        AttributionSpec::new(self.model.clone(), self.lookback, self.item_fields.clone())
    }

    fn add_rows(
        &mut self,
        values: &[ArrayRef],
        filter: Option<&BooleanArray>,
        push: &mut impl FnMut(usize, AttributionEvent),
    ) -> Result<()> {
        let ts = datafusion::arrow::compute::cast(&values[ARG_TS], &DataType::Int64)?;
        let ts = ts.as_primitive::<Int64Type>();
        // Channels read as string views (Parquet's strings) are interned by their views;
        // other string types are read as Utf8.
        let channel = &values[ARG_CHANNEL];
        let views = channel.as_string_view_opt();
        let strings = match views {
            Some(_) => None,
            None => Some(datafusion::arrow::compute::cast(channel, &DataType::Utf8)?),
        };
        let strings = strings.as_ref().map(|s| s.as_string::<i32>());
        let conversion = TrueRows::new(values[ARG_CONVERSION].as_boolean());
        let value = datafusion::arrow::compute::cast(&values[ARG_VALUE], &DataType::Float64)?;
        let value = value.as_primitive::<Float64Type>();
        let filter = TrueRows::of_filter(filter);
        for row in 0..ts.len() {
            if !TrueRows::passes(&filter, row) || ts.is_null(row) {
                continue;
            }
            let is_conversion = conversion.get(row);
            let touch = channel.is_valid(row);
            if !is_conversion && !touch {
                continue;
            }
            let channel_id = match (touch, views, strings) {
                (false, _, _) => 0,
                (true, Some(views), _) => self.intern_view(views, row)?,
                (true, None, Some(strings)) => self.intern(strings.value(row))?,
                (true, None, None) => unreachable!("channels are views or strings"),
            };
            let value = if value.is_valid(row) {
                value.value(row)
            } else {
                0.0
            };
            push(
                row,
                AttributionEvent::new(ts.value(row), channel_id, is_conversion, value),
            );
        }
        Ok(())
    }

    fn results(&self, entries: &[Entry<AttributionEvent>], n: usize) -> Result<ArrayRef> {
        AttributionSpec::results(self, entries, n)
    }

    fn state_lists(&self, entries: &[Entry<AttributionEvent>], n: usize) -> Vec<ArrayRef> {
        let offsets = list_offsets(entries, n);
        let list = |values: ArrayRef| -> ArrayRef {
            let field = Arc::new(datafusion::arrow::datatypes::Field::new_list_field(
                values.data_type().clone(),
                true,
            ));
            Arc::new(ListArray::new(field, offsets.clone(), values, None))
        };
        vec![
            list(Arc::new(Int64Array::from_iter_values(
                entries.iter().map(|e| e.event.ts),
            ))),
            // Channels as a dictionary over this state's names: a merge maps each name
            // once instead of hashing every element's string.
            list(Arc::new(
                DictionaryArray::<Int32Type>::try_new(
                    Int32Array::from_iter(
                        entries.iter().map(|e| {
                            (e.event.channel() != 0).then(|| e.event.channel() as i32 - 1)
                        }),
                    ),
                    Arc::new(StringArray::from_iter_values(self.names.iter())),
                )
                .expect("keys index the names"),
            )),
            list(Arc::new(BooleanArray::from_iter(
                entries.iter().map(|e| Some(e.event.conversion())),
            ))),
            list(Arc::new(Float64Array::from_iter_values(
                entries.iter().map(|e| e.event.value),
            ))),
        ]
    }

    fn merge_lists(
        &mut self,
        states: &[ArrayRef],
        push: &mut dyn FnMut(usize, AttributionEvent),
    ) -> Result<()> {
        let lists: Vec<&ListArray> = states.iter().map(|v| v.as_list::<i32>()).collect();
        let ts = lists[0].values().as_primitive::<Int64Type>().clone();
        let channel = lists[1].values().as_dictionary::<Int32Type>().clone();
        let names = channel.values().as_string::<i32>().clone();
        let ids: Vec<u32> = (0..names.len())
            .map(|k| self.intern(names.value(k)))
            .collect::<Result<_>>()?;
        let keys = channel.keys().clone();
        let conversion = lists[2].values().as_boolean().clone();
        let value = lists[3].values().as_primitive::<Float64Type>().clone();
        for_each_element(lists[0], |i, j| {
            let channel_id = if keys.is_valid(j) {
                ids[keys.value(j) as usize]
            } else {
                0
            };
            push(
                i,
                AttributionEvent::new(ts.value(j), channel_id, conversion.value(j), value.value(j)),
            );
        });
        Ok(())
    }

    fn extra_size(&self) -> usize {
        self.names
            .iter()
            .map(|s| s.capacity() * 2 + 48)
            .sum::<usize>()
            + self.view_ids.capacity() * 24
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_keeps_its_channel_and_whether_it_converted() {
        for channel in [0, 1, 7, CONVERSION - 1] {
            for conversion in [false, true] {
                let e = AttributionEvent::new(-5, channel, conversion, 2.5);
                let (ts, value) = (e.ts, e.value);
                assert_eq!(
                    (ts, e.channel(), e.conversion(), value),
                    (-5, channel, conversion, 2.5)
                );
            }
        }
    }
}
