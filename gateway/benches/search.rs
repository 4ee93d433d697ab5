//! Search latency by mode and tenant size, against the real services (`scripts/services.sh up`,
//! then `export $(scripts/services.sh env)`): `cargo bench -p gateway --bench search`.
//! For each size in `BENCH_SIZES` (default `10000,100000`) it loads that many messages into one
//! tenant (hash provider, written straight to the store: this measures search, not ingest), then
//! times `BENCH_SEARCHES` (default 300) sequential searches per mode, first over NATS to the
//! searcher, then through the gateway's REST router. Queries repeat, so their vectors come from the
//! query cache after the first round.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use common::bus::Envelope;
use common::contract::{SearchRequest, VERSION};
use common::domain::{MessageId, MessageInput, SearchFilters, SearchMode, TenantId};
use common::store::IngestWrites;
use common::store::Spaces;
use common::store::{NewRow, NewVector};
use embedder::HashProvider;

use support::percentile;

const QUERIES: usize = 50;

/// A word from a vocabulary of a few thousand, rarer the higher `n`.
fn word(n: u64) -> String {
    const SYLLABLES: [&str; 16] =
        ["ka", "lo", "mi", "ne", "su", "ra", "to", "vi", "be", "do", "fe", "gu", "ha", "ji", "pa", "ze"];
    let mut n = n;
    let mut w = String::new();
    loop {
        w.push_str(SYLLABLES[(n % 16) as usize]);
        n /= 16;
        if n == 0 {
            return w;
        }
    }
}

/// A 12-word message; word ranks follow a rough Zipf law.
fn sentence(i: u64) -> String {
    let mut h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..12)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            let u = (h >> 11) as f64 / (1u64 << 53) as f64;
            word((4000f64.powf(u)) as u64)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "p50 {:>6.2} ms  p95 {:>6.2} ms  p99 {:>6.2} ms",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.95)),
        ms(percentile(&samples, 0.99))
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let searches: usize = std::env::var("BENCH_SEARCHES").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    println!("machine: {} cores", std::thread::available_parallelism().map_or(0, |n| n.get()));
    for size in sizes {
        let env = support::env(|_| {}).await?;
        let embedder = support::embedder(&env).await?;
        let space = env.deps.store.active_space().await?.expect("the hash space");
        let tenant = TenantId::parse("bench")?;
        let hash = HashProvider::new();
        let loading = Instant::now();
        for start in (0..size).step_by(1000) {
            let rows: Vec<NewRow> = (start..(start + 1000).min(size))
                .map(|i| {
                    let message = MessageInput {
                        tenant_id: "bench".into(),
                        conversation_id: format!("c{}", i % 100),
                        role: "user".into(),
                        content: sentence(i as u64),
                        ..MessageInput::default()
                    }
                    .validate(Utc::now(), MessageId::new)
                    .expect("valid");
                    NewRow { message, importance: 0.5, origin: None }
                })
                .collect();
            env.store.insert_messages(&rows).await?;
            let vectors: Vec<NewVector> = rows
                .iter()
                .map(|r| NewVector {
                    message_id: r.message.message_id,
                    tenant_id: tenant.clone(),
                    vector: hash.vector(&r.message.content),
                    revision: 0,
                })
                .collect();
            env.store.save_vectors(&space, &vectors).await?;
        }
        sqlx::query("ANALYZE").execute(env.store.pool()).await?;
        println!("\n{size} messages in one tenant, loaded in {:.1} s; top_k 5", loading.elapsed().as_secs_f64());

        let app = support::serve(&env, embedder).await?;
        // Queries: four words of stored messages.
        let queries: Vec<String> = (0..QUERIES)
            .map(|i| sentence((i * 7919 % size) as u64).split(' ').take(4).collect::<Vec<_>>().join(" "))
            .collect();

        for mode in [SearchMode::Vector, SearchMode::Lexical, SearchMode::Hybrid] {
            let request = |query: &str| SearchRequest {
                v: VERSION,
                tenant_id: tenant.clone(),
                query: query.to_owned(),
                top_k: 5,
                mode,
                filters: SearchFilters::default(),
                explain: false,
                exact: false,
                candidate_limit: None,
            };
            // Warm the query cache and the connections.
            for q in &queries {
                let body = Bytes::from(serde_json::to_vec(&request(q))?);
                env.deps.bus.request(Envelope::new(env.subjects.search(), body), Duration::from_secs(10)).await?;
            }
            let mut nats = Vec::with_capacity(searches);
            for i in 0..searches {
                let body = Bytes::from(serde_json::to_vec(&request(&queries[i % QUERIES]))?);
                let t = Instant::now();
                let reply =
                    env.deps.bus.request(Envelope::new(env.subjects.search(), body), Duration::from_secs(10)).await?;
                nats.push(t.elapsed());
                anyhow::ensure!(reply.starts_with(b"{\"ok\""), "search failed: {}", String::from_utf8_lossy(&reply));
            }
            let mut rest = Vec::with_capacity(searches);
            let mode_name = serde_json::to_value(mode)?.as_str().unwrap_or_default().to_owned();
            for i in 0..searches {
                let query = queries[i % QUERIES].replace(' ', "%20");
                let query_string = format!("tenant_id=bench&query={query}&top_k=5&mode={mode_name}");
                rest.push(support::timed_search(&app, &query_string).await?);
            }
            println!("  {mode_name:<8} searcher (NATS): {}   REST: {}", summary(nats), summary(rest));
        }
        env.finish().await?;
    }
    Ok(())
}
