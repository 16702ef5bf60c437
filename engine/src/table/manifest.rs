//! The table manifest: the one record of which Parquet files make up a table.
//!
//! Every commit writes a complete snapshot `_log/<version>.json` with a create-only put
//! (`If-None-Match: *` on S3, an exclusive create on a filesystem). Data files are written
//! first under fresh names; until a manifest names them no reader sees them, so a crash at
//! any point leaves the table as it was. Two writers that race for the same version: one
//! wins, the other re-reads and retries.

use serde::{Deserialize, Serialize};

use crate::schema::ExtraColumn;

pub const FORMAT: &str = "tidepool-table";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// Increases by one with every commit; 0 is the empty table that was never written.
    pub version: u64,
    /// Columns beyond the core ones, in the order they arrived.
    #[serde(default)]
    pub extra_columns: Vec<ExtraColumn>,
    pub files: Vec<DataFile>,
    /// Every batch ever committed, so that the same input is not imported twice.
    pub batches: Vec<BatchRecord>,
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            version: 0,
            extra_columns: vec![],
            files: vec![],
            batches: vec![],
        }
    }
}

impl Manifest {
    pub fn total_rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }

    pub fn has_batch(&self, id: &str) -> bool {
        self.batches.iter().any(|b| b.id == id)
    }
}

/// One Parquet file of the table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataFile {
    /// Relative to the table's root, e.g. `data/date=2026-01-01/part-<uuid>.parquet`.
    pub path: String,
    pub size: u64,
    pub rows: u64,
    /// The UTC date every row of the file falls on (`YYYY-MM-DD`).
    pub date: String,
    /// Smallest and largest `event_time`, microseconds since the epoch: lets a scan skip
    /// the file without opening it.
    pub min_time_us: i64,
    pub max_time_us: i64,
    pub batch_id: String,
}

/// One committed batch (an imported file, a generated dataset, an insert).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchRecord {
    /// Content hash of the input and the options that shaped it.
    pub id: String,
    /// Where it came from, for people reading the manifest.
    pub source: String,
    pub rows: u64,
    pub committed_at: String,
}

/// The log entry name of a version; zero-padded so that names sort as numbers.
pub fn log_name(version: u64) -> String {
    format!("{version:020}.json")
}

/// The version of a log entry name, or None for anything else in the folder.
pub fn parse_log_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_names_sort_as_versions_and_round_trip() {
        let names: Vec<String> = [9u64, 10, 100].iter().map(|v| log_name(*v)).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(parse_log_name(&log_name(42)), Some(42));
        assert_eq!(parse_log_name("00000000000000000042.json.tmp"), None);
        assert_eq!(parse_log_name("42.json"), None);
    }
}
