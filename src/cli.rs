//! Command-line interface.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::DFParser;
use tidepool_engine::generate::{generate, GenOptions};
use tidepool_engine::import::{import_file, CsvOptions, ImportOptions, InputFormat, TimeUnitSpec};
use tidepool_engine::mapping::ColumnMapping;
use tidepool_engine::storage::S3Options;
use tidepool_engine::warehouse::ExternalTable;
use tidepool_engine::{new_session, SessionOptions, Warehouse};

use crate::output::{Format, ResultWriter};
use crate::progress::Bar;
use futures::StreamExt;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(
    name = "tidepool",
    version,
    about = "A columnar analytical query engine for customer-data and product analytics"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Warehouse URL: a directory, file:///path or s3://bucket/prefix. Default: the
    /// sample warehouse in data/warehouse.
    #[arg(long, global = true, env = "TIDEPOOL_WAREHOUSE")]
    pub warehouse: Option<String>,
    /// S3 endpoint for S3-compatible stores (default: AWS_ENDPOINT_URL or AWS itself).
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL", hide_env_values = true)]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long, global = true)]
    pub s3_region: Option<String>,
    /// S3 access key id (default: AWS_ACCESS_KEY_ID).
    #[arg(long, global = true)]
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key (default: AWS_SECRET_ACCESS_KEY).
    #[arg(long, global = true)]
    pub s3_secret_access_key: Option<String>,
    /// Allow plain HTTP to the S3 endpoint (implied by an http:// endpoint).
    #[arg(long, global = true)]
    pub s3_allow_http: bool,
}

impl Global {
    fn s3(&self) -> S3Options {
        S3Options {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.clone(),
            session_token: None,
            allow_http: self.s3_allow_http,
        }
    }

    /// The warehouse to read: the one given, else the sample.
    fn warehouse_or_sample(&self) -> Result<Warehouse> {
        let url = match &self.warehouse {
            Some(url) => url.clone(),
            None => sample_warehouse()?.to_string_lossy().into_owned(),
        };
        Ok(Warehouse::open(&url, &self.s3())?)
    }

    /// The warehouse to write: it must be named, so that nobody writes into the sample
    /// by accident.
    fn warehouse_to_write(&self, command: &str) -> Result<Warehouse> {
        let Some(url) = &self.warehouse else {
            bail!("{command} writes to a warehouse: name it with --warehouse URL (or TIDEPOOL_WAREHOUSE)");
        };
        Ok(Warehouse::open(url, &self.s3())?)
    }
}

