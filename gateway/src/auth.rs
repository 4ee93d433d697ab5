//! Authentication and authorisation. A request presents a key (`x-api-key`, or
//! `Authorization: Bearer`): the operator key (`MEMORY_ADMIN_API_KEY`, every scope, every tenant)
//! or a tenant's key (`mk_…`, its scopes, its tenant only). Keys are looked up by their SHA-256;
//! lookups are cached for `MEMORY_AUTH_CACHE_TTL_SECS`, so a revocation reaches every gateway
//! within that time (at once on the gateway that revoked it). Last-used times are written in
//! batches, never on the request path.

use std::borrow::Cow;
use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use common::domain::{ApiKey, Scope, TenantId};
use common::store::{ApiKeys, StoreError};
use lru::LruCache;
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// Every tenant key starts with this.
pub const KEY_PREFIX: &str = "mk_";
/// Random characters after the prefix: 43 of 62 ≈ 256 bits.
const KEY_RANDOM_CHARS: usize = 43;
/// Characters of a key kept in clear, to recognise it in lists.
const VISIBLE: usize = KEY_PREFIX.len() + 8;
const CACHE_ENTRIES: usize = 10_000;

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The operator key: every scope, every tenant.
    Operator,
    /// A tenant's key.
    Key(Arc<ApiKey>),
}

impl Principal {
    /// 403 `insufficient_scope` unless the principal holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        match self {
            Self::Operator => Ok(()),
            Self::Key(key) if key.scopes.contains(&scope) => Ok(()),
            Self::Key(_) => Err(ApiError::InsufficientScope(scope)),
        }
    }

    /// 403 `operator_only` unless this is the operator key.
    pub fn require_operator(&self) -> Result<(), ApiError> {
        match self {
            Self::Operator => Ok(()),
            Self::Key(_) => Err(ApiError::OperatorOnly),
        }
    }

    /// The tenant a request acts for. A tenant key implies its own tenant and may not name
    /// another (403 `tenant_forbidden`); the operator must name one.
    pub fn tenant(&self, requested: Option<&str>) -> Result<TenantId, ApiError> {
        let requested = requested.filter(|t| !t.is_empty());
        match (self, requested) {
            (Self::Key(key), None) => Ok(key.tenant_id.clone()),
            (Self::Key(key), Some(t)) if t == key.tenant_id.as_str() => Ok(key.tenant_id.clone()),
            (Self::Key(_), Some(_)) => Err(ApiError::TenantForbidden),
            (Self::Operator, None) => Err(ApiError::Invalid(vec![common::domain::FieldError::new(
                "tenant_id",
                "required",
                "the operator key acts for any tenant, so it must name one",
            )])),
            (Self::Operator, Some(t)) => TenantId::parse(t.to_owned()).map_err(|e| ApiError::Invalid(e.0)),
        }
    }

    /// The tenant a request is narrowed to: a tenant key's own (naming another is
    /// `tenant_forbidden`); for the operator, the one it names, or none (every tenant: only
    /// where a request over every tenant makes sense, and said so explicitly to the worker).
    pub fn tenant_filter(&self, requested: Option<String>) -> Result<Option<TenantId>, ApiError> {
        match self {
            Self::Key(_) => self.tenant(requested.as_deref()).map(Some),
            Self::Operator => requested.map(TenantId::parse).transpose().map_err(|e| ApiError::Invalid(e.0)),
        }
    }

    /// For a body's `tenant_id`: a tenant key fills it in when empty and refuses another tenant;
    /// the operator's is validated with the rest of the body.
    pub fn bind_tenant(&self, tenant_id: &mut String) -> Result<(), ApiError> {
        if let Self::Key(key) = self {
            if tenant_id.is_empty() {
                key.tenant_id.as_str().clone_into(tenant_id);
            } else if tenant_id != key.tenant_id.as_str() {
                return Err(ApiError::TenantForbidden);
            }
        }
        Ok(())
    }

    /// The tenant a tenant key is bound to; `None` for the operator.
    pub fn bound_tenant(&self) -> Option<&TenantId> {
        match self {
            Self::Operator => None,
            Self::Key(key) => Some(&key.tenant_id),
        }
    }
}

