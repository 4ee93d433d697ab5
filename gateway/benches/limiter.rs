//! The rate limiter's cost per request: `cargo bench -p gateway --bench limiter` (services up,
//! `export $(scripts/services.sh env)`). Times `BENCH_CHECKS` (default 5000) sequential checks of a
//! client and a tenant limit, against Redis (one Lua call, the shared path) and in process (the
//! fallback), each with a quota large enough never to refuse.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config::{RateLimit, RateLimitConfig, Secret};
use common::domain::TenantId;
use common::testing::TestEnv;
use gateway::limit::Limiter;
use gateway::metrics::Metrics;
use prometheus_client::registry::Registry;

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6;
    format!("p50 {:>6.1} µs  p95 {:>6.1} µs  p99 {:>6.1} µs", at(0.5), at(0.95), at(0.99))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let checks: usize = std::env::var("BENCH_CHECKS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let env = TestEnv::start().await?;
    let limits =
        RateLimitConfig { client: RateLimit::per(1_000_000_000, 60), tenant: RateLimit::per(1_000_000_000, 60) };
    let redis = Secret::new(std::env::var("MEMORY_TEST_REDIS_URL")?);
    let tenant = TenantId::parse("bench")?;
    println!(
        "machine: {} cores; {checks} sequential checks, client + tenant limit",
        std::thread::available_parallelism()?
    );
    for (name, url) in [("redis", Some(&redis)), ("in process", None)] {
        let limiter = Limiter::new(
            limits,
            url,
            env.subjects.clone(),
            Arc::new(env.store.clone()),
            Metrics::register(&mut Registry::default()),
        );
        // Warm up: the connection, the script cache, the tenant's limit.
        for _ in 0..100 {
            limiter.check("key:bench", Some(&tenant), 1).await;
        }
        let mut samples = Vec::with_capacity(checks);
        for _ in 0..checks {
            let t = Instant::now();
            let decision = limiter.check("key:bench", Some(&tenant), 1).await;
            samples.push(t.elapsed());
            anyhow::ensure!(decision.allowed);
        }
        println!("  {name:<10}  {}", summary(samples));
    }
    env.finish().await
}
