use anyhow::Context as _;
use prometheus_client::registry::Registry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = common::Config::from_env()?;
    common::telemetry::init(&config.log);
    let shutdown = common::shutdown::on_signal();
    let deps = common::Deps::connect(&config).await.context("connecting to Postgres and NATS")?;
    let registry = Registry::with_prefix("memory");
    let gateway = gateway::Gateway::build(&config, deps, registry, shutdown).await?;
    gateway.run().await.context("gateway stopped")
}