/// A new key: the one copy of the key itself, and what is stored of it.
pub struct MintedKey {
    pub key: String,
    pub prefix: String,
    pub hash: [u8; 32],
}

/// A fresh random key.
pub fn mint() -> MintedKey {
    let random: String = rand::rng().sample_iter(Alphanumeric).take(KEY_RANDOM_CHARS).map(char::from).collect();
    let key = format!("{KEY_PREFIX}{random}");
    MintedKey { prefix: key[..VISIBLE].to_owned(), hash: hash(&key), key }
}

pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

type Cache = LruCache<[u8; 32], (Instant, Arc<ApiKey>)>;

/// What the caches know of a presented key before any lookup.
pub enum Known {
    /// The operator, a cached key (live or not), or a key known not to exist: no lookup.
    Answer(Option<Principal>),
    /// A well-formed key not seen lately: finding out costs a database lookup.
    Unknown([u8; 32]),
}

/// Key lookups, cached (found and not found apart, so unknown keys never evict real ones), and
/// the keys used since the last flush.
pub struct Keys {
    store: Arc<dyn ApiKeys>,
    operator: [u8; 32],
    ttl: Duration,
    cache: Mutex<Cache>,
    /// Hashes looked up and not found, and when.
    missing: Mutex<LruCache<[u8; 32], Instant>>,
    /// Database lookups made: `memory_gateway_key_lookups_total`.
    lookups: prometheus_client::metrics::counter::Counter,
    /// Counts revocations made here, so a lookup racing one is not cached.
    revocations: AtomicU64,
    /// Keys revoked lately, so that live connections opened with them close.
    revoked: Mutex<LruCache<Uuid, ()>>,
    used: Mutex<HashSet<Uuid>>,
}

impl Keys {
    pub fn new(
        store: Arc<dyn ApiKeys>,
        operator_key: &str,
        ttl: Duration,
        lookups: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self {
            store,
            operator: hash(operator_key),
            ttl,
            cache: Mutex::new(LruCache::new(NonZeroUsize::new(CACHE_ENTRIES).expect("non-zero"))),
            missing: Mutex::new(LruCache::new(NonZeroUsize::new(CACHE_ENTRIES).expect("non-zero"))),
            lookups,
            revocations: AtomicU64::new(0),
            revoked: Mutex::new(LruCache::new(NonZeroUsize::new(CACHE_ENTRIES).expect("non-zero"))),
            used: Mutex::new(HashSet::new()),
        }
    }

    /// What the caches know of a presented key, without touching the database.
    pub fn known(&self, presented: &str) -> Known {
        let hash = hash(presented);
        // Compared as hashes: constant time whatever the lengths.
        if bool::from(hash.ct_eq(&self.operator)) {
            return Known::Answer(Some(Principal::Operator));
        }
        // Anything not shaped like a key is refused without a lookup.
        let shaped = presented.len() == KEY_PREFIX.len() + KEY_RANDOM_CHARS
            && presented.starts_with(KEY_PREFIX)
            && presented[KEY_PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric());
        if !shaped {
            return Known::Answer(None);
        }
        let fresh = |at: &Instant| at.elapsed() < self.ttl;
        if let Some((_, key)) = self.cache.lock().expect("key cache").get(&hash).filter(|(at, _)| fresh(at)) {
            return Known::Answer(self.principal(key.clone()));
        }
        if self.missing.lock().expect("missing keys").get(&hash).is_some_and(fresh) {
            return Known::Answer(None);
        }
        Known::Unknown(hash)
    }

    /// Looks a key up in the database and caches the answer.
    pub async fn look_up(&self, hash: [u8; 32]) -> Result<Option<Principal>, StoreError> {
        // A revocation here while the lookup runs must not be cached over.
        let generation = self.revocations.load(Ordering::Acquire);
        self.lookups.inc();
        let key = self.store.key_by_hash(&hash).await?.map(Arc::new);
        if self.revocations.load(Ordering::Acquire) == generation {
            match &key {
                Some(key) => {
                    self.cache.lock().expect("key cache").put(hash, (Instant::now(), key.clone()));
                }
                None => {
                    self.missing.lock().expect("missing keys").put(hash, Instant::now());
                }
            }
        }
        Ok(key.and_then(|k| self.principal(k)))
    }

