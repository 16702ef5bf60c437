//! Tables tidepool writes: Parquet data files plus a manifest log (see [`manifest`]).

pub mod manifest;
pub mod provider;
pub mod writer;

use arrow::array::RecordBatch;
use futures::TryStreamExt;
use object_store::ObjectStoreExt as _;
use object_store::{PutMode, PutOptions};

use crate::error::{EngineError, Result};
use crate::schema::{events_schema, ExtraColumn};
use crate::storage::Location;
pub use manifest::{BatchRecord, DataFile, Manifest};
pub use writer::WriteOptions;

/// Set `TIDEPOOL_FAILPOINT=before_commit` to make a write abort the process after its
/// data files are stored and before the manifest names them: the crash the atomic
/// commit exists for, made reproducible for the end-to-end tests.
pub const FAILPOINT_ENV: &str = "TIDEPOOL_FAILPOINT";

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed {
        version: u64,
    },
    /// The batch id was already in the table; nothing changed.
    AlreadyCommitted,
}

/// An events table at a location (a folder or object-store prefix).
#[derive(Debug, Clone)]
pub struct EventTable {
    pub location: Location,
}

impl EventTable {
    pub fn new(location: Location) -> Self {
        EventTable { location }
    }

    /// The newest committed manifest; an empty one if the table was never written.
    pub async fn manifest(&self) -> Result<Manifest> {
        let log = self.location.child("_log");
        let entries: Vec<_> = log.store.list(Some(&log.prefix)).try_collect().await?;
        let latest = entries
            .iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                manifest::parse_log_name(name).map(|v| (v, m.location.clone()))
            })
            .max_by_key(|(v, _)| *v);
        let Some((version, path)) = latest else {
            return Ok(Manifest::default());
        };
        let bytes = log.store.get(&path).await?.bytes().await?;
        let bad = |reason: String| EngineError::BadManifest {
            table: self.location.url.clone(),
            path: path.to_string(),
            reason,
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if m.format != manifest::FORMAT || m.format_version > manifest::FORMAT_VERSION {
            return Err(bad(format!(
                "format {} v{} is not one this build reads ({} v{})",
                m.format,
                m.format_version,
                manifest::FORMAT,
                manifest::FORMAT_VERSION
            )));
        }
        if m.version != version {
            return Err(bad(format!(
                "names version {} but is stored as {version}",
                m.version
            )));
        }
        Ok(m)
    }

    /// The schema of the table as of `manifest`.
    pub fn schema(manifest: &Manifest) -> arrow::datatypes::SchemaRef {
        events_schema(&manifest.extra_columns)
    }

    /// Write `batch` and commit it as one batch: all of it becomes visible at once, or
    /// none of it. A batch id already in the table commits nothing.
    pub async fn append(
        &self,
        batch: RecordBatch,
        record: BatchRecord,
        extra_columns: &[ExtraColumn],
        options: &WriteOptions,
    ) -> Result<CommitOutcome> {
        if self.manifest().await?.has_batch(&record.id) {
            return Ok(CommitOutcome::AlreadyCommitted);
        }
        let files = writer::write_data_files(&self.location, batch, &record.id, options).await?;
        if std::env::var(FAILPOINT_ENV).as_deref() == Ok("before_commit") {
            eprintln!("{FAILPOINT_ENV}=before_commit: aborting before the manifest commit");
            std::process::abort();
        }
        let outcome = self.commit(files.clone(), record, extra_columns).await;
        if !matches!(outcome, Ok(CommitOutcome::Committed { .. })) {
            // Nobody can see these files; remove them so they do not linger.
            for f in &files {
                let _ = self
                    .location
                    .store
                    .delete(&self.location.path(&f.path))
                    .await;
            }
        }
        outcome
    }

    /// Add `files` as batch `record` in a new manifest version.
    pub async fn commit(
        &self,
        files: Vec<DataFile>,
        record: BatchRecord,
        extra_columns: &[ExtraColumn],
    ) -> Result<CommitOutcome> {
        const ATTEMPTS: usize = 32;
        for _ in 0..ATTEMPTS {
            let current = self.manifest().await?;
            if current.has_batch(&record.id) {
                return Ok(CommitOutcome::AlreadyCommitted);
            }
            let mut next = current.clone();
            next.version += 1;
            next.extra_columns = merge_extra_columns(&current.extra_columns, extra_columns)?;
            next.files.extend(files.iter().cloned());
            next.batches.push(record.clone());
            let body = serde_json::to_vec_pretty(&next).expect("manifest serialises");
            let path = self
                .location
                .path(&format!("_log/{}", manifest::log_name(next.version)));
            let put = self
                .location
                .store
                .put_opts(&path, body.into(), PutOptions::from(PutMode::Create))
                .await;
            match put {
                Ok(_) => {
                    return Ok(CommitOutcome::Committed {
                        version: next.version,
                    })
                }
                // Another writer took this version: read theirs and try again on top.
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => continue,
                Err(object_store::Error::NotImplemented { .. }) => {
                    return Err(EngineError::invalid(format!(
                        "the store behind '{}' cannot create objects conditionally, which \
                         atomic commits need (for S3-compatible stores, one that supports \
                         If-None-Match)",
                        self.location.url
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::invalid(format!(
            "gave up committing to '{}' after {ATTEMPTS} concurrent commits won the race",
            self.location.url
        )))
    }
}

/// The table's extra columns after adding `incoming`: new names are appended, a name
/// that already exists must keep its type.
pub fn merge_extra_columns(
    current: &[ExtraColumn],
    incoming: &[ExtraColumn],
) -> Result<Vec<ExtraColumn>> {
    let mut merged = current.to_vec();
    for col in incoming {
        match merged.iter().find(|c| c.name == col.name) {
            Some(existing) if existing.column_type != col.column_type => {
                return Err(EngineError::invalid(format!(
                    "column '{}' is {} in the table but {} in the new data",
                    col.name,
                    existing.column_type.name(),
                    col.column_type.name()
                )))
            }
            Some(_) => {}
            None => merged.push(col.clone()),
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests;
