//! The `conversations` table: read and edited by the gateway, counted by triggers.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::FromRow;
use sqlx::types::Json;

use super::PgStore;
use crate::domain::{ConversationId, TenantId};
use crate::store::{Conversation, ConversationPage, ConversationPatch, Conversations, StoreError};

pub(super) const COLUMNS: &str = "tenant_id, conversation_id, title, metadata, archived, message_count, user_messages, \
     assistant_messages, system_messages, importance_sum, first_message_at, last_message_at, created_at, updated_at";

#[derive(FromRow)]
pub(super) struct ConversationRow {
    tenant_id: String,
    conversation_id: String,
    title: Option<String>,
    metadata: Json<Map<String, Value>>,
    archived: bool,
    message_count: i64,
    user_messages: i64,
    assistant_messages: i64,
    system_messages: i64,
    importance_sum: f64,
    first_message_at: Option<DateTime<Utc>>,
    last_message_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<ConversationRow> for Conversation {
    type Error = StoreError;

    fn try_from(r: ConversationRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("conversation {}: {what}", r.conversation_id));
        Ok(Conversation {
            tenant_id: TenantId::parse(r.tenant_id.clone()).map_err(|_| corrupt("tenant_id"))?,
            conversation_id: ConversationId::parse(r.conversation_id.clone())
                .map_err(|_| corrupt("conversation_id"))?,
            title: r.title,
            metadata: r.metadata.0,
            archived: r.archived,
            message_count: r.message_count,
            user_messages: r.user_messages,
            assistant_messages: r.assistant_messages,
            system_messages: r.system_messages,
            avg_importance: (r.message_count > 0).then(|| r.importance_sum / r.message_count as f64),
            first_message_at: r.first_message_at,
            last_message_at: r.last_message_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[async_trait]
impl Conversations for PgStore {
    async fn conversations(
        &self,
        tenant: &TenantId,
        archived: Option<bool>,
        offset: u64,
        limit: u32,
    ) -> Result<ConversationPage, StoreError> {
        // Along (tenant_id, updated_at DESC, conversation_id): a page costs its offset and size.
        let rows: Vec<ConversationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM conversations
             WHERE tenant_id = $1 AND ($2::bool IS NULL OR archived = $2)
             ORDER BY updated_at DESC, conversation_id
             OFFSET $3 LIMIT $4"
        )))
        .bind(tenant.as_str())
        .bind(archived)
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM conversations WHERE tenant_id = $1 AND ($2::bool IS NULL OR archived = $2)",
        )
        .bind(tenant.as_str())
        .bind(archived)
        .fetch_one(&self.pool)
        .await?;
        Ok(ConversationPage { items: rows.into_iter().map(Conversation::try_from).collect::<Result<_, _>>()?, total })
    }

    async fn conversation(&self, tenant: &TenantId, id: &ConversationId) -> Result<Option<Conversation>, StoreError> {
        let row: Option<ConversationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM conversations WHERE tenant_id = $1 AND conversation_id = $2"
        )))
        .bind(tenant.as_str())
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(Conversation::try_from).transpose()
    }

    async fn create_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        title: Option<&str>,
        metadata: &Map<String, Value>,
    ) -> Result<(Conversation, bool), StoreError> {
        // A row comes back only when this statement inserted it.
        let created: Option<bool> = sqlx::query_scalar(
            "INSERT INTO conversations (tenant_id, conversation_id, title, metadata, explicit)
             VALUES ($1, $2, $3, $4, true)
             ON CONFLICT (tenant_id, conversation_id) DO NOTHING
             RETURNING true",
        )
        .bind(tenant.as_str())
        .bind(id.as_str())
        .bind(title)
        .bind(Json(metadata))
        .fetch_optional(&self.pool)
        .await?;
        let conversation = self
            .conversation(tenant, id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("conversation {id} vanished as it was created")))?;
        Ok((conversation, created.unwrap_or(false)))
    }

    async fn update_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        patch: &ConversationPatch,
    ) -> Result<Option<Conversation>, StoreError> {
        let row: Option<ConversationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE conversations SET
                 title = CASE WHEN $3 THEN $4 ELSE title END,
                 metadata = coalesce($5, metadata),
                 archived = coalesce($6, archived),
                 explicit = true,
                 updated_at = now()
             WHERE tenant_id = $1 AND conversation_id = $2
             RETURNING {COLUMNS}"
        )))
        .bind(tenant.as_str())
        .bind(id.as_str())
        .bind(patch.title.is_some())
        .bind(patch.title.clone().flatten())
        .bind(patch.metadata.as_ref().map(Json))
        .bind(patch.archived)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Conversation::try_from).transpose()
    }

    async fn forget_conversation(&self, tenant: &TenantId, id: &ConversationId) -> Result<bool, StoreError> {
        let found: i64 = sqlx::query_scalar(
            "WITH gone AS (
                 DELETE FROM conversations
                 WHERE tenant_id = $1 AND conversation_id = $2 AND message_count <= 0
                 RETURNING 1
             ), kept AS (
                 UPDATE conversations
                 SET title = NULL, metadata = '{}', archived = false, explicit = false, updated_at = now()
                 WHERE tenant_id = $1 AND conversation_id = $2 AND message_count > 0
                 RETURNING 1
             )
             SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM kept)",
        )
        .bind(tenant.as_str())
        .bind(id.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(found > 0)
    }
}