/// data/warehouse below the current directory, else beside the source this was built from.
fn sample_warehouse() -> Result<PathBuf> {
    let here = PathBuf::from("data/warehouse");
    if here.is_dir() {
        return Ok(here);
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/warehouse");
    if built.is_dir() {
        return Ok(built);
    }
    bail!("no --warehouse given and the sample warehouse (data/warehouse) is not here")
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run SQL: one query, a file of statements, or an interactive prompt.
    Sql(SqlArgs),
    /// Import CSV, NDJSON or Parquet files into the events table.
    Import(ImportArgs),
    /// Generate a synthetic events table.
    Gen(GenArgs),
    /// Read-only event tables written by other tools.
    #[command(subcommand)]
    Table(TableCommand),
    /// Show the events table's version, files, rows and batches.
    Info,
    /// Serve the warehouse over Arrow Flight SQL (BI tools, ADBC, JDBC, ODBC).
    Serve(ServeArgs),
    /// Manage the users file of `tidepool serve`.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: std::net::SocketAddr,
    /// Users, password hashes and roles (see `tidepool user add`). Without it the server
    /// listens on loopback only and accepts one admin, whose password is
    /// TIDEPOOL_ADMIN_PASSWORD or generated and printed at start.
    #[arg(long, env = "TIDEPOOL_USERS")]
    pub users: Option<PathBuf>,
    /// TLS certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve without TLS on a non-loopback address.
    #[arg(long, conflicts_with = "tls_cert")]
    pub plaintext: bool,
    /// Memory one query may use before it spills or fails, e.g. 512MiB, 4GiB.
    #[arg(long, default_value = "4GiB", value_parser = parse_size)]
    pub query_memory: usize,
    /// Seconds a query may run.
    #[arg(long, default_value_t = 600)]
    pub query_timeout: u64,
    /// Queries that may run at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 16)]
    pub max_concurrent_queries: usize,
    /// Seconds a login token stays valid.
    #[arg(long, default_value_t = 12 * 3600)]
    pub token_ttl: u64,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user (or replace their password and role); the password is read from
    /// standard input.
    Add {
        name: String,
        #[arg(long, value_parser = ["viewer", "analyst", "writer", "admin"])]
        role: String,
        #[arg(long, env = "TIDEPOOL_USERS")]
        users: PathBuf,
    },
    /// List users and roles.
    List {
        #[arg(long, env = "TIDEPOOL_USERS")]
        users: PathBuf,
    },
    /// Remove a user.
    Rm {
        name: String,
        #[arg(long, env = "TIDEPOOL_USERS")]
        users: PathBuf,
    },
}

/// A byte size: a number with an optional KiB/MiB/GiB/KB/MB/GB suffix.
fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 512MiB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("'{s}': unknown unit (use KiB, MiB or GiB)")),
    };
    Ok((n * mult) as usize)
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// SQL to run (several statements separated by ';'). Without it and without -f, an
    /// interactive prompt on a terminal, else SQL from standard input.
    pub query: Option<String>,
    /// Run the statements in this file.
    #[arg(short = 'f', long = "file", conflicts_with = "query")]
    pub file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Write results here instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Register a Parquet file or prefix (local or object store) as a read-only table:
    /// NAME=URL. Repeatable.
    #[arg(long = "table", value_name = "NAME=URL")]
    pub tables: Vec<String>,
    /// Print each statement's time (planning, running and collecting the result) and row
    /// count to standard error.
    #[arg(long)]
    pub timing: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Files to import (local paths or object-store URLs); each is its own batch.
    #[arg(required = true)]
    pub sources: Vec<String>,
    /// Column mapping TARGET=SOURCE, e.g. --map event_name=behavior. Repeatable.
    #[arg(long = "map", value_name = "TARGET=SOURCE")]
    pub map: Vec<String>,
    /// A constant for a column the source lacks, e.g. --set platform=web. Repeatable.
    #[arg(long = "set", value_name = "COLUMN=VALUE")]
    pub set: Vec<String>,
    /// csv, ndjson or parquet (default: from the file extension).
    #[arg(long)]
    pub format: Option<String>,
    /// The CSV file has no header row (name the columns with --columns).
    #[arg(long)]
    pub no_header: bool,
    /// Column names for CSV, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub columns: Option<Vec<String>>,
    /// CSV field delimiter (default ',' or tab for .tsv).
    #[arg(long)]
    pub delimiter: Option<char>,
    /// Unit of integer timestamps: auto, s, ms, us or ns.
    #[arg(long, default_value = "auto")]
    pub time_unit: String,
    /// Leave out source columns no events column takes (default: keep them as columns).
    #[arg(long)]
    pub drop_unmapped: bool,
    /// Write bad rows to this NDJSON file and import the rest (default: a bad row fails
    /// the import and nothing is committed).
    #[arg(long)]
    pub rejects: Option<String>,
    /// Use this batch id instead of the content hash.
    #[arg(long)]
    pub batch_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct GenArgs {
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    #[arg(long, default_value_t = 50_000)]
    pub users: u64,
    #[arg(long, default_value_t = 30)]
    pub days: u32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// First day, YYYY-MM-DD (UTC).
    #[arg(long, default_value = "2026-10-01")]
    pub start: String,
    /// Warehouse to write (instead of --warehouse).
    #[arg(long)]
    pub out: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TableCommand {
    /// Register a Parquet file or prefix as a read-only event table.
    Add {
        name: String,
        url: String,
        /// Column mapping TARGET=SOURCE. Repeatable.
        #[arg(long = "map", value_name = "TARGET=SOURCE")]
        map: Vec<String>,
        /// A constant for a column the source lacks. Repeatable.
        #[arg(long = "set", value_name = "COLUMN=VALUE")]
        set: Vec<String>,
        /// Unit of an integer event time: auto, s, ms, us or ns.
        #[arg(long, default_value = "auto")]
        time_unit: String,
    },
    /// List registered tables.
    List,
    /// Remove a registration (the data is not touched).
    Rm { name: String },
}

pub async fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match &cli.command {
        Command::Sql(args) => sql(g, args).await,
        Command::Import(args) => import(g, args).await,
        Command::Gen(args) => gen(g, args).await,
        Command::Table(cmd) => table(g, cmd).await,
        Command::Info => info(g).await,
        Command::Serve(args) => serve(g, args).await,
        Command::User(cmd) => user(cmd),
    }
}

