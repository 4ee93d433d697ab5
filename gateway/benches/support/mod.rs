//! What the gateway's benches share: the environment, and the pipeline behind the gateway's
//! router, run in process against the real services.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use common::testing::TestEnv;
use prometheus_client::registry::Registry;

pub(crate) const KEY: &str = "bench-admin-key-0123456789";

/// A test environment for a bench: the operator key, a pool of ten connections, an HTTP
/// address the system picks, rate limits far above any bench's load (a batch costs one request
/// per item), and whatever `extra` sets.
pub(crate) async fn env(extra: impl FnOnce(&mut BTreeMap<String, String>)) -> anyhow::Result<TestEnv> {
    TestEnv::start_with(|vars| {
        vars.insert("MEMORY_ADMIN_API_KEY".into(), KEY.into());
        vars.insert("MEMORY_HTTP_ADDR".into(), "127.0.0.1:0".into());
        vars.insert("MEMORY_DATABASE_MAX_CONNECTIONS".into(), "10".into());
        vars.insert("MEMORY_RATE_LIMIT_CLIENT".into(), "1000000/second".into());
        vars.insert("MEMORY_RATE_LIMIT_TENANT".into(), "1000000/second".into());
        extra(vars);
    })
    .await
}

/// An embedder of the configured provider, built (its space registered) but not running.
pub(crate) async fn embedder(env: &TestEnv) -> anyhow::Result<embedder::Embedder> {
    let provider = embedder::provider(&env.config)?;
    Ok(embedder::Embedder::build(&env.config, env.deps.clone(), provider, &mut Registry::default()).await?)
}

/// Runs `embedder` and a searcher until the environment shuts down; the gateway's router in
/// front of them.
pub(crate) async fn serve(env: &TestEnv, embedder: embedder::Embedder) -> anyhow::Result<Router> {
    let searcher = searcher::Searcher::build(&env.config, env.deps.clone(), &mut Registry::default()).await?;
    let grace = env.config.shutdown_grace;
    env.tasks.spawn(embedder.run(env.shutdown.clone(), grace));
    env.tasks.spawn(searcher.run(env.shutdown.clone(), grace));
    let gateway = gateway::Gateway::build(&env.config, env.deps.clone(), &mut Registry::default()).await?;
    Ok(gateway::router(gateway.state()))
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One search through the router, as the operator: how long it took to answer in full.
pub(crate) async fn timed_search(app: &Router, query_string: &str) -> anyhow::Result<Duration> {
    use tower::ServiceExt as _;
    let request = axum::http::Request::get(format!("/v1/memory/search?{query_string}"))
        .header("x-api-key", KEY)
        .body(axum::body::Body::empty())?;
    let started = std::time::Instant::now();
    let response = app.clone().oneshot(request).await?;
    let status = response.status();
    axum::body::to_bytes(response.into_body(), usize::MAX).await?;
    let took = started.elapsed();
    anyhow::ensure!(status == axum::http::StatusCode::OK, "search: {status}");
    Ok(took)
}
