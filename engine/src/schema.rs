//! The events table's columns. Core column names are the contract (DESIGN.md); a source
//! may add further typed columns, which the table keeps beside them.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

pub const EVENT_TIME: &str = "event_time";
pub const EVENT_NAME: &str = "event_name";
pub const ANONYMOUS_ID: &str = "anonymous_id";
pub const USER_ID: &str = "user_id";
pub const SESSION_ID: &str = "session_id";
pub const CHANNEL: &str = "channel";
pub const CAMPAIGN: &str = "campaign";
pub const PLATFORM: &str = "platform";
pub const REVENUE: &str = "revenue";
pub const PROPERTIES: &str = "properties";

/// The time zone of every stored timestamp.
pub const UTC: &str = "UTC";

pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

/// The core columns in table order: (name, type, nullable).
pub fn core_columns() -> Vec<(&'static str, ColumnType, bool)> {
    vec![
        (EVENT_TIME, ColumnType::Timestamp, false),
        (EVENT_NAME, ColumnType::Utf8, false),
        (ANONYMOUS_ID, ColumnType::Utf8, false),
        (USER_ID, ColumnType::Utf8, true),
        (SESSION_ID, ColumnType::Utf8, true),
        (CHANNEL, ColumnType::Utf8, true),
        (CAMPAIGN, ColumnType::Utf8, true),
        (PLATFORM, ColumnType::Utf8, true),
        (REVENUE, ColumnType::Float64, true),
        (PROPERTIES, ColumnType::Utf8, true),
    ]
}

pub fn is_core_column(name: &str) -> bool {
    core_columns().iter().any(|(n, _, _)| *n == name)
}

/// The types a stored column may have. Sources with other types are converted to the
/// nearest of these on import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    Utf8,
    Int64,
    Float64,
    Boolean,
    /// Microseconds since the epoch, UTC.
    Timestamp,
}

impl ColumnType {
    pub fn data_type(self) -> DataType {
        match self {
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Timestamp => timestamp_type(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Utf8 => "string",
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Boolean => "boolean",
            ColumnType::Timestamp => "timestamp",
        }
    }
}

/// A column a source added beyond the core ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
}

/// The events table schema: the core columns, then the extra ones in the order they
/// first arrived. Extra columns are nullable because older files lack them.
pub fn events_schema(extra: &[ExtraColumn]) -> SchemaRef {
    let mut fields: Vec<Field> = core_columns()
        .into_iter()
        .map(|(name, ty, nullable)| Field::new(name, ty.data_type(), nullable))
        .collect();
    fields.extend(
        extra
            .iter()
            .map(|c| Field::new(&c.name, c.column_type.data_type(), true)),
    );
    Arc::new(Schema::new(fields))
}
