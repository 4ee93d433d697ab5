use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = common::Config::from_env()?;
    common::telemetry::init(&config.log);
    let shutdown = common::shutdown::on_signal();
    let mut registry = Registry::with_prefix("memory");
    let provider = embedder::provider(&config)?;
    let deps = common::Deps::connect(&config).await.context("connecting to Postgres and NATS")?;
    let embedder = embedder::Embedder::build(&config, deps.clone(), provider, &mut registry).await?;
    let listener = tokio::net::TcpListener::bind(config.metrics.addr)
        .await
        .with_context(|| format!("binding MEMORY_METRICS_ADDR={}", config.metrics.addr))?;
    let embeddings = embedder.embeddings().clone();
    let check: common::ops::Check = Arc::new(move || embeddings.readiness());
    let ops = tokio::spawn(common::ops::serve(listener, registry.into(), deps, Some(check), shutdown.clone()));
    embedder.run(shutdown.clone(), config.shutdown_grace).await.context("embedder stopped")?;
    shutdown.cancel();
    ops.await?.context("ops endpoint stopped")
}
