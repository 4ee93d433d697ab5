//! Tenants, API keys and a tenant's own settings.

use async_trait::async_trait;
use sqlx::types::Json;
use uuid::Uuid;

use super::PgStore;
use super::rows::{KeyRow, TenantRow};
use crate::config::RateLimit;
use crate::domain::{ApiKey, NewApiKey, Ranking, Tenant, TenantId};
use crate::store::{ApiKeys, Settings, SettingsAdmin, StoreError, TenantLookup, Tenants};

#[async_trait]
impl Tenants for PgStore {
    async fn create_tenant(&self, id: &TenantId, name: Option<&str>) -> Result<Tenant, StoreError> {
        let row: Option<TenantRow> = sqlx::query_as(
            "INSERT INTO tenants (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING
             RETURNING id, name, created_at",
        )
        .bind(id.as_str())
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.ok_or_else(|| StoreError::Exists(format!("tenant {id}")))?.try_into()
    }

    async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let row: Option<TenantRow> = sqlx::query_as("SELECT id, name, created_at FROM tenants WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(Tenant::try_from).transpose()
    }

    async fn tenants(&self, after: Option<&TenantId>, limit: u32) -> Result<Vec<Tenant>, StoreError> {
        let rows: Vec<TenantRow> =
            sqlx::query_as("SELECT id, name, created_at FROM tenants WHERE id > coalesce($1, '') ORDER BY id LIMIT $2")
                .bind(after.map(TenantId::as_str))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(Tenant::try_from).collect()
    }

    async fn delete_tenant(&self, id: &TenantId) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM tenants WHERE id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM tenant_settings WHERE tenant_id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        // Its operations' records go with it: nothing of a deleted tenant is left.
        sqlx::query("DELETE FROM operations WHERE tenant_id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(deleted.rows_affected() > 0)
    }
}

#[async_trait]
impl TenantLookup for PgStore {
    async fn tenant_known(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1) OR EXISTS (SELECT 1 FROM messages WHERE tenant_id = $1)",
        )
        .bind(tenant.as_str())
        .fetch_one(&self.pool)
        .await?)
    }
}

#[async_trait]
impl ApiKeys for PgStore {
    async fn create_key(&self, key: &NewApiKey) -> Result<ApiKey, StoreError> {
        let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
        let row: KeyRow = sqlx::query_as(concat!(
            "INSERT INTO api_keys (id, tenant_id, name, prefix, hash, scopes, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING ",
            key_columns!()
        ))
        .bind(key.id)
        .bind(key.tenant_id.as_str())
        .bind(key.name.as_deref())
        .bind(&key.prefix)
        .bind(&key.hash[..])
        .bind(&scopes)
        .bind(key.expires_at)
        .fetch_one(&self.pool)
        .await?;
        row.try_into()
    }

    async fn key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKey>, StoreError> {
        let row: Option<KeyRow> = sqlx::query_as(concat!("SELECT ", key_columns!(), " FROM api_keys WHERE hash = $1"))
            .bind(&hash[..])
            .fetch_optional(&self.pool)
            .await?;
        row.map(ApiKey::try_from).transpose()
    }

    async fn keys(&self, tenant: &TenantId) -> Result<Vec<ApiKey>, StoreError> {
        let rows: Vec<KeyRow> = sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys WHERE tenant_id = $1 ORDER BY created_at"
        ))
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ApiKey::try_from).collect()
    }

    async fn revoke_key(&self, tenant: &TenantId, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant.as_str())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn touch_keys(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Settings for PgStore {
    async fn tenant_ranking(&self, tenant: &TenantId) -> Result<Option<Ranking>, StoreError> {
        let row: Option<Option<Json<Ranking>>> =
            sqlx::query_scalar("SELECT ranking FROM tenant_settings WHERE tenant_id = $1")
                .bind(tenant.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.flatten().map(|j| j.0))
    }

    async fn tenant_rate_limit(&self, tenant: &TenantId) -> Result<Option<RateLimit>, StoreError> {
        let row: Option<Option<String>> =
            sqlx::query_scalar("SELECT rate_limit FROM tenant_settings WHERE tenant_id = $1")
                .bind(tenant.as_str())
                .fetch_optional(&self.pool)
                .await?;
        row.flatten()
            .map(|text| text.parse().map_err(|e| StoreError::Corrupt(format!("rate limit of tenant {tenant}: {e}"))))
            .transpose()
    }
}

#[async_trait]
impl SettingsAdmin for PgStore {
    async fn set_tenant_ranking(&self, tenant: &TenantId, ranking: Option<&Ranking>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tenant_settings (tenant_id, ranking) VALUES ($1, $2)
             ON CONFLICT (tenant_id) DO UPDATE SET ranking = EXCLUDED.ranking, updated_at = now()",
        )
        .bind(tenant.as_str())
        .bind(ranking.map(Json))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_tenant_rate_limit(&self, tenant: &TenantId, limit: Option<RateLimit>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tenant_settings (tenant_id, rate_limit) VALUES ($1, $2)
             ON CONFLICT (tenant_id) DO UPDATE SET rate_limit = EXCLUDED.rate_limit, updated_at = now()",
        )
        .bind(tenant.as_str())
        .bind(limit.map(|l| l.to_string()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
