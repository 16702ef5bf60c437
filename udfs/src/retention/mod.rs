//! `retention(cond1, ..., condN)`: ClickHouse's `retention` — per group, a list of N
//! 0/1 values: the first is whether cond1 held on some row, the i-th whether cond1 and
//! condi both held (each on some row, not necessarily the same one).
//!
//! Docs with examples: `docs/functions/retention.md`. The state is one 64-bit mask per
//! group, OR-ed together; the list is built at the end.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, ListArray, UInt64Array, UInt8Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, UInt64Type};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, GroupsAccumulator,
    Signature, Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::args::{coerce_conditions, plan_err};
use crate::grouped::{EvaluateInPlace, SingleGroup};
use crate::true_rows::TrueRows;

pub const NAME: &str = "retention";
pub const MAX_CONDITIONS: usize = 64;

pub fn retention_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(Retention::new())));
    Arc::clone(&UDAF)
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Retention {
    signature: Signature,
}

impl Default for Retention {
    fn default() -> Self {
        Self::new()
    }
}

impl Retention {
    pub fn new() -> Self {
        Retention {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

pub(crate) fn item_field() -> FieldRef {
    Arc::new(Field::new_list_field(DataType::UInt8, false))
}

impl AggregateUDFImpl for Retention {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        if types.is_empty() || types.len() > MAX_CONDITIONS {
            return Err(plan_err(
                NAME,
                format!(
                    "expected 1 to {MAX_CONDITIONS} conditions, got {}",
                    types.len()
                ),
            ));
        }
        coerce_conditions(NAME, types, 0)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(item_field()))
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleGroup(RetentionGroups::new(
            args.exprs.len(),
        ))))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[seen]", args.name),
            DataType::UInt64,
            true,
        ))])
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(RetentionGroups::new(args.exprs.len())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            Documentation::builder(
                crate::args::doc_section("tidepool retention"),
                "Per group, a list of N 0/1 values: whether cond1 held on some row, then for \
                 each i > 1 whether cond1 and condi both held. ClickHouse's retention.",
                "retention(cond1, ..., condN)",
            )
            .with_sql_example(
                "SELECT sum(r[1]) AS day0, sum(r[2]) AS day1, sum(r[3]) AS day7 FROM (\n  SELECT retention(event_time::date = DATE '2026-10-01',\n                   event_time::date = DATE '2026-10-02',\n                   event_time::date = DATE '2026-10-08') AS r\n  FROM events GROUP BY anonymous_id)",
            )
            .with_argument("cond1, ..., condN", "boolean conditions, 1 to 64; NULL counts as false")
            .build()
        });
        Some(&DOC)
    }
}

/// Bit i of a group's mask: condition i+1 held on some row of the group.
#[derive(Debug)]
pub struct RetentionGroups {
    conditions: usize,
    seen: Vec<u64>,
}

impl RetentionGroups {
    fn new(conditions: usize) -> Self {
        RetentionGroups {
            conditions,
            seen: vec![],
        }
    }

    /// The condition mask of every row (0 for rows the filter drops).
    fn row_masks(&self, values: &[ArrayRef], filter: Option<&BooleanArray>) -> Vec<u64> {
        let rows = values.first().map(|v| v.len()).unwrap_or(0);
        let mut masks = vec![0u64; rows];
        for (k, cond) in values.iter().enumerate() {
            for row in TrueRows::new(cond.as_boolean()).bits().set_indices() {
                masks[row] |= 1 << k;
            }
        }
        if let Some(f) = TrueRows::of_filter(filter) {
            for (row, m) in masks.iter_mut().enumerate() {
                if !f.get(row) {
                    *m = 0;
                }
            }
        }
        masks
    }

    fn lists(&self, masks: &[u64]) -> ArrayRef {
        let n = self.conditions;
        let mut values = Vec::with_capacity(masks.len() * n);
        for &m in masks {
            let first = m & 1;
            values.push(first as u8);
            values.extend((1..n).map(|i| (first & (m >> i) & 1) as u8));
        }
        let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(n, masks.len()));
        Arc::new(ListArray::new(
            item_field(),
            offsets,
            Arc::new(UInt8Array::from(values)),
            None,
        ))
    }

    fn grow(&mut self, total_num_groups: usize) {
        if self.seen.len() < total_num_groups {
            self.seen.resize(total_num_groups, 0);
        }
    }

    /// The masks of the groups `emit_to` names, removed.
    fn take(&mut self, emit_to: EmitTo) -> Vec<u64> {
        match emit_to {
            EmitTo::All => std::mem::take(&mut self.seen),
            EmitTo::First(n) => {
                // Groups no row reached yet have no mask so far.
                self.grow(n);
                crate::grouped::take_front(&mut self.seen, n, |_| {})
            }
        }
    }
}

impl GroupsAccumulator for RetentionGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        for (mask, &g) in self.row_masks(values, opt_filter).iter().zip(group_indices) {
            self.seen[g] |= mask;
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let masks = self.take(emit_to);
        Ok(self.lists(&masks))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let masks = self.take(emit_to);
        Ok(vec![Arc::new(UInt64Array::from(masks))])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let masks = values[0].as_primitive::<UInt64Type>();
        for (i, &g) in group_indices.iter().enumerate() {
            if masks.is_valid(i) {
                self.seen[g] |= masks.value(i);
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        Ok(vec![Arc::new(UInt64Array::from(
            self.row_masks(values, opt_filter),
        ))])
    }

    fn size(&self) -> usize {
        self.seen.capacity() * 8 + std::mem::size_of::<Self>()
    }
}

impl EvaluateInPlace for RetentionGroups {
    fn evaluate_kept(&mut self) -> Result<ScalarValue> {
        self.grow(1);
        ScalarValue::try_from_array(&self.lists(&self.seen[..1]), 0)
    }

    fn state_kept(&mut self) -> Result<Vec<ScalarValue>> {
        self.grow(1);
        Ok(vec![ScalarValue::UInt64(Some(self.seen[0]))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bools(v: &[bool]) -> ArrayRef {
        Arc::new(BooleanArray::from(v.to_vec()))
    }

    #[test]
    fn first_condition_gates_the_others() {
        let mut acc = RetentionGroups::new(3);
        // group 0: cond1 on row 0, cond3 on row 1 -> [1, 0, 1]
        // group 1: cond2 and cond3 but never cond1 -> [0, 0, 0]
        let c1 = bools(&[true, false, false]);
        let c2 = bools(&[false, false, true]);
        let c3 = bools(&[false, true, true]);
        acc.update_batch(&[c1, c2, c3], &[0, 0, 1], None, 2)
            .unwrap();
        let out = acc.evaluate(EmitTo::All).unwrap();
        let lists = out.as_list::<i32>();
        let row = |i: usize| {
            lists
                .value(i)
                .as_primitive::<datafusion::arrow::datatypes::UInt8Type>()
                .values()
                .to_vec()
        };
        assert_eq!(row(0), vec![1, 0, 1]);
        assert_eq!(row(1), vec![0, 0, 0]);
    }
}
