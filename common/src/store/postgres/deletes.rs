//! Deletes on request, behind tombstones that keep the deleted from coming back.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::PgStore;
use crate::domain::{ConversationId, MessageId, TenantId};
use crate::store::{Cutoff, Deletes, StoreError, TenantHold, Tombstone, locks};

/// A transaction holding a tenant's write lock exclusively.
struct PgTenantHold {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    tenant: TenantId,
}

#[async_trait]
impl TenantHold for PgTenantHold {
    async fn tombstone(&mut self, what: &[Tombstone], cutoff: Cutoff) -> Result<DateTime<Utc>, StoreError> {
        let (kinds, keys): (Vec<&str>, Vec<String>) = what
            .iter()
            .map(|w| match w {
                Tombstone::Message(id) => ("message", id.to_string()),
                Tombstone::Conversation(c) => ("conversation", c.as_str().to_owned()),
                Tombstone::Tenant => ("tenant", String::new()),
            })
            .unzip();
        // `clock_timestamp()`: inserts waiting on the lock start their statements after it.
        let at: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&mut *self.tx).await?;
        sqlx::query(
            "INSERT INTO tombstones (tenant_id, kind, key, before_sequence, before_at, created_at)
             SELECT DISTINCT $1, u.kind, u.key, $4::int8, $5::timestamptz, $6::timestamptz
             FROM UNNEST($2::text[], $3::text[]) AS u(kind, key)
             ON CONFLICT (tenant_id, kind, key) DO UPDATE
             SET before_sequence = greatest(tombstones.before_sequence, EXCLUDED.before_sequence),
                 before_at = greatest(tombstones.before_at, EXCLUDED.before_at), created_at = EXCLUDED.created_at",
        )
        .bind(self.tenant.as_str())
        .bind(&kinds)
        .bind(&keys)
        .bind(i64::try_from(cutoff.sequence).unwrap_or(i64::MAX))
        .bind(cutoff.at)
        .bind(at)
        .execute(&mut *self.tx)
        .await?;
        // A deleted conversation, or every conversation of an erased tenant, goes whole: its
        // title and metadata too (a conversation only its messages made goes with its last one).
        sqlx::query(
            "DELETE FROM conversations c USING UNNEST($2::text[], $3::text[]) AS u(kind, key)
             WHERE c.tenant_id = $1
               AND (u.kind = 'tenant' OR (u.kind = 'conversation' AND c.conversation_id = u.key))",
        )
        .bind(self.tenant.as_str())
        .bind(&kinds)
        .bind(&keys)
        .execute(&mut *self.tx)
        .await?;
        Ok(at)
    }

    async fn delete(&mut self, ids: &[MessageId]) -> Result<Vec<MessageId>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        // Rows locked in (tenant, id) order, as every other multi-row writer locks them.
        let deleted: Vec<Uuid> = sqlx::query_scalar(
            "DELETE FROM messages WHERE tenant_id = $1 AND id IN (
                 SELECT id FROM messages WHERE tenant_id = $1 AND id = ANY($2) ORDER BY id FOR UPDATE)
             RETURNING id",
        )
        .bind(self.tenant.as_str())
        .bind(&ids)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(deleted.into_iter().map(MessageId).collect())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl Deletes for PgStore {
    async fn hold_tenant(&self, tenant: &TenantId) -> Result<Box<dyn TenantHold>, StoreError> {
        let mut tx = self.long_work().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(locks::tenant_writes(tenant)).execute(&mut *tx).await?;
        Ok(Box::new(PgTenantHold { tx, tenant: tenant.clone() }))
    }

    async fn delete_stored(
        &self,
        tenant: &TenantId,
        conversation: Option<&ConversationId>,
        stored_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<MessageId>, StoreError> {
        let mut tx = self.long_work().await?;
        let deleted: Vec<Uuid> = sqlx::query_scalar(
            "DELETE FROM messages WHERE tenant_id = $1 AND id IN (
                 SELECT id FROM messages
                 WHERE tenant_id = $1 AND ($2::text IS NULL OR conversation_id = $2) AND stored_at <= $3
                 ORDER BY id LIMIT $4 FOR UPDATE)
             RETURNING id",
        )
        .bind(tenant.as_str())
        .bind(conversation.map(ConversationId::as_str))
        .bind(stored_before)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted.into_iter().map(MessageId).collect())
    }

    async fn delete_tenant_settings(&self, tenant: &TenantId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM tenant_settings WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn prune_tombstones(&self, first_sequence: u64, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tx = self.long_work().await?;
        let done = sqlx::query("DELETE FROM tombstones WHERE created_at < $2 AND before_sequence < $1")
            .bind(i64::try_from(first_sequence).unwrap_or(i64::MAX))
            .bind(older_than)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}
