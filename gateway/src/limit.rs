//! Rate limits: GCRA (generic cell rate algorithm), per client (API key, or IP when
//! unauthenticated) and per tenant, both checked and charged in one atomic Redis Lua call, so any
//! number of gateways share them. `count` per `period` allows bursts of up to `count` and refills
//! one request every `period / count`. When Redis is unreachable an in-process limiter (governor)
//! with the same quotas takes over, with a warning and a metric, and Redis is tried again a
//! second later: never a 5xx because of Redis.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use common::config::{RateLimit, RateLimitConfig, Secret};
use common::contract::Subjects;
use common::domain::TenantId;
use common::store::Settings;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex as AsyncMutex;

use crate::metrics::Metrics;

/// A Redis call slower than this counts as Redis being down.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// After Redis failed, the in-process limiter is used this long before Redis is tried again.
const REDIS_RETRY: Duration = Duration::from_secs(1);
/// How long a tenant's own limit is reused.
const OVERRIDE_TTL: Duration = Duration::from_secs(5);

/// GCRA over any number of keys, all or nothing. KEYS: the limits' keys; ARGV: the cost, then per
/// key the emission interval and the period in ms. The clock is Redis's, shared by every gateway.
/// Returns `allowed`, then per key `remaining`, `reset ms` (until the quota is full again) and
/// `retry ms` (until this request would pass).
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
local tats, next_tats = {}, {}
local allowed = 1
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  next_tats[i] = tat + cost * interval
  if next_tats[i] - period > now then allowed = 0 end
end
local out = {allowed}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local tat = tats[i]
  if allowed == 1 then
    tat = next_tats[i]
    redis.call('SET', KEYS[i], tostring(tat), 'PX', math.max(1, math.ceil(tat - now)))
  end
  local remaining = math.floor((period - (tat - now)) / interval)
  if remaining < 0 then remaining = 0 end
  local retry = next_tats[i] - period - now
  if retry < 0 then retry = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(tat - now)
  out[#out + 1] = math.ceil(retry)
end
return out
";

/// Which limit a decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Client,
    Tenant,
}

/// Whom a request is charged to: its client (key, operator or IP) and its key's tenant. Handed
/// to handlers that charge more as they go (an import, per message).
#[derive(Debug, Clone)]
pub struct Payer {
    pub client: String,
    pub tenant: Option<TenantId>,
}

/// The outcome of charging a request, for its headers.
#[derive(Debug, Clone)]
pub struct Decision {
    pub allowed: bool,
    /// The limit the headers describe: the one that refused, else the one with least left.
    pub scope: Scope,
    pub limit: RateLimit,
    pub remaining: u64,
    /// Until the quota is full again.
    pub reset: Duration,
    /// Until a refused request would pass.
    pub retry_after: Duration,
    /// The tenant's own quota, when the request was charged to a tenant (the original service's
    /// `X-RateLimit-Tenant-*` headers).
    pub tenant: Option<TenantQuota>,
}

/// Where a tenant's own limit stands after a charge.
#[derive(Debug, Clone)]
pub struct TenantQuota {
    pub tenant_id: TenantId,
    pub limit: RateLimit,
    pub remaining: u64,
    /// Until the quota is full again.
    pub reset: Duration,
}

type Memory = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

struct Redis {
    client: redis::Client,
    connection: AsyncMutex<Option<ConnectionManager>>,
    down_until: Mutex<Option<Instant>>,
}

pub struct Limiter {
    defaults: RateLimitConfig,
    /// Names the Redis keys.
    subjects: Subjects,
    redis: Option<Redis>,
    script: redis::Script,
    memory: Mutex<HashMap<RateLimit, Arc<Memory>>>,
    overrides: Mutex<HashMap<TenantId, (Instant, Option<RateLimit>)>>,
    store: Arc<dyn Settings>,
    metrics: Metrics,
    /// Made once: a clock calibrates itself when made.
    clock: DefaultClock,
    /// In-process checks since the in-process limiters last dropped keys with a full quota.
    memory_checks: std::sync::atomic::AtomicU32,
}

