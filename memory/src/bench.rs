//! `memory bench`: loads a running deployment as a user would and measures it: ingest until
//! searchable (REST batches, and with `--nats` direct publishing to the ingest stream), then search
//! latency with one client and throughput with several, per mode. Deterministic: the same seed
//! sends the same messages and queries.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use common::contract::Subjects;
use common::domain::{MessageId, TenantId};
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
    /// Messages per batch request (and per group of direct publishes).
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
    /// Publish the second half of each tenant's messages straight to the ingest stream through
    /// this NATS server (`nats://user:password@host:4222`), timed on its own.
    #[arg(long)]
    nats: Option<String>,
    /// The deployment's subject prefix (`MEMORY_SUBJECT_PREFIX`).
    #[arg(long, default_value = "mem")]
    subject_prefix: String,
    /// Names the tenants `<run>-t<i>` (default: from the seed and the time).
    #[arg(long)]
    run: Option<String>,
    /// Loads nothing: searches the tenants an earlier run with the same `--run` loaded.
    #[arg(long, requires = "run")]
    skip_load: bool,
    /// While loading, one client searches (hybrid) in a loop, timed on its own: ingest under
    /// search traffic, as in production.
    #[arg(long)]
    search_while_loading: bool,
    /// The search modes to time, comma-separated; recall is measured when `vector` is among them.
    #[arg(long, value_delimiter = ',', default_value = "hybrid,vector,lexical",
          value_parser = ["hybrid", "vector", "lexical"])]
    modes: Vec<String>,
}

