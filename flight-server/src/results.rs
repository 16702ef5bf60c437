//! Results as they leave the server: view types become their plain forms (many Flight
//! SQL clients cannot read Utf8View/BinaryView yet), and every batch is made to carry
//! exactly the schema announced in the FlightInfo.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;

/// The type a column of type `t` has on the wire.
pub fn wire_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::ListView(f) | DataType::List(f) => DataType::List(wire_field(f)),
        DataType::LargeListView(f) | DataType::LargeList(f) => DataType::LargeList(wire_field(f)),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(wire_field(f), *n),
        DataType::Struct(fields) => {
            DataType::Struct(fields.iter().map(wire_field).collect::<Fields>())
        }
        DataType::Map(f, sorted) => DataType::Map(wire_field(f), *sorted),
        DataType::Dictionary(_, v) => wire_type(v),
        other => other.clone(),
    }
}

fn wire_field(f: &FieldRef) -> FieldRef {
    Arc::new(f.as_ref().clone().with_data_type(wire_type(f.data_type())))
}

/// The schema a result with `schema` has on the wire.
pub fn wire_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| Field::clone(&wire_field(f)))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

/// `batch` in the announced `schema` (same column order; types cast, names and
/// nullability taken from `schema`).
pub fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.num_columns() != schema.fields().len() {
        return Err(ArrowError::SchemaError(format!(
            "the result has {} columns but {} were announced",
            batch.num_columns(),
            schema.fields().len()
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(Arc::clone(c))
            } else {
                arrow::compute::cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringViewArray};

    #[test]
    fn views_leave_as_plain_strings_with_the_announced_schema() {
        let logical = Schema::new(vec![
            Field::new("name", DataType::Utf8View, true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8View, true))),
                true,
            ),
            Field::new("n", DataType::Int64, false),
        ]);
        let wire = wire_schema(&logical);
        assert_eq!(wire.field(0).data_type(), &DataType::Utf8);
        assert_eq!(
            wire.field(1).data_type(),
            &DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
        );
        assert!(!wire.field(2).is_nullable());

        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("a", DataType::Utf8View, true),
                Field::new("n", DataType::Int64, true),
            ])),
            vec![
                Arc::new(StringViewArray::from(vec![Some("x"), None])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let announced = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let out = conform(&batch, &announced).unwrap();
        assert_eq!(out.schema(), announced);
        // A null where the announcement says there is none is an error, not a lie.
        let strict = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        assert!(conform(&batch, &strict).is_err());
    }
}
