//! tidepool's Arrow Flight SQL server (`tidepool serve`).
//!
//! - [`auth`]: handshake, bearer tokens, and the layer that authenticates every RPC;
//! - [`users`]: the users file (argon2id password hashes, roles);
//! - [`policy`]: what each role may see and run, checked on every plan;
//! - [`query`]: SQL to checked plans, and plans to result streams under the limits;
//! - [`results`]: the wire form of results (no view types, the announced schema);
//! - [`metadata`]: GetSqlInfo and GetXdbcTypeInfo answers;
//! - [`service`]: the Flight SQL service itself.

pub mod auth;
pub mod metadata;
pub mod policy;
pub mod query;
pub mod results;
pub mod service;
pub mod users;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use arrow_flight::flight_service_server::FlightServiceServer;
use tidepool_engine::{SessionOptions, Warehouse};
use tonic::transport::{Identity as TlsIdentity, Server, ServerTlsConfig};

pub use query::Limits;
pub use users::{Role, Users};

/// Largest message a client may send (bulk ingest batches) or receive.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Everything `tidepool serve` needs.
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub warehouse: Warehouse,
    pub session: SessionOptions,
    /// None: one admin whose password comes from `admin_password`, loopback only.
    pub users: Option<Users>,
    pub admin_password: Option<String>,
    /// PEM certificate chain and key; None serves plain text (which must be asked for).
    pub tls: Option<(String, String)>,
    pub limits: Limits,
    pub token_ttl: Duration,
    /// Refuse INSERT and bulk ingest whatever the role (the sample warehouse).
    pub read_only: bool,
}

/// The users to serve: the file's, or the single admin of a server run without one.
fn effective_users(config: &ServerConfig) -> Result<Users> {
    if let Some(users) = &config.users {
        if users.users.is_empty() {
            bail!("the users file has no users; add one with `tidepool user add`");
        }
        return Ok(users.clone());
    }
    if !config.listen.ip().is_loopback() {
        bail!(
            "without --users FILE the server accepts a single admin and listens on loopback \
             only; {} is not a loopback address",
            config.listen
        );
    }
    let password = match &config.admin_password {
        Some(p) => p.clone(),
        None => {
            let p = auth::random_id();
            eprintln!(
                "no users file: log in as user 'admin' with password '{p}' (this is printed \
                 once; set TIDEPOOL_ADMIN_PASSWORD to choose it)"
            );
            p
        }
    };
    let mut users = Users::default();
    users.set("admin", Role::Admin, &password)?;
    Ok(users)
}

/// Serve until `shutdown` resolves. Prints `listening on ADDR` (the bound address, so
/// that port 0 can be used) once the socket is open.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let users = effective_users(&config)?;
    let authenticator = auth::Authenticator::new(users, config.token_ttl);
    let service = service::TidepoolFlightSql::new(
        config.warehouse.clone(),
        config.session.clone(),
        authenticator.clone(),
        config.limits.clone(),
        config.read_only,
    )
    .await?;
    let flight = FlightServiceServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let bound = listener.local_addr()?;
    let mut builder = Server::builder();
    let scheme = if let Some((cert, key)) = &config.tls {
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(TlsIdentity::from_pem(cert, key)))
            .context("the TLS certificate or key is not usable")?;
        "grpc+tls"
    } else {
        "grpc"
    };
    println!("listening on {bound} ({scheme}://{bound})");
    tracing::info!(%bound, warehouse = %config.warehouse.root.url, "serving Flight SQL");
    // Small responses must not wait for Nagle's algorithm and the client's delayed ACK
    // (tens of milliseconds per call); tonic's own nodelay setting does not reach
    // connections from a listener we bound ourselves.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            conn.inspect(|c| {
                let _ = c.set_nodelay(true);
            })
        },
    );
    builder
        .layer(auth::AuthLayer {
            auth: authenticator,
        })
        .add_service(flight)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("the server stopped")?;
    Ok(())
}
