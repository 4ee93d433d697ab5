use anyhow::Context as _;
use prometheus_client::registry::Registry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = common::Config::from_env()?;
    common::telemetry::init(&config.log);
    let shutdown = common::shutdown::on_signal();
    let mut registry = Registry::with_prefix("memory");
    let deps = common::Deps::connect(&config).await.context("connecting to Postgres and NATS")?;
    let retention = retention::Retention::build(&config, deps.clone(), &mut registry).await?;
    let listener = tokio::net::TcpListener::bind(config.metrics.addr)
        .await
        .with_context(|| format!("binding MEMORY_METRICS_ADDR={}", config.metrics.addr))?;
    let ops = tokio::spawn(common::ops::serve(listener, registry.into(), deps, None, shutdown.clone()));
    retention.run(shutdown.clone(), config.shutdown_grace).await.context("retention stopped")?;
    shutdown.cancel();
    ops.await?.context("ops endpoint stopped")
}
