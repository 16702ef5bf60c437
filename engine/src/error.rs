//! Errors a user can cause, each with a message that names the problem.

use datafusion::error::DataFusionError;

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A warehouse or table URL that cannot be used.
    #[error("invalid location '{url}': {reason}")]
    InvalidLocation { url: String, reason: String },

    /// An input file that cannot be imported; `location` names file, line and column.
    #[error("{location}: {message}")]
    BadInput { location: String, message: String },

    /// Options that contradict each other or name things that do not exist.
    #[error("{0}")]
    InvalidArgument(String),

    /// The table's manifest is unreadable (written by a newer version, or damaged).
    #[error("table at '{table}' has an unreadable manifest '{path}': {reason}")]
    BadManifest {
        table: String,
        path: String,
        reason: String,
    },

    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),

    #[error(transparent)]
    DataFusion(#[from] DataFusionError),

    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),

    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl EngineError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        EngineError::InvalidArgument(msg.into())
    }
}
