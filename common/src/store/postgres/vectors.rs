//! Vector tables and writing vectors and refusals into them, shared by ingest and backfill.

use pgvector::Vector;
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use super::{PgStore, SPACES_LOCK};
use crate::store::{Failure, NewVector, Space, StoreError};

impl PgStore {
    pub(super) fn vector_table(space: &Space) -> String {
        Self::vector_table_of(space.id)
    }

    /// The vector table of the space with this id (an integer: nothing to escape).
    pub(super) fn vector_table_of(space_id: i32) -> String {
        format!("message_vectors_{space_id}")
    }

    /// Of these messages, the positions of those still at the given revision, locked (in id order) until the
    /// transaction ends so no edit or delete commits meanwhile. The lock waits for an edit in
    /// progress and re-reads the row it committed, so a vector of the old text is never taken
    /// for the new one. Writers that go on to update the rows take `FOR NO KEY UPDATE`, so two of
    /// them queue instead of deadlocking on each other's share locks.
    pub(super) async fn current(
        tx: &mut sqlx::PgConnection,
        tenants: &[&str],
        ids: &[Uuid],
        revisions: &[i32],
        lock: RowLock,
    ) -> Result<Vec<usize>, StoreError> {
        let mode = match lock {
            RowLock::Share => "FOR SHARE",
            RowLock::Update => "FOR NO KEY UPDATE",
        };
        let current: std::collections::HashSet<(String, Uuid)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT m.tenant_id, m.id FROM messages m
             JOIN UNNEST($1::text[], $2::uuid[], $3::int4[]) AS u(tenant_id, id, revision)
               ON m.tenant_id = u.tenant_id AND m.id = u.id
             WHERE m.revision = u.revision ORDER BY m.tenant_id, m.id {mode} OF m"
        )))
        .bind(tenants)
        .bind(ids)
        .bind(revisions)
        .fetch_all(tx)
        .await?
        .into_iter()
        .collect();
        Ok((0..ids.len()).filter(|&i| current.contains(&(tenants[i].to_owned(), ids[i]))).collect())
    }

    /// Stores the vectors of messages still at the revision they were computed from (an edited
    /// or deleted message gets none).
    pub(super) async fn insert_vectors(
        tx: &mut sqlx::PgConnection,
        space: &Space,
        (ids, tenants, embeddings, revisions): &VectorColumns<'_>,
        lock: RowLock,
    ) -> Result<(), StoreError> {
        let keep = Self::current(tx, tenants, ids, revisions, lock).await?;
        let ids: Vec<Uuid> = keep.iter().map(|&i| ids[i]).collect();
        let tenants: Vec<&str> = keep.iter().map(|&i| tenants[i]).collect();
        let embeddings: Vec<&Vector> = keep.iter().map(|&i| &embeddings[i]).collect();
        let table = Self::vector_table(space);
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} (message_id, tenant_id, embedding)
             SELECT u.id, u.tenant_id, u.embedding::halfvec
             FROM UNNEST($1::uuid[], $2::text[], $3::vector[]) AS u(id, tenant_id, embedding)
             ON CONFLICT (tenant_id, message_id) DO UPDATE SET embedding = EXCLUDED.embedding"
        )))
        .bind(&ids)
        .bind(&tenants)
        .bind(&embeddings)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM embedding_failures f USING UNNEST($2::text[], $3::uuid[]) AS u(tenant_id, id)
             WHERE f.space_id = $1 AND f.tenant_id = u.tenant_id AND f.message_id = u.id",
        )
        .bind(space.id)
        .bind(&tenants)
        .bind(&ids)
        .execute(tx)
        .await?;
        Ok(())
    }

    pub(super) async fn insert_failures(
        tx: &mut sqlx::PgConnection,
        space: &Space,
        columns: &FailureColumns<'_>,
        lock: RowLock,
    ) -> Result<(), StoreError> {
        let keep = Self::current(tx, &columns.tenants, &columns.ids, &columns.revisions, lock).await?;
        let tenants: Vec<&str> = keep.iter().map(|&i| columns.tenants[i]).collect();
        let ids: Vec<Uuid> = keep.iter().map(|&i| columns.ids[i]).collect();
        let reasons: Vec<&str> = keep.iter().map(|&i| columns.reasons[i]).collect();
        sqlx::query(
            "INSERT INTO embedding_failures (space_id, tenant_id, message_id, reason)
             SELECT $1, * FROM UNNEST($2::text[], $3::uuid[], $4::text[])
             ON CONFLICT (space_id, tenant_id, message_id)
             DO UPDATE SET reason = EXCLUDED.reason, failed_at = now()",
        )
        .bind(space.id)
        .bind(&tenants)
        .bind(&ids)
        .bind(&reasons)
        .execute(tx)
        .await?;
        Ok(())
    }

    /// Messages with neither a vector nor a refusal in `space` (an SQL condition on `m`).
    pub(super) fn missing_in(space: &Space) -> String {
        let table = Self::vector_table(space);
        format!(
            "NOT EXISTS (SELECT 1 FROM {table} v WHERE v.tenant_id = m.tenant_id AND v.message_id = m.id)
             AND NOT EXISTS (SELECT 1 FROM embedding_failures f
                             WHERE f.space_id = {} AND f.tenant_id = m.tenant_id AND f.message_id = m.id)",
            space.id
        )
    }
}

