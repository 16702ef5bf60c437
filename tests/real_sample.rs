//! The real public event data in ../shared/data-src imports with a column mapping and
//! answers queries. Expected numbers come from those datasets' READMEs.

mod common;

use common::*;

#[test]
fn taobao_user_behavior_imports_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let wh = wh.to_str().unwrap();
    let csv = shared_data("taobao_userbehavior_prefix/UserBehavior_prefix.csv");
    ok(bin()
        .args(["import", "--warehouse", wh, "--no-header"])
        .args([
            "--columns",
            "user_id,item_id,category_id,behavior,timestamp",
        ])
        .args([
            "--map",
            "event_name=behavior",
            "--map",
            "event_time=timestamp",
            "--set",
            "platform=taobao",
        ])
        .arg(&csv));
    assert_eq!(count(wh, "SELECT count(*) FROM events"), 84_287);
    assert_eq!(count(wh, "SELECT count(DISTINCT user_id) FROM events"), 814);
    let rows = query(
        wh,
        "SELECT event_name, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC",
        &[],
    );
    let got: Vec<(String, String)> = rows
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let want = [
        ("pv", "75693"),
        ("cart", "4494"),
        ("fav", "2351"),
        ("buy", "1749"),
    ];
    assert_eq!(
        got,
        want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
    );
    // The dataset window is 2017-11-25..2017-12-03 in UTC+8; 35 rows fall outside it,
    // the earliest on 2017-09-11.
    assert_eq!(
        count(
            wh,
            "SELECT count(*) FROM events WHERE event_time < '2017-11-24T16:00:00Z' \
                   OR event_time >= '2017-12-03T16:00:00Z'"
        ),
        35
    );
    let earliest = query(wh, "SELECT min(event_time)::date::varchar FROM events", &[]);
    assert_eq!(earliest[0][0], "2017-09-11");
    assert_eq!(
        count(wh, "SELECT count(DISTINCT category_id) FROM events"),
        2_911
    );
    assert_eq!(
        count(wh, "SELECT count(DISTINCT item_id) FROM events"),
        55_233
    );
}

#[test]
fn olist_leads_and_deals_import_and_answer() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let wh = wh.to_str().unwrap();
    ok(bin()
        .args(["import", "--warehouse", wh])
        .args([
            "--map",
            "anonymous_id=mql_id",
            "--map",
            "event_time=first_contact_date",
        ])
        .args(["--map", "channel=origin", "--set", "event_name=mql"])
        .arg(shared_data(
            "olist_marketing_funnel/olist_marketing_qualified_leads_dataset.csv",
        )));
    ok(bin()
        .args(["import", "--warehouse", wh])
        .args([
            "--map",
            "anonymous_id=mql_id",
            "--map",
            "event_time=won_date",
        ])
        .args([
            "--map",
            "revenue=declared_monthly_revenue",
            "--set",
            "event_name=closed_deal",
        ])
        .arg(shared_data(
            "olist_marketing_funnel/olist_closed_deals_dataset.csv",
        )));
    let rows = query(
        wh,
        "SELECT coalesce(channel, '(empty)'), count(*) FROM events WHERE event_name = 'mql' GROUP BY 1 ORDER BY 2 DESC, 1",
        &[],
    );
    let got: Vec<String> = rows.iter().map(|r| format!("{}={}", r[0], r[1])).collect();
    assert_eq!(
        got,
        [
            "organic search=2296",
            "paid search=1586",
            "social=1350",
            "unknown=1099",
            "direct traffic=499",
            "email=493",
            "referral=284",
            "other=150",
            "display=118",
            "other publicities=65",
            "(empty)=60",
        ]
    );
    assert_eq!(
        count(
            wh,
            "SELECT count(*) FROM events WHERE event_name = 'closed_deal'"
        ),
        842
    );
    assert_eq!(
        count(
            wh,
            "SELECT count(*) FROM events WHERE event_name = 'closed_deal' AND revenue > 0"
        ),
        45
    );
    // Leads span 2017-06-14 .. 2018-05-31.
    let span = query(wh, "SELECT min(event_time)::date::varchar, max(event_time)::date::varchar FROM events WHERE event_name = 'mql'", &[]);
    assert_eq!(span[0], vec!["2017-06-14", "2018-05-31"]);
    // Lead-to-deal conversion by first-contact channel: every deal finds its lead.
    let converted = count(
        wh,
        "SELECT count(*) FROM events d JOIN events l ON d.anonymous_id = l.anonymous_id \
         WHERE d.event_name = 'closed_deal' AND l.event_name = 'mql'",
    );
    assert!(converted > 0 && converted <= 842, "{converted}");
}
