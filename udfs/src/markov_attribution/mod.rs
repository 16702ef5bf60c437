//! `markov_attribution(options, path, conversions, value)`: data-driven attribution over
//! everyone's channel paths with the removal effect of a Markov chain, solved exactly.
//! One row per person: the channels that touched them in order, how many conversions
//! they made and their value. The result lists, per channel, its removal effect
//! 1 − P(conversion without it) / P(conversion) and its credit: removal effects
//! normalised to the conversions (and value) of the paths with touches.
//!
//! Docs with examples and the formulas: `docs/functions/attribution.md`.

pub mod chain;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, ListArray, StringArray, StringBuilder, StructArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::args::{key_values, string_literal};
use crate::grouped::one_row_list;
use chain::Chain;

pub const NAME: &str = "markov_attribution";
/// Separates channels in a path kept as one string in the partial state.
const SEP: char = '\u{1f}';
/// Transient states beyond which the exact solve is refused (it is cubic).
pub const MAX_STATES: usize = 3000;

pub fn markov_attribution_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(MarkovAttribution::new())));
    Arc::clone(&UDAF)
}

fn plan_err(msg: String) -> DataFusionError {
    crate::args::plan_err(NAME, msg)
}

fn item_fields() -> Fields {
    Fields::from(vec![
        Field::new("channel", DataType::Utf8, false),
        Field::new("removal_effect", DataType::Float64, true),
        Field::new("conversions", DataType::Float64, false),
        Field::new("value", DataType::Float64, false),
    ])
}

#[derive(Debug, Clone, PartialEq)]
pub struct MarkovOptions {
    pub order: usize,
    /// Merge immediate repeats of a channel (A A B → A B).
    pub collapse: bool,
}

impl MarkovOptions {
    pub fn parse(text: &str) -> Result<Self> {
        let mut o = MarkovOptions {
            order: 1,
            collapse: false,
        };
        for (k, v) in key_values(NAME, text, "argument 1 (options)")? {
            match k {
                "order" => {
                    o.order = match v.parse::<usize>() {
                        Ok(n @ 1..=4) => n,
                        _ => {
                            return Err(plan_err(format!(
                                "option order={v}: expected 1, 2, 3 or 4"
                            )))
                        }
                    }
                }
                "collapse" => {
                    o.collapse = match v {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(plan_err(format!(
                                "option collapse={v}: expected true or false"
                            )))
                        }
                    }
                }
                _ => {
                    return Err(plan_err(format!(
                        "unknown option '{k}' in argument 1 (options); expected order or collapse"
                    )))
                }
            }
        }
        Ok(o)
    }
}

/// What the paths of one group add up to, per distinct path.
#[derive(Debug, Default, Clone, Copy)]
struct PathTotals {
    converted: f64,
    not_converted: f64,
    conversions: f64,
    value: f64,
}

#[derive(Debug)]
pub struct MarkovAccumulator {
    options: MarkovOptions,
    paths: HashMap<String, PathTotals>,
}

impl MarkovAccumulator {
    fn add(
        &mut self,
        path: String,
        converted: f64,
        not_converted: f64,
        conversions: f64,
        value: f64,
    ) {
        let t = self.paths.entry(path).or_default();
        t.converted += converted;
        t.not_converted += not_converted;
        t.conversions += conversions;
        t.value += value;
    }
}

fn f64_column(a: &ArrayRef) -> Result<datafusion::arrow::array::Float64Array> {
    Ok(datafusion::arrow::compute::cast(a, &DataType::Float64)?
        .as_primitive::<Float64Type>()
        .clone())
}

