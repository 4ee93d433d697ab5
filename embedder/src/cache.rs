//! The query-vector cache: an in-process LRU in front of Redis, keyed by the tenant, the space and
//! the SHA-256 of the text. Entries are per tenant, so erasing a tenant erases its cached queries
//! (the Redis keys carry the tenant for that) and no tenant can tell from timing what another
//! asked. Any cache failure is a miss, never an error: the provider answers instead.

use std::fmt::Write as _;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::config::QueryCacheConfig;
use common::contract::SpaceRef;
use common::contract::Subjects;
use common::domain::TenantId;
use lru::LruCache;
use redis::AsyncCommands as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;

use crate::metrics::{CacheLabels, CacheResult, Metrics};

/// A Redis call slower than this is a miss.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failed connection, Redis is skipped for this long.
const REDIS_RETRY: Duration = Duration::from_secs(5);
/// After a tenant's erasure, its queries are not cached for this long, so a search in flight
/// during the erasure does not write its vector back.
const ERASED_HOLD: Duration = Duration::from_secs(60);

/// The in-process cache: SHA-256 key → the tenant and the vector.
type Memory = Mutex<LruCache<[u8; 32], (Option<TenantId>, Arc<[f32]>)>>;

#[derive(Clone)]
pub(crate) struct QueryCache {
    memory: Option<Arc<Memory>>,
    redis: Option<Arc<Redis>>,
    /// Names the Redis keys (under the subject prefix, so deployments sharing a Redis do not mix).
    subjects: Subjects,
    ttl: Duration,
    metrics: Metrics,
    /// Tenants erased lately, and when.
    erased: Arc<Mutex<std::collections::HashMap<TenantId, Instant>>>,
}

struct Redis {
    client: redis::Client,
    connection: AsyncMutex<Connection>,
}

enum Connection {
    None { retry_at: Option<Instant> },
    Ready(ConnectionManager),
}

impl QueryCache {
    /// A cache with an LRU of `config.capacity` entries and, given a URL, Redis. Never fails:
    /// a bad Redis URL is reported and the cache runs in process only.
    pub(crate) fn new(
        config: &QueryCacheConfig,
        redis_url: Option<&common::config::Secret>,
        subjects: Subjects,
        metrics: Metrics,
    ) -> Self {
        let memory = NonZeroUsize::new(config.capacity).map(|n| Arc::new(Mutex::new(LruCache::new(n))));
        let redis = redis_url.and_then(|url| match redis::Client::open(url.expose()) {
            Ok(client) => {
                Some(Arc::new(Redis { client, connection: AsyncMutex::new(Connection::None { retry_at: None }) }))
            }
            Err(e) => {
                tracing::error!(error = %e, "MEMORY_REDIS_URL is not usable; query vectors are cached in process only");
                None
            }
        });
        Self { memory, redis, subjects, ttl: config.ttl, metrics, erased: Arc::default() }
    }

    /// The cached vector of `tenant`'s `text` in `space`, if any.
    pub(crate) async fn get(&self, space: &SpaceRef, tenant: Option<&TenantId>, text: &str) -> Option<Vec<f32>> {
        let key = key(space, tenant, text);
        if let Some(memory) = &self.memory
            && let Some((_, v)) = memory.lock().expect("cache lock").get(&key)
        {
            self.count(CacheResult::Memory);
            return Some(v.to_vec());
        }
        if let Some(vector) = self.redis_get(space, tenant, &key).await {
            if let Some(memory) = &self.memory {
                memory.lock().expect("cache lock").put(key, (tenant.cloned(), vector.clone().into()));
            }
            self.count(CacheResult::Redis);
            return Some(vector);
        }
        self.count(CacheResult::Miss);
        None
    }

