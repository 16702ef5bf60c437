//! End-to-end tests of the `tidepool` binary on local warehouses.

mod common;

use common::*;

#[test]
fn sample_warehouse_is_the_default_and_answers() {
    // No --warehouse: the committed sample in data/warehouse.
    let out = ok(bin().current_dir(repo()).args([
        "sql",
        "--format",
        "csv",
        "SELECT event_name, count(*) AS n FROM events GROUP BY 1 ORDER BY 2 DESC",
    ]));
    let rows: Vec<(String, u64)> = out
        .lines()
        .skip(1)
        .map(|l| {
            let (a, b) = l.split_once(',').unwrap();
            (a.to_string(), b.parse().unwrap())
        })
        .collect();
    assert!(rows.len() >= 8, "{out}");
    assert!(
        rows.windows(2).all(|w| w[0].1 >= w[1].1),
        "ordered by count: {out}"
    );
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    for expected in [
        "page_view",
        "view_item",
        "add_to_cart",
        "begin_checkout",
        "purchase",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {out}");
    }
    // The funnel drops off step by step.
    let n = |name: &str| rows.iter().find(|r| r.0 == name).unwrap().1;
    assert!(n("view_item") > n("add_to_cart"));
    assert!(n("add_to_cart") > n("begin_checkout"));
    assert!(n("begin_checkout") > n("purchase"));
}

#[test]
fn gen_then_query_counts_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let wh = format!("file://{}", dir.path().join("wh").display());
    let stderr = String::from_utf8(
        bin()
            .args([
                "gen", "--events", "20000", "--users", "800", "--days", "14", "--seed", "3",
                "--out", &wh,
            ])
            .output()
            .unwrap()
            .stderr,
    )
    .unwrap();
    assert!(
        stderr.contains("generated 20000 events for 800 people"),
        "{stderr}"
    );
    let rows = query(
        &wh,
        "SELECT event_name, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC",
        &[],
    );
    let total: u64 = rows.iter().map(|r| r[1].parse::<u64>().unwrap()).sum();
    assert_eq!(total, 20000);
    assert_eq!(
        count(
            &wh,
            "SELECT count(DISTINCT coalesce(user_id, anonymous_id)) FROM events"
        ) > 700,
        true
    );
    assert_eq!(
        count(
            &wh,
            "SELECT count(DISTINCT date_trunc('day', event_time)) FROM events"
        ) <= 15,
        true
    );
    // Marketing touches carry their channel; purchases carry revenue.
    assert_eq!(
        count(
            &wh,
            "SELECT count(*) FROM events WHERE event_name = 'ad_click' AND channel IS NULL"
        ),
        0
    );
    assert_eq!(
        count(
            &wh,
            "SELECT count(*) FROM events WHERE event_name = 'purchase' AND revenue IS NULL"
        ),
        0
    );
    // Some devices were seen before their user id was known.
    assert!(
        count(
            &wh,
            "SELECT count(DISTINCT anonymous_id) FROM events WHERE anonymous_id IN \
        (SELECT anonymous_id FROM events WHERE user_id IS NULL) AND user_id IS NOT NULL"
        ) > 0
    );
    // Same options again: nothing new.
    let again = String::from_utf8(
        bin()
            .args([
                "gen", "--events", "20000", "--users", "800", "--days", "14", "--seed", "3",
                "--out", &wh,
            ])
            .output()
            .unwrap()
            .stderr,
    )
    .unwrap();
    assert!(again.contains("already there"), "{again}");
    assert_eq!(count(&wh, "SELECT count(*) FROM events"), 20000);
}

const GOOD: &str = "uid,behavior,ts\n1,pv,1511544070\n1,buy,1511544100\n2,pv,1511544200\n";

