//! `column = 'literal'` over string views, the conditions of every funnel and sequence
//! (`event_name = 'view_item'`), evaluated with one comparison of the 16-byte view per row.
//!
//! Arrow's comparison kernel takes branches per row (lengths, prefix, inline or not)
//! whose outcome depends on the data; on 10M person-sorted events the four conditions of
//! a `window_funnel` were 16% of its CPU time. A literal of at most 12 bytes is equal to
//! a value exactly when their views are equal (inline bytes are zero-padded; the padding
//! is masked off anyway), and a longer one needs the length and 4-byte prefix to match
//! before the bytes in the data buffer are compared.
//!
//! [`rewrite`] replaces `expr = literal` and `literal = expr` with [`ViewEqLiteral`] where
//! `expr` is a string view; it is applied to the arguments and filters of
//! [`crate::string_key_aggregate`].

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch, StringViewArray};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::expressions::{BinaryExpr, Literal};
use datafusion::physical_plan::PhysicalExpr;

/// `expr = literal` for a string view `expr` and a non-NULL string literal.
#[derive(Debug, Eq)]
pub struct ViewEqLiteral {
    expr: Arc<dyn PhysicalExpr>,
    literal: String,
}

// Written out: deriving it for an `Arc<dyn PhysicalExpr>` field does not compile
// (rust-lang/rust#78808). `Hash` is written out beside it, over the same fields, so
// that equal expressions hash equally.
impl PartialEq for ViewEqLiteral {
    fn eq(&self, other: &Self) -> bool {
        self.expr.eq(&other.expr) && self.literal == other.literal
    }
}

impl Hash for ViewEqLiteral {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.expr.hash(state);
        self.literal.hash(state);
    }
}

/// `expr` itself replaced by a [`ViewEqLiteral`] if it is an equality of a string view
/// and a string literal; otherwise `expr` as it is.
pub fn rewrite(expr: Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Arc<dyn PhysicalExpr>> {
    let Some(eq) = expr.downcast_ref::<BinaryExpr>() else {
        return Ok(expr);
    };
    if *eq.op() != Operator::Eq {
        return Ok(expr);
    }
    // The side that is not the literal.
    let (side, literal) = match (literal_string(eq.left()), literal_string(eq.right())) {
        (None, Some(literal)) => (Arc::clone(eq.left()), literal),
        (Some(literal), None) => (Arc::clone(eq.right()), literal),
        _ => return Ok(expr),
    };
    if side.data_type(schema)? != DataType::Utf8View {
        return Ok(expr);
    }
    Ok(Arc::new(ViewEqLiteral {
        expr: side,
        literal,
    }))
}

fn literal_string(expr: &Arc<dyn PhysicalExpr>) -> Option<String> {
    match expr.downcast_ref::<Literal>()?.value() {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some(s.clone()),
        _ => None,
    }
}

impl fmt::Display for ViewEqLiteral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {:?}", self.expr, self.literal)
    }
}

impl PhysicalExpr for ViewEqLiteral {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.expr.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let values = self.expr.evaluate(batch)?.into_array(batch.num_rows())?;
        Ok(ColumnarValue::Array(Arc::new(eq_literal(
            values.as_string_view(),
            self.literal.as_bytes(),
        ))))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.expr]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(ViewEqLiteral {
            expr: children.remove(0),
            literal: self.literal.clone(),
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr.fmt_sql(f)?;
        write!(f, " = '{}'", self.literal.replace('\'', "''"))
    }
}

/// Row by row, whether `values` equals `literal` (NULL where the value is NULL).
fn eq_literal(values: &StringViewArray, literal: &[u8]) -> BooleanArray {
    let views = values.views();
    let len = literal.len();
    let equal = if len <= 12 {
        // Length in bits 0..32, the bytes after it; compare only the bits in use, as two
        // 64-bit halves (which the compiler vectorises; 128-bit compares it does not).
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&(len as u32).to_le_bytes());
        bytes[4..4 + len].copy_from_slice(literal);
        let want = u128::from_le_bytes(bytes);
        let mask = u128::MAX >> (96 - 8 * len);
        let (want_lo, want_hi) = (want as u64, (want >> 64) as u64);
        let (mask_lo, mask_hi) = (mask as u64, (mask >> 64) as u64);
        let words = bits_where(views, |view| {
            (view as u64 & mask_lo == want_lo) & ((view >> 64) as u64 & mask_hi == want_hi)
        });
        BooleanBuffer::new(words.into(), 0, views.len())
    } else {
        // Length and the 4-byte prefix in the low 64 bits, then the bytes in the buffer
        // for the rows that pass that.
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&(len as u32).to_le_bytes());
        head[4..].copy_from_slice(&literal[..4]);
        let want = u64::from_le_bytes(head);
        let mut words = bits_where(views, |view| view as u64 == want);
        let buffers = values.data_buffers();
        for (w, word) in words.iter_mut().enumerate() {
            let mut left = *word;
            while left != 0 {
                let bit = left.trailing_zeros() as usize;
                left &= left - 1;
                let view = views[w * 64 + bit];
                let buffer = (view >> 64) as u32 as usize;
                let start = (view >> 96) as u32 as usize;
                if buffers[buffer].get(start..start + len) != Some(literal) {
                    *word &= !(1 << bit);
                }
            }
        }
        BooleanBuffer::new(words.into(), 0, views.len())
    };
    BooleanArray::new(equal, values.logical_nulls())
}

