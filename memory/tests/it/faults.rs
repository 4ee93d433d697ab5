//! The fault suite: steady ingest (REST single and batch, direct NATS publishes) and searches
//! against the real binary, one process per role, while the processes are killed, NATS and
//! Postgres restarted, Redis stopped, the gateway stopped mid-request and the embedding provider
//! (a fake Gemini) throws rate-limit, error, timeout and garbage storms. At the end, every
//! message whose acceptance a client saw is stored once, embedded and found; every refusal was a
//! clean 4xx, 429 or 503; the dead letters are exactly the invalid events; nothing is left
//! unacknowledged; and the circuit breaker opened during the storms and closed after.
//!
//! Quick by default (every fault kind once, a few thousand messages: `scripts/test.sh` runs it).
//! `MEMORY_FAULTS_LONG=1` (`scripts/test.sh --faults-long`) runs until `MEMORY_FAULTS_MESSAGES`
//! (100,000) messages were accepted and `MEMORY_FAULTS_COUNT` (60) faults injected, at random.
//! `MEMORY_FAULTS_SEED` replays a run's choices.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::bus::{Bus, Envelope, NatsBus};
use common::contract::{StreamKind, Subjects};
use common::testing::gemini::{FakeGemini, Fault as Storm};
use common::testing::{Process, free_addr};
use futures::StreamExt as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex as AsyncMutex;
use uuid::Uuid;

use crate::MEMORY;
use crate::servers::{Cluster, Server};

const KEY: &str = "fault-suite-admin-key-0123456789";
const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const EMBEDDERS: usize = 2;

/// Every kind of fault the suite injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    KillEmbedder,
    KillEveryEmbedder,
    KillSearcher,
    KillRetention,
    RestartNats,
    CrashPostgres,
    StopRedis,
    Gemini429,
    Gemini500,
    GeminiTimeout,
    GeminiMalformed,
    StopGateway,
}

const FAULTS: [Fault; 12] = [
    Fault::KillEmbedder,
    Fault::KillEveryEmbedder,
    Fault::KillSearcher,
    Fault::KillRetention,
    Fault::RestartNats,
    Fault::CrashPostgres,
    Fault::StopRedis,
    Fault::Gemini429,
    Fault::Gemini500,
    Fault::GeminiTimeout,
    Fault::GeminiMalformed,
    Fault::StopGateway,
];

struct Settings {
    long: bool,
    /// Accepted messages to reach before the faults stop (long mode).
    messages: usize,
    /// Faults to inject: every kind once in quick mode.
    faults: usize,
    /// Messages sent per second, all clients together.
    rate: f64,
    seed: u64,
}

impl Settings {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        let long = std::env::var("MEMORY_FAULTS_LONG").is_ok_and(|v| v == "1" || v == "true");
        Self {
            long,
            messages: var("MEMORY_FAULTS_MESSAGES").map_or(if long { 100_000 } else { 0 }, |v| v as usize),
            faults: var("MEMORY_FAULTS_COUNT").map_or(if long { 60 } else { FAULTS.len() }, |v| v as usize),
            rate: var("MEMORY_FAULTS_RATE").map_or(if long { 300.0 } else { 100.0 }, |v| v as f64),
            seed: var("MEMORY_FAULTS_SEED").unwrap_or_else(rand::random),
        }
    }
}

/// A role's process, replaced when it is restarted.
struct Role {
    name: &'static str,
    vars: BTreeMap<String, String>,
    process: AsyncMutex<Option<Process>>,
}

impl Role {
    fn new(name: &'static str, vars: BTreeMap<String, String>) -> Self {
        Self { name, vars, process: AsyncMutex::new(None) }
    }

    async fn start(&self) -> anyhow::Result<()> {
        let process = Process::spawn(MEMORY, &[self.name], &self.vars)?;
        *self.process.lock().await = Some(process);
        Ok(())
    }

    async fn kill(&self) -> anyhow::Result<()> {
        if let Some(process) = self.process.lock().await.take() {
            process.signal("KILL").await?;
        }
        Ok(())
    }

    /// SIGTERM, and the exit (the gateway drains what is in flight).
    async fn stop(&self) -> anyhow::Result<()> {
        if let Some(process) = self.process.lock().await.take() {
            process.terminate().await?;
        }
        Ok(())
    }

    fn metrics_addr(&self) -> SocketAddr {
        self.vars["MEMORY_METRICS_ADDR"].parse().expect("a socket address")
    }
}