/// One limit to charge: its Redis key and quota.
struct Charge {
    scope: Scope,
    key: String,
    limit: RateLimit,
}

impl Limiter {
    pub fn new(
        defaults: RateLimitConfig,
        redis_url: Option<&Secret>,
        subjects: Subjects,
        store: Arc<dyn Settings>,
        metrics: Metrics,
    ) -> Self {
        let redis = redis_url.and_then(|url| match redis::Client::open(url.expose()) {
            Ok(client) => Some(Redis { client, connection: AsyncMutex::new(None), down_until: Mutex::new(None) }),
            Err(e) => {
                tracing::error!(error = %e, "MEMORY_REDIS_URL is not usable; rate limits are kept in process only");
                None
            }
        });
        metrics.limiter_backend.set(i64::from(redis.is_some()));
        Self {
            defaults,
            subjects,
            redis,
            script: redis::Script::new(GCRA),
            memory: Mutex::new(HashMap::new()),
            overrides: Mutex::new(HashMap::new()),
            store,
            metrics,
            clock: DefaultClock::default(),
            memory_checks: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Charges `cost` requests to the client and, if given, the tenant.
    pub async fn check(&self, client: &str, tenant: Option<&TenantId>, cost: u32) -> Decision {
        let mut charges = vec![Charge {
            scope: Scope::Client,
            key: self.subjects.rate_limit_client(client),
            limit: self.defaults.client,
        }];
        if let Some(tenant) = tenant {
            charges.push(Charge {
                scope: Scope::Tenant,
                key: self.subjects.rate_limit_tenant(tenant),
                limit: self.tenant_limit(tenant).await,
            });
        }
        let cost = cost.max(1);
        // More than a whole quota at once never passes: say so rather than invite retries.
        if let Some(c) = charges.iter().find(|c| cost > c.limit.count) {
            return Decision {
                allowed: false,
                scope: c.scope,
                limit: c.limit,
                remaining: 0,
                reset: Duration::ZERO,
                retry_after: Duration::MAX,
                tenant: None,
            };
        }
        let (allowed, decisions) = match self.redis_check(&charges, cost).await {
            Some(checked) => checked,
            None => self.memory_check(&charges, cost),
        };
        let quota = decisions.iter().find(|d| d.scope == Scope::Tenant).zip(tenant).map(|(d, t)| TenantQuota {
            tenant_id: t.clone(),
            limit: d.limit,
            remaining: d.remaining,
            reset: d.reset,
        });
        let decision = Decision { tenant: quota, ..binding(decisions, allowed) };
        let outcome = if decision.allowed { "allowed" } else { "limited" };
        self.metrics.decisions.get_or_create(&crate::metrics::DecisionLabels { decision: outcome }).inc();
        if !decision.allowed {
            let scope = match decision.scope {
                Scope::Client => "client",
                Scope::Tenant => "tenant",
            };
            self.metrics.rate_limited.get_or_create(&crate::metrics::LimitLabels { scope }).inc();
        }
        decision
    }

    /// The tenant's own limit, else the deployment's; cached briefly. A store that cannot answer
    /// means the deployment's limit.
    async fn tenant_limit(&self, tenant: &TenantId) -> RateLimit {
        if let Some((at, own)) = self.overrides.lock().expect("override cache").get(tenant)
            && at.elapsed() < OVERRIDE_TTL
        {
            return own.unwrap_or(self.defaults.tenant);
        }
        let own = self.store.tenant_rate_limit(tenant).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading a tenant's rate limit failed; using the default");
            None
        });
        self.overrides.lock().expect("override cache").insert(tenant.clone(), (Instant::now(), own));
        own.unwrap_or(self.defaults.tenant)
    }

