//! Ingest: inserting messages, storing their vectors and refusals, the sweeper's queue, and
//! single-message reads.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::PgStore;
use super::rows::tenant_of;
use super::rows::{MessageRow, RowColumns};
use super::vectors::{FailureColumns, RowLock, columns, ensure_active};
use crate::domain::{MessageId, MessageKey, TenantId};
use crate::store::{
    Failure, IngestWrites, Inserted, MessageReads, NewRow, NewVector, Space, StoreError, StoredMessage, locks,
};

#[async_trait]
impl MessageReads for PgStore {
    async fn get_message(&self, tenant: &TenantId, id: MessageId) -> Result<Option<StoredMessage>, StoreError> {
        let row: Option<MessageRow> = sqlx::query_as(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages m WHERE m.tenant_id = $1 AND m.id = $2"
        ))
        .bind(tenant.as_str())
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        row.map(StoredMessage::try_from).transpose()
    }

    async fn tombstoned(&self, rows: &[NewRow]) -> Result<Vec<MessageKey>, StoreError> {
        let c = RowColumns::of(rows);
        let keys: Vec<(String, Uuid)> = sqlx::query_as(concat!(
            "SELECT u.tenant_id, u.id FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::timestamptz[])
                  AS u(id, tenant_id, conversation_id, sequence, published_at)
             WHERE ",
            covered!()
        ))
        .bind(&c.ids)
        .bind(&c.tenants)
        .bind(&c.conversations)
        .bind(&c.sequences)
        .bind(&c.published)
        .fetch_all(&self.pool)
        .await?;
        keys.into_iter().map(|(tenant, id)| Ok(MessageKey::new(tenant_of(tenant)?, MessageId(id)))).collect()
    }
}