/// What the clients saw.
#[derive(Default)]
struct Ledger {
    /// Messages a client saw accepted (202, 201, or a JetStream ack), by tenant and id.
    accepted: HashSet<(String, Uuid)>,
    /// Messages sent whose outcome no client learned (the connection dropped), never confirmed.
    unconfirmed: HashSet<(String, Uuid)>,
    /// Invalid events JetStream accepted on the ingest subjects: the dead letters expected.
    invalid_events: HashSet<Uuid>,
    /// Statuses answered, by code.
    statuses: BTreeMap<u16, u64>,
    /// Answers no client should get: a 5xx other than 503, an error without a problem body, a
    /// hang, a dropped connection outside a gateway stop.
    violations: Vec<String>,
    searches: u64,
    /// Connections dropped while the gateway was stopping (allowed).
    dropped_in_gateway_stop: u64,
}

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// How long a client waits for any answer: longer is a hang.
const HANG: Duration = Duration::from_secs(45);

async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<Answer> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nx-api-key: {KEY}\r\n");
        if let Some(body) = body {
            head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        head.push_str(body.unwrap_or_default());
        stream.write_all(head.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").context("no end of head")?;
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).context("no status line")?;
        anyhow::Ok(Answer { status, head: head.to_ascii_lowercase(), body: body.to_owned() })
    };
    tokio::time::timeout(HANG, exchange).await.context("no answer: the request hung")?
}

/// The suite's world: its servers, the binary's processes, and what clients saw.
struct World {
    cluster: Cluster,
    nats: std::sync::Mutex<Server>,
    redis: std::sync::Mutex<Server>,
    gemini: FakeGemini,
    gateway_addr: SocketAddr,
    gateway: Role,
    embedders: Vec<Role>,
    searcher: Role,
    retention: Role,
    subjects: Subjects,
    bus: NatsBus,
    ledger: Mutex<Ledger>,
    /// Set while the gateway is stopping or restarting: dropped connections are expected.
    gateway_down: AtomicBool,
    /// Set when the load should stop.
    stop: AtomicBool,
    /// Set once any embedder's breaker was seen open.
    breaker_opened: AtomicBool,
    /// Messages sent so far (each message's number).
    sent: AtomicU64,
}