#[test]
fn malformed_csv_names_the_row_and_column_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let wh = wh.to_str().unwrap();
    let good = write(dir.path(), "good.csv", GOOD);
    let map = [
        "--map",
        "event_name=behavior",
        "--map",
        "event_time=ts",
        "--map",
        "user_id=uid",
    ];
    ok(bin()
        .args(["import", "--warehouse", wh])
        .args(map)
        .arg(&good));
    assert_eq!(count(wh, "SELECT count(*) FROM events"), 3);
    let info_before = ok(bin().args(["info", "--warehouse", wh]));

    let bad = write(
        dir.path(),
        "bad.csv",
        "uid,behavior,ts\n3,pv,1511544300\n3,cart,1511544400\n4,pv,tuesday\n5,pv,1511544500\n6,pv,\n",
    );
    let err = fails(
        bin()
            .args(["import", "--warehouse", wh])
            .args(map)
            .arg(&bad),
    );
    let expected = format!("{}: line 4, column 'ts': not a timestamp", bad.display());
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("(value 'tuesday')"), "{err}");
    assert!(err.contains("1 more bad row"), "{err}");
    assert!(err.contains("nothing was imported"), "{err}");
    assert_eq!(count(wh, "SELECT count(*) FROM events"), 3);
    assert_eq!(ok(bin().args(["info", "--warehouse", wh])), info_before);

    // With --rejects the good rows land and the bad ones are written out.
    let rejects = dir.path().join("rejects.ndjson");
    ok(bin()
        .args(["import", "--warehouse", wh])
        .args(map)
        .arg("--rejects")
        .arg(&rejects)
        .arg(&bad));
    assert_eq!(count(wh, "SELECT count(*) FROM events"), 6);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&rejects)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["at"], "line 4");
    assert_eq!(lines[0]["record"]["ts"], "tuesday");
    assert_eq!(lines[0]["errors"][0]["column"], "ts");
    assert_eq!(lines[1]["at"], "line 6");
    assert!(lines[1]["errors"][0]["error"]
        .as_str()
        .unwrap()
        .contains("missing value"));
}

#[test]
fn reimporting_the_same_file_does_not_duplicate_it() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let wh = wh.to_str().unwrap();
    let good = write(dir.path(), "good.csv", GOOD);
    let map = [
        "--map",
        "event_name=behavior",
        "--map",
        "event_time=ts",
        "--map",
        "user_id=uid",
    ];
    ok(bin()
        .args(["import", "--warehouse", wh])
        .args(map)
        .arg(&good));
    let out = bin()
        .args(["import", "--warehouse", wh])
        .args(map)
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already imported"));
    assert_eq!(count(wh, "SELECT count(*) FROM events"), 3);
    // The same rows under another name are the same content: still one copy.
    let copy = write(dir.path(), "copy.csv", GOOD);
    ok(bin()
        .args(["import", "--warehouse", wh])
        .args(map)
        .arg(&copy));
    assert_eq!(count(wh, "SELECT count(*) FROM events"), 3);
}

#[test]
fn ndjson_and_parquet_import_with_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let wh = wh.to_str().unwrap();
    let nd = write(
        dir.path(),
        "e.ndjson",
        "{\"ts\":\"2026-01-01T10:00:00Z\",\"type\":\"view_item\",\"device\":\"a\",\"props\":{\"sku\":\"x\"}}\n\
         {\"ts\":1767261600000,\"type\":\"purchase\",\"device\":\"a\",\"amount\":12.5}\n",
    );
    ok(bin()
        .args([
            "import",
            "--warehouse",
            wh,
            "--map",
            "event_time=ts",
            "--map",
            "event_name=type",
        ])
        .args([
            "--map",
            "anonymous_id=device",
            "--map",
            "properties=props",
            "--map",
            "revenue=amount",
        ])
        .arg(&nd));
    let rows = query(wh, "SELECT event_name, event_time::varchar AS t, json_get_str(properties, 'sku'), revenue FROM events ORDER BY event_time", &[]);
    assert_eq!(rows[0], vec!["view_item", "2026-01-01T10:00:00Z", "x", ""]);
    // 1767261600000 ms = 2026-01-01T10:00:00Z
    assert_eq!(
        rows[1],
        vec!["purchase", "2026-01-01T10:00:00Z", "", "12.5"]
    );

    // Parquet written by `sql --format parquet` imports back.
    let pq = dir.path().join("out.parquet");
    ok(bin()
        .args(["sql", "--warehouse", wh, "--format", "parquet", "-o"])
        .arg(&pq)
        .arg("SELECT event_time AS t, event_name AS what, anonymous_id AS who FROM events"));
    let wh2 = dir.path().join("wh2");
    let wh2 = wh2.to_str().unwrap();
    ok(bin()
        .args([
            "import",
            "--warehouse",
            wh2,
            "--map",
            "event_time=t",
            "--map",
            "event_name=what",
            "--map",
            "anonymous_id=who",
        ])
        .arg(&pq));
    assert_eq!(
        count(wh2, "SELECT count(*) FROM events WHERE anonymous_id = 'a'"),
        2
    );
}

