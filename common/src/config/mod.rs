//! Typed configuration from `MEMORY_*` environment variables. Read through a lookup function so
//! tests pass a map; every problem is collected and reported together, naming the variable.

mod rate;
mod sections;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

pub use rate::RateLimit;
pub use sections::*;

/// Everything a worker may need. Each binary reads only its parts; parts a binary needs but
/// which have no safe default (the database URL, the admin key) are checked by that binary.
#[derive(Debug, Clone)]
pub struct Config {
    pub log: LogConfig,
    pub nats: NatsConfig,
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub metrics: MetricsConfig,
    pub embedder: EmbedderConfig,
    pub searcher: SearcherConfig,
    /// `MEMORY_REDIS_URL`: a `redis://` URL, for rate limits (gateway) and the query-vector
    /// cache (embedder). Optional: without it both work in process only.
    pub redis_url: Option<Secret>,
    pub rate_limit: RateLimitConfig,
    pub retention: RetentionConfig,
    /// How long a stopping worker may take to finish its in-flight work (`MEMORY_SHUTDOWN_GRACE_SECS`).
    pub shutdown_grace: Duration,
    /// How long a starting worker keeps retrying unreachable Postgres and NATS before giving up
    /// (`MEMORY_STARTUP_TIMEOUT_SECS`, default 60; 0 tries once).
    pub startup_timeout: Duration,
}

/// A value that never appears in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Every configuration problem found, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

impl ConfigError {
    pub fn one(message: impl Into<String>) -> Self {
        Self(vec![message.into()])
    }
}

struct Vars<F> {
    get: F,
    errors: Vec<String>,
}

