//! `shapley_attribution(options, path, conversions, value)`: each person's conversions
//! credited to the distinct channels of their path by the Shapley value of the
//! conversion-count game v(S) = conversions of the paths whose channels all lie in S.
//!
//! That game is a sum of unanimity games, one per path, so its Shapley value is
//! φ_i = Σ over channel sets T ∋ i of conversions(T) / |T|: every path's conversions are
//! shared equally by its distinct channels. Cost is linear in the paths, with no cap on
//! the number of channels (tests/python checks it against enumerating coalitions).
//! `ordered=true` also says at which position (order of first touch) a channel earned
//! its credit, the ordered Shapley value of Zhao et al. (2018).
//!
//! Docs with examples and the formulas: `docs/functions/attribution.md`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Float64Builder, ListArray, StringArray, StringBuilder,
    StructArray, UInt32Array, UInt32Builder,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type, UInt32Type};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::args::{key_values, string_literal};
use crate::grouped::one_row_list;

pub const NAME: &str = "shapley_attribution";

pub fn shapley_attribution_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(ShapleyAttribution::new())));
    Arc::clone(&UDAF)
}

fn plan_err(msg: String) -> DataFusionError {
    crate::args::plan_err(NAME, msg)
}

fn item_fields() -> Fields {
    Fields::from(vec![
        Field::new("channel", DataType::Utf8, false),
        Field::new("position", DataType::UInt32, true),
        Field::new("conversions", DataType::Float64, false),
        Field::new("value", DataType::Float64, false),
    ])
}

fn parse_ordered(text: &str) -> Result<bool> {
    let mut ordered = false;
    for (k, v) in key_values(NAME, text, "argument 1 (options)")? {
        match (k, v) {
            ("ordered", "true") => ordered = true,
            ("ordered", "false") => ordered = false,
            ("ordered", other) => {
                return Err(plan_err(format!(
                    "option ordered={other}: expected true or false"
                )))
            }
            _ => {
                return Err(plan_err(format!(
                    "unknown option '{k}' in argument 1 (options); expected ordered"
                )))
            }
        }
    }
    Ok(ordered)
}

#[derive(Debug)]
pub struct ShapleyAccumulator {
    ordered: bool,
    /// (channel, position; 0 when unordered) → (conversions, value).
    credits: HashMap<(String, u32), (f64, f64)>,
}

impl ShapleyAccumulator {
    fn add(&mut self, channel: &str, position: u32, conversions: f64, value: f64) {
        match self.credits.get_mut(&(channel.to_string(), position)) {
            Some(c) => {
                c.0 += conversions;
                c.1 += value;
            }
            None => {
                self.credits
                    .insert((channel.to_string(), position), (conversions, value));
            }
        }
    }

    fn sorted(&self) -> Vec<(&(String, u32), &(f64, f64))> {
        let mut items: Vec<_> = self.credits.iter().collect();
        items.sort_by(|a, b| a.0.cmp(b.0));
        items
    }
}