#[test]
fn table_option_reads_parquet_tidepool_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let wh = wh.to_str().unwrap();
    let ext = dir.path().join("ext");
    std::fs::create_dir(&ext).unwrap();
    for (i, sql) in [
        "SELECT 1 AS id, 'a' AS name",
        "SELECT 2 AS id, 'b' AS name UNION ALL SELECT 3, 'c'",
    ]
    .iter()
    .enumerate()
    {
        ok(bin()
            .args(["sql", "--warehouse", wh, "--format", "parquet", "-o"])
            .arg(ext.join(format!("p{i}.parquet")))
            .arg(sql));
    }
    let out = ok(bin()
        .args(["sql", "--warehouse", wh, "--format", "csv", "--table"])
        .arg(format!("things={}", ext.display()))
        .arg("SELECT count(*), sum(id) FROM things"));
    assert_eq!(out.lines().nth(1), Some("3,6"));
    let single = ok(bin()
        .args(["sql", "--warehouse", wh, "--format", "json", "--table"])
        .arg(format!("one=file://{}", ext.join("p0.parquet").display()))
        .arg("SELECT * FROM one"));
    assert_eq!(single.trim(), "{\"id\":1,\"name\":\"a\"}");
}

#[test]
fn registered_event_table_applies_its_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let wh = wh.to_str().unwrap();
    let ext = dir.path().join("stream.parquet");
    ok(bin().args(["sql", "--warehouse", wh, "--format", "parquet", "-o"]).arg(&ext).arg(
        "SELECT * FROM (VALUES (1511544070, 'pv', 'u1', 7), (1511544100, 'buy', 'u1', 8)) AS t(ts, behavior, visitor, item)",
    ));
    ok(bin()
        .args(["table", "add", "--warehouse", wh, "clicks"])
        .arg(&ext)
        .args([
            "--map",
            "event_time=ts",
            "--map",
            "event_name=behavior",
            "--map",
            "anonymous_id=visitor",
            "--time-unit",
            "s",
        ]));
    let rows = query(wh, "SELECT event_time::varchar, event_name, anonymous_id, user_id, item FROM clicks ORDER BY 1", &[]);
    assert_eq!(rows[0], vec!["2017-11-24T17:21:10Z", "pv", "u1", "", "7"]);
    assert_eq!(rows.len(), 2);
    assert!(ok(bin().args(["table", "list", "--warehouse", wh])).contains("clicks"));
    let err = fails(bin().args(["sql", "--warehouse", wh, "INSERT INTO clicks VALUES (1)"]));
    assert!(err.starts_with("error:"), "{err}");
    ok(bin().args(["table", "rm", "--warehouse", wh, "clicks"]));
    let err = fails(bin().args(["sql", "--warehouse", wh, "SELECT * FROM clicks"]));
    assert!(err.contains("clicks"), "{err}");
}

#[test]
fn statements_from_a_file_and_from_standard_input() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "q.sql",
        "CREATE VIEW v AS SELECT 40 + 2 AS x;\nSELECT x FROM v;\n",
    );
    let wh = dir.path().join("wh");
    let out = ok(bin()
        .args([
            "sql",
            "--format",
            "csv",
            "--warehouse",
            wh.to_str().unwrap(),
            "-f",
        ])
        .arg(&f));
    assert_eq!(out.trim(), "x\n42");
    use std::io::Write;
    let mut child = bin()
        .args([
            "sql",
            "--format",
            "json",
            "--warehouse",
            wh.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT [1,2] AS l, named_struct('a', 1) AS s")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "{\"l\":[1,2],\"s\":{\"a\":1}}"
    );
}

#[test]
fn timing_goes_to_standard_error() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let out = bin()
        .args([
            "sql",
            "--timing",
            "--format",
            "csv",
            "--warehouse",
            wh.to_str().unwrap(),
        ])
        .arg("SELECT a FROM (VALUES (1), (2)) AS t(a); SELECT 3 AS b")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "a\n1\n2\nb\n3\n");
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("-- ") && lines[0].ends_with(" s, 2 rows"),
        "{err}"
    );
    assert!(lines[1].ends_with(" s, 1 rows"), "{err}");
}

