//! A boolean column as the bitmap of its true rows, read row by row.
//!
//! Aggregates read their condition and `FILTER` columns row by row. Arrow's
//! `BooleanArray::value` is not marked `#[inline]`, so outside link-time optimisation
//! every read is a call with its own bounds check (4% of a retention matrix's CPU time
//! on person-sorted events). Here NULL and false are folded into one bitmap once per
//! batch, a word at a time, and each row's bit is read inline.

use datafusion::arrow::array::{Array, BooleanArray};
use datafusion::arrow::buffer::BooleanBuffer;

/// The rows where a boolean column is true (NULL counts as false).
pub(crate) struct TrueRows(BooleanBuffer);

impl TrueRows {
    pub(crate) fn new(column: &BooleanArray) -> Self {
        Self(match column.nulls() {
            Some(nulls) if nulls.null_count() > 0 => column.values() & nulls.inner(),
            _ => column.values().clone(),
        })
    }

    /// A `FILTER` column's true rows; `None` (every row passes) without a filter.
    pub(crate) fn of_filter(filter: Option<&BooleanArray>) -> Option<Self> {
        filter.map(Self::new)
    }

    #[inline]
    pub(crate) fn get(&self, row: usize) -> bool {
        self.0.value(row)
    }

    /// Whether `row` passes an optional filter.
    #[inline]
    pub(crate) fn passes(filter: &Option<Self>, row: usize) -> bool {
        filter.as_ref().is_none_or(|f| f.get(row))
    }

    pub(crate) fn bits(&self) -> &BooleanBuffer {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_and_false_are_not_true() {
        let column = BooleanArray::from(vec![Some(true), None, Some(false), Some(true)]);
        let rows = TrueRows::new(&column);
        let got: Vec<bool> = (0..4).map(|r| rows.get(r)).collect();
        assert_eq!(got, [true, false, false, true]);
        // A slice keeps its own rows.
        let sliced = TrueRows::new(&column.slice(1, 3));
        assert_eq!(
            (0..3).map(|r| sliced.get(r)).collect::<Vec<_>>(),
            [false, false, true]
        );
        assert!(TrueRows::passes(&None, 2));
        assert!(!TrueRows::passes(&TrueRows::of_filter(Some(&column)), 1));
    }
}
