//! The lifecycle every role shares: read the configuration, set up logs, connect, build each
//! role against one metrics registry, serve the ops port, run until SIGTERM, drain, exit.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use common::Deps;
use common::config::{Config, ConfigError};
use common::ops::{Built, Ops};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{error, info};

/// One role of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Gateway,
    Embedder,
    Searcher,
    Retention,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Embedder => "embedder",
            Self::Searcher => "searcher",
            Self::Retention => "retention",
        }
    }
}

/// A built role, ready to run until shutdown.
type Running = BoxFuture<'static, anyhow::Result<()>>;

/// A role's `run`, its error made an `anyhow::Error`.
fn running<E: Into<anyhow::Error>>(run: impl Future<Output = Result<(), E>> + Send + 'static) -> Running {
    run.map(|r| r.map_err(Into::into)).boxed()
}

/// Runs `roles` in this process until SIGTERM or SIGINT, then lets each finish its work in hand
/// (up to `MEMORY_SHUTDOWN_GRACE_SECS`). If one role fails or stops on its own, the others are
/// stopped too and the process fails, so an orchestrator restarts it whole.
pub(crate) async fn serve(roles: &[Role]) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    // What can be checked without a network is checked first, every problem reported at once: the
    // database URL every role needs, the embedder's model or key.
    let mut problems = Vec::new();
    if let Err(e) = config.database_url() {
        problems.extend(e.0);
    }
    let provider = match roles.contains(&Role::Embedder).then(|| embedder::provider(&config)) {
        Some(Err(e)) => {
            problems.extend(e.0);
            None
        }
        Some(Ok(provider)) => Some(provider),
        None => None,
    };
    if !problems.is_empty() {
        return Err(ConfigError(problems).into());
    }
    common::telemetry::init(&config.log);
    let listed = roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(",");
    info!(roles = %listed, version = crate::VERSION, "starting");
    let shutdown = common::shutdown::on_signal();
    let listener = TcpListener::bind(config.metrics.addr)
        .await
        .with_context(|| format!("binding MEMORY_METRICS_ADDR={}", config.metrics.addr))?;
    // Every task, and what it is (for logs and errors).
    let mut tasks = JoinSet::new();
    let mut names = HashMap::new();
    // Alive, not ready, while connecting: a slow start is not a crash.
    let ops = Ops::default();
    let serving = common::ops::serve(listener, ops.clone(), shutdown.clone());
    names.insert(tasks.spawn(serving.map(|r| r.context("the ops endpoint failed"))).id(), "ops");
    let (deps, pg) = tokio::select! {
        connected = Deps::connect_pg(&config) => connected.context("connecting to Postgres and NATS")?,
        () = shutdown.cancelled() => return Ok(()),
    };

    let mut root = Registry::default();
    let probe = crate::metrics::register(&mut root, &listed, pg.pool().clone());
    let registry = root.sub_registry_with_prefix("memory");
    let grace = config.shutdown_grace;
    let mut roles_built: Vec<(Role, Running)> = Vec::new();
    let mut checks = Vec::new();
    let mut gateway = None;
    for &role in roles {
        let (d, s) = (deps.clone(), shutdown.clone());
        match role {
            Role::Gateway => gateway = Some(gateway::Gateway::build(&config, d, registry).await?),
            Role::Embedder => {
                let provider = provider.clone().expect("made above for the embedder");
                let worker = embedder::Embedder::build(&config, d, provider, registry).await?;
                checks.push(worker.readiness());
                roles_built.push((role, running(worker.run(s, grace))));
            }
            Role::Searcher => {
                let worker = searcher::Searcher::build(&config, d, registry).await?;
                roles_built.push((role, running(worker.run(s, grace))));
            }
            Role::Retention => {
                let worker = retention::Retention::build(&config, d, registry).await?;
                roles_built.push((role, running(worker.run(s, grace))));
            }
        }
    }
    let registry = Arc::new(root);
    if let Some(mut gateway) = gateway {
        gateway.expose_metrics(registry.clone());
        roles_built.push((Role::Gateway, running(gateway.run(shutdown.clone(), grace))));
    }

    names.insert(tasks.spawn(probe.run(shutdown.clone()).map(Ok::<(), anyhow::Error>)).id(), "pool probe");
    ops.built(Built { registry, deps, checks });
    for (role, run) in roles_built {
        names.insert(tasks.spawn(run).id(), role.name());
    }
    info!(roles = %listed, "ready to serve");
    let mut failure = None;
    while let Some(joined) = tasks.join_next_with_id().await {
        let (what, result) = match joined {
            Ok((id, result)) => (names[&id], result),
            Err(e) => (names[&e.id()], Err(anyhow::anyhow!("it panicked: {e}"))),
        };
        match result {
            Ok(()) if shutdown.is_cancelled() => info!(role = what, "stopped"),
            Ok(()) => failure = failure.or(Some(anyhow::anyhow!("{what} stopped on its own"))),
            Err(e) => failure = failure.or(Some(e.context(format!("{what} failed")))),
        }
        if !shutdown.is_cancelled() {
            error!(role = what, "stopping every role: one stopped before shutdown");
            shutdown.cancel();
        }
    }
    match failure {
        Some(e) => Err(e),
        None => {
            info!("stopped cleanly");
            Ok(())
        }
    }
}
