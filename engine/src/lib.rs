//! tidepool's engine: the warehouse on object storage, ingestion, sample data, and the
//! session factory that every entry point (CLI, Flight SQL server, tests) queries through.

pub mod error;
pub mod schema;
pub mod storage;
pub mod table;

pub use error::{EngineError, Result};
pub mod import;
pub mod mapping;
pub mod session;
pub mod warehouse;

pub use session::{new_session, SessionOptions};
pub use warehouse::Warehouse;
pub mod generate;