#[async_trait]
impl IngestWrites for PgStore {
    async fn insert_messages(&self, rows: &[NewRow]) -> Result<Vec<Inserted>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let c = RowColumns::of(rows);
        let mut tx = self.long_work().await?;
        // Shared per tenant: a delete of the tenant's data (exclusive) waits for this insert, or
        // this insert waits for the delete and then sees its tombstone.
        let mut keys: Vec<i64> = rows.iter().map(|r| locks::tenant_writes(&r.message.tenant_id)).collect();
        keys.sort_unstable();
        keys.dedup();
        sqlx::query("SELECT count(pg_advisory_xact_lock_shared(k)) FROM UNNEST($1::int8[]) AS k")
            .bind(&keys)
            .execute(&mut *tx)
            .await?;
        // `statement_timestamp()`: later than any tombstone this statement waited for, so a
        // delete's batches (rows stored up to the tombstone) never take a newer row.
        let inserted: Vec<(String, Uuid)> = sqlx::query_as(concat!(
            "INSERT INTO messages (id, tenant_id, conversation_id, role, name, content, metadata,
                                   importance, importance_override, pinned, created_at, archived_at, stored_at)
             SELECT id, tenant_id, conversation_id, role, name, content, metadata::jsonb,
                    importance, importance_override, pinned, created_at, archived_at, statement_timestamp()
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::float8[], $9::float8[], $10::bool[], $11::timestamptz[], $12::timestamptz[],
                         $13::int8[], $14::timestamptz[])
                  AS u(id, tenant_id, conversation_id, role, name, content, metadata,
                       importance, importance_override, pinned, created_at, archived_at, sequence, published_at)
             WHERE NOT ",
            covered!(),
            " ON CONFLICT (tenant_id, id) DO NOTHING
             RETURNING tenant_id, id"
        ))
        .bind(&c.ids)
        .bind(&c.tenants)
        .bind(&c.conversations)
        .bind(&c.roles)
        .bind(&c.names)
        .bind(&c.contents)
        .bind(&c.metadata)
        .bind(&c.importance)
        .bind(&c.overrides)
        .bind(&c.pinned)
        .bind(&c.created)
        .bind(&c.archived)
        .bind(&c.sequences)
        .bind(&c.published)
        .fetch_all(&mut *tx)
        .await?;
        let stored: Vec<MessageRow> = sqlx::query_as(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages m WHERE (m.tenant_id, m.id) IN (SELECT * FROM UNNEST($1::text[], $2::uuid[]))"
        ))
        .bind(&c.tenants)
        .bind(&c.ids)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let new: std::collections::HashSet<(String, Uuid)> = inserted.into_iter().collect();
        stored
            .into_iter()
            .map(|r| {
                let new = new.contains(&(r.tenant_id.clone(), r.id));
                Ok(Inserted { row: StoredMessage::try_from(r)?, new })
            })
            .collect()
    }

    async fn save_vectors(&self, space: &Space, vectors: &[NewVector]) -> Result<(), StoreError> {
        if vectors.is_empty() {
            return Ok(());
        }
        let columns = columns(space, vectors)?;
        let mut tx = self.long_work().await?;
        ensure_active(&mut tx, space).await?;
        Self::insert_vectors(&mut tx, space, &columns, RowLock::Update).await?;
        sqlx::query(
            "UPDATE messages m SET status = 'embedded', failure_reason = NULL, embed_failures = 0, updated_at = now()
             FROM UNNEST($1::text[], $2::uuid[], $3::int4[]) AS u(tenant_id, id, revision)
             WHERE m.tenant_id = u.tenant_id AND m.id = u.id AND m.revision = u.revision
               AND m.status <> 'embedded'",
        )
        .bind(&columns.1)
        .bind(&columns.0)
        .bind(&columns.3)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mark_failed(&self, space: &Space, failures: &[Failure]) -> Result<(), StoreError> {
        if failures.is_empty() {
            return Ok(());
        }
        let columns = FailureColumns::of(failures);
        let mut tx = self.long_work().await?;
        ensure_active(&mut tx, space).await?;
        Self::insert_failures(&mut tx, space, &columns, RowLock::Update).await?;
        let FailureColumns { tenants, ids, reasons, revisions } = columns;
        sqlx::query(
            "UPDATE messages m SET status = 'failed', failure_reason = u.reason,
                                   embed_failures = m.embed_failures + 1, updated_at = now()
             FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::int4[]) AS u(tenant_id, id, reason, revision)
             WHERE m.tenant_id = u.tenant_id AND m.id = u.id AND m.revision = u.revision
               AND m.status <> 'embedded'",
        )
        .bind(&tenants)
        .bind(&ids)
        .bind(&reasons)
        .bind(&revisions)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn stale(
        &self,
        before: DateTime<Utc>,
        max_failures: u32,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut tx = self.long_work().await?;
        let rows: Vec<MessageRow> = sqlx::query_as(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages m
             WHERE m.status <> 'embedded' AND m.updated_at < $1
               AND (m.status = 'pending' OR m.embed_failures < $2)
             ORDER BY m.updated_at LIMIT $3"
        ))
        .bind(before)
        .bind(i32::try_from(max_failures).unwrap_or(i32::MAX))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.into_iter().map(StoredMessage::try_from).collect()
    }

    async fn touch(&self, keys: &[MessageKey]) -> Result<(), StoreError> {
        let tenants: Vec<&str> = keys.iter().map(|k| k.tenant_id.as_str()).collect();
        let ids: Vec<Uuid> = keys.iter().map(|k| k.id.0).collect();
        sqlx::query(
            "UPDATE messages m SET updated_at = now()
             FROM UNNEST($1::text[], $2::uuid[]) AS u(tenant_id, id)
             WHERE m.tenant_id = u.tenant_id AND m.id = u.id",
        )
        .bind(&tenants)
        .bind(&ids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn pending_count(&self) -> Result<i64, StoreError> {
        let mut tx = self.long_work().await?;
        let count =
            sqlx::query_scalar("SELECT count(*) FROM messages WHERE status = 'pending'").fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(count)
    }
}
