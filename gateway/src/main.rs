use anyhow::Context as _;
use chrono::{Duration, Utc};
use clap::{Parser, Subcommand};
use common::domain::{Scope, TenantId};
use common::store::{PgStore, Store as _, StoreError};
use prometheus_client::registry::Registry;

/// The HTTP gateway, and the operator's commands for tenants and keys. Configured by `MEMORY_*`
/// environment variables (see the README).
#[derive(Parser)]
#[command(name = "memory-gateway", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Manage tenants.
    #[command(subcommand)]
    Tenants(TenantCommand),
    /// Manage a tenant's API keys.
    #[command(subcommand)]
    Keys(KeyCommand),
}

#[derive(Subcommand)]
enum TenantCommand {
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
enum KeyCommand {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = common::Config::from_env()?;
    common::telemetry::init(&config.log);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let shutdown = common::shutdown::on_signal();
            let deps = common::Deps::connect(&config).await.context("connecting to Postgres and NATS")?;
            let registry = Registry::with_prefix("memory");
            let gateway = gateway::Gateway::build(&config, deps, registry, shutdown).await?;
            gateway.run().await.context("gateway stopped")
        }
        Command::Tenants(command) => {
            let store = PgStore::connect(config.database_url()?, 2).await.context("connecting to Postgres")?;
            match command {
                TenantCommand::Create { id, name } => {
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
        Command::Keys(command) => {
            let store = PgStore::connect(config.database_url()?, 2).await.context("connecting to Postgres")?;
            match command {
                KeyCommand::Create { tenant, scopes, name, expires_in_days } => {
                    let tenant = tenant_id(tenant)?;
                    let scopes = scopes
                        .iter()
                        .map(|s| {
                            Scope::parse(s.trim()).with_context(|| format!("unknown scope {s:?}: read, write, admin"))
                        })
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
    }
}

fn tenant_id(id: String) -> anyhow::Result<TenantId> {
    TenantId::parse(id).map_err(|e| anyhow::anyhow!("{e}"))
}
