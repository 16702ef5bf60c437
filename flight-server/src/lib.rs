//! tidepool's Arrow Flight SQL service.
//!
//! The service itself (handshake, metadata, queries, prepared statements, ingest, roles,
//! TLS and limits) is not built yet; this crate holds its place in the dependency chain
//! `udfs ← engine ← flight-server ← binary`, and will serve sessions made by
//! [`tidepool_engine::new_session`].

pub use tidepool_engine as engine;
