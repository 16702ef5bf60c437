//! Rows per second of every function in this crate, on in-memory batches, so that a
//! regression shows without the peer engines: `cargo bench -p tidepool-udfs`.
//!
//! The data: 1M events of 50k people over 30 days, time-ordered, with the event names of
//! `tidepool gen`. Each bench runs one aggregate query per person through DataFusion, as
//! users do, so the numbers include the GROUP BY.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

const ROWS: usize = 1_000_000;
const PEOPLE: i64 = 50_000;
const NAMES: [&str; 6] = [
    "page_view",
    "view_item",
    "add_to_cart",
    "begin_checkout",
    "purchase",
    "search",
];
const CHANNELS: [&str; 6] = ["search_ads", "email", "wechat", "douyin", "direct", "sms"];

fn events() -> RecordBatch {
    // A fixed linear congruential sequence: the same data every run.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) % n
    };
    let start = 1_790_812_800_000_000i64; // 2026-10-01T00:00:00Z
    let mut ts = Vec::with_capacity(ROWS);
    let mut person = Vec::with_capacity(ROWS);
    let mut name = Vec::with_capacity(ROWS);
    let mut channel: Vec<Option<&str>> = Vec::with_capacity(ROWS);
    for i in 0..ROWS {
        ts.push(start + (i as i64) * (30 * 86_400_000_000 / ROWS as i64));
        person.push(next(PEOPLE as u64) as i64);
        let weights = [50u64, 20, 10, 6, 4, 10];
        let mut pick = next(100);
        let mut k = 0;
        while pick >= weights[k] {
            pick -= weights[k];
            k += 1;
        }
        name.push(NAMES[k]);
        // A third of page views are marketing touches.
        channel
            .push((k == 0 && next(3) == 0).then(|| CHANNELS[next(CHANNELS.len() as u64) as usize]));
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("person", DataType::Int64, false),
        Field::new("event_name", DataType::Utf8, false),
        Field::new("channel", DataType::Utf8, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
        Arc::new(Int64Array::from(person)),
        Arc::new(StringArray::from(name)),
        Arc::new(StringArray::from(channel)),
    ];
    RecordBatch::try_new(schema, columns).expect("valid batch")
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let ctx = SessionContext::new();
    for f in tidepool_udfs::aggregate_functions() {
        ctx.register_udaf(f.as_ref().clone());
    }
    for f in tidepool_udfs::scalar_functions() {
        ctx.register_udf(f.as_ref().clone());
    }
    for f in tidepool_udfs::window_functions() {
        ctx.register_udwf(f.as_ref().clone());
    }
    let batch = events();
    let table = MemTable::try_new(batch.schema(), vec![batch.chunks_exact_rows()]).expect("table");
    ctx.register_table("ev", Arc::new(table))
        .expect("registered");

    let steps = "event_name = 'view_item', event_name = 'add_to_cart', event_name = 'begin_checkout', event_name = 'purchase'";
    let queries = [
        ("window_funnel", format!("SELECT window_funnel(INTERVAL '1 day', '', ts, {steps}) FROM ev GROUP BY person")),
        ("window_funnel_strict_once", format!("SELECT window_funnel(INTERVAL '1 day', 'strict_once', ts, {steps}) FROM ev GROUP BY person")),
        ("funnel", format!("SELECT funnel(INTERVAL '1 day', '', ts, NULL, NULL, NULL, {steps}) FROM ev GROUP BY person")),
        ("retention", "SELECT retention(ts < TIMESTAMP '2026-10-02T00:00:00Z', ts >= TIMESTAMP '2026-10-08T00:00:00Z') FROM ev GROUP BY person".to_string()),
        ("cohort_retention", "SELECT cohort_retention('unit=week; periods=4', ts, event_name = 'view_item', true, NULL) FROM ev GROUP BY person".to_string()),
        ("lifecycle", "SELECT lifecycle('unit=week', ts, true) FROM ev GROUP BY person".to_string()),
        ("attribution_last_touch", "SELECT attribution(INTERVAL '7 days', 'model=last_touch', ts, channel, event_name = 'purchase', NULL) FROM ev GROUP BY person".to_string()),
        ("attribution_linear", "SELECT attribution(INTERVAL '7 days', 'model=linear', ts, channel, event_name = 'purchase', NULL) FROM ev GROUP BY person".to_string()),
        ("markov_attribution", "SELECT markov_attribution('order=1', path, n, NULL) FROM (SELECT array_agg(channel) FILTER (WHERE channel IS NOT NULL) AS path, count(*) FILTER (WHERE event_name = 'purchase') AS n FROM ev GROUP BY person)".to_string()),
        ("shapley_attribution", "SELECT shapley_attribution('', path, n, NULL) FROM (SELECT array_agg(channel) FILTER (WHERE channel IS NOT NULL) AS path, count(*) FILTER (WHERE event_name = 'purchase') AS n FROM ev GROUP BY person)".to_string()),
        ("sequence_match_within_hour", "SELECT sequence_match('(?1)(?t<=3600)(?2)', ts, event_name = 'view_item', event_name = 'purchase') FROM ev GROUP BY person".to_string()),
        ("sequence_match_any_gap", "SELECT sequence_match('(?1).*(?2)', ts, event_name = 'view_item', event_name = 'purchase') FROM ev GROUP BY person".to_string()),
        ("sequence_count", "SELECT sequence_count('(?1).*(?2)', ts, event_name = 'view_item', event_name = 'purchase') FROM ev GROUP BY person".to_string()),
        ("sequence_next_node", "SELECT sequence_next_node('forward', 'first_match', ts, event_name, true, event_name = 'add_to_cart') FROM ev GROUP BY person".to_string()),
        ("path_edges", "SELECT path_edges('start=view_item; max_steps=5; collapse=true', ts, event_name) FROM ev GROUP BY person".to_string()),
        ("sessionize", "SELECT max(s) FROM (SELECT sessionize(ts) OVER (PARTITION BY person ORDER BY ts) AS s FROM ev)".to_string()),
        ("local_period", "SELECT count(DISTINCT local_period(ts, 'week', 'Asia/Shanghai')) FROM ev".to_string()),
        ("baseline_count", "SELECT count(*) FROM ev GROUP BY person".to_string()),
    ];
    let mut group = c.benchmark_group("functions");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(10);
    for (name, sql) in queries {
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async { ctx.sql(&sql).await.unwrap().collect().await.unwrap() })
            })
        });
    }
    group.finish();
}

trait ChunksExt {
    fn chunks_exact_rows(&self) -> Vec<RecordBatch>;
}

impl ChunksExt for RecordBatch {
    /// The batch as DataFusion-sized batches (8192 rows).
    fn chunks_exact_rows(&self) -> Vec<RecordBatch> {
        (0..self.num_rows())
            .step_by(8192)
            .map(|o| self.slice(o, 8192.min(self.num_rows() - o)))
            .collect()
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
