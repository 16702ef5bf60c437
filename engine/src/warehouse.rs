//! A warehouse: one object-store location holding the events table tidepool writes and
//! a catalog of read-only event tables that other tools wrote.
//!
//! ```text
//! <warehouse>/events/_log/<version>.json          manifest snapshots (the commit log)
//! <warehouse>/events/data/date=YYYY-MM-DD/*.parquet
//! <warehouse>/_catalog/external/<name>.json       registered read-only event tables
//! ```

use futures::TryStreamExt;
use object_store::ObjectStoreExt as _;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::import::TimeUnitSpec;
use crate::mapping::ColumnMapping;
use crate::storage::{Location, S3Options};
use crate::table::EventTable;

pub const EVENTS_TABLE: &str = "events";

#[derive(Debug, Clone)]
pub struct Warehouse {
    pub root: Location,
    pub s3: S3Options,
}

/// A Parquet file or prefix written by another tool, read as an events table through a
/// column mapping. tidepool never writes to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalTable {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub mapping: ColumnMapping,
    /// How an integer event time column is read.
    #[serde(default)]
    pub time_unit: TimeUnitSpec,
}

impl Warehouse {
    pub fn open(url: &str, s3: &S3Options) -> Result<Self> {
        Ok(Warehouse {
            root: Location::parse(url, s3)?,
            s3: s3.clone(),
        })
    }

    pub fn events(&self) -> EventTable {
        EventTable::new(self.root.child(EVENTS_TABLE))
    }

    fn external_dir(&self) -> Location {
        self.root.child("_catalog/external")
    }

    pub async fn external_tables(&self) -> Result<Vec<ExternalTable>> {
        let dir = self.external_dir();
        let entries: Vec<_> = dir.store.list(Some(&dir.prefix)).try_collect().await?;
        let mut tables = vec![];
        for meta in entries {
            if meta.location.extension() != Some("json") {
                continue;
            }
            let bytes = dir.store.get(&meta.location).await?.bytes().await?;
            let table: ExternalTable = serde_json::from_slice(&bytes).map_err(|e| {
                EngineError::invalid(format!("unreadable catalog entry {}: {e}", meta.location))
            })?;
            tables.push(table);
        }
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tables)
    }

    pub async fn add_external_table(&self, table: &ExternalTable) -> Result<()> {
        check_table_name(&table.name)?;
        if table.name == EVENTS_TABLE {
            return Err(EngineError::invalid(
                "'events' is the table tidepool writes; pick another name",
            ));
        }
        let body = serde_json::to_vec_pretty(table).expect("serialisable");
        let dir = self.external_dir();
        dir.store
            .put(&dir.path(&format!("{}.json", table.name)), body.into())
            .await?;
        Ok(())
    }

    pub async fn remove_external_table(&self, name: &str) -> Result<bool> {
        check_table_name(name)?;
        let dir = self.external_dir();
        let path = dir.path(&format!("{name}.json"));
        match dir.store.head(&path).await {
            Ok(_) => {
                dir.store.delete(&path).await?;
                Ok(true)
            }
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Table names are SQL identifiers: letters, digits and underscores, not starting with
/// a digit.
pub fn check_table_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(EngineError::invalid(format!(
            "'{name}' is not a valid table name (letters, digits and _, not starting with a digit)"
        )))
    }
}