impl Accumulator for MarkovAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let paths = values[1].as_list::<i32>();
        let items = datafusion::arrow::compute::cast(paths.values(), &DataType::Utf8)?;
        let items = items.as_string::<i32>();
        let conversions = f64_column(&values[2])?;
        let value = f64_column(&values[3])?;
        let offsets = paths.value_offsets();
        for row in 0..paths.len() {
            if paths.is_null(row) && conversions.is_null(row) {
                continue;
            }
            let mut path = String::new();
            let mut last: Option<&str> = None;
            if paths.is_valid(row) {
                for j in offsets[row] as usize..offsets[row + 1] as usize {
                    if items.is_null(j) {
                        continue;
                    }
                    let c = items.value(j);
                    if self.options.collapse && last == Some(c) {
                        continue;
                    }
                    if last.is_some() {
                        path.push(SEP);
                    }
                    path.push_str(c);
                    last = Some(c);
                }
            }
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
            let converted = n > 0.0;
            self.add(
                path,
                if converted { 1.0 } else { 0.0 },
                if converted { 0.0 } else { 1.0 },
                n,
                v,
            );
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let mut keys: Vec<&String> = self.paths.keys().collect();
        keys.sort();
        let list = |values: ArrayRef| ScalarValue::List(Arc::new(one_row_list(values, true)));
        let floats = |f: &dyn Fn(&PathTotals) -> f64| -> ArrayRef {
            Arc::new(datafusion::arrow::array::Float64Array::from_iter_values(
                keys.iter().map(|k| f(&self.paths[*k])),
            ))
        };
        Ok(vec![
            list(Arc::new(StringArray::from_iter_values(
                keys.iter().map(|k| k.as_str()),
            ))),
            list(floats(&|t| t.converted)),
            list(floats(&|t| t.not_converted)),
            list(floats(&|t| t.conversions)),
            list(floats(&|t| t.value)),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists: Vec<&ListArray> = states.iter().map(|s| s.as_list::<i32>()).collect();
        let paths = lists[0].values().as_string::<i32>().clone();
        let column = |i: usize| lists[i].values().as_primitive::<Float64Type>().clone();
        let (converted, not_converted, conversions, value) =
            (column(1), column(2), column(3), column(4));
        crate::grouped::for_each_element(lists[0], |_, j| {
            self.add(
                paths.value(j).to_string(),
                converted.value(j),
                not_converted.value(j),
                conversions.value(j),
                value.value(j),
            )
        });
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        // Channels by name, so that ids (and the result order) do not depend on input order.
        let mut names: BTreeMap<&str, u32> = BTreeMap::new();
        for path in self.paths.keys().filter(|p| !p.is_empty()) {
            for c in path.split(SEP) {
                names.insert(c, 0);
            }
        }
        for (i, v) in names.values_mut().enumerate() {
            *v = i as u32;
        }
        let mut encoded: Vec<(Vec<u32>, PathTotals)> = Vec::with_capacity(self.paths.len());
        let (mut touched_conversions, mut touched_value) = (0.0, 0.0);
        let (mut untouched_conversions, mut untouched_value) = (0.0, 0.0);
        for (path, t) in &self.paths {
            let ids: Vec<u32> = if path.is_empty() {
                vec![]
            } else {
                path.split(SEP).map(|c| names[c]).collect()
            };
            if ids.is_empty() {
                untouched_conversions += t.conversions;
                untouched_value += t.value;
            } else {
                touched_conversions += t.conversions;
                touched_value += t.value;
            }
            encoded.push((ids, *t));
        }
        let weighted = encoded.iter().flat_map(|(ids, t)| {
            [
                (ids.as_slice(), true, t.converted),
                (ids.as_slice(), false, t.not_converted),
            ]
            .into_iter()
            .filter(|(_, _, w)| *w > 0.0)
        });
        let chain = Chain::build(weighted, self.options.order);
        if chain.transient_states() > MAX_STATES {
            return Err(DataFusionError::Execution(format!(
                "{NAME}: the chain has {} states, more than the {MAX_STATES} an exact solve \
                 allows; use a lower order or fewer channels",
                chain.transient_states()
            )));
        }
        let p = chain.conversion_probability(None);
        let effects: Vec<(&str, f64)> = names
            .iter()
            .map(|(name, id)| {
                let without = chain.conversion_probability(Some(*id));
                let effect = if p > 0.0 {
                    (1.0 - without / p).max(0.0)
                } else {
                    0.0
                };
                (*name, effect)
            })
            .collect();
        let total_effect: f64 = effects.iter().map(|e| e.1).sum();

        let mut channel = StringBuilder::new();
        let mut removal = Float64Builder::new();
        let mut conversions = Float64Builder::new();
        let mut value = Float64Builder::new();
        let mut n = 0;
        if untouched_conversions > 0.0 || untouched_value != 0.0 {
            channel.append_value(crate::attribution::NO_TOUCH);
            removal.append_null();
            conversions.append_value(untouched_conversions);
            value.append_value(untouched_value);
            n += 1;
        }
        for (name, effect) in &effects {
            let share = if total_effect > 0.0 {
                effect / total_effect
            } else {
                0.0
            };
            channel.append_value(name);
            removal.append_value(*effect);
            conversions.append_value(share * touched_conversions);
            value.append_value(share * touched_value);
            n += 1;
        }
        let items = StructArray::new(
            item_fields(),
            vec![
                Arc::new(channel.finish()),
                Arc::new(removal.finish()),
                Arc::new(conversions.finish()),
                Arc::new(value.finish()),
            ],
            None,
        );
        let list = ListArray::new(
            Arc::new(Field::new_list_field(
                DataType::Struct(item_fields()),
                false,
            )),
            OffsetBuffer::from_lengths([n]),
            Arc::new(items),
            None,
        );
        Ok(ScalarValue::List(Arc::new(list)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + self
                .paths
                .keys()
                .map(|k| k.capacity() + std::mem::size_of::<PathTotals>() + 32)
                .sum::<usize>()
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MarkovAttribution {
    signature: Signature,
}

impl Default for MarkovAttribution {
    fn default() -> Self {
        Self::new()
    }
}

impl MarkovAttribution {
    pub fn new() -> Self {
        MarkovAttribution {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

/// Check the (options, path, conversions, value) arguments both path-based functions
/// take; the path becomes a list of strings.
pub(crate) fn coerce_path_arguments(function: &str, types: &[DataType]) -> Result<Vec<DataType>> {
    let err = |m: String| crate::args::plan_err(function, m);
    if types.len() != 4 {
        return Err(err(format!(
            "expected {function}(options, path, conversions, value), got {} arguments",
            types.len()
        )));
    }
    if !matches!(
        types[0],
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
    ) {
        return Err(err(format!(
            "argument 1 (options) must be a string, got {}",
            types[0]
        )));
    }
    let path_ok = match &types[1] {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => matches!(
            f.data_type(),
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null
        ),
        DataType::Null => true,
        _ => false,
    };
    if !path_ok {
        return Err(err(format!(
            "argument 2 (path) must be a list of channel names, e.g. \
             array_agg(channel ORDER BY event_time), got {}",
            types[1]
        )));
    }
    if !(types[2].is_numeric() || matches!(types[2], DataType::Boolean | DataType::Null)) {
        return Err(err(format!(
            "argument 3 (conversions) must be a number or a boolean, got {}",
            types[2]
        )));
    }
    if !(types[3].is_numeric() || types[3] == DataType::Null) {
        return Err(err(format!(
            "argument 4 (value) must be a number or NULL, got {}",
            types[3]
        )));
    }
    Ok(vec![
        DataType::Utf8,
        DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
        DataType::Float64,
        DataType::Float64,
    ])
}

impl AggregateUDFImpl for MarkovAttribution {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        coerce_path_arguments(NAME, types)
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
        Ok(Box::new(MarkovAccumulator {
            options: MarkovOptions::parse(&text)?,
            paths: HashMap::new(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(crate::args::list_state_fields(
            args.name,
            &[
                ("path", DataType::Utf8),
                ("converted", DataType::Float64),
                ("not_converted", DataType::Float64),
                ("conversions", DataType::Float64),
                ("value", DataType::Float64),
            ],
        ))
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            Documentation::builder(
                crate::args::doc_section("tidepool attribution"),
                "Markov-chain removal-effect attribution over everyone's channel paths, solved \
                 exactly: a list of {channel, removal_effect, conversions, value}.",
                "markov_attribution(options, path, conversions, value)",
            )
            .with_sql_example(
                "SELECT unnest(markov_attribution('order=1', path, conversions, revenue)) FROM (\n  SELECT array_agg(channel ORDER BY event_time) FILTER (WHERE channel IS NOT NULL) AS path,\n         count(*) FILTER (WHERE event_name = 'purchase') AS conversions, sum(revenue) AS revenue\n  FROM events GROUP BY anonymous_id)",
            )
            .with_argument("options", "string literal: order=1..4 (default 1), collapse=true|false (merge immediate repeats)")
            .with_argument("path", "list of channel names in time order (one row per person)")
            .with_argument("conversions", "the person's conversions (a path converted if > 0)")
            .with_argument("value", "the person's conversion value (NULL counts as 0)")
            .build()
        });
        Some(&DOC)
    }
}