impl World {
    /// Records an HTTP outcome, and whether to try again.
    fn record(&self, what: &str, answer: &anyhow::Result<Answer>) -> Retry {
        let mut ledger = self.ledger.lock().expect("ledger");
        match answer {
            Ok(a) => {
                *ledger.statuses.entry(a.status).or_default() += 1;
                let problem = a.head.contains("content-type: application/problem+json");
                match a.status {
                    200..=299 => Retry::No,
                    429 | 503 => {
                        // A batch the bus took no item of answers with each item's problem.
                        let batch = what.ends_with("batch") && a.body.contains("\"results\"");
                        if !problem && !batch {
                            ledger.violations.push(format!("{what}: {} without a problem body", a.status));
                        }
                        if a.status == 503 && !a.head.contains("retry-after:") {
                            ledger.violations.push(format!("{what}: 503 without Retry-After: {}", a.body));
                        }
                        Retry::Yes
                    }
                    400..=499 => {
                        if !problem {
                            ledger.violations.push(format!("{what}: {} without a problem body", a.status));
                        }
                        Retry::No
                    }
                    s => {
                        ledger.violations.push(format!("{what}: {s} {}", a.body.chars().take(300).collect::<String>()));
                        Retry::Yes
                    }
                }
            }
            Err(e) => {
                if self.gateway_down.load(Ordering::SeqCst) {
                    ledger.dropped_in_gateway_stop += 1;
                } else {
                    ledger.violations.push(format!("{what}: {e:#}"));
                }
                Retry::Unknown
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    No,
    Yes,
    /// No answer came: the request may or may not have been taken.
    Unknown,
}

fn message(tenant: &str, id: Uuid, n: u64) -> Value {
    json!({"message_id": id, "tenant_id": tenant, "conversation_id": format!("c{}", n % 7), "role": "user",
           "content": format!("fault suite message {n} token{}", id.simple())})
}

/// Paces a client to `per_second` sends; a client that fell behind (a fault) does not burst.
fn pace(per_second: f64) -> tokio::time::Interval {
    let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every
}

/// Sends a REST request until it gets a final answer (retrying with the same message ids, as a
/// client should); the ids it carried are accepted, or unconfirmed if no try got an answer.
async fn send_until_answered(world: &World, path: &str, body: &Value, ids: &[(String, Uuid)]) {
    let text = body.to_string();
    let mut unknown = false;
    let give_up = Instant::now() + Duration::from_secs(90);
    for attempt in 0.. {
        if Instant::now() > give_up {
            break;
        }
        let answer = http(world.gateway_addr, "POST", path, Some(&text)).await;
        match world.record(path, &answer) {
            Retry::No => {
                let a = answer.expect("answered");
                let mut ledger = world.ledger.lock().expect("ledger");
                if (200..300).contains(&a.status) {
                    // A batch's 207 lists which items were queued.
                    let queued: HashSet<String> = serde_json::from_str::<Value>(&a.body)
                        .ok()
                        .and_then(|b| b["results"].as_array().cloned())
                        .map(|items| {
                            items
                                .iter()
                                .filter(|i| i["status"] == "queued")
                                .filter_map(|i| i["id"].as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    for id in ids {
                        if path.ends_with("batch") && !queued.contains(&id.1.to_string()) {
                            continue;
                        }
                        ledger.unconfirmed.remove(id);
                        ledger.accepted.insert(id.clone());
                    }
                } else if unknown {
                    ledger.unconfirmed.extend(ids.iter().cloned());
                }
                return;
            }
            Retry::Yes => {}
            Retry::Unknown => unknown = true,
        }
        tokio::time::sleep(Duration::from_millis(100 * (attempt + 1).min(10))).await;
    }
    if unknown {
        world.ledger.lock().expect("ledger").unconfirmed.extend(ids.iter().cloned());
    }
}

async fn rest_singles(world: Arc<World>, rng_seed: u64, rate: f64) {
    let mut rng = StdRng::seed_from_u64(rng_seed);
    let mut every = pace(rate);
    while !world.stop.load(Ordering::SeqCst) {
        every.tick().await;
        let n = world.sent.fetch_add(1, Ordering::SeqCst);
        let tenant = TENANTS[rng.random_range(0..TENANTS.len())];
        let id = Uuid::now_v7();
        send_until_answered(&world, "/v1/messages", &message(tenant, id, n), &[(tenant.to_owned(), id)]).await;
        // An invalid message now and then: a 422, never stored.
        if n.is_multiple_of(25) {
            let mut bad = message(tenant, Uuid::now_v7(), n);
            bad["role"] = json!("narrator");
            let answer = http(world.gateway_addr, "POST", "/v1/messages", Some(&bad.to_string())).await;
            world.record("invalid message", &answer);
            if let Ok(a) = &answer
                && a.status != 422
                && a.status != 503
                && a.status != 429
            {
                world.ledger.lock().expect("ledger").violations.push(format!("an invalid message got {}", a.status));
            }
        }
    }
}

async fn rest_batches(world: Arc<World>, rng_seed: u64, rate: f64) {
    let mut rng = StdRng::seed_from_u64(rng_seed);
    let mut every = pace(rate / 10.0);
    while !world.stop.load(Ordering::SeqCst) {
        every.tick().await;
        let tenant = TENANTS[rng.random_range(0..TENANTS.len())];
        let mut items = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..10 {
            let n = world.sent.fetch_add(1, Ordering::SeqCst);
            let id = Uuid::now_v7();
            items.push(message(tenant, id, n));
            ids.push((tenant.to_owned(), id));
        }
        send_until_answered(&world, "/v1/messages/batch", &json!({"messages": items}), &ids).await;
    }
}

async fn nats_publishes(world: Arc<World>, rng_seed: u64, rate: f64) {
    let mut rng = StdRng::seed_from_u64(rng_seed);
    let mut every = pace(rate);
    while !world.stop.load(Ordering::SeqCst) {
        every.tick().await;
        let n = world.sent.fetch_add(1, Ordering::SeqCst);
        let tenant = TENANTS[rng.random_range(0..TENANTS.len())];
        let id = Uuid::now_v7();
        let invalid = n.is_multiple_of(40);
        let mut payload = message(tenant, id, n);
        payload["v"] = json!(1);
        if invalid {
            payload["role"] = json!("narrator");
        }
        let subject = format!("{}.v1.ingest.{tenant}.{id}", world.subjects.prefix());
        let dedup = format!("{tenant}/{id}");
        let mut confirmed = false;
        let give_up = Instant::now() + Duration::from_secs(90);
        for attempt in 0.. {
            if Instant::now() > give_up {
                break;
            }
            let envelope = Envelope::new(subject.clone(), payload.to_string());
            match world.bus.publish(envelope, Some(&dedup)).await {
                Ok(_) => {
                    confirmed = true;
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100 * (attempt + 1).min(10))).await,
            }
        }
        let mut ledger = world.ledger.lock().expect("ledger");
        match (confirmed, invalid) {
            (true, true) => drop(ledger.invalid_events.insert(id)),
            (true, false) => drop(ledger.accepted.insert((tenant.to_owned(), id))),
            (false, _) => ledger.violations.push(format!("a NATS publish of {id} got no ack in 90 s")),
        }
    }
}

async fn searches(world: Arc<World>, rng_seed: u64) {
    let mut rng = StdRng::seed_from_u64(rng_seed);
    while !world.stop.load(Ordering::SeqCst) {
        let tenant = TENANTS[rng.random_range(0..TENANTS.len())];
        let path = format!("/v1/memory/search?tenant_id={tenant}&query=fault%20suite%20message&top_k=5");
        let answer = http(world.gateway_addr, "GET", &path, None).await;
        world.record("search", &answer);
        world.ledger.lock().expect("ledger").searches += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Watches every embedder's breaker gauge: did it open?
async fn watch_breakers(world: Arc<World>) {
    while !world.stop.load(Ordering::SeqCst) {
        for embedder in &world.embedders {
            if breaker_state(embedder.metrics_addr()).await == Some(1) {
                world.breaker_opened.store(true, Ordering::SeqCst);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn breaker_state(addr: SocketAddr) -> Option<i64> {
    let (status, body) = common::testing::http_get(addr, "/metrics").await.ok()?;
    (status == 200).then_some(())?;
    body.lines().find_map(|l| l.strip_prefix("memory_embedder_breaker_state ")).and_then(|v| v.trim().parse().ok())
}

async fn ready(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok((200, _)) = common::testing::http_get(addr, "/readyz").await {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{addr} not ready within 90 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The variables every role of a test shares: its servers, a fresh subject prefix, the gateway's
/// address, loose rate limits, short waits; then `extra`.
fn base_vars(
    database: String,
    nats: String,
    gateway: SocketAddr,
    extra: &[(&str, String)],
) -> (BTreeMap<String, String>, String) {
    let prefix = format!("f{}", &Uuid::now_v7().simple().to_string()[24..]);
    let mut vars = BTreeMap::from([
        ("MEMORY_DATABASE_URL".to_owned(), database),
        ("MEMORY_NATS_URL".to_owned(), nats),
        ("MEMORY_SUBJECT_PREFIX".to_owned(), prefix.clone()),
        ("MEMORY_ADMIN_API_KEY".to_owned(), KEY.to_owned()),
        ("MEMORY_HTTP_ADDR".to_owned(), gateway.to_string()),
        ("MEMORY_EMBEDDER_BATCH_WAIT_MS".to_owned(), "20".to_owned()),
        ("MEMORY_RATE_LIMIT_CLIENT".to_owned(), "1000000/minute".to_owned()),
        ("MEMORY_RATE_LIMIT_TENANT".to_owned(), "1000000/minute".to_owned()),
    ]);
    vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    (vars, prefix)
}

/// Migrates the test's database with `memory migrate`.
async fn migrate(vars: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let migrate = Process::spawn_with_args(MEMORY, &["migrate"], vars)?.output().await?;
    anyhow::ensure!(migrate.status.success(), "memory migrate: {}", String::from_utf8_lossy(&migrate.stderr));
    Ok(())
}

/// A role on `vars`, with a metrics address of its own.
fn role(name: &'static str, vars: &BTreeMap<String, String>) -> anyhow::Result<Role> {
    let mut vars = vars.clone();
    vars.insert("MEMORY_METRICS_ADDR".into(), free_addr()?.to_string());
    Ok(Role::new(name, vars))
}

/// A progress line on stderr, with the time since `started`.
fn note(started: Instant, what: impl std::fmt::Display) {
    eprintln!("fault suite [{:>6.1}s] {what}", started.elapsed().as_secs_f64());
}

/// Injects one fault and takes it back.
async fn inject(world: &World, fault: Fault, rng: &mut StdRng) -> anyhow::Result<()> {
    let hold = Duration::from_millis(rng.random_range(500..3_000));
    let storm = |kind: Storm| async move {
        world.gemini.always(Some(kind));
        tokio::time::sleep(Duration::from_secs(4)).await;
        world.gemini.always(None);
    };
    match fault {
        Fault::KillEmbedder => {
            let embedder = &world.embedders[rng.random_range(0..world.embedders.len())];
            embedder.kill().await?;
            tokio::time::sleep(hold).await;
            embedder.start().await?;
        }
        Fault::KillEveryEmbedder => {
            for embedder in &world.embedders {
                embedder.kill().await?;
            }
            tokio::time::sleep(hold).await;
            for embedder in &world.embedders {
                embedder.start().await?;
            }
        }
        Fault::KillSearcher => {
            world.searcher.kill().await?;
            tokio::time::sleep(hold).await;
            world.searcher.start().await?;
        }
        Fault::KillRetention => {
            world.retention.kill().await?;
            tokio::time::sleep(hold).await;
            world.retention.start().await?;
        }
        Fault::RestartNats => {
            world.nats.lock().expect("nats").kill()?;
            tokio::time::sleep(hold).await;
            world.nats.lock().expect("nats").up()?;
        }
        Fault::CrashPostgres => {
            world.cluster.crash()?;
            tokio::time::sleep(hold).await;
            world.cluster.up()?;
        }
        Fault::StopRedis => {
            world.redis.lock().expect("redis").kill()?;
            tokio::time::sleep(hold).await;
            world.redis.lock().expect("redis").up()?;
        }
        Fault::Gemini429 => storm(Storm::RateLimited { retry_after_secs: Some(1), retry_info: None }).await,
        Fault::Gemini500 => storm(Storm::Status(500)).await,
        Fault::GeminiTimeout => storm(Storm::Delay(Duration::from_secs(3))).await,
        Fault::GeminiMalformed => storm(Storm::Malformed).await,
        Fault::StopGateway => {
            world.gateway_down.store(true, Ordering::SeqCst);
            world.gateway.stop().await?;
            tokio::time::sleep(hold).await;
            world.gateway.start().await?;
            ready(world.gateway_addr).await?;
            world.gateway_down.store(false, Ordering::SeqCst);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_accepted_is_lost_or_duplicated_while_everything_fails() -> anyhow::Result<()> {
    let settings = Settings::from_env();
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(settings.seed);
    println!("fault suite: seed {} ({} mode)", settings.seed, if settings.long { "long" } else { "quick" });

    let cluster = Cluster::start()?;
    let nats = Server::nats()?;
    let redis = Server::redis()?;
    let gemini = FakeGemini::start().await;
    let gateway_addr = free_addr()?;
    let (mut vars, prefix) = base_vars(
        cluster.url(),
        nats.url(),
        gateway_addr,
        &[
            ("MEMORY_REDIS_URL", redis.url()),
            ("MEMORY_DATABASE_MAX_CONNECTIONS", "6".into()),
            ("MEMORY_EMBEDDER_ACK_WAIT_SECS", "10".into()),
            ("MEMORY_SHUTDOWN_GRACE_SECS", "10".into()),
            ("MEMORY_STARTUP_TIMEOUT_SECS", "120".into()),
            ("MEMORY_GEMINI_TIMEOUT_MS", "1000".into()),
            ("MEMORY_GEMINI_MAX_RETRIES", "2".into()),
            ("MEMORY_GEMINI_RETRY_MIN_MS", "50".into()),
            ("MEMORY_GEMINI_RETRY_MAX_MS", "500".into()),
            ("MEMORY_GEMINI_DIMENSIONS", "128".into()),
            ("MEMORY_BREAKER_FAILURES", "3".into()),
            ("MEMORY_BREAKER_COOLDOWN_MS", "1000".into()),
            // No sweeper: what a crash leaves unembedded must be finished by the redelivery itself.
            ("MEMORY_SWEEP_INTERVAL_MS", "86400000".into()),
            ("MEMORY_SWEEP_AFTER_MS", (30 * 86_400_000u64).to_string()),
            ("MEMORY_INGEST_MAX_BYTES", (256 << 20).to_string()),
            ("MEMORY_EVENTS_MAX_BYTES", (256 << 20).to_string()),
            ("MEMORY_DEAD_MAX_BYTES", (16 << 20).to_string()),
        ],
    );
    vars.extend(gemini.vars());
    let config = common::Config::from_map(&vars)?;
    let subjects = Subjects::new(prefix);
    // Migrate once, then start every role.
    migrate(&vars).await?;
    let bus = NatsBus::connect(&config.nats, subjects.clone()).await?;
    let world = Arc::new(World {
        cluster,
        nats: std::sync::Mutex::new(nats),
        redis: std::sync::Mutex::new(redis),
        gemini,
        gateway_addr,
        gateway: role("gateway", &vars)?,
        embedders: (0..EMBEDDERS).map(|_| role("embedder", &vars)).collect::<anyhow::Result<_>>()?,
        searcher: role("searcher", &vars)?,
        retention: role("retention", &vars)?,
        subjects,
        bus,
        ledger: Mutex::default(),
        gateway_down: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        breaker_opened: AtomicBool::new(false),
        sent: AtomicU64::new(0),
    });
    for r in [&world.gateway, &world.searcher, &world.retention].into_iter().chain(&world.embedders) {
        r.start().await?;
        ready(r.metrics_addr()).await.with_context(|| format!("{} did not start", r.name))?;
    }
    ready(gateway_addr).await?;

    // Load, and the breakers watched.
    let mut load = tokio::task::JoinSet::new();
    // A quarter of the rate each: two clients of single messages, one of batches, one on NATS.
    let share = settings.rate / 4.0;
    load.spawn(rest_singles(world.clone(), rng.random(), share));
    load.spawn(rest_singles(world.clone(), rng.random(), share));
    load.spawn(rest_batches(world.clone(), rng.random(), share));
    load.spawn(nats_publishes(world.clone(), rng.random(), share));
    load.spawn(searches(world.clone(), rng.random()));
    let watcher = tokio::spawn(watch_breakers(world.clone()));

    // Faults: every kind once (shuffled) in quick mode; at random in long mode.
    let mut injected = BTreeMap::<Fault, u32>::new();
    let mut order: Vec<Fault> = FAULTS.to_vec();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut n = 0;
    loop {
        let enough_messages = world.ledger.lock().expect("ledger").accepted.len() >= settings.messages;
        if n >= settings.faults && enough_messages {
            break;
        }
        let fault = if n < order.len() { order[n] } else { FAULTS[rng.random_range(0..FAULTS.len())] };
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
        let accepted = world.ledger.lock().expect("ledger").accepted.len();
        note(started, format!("fault {n}: {fault:?} ({accepted} accepted so far)"));
        inject(&world, fault, &mut rng).await.with_context(|| format!("injecting {fault:?}"))?;
        note(started, format!("fault {n}: {fault:?} taken back"));
        *injected.entry(fault).or_default() += 1;
        n += 1;
        if !settings.long && n >= settings.faults {
            // A little steady load after the last fault.
            tokio::time::sleep(Duration::from_secs(3)).await;
            break;
        }
    }
    world.stop.store(true, Ordering::SeqCst);
    note(started, "stopping the load");
    while let Some(done) = load.join_next().await {
        done?;
    }
    watcher.await?;
    note(started, "load stopped; waiting for every accepted message to be embedded");

    // Every accepted message stored once and embedded.
    let pool = sqlx::PgPool::connect(&world.cluster.url()).await?;
    let (accepted, unconfirmed, invalid) = {
        let ledger = world.ledger.lock().expect("ledger");
        (ledger.accepted.clone(), ledger.unconfirmed.clone(), ledger.invalid_events.clone())
    };
    let wait_until = Instant::now() + Duration::from_secs(180);
    let rows: HashMap<(String, Uuid), String> = loop {
        let rows: Vec<(String, Uuid, String)> =
            sqlx::query_as("SELECT tenant_id, id, status FROM messages").fetch_all(&pool).await?;
        let rows: HashMap<(String, Uuid), String> = rows.into_iter().map(|(t, id, s)| ((t, id), s)).collect();
        let missing = accepted.iter().filter(|k| !rows.contains_key(*k)).count();
        let not_embedded = rows.values().filter(|s| *s != "embedded").count();
        if (missing == 0 && not_embedded == 0) || Instant::now() > wait_until {
            note(started, format!("{missing} accepted messages missing, {not_embedded} rows not embedded"));
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let lost: Vec<_> = accepted.iter().filter(|k| !rows.contains_key(*k)).collect();
    let not_embedded: Vec<_> = rows.iter().filter(|(_, s)| *s != "embedded").collect();
    let unexpected: Vec<_> = rows.keys().filter(|k| !accepted.contains(*k) && !unconfirmed.contains(*k)).collect();
    let (count, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT content) FROM messages").fetch_one(&pool).await?;
    let duplicates = count - distinct;
    // One space, and one vector per message in it.
    let spaces: Vec<(i32, bool)> = sqlx::query_as("SELECT id, active FROM embedding_spaces").fetch_all(&pool).await?;
    let active = spaces.iter().find(|(_, a)| *a).map(|(id, _)| *id).context("no active space")?;
    let vectors: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM message_vectors_{active}")))
            .fetch_one(&pool)
            .await?;
    // Dead letters: exactly the invalid events.
    let dead =
        world.bus.jetstream().get_stream(world.subjects.stream(StreamKind::Dead)).await?.cached_info().state.messages;
    let consumer = world.bus.consumer_state(StreamKind::Ingest, world.subjects.embedder_consumer()).await?;
    // Each accepted message is found by its own token (a sample of them in long mode).
    let step = if settings.long { 20 } else { 1 };
    let lookups = accepted.iter().step_by(step).map(|(tenant, id)| {
        let path = format!("/v1/memory/search?tenant_id={tenant}&query=token{}&mode=lexical&top_k=1", id.simple());
        let addr = world.gateway_addr;
        async move {
            let answer = http(addr, "GET", &path, None).await?;
            let body = serde_json::from_str::<Value>(&answer.body).unwrap_or_default();
            let found = body["items"][0]["message_id"].as_str() == Some(id.to_string().as_str());
            anyhow::Ok((!found).then_some(*id))
        }
    });
    let not_found: Vec<Uuid> = futures::stream::iter(lookups)
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    let mut breakers_closed = true;
    for embedder in &world.embedders {
        breakers_closed &= breaker_state(embedder.metrics_addr()).await == Some(0);
    }

    let (violations, statuses, searches, dropped) = {
        let ledger = world.ledger.lock().expect("ledger");
        (ledger.violations.clone(), ledger.statuses.clone(), ledger.searches, ledger.dropped_in_gateway_stop)
    };
    let faults: Vec<String> = injected.iter().map(|(f, n)| format!("{f:?}={n}")).collect();
    println!(
        "fault suite: accepted {} stored {} duplicates {duplicates} lost {} not_embedded {} unconfirmed {} \
         dead_lettered {dead} (invalid sent {}) searches {} 5xx/violations {} dropped_in_gateway_stop {} \
         faults {} [{}] wall {:.0}s seed {}",
        accepted.len(),
        rows.len(),
        lost.len(),
        not_embedded.len(),
        unconfirmed.len(),
        invalid.len(),
        searches,
        violations.len(),
        dropped,
        injected.values().sum::<u32>(),
        faults.join(" "),
        started.elapsed().as_secs_f64(),
        settings.seed,
    );
    println!("fault suite: statuses {statuses:?}");
    assert!(lost.is_empty(), "{} accepted messages lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    assert_eq!(duplicates, 0, "messages stored twice");
    assert!(
        not_embedded.is_empty(),
        "{} not embedded, e.g. {:?}",
        not_embedded.len(),
        &not_embedded[..not_embedded.len().min(5)]
    );
    assert!(unexpected.is_empty(), "stored but never sent: {:?}", &unexpected[..unexpected.len().min(5)]);
    assert_eq!(vectors, rows.len() as i64, "one vector per message in the active space");
    assert_eq!(spaces.len(), 1, "no other space: {spaces:?}");
    assert_eq!(dead, invalid.len() as u64, "the dead letters are exactly the invalid events");
    assert_eq!((consumer.pending, consumer.ack_pending), (0, 0), "{consumer:?}");
    assert!(not_found.is_empty(), "{} accepted messages not found by their token", not_found.len());
    assert!(
        violations.is_empty(),
        "{} bad answers, e.g.:\n{}",
        violations.len(),
        violations[..violations.len().min(10)].join("\n")
    );
    assert!(world.breaker_opened.load(Ordering::SeqCst), "the breaker never opened during the storms");
    assert!(breakers_closed, "a breaker is still open after the storms");
    for r in [&world.gateway, &world.searcher, &world.retention].into_iter().chain(&world.embedders) {
        r.stop().await?;
    }
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn while_postgres_is_down_ingest_queues_up_to_the_stream_limit_then_refuses_and_nothing_is_lost()
-> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let nats = Server::nats()?;
    let gateway_addr = free_addr()?;
    let (vars, prefix) = base_vars(
        cluster.url(),
        nats.url(),
        gateway_addr,
        &[
            ("MEMORY_EMBEDDING_PROVIDER", "hash".into()),
            ("MEMORY_SHUTDOWN_GRACE_SECS", "5".into()),
            // A small queue, a short wait, and few deliveries: an embedder that kept pulling while
            // the database is down would dead-letter what it pulled within seconds.
            ("MEMORY_INGEST_MAX_BYTES", (1 << 20).to_string()),
            ("MEMORY_EVENTS_MAX_BYTES", (16 << 20).to_string()),
            ("MEMORY_DEAD_MAX_BYTES", (4 << 20).to_string()),
            ("MEMORY_HTTP_WAIT_TIMEOUT_MS", "1500".into()),
            ("MEMORY_EMBEDDER_MAX_DELIVERIES", "2".into()),
        ],
    );
    migrate(&vars).await?;
    let (gateway, embedder, searcher) = (role("gateway", &vars)?, role("embedder", &vars)?, role("searcher", &vars)?);
    for r in [&gateway, &embedder, &searcher] {
        r.start().await?;
        ready(r.metrics_addr()).await?;
    }
    let post = |path: &'static str, n: usize| {
        let body = json!({"tenant_id": "acme", "conversation_id": "c", "role": "user",
            "content": format!("backpressure message {n} {}", "padding ".repeat(500))});
        async move { http(gateway_addr, "POST", path, Some(&body.to_string())).await }
    };
    let pool = sqlx::PgPool::connect(&cluster.url()).await?;
    let a = post("/v1/messages?wait=embedded", 0).await?;
    anyhow::ensure!(a.status == 201, "{a:?}");
    pool.close().await;

    // The database goes; the gateway keeps accepting into the stream.
    cluster.crash()?;
    let outage = Instant::now();
    let waited = Instant::now();
    let a = post("/v1/messages?wait=embedded", 1).await?;
    assert_eq!(a.status, 504, "a wait during the outage ends in its timeout: {a:?}");
    assert!(a.body.contains("wait_timeout") && waited.elapsed() < Duration::from_secs(10), "{a:?}");
    let mut accepted = 2;
    let refusal = loop {
        let a = post("/v1/messages", accepted).await?;
        match a.status {
            202 => accepted += 1,
            _ => break a,
        }
        anyhow::ensure!(accepted < 5_000, "the queue never filled");
    };
    assert_eq!(refusal.status, 503, "{refusal:?}");
    assert!(refusal.body.contains("\"code\":\"queue_full\"") && refusal.body.contains("message_id"), "{refusal:?}");
    assert!(refusal.head.contains("retry-after: 10"), "{refusal:?}");
    // Down long enough for three deliveries of what the embedder pulled (a failed insert takes up
    // to the pool's 5 s, then 1 s and 2 s of backoff), had it kept pulling.
    tokio::time::sleep(Duration::from_secs(25).saturating_sub(outage.elapsed())).await;
    cluster.up()?;

    // The backlog drains: every accepted message stored once and embedded, none dead-lettered.
    let pool = sqlx::PgPool::connect(&cluster.url()).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (rows, embedded): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE status = 'embedded') FROM messages")
                .fetch_one(&pool)
                .await?;
        if rows == accepted as i64 && embedded == rows {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{rows} of {accepted} stored, {embedded} embedded");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let subjects = Subjects::new(prefix);
    let config = common::Config::from_map(&vars)?;
    let bus = NatsBus::connect(&config.nats, subjects.clone()).await?;
    let dead = bus.jetstream().get_stream(subjects.stream(StreamKind::Dead)).await?.cached_info().state.messages;
    assert_eq!(dead, 0, "nothing accepted was dead-lettered");
    let a = post("/v1/messages", accepted).await?;
    assert_eq!(a.status, 202, "the queue takes messages again: {a:?}");
    println!("backpressure: {accepted} accepted during a 25 s outage before the 1 MiB queue filled");
    for r in [&gateway, &embedder, &searcher] {
        r.stop().await?;
    }
    pool.close().await;
    Ok(())
}
