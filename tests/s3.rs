//! The warehouse on a real S3-compatible server (moto, started here on 127.0.0.1):
//! generate, import, query, and an interrupted write that leaves nothing visible.
//!
//! `scripts/test` installs moto and sets TIDEPOOL_MOTO_SERVER; with `cargo test` alone,
//! `moto_server` must be on PATH (`pip install 'moto[server]'`).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures::TryStreamExt;
use object_store::ObjectStore;

struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto() -> Moto {
    let program = std::env::var("TIDEPOOL_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start '{program}' ({e}): run scripts/test, or pip install 'moto[server]'"
            )
        });
    let moto = Moto { child, port };
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto did not start listening on port {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    moto
}

/// One plain HTTP request to moto (which does not check signatures).
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "{response}"
    );
    response
}

fn with_s3(cmd: &mut Command, port: u16) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
}

fn s3_count(port: u16, wh: &str, sql: &str) -> u64 {
    let out =
        ok(with_s3(&mut bin(), port).args(["sql", "--warehouse", wh, "--format", "csv", sql]));
    out.lines().nth(1).unwrap().parse().unwrap()
}

async fn keys(port: u16, bucket: &str, prefix: &str) -> Vec<String> {
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .unwrap();
    let prefix = object_store::path::Path::from(prefix);
    let listed: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
    listed.into_iter().map(|m| m.location.to_string()).collect()
}

#[tokio::test]
async fn warehouse_on_s3_generate_import_query_and_interrupted_write() {
    let moto = start_moto();
    let port = moto.port;
    http(port, "PUT", "/lake", b"");

    // Generate straight into S3 and query it.
    let wh = "s3://lake/warehouse";
    let out = with_s3(&mut bin(), port)
        .args([
            "gen", "--events", "5000", "--users", "300", "--days", "7", "--out", wh,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = ok(with_s3(&mut bin(), port).args([
        "sql",
        "--warehouse",
        wh,
        "--format",
        "csv",
        "SELECT event_name, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC",
    ]));
    let total: u64 = rows
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 5000);
    assert!(keys(port, "lake", "warehouse/events/_log/").await.len() == 1);

    // Import a CSV that itself lives in the bucket.
    let csv = "user,what,at\nx1,signup,2026-10-02T08:00:00Z\nx1,purchase,2026-10-02T08:05:00Z\n";
    http(port, "PUT", "/lake/incoming/batch1.csv", csv.as_bytes());
    let map = [
        "--map",
        "user_id=user",
        "--map",
        "event_name=what",
        "--map",
        "event_time=at",
    ];
    ok(with_s3(&mut bin(), port)
        .args(["import", "--warehouse", wh])
        .args(map)
        .arg("s3://lake/incoming/batch1.csv"));
    assert_eq!(
        s3_count(port, wh, "SELECT count(*) FROM events WHERE user_id = 'x1'"),
        2
    );
    assert_eq!(s3_count(port, wh, "SELECT count(*) FROM events"), 5002);

    // A write that dies after storing its data files and before committing: the files
    // are in the bucket, and no reader sees them.
    let files_before = keys(port, "lake", "warehouse/events/data/").await.len();
    let csv2 = "user,what,at\ny1,signup,2026-10-03T08:00:00Z\ny2,signup,2026-10-04T08:00:00Z\n";
    http(port, "PUT", "/lake/incoming/batch2.csv", csv2.as_bytes());
    let crashed = with_s3(&mut bin(), port)
        .env("TIDEPOOL_FAILPOINT", "before_commit")
        .args(["import", "--warehouse", wh])
        .args(map)
        .arg("s3://lake/incoming/batch2.csv")
        .output()
        .unwrap();
    assert!(
        !crashed.status.success(),
        "the failpoint should abort the import"
    );
    let files_after = keys(port, "lake", "warehouse/events/data/").await.len();
    assert_eq!(
        files_after,
        files_before + 2,
        "the crashed import stored its two day files"
    );
    assert_eq!(s3_count(port, wh, "SELECT count(*) FROM events"), 5002);
    assert_eq!(
        s3_count(
            port,
            wh,
            "SELECT count(*) FROM events WHERE user_id IN ('y1', 'y2')"
        ),
        0
    );

    // Running it again (no crash) commits it once.
    ok(with_s3(&mut bin(), port)
        .args(["import", "--warehouse", wh])
        .args(map)
        .arg("s3://lake/incoming/batch2.csv"));
    assert_eq!(s3_count(port, wh, "SELECT count(*) FROM events"), 5004);

    // The same store reached through flags instead of AWS_* variables.
    let endpoint = format!("http://127.0.0.1:{port}");
    let out = ok(bin()
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args([
            "sql",
            "--warehouse",
            wh,
            "--format",
            "csv",
            "--s3-endpoint",
            &endpoint,
        ])
        .args([
            "--s3-region",
            "us-east-1",
            "--s3-access-key-id",
            "k",
            "--s3-secret-access-key",
            "s",
        ])
        .arg("SELECT count(*) FROM events"));
    assert_eq!(out.lines().nth(1), Some("5004"));

    // Parquet on S3 that tidepool did not write, as a read-only table.
    let pq = tempfile::NamedTempFile::new().unwrap();
    ok(bin()
        .args(["sql", "--format", "parquet", "-o"])
        .arg(pq.path())
        .arg("SELECT 7 AS n"));
    http(
        port,
        "PUT",
        "/lake/other/n.parquet",
        &std::fs::read(pq.path()).unwrap(),
    );
    let out = ok(with_s3(&mut bin(), port).args([
        "sql",
        "--warehouse",
        wh,
        "--format",
        "csv",
        "--table",
        "other=s3://lake/other",
        "SELECT sum(n) FROM other",
    ]));
    assert_eq!(out.lines().nth(1), Some("7"));
}
