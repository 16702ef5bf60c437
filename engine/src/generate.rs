//! `tidepool gen`: a synthetic events table that behaves like a shop's real traffic.
//!
//! - activity per person is heavy-tailed (log-normal weights: a few people do a lot);
//! - people come back on later days with decaying probability;
//! - activity comes in sessions (a session id, events tens of seconds apart);
//! - sessions may run an ordered purchase funnel (view_item → add_to_cart →
//!   begin_checkout → purchase) with drop-off at each step, more often after a paid touch;
//! - some sessions start with a marketing touch (ad/email/sms click, WeChat follow) that
//!   carries its channel and campaign; the rest land direct, organic or by referral;
//! - people have one to three devices (anonymous ids); about half sign up, after which
//!   each device carries the user id from its first login on.
//!
//! The same options and seed give the same rows.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use chrono::NaiveDate;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, LogNormal};

use crate::error::{EngineError, Result};
use crate::import::Progress;
use crate::schema::{events_schema, UTC};
use crate::table::{writer, BatchRecord, CommitOutcome, EventTable, WriteOptions};

#[derive(Debug, Clone, serde::Serialize)]
pub struct GenOptions {
    pub events: u64,
    pub users: u64,
    pub days: u32,
    pub seed: u64,
    /// The first day (UTC).
    pub start: NaiveDate,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GenReport {
    pub events: u64,
    pub people: u64,
    pub files: usize,
    pub version: Option<u64>,
    pub already_generated: bool,
}

const US_PER_SEC: i64 = 1_000_000;
const US_PER_DAY: i64 = 86_400 * US_PER_SEC;
/// Rows generated before they are written out as files.
const CHUNK_EVENTS: usize = 2_000_000;

const PLATFORMS: [(&str, f64); 4] = [
    ("web", 0.45),
    ("ios", 0.25),
    ("android", 0.22),
    ("miniprogram", 0.08),
];
/// Paid or owned touches: (channel, event name, weight).
const TOUCHES: [(&str, &str, f64); 6] = [
    ("search_ads", "ad_click", 0.30),
    ("wechat", "wechat_follow", 0.18),
    ("douyin", "ad_click", 0.15),
    ("email", "email_click", 0.15),
    ("sms", "sms_click", 0.10),
    ("display", "ad_click", 0.12),
];
const UNPAID: [(&str, f64); 3] = [("direct", 0.45), ("organic", 0.40), ("referral", 0.15)];
const CATEGORIES: [&str; 8] = [
    "shoes", "dresses", "phones", "snacks", "beauty", "toys", "books", "home",
];
const PAGES: [&str; 6] = ["/", "/deals", "/new", "/category", "/help", "/account"];
const QUERIES: [&str; 6] = [
    "sneakers",
    "summer dress",
    "phone case",
    "green tea",
    "lipstick",
    "lego",
];
/// Relative chance of a session starting in each hour of the day (UTC).
const HOURS: [f64; 24] = [
    2.0, 1.5, 2.0, 3.0, 4.0, 5.0, 5.5, 5.5, 5.0, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 7.0, 5.5, 4.0, 3.0,
    2.5, 2.0, 1.5, 1.5, 2.0,
];

const HOUR_INDEX: [usize; 24] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T], weight: impl Fn(&T) -> f64) -> &'a T {
    let total: f64 = items.iter().map(&weight).sum();
    let mut x = rng.random::<f64>() * total;
    for item in items {
        x -= weight(item);
        if x <= 0.0 {
            return item;
        }
    }
    items.last().expect("non-empty")
}

struct Columns {
    time: TimestampMicrosecondBuilder,
    name: StringBuilder,
    anon: StringBuilder,
    user: StringBuilder,
    session: StringBuilder,
    channel: StringBuilder,
    campaign: StringBuilder,
    platform: StringBuilder,
    revenue: Float64Builder,
    properties: StringBuilder,
    rows: usize,
}

