//! Retention runs, edits, archiving and export.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pgvector::Vector;
use serde_json::Value;
use sqlx::AssertSqlSafe;
use sqlx::types::Json;
use uuid::Uuid;

use super::PgStore;
use super::rows::MessageRow;
use crate::config::ImportanceWeights;
use crate::domain::importance::Parts;
use crate::domain::{MessageId, RetentionAction, RetentionPolicy, TenantId, ValidUpdate};
use crate::store::{Candidates, Edited, Edits, Exported, RetentionRuns, Space, StoreError, StoredMessage};

#[async_trait]
impl RetentionRuns for PgStore {
    async fn tenants_with_messages(&self) -> Result<Vec<TenantId>, StoreError> {
        let mut tx = self.long_work().await?;
        let ids: Vec<String> = sqlx::query_scalar("SELECT DISTINCT tenant_id FROM messages ORDER BY tenant_id")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        ids.into_iter()
            .map(|id| TenantId::parse(id.clone()).map_err(|_| StoreError::Corrupt(format!("tenant {id}"))))
            .collect()
    }

    async fn tenant_retention(&self, tenant: &TenantId) -> Result<Option<RetentionPolicy>, StoreError> {
        let row: Option<Option<Json<RetentionPolicy>>> =
            sqlx::query_scalar("SELECT retention FROM tenant_settings WHERE tenant_id = $1")
                .bind(tenant.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.flatten().map(|j| j.0))
    }

    async fn set_tenant_retention(
        &self,
        tenant: &TenantId,
        policy: Option<&RetentionPolicy>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tenant_settings (tenant_id, retention) VALUES ($1, $2)
             ON CONFLICT (tenant_id) DO UPDATE SET retention = EXCLUDED.retention, updated_at = now()",
        )
        .bind(tenant.as_str())
        .bind(policy.map(Json))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn retention_candidates(
        &self,
        tenant: &TenantId,
        policy: &RetentionPolicy,
        action: RetentionAction,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Candidates, StoreError> {
        let mut tx = self.long_work().await?;
        let days = |d: Option<u32>| d.map(|d| i32::try_from(d).unwrap_or(i32::MAX));
        let limit = i64::from(limit);
        // Each row carries the count of every match (taken before the limit).
        let rows: Vec<(Uuid, i64)> = match action {
            RetentionAction::Archive => {
                // The per-conversation rank is computed only when there is a cap.
                let newest = if policy.max_messages_per_conversation.is_some() {
                    "row_number() OVER (PARTITION BY conversation_id ORDER BY created_at DESC, id DESC)"
                } else {
                    "0"
                };
                sqlx::query_as(AssertSqlSafe(format!(
                    "WITH live AS (
                         SELECT id, created_at, importance, {newest} AS newest
                         FROM messages WHERE tenant_id = $1 AND archived_at IS NULL AND NOT pinned)
                     SELECT id, count(*) OVER () FROM live
                     WHERE ($2::int IS NOT NULL AND created_at < $6 - make_interval(days => $2) AND importance < $3)
                        OR ($4::int IS NOT NULL AND created_at < $6 - make_interval(days => $4))
                        OR ($5::int IS NOT NULL AND newest > $5)
                     ORDER BY created_at, id LIMIT $7"
                )))
                .bind(tenant.as_str())
                .bind(days(policy.archive_after_days))
                .bind(policy.archive_below_importance)
                .bind(days(policy.max_age_days))
                .bind(days(policy.max_messages_per_conversation))
                .bind(now)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?
            }
            RetentionAction::Delete => {
                let Some(after) = days(policy.delete_archived_after_days) else { return Ok(Candidates::default()) };
                sqlx::query_as(
                    "SELECT id, count(*) OVER () FROM messages
                     WHERE tenant_id = $1 AND archived_at IS NOT NULL AND NOT pinned
                       AND archived_at < $3 - make_interval(days => $2)
                     ORDER BY archived_at, id LIMIT $4",
                )
                .bind(tenant.as_str())
                .bind(after)
                .bind(now)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?
            }
        };
        tx.commit().await?;
        let total = rows.first().map_or(0, |(_, total)| u64::try_from(*total).unwrap_or(0));
        Ok(Candidates { ids: rows.into_iter().map(|(id, _)| MessageId(id)).collect(), total })
    }