    /// Whether limits are shared through Redis: `None` without `MEMORY_REDIS_URL`, `Some(false)`
    /// while Redis is unreachable and limits are kept in this process.
    pub fn redis_up(&self) -> Option<bool> {
        let redis = self.redis.as_ref()?;
        Some(redis.down_until.lock().expect("redis state").is_none_or(|until| Instant::now() >= until))
    }

    /// Forgets a tenant's cached limit (it was just changed here).
    pub fn forget(&self, tenant: &TenantId) {
        self.overrides.lock().expect("override cache").remove(tenant);
    }

    /// Whether the charge passed, and each limit's decision; `None` when Redis is away.
    async fn redis_check(&self, charges: &[Charge], cost: u32) -> Option<(bool, Vec<Decision>)> {
        let redis = self.redis.as_ref()?;
        if redis.down_until.lock().expect("redis state").is_some_and(|until| Instant::now() < until) {
            return None;
        }
        let mut connection = {
            let mut guard = redis.connection.lock().await;
            match &*guard {
                Some(c) => c.clone(),
                None => {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(REDIS_TIMEOUT))
                        .set_response_timeout(Some(REDIS_TIMEOUT))
                        .set_number_of_retries(0);
                    match ConnectionManager::new_with_config(redis.client.clone(), config).await {
                        Ok(c) => {
                            *guard = Some(c.clone());
                            c
                        }
                        Err(e) => {
                            drop(guard);
                            self.redis_down(redis, &e);
                            return None;
                        }
                    }
                }
            }
        };
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(cost);
        for c in charges {
            let period = c.limit.period.as_secs_f64() * 1000.0;
            invocation.key(&c.key).arg(period / f64::from(c.limit.count)).arg(period);
        }
        let answer = tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async::<Vec<i64>>(&mut connection)).await;
        let values = match answer {
            Ok(Ok(values)) if values.len() == 1 + 3 * charges.len() => values,
            Ok(Ok(values)) => {
                self.redis_down(redis, &format!("unexpected answer {values:?}"));
                return None;
            }
            Ok(Err(e)) => {
                self.redis_down(redis, &e);
                return None;
            }
            Err(_) => {
                self.redis_down(redis, &"timed out");
                return None;
            }
        };
        if redis.down_until.lock().expect("redis state").take().is_some() {
            tracing::info!("Redis is back: rate limits are shared again");
        }
        self.metrics.limiter_backend.set(1);
        let allowed = values[0] == 1;
        let per_limit = charges.iter().enumerate().map(|(i, c)| {
            let at = 1 + 3 * i;
            Decision {
                allowed,
                scope: c.scope,
                limit: c.limit,
                remaining: u64::try_from(values[at]).unwrap_or(0),
                reset: Duration::from_millis(u64::try_from(values[at + 1]).unwrap_or(0)),
                retry_after: Duration::from_millis(u64::try_from(values[at + 2]).unwrap_or(0)),
                tenant: None,
            }
        });
        Some((allowed, per_limit.collect()))
    }

    fn redis_down(&self, redis: &Redis, error: &dyn std::fmt::Display) {
        let mut down = redis.down_until.lock().expect("redis state");
        if down.is_none() {
            tracing::warn!(error = %error, "Redis is unreachable: rate limits are kept in process until it is back");
        }
        *down = Some(Instant::now() + REDIS_RETRY);
        self.metrics.limiter_backend.set(0);
        self.metrics.limiter_fallbacks.inc();
        // A fresh connection next time.
        if let Ok(mut guard) = redis.connection.try_lock() {
            *guard = None;
        }
    }

    /// The same limits, in this process only. Limits are charged in order (client first); a
    /// refusal by a later one leaves the earlier charged, as every hit counts, and is the only
    /// decision returned.
    fn memory_check(&self, charges: &[Charge], cost: u32) -> (bool, Vec<Decision>) {
        // Keys whose quota is full again carry no state: drop them now and then, so that many
        // clients (rotating IPs, say) do not grow the process while Redis is away.
        if self.memory_checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10_000 == 9_999 {
            for limiter in self.memory.lock().expect("memory limiters").values() {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        }
        let n = NonZeroU32::new(cost).expect("cost is at least 1");
        let clock = &self.clock;
        let mut decisions = Vec::with_capacity(charges.len());
        for c in charges {
            let interval = c.limit.period / c.limit.count;
            let refused = |wait: Duration| Decision {
                allowed: false,
                scope: c.scope,
                limit: c.limit,
                remaining: 0,
                reset: wait,
                retry_after: wait,
                tenant: None,
            };
            match self.memory_limiter(c.limit).check_key_n(&c.key, n) {
                Ok(Ok(snapshot)) => {
                    let remaining = snapshot.remaining_burst_capacity();
                    decisions.push(Decision {
                        allowed: true,
                        scope: c.scope,
                        limit: c.limit,
                        remaining: u64::from(remaining),
                        reset: interval * c.limit.count.saturating_sub(remaining),
                        retry_after: Duration::ZERO,
                        tenant: None,
                    });
                }
                Ok(Err(not_until)) => return (false, vec![refused(not_until.wait_time_from(clock.now()))]),
                // More than the whole quota at once: it never passes.
                Err(_) => return (false, vec![refused(c.limit.period)]),
            }
        }
        (true, decisions)
    }

    fn memory_limiter(&self, limit: RateLimit) -> Arc<Memory> {
        self.memory
            .lock()
            .expect("memory limiters")
            .entry(limit)
            .or_insert_with(|| {
                let count = NonZeroU32::new(limit.count).expect("limits are at least 1");
                let quota =
                    Quota::with_period(limit.period / limit.count).expect("a period is never zero").allow_burst(count);
                Arc::new(RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>())
            })
            .clone()
    }
}