impl Columns {
    fn new() -> Self {
        Columns {
            time: TimestampMicrosecondBuilder::new().with_timezone(UTC),
            name: StringBuilder::new(),
            anon: StringBuilder::new(),
            user: StringBuilder::new(),
            session: StringBuilder::new(),
            channel: StringBuilder::new(),
            campaign: StringBuilder::new(),
            platform: StringBuilder::new(),
            revenue: Float64Builder::new(),
            properties: StringBuilder::new(),
            rows: 0,
        }
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.anon.finish()),
            Arc::new(self.user.finish()),
            Arc::new(self.session.finish()),
            Arc::new(self.channel.finish()),
            Arc::new(self.campaign.finish()),
            Arc::new(self.platform.finish()),
            Arc::new(self.revenue.finish()),
            Arc::new(self.properties.finish()),
        ];
        self.rows = 0;
        Ok(RecordBatch::try_new(events_schema(&[]), columns)?)
    }
}

/// One event of a session, before it is appended.
struct Event<'a> {
    name: &'a str,
    channel: Option<&'a str>,
    campaign: Option<String>,
    revenue: Option<f64>,
    properties: Option<String>,
}

impl<'a> Event<'a> {
    fn plain(name: &'a str, properties: String) -> Self {
        Event {
            name,
            channel: None,
            campaign: None,
            revenue: None,
            properties: Some(properties),
        }
    }
}

struct Device {
    anon: String,
    platform: &'static str,
    logged_in: bool,
}

/// Generates one person's events into `out`; `budget` events exactly.
fn person(out: &mut Columns, rng: &mut StdRng, index: u64, budget: u64, opts: &GenOptions) {
    let days = opts.days as i64;
    let start_us = opts
        .start
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        .timestamp_micros();
    let first_day = rng.random_range(0..days);
    let device_count =
        1 + (rng.random::<f64>() < 0.3) as usize + (rng.random::<f64>() < 0.1) as usize;
    let mut devices: Vec<Device> = (0..device_count)
        .map(|d| Device {
            anon: format!(
                "d{:012x}",
                (index << 2 | d as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16
            ),
            platform: pick(rng, &PLATFORMS, |p| p.1).0,
            logged_in: false,
        })
        .collect();
    let user_id = format!("u{index:08}");
    // Sign up in one of the first sessions, or never.
    let signup_session = (rng.random::<f64>() < 0.55).then(|| rng.random_range(0..4u64));
    let mut signed_up = false;
    let gap = Exp::new(1.0 / 45.0).expect("positive rate");
    let price = LogNormal::new(3.6, 0.8).expect("valid");

    let mut left = budget;
    let mut props = String::new();
    let mut s = 0u64;
    let mut from_day = first_day;
    // Sessions come in rounds of days drawn after the previous round's last day, each
    // with decaying probability further out, until the person's budget is spent.
    while left > 0 {
        let span = (days - from_day).max(1) as f64;
        let later = Exp::new(3.0 / span).expect("positive rate");
        let mut round: Vec<i64> = (0..left.div_ceil(4))
            .map(|i| {
                if s == 0 && i == 0 {
                    0
                } else {
                    later.sample(rng) as i64
                }
            })
            .map(|offset| (from_day + offset).min(days - 1))
            .collect();
        round.sort_unstable();
        from_day = *round.last().expect("non-empty");
        for day in round {
            if left == 0 {
                break;
            }
            session(
                out,
                rng,
                &mut Session {
                    index,
                    s,
                    day,
                    start_us,
                    user_id: &user_id,
                    signup_session,
                    signed_up: &mut signed_up,
                    devices: &mut devices,
                    left: &mut left,
                    props: &mut props,
                    gap: &gap,
                    price: &price,
                },
            );
            s += 1;
        }
    }
}

struct Session<'a> {
    index: u64,
    s: u64,
    day: i64,
    start_us: i64,
    user_id: &'a str,
    signup_session: Option<u64>,
    signed_up: &'a mut bool,
    devices: &'a mut Vec<Device>,
    left: &'a mut u64,
    props: &'a mut String,
    gap: &'a Exp<f64>,
    price: &'a LogNormal<f64>,
}

