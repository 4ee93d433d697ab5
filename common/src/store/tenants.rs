//! Tenants, their API keys and their own settings: the gateway's to administer.

use async_trait::async_trait;

use super::StoreError;
use crate::config::RateLimit;
use crate::domain::{ApiKey, NewApiKey, Ranking, Tenant, TenantId};

#[async_trait]
pub trait Tenants: Send + Sync {
    /// Creates a tenant; `Exists` if the id is taken.
    async fn create_tenant(&self, id: &TenantId, name: Option<&str>) -> Result<Tenant, StoreError>;

    async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError>;

    /// Tenants in id order after `after`, at most `limit`.
    async fn tenants(&self, after: Option<&TenantId>, limit: u32) -> Result<Vec<Tenant>, StoreError>;

    /// Deletes a tenant, its keys, settings and operation records (not its messages); `false` if
    /// there was none.
    async fn delete_tenant(&self, id: &TenantId) -> Result<bool, StoreError>;
}

/// Whether a tenant id names anything, for the roles that answer 404 for one that does not.
#[async_trait]
pub trait TenantLookup: Send + Sync {
    /// Whether the tenant exists or has messages (the operator may write for any tenant id).
    async fn tenant_known(&self, tenant: &TenantId) -> Result<bool, StoreError>;
}

#[async_trait]
pub trait ApiKeys: Send + Sync {
    async fn create_key(&self, key: &NewApiKey) -> Result<ApiKey, StoreError>;

    /// The key whose SHA-256 is `hash`, live or not.
    async fn key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKey>, StoreError>;

    async fn keys(&self, tenant: &TenantId) -> Result<Vec<ApiKey>, StoreError>;

    /// Revokes a key of the tenant; `false` if it has no such key.
    async fn revoke_key(&self, tenant: &TenantId, id: uuid::Uuid) -> Result<bool, StoreError>;

    /// Records that these keys were used now.
    async fn touch_keys(&self, ids: &[uuid::Uuid]) -> Result<(), StoreError>;
}

/// A tenant's own settings, as the roles that apply them read them.
#[async_trait]
pub trait Settings: Send + Sync {
    /// A tenant's own ranking, if it set one.
    async fn tenant_ranking(&self, tenant: &TenantId) -> Result<Option<Ranking>, StoreError>;

    /// A tenant's own rate limit, if the operator set one.
    async fn tenant_rate_limit(&self, tenant: &TenantId) -> Result<Option<RateLimit>, StoreError>;
}

/// Changing a tenant's own settings (its retention policy is the retention role's:
/// [`super::RetentionRuns`]).
#[async_trait]
pub trait SettingsAdmin: Send + Sync {
    /// Sets (or, with `None`, removes) a tenant's own ranking.
    async fn set_tenant_ranking(&self, tenant: &TenantId, ranking: Option<&Ranking>) -> Result<(), StoreError>;

    /// Sets (or, with `None`, removes) a tenant's own rate limit.
    async fn set_tenant_rate_limit(&self, tenant: &TenantId, limit: Option<RateLimit>) -> Result<(), StoreError>;
}
