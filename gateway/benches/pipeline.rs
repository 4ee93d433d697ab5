//! Pipeline throughput and search latency against the real services (`scripts/services.sh up`,
//! then `export $(scripts/services.sh env)`): `cargo bench -p gateway --bench pipeline`.
//! Ingest goes through the gateway's router in-process (batches of 100), the embedder (hash
//! provider, or `MEMORY_EMBEDDING_PROVIDER`) and Postgres; search through the gateway, the
//! searcher and the query embedder.
//! Sizes: `BENCH_MESSAGES` (default 20000), `BENCH_SEARCHES` (default 500).

mod support;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;
use tower::ServiceExt;

use support::{KEY, percentile};

const WORDS: &[&str] = &[
    "lisbon", "budget", "meeting", "flight", "invoice", "garden", "piano", "recipe", "doctor", "train", "holiday",
    "project", "deadline", "coffee", "birthday", "manual", "contract", "weather", "museum", "bicycle", "camera",
];

fn sentence(i: usize) -> String {
    (0..12).map(|k| WORDS[(i * 7 + k * 13 + k * k) % WORDS.len()]).collect::<Vec<_>>().join(" ")
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let messages = env_usize("BENCH_MESSAGES", 20_000);
    let searches = env_usize("BENCH_SEARCHES", 500);
    let env = support::env(|vars| {
        // `MEMORY_EMBEDDING_PROVIDER=local MEMORY_MODEL_DIR=…` measures the local model instead.
        for name in ["MEMORY_EMBEDDING_PROVIDER", "MEMORY_MODEL_DIR"] {
            if let Ok(value) = std::env::var(name) {
                vars.insert(name.into(), value);
            }
        }
    })
    .await?;
    let app = support::serve(&env, support::embedder(&env).await?).await?;

    let started = Instant::now();
    for chunk in (0..messages).collect::<Vec<_>>().chunks(100) {
        let items: Vec<_> = chunk
            .iter()
            .map(|&i| json!({"tenant_id": "bench", "conversation_id": format!("c{}", i % 50), "role": "user", "content": sentence(i)}))
            .collect();
        let req = Request::post("/v1/messages/batch")
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .body(Body::from(json!({ "messages": items }).to_string()))?;
        let response = app.clone().oneshot(req).await?;
        anyhow::ensure!(response.status() == StatusCode::CREATED, "batch: {}", response.status());
    }
    let accepted = started.elapsed();
    loop {
        let embedded: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE status = 'embedded'")
            .fetch_one(env.store.pool())
            .await?;
        if embedded as usize >= messages {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let embedded = started.elapsed();

    let mut latencies = Vec::with_capacity(searches);
    for i in 0..searches {
        let query = sentence(i * 31 + 5).split(' ').take(4).collect::<Vec<_>>().join("%20");
        latencies.push(support::timed_search(&app, &format!("tenant_id=bench&query={query}&top_k=5")).await?);
    }
    latencies.sort();

    println!("machine: {} cores", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!(
        "ingest: {messages} messages in batches of 100: accepted in {:.2} s ({:.0}/s), all embedded after {:.2} s ({:.0}/s)",
        accepted.as_secs_f64(),
        messages as f64 / accepted.as_secs_f64(),
        embedded.as_secs_f64(),
        messages as f64 / embedded.as_secs_f64()
    );
    println!(
        "search over {messages} messages of one tenant, top_k 5, sequential: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.95).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
    env.finish().await
}
