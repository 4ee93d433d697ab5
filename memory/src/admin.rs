//! The operator's commands: migrations, tenants, keys and re-embedding. Each reads the same
//! `MEMORY_*` configuration as the roles and talks to Postgres (and NATS, to re-embed) directly.

use anyhow::Context as _;
use chrono::{Duration, Utc};
use clap::Subcommand;
use common::Deps;
use common::config::Config;
use common::domain::{Scope, TenantId};
use common::store::ApiKeys;
use common::store::Tenants;
use common::store::{PgStore, StoreError};

#[derive(Subcommand)]
pub(crate) enum TenantCommand {
    /// Create a tenant.
    Create {
        id: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// List tenants.
    List,
}

#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a key and print it (shown this once). Creates the tenant if needed.
    Create {
        #[arg(long)]
        tenant: String,
        /// Comma-separated: read, write, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        #[arg(long)]
        name: Option<String>,
        /// The key stops working after this many days.
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List a tenant's keys (never the keys themselves).
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key.
    Revoke {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: uuid::Uuid,
    },
}

/// Reads the configuration and sets up logs, for a command.
fn config() -> anyhow::Result<Config> {
    let config = Config::from_env()?;
    common::telemetry::init(&config.log);
    Ok(config)
}

/// `memory migrate`: applies pending migrations (waiting for Postgres up to
/// `MEMORY_STARTUP_TIMEOUT_SECS`), whatever `MEMORY_DATABASE_MIGRATE` says.
pub(crate) async fn migrate() -> anyhow::Result<()> {
    let mut config = config()?;
    config.database.migrate = true;
    let store = Deps::postgres(&config).await.context("migrating the database")?;
    // Read back: every migration of this build applied, none newer.
    store.check_schema().await?;
    println!("migrate: the schema is at migration {}", PgStore::schema_version());
    Ok(())
}

async fn store() -> anyhow::Result<PgStore> {
    let config = config()?;
    Deps::postgres(&config).await.context("connecting to Postgres")
}

/// A tenant's or key's name, checked as the API checks it.
fn checked_name(name: Option<&str>) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    if let Some(name) = name {
        common::domain::check_name("--name", name, &mut errors);
    }
    match errors.first() {
        Some(e) => anyhow::bail!("{}: {}", e.field, e.message),
        None => Ok(()),
    }
}

pub(crate) async fn tenants(command: TenantCommand) -> anyhow::Result<()> {
    let store = store().await?;
    match command {
        TenantCommand::Create { id, name } => {
            checked_name(name.as_deref())?;
            let tenant = store.create_tenant(&tenant_id(id)?, name.as_deref()).await?;
            println!("{}", serde_json::to_string_pretty(&tenant)?);
        }
        TenantCommand::List => {
            let mut after = None;
            loop {
                let page = store.tenants(after.as_ref(), 1000).await?;
                for t in &page {
                    println!("{}\t{}", t.id, t.name.as_deref().unwrap_or(""));
                }
                match page.last() {
                    Some(last) if page.len() == 1000 => after = Some(last.id.clone()),
                    _ => break,
                }
            }
        }
    }
    Ok(())
}

pub(crate) async fn keys(command: KeyCommand) -> anyhow::Result<()> {
    let store = store().await?;
    match command {
        KeyCommand::Create { tenant, scopes, name, expires_in_days } => {
            let tenant = tenant_id(tenant)?;
            checked_name(name.as_deref())?;
            let scopes = scopes
                .iter()
                .map(|s| Scope::parse(s.trim()).with_context(|| format!("unknown scope {s:?}: read, write, admin")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            match store.create_tenant(&tenant, None).await {
                Ok(_) => eprintln!("created tenant {tenant}"),
                Err(StoreError::Exists(_)) => {}
                Err(e) => return Err(e.into()),
            }
            let expires_at = expires_in_days.map(|d| Utc::now() + Duration::days(i64::from(d)));
            let created = gateway::routes::admin::issue(&store, tenant, name, scopes, expires_at).await?;
            eprintln!("key {} created; it is shown this once:", created.api_key.id);
            println!("{}", created.key);
        }
        KeyCommand::List { tenant } => {
            for key in store.keys(&tenant_id(tenant)?).await? {
                println!("{}", serde_json::to_string(&key)?);
            }
        }
        KeyCommand::Revoke { tenant, id } => {
            anyhow::ensure!(store.revoke_key(&tenant_id(tenant)?, id).await?, "no such key");
            eprintln!("key {id} revoked");
        }
    }
    Ok(())
}

fn tenant_id(id: String) -> anyhow::Result<TenantId> {
    TenantId::parse(id).map_err(|e| anyhow::anyhow!("{e}"))
}

/// `memory reembed`: backfills the configured provider's space, printing progress; with
/// `activate`, switches searches to it when complete. Exits 130 when stopped by a signal.
pub(crate) async fn reembed(activate: bool) -> anyhow::Result<()> {
    let config = config()?;
    let shutdown = common::shutdown::on_signal();
    let provider = embedder::provider(&config)?;
    let deps = Deps::connect(&config).await.context("connecting to Postgres and NATS")?;
    let mut last_print = std::time::Instant::now();
    let outcome = embedder::reembed(&config, deps, provider, activate, &shutdown, |p| {
        if last_print.elapsed().as_millis() >= 500 {
            last_print = std::time::Instant::now();
            println!(
                "reembed: space {}: {} of {} messages ({:.0}/s)",
                p.space_id,
                p.done,
                p.missing_at_start,
                p.per_second()
            );
        }
    })
    .await?;
    match outcome {
        embedder::backfill::Outcome::Activated => println!("reembed: done; the space is active"),
        embedder::backfill::Outcome::Complete => println!("reembed: done; every message is embedded (not activated)"),
        embedder::backfill::Outcome::Stopped => {
            println!("reembed: stopped; run it again to resume");
            std::process::exit(130);
        }
        embedder::backfill::Outcome::Busy => unreachable!("reembed waits while another process backfills"),
    }
    Ok(())
}
