//! Embedding spaces: registering one (and its vector table), backfilling and activating it.

use async_trait::async_trait;
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use super::rows::{MessageRow, SpaceRow};
use super::vectors::{FailureColumns, RowLock, columns};
use super::{PgStore, SPACES_LOCK};
use crate::contract::SpaceRef;
use crate::domain::{MessageKey, MessageStatus};
use crate::store::{Backfill, Coverage, Failure, NewVector, Space, Spaces, StoreError, StoredMessage};

#[async_trait]
impl Spaces for PgStore {
    async fn active_space(&self) -> Result<Option<Space>, StoreError> {
        let row: Option<SpaceRow> =
            sqlx::query_as(concat!("SELECT ", space_columns!(), " FROM embedding_spaces WHERE active"))
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(Space::from))
    }

    async fn space(&self, id: i32) -> Result<Option<Space>, StoreError> {
        let row: Option<SpaceRow> =
            sqlx::query_as(concat!("SELECT ", space_columns!(), " FROM embedding_spaces WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(Space::from))
    }
}

#[async_trait]
impl Backfill for PgStore {
    async fn register_space(&self, space: &SpaceRef) -> Result<Space, StoreError> {
        let dimensions = i32::try_from(space.dimensions).unwrap_or(i32::MAX);
        let mut tx = self.long_work().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SPACES_LOCK).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO embedding_spaces (provider, model, dimensions, active, activated_at)
             SELECT $1, $2, $3, first, CASE WHEN first THEN now() END
             FROM (SELECT NOT EXISTS (SELECT 1 FROM embedding_spaces WHERE active) AS first) f
             ON CONFLICT (provider, model, dimensions) DO NOTHING",
        )
        .bind(&space.provider)
        .bind(&space.model)
        .bind(dimensions)
        .execute(&mut *tx)
        .await?;
        let row: SpaceRow = sqlx::query_as(concat!(
            "SELECT ",
            space_columns!(),
            " FROM embedding_spaces WHERE provider = $1 AND model = $2 AND dimensions = $3"
        ))
        .bind(&space.provider)
        .bind(&space.model)
        .bind(dimensions)
        .fetch_one(&mut *tx)
        .await?;
        let space = Space::from(row);
        // Its vector table, in the layout of migration 0010's functions.
        sqlx::query("SELECT create_vector_table($1, $2), index_vector_table($1)")
            .bind(space.id)
            .bind(dimensions)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(space)
    }

    async fn unembedded(
        &self,
        space: &Space,
        after: Option<&MessageKey>,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut tx = self.long_work().await?;
        // Two statements rather than `$1 IS NULL OR (m.tenant_id, m.id) > ($1, $2)`, which a
        // generic plan cannot use to start the primary key scan at the cursor.
        let after_cursor = if after.is_some() {
            "(m.tenant_id, m.id) > ($1, $2) AND"
        } else {
            "$1::text IS NULL AND $2::uuid IS NULL AND"
        };
        let rows: Vec<MessageRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {} FROM messages m
             WHERE {after_cursor} {}
             ORDER BY m.tenant_id, m.id LIMIT $3",
            message_columns!(),
            Self::missing_in(space)
        )))
        .bind(after.map(|k| k.tenant_id.as_str()))
        .bind(after.map(|k| k.id.0))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.into_iter().map(StoredMessage::try_from).collect()
    }

    async fn save_backfill(
        &self,
        space: &Space,
        vectors: &[NewVector],
        failures: &[Failure],
        cursor: &MessageKey,
    ) -> Result<(), StoreError> {
        let columns = columns(space, vectors)?;
        let failed = FailureColumns::of(failures);
        let mut tx = self.long_work().await?;
        if !columns.0.is_empty() {
            Self::insert_vectors(&mut tx, space, &columns, RowLock::Share).await?;
        }
        if !failed.ids.is_empty() {
            Self::insert_failures(&mut tx, space, &failed, RowLock::Share).await?;
        }
        sqlx::query(
            "UPDATE embedding_spaces
             SET backfill_cursor_tenant = $2, backfill_cursor = $3, backfilled = backfilled + $4 WHERE id = $1",
        )
        .bind(space.id)
        .bind(cursor.tenant_id.as_str())
        .bind(cursor.id.0)
        .bind(i64::try_from(columns.0.len() + failed.ids.len()).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn coverage(&self, space: &Space) -> Result<Coverage, StoreError> {
        let mut tx = self.long_work().await?;
        let (messages, missing): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT count(*), count(*) FILTER (WHERE {}) FROM messages m",
            Self::missing_in(space)
        )))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Coverage { messages, missing })
    }

    async fn activate_space(
        &self,
        space: &Space,
        leftover_limit: u32,
    ) -> Result<Option<Vec<StoredMessage>>, StoreError> {
        let table = Self::vector_table(space);
        let mut tx = self.long_work().await?;
        // Exclusive: waits for writes to the old space in flight (they hold it shared), and
        // every write after this commits sees the new active space.
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SPACES_LOCK).execute(&mut *tx).await?;
        // Messages stored since the backfill's last pass (ingest does not stop for it).
        let leftovers: Vec<MessageRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {} FROM messages m WHERE {} ORDER BY m.tenant_id, m.id LIMIT $1",
            message_columns!(),
            Self::missing_in(space)
        )))
        .bind(i64::from(leftover_limit) + 1)
        .fetch_all(&mut *tx)
        .await?;
        if leftovers.len() > leftover_limit as usize {
            return Ok(None);
        }
        sqlx::query("UPDATE embedding_spaces SET active = false WHERE active AND id <> $1")
            .bind(space.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE embedding_spaces SET active = true, activated_at = now() WHERE id = $1 AND NOT active")
            .bind(space.id)
            .execute(&mut *tx)
            .await?;
        // Statuses now describe the new space: a vector means embedded, a refusal failed, and
        // the leftovers are pending until the caller embeds them.
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE messages m SET status = 'embedded', failure_reason = NULL, updated_at = now()
             WHERE m.status <> 'embedded'
               AND EXISTS (SELECT 1 FROM {table} v WHERE v.tenant_id = m.tenant_id AND v.message_id = m.id)"
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE messages m SET status = 'failed', failure_reason = f.reason, updated_at = now()
             FROM embedding_failures f
             WHERE f.space_id = $1 AND f.tenant_id = m.tenant_id AND f.message_id = m.id
               AND (m.status <> 'failed' OR m.failure_reason IS DISTINCT FROM f.reason)",
        )
        .bind(space.id)
        .execute(&mut *tx)
        .await?;
        let tenants: Vec<&str> = leftovers.iter().map(|r| r.tenant_id.as_str()).collect();
        let ids: Vec<Uuid> = leftovers.iter().map(|r| r.id).collect();
        sqlx::query(
            "UPDATE messages m SET status = 'pending', failure_reason = NULL, updated_at = now()
             FROM UNNEST($1::text[], $2::uuid[]) AS u(tenant_id, id)
             WHERE m.tenant_id = u.tenant_id AND m.id = u.id",
        )
        .bind(&tenants)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        leftovers
            .into_iter()
            .map(|r| {
                StoredMessage::try_from(r).map(|m| StoredMessage {
                    status: MessageStatus::Pending,
                    failure_reason: None,
                    ..m
                })
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }
}
