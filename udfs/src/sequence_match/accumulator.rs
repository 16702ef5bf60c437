//! State for the sequence functions: the rows where some condition holds, as
//! (ts, conditions) pairs in one flat buffer for all groups (see [`FlatAggregate`]),
//! like ClickHouse, which also keeps only those rows. At the end the buffer is sorted
//! by (group, ts, conditions) and each group's run is matched once.
//!
//! Rows of equal time sort by their conditions: a row where cond1 holds before one
//! where it does not, then by cond2, and so on (ClickHouse leaves their order open).
//!
//! The partial-aggregation state is two lists per group: ts, conditions.

use std::cmp::Reverse;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, Int64Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Int64Type, UInt64Type};
use datafusion::error::Result;

use super::matcher::{Matcher, Scratch};
use super::Answer;
use crate::grouped::{for_each_element, group_lists, runs, Entry, FlatAggregate, FlatEvents};
use crate::true_rows::TrueRows;

pub type SequenceGroups = FlatAggregate<SequenceSpec>;

/// One row where some condition holds.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub ts: i64,
    /// Bit k: condition k + 1 holds.
    pub conditions: u64,
}

#[derive(Debug)]
pub struct SequenceSpec {
    answer: Answer,
    matcher: Matcher,
}

impl SequenceSpec {
    pub fn new(answer: Answer, matcher: Matcher) -> Self {
        SequenceSpec { answer, matcher }
    }
}

impl FlatEvents for SequenceSpec {
    type Event = Row;
    type Key = (i64, Reverse<u64>);

    fn key(r: &Row) -> Self::Key {
        // Reversed bits: cond1 is the most significant, and a set bit sorts first.
        (r.ts, Reverse(r.conditions.reverse_bits()))
    }

    fn fresh(&self) -> Self {
        SequenceSpec::new(self.answer, self.matcher.clone())
    }

    fn add_rows(
        &mut self,
        values: &[ArrayRef],
        filter: Option<&BooleanArray>,
        push: &mut impl FnMut(usize, Row),
    ) -> Result<()> {
        let ts = datafusion::arrow::compute::cast(&values[1], &DataType::Int64)?;
        let ts = ts.as_primitive::<Int64Type>();
        let rows = ts.len();
        let mut conditions = vec![0u64; rows];
        // Any row with a condition: the union of the condition bitmaps (NULL = false).
        let mut any = BooleanBufferBuilder::new(rows);
        any.append_n(rows, false);
        let mut any = any.finish();
        for (k, cond) in values[2..].iter().enumerate() {
            let holds = TrueRows::new(cond.as_boolean());
            for row in holds.bits().set_indices() {
                conditions[row] |= 1 << k;
            }
            any = &any | holds.bits();
        }
        let filter = TrueRows::of_filter(filter);
        for row in any.set_indices() {
            if ts.is_valid(row) && TrueRows::passes(&filter, row) {
                push(
                    row,
                    Row {
                        ts: ts.value(row),
                        conditions: conditions[row],
                    },
                );
            }
        }
        Ok(())
    }

    fn results(&self, entries: &[Entry<Row>], n: usize) -> Result<ArrayRef> {
        let (mut ts, mut masks) = (vec![], vec![]);
        let mut scratch = Scratch::default();
        let mut matched = Vec::with_capacity(n);
        let mut counts = Vec::with_capacity(n);
        for run in runs(entries, n) {
            ts.clear();
            masks.clear();
            ts.extend(run.iter().map(|e| e.event.ts));
            masks.extend(run.iter().map(|e| e.event.conditions));
            match self.answer {
                Answer::Match => matched.push(self.matcher.matches(&ts, &masks, &mut scratch)),
                Answer::Count => counts.push(self.matcher.count(&ts, &masks, &mut scratch)),
            }
        }
        Ok(match self.answer {
            Answer::Match => Arc::new(BooleanArray::from(matched)),
            Answer::Count => Arc::new(UInt64Array::from(counts)),
        })
    }

    fn state_lists(&self, entries: &[Entry<Row>], n: usize) -> Vec<ArrayRef> {
        let ts = Int64Array::from_iter_values(entries.iter().map(|e| e.event.ts));
        let conditions = UInt64Array::from_iter_values(entries.iter().map(|e| e.event.conditions));
        group_lists(entries, n, vec![Arc::new(ts), Arc::new(conditions)])
    }

    fn merge_lists(&mut self, states: &[ArrayRef], push: &mut dyn FnMut(usize, Row)) -> Result<()> {
        let ts = states[0].as_list::<i32>();
        let ts_values = ts.values().as_primitive::<Int64Type>();
        let conditions = states[1]
            .as_list::<i32>()
            .values()
            .as_primitive::<UInt64Type>();
        for_each_element(ts, |row, j| {
            push(
                row,
                Row {
                    ts: ts_values.value(j),
                    conditions: conditions.value(j),
                },
            )
        });
        Ok(())
    }
}
