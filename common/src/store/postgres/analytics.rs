//! Usage from `conversations`, `message_days` and the partial index of messages not embedded.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::PgStore;
use super::conversations::{COLUMNS, ConversationRow};
use crate::domain::TenantId;
use crate::store::{Analytics, Conversation, DayCount, StoreError, TenantUsage, Usage};

#[async_trait]
impl Analytics for PgStore {
    async fn usage(&self, tenant: &TenantId) -> Result<Usage, StoreError> {
        let (total_messages, total_conversations, archived_conversations, importance_sum, last_activity): (
            i64,
            i64,
            i64,
            f64,
            Option<DateTime<Utc>>,
        ) = sqlx::query_as(
            "SELECT coalesce(sum(message_count), 0)::int8, count(*), count(*) FILTER (WHERE archived),
                    coalesce(sum(importance_sum), 0)::float8, max(last_message_at)
             FROM conversations WHERE tenant_id = $1",
        )
        .bind(tenant.as_str())
        .fetch_one(&self.pool)
        .await?;
        // From `messages_tenant_unembedded`: only the messages not embedded are read.
        let (pending_embeddings, failed_embeddings): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'failed')
             FROM messages WHERE tenant_id = $1 AND status <> 'embedded'",
        )
        .bind(tenant.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(Usage {
            total_messages,
            total_conversations,
            archived_conversations,
            importance_sum,
            pending_embeddings,
            failed_embeddings,
            last_activity,
        })
    }

    async fn days(&self, tenant: &TenantId, from: NaiveDate) -> Result<Vec<DayCount>, StoreError> {
        let rows: Vec<(NaiveDate, String, i64)> = sqlx::query_as(
            "SELECT day, role, messages FROM message_days WHERE tenant_id = $1 AND day >= $2 ORDER BY day, role",
        )
        .bind(tenant.as_str())
        .bind(from)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(day, role, messages)| DayCount { day, role, messages }).collect())
    }

    async fn recent_conversations(&self, tenant: &TenantId, limit: u32) -> Result<Vec<Conversation>, StoreError> {
        let rows: Vec<ConversationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM conversations WHERE tenant_id = $1
             ORDER BY last_message_at DESC NULLS LAST, conversation_id LIMIT $2"
        )))
        .bind(tenant.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Conversation::try_from).collect()
    }

    async fn tenants_usage(&self) -> Result<Vec<TenantUsage>, StoreError> {
        let rows: Vec<(String, i64, i64, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT tenant_id, coalesce(sum(message_count), 0)::int8, count(*), max(last_message_at)
             FROM conversations GROUP BY tenant_id ORDER BY tenant_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(tenant, total_messages, total_conversations, last_activity)| {
                let tenant_id = TenantId::parse(tenant.clone())
                    .map_err(|_| StoreError::Corrupt(format!("conversations: tenant_id {tenant:?}")))?;
                Ok(TenantUsage { tenant_id, total_messages, total_conversations, last_activity })
            })
            .collect()
    }
}