/// The bits of `test(view)` for every view as 64-bit words, 64 views at a time (without
/// a bounds check per row, so that the loop is vectorised).
fn bits_where(views: &[u128], test: impl Fn(u128) -> bool) -> Vec<u64> {
    let mut words = Vec::with_capacity(views.len().div_ceil(64));
    for chunk in views.chunks(64) {
        let mut word = 0u64;
        for (j, &view) in chunk.iter().enumerate() {
            word |= (test(view) as u64) << j;
        }
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_random::Random;
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::compute::kernels::cmp::eq;
    use datafusion::arrow::datatypes::Field;
    use datafusion::common::DFSchema;
    use datafusion::logical_expr::simplify::SimplifyContext;
    use datafusion::logical_expr::{col, lit, Expr};
    use datafusion::optimizer::simplify_expressions::ExprSimplifier;
    use datafusion::prelude::SessionContext;

    /// `expr` as DataFusion plans it: coerced, simplified (a literal cast to a string
    /// view becomes a string view literal), then made physical.
    fn planned(schema: &DFSchema, expr: Expr) -> Result<Arc<dyn PhysicalExpr>> {
        let simplifier = ExprSimplifier::new(
            SimplifyContext::builder()
                .with_schema(Arc::new(schema.clone()))
                .build(),
        );
        let expr = simplifier.simplify(simplifier.coerce(expr, schema)?)?;
        SessionContext::new().create_physical_expr(expr, schema)
    }

    /// Same answers as arrow's kernel for literals of every length around the 12 inline
    /// bytes and values that share their length, prefix or both, and NULLs.
    #[tokio::test]
    async fn same_answers_as_arrows_kernel() -> Result<()> {
        let mut rng = Random(11);
        let words = [
            "",
            "a",
            "view_item",
            "view_iten",
            "add_to_cart",
            "begin_checkout",
            "begin_checkouT",
            "begin_checkou",
            "begi",
            "purchase",
            "purchase_",
            "abcdefghijkl",
            "abcdefghijklm",
            "abcdefghijkl_",
        ];
        let values: Vec<Option<&str>> = (0..3000)
            .map(|_| {
                let w = rng.below(words.len() as u64 + 1) as usize;
                words.get(w).copied()
            })
            .collect();
        let values = cast(&StringArray::from(values), &DataType::Utf8View)?;
        let schema = Arc::new(Schema::new(vec![Field::new(
            "event_name",
            DataType::Utf8View,
            true,
        )]));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![values.clone()])?;
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        for word in words {
            let fast = rewrite(
                planned(&df_schema, col("event_name").eq(lit(word)))?,
                &schema,
            )?;
            assert!(fast.downcast_ref::<ViewEqLiteral>().is_some(), "{fast}");
            let flipped = planned(&df_schema, lit(word).eq(col("event_name")))?;
            let flipped = rewrite(flipped, &schema)?;
            assert!(
                flipped.downcast_ref::<ViewEqLiteral>().is_some(),
                "{flipped}"
            );
            let want = eq(&values, &StringViewArray::new_scalar(word))?;
            for expr in [fast, flipped] {
                let got = expr.evaluate(&batch)?.into_array(batch.num_rows())?;
                assert_eq!(got.as_boolean(), &want, "{word:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn leaves_other_comparisons_alone() -> Result<()> {
        let schema = Schema::new(vec![
            Field::new("s", DataType::Utf8View, true),
            Field::new("t", DataType::Utf8View, true),
            Field::new("u", DataType::Utf8, true),
        ]);
        let df_schema = DFSchema::try_from(schema.clone())?;
        for expr in [
            col("s").eq(col("t")),
            col("s").not_eq(lit("x")),
            col("u").eq(lit("x")),
        ] {
            let planned = planned(&df_schema, expr)?;
            let kept = rewrite(Arc::clone(&planned), &schema)?;
            assert!(Arc::ptr_eq(&planned, &kept), "{planned}");
        }
        Ok(())
    }

    #[test]
    fn equal_rewrites_are_equal_and_hash_equally() {
        use datafusion::arrow::datatypes::Field;
        use datafusion::physical_expr::expressions::Column;
        use std::hash::{BuildHasher, RandomState};
        let schema = Schema::new(vec![Field::new("name", DataType::Utf8View, true)]);
        let eq = |literal: &str| -> ViewEqLiteral {
            ViewEqLiteral {
                expr: Arc::new(Column::new("name", 0)),
                literal: literal.to_string(),
            }
        };
        let (a, b, c) = (eq("view_item"), eq("view_item"), eq("purchase"));
        let hasher = RandomState::new();
        assert_eq!(a, b);
        assert_eq!(hasher.hash_one(&a), hasher.hash_one(&b));
        assert_ne!(a, c);
        // What `rewrite` makes of `name = 'view_item'` is the same expression.
        let planned = rewrite(
            Arc::new(BinaryExpr::new(
                Arc::new(Column::new("name", 0)),
                Operator::Eq,
                Arc::new(Literal::new(ScalarValue::Utf8(Some("view_item".into())))),
            )),
            &schema,
        )
        .unwrap();
        let planned = planned.downcast_ref::<ViewEqLiteral>().expect("rewritten");
        assert_eq!(planned, &a);
        assert_eq!(hasher.hash_one(planned), hasher.hash_one(&a));
    }
}