/// The decision the headers describe: the refusal, else the limit with least left.
fn binding(mut decisions: Vec<Decision>, allowed: bool) -> Decision {
    decisions
        .sort_by_key(|d| (if allowed { d.remaining } else { u64::MAX - d.retry_after.as_millis() as u64 }, d.reset));
    decisions.into_iter().next().expect("at least the client limit")
}

/// `RateLimit-*` (IETF draft) and `X-RateLimit-*` (as the original service: reset in epoch
/// seconds) headers, `X-RateLimit-Tenant-*` for the tenant's own quota when one was charged, and
/// `Retry-After` on a refusal.
pub fn headers(headers: &mut HeaderMap, d: &Decision) {
    let secs = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let reset = secs(d.reset);
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    let epoch = now + reset;
    let mut set = |name: &'static str, value: u64| {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
    };
    set("ratelimit-limit", u64::from(d.limit.count));
    set("ratelimit-remaining", d.remaining);
    set("ratelimit-reset", reset);
    set("x-ratelimit-limit", u64::from(d.limit.count));
    set("x-ratelimit-remaining", d.remaining);
    set("x-ratelimit-reset", epoch);
    if let Some(t) = &d.tenant {
        set("x-ratelimit-tenant-limit", u64::from(t.limit.count));
        set("x-ratelimit-tenant-remaining", t.remaining);
        set("x-ratelimit-tenant-reset", now + secs(t.reset));
    }
    if !d.allowed && d.retry_after != Duration::MAX {
        set("retry-after", secs(d.retry_after).max(1));
    }
    let policy = format!("{};w={}", d.limit.count, d.limit.period.as_secs());
    if let Ok(v) = HeaderValue::from_str(&policy) {
        headers.insert(HeaderName::from_static("ratelimit-policy"), v);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tls_redis_url_opens_a_client() {
        // Built with TLS: a `rediss://` URL is usable (connecting is the server's business).
        assert!(redis::Client::open("rediss://:secret@redis.example:6380/0").is_ok());
    }
}