/// Vectors as the columns of an `UNNEST` insert: message ids, tenants, embeddings, revisions.
pub(super) type VectorColumns<'a> = (Vec<Uuid>, Vec<&'a str>, Vec<Vector>, Vec<i32>);

/// Refusals as the columns of an `UNNEST` insert.
pub(super) struct FailureColumns<'a> {
    pub(super) tenants: Vec<&'a str>,
    pub(super) ids: Vec<Uuid>,
    pub(super) reasons: Vec<&'a str>,
    pub(super) revisions: Vec<i32>,
}

impl<'a> FailureColumns<'a> {
    pub(super) fn of(failures: &'a [Failure]) -> Self {
        Self {
            tenants: failures.iter().map(|f| f.tenant_id.as_str()).collect(),
            ids: failures.iter().map(|f| f.message_id.0).collect(),
            reasons: failures.iter().map(|f| f.reason.as_str()).collect(),
            revisions: failures.iter().map(|f| f.revision).collect(),
        }
    }
}

/// `Ok` if a vector of `len` dimensions belongs in `space`.
pub(super) fn check_dimensions(space: &Space, len: usize) -> Result<(), StoreError> {
    if len == space.reference.dimensions as usize {
        return Ok(());
    }
    Err(StoreError::Dimensions { space: space.id, expected: space.reference.dimensions, got: len })
}

/// The columns of vectors to insert into `space`, checked against its dimensions.
pub(super) fn columns<'a>(space: &Space, vectors: &'a [NewVector]) -> Result<VectorColumns<'a>, StoreError> {
    for v in vectors {
        check_dimensions(space, v.vector.len())?;
    }
    Ok((
        vectors.iter().map(|v| v.message_id.0).collect(),
        vectors.iter().map(|v| v.tenant_id.as_str()).collect(),
        vectors.iter().map(|v| Vector::from(v.vector.clone())).collect(),
        vectors.iter().map(|v| v.revision).collect(),
    ))
}

/// How [`PgStore::current`] locks the rows it returns.
#[derive(Debug, Clone, Copy)]
pub(super) enum RowLock {
    /// Readers and writers that leave the rows alone (a backfill).
    Share,
    /// Writers that update the rows afterwards.
    Update,
}

/// Fails with `SpaceInactive` unless `space` is the active one. Taken inside a write
/// transaction with the shared spaces lock, so activation (which takes it exclusively) waits
/// for the write, and a write after activation sees the new state.
pub(super) async fn ensure_active(tx: &mut sqlx::PgConnection, space: &Space) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)").bind(SPACES_LOCK).execute(&mut *tx).await?;
    let active: Option<bool> = sqlx::query_scalar("SELECT active FROM embedding_spaces WHERE id = $1")
        .bind(space.id)
        .fetch_optional(tx)
        .await?;
    if active == Some(true) { Ok(()) } else { Err(StoreError::SpaceInactive(space.id)) }
}
