//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use crate::Deps;

use crate::auth::Keys;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub deps: Deps,
    /// Key lookups and the operator key.
    pub keys: Arc<Keys>,
    pub limiter: Arc<crate::limit::Limiter>,
    /// The deployment's rate limits, shown for tenants without their own.
    pub rate_limit: common::config::RateLimitConfig,
    pub body_limit: usize,
    /// Longest pause while a request body arrives.
    pub body_timeout: Duration,
    /// Longest time before a request's answer starts (routes of long work get more).
    pub http_request_timeout: Duration,
    /// Room for the API requests handled at once; the rest are shed.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub wait_timeout: Duration,
    /// How long a worker has to answer a NATS request.
    pub request_timeout: Duration,
    /// The deployment's ranking, shown for tenants without their own.
    pub ranking: common::domain::Ranking,
    /// What `/metrics` renders: the whole process's registry, given once every role registered
    /// ([`crate::Gateway::expose_metrics`]). Without it the path is not found.
    pub registry: Option<Arc<Registry>>,
    pub metrics: Metrics,
    /// The dependencies' last readiness answer, reused for a moment.
    pub ready: Arc<common::ops::ReadyCache>,
    /// Cancelled when the gateway stops: readiness turns 503.
    pub shutdown: CancellationToken,
    /// The last Postgres and NATS check of `/v1/admin/health` and `/readiness`, reused for a
    /// second: they need no key.
    pub admin_checks: Arc<common::ops::ReadyCache<crate::routes::health::Checked>>,
    /// When the gateway was built (`uptime_seconds` of `/v1/admin/health`).
    pub started: std::time::Instant,
    /// `MEMORY_ENVIRONMENT`.
    pub environment: Arc<str>,
    /// `MEMORY_ALLOWED_ORIGINS`: browser origins allowed to call the API (`*`: any).
    pub allowed_origins: Arc<[String]>,
    /// Live event and search connections, within their caps.
    pub live: Arc<crate::live::Live>,
}