    async fn archive_messages(
        &self,
        tenant: &TenantId,
        ids: &[MessageId],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.long_work().await?;
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let done = sqlx::query(
            "UPDATE messages SET archived_at = $3, updated_at = now()
             WHERE tenant_id = $1 AND id = ANY($2) AND archived_at IS NULL AND NOT pinned",
        )
        .bind(tenant.as_str())
        .bind(&ids)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn delete_messages(&self, tenant: &TenantId, ids: &[MessageId]) -> Result<u64, StoreError> {
        let mut tx = self.long_work().await?;
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let done = sqlx::query(
            "DELETE FROM messages WHERE tenant_id = $1 AND id = ANY($2) AND archived_at IS NOT NULL AND NOT pinned",
        )
        .bind(tenant.as_str())
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl Edits for PgStore {
    async fn update_message(
        &self,
        tenant: &TenantId,
        id: MessageId,
        update: &ValidUpdate,
        weights: ImportanceWeights,
        now: DateTime<Utc>,
    ) -> Result<Option<Edited>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<MessageRow> = sqlx::query_as(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages m WHERE m.id = $1 AND m.tenant_id = $2 FOR UPDATE"
        ))
        .bind(id.0)
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let old = StoredMessage::try_from(row)?;
        let content_changed = update.content.as_ref().is_some_and(|c| *c != old.content);
        let importance_override = update.importance_override.unwrap_or(old.importance_override);
        let pinned = update.pinned.unwrap_or(old.pinned);
        // Kept unless the override or the pin changes (an imported message keeps its own).
        let importance = if update.importance_override.is_some() || update.pinned.is_some() {
            Parts { role: old.role, created_at: old.created_at, importance_override, pinned }
                .score(old.stored_at, weights)
        } else {
            old.importance
        };
        let archived_at = match update.archived {
            None => old.archived_at,
            Some(true) => old.archived_at.or(Some(now)),
            Some(false) => None,
        };
        let row: MessageRow = sqlx::query_as(concat!(
            "UPDATE messages m SET content = $2, metadata = $3, importance_override = $4, pinned = $5,
                 importance = $6, archived_at = $7, updated_at = now(),
                 revision = m.revision + CASE WHEN $8 THEN 1 ELSE 0 END,
                 status = CASE WHEN $8 THEN 'pending' ELSE m.status END,
                 failure_reason = CASE WHEN $8 THEN NULL ELSE m.failure_reason END,
                 embed_failures = CASE WHEN $8 THEN 0 ELSE m.embed_failures END
             WHERE m.id = $1 AND m.tenant_id = $9 RETURNING ",
            message_columns!()
        ))
        .bind(id.0)
        .bind(update.content.as_deref().unwrap_or(&old.content))
        .bind(Json(Value::Object(update.metadata.clone().unwrap_or_else(|| old.metadata.clone()))))
        .bind(importance_override)
        .bind(pinned)
        .bind(importance)
        .bind(archived_at)
        .bind(content_changed)
        .bind(tenant.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if content_changed {
            // The old text's vectors and refusals, in every space, no longer describe it.
            let spaces: Vec<i32> = sqlx::query_scalar("SELECT id FROM embedding_spaces").fetch_all(&mut *tx).await?;
            for space in spaces {
                let table = Self::vector_table_of(space);
                sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE tenant_id = $1 AND message_id = $2")))
                    .bind(tenant.as_str())
                    .bind(id.0)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM embedding_failures WHERE tenant_id = $1 AND message_id = $2")
                .bind(tenant.as_str())
                .bind(id.0)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let archived = match (old.archived_at.is_some(), archived_at.is_some()) {
            (false, true) => Some(true),
            (true, false) => Some(false),
            _ => None,
        };
        Ok(Some(Edited { message: StoredMessage::try_from(row)?, content_changed, archived }))
    }

    async fn set_archived(
        &self,
        tenant: &TenantId,
        id: MessageId,
        archived: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let row: Option<MessageRow> = sqlx::query_as(concat!(
            "UPDATE messages m SET archived_at = CASE WHEN $3 THEN coalesce(m.archived_at, $4) END, updated_at = now()
             WHERE m.id = $1 AND m.tenant_id = $2
             RETURNING ",
            message_columns!()
        ))
        .bind(id.0)
        .bind(tenant.as_str())
        .bind(archived)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(StoredMessage::try_from).transpose()
    }

    async fn export(
        &self,
        tenant: &TenantId,
        after: Option<MessageId>,
        limit: u32,
        vectors: Option<&Space>,
    ) -> Result<Vec<Exported>, StoreError> {
        let mut tx = self.long_work().await?;
        let rows: Vec<MessageRow> = sqlx::query_as(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages m WHERE m.tenant_id = $1 AND ($2::uuid IS NULL OR m.id > $2) ORDER BY m.id LIMIT $3"
        ))
        .bind(tenant.as_str())
        .bind(after.map(|a| a.0))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let mut found: std::collections::HashMap<Uuid, Vec<f32>> = std::collections::HashMap::new();
        if let Some(space) = vectors {
            let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
            let table = Self::vector_table(space);
            let pairs: Vec<(Uuid, Vector)> = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT message_id, embedding::vector FROM {table} WHERE tenant_id = $2 AND message_id = ANY($1)"
            )))
            .bind(&ids)
            .bind(tenant.as_str())
            .fetch_all(&mut *tx)
            .await?;
            found = pairs.into_iter().map(|(id, v)| (id, v.to_vec())).collect();
        }
        tx.commit().await?;
        rows.into_iter()
            .map(|r| {
                let vector = found.remove(&r.id);
                Ok(Exported { message: StoredMessage::try_from(r)?, vector })
            })
            .collect()
    }
}
