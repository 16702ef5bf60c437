//! State for `path_edges`: every row of every group in one flat buffer (see
//! [`FlatAggregate`]) as (ts, event id), 16 bytes each. Event names are cleaned (the
//! `replace` rewrites) once per distinct raw name and interned; partial states carry
//! cleaned names, so a merge never cleans twice.
//!
//! Rows of equal time are taken in event-name order.
//!
//! The partial-aggregation state is two lists per group: ts, event.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, ListArray, StringArray,
    StringBuilder, StructArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::HashMap;
use datafusion::error::Result;

use super::options::PathOptions;
use super::path::{edges, Anchor, Edge};
use crate::grouped::{for_each_element, group_lists, runs, Entry, FlatAggregate, FlatEvents};
use crate::intern::{for_each_str, order_ties, Interner};

pub type PathGroups = FlatAggregate<PathSpec>;

#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub ts: i64,
    /// The interned cleaned event name.
    pub event: u32,
}

#[derive(Debug)]
pub struct PathSpec {
    options: PathOptions,
    /// Option durations (seconds) in ts units.
    scale: i64,
    /// Cleaned names.
    events: Interner,
    /// Raw name → cleaned id, so that each raw name is cleaned once.
    cleaned: HashMap<String, u32>,
}

impl PathSpec {
    pub fn new(options: PathOptions, scale: i64) -> Self {
        PathSpec {
            options,
            scale,
            events: Interner::default(),
            cleaned: HashMap::default(),
        }
    }

    fn clean_id(&mut self, raw: &str) -> u32 {
        if let Some(id) = self.cleaned.get(raw) {
            return *id;
        }
        let id = if self.options.replace.is_empty() {
            self.events.id(raw)
        } else {
            let clean = self.options.clean(raw);
            self.events.id(&clean)
        };
        self.cleaned.insert(raw.to_string(), id);
        id
    }

    /// The id of an anchor event of the options, if some row has had it.
    fn anchor(&self, name: &Option<String>) -> Anchor {
        match name {
            None => Anchor::None,
            Some(name) => match self.events.find(name) {
                Some(id) => Anchor::Id(id),
                None => Anchor::Missing,
            },
        }
    }
}

impl FlatEvents for PathSpec {
    type Event = Row;
    type Key = (i64, u32);

    fn key(r: &Row) -> Self::Key {
        (r.ts, r.event)
    }

    fn fresh(&self) -> Self {
        PathSpec::new(self.options.clone(), self.scale)
    }

    fn add_rows(
        &mut self,
        values: &[ArrayRef],
        filter: Option<&BooleanArray>,
        push: &mut impl FnMut(usize, Row),
    ) -> Result<()> {
        let ts = datafusion::arrow::compute::cast(&values[1], &DataType::Int64)?;
        let ts = ts.as_primitive::<Int64Type>();
        let keep =
            |row: usize| ts.is_valid(row) && filter.is_none_or(|f| f.is_valid(row) && f.value(row));
        for_each_str(&values[2], |row, name| {
            if keep(row) {
                let event = self.clean_id(name);
                push(
                    row,
                    Row {
                        ts: ts.value(row),
                        event,
                    },
                );
            }
        });
        Ok(())
    }

    fn results(&self, entries: &[Entry<Row>], n: usize) -> Result<ArrayRef> {
        let (start, end) = (
            self.anchor(&self.options.start),
            self.anchor(&self.options.end),
        );
        let mut rows: Vec<(i64, u32)> = vec![];
        let mut path: Vec<Edge> = vec![];
        let (mut steps, mut from, mut to) = (vec![], vec![], vec![]);
        let mut lengths = Vec::with_capacity(n);
        for run in runs(entries, n) {
            rows.clear();
            rows.extend(run.iter().map(|e| (e.event.ts, e.event.event)));
            order_ties(
                &mut rows,
                |r| r.0,
                |a, b| self.events.text(a.1).cmp(self.events.text(b.1)),
            );
            edges(&rows, start, end, &self.options, self.scale, &mut path);
            lengths.push(path.len());
            for &(step, f, t) in &path {
                steps.push(step);
                from.push(self.events.text(f));
                to.push(self.events.text(t));
            }
        }
        let fields = super::edge_fields();
        let edges = StructArray::new(
            fields,
            vec![
                Arc::new(Int32Array::from(steps)),
                Arc::new(StringArray::from(from)),
                Arc::new(StringArray::from(to)),
            ],
            None,
        );
        Ok(Arc::new(ListArray::new(
            super::item_field(),
            OffsetBuffer::from_lengths(lengths),
            Arc::new(edges),
            None,
        )))
    }

    fn state_lists(&self, entries: &[Entry<Row>], n: usize) -> Vec<ArrayRef> {
        let ts = Int64Array::from_iter_values(entries.iter().map(|e| e.event.ts));
        let mut events = StringBuilder::new();
        for e in entries {
            events.append_value(self.events.text(e.event.event));
        }
        group_lists(entries, n, vec![Arc::new(ts), Arc::new(events.finish())])
    }

    fn merge_lists(&mut self, states: &[ArrayRef], push: &mut dyn FnMut(usize, Row)) -> Result<()> {
        let ts = states[0].as_list::<i32>();
        let ts_values = ts.values().as_primitive::<Int64Type>();
        let names = states[1]
            .as_list::<i32>()
            .values()
            .as_string::<i32>()
            .clone();
        // Partial states hold cleaned names already.
        let events = &mut self.events;
        for_each_element(ts, |row, j| {
            push(
                row,
                Row {
                    ts: ts_values.value(j),
                    event: events.id(names.value(j)),
                },
            )
        });
        Ok(())
    }

    fn extra_size(&self) -> usize {
        self.events.size()
            + self
                .cleaned
                .keys()
                .map(|k| k.capacity() + 40)
                .sum::<usize>()
    }
}
