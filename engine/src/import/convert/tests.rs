use super::*;
use crate::schema::EVENT_TIME;
use arrow::array::Int64Array;
use arrow::datatypes::{Field, Schema, TimestampMicrosecondType};

fn text_batch(cols: &[(&str, Vec<Option<&str>>)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(
        cols.iter()
            .map(|(n, _)| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let arrays = cols
        .iter()
        .map(|(_, v)| Arc::new(StringArray::from(v.clone())) as ArrayRef)
        .collect();
    RecordBatch::try_new(schema, arrays).unwrap()
}

fn mapping(cols: &[&str], consts: &[&str]) -> ColumnMapping {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    ColumnMapping::parse(&s(cols), &s(consts)).unwrap()
}

#[test]
fn timestamps_in_every_accepted_form() {
    // 2017-11-24T17:21:10Z
    let us = 1_511_544_070_000_000;
    for (text, expected) in [
        ("1511544070", us),
        ("1511544070000", us),
        ("1511544070000000", us),
        ("1511544070.5", us + 500_000),
        ("2017-11-24T17:21:10Z", us),
        ("2017-11-25T01:21:10+08:00", us),
        ("2017-11-24 17:21:10", us),
        ("2017-11-24 17:21:10.25", us + 250_000),
        ("2017-11-24T17:21", us - 10_000_000),
        ("2017-11-24", us - (17 * 3600 + 21 * 60 + 10) * 1_000_000),
    ] {
        assert_eq!(
            parse_timestamp(text, TimeUnitSpec::Auto),
            Some(expected),
            "{text}"
        );
    }
    assert_eq!(
        parse_timestamp("1511544070", TimeUnitSpec::Millis),
        Some(1_511_544_070_000)
    );
    assert_eq!(parse_timestamp("yesterday", TimeUnitSpec::Auto), None);
    // Beyond year 9999 (here: i64::MAX microseconds) is not a time the table stores.
    assert_eq!(
        parse_timestamp("9223372036854775807", TimeUnitSpec::Micros),
        None
    );
    assert_eq!(parse_timestamp("2017-13-01", TimeUnitSpec::Auto), None);
}

#[test]
fn maps_columns_and_records_bad_values_by_row_and_column() {
    let raw = text_batch(&[
        ("uid", vec![Some("1"), Some("2"), Some("3")]),
        ("behavior", vec![Some("pv"), Some("buy"), None]),
        (
            "ts",
            vec![Some("1511544070"), Some("soon"), Some("1511544071")],
        ),
        ("item", vec![Some("10"), Some("11"), Some("12")]),
        ("price", vec![Some("1.5"), Some("x"), None]),
    ]);
    let m = mapping(
        &[
            "event_name=behavior",
            "event_time=ts",
            "user_id=uid",
            "revenue=price",
        ],
        &["platform=app"],
    );
    let c = convert(&raw, &m, &[], TimeUnitSpec::Auto, false).unwrap();
    let described: Vec<(usize, &str)> = c
        .errors
        .iter()
        .map(|e| (e.row, e.column.as_str()))
        .collect();
    assert_eq!(described, vec![(1, "ts"), (1, "price"), (2, "behavior")]);
    assert!(c.errors[0].message.starts_with("not a timestamp"));
    assert_eq!(c.errors[0].value.as_deref(), Some("soon"));
    assert!(c.errors[2]
        .message
        .contains("missing value for required column 'event_name'"));

    let b = &c.batch;
    assert_eq!(
        c.extra_columns,
        vec![ExtraColumn {
            name: "item".into(),
            column_type: ColumnType::Int64
        }]
    );
    let anon = b.column_by_name("anonymous_id").unwrap().as_string::<i32>();
    assert_eq!(anon.value(0), "1", "anonymous_id falls back to the user id");
    let platform = b.column_by_name("platform").unwrap().as_string::<i32>();
    assert_eq!(platform.value(2), "app");
    let item = b
        .column_by_name("item")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(item.value(2), 12);
    let t = b
        .column_by_name(EVENT_TIME)
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    assert_eq!(t.value(0), 1_511_544_070_000_000);

    let keep = good_rows(3, &c.errors);
    let good = arrow::compute::filter_record_batch(b, &keep).unwrap();
    let good = strict(good, &c.extra_columns).unwrap();
    assert_eq!(good.num_rows(), 1);
}

#[test]
fn new_columns_take_the_tables_type_and_report_mismatches() {
    let raw = text_batch(&[
        ("event_time", vec![Some("2020-01-01")]),
        ("event_name", vec![Some("x")]),
        ("anonymous_id", vec![Some("a")]),
        ("score", vec![Some("high")]),
    ]);
    let table = [ExtraColumn {
        name: "score".into(),
        column_type: ColumnType::Float64,
    }];
    let c = convert(&raw, &mapping(&[], &[]), &table, TimeUnitSpec::Auto, false).unwrap();
    assert_eq!(c.errors.len(), 1);
    assert_eq!(c.errors[0].column, "score");
    assert_eq!(c.errors[0].message, "not a number");
}

#[test]
fn properties_must_be_json() {
    let raw = text_batch(&[
        ("event_time", vec![Some("2020-01-01"), Some("2020-01-01")]),
        ("event_name", vec![Some("x"), Some("y")]),
        ("anonymous_id", vec![Some("a"), Some("b")]),
        ("properties", vec![Some("{\"k\":1}"), Some("{oops")]),
    ]);
    let c = convert(&raw, &mapping(&[], &[]), &[], TimeUnitSpec::Auto, false).unwrap();
    assert_eq!(c.errors.len(), 1);
    assert_eq!(c.errors[0].row, 1);
    assert!(c.errors[0].message.starts_with("not valid JSON"));
}

#[test]
fn text_type_inference() {
    let infer = |v: Vec<Option<&str>>| infer_type(&(Arc::new(StringArray::from(v)) as ArrayRef));
    assert_eq!(
        infer(vec![Some("1"), None, Some("-2")]),
        Some(ColumnType::Int64)
    );
    assert_eq!(
        infer(vec![Some("1"), Some("2.5")]),
        Some(ColumnType::Float64)
    );
    assert_eq!(infer(vec![Some("007"), Some("8")]), Some(ColumnType::Utf8));
    assert_eq!(
        infer(vec![Some("true"), Some("False")]),
        Some(ColumnType::Boolean)
    );
    assert_eq!(infer(vec![Some("a1")]), Some(ColumnType::Utf8));
}

#[test]
fn a_bad_constant_is_an_argument_error() {
    let raw = text_batch(&[
        ("event_time", vec![Some("2020-01-01")]),
        ("event_name", vec![Some("x")]),
        ("anonymous_id", vec![Some("a")]),
    ]);
    let err = convert(
        &raw,
        &mapping(&[], &["revenue=lots"]),
        &[],
        TimeUnitSpec::Auto,
        false,
    )
    .err()
    .unwrap()
    .to_string();
    assert_eq!(err, "constant revenue=lots is not a valid float64");
}
