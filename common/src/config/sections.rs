//! The parts of [`super::Config`], one per concern, with their defaults.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use super::{RateLimit, Secret};

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `text` or `json` (`MEMORY_LOG_FORMAT`).
    pub format: LogFormat,
    /// An `EnvFilter` directive (`MEMORY_LOG`, default `info`).
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected `text` or `json`".into()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// `MEMORY_NATS_URL`, default `nats://127.0.0.1:4222`: one or more comma-separated server
    /// URLs, which may carry a user and password (hence a secret).
    pub url: Secret,
    /// Credentials given apart from the URL (which then must carry none): `MEMORY_NATS_USER` with
    /// `MEMORY_NATS_PASSWORD`, `MEMORY_NATS_TOKEN`, or `MEMORY_NATS_CREDS_FILE` (a `.creds` file
    /// of a JWT and its NKey seed). At most one of them.
    pub credentials: Option<NatsCredentials>,
    /// `MEMORY_SUBJECT_PREFIX`, default `mem`: one token of `[A-Za-z0-9_-]`.
    pub subject_prefix: String,
    /// Bound on every request/reply and publish acknowledgement (`MEMORY_NATS_REQUEST_TIMEOUT_MS`).
    pub request_timeout: Duration,
    /// Requests each worker role (searcher, retention, query embedding) handles at once
    /// (`MEMORY_NATS_MAX_IN_FLIGHT`, default 64); more are answered `busy` (503 `overloaded`).
    pub max_in_flight: usize,
    /// JetStream's duplicate window on the ingest stream (`MEMORY_INGEST_DEDUP_WINDOW_SECS`).
    pub dedup_window: Duration,
    /// How long events are kept (`MEMORY_EVENTS_MAX_AGE_HOURS`).
    pub events_max_age: Duration,
    /// How long dead letters are kept (`MEMORY_DEAD_MAX_AGE_DAYS`).
    pub dead_max_age: Duration,
    /// Most bytes each stream holds (`MEMORY_INGEST_MAX_BYTES`, default 1 GiB: the backlog an
    /// outage may build; `MEMORY_EVENTS_MAX_BYTES`, 1 GiB; `MEMORY_DEAD_MAX_BYTES`, 256 MiB). A
    /// full ingest stream refuses new messages (the gateway answers 503); full event and
    /// dead-letter streams drop their oldest.
    pub ingest_max_bytes: i64,
    pub events_max_bytes: i64,
    pub dead_max_bytes: i64,
    /// Largest ingest message the stream takes (`MEMORY_INGEST_MAX_MESSAGE_BYTES`, default 1 MiB).
    pub ingest_max_message: i32,
    /// Most messages a tenant's direct publishes may have queued at once
    /// (`MEMORY_INGEST_MAX_PER_TENANT`, default 100 000): beyond it the stream refuses that
    /// tenant's next publish, and no other tenant's. Direct publishers publish on
    /// `mem.v1.ingest.<tenant>`, which the stream caps per subject.
    pub ingest_max_per_tenant: i64,
    /// Copies of each stream a NATS cluster keeps (`MEMORY_NATS_REPLICAS`, 1–5, default 1). With
    /// one server there is one copy; a three-server cluster with 3 survives losing a server.
    pub replicas: usize,
}

/// How a worker authenticates to NATS, when not by the URL.
#[derive(Debug, Clone)]
pub enum NatsCredentials {
    UserPassword { user: String, password: Secret },
    Token(Secret),
    CredsFile(std::path::PathBuf),
}

