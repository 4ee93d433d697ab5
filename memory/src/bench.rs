//! `memory bench`: loads a running deployment through its REST API and measures it as a user
//! would: ingest to searchable, then search latency (one client) and throughput (several) per
//! mode. Deterministic: the same seed sends the same messages and queries.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use futures::StreamExt as _;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// The gateway.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The operator key (default: MEMORY_ADMIN_API_KEY).
    #[arg(long)]
    key: Option<String>,
    /// Messages to load, spread over the tenants.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    #[arg(long, default_value_t = 1)]
    tenants: usize,
    /// Messages per batch request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Requests in flight while loading, and clients in the throughput phase.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Searches per mode and phase.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Also write the results here, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

const SPEAKERS: [&str; 8] = ["Ana", "Bruno", "Chen", "Dara", "Emeka", "Freya", "Goran", "Hana"];
const WORDS: [&str; 48] = [
    "flight",
    "Lisbon",
    "hotel",
    "budget",
    "invoice",
    "meeting",
    "Friday",
    "deadline",
    "report",
    "garden",
    "recipe",
    "pasta",
    "doctor",
    "appointment",
    "birthday",
    "gift",
    "concert",
    "tickets",
    "train",
    "Porto",
    "museum",
    "rent",
    "landlord",
    "keys",
    "car",
    "insurance",
    "vacation",
    "beach",
    "passport",
    "visa",
    "project",
    "launch",
    "review",
    "manager",
    "salary",
    "gym",
    "running",
    "marathon",
    "book",
    "library",
    "coffee",
    "bakery",
    "dentist",
    "plumber",
    "kitchen",
    "tiles",
    "password",
    "router",
];
const FILLER: [&str; 16] =
    ["the", "a", "is", "on", "for", "we", "my", "and", "to", "it", "was", "next", "will", "about", "with", "our"];