    /// A live key's principal, noted as used.
    fn principal(&self, key: Arc<ApiKey>) -> Option<Principal> {
        key.is_live(Utc::now()).then(|| {
            self.used.lock().expect("used keys").insert(key.id);
            Principal::Key(key)
        })
    }

    /// Forgets a key at once (it was revoked here or on another gateway).
    pub fn forget(&self, id: Uuid) {
        self.revoked.lock().expect("revoked keys").put(id, ());
        let mut cache = self.cache.lock().expect("key cache");
        self.revocations.fetch_add(1, Ordering::AcqRel);
        let stale: Vec<[u8; 32]> = cache.iter().filter(|(_, (_, k))| k.id == id).map(|(h, _)| *h).collect();
        for h in stale {
            cache.pop(&h);
        }
    }

    /// Whether a principal found earlier may still act: false once its key was revoked (seen
    /// here since) or expired. Live connections ask this as they go.
    pub fn still_valid(&self, principal: &Principal) -> bool {
        match principal {
            Principal::Operator => true,
            Principal::Key(key) => {
                key.is_live(Utc::now()) && !self.revoked.lock().expect("revoked keys").contains(&key.id)
            }
        }
    }

    /// Writes the last-used time of the keys used since the last flush.
    pub async fn flush_last_used(&self) {
        let ids: Vec<Uuid> = self.used.lock().expect("used keys").drain().collect();
        if let Err(e) = self.store.touch_keys(&ids).await {
            tracing::warn!(error = %e, keys = ids.len(), "recording when keys were last used failed");
        }
    }
}

/// The key a request presents: `x-api-key`, or `Authorization: Bearer <key>`; on live routes,
/// which browsers open without headers, also `?token=` (the original's name) or `?api_key=`.
fn presented(req: &Request) -> Option<Cow<'_, str>> {
    if let Some(v) = req.headers().get("x-api-key") {
        return v.to_str().ok().map(Cow::Borrowed);
    }
    if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
        let (scheme, token) = auth.to_str().ok()?.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then_some(Cow::Borrowed(token.trim()));
    }
    if !crate::routes::live::takes_key_in_query(req.uri().path()) {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct InQuery {
        token: Option<String>,
        api_key: Option<String>,
    }
    let found = axum::extract::Query::<InQuery>::try_from_uri(req.uri()).ok()?.0;
    found.token.or(found.api_key).map(Cow::Owned)
}

/// Authenticates and rate-limits every API request; handlers find the `Principal` in the
/// request's extensions. A request is charged to its key (or its IP when it has no valid key)
/// and its key's tenant; a batch costs its item count. Every answer carries the limit headers.
pub(crate) async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let ip = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
    let ip = format!("ip:{}", ip.as_deref().unwrap_or("unknown"));
    // The address's charge for a lookup, which is also the whole charge if the key is unknown.
    let mut prepaid = None;
    let principal = match presented(&req).map(|key| state.keys.known(&key)) {
        None => None,
        Some(Known::Answer(principal)) => principal,
        // A key no cache knows costs a database lookup: its IP pays for it first, so made-up
        // keys cannot flood the database.
        Some(Known::Unknown(hash)) => {
            let decision = state.limiter.check(&ip, None, 1).await;
            let allowed = decision.allowed;
            prepaid = Some(decision);
            // Refused: no lookup, and the address's refusal below is the answer.
            if !allowed {
                None
            } else {
                match state.keys.look_up(hash).await {
                    Ok(principal) => principal,
                    Err(e) => {
                        tracing::warn!(error = %e, cause = ?std::error::Error::source(&e), "looking up an API key failed");
                        crate::guard::discard_body(req, state.body_limit).await;
                        return ApiError::Unavailable("keys cannot be checked right now".into()).into_response();
                    }
                }
            }
        }
    };
    let (client, tenant) = match &principal {
        Some(Principal::Operator) => ("operator".to_owned(), None),
        Some(Principal::Key(key)) => (format!("key:{}", key.id), Some(key.tenant_id.clone())),
        None => (ip, None),
    };
    // A batch costs its items; its body is read only for a key that may write.
    let may_write = principal.as_ref().is_some_and(|p| p.require(Scope::Write).is_ok());
    let (req, cost) = if may_write && req.method() == Method::POST && BATCH_PATHS.contains(&req.uri().path()) {
        match batch_cost(req, state.body_limit).await {
            Ok(counted) => counted,
            Err(e) => return e.into_response(),
        }
    } else {
        (req, 1)
    };
    let decision = match prepaid {
        Some(decision) if principal.is_none() => decision,
        _ => state.limiter.check(&client, tenant.as_ref(), cost).await,
    };
    // A refusal reads the body it leaves unused, so the connection carries the next request.
    let mut response = match principal {
        _ if !decision.allowed => {
            crate::guard::discard_body(req, state.body_limit).await;
            ApiError::refused(&decision, cost, "items").into_response()
        }
        None => {
            crate::guard::discard_body(req, state.body_limit).await;
            ApiError::Unauthorized.into_response()
        }
        Some(principal) => {
            let mut req = req;
            req.extensions_mut().insert(principal);
            req.extensions_mut().insert(crate::limit::Payer { client, tenant });
            next.run(req).await
        }
    };
    // A handler that charged more (an import) answers with its own last decision.
    let decision = response.extensions().get::<crate::limit::Decision>().cloned().unwrap_or(decision);
    crate::limit::headers(response.headers_mut(), &decision);
    response
}