#[derive(Clone)]
pub struct DatabaseConfig {
    /// `MEMORY_DATABASE_URL`: a `postgres://` URL. Required by every worker.
    pub url: Option<Secret>,
    /// `MEMORY_DATABASE_MAX_CONNECTIONS`, default 10.
    pub max_connections: u32,
    /// Whether a starting worker applies pending migrations (`MEMORY_DATABASE_MIGRATE`, default
    /// true). With `false` it waits for the schema to be current instead, so one step
    /// (`memory migrate`, a Kubernetes Job) migrates and replicas never race to.
    pub migrate: bool,
    /// Longest a statement on a request path (search, reads, keys, settings) may run before
    /// Postgres cancels it (`MEMORY_DATABASE_STATEMENT_TIMEOUT_MS`, default 5 000: the time a
    /// caller waits for a worker). A caller that gave up leaves no query running past it.
    pub statement_timeout: Duration,
    /// The same for lifecycle work over many rows: ingest batches, backfill, retention passes,
    /// deletes, exports (`MEMORY_DATABASE_LONG_STATEMENT_TIMEOUT_SECS`, default 600).
    /// Migrations have none.
    pub long_statement_timeout: Duration,
    /// HNSW's candidate list in vector searches (`hnsw.ef_search`, `MEMORY_SEARCH_EF_SEARCH`,
    /// 1–1000, default 100): every connection starts with it.
    pub ef_search: u32,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url.as_ref().map(|_| "[redacted]"))
            .field("max_connections", &self.max_connections)
            .field("migrate", &self.migrate)
            .field("statement_timeout", &self.statement_timeout)
            .field("long_statement_timeout", &self.long_statement_timeout)
            .field("ef_search", &self.ef_search)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `MEMORY_HTTP_ADDR`, default `127.0.0.1:8080`.
    pub addr: SocketAddr,
    /// Largest request body accepted (`MEMORY_HTTP_BODY_LIMIT_BYTES`, default 1 MiB); larger → 413.
    pub body_limit: usize,
    /// `MEMORY_ADMIN_API_KEY`: required by the gateway, which refuses to start without it.
    pub admin_api_key: Option<Secret>,
    /// Longest `?wait=stored|embedded` wait before a 504 (`MEMORY_HTTP_WAIT_TIMEOUT_MS`).
    pub wait_timeout: Duration,
    /// How long a key lookup is reused (`MEMORY_AUTH_CACHE_TTL_SECS`, 0–3600, default 10): a
    /// revoked key stops working on other gateways within this time.
    pub auth_cache_ttl: Duration,
    /// Longest time a client may take to send a request's headers, and longest idle time of a
    /// kept-alive connection between requests (`MEMORY_HTTP_HEADER_TIMEOUT_MS`, default 10 000):
    /// the connection is closed after it.
    pub header_timeout: Duration,
    /// Longest pause while a request body arrives (`MEMORY_HTTP_BODY_TIMEOUT_MS`, default
    /// 10 000); longer → 408 `body_timeout`.
    pub body_timeout: Duration,
    /// Longest time a request may take before its answer starts (`MEMORY_HTTP_REQUEST_TIMEOUT_MS`,
    /// default 30 000); longer → 504 `request_timeout`. Deletes of conversations and tenants,
    /// tenant erasure, retention runs and imports have 5 minutes.
    pub request_timeout: Duration,
    /// Most open client connections (`MEMORY_HTTP_MAX_CONNECTIONS`, default 4096); more wait
    /// in the listen backlog.
    pub max_connections: usize,
    /// Most API requests handled at once (`MEMORY_HTTP_MAX_IN_FLIGHT`, default 512); more are
    /// shed with 503 `overloaded` and `Retry-After`. Health, readiness and metrics are never shed.
    pub max_in_flight: usize,
    /// The deployment's name for itself (`MEMORY_ENVIRONMENT`, default `local`), shown by
    /// `/v1/admin/health` as the original service's `environment`.
    pub environment: String,
    /// Browser origins allowed to call the API (`MEMORY_ALLOWED_ORIGINS`, or the original's
    /// `ALLOWED_ORIGINS`: comma-separated, or a JSON array; `*` for any). Empty (the default):
    /// no cross-origin calls.
    pub allowed_origins: Vec<String>,
    /// Live event streams and search sockets open at once on one gateway
    /// (`MEMORY_LIVE_MAX_CONNECTIONS`, default 1024); more get 503 `overloaded`.
    pub live_max_connections: usize,
    /// Live connections one tenant may hold open on one gateway (`MEMORY_LIVE_MAX_PER_TENANT`,
    /// default 32); more get 429 `too_many_live_connections`.
    pub live_max_per_tenant: usize,
    /// Events queued for one live connection (`MEMORY_LIVE_BUFFER`, default 256): a client that
    /// falls this far behind is disconnected as a slow consumer, with the reason and the last
    /// event id it was sent, to resume from.
    pub live_buffer: usize,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Where a process serves `/metrics`, `/healthz` and `/readyz` (`MEMORY_METRICS_ADDR`,
    /// default `127.0.0.1:9090`), whatever roles it runs. The gateway also answers them on its
    /// HTTP port.
    pub addr: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct EmbedderConfig {
    /// `MEMORY_EMBEDDING_PROVIDER`: `gemini`, `local` (all-MiniLM-L6-v2 on the CPU) or `hash`
    /// (deterministic feature hashing, for tests and benchmarks). Default `local`.
    pub provider: Provider,
    /// Most messages handled in one batch (`MEMORY_EMBEDDER_BATCH_SIZE`, 1–1000, default 64).
    pub batch_size: usize,
    /// Longest wait to fill a batch (`MEMORY_EMBEDDER_BATCH_WAIT_MS`, default 100).
    pub batch_wait: Duration,
    /// Batches one embedder handles at once (`MEMORY_EMBEDDER_CONCURRENCY`, 1–16, default 2):
    /// while one batch's vectors go into the index, the next is pulled, stored and embedded.
    pub concurrency: usize,
    /// Unacknowledged messages are redelivered after this (`MEMORY_EMBEDDER_ACK_WAIT_SECS`, default 30).
    pub ack_wait: Duration,
    /// Deliveries a message gets before the next one dead-letters it (`MEMORY_EMBEDDER_MAX_DELIVERIES`,
    /// default 20).
    pub max_deliveries: u64,
    pub importance: ImportanceWeights,
    /// Whether an embedder whose space is new backfills it and activates it on its own
    /// (`MEMORY_EMBEDDER_AUTO_BACKFILL`, default true). Otherwise it waits for
    /// `memory reembed`.
    pub auto_backfill: bool,
    /// How often a waiting embedder (its space not active) checks again
    /// (`MEMORY_EMBEDDER_STANDBY_POLL_MS`, default 5000).
    pub standby_poll: Duration,
    pub gemini: GeminiConfig,
    pub local: LocalConfig,
    pub breaker: BreakerConfig,
    pub cache: QueryCacheConfig,
    pub sweeper: SweeperConfig,
}

#[derive(Debug, Clone)]
pub struct GeminiConfig {
    /// `MEMORY_GEMINI_API_KEY`: required with the `gemini` provider (checked by the embedder).
    pub api_key: Option<Secret>,
    /// `MEMORY_GEMINI_MODEL`, default `gemini-embedding-001`.
    pub model: String,
    /// `outputDimensionality` (`MEMORY_GEMINI_DIMENSIONS`, 128–3072, Gemini's range; default 768).
    pub dimensions: u32,
    /// `MEMORY_GEMINI_BASE_URL`, default `https://generativelanguage.googleapis.com/v1beta`.
    pub base_url: String,
    /// Bound on one HTTP call (`MEMORY_GEMINI_TIMEOUT_MS`, default 20000).
    pub timeout: Duration,
    /// Retries of a call after a 429, a 5xx, a timeout or a network error (`MEMORY_GEMINI_MAX_RETRIES`,
    /// 0–10, default 3). 400 and 403 are never retried.
    pub max_retries: usize,
    /// First retry delay (`MEMORY_GEMINI_RETRY_MIN_MS`, default 500); it doubles, with jitter.
    pub retry_min: Duration,
    /// Longest delay slept between retries (`MEMORY_GEMINI_RETRY_MAX_MS`, default 10000). A
    /// `Retry-After` longer than this ends the retries: the batch waits in the stream instead.
    pub retry_max: Duration,
    /// Texts are cut to this many characters before sending, below the model's 2,048-token input
    /// limit (`MEMORY_GEMINI_MAX_CHARS`, default 8000).
    pub max_chars: usize,
}

#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// `MEMORY_MODEL_DIR`: the all-MiniLM-L6-v2 files (`scripts/fetch-model.sh` puts them in
    /// `$MEMORY_CACHE_DIR/models/all-MiniLM-L6-v2`). Required with the `local` provider (checked by
    /// the embedder).
    pub model_dir: Option<std::path::PathBuf>,
    /// Texts per forward pass (`MEMORY_LOCAL_BATCH_SIZE`, 1–256, default 32).
    pub batch_size: usize,
}

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Consecutive failed provider calls that open the circuit (`MEMORY_BREAKER_FAILURES`, default 5).
    pub failures: u32,
    /// How long the circuit stays open before a probe (`MEMORY_BREAKER_COOLDOWN_MS`, default 30000).
    pub cooldown: Duration,
    /// Successful probes that close it again (`MEMORY_BREAKER_SUCCESSES`, default 2).
    pub successes: u32,
}