/// One session of one person: an optional touch, a landing page, browsing, perhaps a
/// funnel run.
fn session(out: &mut Columns, rng: &mut StdRng, p: &mut Session<'_>) {
    let (index, s, day, start_us) = (p.index, p.s, p.day, p.start_us);
    let device = rng.random_range(0..p.devices.len());
    let hour = pick(rng, &HOUR_INDEX, |h| HOURS[*h]);
    let hour = *hour as i64;
    let mut t = start_us
        + day * US_PER_DAY
        + hour * 3_600 * US_PER_SEC
        + rng.random_range(0..3_600 * US_PER_SEC);
    let session_id = format!("s{index:08}-{s}");
    let mut events: Vec<Event> = vec![];
    let touched = rng.random::<f64>() < 0.3;
    if touched {
        let (channel, name, _) = *pick(rng, &TOUCHES, |t| t.2);
        let campaign = format!("{channel}_{}", rng.random_range(1..=4));
        events.push(Event {
            name,
            channel: Some(channel),
            campaign: Some(campaign),
            revenue: None,
            properties: None,
        });
    }
    let landing = pick(rng, &PAGES, |_| 1.0);
    let mut first = Event::plain("page_view", format!("{{\"page\":\"{landing}\"}}"));
    if !touched {
        first.channel = Some(pick(rng, &UNPAID, |u| u.1).0);
    }
    events.push(first);
    let login_now = *p.signed_up && !p.devices[device].logged_in;
    if login_now {
        events.push(Event::plain("login", "{}".into()));
    }
    if p.signup_session == Some(s) && !*p.signed_up {
        events.push(Event::plain("signup", "{}".into()));
    }
    // Browsing, then perhaps a funnel run.
    for _ in 0..rng.random_range(0..4) {
        if rng.random::<f64>() < 0.3 {
            let q = pick(rng, &QUERIES, |_| 1.0);
            events.push(Event::plain("search", format!("{{\"query\":\"{q}\"}}")));
        } else {
            let page = pick(rng, &PAGES, |_| 1.0);
            events.push(Event::plain(
                "page_view",
                format!("{{\"page\":\"{page}\"}}"),
            ));
        }
    }
    if rng.random::<f64>() < 0.6 {
        let item = rng.random_range(1..5_000);
        let category = CATEGORIES[item as usize % CATEGORIES.len()];
        p.props.clear();
        let _ = write!(
            p.props,
            "{{\"item_id\":\"i{item}\",\"category\":\"{category}\"}}"
        );
        events.push(Event::plain("view_item", p.props.clone()));
        let boost = if touched { 0.12 } else { 0.0 };
        if rng.random::<f64>() < 0.33 + boost {
            events.push(Event::plain("add_to_cart", p.props.clone()));
            if rng.random::<f64>() < 0.55 + boost {
                events.push(Event::plain("begin_checkout", p.props.clone()));
                if rng.random::<f64>() < 0.65 + boost {
                    let value: f64 = (p.price.sample(rng) * 100.0_f64).round() / 100.0;
                    let mut purchase = Event::plain(
                        "purchase",
                        format!("{{\"item_id\":\"i{item}\",\"order_id\":\"o{index}-{s}\"}}"),
                    );
                    purchase.revenue = Some(value);
                    events.push(purchase);
                }
            }
        }
    }

    let d = &mut p.devices[device];
    for e in events {
        if *p.left == 0 {
            break;
        }
        if e.name == "signup" {
            *p.signed_up = true;
        }
        if e.name == "login" || e.name == "signup" {
            d.logged_in = true;
        }
        out.time.append_value(t);
        out.name.append_value(e.name);
        out.anon.append_value(&d.anon);
        out.user.append_option(d.logged_in.then_some(p.user_id));
        out.session.append_value(&session_id);
        out.channel.append_option(e.channel);
        out.campaign.append_option(e.campaign.as_deref());
        out.platform.append_value(d.platform);
        out.revenue.append_option(e.revenue);
        out.properties.append_option(e.properties.as_deref());
        out.rows += 1;
        *p.left -= 1;
        t += (p.gap.sample(rng) * US_PER_SEC as f64) as i64 + US_PER_SEC;
    }
}

/// Events per person: one each, the rest spread by heavy-tailed weights.
fn allocate(opts: &GenOptions) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let weight = LogNormal::new(0.0, 1.3).expect("valid");
    let weights: Vec<f64> = (0..opts.users).map(|_| weight.sample(&mut rng)).collect();
    let total: f64 = weights.iter().sum();
    let spare = opts.events - opts.users;
    let mut counts: Vec<u64> = weights
        .iter()
        .map(|w| 1 + (spare as f64 * w / total).floor() as u64)
        .collect();
    let mut missing = opts.events - counts.iter().sum::<u64>();
    // Hand the rounding remainder out to the heaviest people first.
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|a, b| weights[*b].total_cmp(&weights[*a]));
    for i in order.iter().cycle() {
        if missing == 0 {
            break;
        }
        counts[*i] += 1;
        missing -= 1;
    }
    counts
}