impl<F: Fn(&str) -> Option<String>> Vars<F> {
    fn raw(&self, name: &str) -> Option<String> {
        (self.get)(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    fn parse_or<T: FromStr>(&mut self, name: &str, default: T) -> T
    where
        T::Err: fmt::Display,
    {
        match self.raw(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|e| {
                self.errors.push(format!("{name}={v:?}: {e}"));
                default
            }),
        }
    }

    /// [`Self::parse_or`] of `name`, or else of the first of `aliases` that is set (the original
    /// service's names for the same setting). Two of them set to different values is an error.
    fn parse_aliased_or<T: FromStr>(&mut self, name: &str, aliases: &[&str], default: T) -> T
    where
        T::Err: fmt::Display,
    {
        let set: Vec<(&str, String)> =
            std::iter::once(name).chain(aliases.iter().copied()).filter_map(|n| self.raw(n).map(|v| (n, v))).collect();
        if let Some((other, value)) = set.iter().skip(1).find(|(_, v)| *v != set[0].1) {
            self.errors
                .push(format!("{}={:?} and {other}={value:?} name the same setting: set one", set[0].0, set[0].1));
            return default;
        }
        match set.first() {
            Some((first, _)) => self.parse_or(first, default),
            None => default,
        }
    }

    fn ranged<T: FromStr + PartialOrd + fmt::Display + Copy>(&mut self, name: &str, default: T, min: T, max: T) -> T
    where
        T::Err: fmt::Display,
    {
        let v = self.parse_or(name, default);
        if v < min || v > max {
            self.errors.push(format!("{name}={v}: must be between {min} and {max}"));
            return default;
        }
        v
    }

    fn millis(&mut self, name: &str, default: u64, min: u64, max: u64) -> Duration {
        Duration::from_millis(self.ranged(name, default, min, max))
    }

    fn secs(&mut self, name: &str, default: u64, min: u64, max: u64) -> Duration {
        Duration::from_secs(self.ranged(name, default, min, max))
    }

    fn secret(&mut self, name: &str) -> Option<Secret> {
        self.raw(name).map(Secret)
    }

    fn nats_credentials(&mut self) -> Option<NatsCredentials> {
        let (user, password) = (self.raw("MEMORY_NATS_USER"), self.secret("MEMORY_NATS_PASSWORD"));
        let (token, file) = (self.secret("MEMORY_NATS_TOKEN"), self.raw("MEMORY_NATS_CREDS_FILE"));
        let given = [user.is_some() || password.is_some(), token.is_some(), file.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            self.errors.push(
                "give NATS credentials one way: MEMORY_NATS_USER and MEMORY_NATS_PASSWORD, MEMORY_NATS_TOKEN, or MEMORY_NATS_CREDS_FILE"
                    .into(),
            );
            return None;
        }
        match (user, password, token, file) {
            (Some(user), Some(password), _, _) => Some(NatsCredentials::UserPassword { user, password }),
            (Some(_), None, _, _) | (None, Some(_), _, _) => {
                self.errors.push("MEMORY_NATS_USER and MEMORY_NATS_PASSWORD go together".into());
                None
            }
            (_, _, Some(token), _) => Some(NatsCredentials::Token(token)),
            (_, _, _, Some(file)) => Some(NatsCredentials::CredsFile(file.into())),
            _ => None,
        }
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads from any lookup, e.g. a map in tests.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut v = Vars { get, errors: Vec::new() };
        let config = Config {
            log: LogConfig {
                format: v.parse_or("MEMORY_LOG_FORMAT", LogFormat::Text),
                filter: v.raw("MEMORY_LOG").unwrap_or_else(|| "info".into()),
            },
            nats: NatsConfig {
                url: Secret(v.raw("MEMORY_NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".into())),
                credentials: v.nats_credentials(),
                subject_prefix: v.raw("MEMORY_SUBJECT_PREFIX").unwrap_or_else(|| "mem".into()),
                request_timeout: v.millis("MEMORY_NATS_REQUEST_TIMEOUT_MS", 5_000, 10, 600_000),
                max_in_flight: v.ranged("MEMORY_NATS_MAX_IN_FLIGHT", 64, 1, 100_000),
                dedup_window: v.secs("MEMORY_INGEST_DEDUP_WINDOW_SECS", 120, 1, 7 * 86_400),
                events_max_age: Duration::from_secs(3600 * v.ranged("MEMORY_EVENTS_MAX_AGE_HOURS", 24, 1, 24 * 365)),
                dead_max_age: Duration::from_secs(86_400 * v.ranged("MEMORY_DEAD_MAX_AGE_DAYS", 30, 1, 3650)),
                replicas: v.ranged("MEMORY_NATS_REPLICAS", 1, 1, 5),
                ingest_max_bytes: v.ranged("MEMORY_INGEST_MAX_BYTES", 1 << 30, 1 << 20, 1 << 50),
                events_max_bytes: v.ranged("MEMORY_EVENTS_MAX_BYTES", 1 << 30, 1 << 20, 1 << 50),
                dead_max_bytes: v.ranged("MEMORY_DEAD_MAX_BYTES", 256 << 20, 1 << 20, 1 << 50),
                ingest_max_message: v.ranged("MEMORY_INGEST_MAX_MESSAGE_BYTES", 1 << 20, 64 << 10, 64 << 20),
                ingest_max_per_tenant: v.ranged("MEMORY_INGEST_MAX_PER_TENANT", 100_000, 1, 1 << 40),
            },
            database: DatabaseConfig {
                url: v.secret("MEMORY_DATABASE_URL"),
                max_connections: v.ranged("MEMORY_DATABASE_MAX_CONNECTIONS", 10, 1, 1000),
                migrate: v.parse_or("MEMORY_DATABASE_MIGRATE", true),
                statement_timeout: v.millis("MEMORY_DATABASE_STATEMENT_TIMEOUT_MS", 5_000, 10, 3_600_000),
                long_statement_timeout: v.secs("MEMORY_DATABASE_LONG_STATEMENT_TIMEOUT_SECS", 600, 1, 86_400),
                ef_search: v.ranged("MEMORY_SEARCH_EF_SEARCH", 100, 1, 1000),
            },
            http: HttpConfig {
                addr: v.parse_or("MEMORY_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080))),
                body_limit: v.ranged("MEMORY_HTTP_BODY_LIMIT_BYTES", 1 << 20, 1024, 1 << 30),
                admin_api_key: v.secret("MEMORY_ADMIN_API_KEY"),
                wait_timeout: v.millis("MEMORY_HTTP_WAIT_TIMEOUT_MS", 10_000, 10, 300_000),
                auth_cache_ttl: v.secs("MEMORY_AUTH_CACHE_TTL_SECS", 10, 0, 3600),
                header_timeout: v.millis("MEMORY_HTTP_HEADER_TIMEOUT_MS", 10_000, 10, 600_000),
                body_timeout: v.millis("MEMORY_HTTP_BODY_TIMEOUT_MS", 10_000, 10, 600_000),
                request_timeout: v.millis("MEMORY_HTTP_REQUEST_TIMEOUT_MS", 30_000, 10, 600_000),
                max_connections: v.ranged("MEMORY_HTTP_MAX_CONNECTIONS", 4096, 1, 1_000_000),
                max_in_flight: v.ranged("MEMORY_HTTP_MAX_IN_FLIGHT", 512, 1, 1_000_000),
                environment: v.parse_or("MEMORY_ENVIRONMENT", "local".to_owned()),
                allowed_origins: v
                    .parse_aliased_or("MEMORY_ALLOWED_ORIGINS", &["ALLOWED_ORIGINS"], Origins::default())
                    .0,
                live_max_connections: v.ranged("MEMORY_LIVE_MAX_CONNECTIONS", 1024, 1, 1_000_000),
                live_max_per_tenant: v.ranged("MEMORY_LIVE_MAX_PER_TENANT", 32, 1, 1_000_000),
                live_buffer: v.ranged("MEMORY_LIVE_BUFFER", 256, 1, 1_000_000),
            },
            metrics: MetricsConfig {
                addr: v.parse_or("MEMORY_METRICS_ADDR", SocketAddr::from(([127, 0, 0, 1], 9090))),
            },
            embedder: EmbedderConfig {
                provider: v.parse_or("MEMORY_EMBEDDING_PROVIDER", Provider::Local),
                batch_size: v.ranged("MEMORY_EMBEDDER_BATCH_SIZE", 64, 1, 1000),
                batch_wait: v.millis("MEMORY_EMBEDDER_BATCH_WAIT_MS", 100, 1, 60_000),
                concurrency: v.ranged("MEMORY_EMBEDDER_CONCURRENCY", 2, 1, 16),
                ack_wait: v.secs("MEMORY_EMBEDDER_ACK_WAIT_SECS", 30, 1, 3600),
                max_deliveries: v.ranged("MEMORY_EMBEDDER_MAX_DELIVERIES", 20, 1, 10_000),
                importance: ImportanceWeights {
                    recency: v.ranged("MEMORY_IMPORTANCE_RECENCY_WEIGHT", 0.4, 0.0, 1000.0),
                    role: v.ranged("MEMORY_IMPORTANCE_ROLE_WEIGHT", 0.2, 0.0, 1000.0),
                    explicit: v.ranged("MEMORY_IMPORTANCE_EXPLICIT_WEIGHT", 0.4, 0.0, 1000.0),
                },
                auto_backfill: v.parse_or("MEMORY_EMBEDDER_AUTO_BACKFILL", true),
                standby_poll: v.millis("MEMORY_EMBEDDER_STANDBY_POLL_MS", 5_000, 10, 600_000),
                gemini: GeminiConfig {
                    api_key: v.secret("MEMORY_GEMINI_API_KEY"),
                    model: v.raw("MEMORY_GEMINI_MODEL").unwrap_or_else(|| "gemini-embedding-001".into()),
                    dimensions: v.ranged("MEMORY_GEMINI_DIMENSIONS", 768, 128, 3072),
                    base_url: v
                        .raw("MEMORY_GEMINI_BASE_URL")
                        .unwrap_or_else(|| "https://generativelanguage.googleapis.com/v1beta".into()),
                    timeout: v.millis("MEMORY_GEMINI_TIMEOUT_MS", 20_000, 10, 600_000),
                    max_retries: v.ranged("MEMORY_GEMINI_MAX_RETRIES", 3, 0, 10),
                    retry_min: v.millis("MEMORY_GEMINI_RETRY_MIN_MS", 500, 1, 60_000),
                    retry_max: v.millis("MEMORY_GEMINI_RETRY_MAX_MS", 10_000, 1, 600_000),
                    max_chars: v.ranged("MEMORY_GEMINI_MAX_CHARS", 8_000, 100, 100_000),
                },
                local: LocalConfig {
                    model_dir: v.raw("MEMORY_MODEL_DIR").map(std::path::PathBuf::from),
                    batch_size: v.ranged("MEMORY_LOCAL_BATCH_SIZE", 32, 1, 256),
                },
                breaker: BreakerConfig {
                    failures: v.ranged("MEMORY_BREAKER_FAILURES", 5, 1, 1000),
                    cooldown: v.millis("MEMORY_BREAKER_COOLDOWN_MS", 30_000, 1, 3_600_000),
                    successes: v.ranged("MEMORY_BREAKER_SUCCESSES", 2, 1, 1000),
                },
                cache: QueryCacheConfig {
                    ttl: v.secs("MEMORY_QUERY_CACHE_TTL_SECS", 86_400, 1, 365 * 86_400),
                    capacity: v.ranged("MEMORY_QUERY_CACHE_CAPACITY", 10_000, 0, 1_000_000),
                },
                sweeper: SweeperConfig {
                    interval: v.millis("MEMORY_SWEEP_INTERVAL_MS", 60_000, 10, 86_400_000),
                    after: v.millis("MEMORY_SWEEP_AFTER_MS", 300_000, 0, 30 * 86_400_000),
                    max_attempts: v.ranged("MEMORY_SWEEP_MAX_ATTEMPTS", 3, 1, 100),
                },
            },
            searcher: SearcherConfig {
                candidate_factor: v.ranged("MEMORY_SEARCH_CANDIDATE_FACTOR", 10, 1, 100),
                fusion_window: v.ranged("MEMORY_SEARCH_FUSION_WINDOW", 2, 1, 100),
                ranking: crate::domain::Ranking {
                    relevance_weight: v.ranged("MEMORY_RANK_RELEVANCE_WEIGHT", 0.6, 0.0, 1000.0),
                    importance_weight: v.ranged("MEMORY_RANK_IMPORTANCE_WEIGHT", 0.3, 0.0, 1000.0),
                    recency_weight: v.ranged("MEMORY_RANK_RECENCY_WEIGHT", 0.1, 0.0, 1000.0),
                    decay_days: v.ranged("MEMORY_RANK_DECAY_DAYS", 7.0, 0.001, 36_500.0),
                    rrf_k: v.ranged("MEMORY_RANK_RRF_K", 60.0, 1.0, 10_000.0),
                },
            },
            redis_url: v.secret("MEMORY_REDIS_URL"),
            rate_limit: RateLimitConfig {
                // The original service's names are accepted too.
                client: v.parse_aliased_or(
                    "MEMORY_RATE_LIMIT_CLIENT",
                    &["MEMORY_GLOBAL_RATE_LIMIT", "GLOBAL_RATE_LIMIT"],
                    RateLimit::per(200, 60),
                ),
                tenant: v.parse_aliased_or(
                    "MEMORY_RATE_LIMIT_TENANT",
                    &["MEMORY_TENANT_RATE_LIMIT", "TENANT_RATE_LIMIT"],
                    RateLimit::per(120, 60),
                ),
            },
            retention: RetentionConfig {
                policy: crate::domain::RetentionPolicy {
                    archive_after_days: Some(v.ranged("MEMORY_RETENTION_ARCHIVE_AFTER_DAYS", 30, 0, 36_500))
                        .filter(|d| *d > 0),
                    archive_below_importance: v.ranged("MEMORY_RETENTION_ARCHIVE_BELOW_IMPORTANCE", 0.3, 0.0, 1.0),
                    max_age_days: Some(v.ranged("MEMORY_RETENTION_MAX_AGE_DAYS", 0, 0, 36_500)).filter(|d| *d > 0),
                    delete_archived_after_days: Some(v.ranged(
                        "MEMORY_RETENTION_DELETE_ARCHIVED_AFTER_DAYS",
                        90,
                        0,
                        36_500,
                    ))
                    .filter(|d| *d > 0),
                    max_messages_per_conversation: Some(v.ranged(
                        "MEMORY_RETENTION_MAX_MESSAGES_PER_CONVERSATION",
                        0,
                        0,
                        10_000_000,
                    ))
                    .filter(|n| *n > 0),
                },
                schedule: v.raw("MEMORY_RETENTION_SCHEDULE").unwrap_or_else(|| "0 0 * * * *".into()),
                batch_size: v.ranged("MEMORY_RETENTION_BATCH_SIZE", 1000, 1, 100_000),
            },
            shutdown_grace: v.secs("MEMORY_SHUTDOWN_GRACE_SECS", 20, 1, 3600),
            startup_timeout: v.secs("MEMORY_STARTUP_TIMEOUT_SECS", 60, 0, 3600),
        };
        let prefix = &config.nats.subject_prefix;
        if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            v.errors.push(format!("MEMORY_SUBJECT_PREFIX={prefix:?}: must be one token of A-Z, a-z, 0-9, '_' and '-'"));
        } else if prefix != "mem" && prefix.eq_ignore_ascii_case("memory") {
            // Its streams would be named like the production prefix `mem`'s (MEMORY_*).
            v.errors
                .push(format!("MEMORY_SUBJECT_PREFIX={prefix:?}: reserved, its stream names would clash with `mem`'s"));
        }
        if config.embedder.batch_wait >= config.embedder.ack_wait {
            // A pull open longer than the ack wait would collect redeliveries of its own messages.
            v.errors.push("MEMORY_EMBEDDER_BATCH_WAIT_MS: must be shorter than MEMORY_EMBEDDER_ACK_WAIT_SECS".into());
        }
        let embedder = &config.embedder;
        let w = embedder.importance;
        if w.recency + w.role + w.explicit <= 0.0 {
            v.errors.push("MEMORY_IMPORTANCE_*_WEIGHT: the importance weights must not all be 0".into());
        }
        if let Err(e) = config.searcher.ranking.check() {
            v.errors.extend(e.0.into_iter().map(|f| format!("MEMORY_RANK_*: {}: {}", f.field, f.message)));
        }
        let base = &embedder.gemini.base_url;
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            v.errors.push(format!("MEMORY_GEMINI_BASE_URL={base:?}: must be an http(s):// URL"));
        }
        if embedder.gemini.retry_min > embedder.gemini.retry_max {
            v.errors.push("MEMORY_GEMINI_RETRY_MIN_MS: must not exceed MEMORY_GEMINI_RETRY_MAX_MS".into());
        }
        if let Some(url) = &config.redis_url
            && !(url.expose().starts_with("redis://") || url.expose().starts_with("rediss://"))
        {
            v.errors.push("MEMORY_REDIS_URL: must be a redis:// or rediss:// (TLS) URL".into());
        }
        if let Some(url) = &config.database.url
            && !(url.expose().starts_with("postgres://") || url.expose().starts_with("postgresql://"))
        {
            v.errors.push("MEMORY_DATABASE_URL: must be a postgres:// URL".into());
        }
        if v.errors.is_empty() { Ok(config) } else { Err(ConfigError(v.errors)) }
    }