#[derive(Debug, Clone)]
pub struct QueryCacheConfig {
    /// How long a query vector stays in Redis (`MEMORY_QUERY_CACHE_TTL_SECS`, default 86400).
    pub ttl: Duration,
    /// Query vectors kept in process (`MEMORY_QUERY_CACHE_CAPACITY`, 0–1000000, default 10000; 0 turns
    /// the in-process cache off).
    pub capacity: usize,
}

#[derive(Debug, Clone)]
pub struct SweeperConfig {
    /// How often the sweeper looks for messages left `pending` or `failed`
    /// (`MEMORY_SWEEP_INTERVAL_MS`, default 60000).
    pub interval: Duration,
    /// Only messages stored (or last tried) at least this long ago are swept
    /// (`MEMORY_SWEEP_AFTER_MS`, default 300000).
    pub after: Duration,
    /// Embedding attempts a `failed` message gets in all (`MEMORY_SWEEP_MAX_ATTEMPTS`, default 3).
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Gemini,
    Local,
    Hash,
}

impl FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gemini" => Ok(Self::Gemini),
            "local" => Ok(Self::Local),
            "hash" => Ok(Self::Hash),
            _ => Err("expected `gemini`, `local` or `hash`".into()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SearcherConfig {
    /// Candidates fetched from each retriever per result before re-ranking
    /// (`MEMORY_SEARCH_CANDIDATE_FACTOR`, 1–100, default 10).
    pub candidate_factor: u32,
    /// Candidates each retriever contributes to fusion in lexical and hybrid modes, per result
    /// (`MEMORY_SEARCH_FUSION_WINDOW`, 1–100, default 2: top_k 5 fuses the first 10 of each list).
    pub fusion_window: u32,
    /// The deployment's ranking; a tenant may set its own (`MEMORY_RANK_RELEVANCE_WEIGHT` 0.6,
    /// `MEMORY_RANK_IMPORTANCE_WEIGHT` 0.3, `MEMORY_RANK_RECENCY_WEIGHT` 0.1,
    /// `MEMORY_RANK_DECAY_DAYS` 7, `MEMORY_RANK_RRF_K` 60).
    pub ranking: crate::domain::Ranking,
}

/// Weights of the importance formula at ingest, normalised to sum to 1
/// (`MEMORY_IMPORTANCE_RECENCY_WEIGHT` 0.4, `MEMORY_IMPORTANCE_ROLE_WEIGHT` 0.2,
/// `MEMORY_IMPORTANCE_EXPLICIT_WEIGHT` 0.4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImportanceWeights {
    pub recency: f64,
    pub role: f64,
    pub explicit: f64,
}