pub async fn generate(
    table: &EventTable,
    opts: &GenOptions,
    progress: &dyn Progress,
) -> Result<GenReport> {
    if opts.users == 0 || opts.days == 0 || opts.events < opts.users {
        return Err(EngineError::invalid(format!(
            "gen needs at least one user and one day, and at least as many events as users \
             (got {} events, {} users, {} days)",
            opts.events, opts.users, opts.days
        )));
    }
    let batch_id = format!(
        "gen:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            serde_json::to_vec(opts).expect("serialisable")
        ))
    );
    let mut report = GenReport {
        events: opts.events,
        people: opts.users,
        files: 0,
        version: None,
        already_generated: false,
    };
    if table.manifest().await?.has_batch(&batch_id) {
        report.already_generated = true;
        return Ok(report);
    }
    progress.stage("generating", Some(opts.events));
    let counts = allocate(opts);
    let mut files = vec![];
    let mut next_person = 0usize;
    let write_options = WriteOptions::default();
    while next_person < counts.len() {
        let opts_c = opts.clone();
        let counts_c = counts.clone();
        let start = next_person;
        let (batch, end) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut out = Columns::new();
            let mut p = start;
            while p < counts_c.len() && out.rows < CHUNK_EVENTS {
                let mut rng = StdRng::seed_from_u64(
                    opts_c.seed ^ (p as u64).wrapping_mul(0xA24B_AED4_963E_E407),
                );
                person(&mut out, &mut rng, p as u64, counts_c[p], &opts_c);
                p += 1;
            }
            Ok((out.finish()?, p))
        })
        .await
        .map_err(|e| EngineError::invalid(format!("generator failed: {e}")))??;
        next_person = end;
        let rows = batch.num_rows() as u64;
        files.extend(
            writer::write_data_files(&table.location, batch, &batch_id, &write_options).await?,
        );
        progress.advance(rows);
    }
    progress.finish();
    report.files = files.len();
    let record = BatchRecord {
        id: batch_id,
        source: format!(
            "tidepool gen --events {} --users {} --days {} --seed {} --start {}",
            opts.events, opts.users, opts.days, opts.seed, opts.start
        ),
        rows: opts.events,
        committed_at: chrono::Utc::now().to_rfc3339(),
    };
    if std::env::var(crate::table::FAILPOINT_ENV).as_deref() == Ok("before_commit") {
        eprintln!(
            "{}=before_commit: aborting before the manifest commit",
            crate::table::FAILPOINT_ENV
        );
        std::process::abort();
    }
    match table.commit(files, record, &[]).await? {
        CommitOutcome::Committed { version } => report.version = Some(version),
        CommitOutcome::AlreadyCommitted => report.already_generated = true,
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(events: u64, users: u64) -> GenOptions {
        GenOptions {
            events,
            users,
            days: 10,
            seed: 7,
            start: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
        }
    }

    #[test]
    fn allocation_is_exact_and_heavy_tailed() {
        let counts = allocate(&opts(100_000, 5_000));
        assert_eq!(counts.iter().sum::<u64>(), 100_000);
        assert!(counts.iter().all(|c| *c >= 1));
        let mut sorted = counts.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let top_tenth: u64 = sorted[..500].iter().sum();
        // The busiest 10% of people do far more than 10% of the events.
        assert!(top_tenth > 30_000, "top 10% did {top_tenth}");
    }

    #[test]
    fn a_person_gets_exactly_their_budget_within_the_window() {
        let o = opts(0, 0);
        let mut out = Columns::new();
        let mut rng = StdRng::seed_from_u64(1);
        person(&mut out, &mut rng, 3, 250, &o);
        let batch = out.finish().unwrap();
        assert_eq!(batch.num_rows(), 250);
        let t = arrow::array::AsArray::as_primitive::<arrow::datatypes::TimestampMicrosecondType>(
            batch.column(0),
        );
        let start = o
            .start
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_micros();
        let end = start + (o.days as i64 + 1) * US_PER_DAY;
        assert!(t.values().iter().all(|v| *v >= start && *v < end));
    }
}