const SPEAKERS: [&str; 8] = ["Ana", "Bruno", "Chen", "Dara", "Emeka", "Freya", "Goran", "Hana"];
/// The commonest content words (the head of the vocabulary).
const TOPICS: [&str; 48] = [
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
/// Made-up words after the topics are spelled from these.
const SYLLABLES: [&str; 20] = [
    "ka", "lo", "mi", "ren", "to", "sa", "vel", "dor", "an", "pe", "ri", "mo", "na", "bel", "tra", "gon", "fi", "lu",
    "zen", "co",
];
/// Content words in the vocabulary.
const VOCABULARY: usize = 5_000;
const FILLER: [&str; 16] =
    ["the", "a", "is", "on", "for", "we", "my", "and", "to", "it", "was", "next", "will", "about", "with", "our"];

/// The words messages and queries are made of: a Zipf-like law over the vocabulary (weight
/// 1 / (rank + 10)), so that a few words are in many messages and most are in few, as in chat.
struct Corpus {
    words: Vec<String>,
    cumulative: Vec<f64>,
}

impl Corpus {
    fn new() -> Self {
        let mut words: Vec<String> = TOPICS.iter().map(|w| (*w).to_owned()).collect();
        let base = SYLLABLES.len();
        for i in 0..VOCABULARY - TOPICS.len() {
            // The digits of a number of at least three in base 20, one syllable each.
            let (mut n, mut word) = (i + base * base, String::new());
            while n > 0 {
                word.push_str(SYLLABLES[n % base]);
                n /= base;
            }
            words.push(word);
        }
        let mut total = 0.0;
        let cumulative = (0..words.len())
            .map(|rank| {
                total += 1.0 / (rank as f64 + 10.0);
                total
            })
            .collect();
        Self { words, cumulative }
    }

    fn word(&self, rng: &mut StdRng) -> &str {
        let x = rng.random::<f64>() * self.cumulative.last().copied().unwrap_or(1.0);
        &self.words[self.cumulative.partition_point(|c| *c < x).min(self.words.len() - 1)]
    }

    /// `words` words, every third a content word.
    fn sentence(&self, rng: &mut StdRng, words: usize) -> String {
        (0..words)
            .map(|i| if i % 3 == 1 { self.word(rng) } else { FILLER.choose(rng).copied().unwrap_or("so") })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The messages of one tenant: conversations of alternating user and assistant turns, the
    /// users named, lengths from a few words to a paragraph.
    fn messages(&self, rng: &mut StdRng, tenant: &str, count: usize) -> Vec<Value> {
        (0..count)
            .map(|i| {
                let conversation = format!("c{}", i / 20);
                let user = i % 2 == 0;
                let length = if rng.random_bool(0.2) { rng.random_range(40..120) } else { rng.random_range(6..30) };
                let mut message = json!({"tenant_id": tenant, "conversation_id": conversation,
                    "role": if user { "user" } else { "assistant" }, "content": self.sentence(rng, length)});
                if user {
                    message["name"] = json!(SPEAKERS[(i / 20) % SPEAKERS.len()]);
                }
                message
            })
            .collect()
    }
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

    async fn embedded(&self, tenant: &str, id: &str) -> anyhow::Result<bool> {
        let (_, body) = self.send(reqwest::Method::GET, &format!("/v1/messages/{id}?tenant_id={tenant}"), None).await?;
        Ok(body["status"] == "embedded")
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted.get(((sorted.len().max(1) - 1) as f64 * p).round() as usize).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// One tenant's group of messages, sent together; and the id of its last message once sent.
type Batch = (String, Vec<Value>);
type Sent = (String, String);

/// How one load went.
struct Phase {
    via: &'static str,
    messages: usize,
    accepted: Duration,
    searchable: Duration,
    /// Searches made meanwhile (`--search-while-loading`): latencies sorted, and failures.
    searches: Option<(Vec<Duration>, usize)>,
}

impl Phase {
    fn json(&self) -> Value {
        let n = self.messages as f64;
        let searches = self.searches.as_ref().map(|(l, failed)| {
            json!({"searches": l.len(), "failed": failed, "p50_ms": percentile(l, 0.5), "p95_ms": percentile(l, 0.95),
                   "p99_ms": percentile(l, 0.99)})
        });
        json!({"via": self.via, "messages": self.messages,
               "accepted_s": self.accepted.as_secs_f64(), "accepted_per_s": n / self.accepted.as_secs_f64(),
               "searchable_s": self.searchable.as_secs_f64(), "searchable_per_s": n / self.searchable.as_secs_f64(),
               "searches_meanwhile": searches})
    }
}

/// Sends the batches through REST, `concurrency` at a time.
async fn send_rest(client: &Client, batches: &[Batch], concurrency: usize) -> anyhow::Result<Vec<Sent>> {
    let requests = futures::stream::iter(batches.iter().map(|(tenant, items)| async move {
        let (status, body) =
            client.send(reqwest::Method::POST, "/v1/messages/batch", Some(&json!({"messages": items}))).await?;
        ensure!(status == 201, "a batch was answered {status}: {body}");
        let last = body["results"].as_array().and_then(|r| r.last()).and_then(|r| r["id"].as_str()).map(str::to_owned);
        anyhow::Ok((tenant.clone(), last.context("a batch answer without ids")?))
    }))
    .buffered(concurrency);
    in_order(requests, batches.len(), "batches accepted").await
}

/// The sends' outcomes in the order sent, with progress every hundred; the first failure stops them.
async fn in_order(
    sends: impl futures::Stream<Item = anyhow::Result<Sent>>,
    total: usize,
    done: &str,
) -> anyhow::Result<Vec<Sent>> {
    let mut sends = std::pin::pin!(sends);
    let mut sent = Vec::with_capacity(total);
    while let Some(result) = sends.next().await {
        sent.push(result?);
        if sent.len() % 100 == 0 {
            eprintln!("  {} of {total} {done}", sent.len());
        }
    }
    Ok(sent)
}

/// Publishes the batches straight to the ingest stream, each message with its id and a
/// deduplicating `Nats-Msg-Id`; a group's acks are awaited together, `concurrency` groups at a time.
async fn send_nats(url: &str, subjects: &Subjects, batches: &[Batch], concurrency: usize) -> anyhow::Result<Vec<Sent>> {
    let client = async_nats::connect(url).await.with_context(|| format!("connecting to NATS at {url}"))?;
    let stream = async_nats::jetstream::new(client);
    let stream = &stream;
    let groups = futures::stream::iter(batches.iter().map(|(tenant, items)| async move {
        let tenant_id = TenantId::parse(tenant.as_str()).context("a bench tenant id")?;
        let mut acks = Vec::with_capacity(items.len());
        let mut last = None;
        for item in items {
            let id = MessageId(uuid::Uuid::now_v7());
            let mut event = item.clone();
            event["v"] = json!(1);
            event["message_id"] = json!(id.to_string());
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{tenant}/{id}").as_str());
            let payload = serde_json::to_vec(&event)?;
            acks.push(stream.publish_with_headers(subjects.ingest(&tenant_id, id), headers, payload.into()).await?);
            last = Some(id.to_string());
        }
        for ack in acks {
            ack.await.context("the ingest stream refused a message (is the stream full?)")?;
        }
        anyhow::Ok((tenant.clone(), last.context("an empty group")?))
    }))
    .buffered(concurrency);
    in_order(groups, batches.len(), "groups published").await
}

/// Waits until the last message of every batch is embedded. Batches become searchable about in
/// the order they were sent, so only the oldest few are asked about at a time, which keeps the
/// polling from loading the deployment.
async fn until_searchable(client: &Client, sent: Vec<Sent>, started: Instant) -> anyhow::Result<Duration> {
    const ASKED: usize = 4;
    let total = sent.len();
    let mut pending: VecDeque<Sent> = sent.into();
    let mut shown = Instant::now();
    while !pending.is_empty() {
        let front: Vec<Sent> = pending.iter().take(ASKED).cloned().collect();
        let answers = futures::future::join_all(front.iter().map(|(t, id)| client.embedded(t, id))).await;
        let mut done = Vec::new();
        for (sent, answer) in front.into_iter().zip(answers) {
            if answer? {
                done.push(sent);
            }
        }
        pending.retain(|s| !done.contains(s));
        if done.len() < ASKED.min(total) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if shown.elapsed() > Duration::from_secs(5) {
            eprintln!("  {} of {total} batches searchable", total - pending.len());
            shown = Instant::now();
        }
        ensure!(started.elapsed() < Duration::from_secs(3 * 3600), "not searchable after three hours");
    }
    Ok(started.elapsed())
}

/// Loads `batches` one way, timing until accepted and until searchable; with
/// `--search-while-loading`, searching meanwhile.
async fn load(
    client: &Client,
    args: &BenchArgs,
    via: &'static str,
    batches: &[Batch],
    queries: &[String],
) -> anyhow::Result<Phase> {
    if !args.search_while_loading {
        return load_only(client, args, via, batches).await;
    }
    let loaded = AtomicBool::new(false);
    let tenants: Vec<String> = batches.iter().map(|(t, _)| t.clone()).collect();
    let (phase, searches) = tokio::join!(
        async {
            let phase = load_only(client, args, via, batches).await;
            loaded.store(true, Ordering::Relaxed);
            phase
        },
        async {
            let (mut latencies, mut failed) = (Vec::new(), 0);
            for i in (0..queries.len()).cycle() {
                if loaded.load(Ordering::Relaxed) {
                    break;
                }
                let path = search_path(&tenants[i % tenants.len()], &queries[i], 5, "hybrid");
                let at = Instant::now();
                match client.send(reqwest::Method::GET, &path, None).await {
                    Ok((200, _)) => latencies.push(at.elapsed()),
                    _ => failed += 1,
                }
            }
            latencies.sort();
            (latencies, failed)
        }
    );
    Ok(Phase { searches: Some(searches), ..phase? })
}

async fn load_only(client: &Client, args: &BenchArgs, via: &'static str, batches: &[Batch]) -> anyhow::Result<Phase> {
    let messages = batches.iter().map(|(_, b)| b.len()).sum();
    eprintln!("loading {messages} messages in {} groups through {via}…", batches.len());
    let started = Instant::now();
    let sent = match &args.nats {
        Some(url) if via == "nats" => {
            send_nats(url, &Subjects::new(args.subject_prefix.clone()), batches, args.concurrency).await?
        }
        _ => send_rest(client, batches, args.concurrency).await?,
    };
    let accepted = started.elapsed();
    let searchable = until_searchable(client, sent, started).await?;
    Ok(Phase { via, messages, accepted, searchable, searches: None })
}

/// The REST path of a search for `query` (words of the bench's vocabulary, so spaces are the
/// only characters to escape) in `tenant`.
fn search_path(tenant: &str, query: &str, top_k: usize, mode: &str) -> String {
    let q = query.split(' ').collect::<Vec<_>>().join("%20");
    format!("/v1/memory/search?tenant_id={tenant}&query={q}&top_k={top_k}&mode={mode}")
}

/// Times the searches per mode: one client in turn, then `concurrency` clients.
async fn search(
    client: &Client,
    args: &BenchArgs,
    tenants: &[String],
    queries: &[String],
) -> anyhow::Result<Vec<Value>> {
    let mut modes = Vec::new();
    for mode in args.modes.iter().map(String::as_str) {
        eprintln!("searching ({mode})…");
        let path = |i: usize| search_path(&tenants[i % tenants.len()], &queries[i], 5, mode);
        let mut latencies = Vec::with_capacity(queries.len());
        for i in 0..queries.len() {
            let at = Instant::now();
            let (status, body) = client.send(reqwest::Method::GET, &path(i), None).await?;
            ensure!(status == 200, "a {mode} search was answered {status}: {body}");
            latencies.push(at.elapsed());
        }
        latencies.sort();
        let at = Instant::now();
        let statuses: Vec<u16> = futures::stream::iter((0..queries.len()).map(|i| {
            let path = path(i);
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
    Ok(modes)
}

/// Queries the recall phase asks, at most.
const RECALL_QUERIES: usize = 100;
/// Results compared per query in the recall phase.
const RECALL_K: usize = 10;
/// Similarities this close count as equal in the recall phase.
const RECALL_TIE: f64 = 1e-6;

/// How long searchers reuse a tenant's ranking (the searcher's `RANKING_CACHE`), and a margin.
const RANKING_REREAD: Duration = Duration::from_secs(6);

/// Recall@10 of vector search against the same search over an exact scan of the tenant's vectors
/// (`exact=true`, which the operator key may ask for): the share of the exact results the index
/// found, averaged over the queries. The bench tenants rank by similarity alone meanwhile (their
/// own ranking, removed afterwards), so the ten compared are the ten nearest of each list.
async fn recall(client: &Client, tenants: &[String], queries: &[String]) -> anyhow::Result<Value> {
    eprintln!("measuring vector recall against exact search (ranking by similarity alone)…");
    let similarity_only = json!({"relevance_weight": 1.0, "importance_weight": 0.0, "recency_weight": 0.0});
    for tenant in tenants {
        let path = format!("/v1/tenants/{tenant}/ranking");
        let (status, body) = client.send(reqwest::Method::PUT, &path, Some(&similarity_only)).await?;
        ensure!(status == 200, "setting {tenant}'s ranking was answered {status}: {body}");
    }
    tokio::time::sleep(RANKING_REREAD).await;
    let measured = recall_queries(client, tenants, queries).await;
    for tenant in tenants {
        let path = format!("/v1/tenants/{tenant}/ranking");
        let (status, body) = client.send(reqwest::Method::DELETE, &path, None).await?;
        ensure!(status == 204, "removing {tenant}'s ranking was answered {status}: {body}");
    }
    measured
}

async fn recall_queries(client: &Client, tenants: &[String], queries: &[String]) -> anyhow::Result<Value> {
    let similarities = |body: &Value| -> Vec<f64> {
        body["items"].as_array().into_iter().flatten().filter_map(|h| h["similarity"].as_f64()).collect()
    };
    let (mut sum, mut asked) = (0.0, 0);
    for (i, query) in queries.iter().take(RECALL_QUERIES).enumerate() {
        let path = search_path(&tenants[i % tenants.len()], query, RECALL_K, "vector");
        let (status, approximate) = client.send(reqwest::Method::GET, &path, None).await?;
        ensure!(status == 200, "a vector search was answered {status}: {approximate}");
        let (status, exact) = client.send(reqwest::Method::GET, &format!("{path}&exact=true"), None).await?;
        ensure!(status == 200, "an exact vector search was answered {status}: {exact}");
        // A hit counts when it is as near as the exact list's last (ties are common: any of
        // several equally near messages may take the last places), as ann-benchmarks counts.
        let truth = similarities(&exact);
        if let Some(last) = truth.last() {
            let found = similarities(&approximate).iter().filter(|s| **s >= last - RECALL_TIE).count();
            sum += found.min(truth.len()) as f64 / truth.len() as f64;
            asked += 1;
        }
    }
    Ok(json!({"k": RECALL_K, "queries": asked, "recall": (asked > 0).then(|| sum / asked as f64)}))
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
    let corpus = Corpus::new();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let run =
        args.run.clone().unwrap_or_else(|| format!("bench-{}-{}", args.seed, chrono::Utc::now().format("%H%M%S")));
    let tenants: Vec<String> = (0..args.tenants).map(|t| format!("{run}-t{t}")).collect();
    let per_tenant = args.messages.div_ceil(args.tenants);

    // Queries come from a generator of their own: the messages are the same with or without them.
    let mut query_rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let queries: Vec<String> = (0..args.queries)
        .map(|_| {
            let words = query_rng.random_range(2..7);
            corpus.sentence(&mut query_rng, words)
        })
        .collect();
    let mut phases = Vec::new();
    if !args.skip_load {
        // Each tenant's conversations in order; with --nats, their second half goes that way.
        let (mut rest, mut nats) = (Vec::new(), Vec::new());
        for tenant in &tenants {
            let mut messages = corpus.messages(&mut rng, tenant, per_tenant);
            let direct = if args.nats.is_some() { messages.split_off(per_tenant / 2) } else { Vec::new() };
            rest.extend(messages.chunks(args.batch).map(|c| (tenant.clone(), c.to_vec())));
            nats.extend(direct.chunks(args.batch).map(|c| (tenant.clone(), c.to_vec())));
        }
        phases.push(load(&client, &args, "rest", &rest, &queries).await?);
        if !nats.is_empty() {
            phases.push(load(&client, &args, "nats", &nats, &queries).await?);
        }
    }

    let modes = search(&client, &args, &tenants, &queries).await?;
    let recall =
        if args.modes.iter().any(|m| m == "vector") { recall(&client, &tenants, &queries).await? } else { Value::Null };

    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let loaded: usize = phases.iter().map(|p| p.messages).sum();
    let report = json!({
        "machine": {"cores": cores},
        "load": {"messages": loaded, "tenants": tenants.len(), "per_tenant": per_tenant, "batch": args.batch,
                 "concurrency": args.concurrency, "seed": args.seed, "run": run},
        "ingest": phases.iter().map(Phase::json).collect::<Vec<_>>(),
        "search": modes,
        "vector_recall": recall,
    });
    println!(
        "memory bench: {per_tenant} messages in each of {} tenant(s) (run {run}), batches of {} at concurrency {}; {cores} cores",
        tenants.len(),
        args.batch,
        args.concurrency
    );
    if phases.is_empty() {
        println!("ingest: skipped (--skip-load)");
    }
    for p in &phases {
        println!(
            "ingest via {}: {} messages accepted in {:.1} s ({:.0} msg/s), searchable in {:.1} s ({:.0} msg/s)",
            p.via,
            p.messages,
            p.accepted.as_secs_f64(),
            p.messages as f64 / p.accepted.as_secs_f64(),
            p.searchable.as_secs_f64(),
            p.messages as f64 / p.searchable.as_secs_f64()
        );
        if let Some((latencies, failed)) = &p.searches {
            println!(
                "  meanwhile {} hybrid searches, one client: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms; {failed} failed",
                latencies.len(),
                percentile(latencies, 0.5),
                percentile(latencies, 0.95),
                percentile(latencies, 0.99)
            );
        }
    }
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
    if let Some(r) = report["vector_recall"]["recall"].as_f64() {
        println!(
            "vector recall@{RECALL_K} against an exact scan: {r:.3} ({} queries)",
            report["vector_recall"]["queries"]
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