fn sentence(rng: &mut StdRng, words: usize) -> String {
    (0..words)
        .map(|i| if i % 3 == 1 { WORDS.choose(rng) } else { FILLER.choose(rng) }.copied().unwrap_or("so"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The messages of one tenant: conversations of alternating user and assistant turns, the users
/// named, lengths from a few words to a paragraph.
fn messages(rng: &mut StdRng, tenant: &str, count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            let conversation = format!("c{}", i / 20);
            let user = i % 2 == 0;
            let length = if rng.random_bool(0.2) { rng.random_range(40..120) } else { rng.random_range(6..30) };
            let mut message = json!({"tenant_id": tenant, "conversation_id": conversation,
                "role": if user { "user" } else { "assistant" }, "content": sentence(rng, length)});
            if user {
                message["name"] = json!(SPEAKERS[(i / 20) % SPEAKERS.len()]);
            }
            message
        })
        .collect()
}

struct Client {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Client {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
        let mut request = self.http.request(method, format!("{}{path}", self.url)).header("x-api-key", &self.key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        ensure!(
            status != 429,
            "the deployment's rate limits refused the load: for a benchmark, raise MEMORY_RATE_LIMIT_CLIENT and MEMORY_RATE_LIMIT_TENANT (say to 1000000/second)"
        );
        let bytes = response.bytes().await?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted.get(((sorted.len().max(1) - 1) as f64 * p).round() as usize).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let key = args.key.clone().or_else(|| std::env::var("MEMORY_ADMIN_API_KEY").ok());
    let key = key.context("give the operator key with --key or MEMORY_ADMIN_API_KEY")?;
    ensure!(args.messages > 0 && args.tenants > 0 && args.batch > 0 && args.concurrency > 0, "counts must be positive");
    let client = Client {
        http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
        url: args.url.trim_end_matches('/').to_owned(),
        key,
    };
    let mut rng = StdRng::seed_from_u64(args.seed);
    let run = format!("bench-{}-{}", args.seed, chrono::Utc::now().format("%H%M%S"));
    let tenants: Vec<String> = (0..args.tenants).map(|t| format!("{run}-t{t}")).collect();
    let per_tenant = args.messages.div_ceil(args.tenants);

    // Ingest: batches at the chosen concurrency; then until every batch's last message is embedded.
    let mut batches = Vec::new();
    for tenant in &tenants {
        for chunk in messages(&mut rng, tenant, per_tenant).chunks(args.batch) {
            batches.push((tenant.clone(), chunk.to_vec()));
        }
    }
    eprintln!(
        "loading {} messages in {} batches over {} tenant(s)…",
        per_tenant * tenants.len(),
        batches.len(),
        tenants.len()
    );
    let started = Instant::now();
    let client_ref = &client;
    let mut watched = Vec::new();
    let mut sent = futures::stream::iter(batches.iter().map(|(tenant, items)| async move {
        let (status, body) =
            client_ref.send(reqwest::Method::POST, "/v1/messages/batch", Some(&json!({"messages": items}))).await?;
        ensure!(status == 201, "a batch was answered {status}: {body}");
        let last = body["results"].as_array().and_then(|r| r.last()).and_then(|r| r["id"].as_str()).map(str::to_owned);
        anyhow::Ok((tenant.clone(), last.context("a batch answer without ids")?))
    }))
    .buffer_unordered(args.concurrency);
    while let Some(result) = sent.next().await {
        watched.push(result?);
        if watched.len() % 20 == 0 {
            eprintln!("  {} of {} batches accepted", watched.len(), batches.len());
        }
    }
    drop(sent);
    let accepted = started.elapsed();
    let mut pending = watched;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (tenant, id) in pending {
            let (_, body) =
                client.send(reqwest::Method::GET, &format!("/v1/messages/{id}?tenant_id={tenant}"), None).await?;
            if body["status"] != "embedded" {
                still.push((tenant, id));
            }
        }
        pending = still;
        if !pending.is_empty() {
            eprintln!("  waiting for {} batches to be searchable", pending.len());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ensure!(started.elapsed() < Duration::from_secs(3600), "not searchable after an hour");
    }
    let searchable = started.elapsed();
    let loaded = (per_tenant * tenants.len()) as f64;

    // Search: one client, then `concurrency` clients, per mode.
    let queries: Vec<String> = (0..args.queries)
        .map(|_| {
            let words = rng.random_range(2..6);
            sentence(&mut rng, words)
        })
        .collect();
    let mut modes = Vec::new();
    for mode in ["hybrid", "vector", "lexical"] {
        eprintln!("searching ({mode})…");
        let path = |q: &str, t: &str| {
            let q: String = q.split(' ').collect::<Vec<_>>().join("%20");
            format!("/v1/memory/search?tenant_id={t}&query={q}&top_k=5&mode={mode}")
        };
        let mut latencies = Vec::with_capacity(queries.len());
        for (i, q) in queries.iter().enumerate() {
            let tenant = &tenants[i % tenants.len()];
            let at = Instant::now();
            let (status, body) = client.send(reqwest::Method::GET, &path(q, tenant), None).await?;
            ensure!(status == 200, "a {mode} search was answered {status}: {body}");
            latencies.push(at.elapsed());
        }
        latencies.sort();
        let at = Instant::now();
        let statuses: Vec<u16> = futures::stream::iter(queries.iter().enumerate().map(|(i, q)| {
            let path = path(q, &tenants[i % tenants.len()]);
            let client = &client;
            async move { client.send(reqwest::Method::GET, &path, None).await.map_or(0, |(s, _)| s) }
        }))
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
        let took = at.elapsed().as_secs_f64();
        let answered = statuses.iter().filter(|s| **s == 200).count();
        let failed: Vec<u16> = statuses.into_iter().filter(|s| *s != 200).collect();
        if !failed.is_empty() {
            eprintln!(
                "  {} of {} concurrent {mode} searches failed (statuses {failed:?})",
                failed.len(),
                queries.len()
            );
        }
        modes.push(json!({"mode": mode, "p50_ms": percentile(&latencies, 0.5), "p95_ms": percentile(&latencies, 0.95),
            "p99_ms": percentile(&latencies, 0.99), "qps": answered as f64 / took, "clients": args.concurrency,
            "failed": failed.len()}));
    }

    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let report = json!({
        "machine": {"cores": cores},
        "load": {"messages": loaded, "tenants": tenants.len(), "batch": args.batch, "concurrency": args.concurrency, "seed": args.seed},
        "ingest": {"accepted_s": accepted.as_secs_f64(), "accepted_per_s": loaded / accepted.as_secs_f64(),
                   "searchable_s": searchable.as_secs_f64(), "searchable_per_s": loaded / searchable.as_secs_f64()},
        "search": modes,
    });
    println!(
        "memory bench: {loaded} messages in {} tenant(s), batches of {} at concurrency {}; {cores} cores",
        tenants.len(),
        args.batch,
        args.concurrency
    );
    println!(
        "ingest: accepted in {:.1} s ({:.0} msg/s), searchable in {:.1} s ({:.0} msg/s)",
        accepted.as_secs_f64(),
        loaded / accepted.as_secs_f64(),
        searchable.as_secs_f64(),
        loaded / searchable.as_secs_f64()
    );
    println!("{:<8} {:>8} {:>8} {:>8} {:>10} {:>7}", "mode", "p50 ms", "p95 ms", "p99 ms", "QPS", "failed");
    for m in report["search"].as_array().into_iter().flatten() {
        println!(
            "{:<8} {:>8.1} {:>8.1} {:>8.1} {:>10.0} {:>7}",
            m["mode"].as_str().unwrap_or("?"),
            m["p50_ms"].as_f64().unwrap_or(0.0),
            m["p95_ms"].as_f64().unwrap_or(0.0),
            m["p99_ms"].as_f64().unwrap_or(0.0),
            m["qps"].as_f64().unwrap_or(0.0),
            m["failed"].as_u64().unwrap_or(0)
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