async fn serve(g: &Global, args: &ServeArgs) -> Result<()> {
    use tidepool_flight::{Limits, ServerConfig, Users};
    let users = match &args.users {
        Some(path) => Some(Users::load(path)?),
        None => None,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some((
            std::fs::read_to_string(cert)
                .with_context(|| format!("cannot read --tls-cert {}", cert.display()))?,
            std::fs::read_to_string(key)
                .with_context(|| format!("cannot read --tls-key {}", key.display()))?,
        )),
        _ => None,
    };
    if tls.is_none() && !args.listen.ip().is_loopback() && !args.plaintext {
        bail!(
            "{} is reachable from other machines: give --tls-cert and --tls-key, or \
             --plaintext to serve without TLS",
            args.listen
        );
    }
    // The sample is served read-only, as `tidepool sql` treats it; a named warehouse
    // takes writes from writers.
    let read_only = g.warehouse.is_none();
    let config = ServerConfig {
        listen: args.listen,
        warehouse: g.warehouse_or_sample()?,
        session: SessionOptions {
            s3: g.s3(),
            ..Default::default()
        },
        users,
        admin_password: std::env::var("TIDEPOOL_ADMIN_PASSWORD").ok(),
        tls,
        limits: Limits {
            query_memory: args.query_memory,
            query_timeout: std::time::Duration::from_secs(args.query_timeout),
            max_concurrent_queries: args.max_concurrent_queries,
        },
        token_ttl: std::time::Duration::from_secs(args.token_ttl),
        read_only,
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("shutting down");
    };
    tidepool_flight::serve(config, shutdown).await
}

fn user(cmd: &UserCommand) -> Result<()> {
    use tidepool_flight::{Role, Users};
    match cmd {
        UserCommand::Add { name, role, users } => {
            let role: Role = role.parse()?;
            let mut file = Users::load_or_new(users)?;
            let password = read_password()?;
            file.set(name, role, &password)?;
            file.save(users)?;
            eprintln!("user '{name}' ({role}) saved in {}", users.display());
        }
        UserCommand::List { users } => {
            for (name, entry) in &Users::load(users)?.users {
                println!("{name}\t{}", entry.role);
            }
        }
        UserCommand::Rm { name, users } => {
            let mut file = Users::load(users)?;
            if file.users.remove(name).is_none() {
                bail!("no user '{name}' in {}", users.display());
            }
            file.save(users)?;
        }
    }
    Ok(())
}

/// The password from standard input: asked twice without echo on a terminal, else the
/// first line.
fn read_password() -> Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("password: ")?;
        let again = rpassword::prompt_password("again: ")?;
        if first != again {
            bail!("the passwords differ");
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        bail!("no password on standard input");
    }
    Ok(password)
}

async fn sql(g: &Global, args: &SqlArgs) -> Result<()> {
    let mut tables = vec![];
    for spec in &args.tables {
        let (name, url) = spec
            .split_once('=')
            .with_context(|| format!("--table '{spec}': expected NAME=URL"))?;
        tables.push((name.to_string(), url.to_string()));
    }
    let options = SessionOptions {
        warehouse: Some(g.warehouse_or_sample()?),
        tables,
        s3: g.s3(),
        target_partitions: None,
        // INSERT writes only to a warehouse the user named, never to the sample.
        writable: g.warehouse.is_some(),
    };
    let ctx = new_session(&options).await?;
    let mut out: Box<crate::output::Out> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    if args.format == Format::Parquet && args.output.is_none() && std::io::stdout().is_terminal() {
        bail!(
            "--format parquet writes binary data: give --output FILE or redirect standard output"
        );
    }
    let text = match (&args.query, &args.file) {
        (Some(q), _) => q.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?
        }
        (None, None) if std::io::stdin().is_terminal() => {
            drop(out);
            return crate::repl::run(&ctx, args.format, args.timing).await;
        }
        (None, None) => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
    };
    run_statements(&ctx, &text, args.format, args.timing, out.as_mut()).await?;
    out.flush()?;
    Ok(())
}