impl Default for ImportanceWeights {
    fn default() -> Self {
        Self { recency: 0.4, role: 0.2, explicit: 0.4 }
    }
}

impl ImportanceWeights {
    /// The weights scaled to sum to 1.
    pub fn normalised(&self) -> Self {
        let sum = self.recency + self.role + self.explicit;
        Self { recency: self.recency / sum, role: self.role / sum, explicit: self.explicit / sum }
    }
}

/// The retention service.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// The default policy (`MEMORY_RETENTION_ARCHIVE_AFTER_DAYS` 30,
    /// `MEMORY_RETENTION_ARCHIVE_BELOW_IMPORTANCE` 0.3, `MEMORY_RETENTION_MAX_AGE_DAYS` off,
    /// `MEMORY_RETENTION_DELETE_ARCHIVED_AFTER_DAYS` 90, `MEMORY_RETENTION_MAX_MESSAGES_PER_CONVERSATION`
    /// off; 0 turns a rule off).
    pub policy: crate::domain::RetentionPolicy,
    /// When scheduled runs start: a cron expression with seconds (`MEMORY_RETENTION_SCHEDULE`,
    /// default `0 0 * * * *`, hourly).
    pub schedule: String,
    /// Messages archived or deleted per statement (`MEMORY_RETENTION_BATCH_SIZE`, 1–100000, default 1000).
    pub batch_size: u32,
}

/// The gateway's rate limits (GCRA: `count` requests per `period`, bursts of up to `count`).
#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    /// Per client: an API key, or the IP of an unauthenticated request
    /// (`MEMORY_RATE_LIMIT_CLIENT`, default `200/minute`).
    pub client: RateLimit,
    /// Per tenant, over all its keys (`MEMORY_RATE_LIMIT_TENANT`, default `120/minute`); a tenant
    /// may get its own.
    pub tenant: RateLimit,
}