#[test]
fn user_errors_are_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let wh = wh.to_str().unwrap();
    let err = fails(bin().args(["sql", "--warehouse", wh, "SELEC 1"]));
    assert!(err.starts_with("error:") && err.contains("SELEC"), "{err}");
    let err = fails(bin().args(["sql", "--warehouse", wh, "SELECT nope FROM events"]));
    assert!(err.contains("nope"), "{err}");
    let err = fails(bin().args(["import", "--warehouse", wh, "/no/such/file.csv"]));
    assert!(err.contains("/no/such/file.csv: no such file"), "{err}");
    let f = write(dir.path(), "x.csv", "a,b\n1,2\n");
    let err = fails(bin().args(["import", "--warehouse", wh]).arg(&f));
    assert!(err.contains("no column for 'event_time'"), "{err}");
    let err = fails(bin().args(["import"]).arg(&f));
    assert!(err.contains("name it with --warehouse"), "{err}");
    let err = fails(
        bin()
            .args(["import", "--warehouse", wh, "--map", "event_time"])
            .arg(&f),
    );
    assert!(err.contains("expected TARGET=SOURCE"), "{err}");
}

#[test]
fn insert_appends_to_a_named_warehouse_only() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let wh = wh.to_str().unwrap();
    let good = write(dir.path(), "good.csv", GOOD);
    ok(bin()
        .args(["import", "--warehouse", wh])
        .args([
            "--map",
            "event_name=behavior",
            "--map",
            "event_time=ts",
            "--map",
            "user_id=uid",
        ])
        .arg(&good));
    let out = ok(bin()
        .args(["sql", "--warehouse", wh, "--format", "csv"])
        .arg(
            "INSERT INTO events (event_time, event_name, user_id) VALUES \
         (TIMESTAMP '2026-11-01 10:00:00', 'inserted', 'u9'), \
         (TIMESTAMP '2026-11-02 10:00:00', 'inserted', 'u9')",
        ));
    assert!(out.contains('2'), "{out}");
    assert_eq!(count(wh, "SELECT count(*) FROM events"), 5);
    // A row without an anonymous_id takes its user id, as an import without the column does.
    assert_eq!(
        count(
            wh,
            "SELECT count(*) FROM events WHERE event_name = 'inserted' AND anonymous_id = 'u9'"
        ),
        2
    );
    // A bad row fails the whole statement; nothing lands.
    let bad = bin()
        .args(["sql", "--warehouse", wh])
        .arg("INSERT INTO events (event_time, event_name) VALUES (TIMESTAMP '2026-11-01 10:00:00', 'x')")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("anonymous_id") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(count(wh, "SELECT count(*) FROM events"), 5);

    // The sample (no --warehouse) is never written.
    let refused = bin()
        .current_dir(repo())
        .args(["sql"])
        .arg("INSERT INTO events (event_time, event_name, user_id) VALUES (now(), 'x', 'y')")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("read-only"));
}

#[test]
fn user_add_keeps_hashes_not_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    let users = users.to_str().unwrap();
    let add = |name: &str, role: &str, password: &str| {
        let mut child = bin()
            .args(["user", "add", name, "--role", role, "--users", users])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(add("ana", "analyst", "a long password").status.success());
    assert!(add("will", "writer", "another long one").status.success());
    let text = std::fs::read_to_string(users).unwrap();
    assert!(text.contains("$argon2id$"), "{text}");
    assert!(!text.contains("a long password"), "{text}");
    let list = ok(bin().args(["user", "list", "--users", users]));
    assert_eq!(list.trim(), "ana\tanalyst\nwill\twriter");
    let short = add("bob", "viewer", "short");
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 8"));
    let boss = add("bob", "boss", "long enough here");
    assert!(!boss.status.success());
    ok(bin().args(["user", "rm", "ana", "--users", users]));
    let list = ok(bin().args(["user", "list", "--users", users]));
    assert_eq!(list.trim(), "will\twriter");
}