    pub(crate) async fn put(&self, space: &SpaceRef, tenant: Option<&TenantId>, text: &str, vector: &[f32]) {
        if let Some(t) = tenant
            && self.erased.lock().expect("erased lock").get(t).is_some_and(|at| at.elapsed() < ERASED_HOLD)
        {
            return;
        }
        let key = key(space, tenant, text);
        if let Some(memory) = &self.memory {
            memory.lock().expect("cache lock").put(key, (tenant.cloned(), vector.into()));
        }
        let Some(mut connection) = self.connection().await else { return };
        let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
        let ttl = self.ttl.as_secs().max(1);
        let set = connection.set_ex::<_, _, ()>(self.redis_key(tenant, &key), bytes, ttl);
        match tokio::time::timeout(REDIS_TIMEOUT, set).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.redis_down("writing", &e).await,
            Err(_) => self.redis_down("writing", &"timed out").await,
        }
    }

    /// Drops the tenant's entries from the in-process cache and caches none of its queries for a
    /// minute (Redis is purged by whoever erases the tenant, after telling the embedders).
    pub(crate) fn purge(&self, tenant: &TenantId) -> usize {
        {
            let mut erased = self.erased.lock().expect("erased lock");
            erased.retain(|_, at| at.elapsed() < ERASED_HOLD);
            erased.insert(tenant.clone(), Instant::now());
        }
        let Some(memory) = &self.memory else { return 0 };
        let mut memory = memory.lock().expect("cache lock");
        let keys: Vec<[u8; 32]> =
            memory.iter().filter(|(_, (t, _))| t.as_ref() == Some(tenant)).map(|(k, _)| *k).collect();
        for k in &keys {
            memory.pop(k);
        }
        keys.len()
    }

    async fn redis_get(&self, space: &SpaceRef, tenant: Option<&TenantId>, key: &[u8; 32]) -> Option<Vec<f32>> {
        let mut connection = self.connection().await?;
        let get = connection.get::<_, Option<Vec<u8>>>(self.redis_key(tenant, key));
        let bytes = match tokio::time::timeout(REDIS_TIMEOUT, get).await {
            Ok(Ok(bytes)) => bytes?,
            Ok(Err(e)) => {
                self.redis_down("reading", &e).await;
                return None;
            }
            Err(_) => {
                self.redis_down("reading", &"timed out").await;
                return None;
            }
        };
        if bytes.len() != space.dimensions as usize * 4 {
            self.redis_failed("reading", &format!("an entry of {} bytes", bytes.len()));
            return None;
        }
        Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// The shared connection, connecting on first use. `None` while Redis is unreachable.
    async fn connection(&self) -> Option<ConnectionManager> {
        let redis = self.redis.as_ref()?;
        let mut state = redis.connection.lock().await;
        match &*state {
            Connection::Ready(c) => return Some(c.clone()),
            Connection::None { retry_at: Some(at) } if Instant::now() < *at => return None,
            Connection::None { .. } => {}
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        match ConnectionManager::new_with_config(redis.client.clone(), config).await {
            Ok(c) => {
                tracing::info!("query cache connected to Redis");
                *state = Connection::Ready(c.clone());
                Some(c)
            }
            Err(e) => {
                self.redis_failed("connecting to", &e);
                *state = Connection::None { retry_at: Some(Instant::now() + REDIS_RETRY) };
                None
            }
        }
    }

    fn redis_key(&self, tenant: Option<&TenantId>, key: &[u8; 32]) -> String {
        let mut hex = String::with_capacity(64);
        for b in key {
            let _ = write!(hex, "{b:02x}");
        }
        self.subjects.query_cache_key(tenant, &hex)
    }

    fn redis_failed(&self, what: &str, error: &dyn std::fmt::Display) {
        self.metrics.query_cache_errors.inc();
        tracing::warn!(error = %error, "{what} Redis failed; treating the query cache as a miss");
    }

    /// A call on an open connection failed: skip Redis for a while rather than make every
    /// request wait out the timeout.
    async fn redis_down(&self, what: &str, error: &(dyn std::fmt::Display + Sync)) {
        self.redis_failed(what, error);
        if let Some(redis) = &self.redis {
            *redis.connection.lock().await = Connection::None { retry_at: Some(Instant::now() + REDIS_RETRY) };
        }
    }

    fn count(&self, result: CacheResult) {
        self.metrics.query_cache.get_or_create(&CacheLabels { result }).inc();
    }
}

/// SHA-256 over the space, the tenant and the text, unambiguous because every part is
/// length-prefixed.
fn key(space: &SpaceRef, tenant: Option<&TenantId>, text: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    let tenant = tenant.map_or(&[][..], |t| t.as_str().as_bytes());
    for part in
        [space.provider.as_bytes(), space.model.as_bytes(), &space.dimensions.to_le_bytes(), tenant, text.as_bytes()]
    {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_erased_tenants_queries_are_dropped_and_not_cached_again_for_a_while() {
        let config = QueryCacheConfig { ttl: Duration::from_secs(60), capacity: 100 };
        let metrics = Metrics::register(&mut prometheus_client::registry::Registry::default());
        let cache = QueryCache::new(&config, None, Subjects::new("ns"), metrics);
        let space = SpaceRef { provider: "local".into(), model: "m".into(), dimensions: 2 };
        let (acme, globex) = (TenantId::parse("acme").unwrap(), TenantId::parse("globex").unwrap());
        cache.put(&space, Some(&acme), "q", &[1.0, 0.0]).await;
        cache.put(&space, Some(&globex), "q", &[0.0, 1.0]).await;
        assert_eq!(cache.purge(&acme), 1);
        assert_eq!(cache.get(&space, Some(&acme), "q").await, None);
        assert_eq!(cache.get(&space, Some(&globex), "q").await, Some(vec![0.0, 1.0]));
        // A search that was in flight during the erasure does not write its vector back.
        cache.put(&space, Some(&acme), "q", &[1.0, 0.0]).await;
        assert_eq!(cache.get(&space, Some(&acme), "q").await, None);
    }

    #[test]
    fn keys_differ_by_space_and_text() {
        let a = SpaceRef { provider: "local".into(), model: "m".into(), dimensions: 384 };
        let b = SpaceRef { dimensions: 768, ..a.clone() };
        let acme = TenantId::parse("acme").unwrap();
        assert_ne!(key(&a, None, "hello"), key(&b, None, "hello"));
        assert_ne!(key(&a, None, "hello"), key(&a, None, "hello!"));
        assert_ne!(key(&a, Some(&acme), "hello"), key(&a, None, "hello"));
        assert_eq!(key(&a, Some(&acme), "hello"), key(&a.clone(), Some(&acme), "hello"));
    }
}