/// Run every statement in `text`, writing each one's result.
pub async fn run_statements(
    ctx: &SessionContext,
    text: &str,
    format: Format,
    timing: bool,
    out: &mut crate::output::Out,
) -> Result<()> {
    let statements = DFParser::parse_sql(text)?;
    if statements.is_empty() {
        bail!("no SQL statement given");
    }
    for statement in statements {
        let started = std::time::Instant::now();
        let plan = ctx.state().statement_to_plan(statement).await?;
        let df = ctx.execute_logical_plan(plan).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let mut stream = df.execute_stream().await?;
        let mut writer = ResultWriter::new(format, schema, out)?;
        let mut rows = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            rows += batch.num_rows();
            writer.write(&batch)?;
        }
        writer.finish()?;
        if timing {
            eprintln!("-- {:.3} s, {rows} rows", started.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

async fn import(g: &Global, args: &ImportArgs) -> Result<()> {
    let wh = g.warehouse_to_write("import")?;
    let csv = CsvOptions {
        header: !args.no_header,
        columns: args.columns.clone(),
        delimiter: b',',
    };
    let format = args.format.as_deref().map(InputFormat::parse).transpose()?;
    let opts_for = |source: &str| -> Result<ImportOptions> {
        let mut csv = csv.clone();
        csv.delimiter = match args.delimiter {
            Some(c) if c.is_ascii() => c as u8,
            Some(c) => bail!("--delimiter '{c}' must be a single ASCII character"),
            None if source.to_ascii_lowercase().ends_with(".tsv") => b'\t',
            None => b',',
        };
        Ok(ImportOptions {
            mapping: ColumnMapping::parse(&args.map, &args.set)?,
            format,
            csv,
            time_unit: TimeUnitSpec::parse(&args.time_unit)?,
            drop_unmapped: args.drop_unmapped,
            rejects: args.rejects.clone(),
            batch_id: args.batch_id.clone(),
        })
    };
    if args.rejects.is_some() && args.sources.len() > 1 {
        bail!("--rejects takes one source at a time");
    }
    let table = wh.events();
    for source in &args.sources {
        let opts = opts_for(source)?;
        let bar = Bar::new(source.clone());
        let report = import_file(&table, source, &wh.s3, &opts, &bar).await?;
        if report.already_imported {
            eprintln!(
                "{source}: already imported (batch {}); nothing to do",
                &report.batch_id[..12.min(report.batch_id.len())]
            );
            continue;
        }
        let rejected = match (&args.rejects, report.rows_rejected) {
            (_, 0) => String::new(),
            (Some(path), n) => format!(", {n} bad rows written to {path}"),
            (None, n) => format!(", {n} bad rows"),
        };
        eprintln!(
            "{source}: imported {} rows into {} (version {}){rejected}",
            report.rows_imported,
            table.location.url,
            report.version.unwrap_or_default()
        );
    }
    Ok(())
}

async fn gen(g: &Global, args: &GenArgs) -> Result<()> {
    let wh = match &args.out {
        Some(url) => Warehouse::open(url, &g.s3())?,
        None => g.warehouse_to_write("gen")?,
    };
    let start = chrono::NaiveDate::parse_from_str(&args.start, "%Y-%m-%d")
        .with_context(|| format!("--start '{}': expected YYYY-MM-DD", args.start))?;
    let opts = GenOptions {
        events: args.events,
        users: args.users,
        days: args.days,
        seed: args.seed,
        start,
    };
    let bar = Bar::new("gen");
    let table = wh.events();
    let report = generate(&table, &opts, &bar).await?;
    if report.already_generated {
        eprintln!(
            "{}: this dataset is already there; nothing to do",
            table.location.url
        );
    } else {
        eprintln!(
            "{}: generated {} events for {} people in {} files (version {})",
            table.location.url,
            report.events,
            report.people,
            report.files,
            report.version.unwrap_or_default()
        );
    }
    Ok(())
}

async fn table(g: &Global, cmd: &TableCommand) -> Result<()> {
    match cmd {
        TableCommand::Add {
            name,
            url,
            map,
            set,
            time_unit,
        } => {
            let wh = g.warehouse_to_write("table add")?;
            let ext = ExternalTable {
                name: name.clone(),
                url: url.clone(),
                mapping: ColumnMapping::parse(map, set)?,
                time_unit: TimeUnitSpec::parse(time_unit)?,
            };
            // Check that it reads before recording it.
            let probe = SessionOptions {
                warehouse: None,
                tables: vec![],
                s3: g.s3(),
                target_partitions: None,
                writable: false,
            };
            let ctx = new_session(&probe).await?;
            tidepool_engine::session::external_event_table(&ctx, &ext, &g.s3()).await?;
            wh.add_external_table(&ext).await?;
            eprintln!("registered {name} -> {url}");
        }
        TableCommand::List => {
            let wh = g.warehouse_or_sample()?;
            for t in wh.external_tables().await? {
                println!("{}\t{}", t.name, t.url);
            }
        }
        TableCommand::Rm { name } => {
            let wh = g.warehouse_to_write("table rm")?;
            if !wh.remove_external_table(name).await? {
                bail!("no registered table '{name}'");
            }
            eprintln!("removed {name}");
        }
    }
    Ok(())
}

async fn info(g: &Global) -> Result<()> {
    let wh = g.warehouse_or_sample()?;
    let table = wh.events();
    let m = table.manifest().await?;
    println!("table:   {}", table.location.url);
    println!("version: {}", m.version);
    println!("rows:    {}", m.total_rows());
    println!("files:   {}", m.files.len());
    let bytes: u64 = m.files.iter().map(|f| f.size).sum();
    println!("bytes:   {bytes}");
    if let (Some(first), Some(last)) = (
        m.files.iter().map(|f| &f.date).min(),
        m.files.iter().map(|f| &f.date).max(),
    ) {
        println!("dates:   {first} .. {last}");
    }
    for extra in &m.extra_columns {
        println!("column:  {} {}", extra.name, extra.column_type.name());
    }
    for b in &m.batches {
        println!(
            "batch:   {} {} rows  {}",
            &b.id[..16.min(b.id.len())],
            b.rows,
            b.source
        );
    }
    Ok(())
}