    /// Builds from a map of variables (tests).
    pub fn from_map(vars: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_lookup(|k| vars.get(k).cloned())
    }

    /// The database URL, or an error naming the variable.
    pub fn database_url(&self) -> Result<&str, ConfigError> {
        self.database
            .url
            .as_ref()
            .map(Secret::expose)
            .ok_or_else(|| ConfigError::one("MEMORY_DATABASE_URL is not set: a postgres:// URL is required"))
    }
}

/// A list of browser origins: comma-separated, or a JSON array (as the original service read
/// them); `*` alone for any. Each origin is `scheme://host[:port]`.
#[derive(Debug, Default)]
struct Origins(Vec<String>);

impl FromStr for Origins {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let items: Vec<String> = if s.trim_start().starts_with('[') {
            serde_json::from_str(s).map_err(|e| format!("not a JSON array of strings: {e}"))?
        } else {
            s.split(',').map(|o| o.trim().to_owned()).filter(|o| !o.is_empty()).collect()
        };
        if items.iter().any(|o| o == "*") {
            return if items.len() == 1 { Ok(Self(items)) } else { Err("`*` stands alone".into()) };
        }
        for origin in &items {
            let ok = ["http://", "https://"].iter().any(|p| {
                origin.strip_prefix(p).is_some_and(|rest| !rest.is_empty() && !rest.contains(['/', ' ', '*']))
            });
            if !ok {
                return Err(format!("{origin:?} is not an origin (scheme://host[:port])"));
            }
        }
        Ok(Self(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::from_map(&map)
    }

    #[test]
    fn nats_credentials_come_one_way_and_redis_may_use_tls() {
        let c = config(&[("MEMORY_NATS_USER", "embedder"), ("MEMORY_NATS_PASSWORD", "pw")]).unwrap();
        assert!(
            matches!(c.nats.credentials, Some(NatsCredentials::UserPassword { ref user, .. }) if user == "embedder")
        );
        assert!(!format!("{:?}", c.nats).contains("pw\""), "the password never shows: {:?}", c.nats);
        let c = config(&[("MEMORY_NATS_CREDS_FILE", "/etc/memory/embedder.creds")]).unwrap();
        assert!(matches!(c.nats.credentials, Some(NatsCredentials::CredsFile(_))));
        let err = config(&[("MEMORY_NATS_TOKEN", "t"), ("MEMORY_NATS_CREDS_FILE", "/x")]).unwrap_err().to_string();
        assert!(err.contains("one way"), "{err}");
        let err = config(&[("MEMORY_NATS_USER", "embedder")]).unwrap_err().to_string();
        assert!(err.contains("go together"), "{err}");
        assert!(config(&[("MEMORY_REDIS_URL", "rediss://:secret@redis.example:6380/0")]).is_ok());
        assert!(config(&[("MEMORY_REDIS_URL", "http://redis")]).is_err());
    }

    #[test]
    fn defaults_need_no_variables() {
        let c = config(&[]).unwrap();
        assert_eq!(c.nats.subject_prefix, "mem");
        assert_eq!(c.embedder.batch_size, 64);
        assert!(c.database_url().is_err());
    }

    #[test]
    fn every_bad_variable_is_named_with_its_value() {
        let err = config(&[
            ("MEMORY_HTTP_ADDR", "nowhere"),
            ("MEMORY_EMBEDDER_BATCH_SIZE", "0"),
            ("MEMORY_SUBJECT_PREFIX", "a.b"),
            ("MEMORY_EMBEDDER_BATCH_WAIT_MS", "40000"),
            ("MEMORY_DATABASE_URL", "mysql://x"),
        ])
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 5, "{text}");
        assert!(text.contains("MEMORY_EMBEDDER_BATCH_WAIT_MS: must be shorter"), "{text}");
        assert!(text.contains("MEMORY_HTTP_ADDR=\"nowhere\""), "{text}");
        assert!(text.contains("MEMORY_EMBEDDER_BATCH_SIZE=0: must be between 1 and 1000"), "{text}");
        assert!(text.contains("MEMORY_SUBJECT_PREFIX"), "{text}");
        assert!(text.contains("MEMORY_DATABASE_URL"), "{text}");
    }

