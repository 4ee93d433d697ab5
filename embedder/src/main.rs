use anyhow::Context as _;
use clap::{Parser, Subcommand};
use prometheus_client::registry::Registry;

/// The embedder: stores and embeds ingested messages, answers query embeddings. Configured by
/// `MEMORY_*` environment variables (see the README).
#[derive(Parser)]
#[command(name = "memory-embedder", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the embedder (the default).
    Run,
    /// Embed every stored message with the configured provider, printing progress, then make its
    /// space the active one. Resumable: run it again to continue an interrupted backfill.
    Reembed {
        /// Stop when every message is embedded, without switching searches to the new space.
        #[arg(long)]
        no_activate: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = common::Config::from_env()?;
    common::telemetry::init(&config.log);
    let shutdown = common::shutdown::on_signal();
    let provider = embedder::provider(&config)?;
    let deps = common::Deps::connect(&config).await.context("connecting to Postgres and NATS")?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let mut registry = Registry::with_prefix("memory");
            let embedder = embedder::Embedder::build(&config, deps.clone(), provider, &mut registry).await?;
            let listener = tokio::net::TcpListener::bind(config.metrics.addr)
                .await
                .with_context(|| format!("binding MEMORY_METRICS_ADDR={}", config.metrics.addr))?;
            let check = Some(embedder.readiness());
            let ops = tokio::spawn(common::ops::serve(listener, registry.into(), deps, check, shutdown.clone()));
            embedder.run(shutdown.clone(), config.shutdown_grace).await.context("embedder stopped")?;
            shutdown.cancel();
            ops.await?.context("ops endpoint stopped")
        }
        Command::Reembed { no_activate } => {
            let mut last_print = std::time::Instant::now();
            let outcome = embedder::reembed(&config, deps, provider, !no_activate, &shutdown, |p| {
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
                embedder::backfill::Outcome::Complete => {
                    println!("reembed: done; every message is embedded (not activated)")
                }
                embedder::backfill::Outcome::Stopped => {
                    println!("reembed: stopped; run it again to resume");
                    std::process::exit(130);
                }
                embedder::backfill::Outcome::Busy => unreachable!("reembed waits while another process backfills"),
            }
            Ok(())
        }
    }
}