/// Batches of stores, edits and deletes.
const BATCH_PATHS: [&str; 3] = ["/v1/messages/batch", "/v1/messages/batch/update", "/v1/messages/batch/delete"];

/// A batch costs one request per item; its body is read here and handed on.
async fn batch_cost(req: Request, limit: usize) -> Result<(Request, u32), ApiError> {
    #[derive(serde::Deserialize)]
    struct Items {
        #[serde(default)]
        messages: Vec<serde::de::IgnoredAny>,
        #[serde(default)]
        updates: Vec<serde::de::IgnoredAny>,
        #[serde(default)]
        message_ids: Vec<serde::de::IgnoredAny>,
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| ApiError::PayloadTooLarge { limit })?;
    let items =
        serde_json::from_slice::<Items>(&bytes).map_or(1, |i| i.messages.len() + i.updates.len() + i.message_ids.len());
    let cost = u32::try_from(items.clamp(1, common::domain::BATCH_MAX)).unwrap_or(1);
    Ok((Request::from_parts(parts, Body::from(bytes)), cost))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_are_long_random_and_stored_as_hashes() {
        let a = mint();
        let b = mint();
        assert_ne!(a.key, b.key);
        assert_eq!(a.key.len(), KEY_PREFIX.len() + KEY_RANDOM_CHARS);
        assert!(a.key.starts_with(KEY_PREFIX) && a.key[3..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert!(a.key.starts_with(&a.prefix) && a.prefix.len() == 11);
        assert_eq!(a.hash, hash(&a.key));
    }

    fn key(tenant: &str, scopes: &[Scope]) -> Principal {
        Principal::Key(Arc::new(ApiKey {
            id: Uuid::nil(),
            tenant_id: TenantId::parse(tenant).unwrap(),
            name: None,
            prefix: "mk_x".into(),
            scopes: scopes.to_vec(),
            created_at: Utc::now(),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        }))
    }

    #[test]
    fn a_key_acts_for_its_tenant_within_its_scopes() {
        let reader = key("acme", &[Scope::Read]);
        assert!(reader.require(Scope::Read).is_ok());
        assert!(matches!(reader.require(Scope::Write), Err(ApiError::InsufficientScope(Scope::Write))));
        assert!(matches!(reader.require_operator(), Err(ApiError::OperatorOnly)));
        assert_eq!(reader.tenant(None).unwrap().as_str(), "acme");
        assert_eq!(reader.tenant(Some("acme")).unwrap().as_str(), "acme");
        assert!(matches!(reader.tenant(Some("globex")), Err(ApiError::TenantForbidden)));
        assert!(Principal::Operator.tenant(Some("globex")).is_ok());
        assert!(matches!(Principal::Operator.tenant(None), Err(ApiError::Invalid(_))));
    }
}
