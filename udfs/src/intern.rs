//! Strings kept once per accumulator with a u32 id each, so that a flat event buffer
//! holds ids instead of strings; and the tie rule the path functions share.

use datafusion::arrow::array::{Array, ArrayAccessor, ArrayRef, AsArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::HashMap;

/// Call `f(row, text)` for every non-null value of a Utf8, LargeUtf8 or Utf8View array.
pub fn for_each_str(array: &ArrayRef, mut f: impl FnMut(usize, &str)) {
    fn each<'a, A: ArrayAccessor<Item = &'a str>>(values: A, f: &mut impl FnMut(usize, &str)) {
        for row in 0..values.len() {
            if values.is_valid(row) {
                f(row, values.value(row));
            }
        }
    }
    match array.data_type() {
        DataType::Utf8 => each(array.as_string::<i32>(), &mut f),
        DataType::LargeUtf8 => each(array.as_string::<i64>(), &mut f),
        DataType::Utf8View => each(array.as_string_view(), &mut f),
        other => unreachable!("a string column, not {other} (coerce_types reads them as strings)"),
    }
}

#[derive(Debug, Default)]
pub struct Interner {
    ids: HashMap<String, u32>,
    texts: Vec<String>,
}

impl Interner {
    pub fn id(&mut self, text: &str) -> u32 {
        if let Some(id) = self.ids.get(text) {
            return *id;
        }
        let id = u32::try_from(self.texts.len()).expect("fewer than 2^32 distinct values");
        self.ids.insert(text.to_string(), id);
        self.texts.push(text.to_string());
        id
    }

    /// The id of `text`, if it was interned.
    pub fn find(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub fn text(&self, id: u32) -> &str {
        &self.texts[id as usize]
    }

    /// Bytes held (the strings twice, plus table overhead).
    pub fn size(&self) -> usize {
        self.texts.iter().map(|t| 2 * t.capacity() + 48).sum()
    }
}

/// Put each run of rows with equal `ts` (rows are sorted by ts) in the order `cmp`
/// gives: ids are in first-seen order, which depends on how rows arrived, so rows of
/// equal time are ordered by their text instead.
pub fn order_ties<R>(
    rows: &mut [R],
    ts: impl Fn(&R) -> i64,
    mut cmp: impl FnMut(&R, &R) -> std::cmp::Ordering,
) {
    let mut start = 0;
    while start < rows.len() {
        let mut end = start + 1;
        while end < rows.len() && ts(&rows[end]) == ts(&rows[start]) {
            end += 1;
        }
        if end - start > 1 {
            rows[start..end].sort_by(&mut cmp);
        }
        start = end;
    }
}