    #[test]
    fn a_prefix_may_not_borrow_the_production_stream_names() {
        assert!(config(&[("MEMORY_SUBJECT_PREFIX", "Memory")]).is_err());
        assert!(config(&[("MEMORY_SUBJECT_PREFIX", "")]).is_ok(), "empty means the default");
        assert!(config(&[("MEMORY_SUBJECT_PREFIX", "staging")]).is_ok());
    }

    #[test]
    fn rate_limits_read_like_the_original() {
        for (text, count, seconds) in [
            ("200/minute", 200, 60),
            ("10 per second", 10, 1),
            ("5 hours", 5, 3600),
            ("1000/day", 1000, 86_400),
            (" 3/Seconds ", 3, 1),
            ("7/min", 7, 60),
        ] {
            assert_eq!(text.parse::<RateLimit>(), Ok(RateLimit::per(count, seconds)), "{text}");
        }
        for bad in ["", "minute", "0/minute", "10/fortnight", "-1/second", "1.5/second", "9999999999/second"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
        assert_eq!(RateLimit::per(200, 60).to_string(), "200/minute");
    }

    #[test]
    fn allowed_origins_are_a_list_or_any() -> Result<(), ConfigError> {
        assert!(config(&[])?.http.allowed_origins.is_empty(), "none by default");
        let c = config(&[("MEMORY_ALLOWED_ORIGINS", "https://app.example, http://localhost:3000")])?;
        assert_eq!(c.http.allowed_origins, ["https://app.example", "http://localhost:3000"]);
        let c = config(&[("ALLOWED_ORIGINS", r#"["https://app.example"]"#)])?;
        assert_eq!(c.http.allowed_origins, ["https://app.example"]);
        assert_eq!(config(&[("MEMORY_ALLOWED_ORIGINS", "*")])?.http.allowed_origins, ["*"]);
        for bad in ["app.example", "https://app.example/path", "*, https://a.example", "[1]"] {
            let e = config(&[("MEMORY_ALLOWED_ORIGINS", bad)]).unwrap_err();
            assert!(e.to_string().contains("MEMORY_ALLOWED_ORIGINS"), "{bad}: {e}");
        }
        Ok(())
    }

    #[test]
    fn the_original_rate_limit_variables_are_aliases() -> Result<(), ConfigError> {
        let c = config(&[("GLOBAL_RATE_LIMIT", "10 per second"), ("MEMORY_TENANT_RATE_LIMIT", "5/minute")])?;
        assert_eq!((c.rate_limit.client, c.rate_limit.tenant), (RateLimit::per(10, 1), RateLimit::per(5, 60)));
        let c = config(&[("MEMORY_RATE_LIMIT_TENANT", "7/hour"), ("TENANT_RATE_LIMIT", "7/hour")])?;
        assert_eq!(c.rate_limit.tenant, RateLimit::per(7, 3600), "the same value twice is fine");
        let e = config(&[("MEMORY_RATE_LIMIT_CLIENT", "1/second"), ("GLOBAL_RATE_LIMIT", "2/second")]).unwrap_err();
        assert!(e.to_string().contains("GLOBAL_RATE_LIMIT=\"2/second\""), "{e}");
        let e = config(&[("TENANT_RATE_LIMIT", "often")]).unwrap_err();
        assert!(e.to_string().contains("TENANT_RATE_LIMIT=\"often\""), "{e}");
        Ok(())
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let c = config(&[
            ("MEMORY_ADMIN_API_KEY", "s3cret"),
            ("MEMORY_DATABASE_URL", "postgres://u:pw@h/db"),
            ("MEMORY_NATS_URL", "nats://svc:natspw@n:4222"),
        ])
        .unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret") && !debug.contains("pw@h") && !debug.contains("natspw"), "{debug}");
    }
}
