//! Helpers for end-to-end tests that run the real `tidepool` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidepool"));
    cmd.env_remove("TIDEPOOL_WAREHOUSE")
        .env_remove("TIDEPOOL_FAILPOINT");
    cmd
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn shared_data(rel: &str) -> PathBuf {
    repo().join("../shared/data-src").join(rel)
}

/// Run and require success; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("tidepool runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run and require failure; returns stderr.
pub fn fails(cmd: &mut Command) -> String {
    let out: Output = cmd.output().expect("tidepool runs");
    assert!(
        !out.status.success(),
        "{cmd:?} should have failed\nstdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// `SELECT ...` on a warehouse as CSV rows without the header.
pub fn query(warehouse: &str, sql: &str, extra: &[&str]) -> Vec<Vec<String>> {
    let text = ok(bin()
        .args(["sql", "--warehouse", warehouse, "--format", "csv"])
        .args(extra)
        .arg(sql));
    text.lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

pub fn count(warehouse: &str, sql: &str) -> u64 {
    query(warehouse, sql, &[])[0][0].parse().unwrap()
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