impl Accumulator for ShapleyAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let paths = values[1].as_list::<i32>();
        let items = datafusion::arrow::compute::cast(paths.values(), &DataType::Utf8)?;
        let items = items.as_string::<i32>();
        let conversions = datafusion::arrow::compute::cast(&values[2], &DataType::Float64)?;
        let conversions = conversions.as_primitive::<Float64Type>();
        let value = datafusion::arrow::compute::cast(&values[3], &DataType::Float64)?;
        let value = value.as_primitive::<Float64Type>();
        let offsets = paths.value_offsets();
        let mut distinct: Vec<&str> = vec![];
        for row in 0..paths.len() {
            let n = if conversions.is_valid(row) {
                conversions.value(row)
            } else {
                0.0
            };
            let v = if value.is_valid(row) {
                value.value(row)
            } else {
                0.0
            };
            if n == 0.0 && v == 0.0 {
                continue;
            }
            distinct.clear();
            if paths.is_valid(row) {
                for j in offsets[row] as usize..offsets[row + 1] as usize {
                    if items.is_valid(j) && !distinct.contains(&items.value(j)) {
                        distinct.push(items.value(j));
                    }
                }
            }
            if distinct.is_empty() {
                self.add(crate::attribution::NO_TOUCH, 0, n, v);
                continue;
            }
            let share = 1.0 / distinct.len() as f64;
            for (i, c) in distinct.iter().enumerate() {
                let position = if self.ordered { i as u32 + 1 } else { 0 };
                self.add(c, position, n * share, v * share);
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let items = self.sorted();
        let list = |values: ArrayRef| ScalarValue::List(Arc::new(one_row_list(values, true)));
        Ok(vec![
            list(Arc::new(StringArray::from_iter_values(
                items.iter().map(|i| i.0 .0.as_str()),
            ))),
            list(Arc::new(UInt32Array::from_iter_values(
                items.iter().map(|i| i.0 .1),
            ))),
            list(Arc::new(Float64Array::from_iter_values(
                items.iter().map(|i| i.1 .0),
            ))),
            list(Arc::new(Float64Array::from_iter_values(
                items.iter().map(|i| i.1 .1),
            ))),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists: Vec<&ListArray> = states.iter().map(|s| s.as_list::<i32>()).collect();
        let channel = lists[0].values().as_string::<i32>().clone();
        let position = lists[1].values().as_primitive::<UInt32Type>().clone();
        let conversions = lists[2].values().as_primitive::<Float64Type>().clone();
        let value = lists[3].values().as_primitive::<Float64Type>().clone();
        crate::grouped::for_each_element(lists[0], |_, j| {
            self.add(
                channel.value(j),
                position.value(j),
                conversions.value(j),
                value.value(j),
            )
        });
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let items = self.sorted();
        let mut channel = StringBuilder::new();
        let mut position = UInt32Builder::new();
        let mut conversions = Float64Builder::new();
        let mut value = Float64Builder::new();
        for ((c, p), (n, v)) in &items {
            channel.append_value(c);
            position.append_option((*p != 0).then_some(*p));
            conversions.append_value(*n);
            value.append_value(*v);
        }
        let structs = StructArray::new(
            item_fields(),
            vec![
                Arc::new(channel.finish()),
                Arc::new(position.finish()),
                Arc::new(conversions.finish()),
                Arc::new(value.finish()),
            ],
            None,
        );
        Ok(ScalarValue::List(Arc::new(ListArray::new(
            Arc::new(Field::new_list_field(
                DataType::Struct(item_fields()),
                false,
            )),
            OffsetBuffer::from_lengths([items.len()]),
            Arc::new(structs),
            None,
        ))))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + self
                .credits
                .keys()
                .map(|k| k.0.capacity() + 64)
                .sum::<usize>()
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ShapleyAttribution {
    signature: Signature,
}

impl Default for ShapleyAttribution {
    fn default() -> Self {
        Self::new()
    }
}

impl ShapleyAttribution {
    pub fn new() -> Self {
        ShapleyAttribution {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for ShapleyAttribution {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        crate::markov_attribution::coerce_path_arguments(NAME, types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new_list_field(
            DataType::Struct(item_fields()),
            false,
        ))))
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let text = string_literal(NAME, &args.exprs[0], "argument 1 (options)")?;
        Ok(Box::new(ShapleyAccumulator {
            ordered: parse_ordered(&text)?,
            credits: HashMap::new(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(crate::args::list_state_fields(
            args.name,
            &[
                ("channel", DataType::Utf8),
                ("position", DataType::UInt32),
                ("conversions", DataType::Float64),
                ("value", DataType::Float64),
            ],
        ))
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            Documentation::builder(
                crate::args::doc_section("tidepool attribution"),
                "Shapley-value attribution of conversions to the distinct channels of each \
                 path: a list of {channel, position, conversions, value} (position with \
                 ordered=true).",
                "shapley_attribution(options, path, conversions, value)",
            )
            .with_sql_example(
                "SELECT unnest(shapley_attribution('', path, conversions, revenue)) FROM (\n  SELECT array_agg(channel) FILTER (WHERE channel IS NOT NULL) AS path,\n         count(*) FILTER (WHERE event_name = 'purchase') AS conversions, sum(revenue) AS revenue\n  FROM events GROUP BY anonymous_id)",
            )
            .with_argument("options", "string literal: ordered=true|false (default false)")
            .with_argument("path", "list of channel names (order matters only with ordered=true)")
            .with_argument("conversions", "the person's conversions")
            .with_argument("value", "the person's conversion value (NULL counts as 0)")
            .build()
        });
        Some(&DOC)
    }
}
