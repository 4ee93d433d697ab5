//! Postgres + pgvector. Runtime queries only, so nothing needs a database to build; the
//! integration tests run every query against a real server.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pgvector::Vector;
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, FromRow, PgPool};
use std::str::FromStr;
use uuid::Uuid;

use super::{
    Coverage, Cutoff, Edited, Exported, Failure, Inserted, LexicalHit, LexicalQuery, Lock, NewRow, NewVector, Space,
    Store, StoreError, StoredMessage, TenantHold, TextQuery, Tombstone, VectorHit, VectorQuery, locks,
};
use crate::config::{ImportanceWeights, RateLimit};
use crate::contract::SpaceRef;
use crate::domain::importance::Parts;
use crate::domain::{
    ApiKey, ConversationId, MessageId, MessageStatus, NewApiKey, Ranking, RetentionAction, RetentionPolicy, Role,
    Scope, Tenant, TenantId, ValidUpdate,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Serialises space registration across every worker replica.
const SPACES_LOCK: i64 = 0x006d_656d_0001;

macro_rules! message_columns {
    () => {
        "m.id, m.tenant_id, m.conversation_id, m.role, m.name, m.content, m.metadata, m.importance, \
         m.importance_override, m.pinned, m.status, m.failure_reason, m.created_at, m.stored_at, m.archived_at, \
         m.revision"
    };
}

/// The search filters, at parameters $3 to $9 of every search statement (`bind_filters!`).
macro_rules! filters {
    () => {
        "($3::text IS NULL OR m.conversation_id = $3)
         AND ($4::text IS NULL OR m.role = $4)
         AND ($5::timestamptz IS NULL OR m.created_at >= $5)
         AND ($6::timestamptz IS NULL OR m.created_at < $6)
         AND ($7::jsonb IS NULL OR m.metadata @> $7)
         AND ($8::float8 IS NULL OR m.importance >= $8)
         AND ($9::bool OR m.archived_at IS NULL)"
    };
}

macro_rules! bind_filters {
    ($query:expr, $f:expr) => {
        $query
            .bind($f.conversation_id.as_ref().map(ConversationId::as_str))
            .bind($f.role.map(Role::as_str))
            .bind($f.created_after)
            .bind($f.created_before)
            .bind($f.metadata.clone().map(|m| Json(Value::Object(m))))
            .bind($f.min_importance)
            .bind($f.include_archived)
    };
}

macro_rules! space_columns {
    () => {
        "id, provider, model, dimensions, active, activated_at, backfill_cursor, backfilled"
    };
}

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects a pool (opening one connection now, so a bad URL fails here) and applies pending
    /// migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let store = Self::connect_only(url, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects a pool without touching the schema; see [`Self::check_schema`].
    pub async fn connect_only(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("memory-layer");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// Applies pending migrations; concurrent callers wait on sqlx's migration lock.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// The newest migration this build knows.
    pub fn schema_version() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// `Ok` when the schema is exactly this build's: every migration applied successfully and
    /// none newer. `SchemaBehind` (retryable: a migration job may be running) or `SchemaAhead`.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let expected = Self::schema_version();
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(&self.pool).await?;
        let applied: i64 = if exists {
            sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?
        } else {
            0
        };
        match applied.cmp(&expected) {
            std::cmp::Ordering::Less => Err(StoreError::SchemaBehind { applied, expected }),
            std::cmp::Ordering::Greater => Err(StoreError::SchemaAhead { applied, expected }),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn vector_table(space: &Space) -> String {
        Self::vector_table_of(space.id)
    }

    /// The vector table of the space with this id (an integer: nothing to escape).
    fn vector_table_of(space_id: i32) -> String {
        format!("message_vectors_{space_id}")
    }

    /// The nearest-neighbour statement; `prefix` goes before it (`EXPLAIN`, say).
    fn vector_search_sql(space: &Space, prefix: &str) -> String {
        format!(
            "{prefix} SELECT {}, 1 - (v.embedding <=> $1) AS similarity
             FROM {} v JOIN messages m ON m.id = v.message_id
             WHERE v.tenant_id = $2 AND {}
             ORDER BY v.embedding <=> $1
             LIMIT $10",
            message_columns!(),
            Self::vector_table(space),
            filters!()
        )
    }

    /// Search settings for this transaction: a tenant filter applied after an HNSW scan returns
    /// short lists unless the scan may continue past its first `ef_search` candidates
    /// (pgvector ≥ 0.8 iterative scans).
    async fn hnsw_settings(tx: &mut sqlx::PgConnection, ef_search: u32) -> Result<(), StoreError> {
        sqlx::query("SET LOCAL hnsw.iterative_scan = strict_order").execute(&mut *tx).await?;
        // An integer, so no injection; SET takes no parameters.
        let ef_search = ef_search.clamp(1, 1000);
        sqlx::query(AssertSqlSafe(format!("SET LOCAL hnsw.ef_search = {ef_search}"))).execute(&mut *tx).await?;
        Ok(())
    }

    /// The plan Postgres chooses for a vector search (`EXPLAIN`), to check that large tenants
    /// use the HNSW index and small ones the exact per-tenant scan.
    pub async fn explain_vector_search(&self, space: &Space, query: VectorQuery<'_>) -> Result<String, StoreError> {
        let mut tx = self.pool.begin().await?;
        Self::hnsw_settings(&mut tx, query.ef_search).await?;
        let statement = AssertSqlSafe(Self::vector_search_sql(space, "EXPLAIN (COSTS OFF)"));
        let lines: Vec<String> = bind_filters!(
            sqlx::query_scalar(statement).bind(Vector::from(query.vector.to_vec())).bind(query.tenant_id.as_str()),
            query.filters
        )
        .bind(i64::from(query.limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        Ok(lines.join("\n"))
    }

    /// Of these messages, the positions of those still at the given revision, locked (in id order) until the
    /// transaction ends so no edit or delete commits meanwhile. The lock waits for an edit in
    /// progress and re-reads the row it committed, so a vector of the old text is never taken
    /// for the new one. Writers that go on to update the rows take `FOR NO KEY UPDATE`, so two of
    /// them queue instead of deadlocking on each other's share locks.
    async fn current(
        tx: &mut sqlx::PgConnection,
        ids: &[Uuid],
        revisions: &[i32],
        lock: RowLock,
    ) -> Result<Vec<usize>, StoreError> {
        let mode = match lock {
            RowLock::Share => "FOR SHARE",
            RowLock::Update => "FOR NO KEY UPDATE",
        };
        let current: std::collections::HashSet<Uuid> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT m.id FROM messages m JOIN UNNEST($1::uuid[], $2::int4[]) AS u(id, revision) ON m.id = u.id
             WHERE m.revision = u.revision ORDER BY m.id {mode} OF m"
        )))
        .bind(ids)
        .bind(revisions)
        .fetch_all(tx)
        .await?
        .into_iter()
        .collect();
        Ok((0..ids.len()).filter(|&i| current.contains(&ids[i])).collect())
    }

    /// Stores the vectors of messages still at the revision they were computed from (an edited
    /// or deleted message gets none); the ids stored.
    async fn insert_vectors(
        tx: &mut sqlx::PgConnection,
        space: &Space,
        (ids, tenants, embeddings, revisions): &VectorColumns<'_>,
        lock: RowLock,
    ) -> Result<Vec<Uuid>, StoreError> {
        let keep = Self::current(tx, ids, revisions, lock).await?;
        let ids: Vec<Uuid> = keep.iter().map(|&i| ids[i]).collect();
        let tenants: Vec<&str> = keep.iter().map(|&i| tenants[i]).collect();
        let embeddings: Vec<&Vector> = keep.iter().map(|&i| &embeddings[i]).collect();
        let table = Self::vector_table(space);
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} (message_id, tenant_id, embedding)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::vector[])
             ON CONFLICT (message_id) DO UPDATE SET embedding = EXCLUDED.embedding"
        )))
        .bind(&ids)
        .bind(&tenants)
        .bind(&embeddings)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM embedding_failures WHERE space_id = $1 AND message_id = ANY($2)")
            .bind(space.id)
            .bind(&ids)
            .execute(tx)
            .await?;
        Ok(ids)
    }

    async fn insert_failures(
        tx: &mut sqlx::PgConnection,
        space: &Space,
        ids: &[Uuid],
        reasons: &[&str],
        revisions: &[i32],
        lock: RowLock,
    ) -> Result<(), StoreError> {
        let keep = Self::current(tx, ids, revisions, lock).await?;
        let ids: Vec<Uuid> = keep.iter().map(|&i| ids[i]).collect();
        let reasons: Vec<&str> = keep.iter().map(|&i| reasons[i]).collect();
        sqlx::query(
            "INSERT INTO embedding_failures (space_id, message_id, reason)
             SELECT $1, * FROM UNNEST($2::uuid[], $3::text[])
             ON CONFLICT (space_id, message_id) DO UPDATE SET reason = EXCLUDED.reason, failed_at = now()",
        )
        .bind(space.id)
        .bind(&ids)
        .bind(&reasons)
        .execute(tx)
        .await?;
        Ok(())
    }

    /// Messages with neither a vector nor a refusal in `space` (an SQL condition on `m`).
    fn missing_in(space: &Space) -> String {
        let table = Self::vector_table(space);
        format!(
            "NOT EXISTS (SELECT 1 FROM {table} v WHERE v.message_id = m.id)
             AND NOT EXISTS (SELECT 1 FROM embedding_failures f WHERE f.space_id = {} AND f.message_id = m.id)",
            space.id
        )
    }
}

/// Whether a tombstone covers the ingest event of row `u` (`u.id`, `u.tenant_id`,
/// `u.conversation_id`, `u.sequence`, `u.published_at`): its message, conversation or tenant was
/// deleted after the stream had stored the event. A direct write (no sequence) is never covered.
/// The time test (with a minute's allowance for clock differences between NATS servers) tells a
/// recreated stream's new events, whose sequences start over, from old ones.
macro_rules! covered {
    () => {
        "(u.sequence IS NOT NULL AND EXISTS (
             SELECT 1 FROM tombstones t
             WHERE t.before_sequence >= u.sequence
               AND t.before_at + interval '1 minute' >= u.published_at
               AND t.tenant_id = u.tenant_id
               AND ((t.kind = 'message' AND t.key = u.id::text)
                    OR (t.kind = 'conversation' AND t.key = u.conversation_id)
                    OR (t.kind = 'tenant' AND t.key = ''))))"
    };
}

/// New rows as one array per column, for `UNNEST`.
struct RowColumns<'a> {
    ids: Vec<Uuid>,
    tenants: Vec<&'a str>,
    conversations: Vec<&'a str>,
    roles: Vec<&'a str>,
    names: Vec<Option<&'a str>>,
    contents: Vec<&'a str>,
    metadata: Vec<String>,
    importance: Vec<f64>,
    overrides: Vec<Option<f64>>,
    pinned: Vec<bool>,
    created: Vec<DateTime<Utc>>,
    archived: Vec<Option<DateTime<Utc>>>,
    sequences: Vec<Option<i64>>,
    published: Vec<Option<DateTime<Utc>>>,
}

impl<'a> RowColumns<'a> {
    fn of(rows: &'a [NewRow]) -> Self {
        Self {
            ids: rows.iter().map(|r| r.message.message_id.0).collect(),
            tenants: rows.iter().map(|r| r.message.tenant_id.as_str()).collect(),
            conversations: rows.iter().map(|r| r.message.conversation_id.as_str()).collect(),
            roles: rows.iter().map(|r| r.message.role.as_str()).collect(),
            names: rows.iter().map(|r| r.message.name.as_deref()).collect(),
            contents: rows.iter().map(|r| r.message.content.as_str()).collect(),
            metadata: rows.iter().map(|r| Value::Object(r.message.metadata.clone()).to_string()).collect(),
            importance: rows.iter().map(|r| r.importance).collect(),
            overrides: rows.iter().map(|r| r.message.importance_override).collect(),
            pinned: rows.iter().map(|r| r.message.pinned).collect(),
            created: rows.iter().map(|r| r.message.created_at).collect(),
            archived: rows.iter().map(|r| r.message.archived_at).collect(),
            sequences: rows.iter().map(|r| r.origin.map(|o| i64::try_from(o.sequence).unwrap_or(i64::MAX))).collect(),
            published: rows.iter().map(|r| r.origin.map(|o| o.published_at)).collect(),
        }
    }
}

#[derive(FromRow)]
struct MessageRow {
    id: Uuid,
    tenant_id: String,
    conversation_id: String,
    role: String,
    name: Option<String>,
    content: String,
    metadata: Json<Map<String, Value>>,
    importance: f64,
    importance_override: Option<f64>,
    pinned: bool,
    status: String,
    failure_reason: Option<String>,
    created_at: DateTime<Utc>,
    stored_at: DateTime<Utc>,
    archived_at: Option<DateTime<Utc>>,
    revision: i32,
}

impl TryFrom<MessageRow> for StoredMessage {
    type Error = StoreError;
    fn try_from(r: MessageRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("message {}: {what}", r.id));
        Ok(StoredMessage {
            id: MessageId(r.id),
            tenant_id: TenantId::parse(r.tenant_id.clone()).map_err(|_| corrupt("tenant_id"))?,
            conversation_id: ConversationId::parse(r.conversation_id.clone())
                .map_err(|_| corrupt("conversation_id"))?,
            role: Role::parse(&r.role).ok_or_else(|| corrupt("role"))?,
            status: MessageStatus::parse(&r.status).ok_or_else(|| corrupt("status"))?,
            name: r.name,
            content: r.content,
            metadata: r.metadata.0,
            importance: r.importance,
            importance_override: r.importance_override,
            pinned: r.pinned,
            failure_reason: r.failure_reason,
            created_at: r.created_at,
            stored_at: r.stored_at,
            archived_at: r.archived_at,
            revision: r.revision,
        })
    }
}

#[derive(FromRow)]
struct SpaceRow {
    id: i32,
    provider: String,
    model: String,
    dimensions: i32,
    active: bool,
    activated_at: Option<DateTime<Utc>>,
    backfill_cursor: Option<Uuid>,
    backfilled: i64,
}

impl From<SpaceRow> for Space {
    fn from(r: SpaceRow) -> Self {
        Space {
            id: r.id,
            reference: SpaceRef { provider: r.provider, model: r.model, dimensions: r.dimensions.unsigned_abs() },
            active: r.active,
            activated_at: r.activated_at,
            backfill_cursor: r.backfill_cursor.map(MessageId),
            backfilled: r.backfilled,
        }
    }
}

/// A lexeme as a `to_tsquery` operand: quoted, so that none of its characters is an operator.
fn quote_lexeme(lexeme: &str) -> String {
    format!("'{}'", lexeme.replace('\\', "\\\\").replace('\'', "''"))
}

/// Vectors as the columns of an `UNNEST` insert: message ids, tenants, embeddings.
type VectorColumns<'a> = (Vec<Uuid>, Vec<&'a str>, Vec<Vector>, Vec<i32>);

/// The columns of vectors to insert into `space`, checked against its dimensions.
fn columns<'a>(space: &Space, vectors: &'a [NewVector]) -> Result<VectorColumns<'a>, StoreError> {
    if let Some(bad) = vectors.iter().find(|v| v.vector.len() != space.reference.dimensions as usize) {
        return Err(StoreError::Dimensions {
            space: space.id,
            expected: space.reference.dimensions,
            got: bad.vector.len(),
        });
    }
    Ok((
        vectors.iter().map(|v| v.message_id.0).collect(),
        vectors.iter().map(|v| v.tenant_id.as_str()).collect(),
        vectors.iter().map(|v| Vector::from(v.vector.clone())).collect(),
        vectors.iter().map(|v| v.revision).collect(),
    ))
}

/// A session advisory lock on a connection taken out of the pool: dropping it closes the
/// connection, which releases the lock.
struct PgLock {
    _connection: sqlx::PgConnection,
}

impl Lock for PgLock {}

/// How [`PgStore::current`] locks the rows it returns.
#[derive(Debug, Clone, Copy)]
enum RowLock {
    /// Readers and writers that leave the rows alone (a backfill).
    Share,
    /// Writers that update the rows afterwards.
    Update,
}

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
        Ok(at)
    }

    async fn delete(&mut self, ids: &[MessageId]) -> Result<Vec<MessageId>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        // Rows locked in id order, as every other multi-row writer locks them.
        let deleted: Vec<Uuid> = sqlx::query_scalar(
            "DELETE FROM messages WHERE id IN (
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

/// Fails with `SpaceInactive` unless `space` is the active one. Taken inside a write
/// transaction with the shared spaces lock, so activation (which takes it exclusively) waits
/// for the write, and a write after activation sees the new state.
async fn ensure_active(tx: &mut sqlx::PgConnection, space: &Space) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)").bind(SPACES_LOCK).execute(&mut *tx).await?;
    let active: Option<bool> = sqlx::query_scalar("SELECT active FROM embedding_spaces WHERE id = $1")
        .bind(space.id)
        .fetch_optional(tx)
        .await?;
    if active == Some(true) { Ok(()) } else { Err(StoreError::SpaceInactive(space.id)) }
}

#[derive(FromRow)]
struct HitRow {
    #[sqlx(flatten)]
    message: MessageRow,
    similarity: f64,
}

macro_rules! key_columns {
    () => {
        "id, tenant_id, name, prefix, scopes, created_at, expires_at, revoked_at, last_used_at"
    };
}

#[derive(FromRow)]
struct TenantRow {
    id: String,
    name: Option<String>,
    created_at: DateTime<Utc>,
}

impl TryFrom<TenantRow> for Tenant {
    type Error = StoreError;
    fn try_from(r: TenantRow) -> Result<Self, StoreError> {
        Ok(Tenant {
            id: TenantId::parse(r.id.clone()).map_err(|_| StoreError::Corrupt(format!("tenant {}", r.id)))?,
            name: r.name,
            created_at: r.created_at,
        })
    }
}

#[derive(FromRow)]
struct KeyRow {
    id: Uuid,
    tenant_id: String,
    name: Option<String>,
    prefix: String,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
}

impl TryFrom<KeyRow> for ApiKey {
    type Error = StoreError;
    fn try_from(r: KeyRow) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("api key {}", r.id));
        Ok(ApiKey {
            id: r.id,
            tenant_id: TenantId::parse(r.tenant_id.clone()).map_err(|_| corrupt())?,
            scopes: r.scopes.iter().map(|s| Scope::parse(s).ok_or_else(corrupt)).collect::<Result<_, _>>()?,
            name: r.name,
            prefix: r.prefix,
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            last_used_at: r.last_used_at,
        })
    }
}

#[derive(FromRow)]
struct LexicalRow {
    #[sqlx(flatten)]
    message: MessageRow,
    rank: f64,
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn register_space(&self, space: &SpaceRef) -> Result<Space, StoreError> {
        let dimensions = i32::try_from(space.dimensions).unwrap_or(i32::MAX);
        let mut tx = self.pool.begin().await?;
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
        let table = Self::vector_table(&space);
        // The table name is built from an integer id: no injection is possible.
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                 message_id uuid PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
                 tenant_id  text NOT NULL,
                 embedding  vector({dimensions}) NOT NULL
             )"
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::query(AssertSqlSafe(format!("CREATE INDEX IF NOT EXISTS {table}_tenant ON {table} (tenant_id)")))
            .execute(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(format!(
            "CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} USING hnsw (embedding vector_cosine_ops)"
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(space)
    }

    async fn active_space(&self) -> Result<Option<Space>, StoreError> {
        let row: Option<SpaceRow> =
            sqlx::query_as(concat!("SELECT ", space_columns!(), " FROM embedding_spaces WHERE active"))
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(Space::from))
    }

    async fn insert_messages(&self, rows: &[NewRow]) -> Result<Vec<Inserted>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let c = RowColumns::of(rows);
        let mut tx = self.pool.begin().await?;
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
        let inserted: Vec<(Uuid,)> = sqlx::query_as(concat!(
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
            " ON CONFLICT (id) DO NOTHING
             RETURNING id"
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
        let stored: Vec<MessageRow> =
            sqlx::query_as(concat!("SELECT ", message_columns!(), " FROM messages m WHERE m.id = ANY($1)"))
                .bind(&c.ids)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let new: std::collections::HashSet<Uuid> = inserted.into_iter().map(|(id,)| id).collect();
        stored
            .into_iter()
            .map(|r| {
                let new = new.contains(&r.id);
                Ok(Inserted { row: StoredMessage::try_from(r)?, new })
            })
            .collect()
    }

    async fn save_vectors(&self, space: &Space, vectors: &[NewVector]) -> Result<(), StoreError> {
        if vectors.is_empty() {
            return Ok(());
        }
        let columns = columns(space, vectors)?;
        let mut tx = self.pool.begin().await?;
        ensure_active(&mut tx, space).await?;
        Self::insert_vectors(&mut tx, space, &columns, RowLock::Update).await?;
        sqlx::query(
            "UPDATE messages m SET status = 'embedded', failure_reason = NULL, updated_at = now()
             FROM UNNEST($1::uuid[], $2::int4[]) AS u(id, revision)
             WHERE m.id = u.id AND m.revision = u.revision AND m.status <> 'embedded'",
        )
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
        let ids: Vec<Uuid> = failures.iter().map(|f| f.message_id.0).collect();
        let reasons: Vec<&str> = failures.iter().map(|f| f.reason.as_str()).collect();
        let revisions: Vec<i32> = failures.iter().map(|f| f.revision).collect();
        let mut tx = self.pool.begin().await?;
        ensure_active(&mut tx, space).await?;
        Self::insert_failures(&mut tx, space, &ids, &reasons, &revisions, RowLock::Update).await?;
        sqlx::query(
            "UPDATE messages m SET status = 'failed', failure_reason = u.reason,
                                   embed_failures = m.embed_failures + 1, updated_at = now()
             FROM UNNEST($1::uuid[], $2::text[], $3::int4[]) AS u(id, reason, revision)
             WHERE m.id = u.id AND m.revision = u.revision AND m.status <> 'embedded'",
        )
        .bind(&ids)
        .bind(&reasons)
        .bind(&revisions)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn space(&self, id: i32) -> Result<Option<Space>, StoreError> {
        let row: Option<SpaceRow> =
            sqlx::query_as(concat!("SELECT ", space_columns!(), " FROM embedding_spaces WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(Space::from))
    }

    async fn unembedded(
        &self,
        space: &Space,
        after: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        // Two statements rather than `$1 IS NULL OR m.id > $1`, which a generic plan cannot use
        // to start the index scan at the cursor.
        let after_cursor = if after.is_some() { "m.id > $1 AND" } else { "$1::uuid IS NULL AND" };
        let rows: Vec<MessageRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {} FROM messages m
             WHERE {after_cursor} {}
             ORDER BY m.id LIMIT $2",
            message_columns!(),
            Self::missing_in(space)
        )))
        .bind(after.map(|id| id.0))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(StoredMessage::try_from).collect()
    }

    async fn save_backfill(
        &self,
        space: &Space,
        vectors: &[NewVector],
        failures: &[Failure],
        cursor: MessageId,
    ) -> Result<(), StoreError> {
        let columns = columns(space, vectors)?;
        let failed: Vec<Uuid> = failures.iter().map(|f| f.message_id.0).collect();
        let reasons: Vec<&str> = failures.iter().map(|f| f.reason.as_str()).collect();
        let revisions: Vec<i32> = failures.iter().map(|f| f.revision).collect();
        let mut tx = self.pool.begin().await?;
        if !columns.0.is_empty() {
            Self::insert_vectors(&mut tx, space, &columns, RowLock::Share).await?;
        }
        if !failed.is_empty() {
            Self::insert_failures(&mut tx, space, &failed, &reasons, &revisions, RowLock::Share).await?;
        }
        sqlx::query("UPDATE embedding_spaces SET backfill_cursor = $2, backfilled = backfilled + $3 WHERE id = $1")
            .bind(space.id)
            .bind(cursor.0)
            .bind(i64::try_from(columns.0.len() + failed.len()).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn coverage(&self, space: &Space) -> Result<Coverage, StoreError> {
        let (messages, missing): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT count(*), count(*) FILTER (WHERE {}) FROM messages m",
            Self::missing_in(space)
        )))
        .fetch_one(&self.pool)
        .await?;
        Ok(Coverage { messages, missing })
    }

    async fn activate_space(
        &self,
        space: &Space,
        leftover_limit: u32,
    ) -> Result<Option<Vec<StoredMessage>>, StoreError> {
        let table = Self::vector_table(space);
        let mut tx = self.pool.begin().await?;
        // Exclusive: waits for writes to the old space in flight (they hold it shared), and
        // every write after this commits sees the new active space.
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SPACES_LOCK).execute(&mut *tx).await?;
        // Messages stored since the backfill's last pass (ingest does not stop for it).
        let leftovers: Vec<MessageRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {} FROM messages m WHERE {} ORDER BY m.id LIMIT $1",
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
             WHERE m.status <> 'embedded' AND EXISTS (SELECT 1 FROM {table} v WHERE v.message_id = m.id)"
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE messages m SET status = 'failed', failure_reason = f.reason, updated_at = now()
             FROM embedding_failures f
             WHERE f.space_id = $1 AND f.message_id = m.id
               AND (m.status <> 'failed' OR m.failure_reason IS DISTINCT FROM f.reason)",
        )
        .bind(space.id)
        .execute(&mut *tx)
        .await?;
        let ids: Vec<Uuid> = leftovers.iter().map(|r| r.id).collect();
        sqlx::query(
            "UPDATE messages SET status = 'pending', failure_reason = NULL, updated_at = now() WHERE id = ANY($1)",
        )
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

    async fn stale(
        &self,
        before: DateTime<Utc>,
        max_failures: u32,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
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
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(StoredMessage::try_from).collect()
    }

    async fn touch(&self, ids: &[MessageId]) -> Result<(), StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        sqlx::query("UPDATE messages SET updated_at = now() WHERE id = ANY($1)").bind(&ids).execute(&self.pool).await?;
        Ok(())
    }

    async fn pending_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM messages WHERE status = 'pending'").fetch_one(&self.pool).await?)
    }

    async fn try_lock(&self, key: i64) -> Result<Option<Box<dyn Lock>>, StoreError> {
        let mut connection = self.pool.acquire().await?.detach();
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut connection).await?;
        Ok(locked.then(|| Box::new(PgLock { _connection: connection }) as Box<dyn Lock>))
    }

    async fn get_message(&self, id: MessageId) -> Result<Option<StoredMessage>, StoreError> {
        let row: Option<MessageRow> =
            sqlx::query_as(concat!("SELECT ", message_columns!(), " FROM messages m WHERE m.id = $1"))
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await?;
        row.map(StoredMessage::try_from).transpose()
    }

    async fn search_vectors(&self, space: &Space, query: VectorQuery<'_>) -> Result<Vec<VectorHit>, StoreError> {
        if query.vector.len() != space.reference.dimensions as usize {
            return Err(StoreError::Dimensions {
                space: space.id,
                expected: space.reference.dimensions,
                got: query.vector.len(),
            });
        }
        let mut tx = self.pool.begin().await?;
        Self::hnsw_settings(&mut tx, query.ef_search).await?;
        let statement = AssertSqlSafe(Self::vector_search_sql(space, ""));
        let rows: Vec<HitRow> = bind_filters!(
            sqlx::query_as(statement).bind(Vector::from(query.vector.to_vec())).bind(query.tenant_id.as_str()),
            query.filters
        )
        .bind(i64::from(query.limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.into_iter()
            .map(|r| Ok(VectorHit { similarity: r.similarity, message: StoredMessage::try_from(r.message)? }))
            .collect()
    }

    async fn search_lexical(&self, query: LexicalQuery<'_>) -> Result<Vec<LexicalHit>, StoreError> {
        let (function, text, terms, rank) = match query.query {
            TextQuery::Websearch(text) => {
                ("websearch_to_tsquery", text.clone(), Vec::new(), "ts_rank_cd(m.search_text, q)::float8")
            }
            TextQuery::AnyOf(terms) if terms.is_empty() => return Ok(Vec::new()),
            TextQuery::AnyOf(terms) => (
                "to_tsquery",
                terms.iter().map(|t| quote_lexeme(&t.lexeme)).collect::<Vec<_>>().join(" | "),
                terms.iter().map(|t| (quote_lexeme(&t.lexeme), t.weight)).collect::<Vec<_>>(),
                "(SELECT coalesce(sum(w.weight), 0) FROM terms w WHERE m.search_text @@ w.q)::float8",
            ),
        };
        let (words, weights): (Vec<String>, Vec<f64>) = terms.into_iter().unzip();
        let statement = AssertSqlSafe(format!(
            "WITH terms AS (
                 SELECT to_tsquery('simple'::regconfig, t.word) AS q, t.weight
                 FROM unnest($11::text[], $12::float8[]) AS t(word, weight)
             )
             SELECT {}, {rank} AS rank
             FROM messages m, {function}('simple'::regconfig, $1) q
             WHERE m.tenant_id = $2 AND m.search_text @@ q AND {}
             ORDER BY rank DESC, m.created_at DESC
             LIMIT $10",
            message_columns!(),
            filters!()
        ));
        let rows: Vec<LexicalRow> =
            bind_filters!(sqlx::query_as(statement).bind(text).bind(query.tenant_id.as_str()), query.filters)
                .bind(i64::from(query.limit))
                .bind(&words)
                .bind(&weights)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|r| Ok(LexicalHit { rank: r.rank, message: StoredMessage::try_from(r.message)? }))
            .collect()
    }

    async fn document_frequencies(
        &self,
        tenant: &TenantId,
        lexemes: &[String],
        cap: i64,
    ) -> Result<(i64, Vec<i64>), StoreError> {
        let quoted: Vec<String> = lexemes.iter().map(|l| quote_lexeme(l)).collect();
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .fetch_one(&self.pool)
            .await?;
        let counts: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT t.i, (SELECT count(*) FROM (SELECT 1 FROM messages m
                          WHERE m.tenant_id = $1 AND m.search_text @@ to_tsquery('simple'::regconfig, t.word)
                          LIMIT $3) s)
             FROM unnest($2::text[]) WITH ORDINALITY AS t(word, i)",
        )
        .bind(tenant.as_str())
        .bind(&quoted)
        .bind(cap)
        .fetch_all(&self.pool)
        .await?;
        let mut frequencies = vec![0; lexemes.len()];
        for (i, n) in counts {
            if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| frequencies.get_mut(i)) {
                *slot = n;
            }
        }
        Ok((total, frequencies))
    }

    async fn lexemes(&self, text: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT lexeme FROM unnest(to_tsvector('simple'::regconfig, $1))")
            .bind(text)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn similarities(
        &self,
        space: &Space,
        ids: &[MessageId],
        vector: &[f32],
    ) -> Result<Vec<(MessageId, f64)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let table = Self::vector_table(space);
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let rows: Vec<(Uuid, f64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT message_id, 1 - (embedding <=> $1) FROM {table} WHERE message_id = ANY($2)"
        )))
        .bind(Vector::from(vector.to_vec()))
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id, s)| (MessageId(id), s)).collect())
    }

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
        tx.commit().await?;
        Ok(deleted.rows_affected() > 0)
    }

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

    async fn tenants_with_messages(&self) -> Result<Vec<TenantId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT DISTINCT tenant_id FROM messages ORDER BY tenant_id")
            .fetch_all(&self.pool)
            .await?;
        ids.into_iter()
            .map(|id| TenantId::parse(id.clone()).map_err(|_| StoreError::Corrupt(format!("tenant {id}"))))
            .collect()
    }

    async fn tenant_known(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1) OR EXISTS (SELECT 1 FROM messages WHERE tenant_id = $1)",
        )
        .bind(tenant.as_str())
        .fetch_one(&self.pool)
        .await?)
    }

    async fn retention_candidates(
        &self,
        tenant: &TenantId,
        policy: &RetentionPolicy,
        action: RetentionAction,
        now: DateTime<Utc>,
        limit: Option<u32>,
    ) -> Result<Vec<MessageId>, StoreError> {
        let days = |d: Option<u32>| d.map(|d| i32::try_from(d).unwrap_or(i32::MAX));
        let limit = limit.map_or(i64::MAX, i64::from);
        let ids: Vec<Uuid> = match action {
            RetentionAction::Archive => {
                // The per-conversation rank is computed only when there is a cap.
                let newest = if policy.max_messages_per_conversation.is_some() {
                    "row_number() OVER (PARTITION BY conversation_id ORDER BY created_at DESC, id DESC)"
                } else {
                    "0"
                };
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "WITH live AS (
                         SELECT id, created_at, importance, {newest} AS newest
                         FROM messages WHERE tenant_id = $1 AND archived_at IS NULL AND NOT pinned)
                     SELECT id FROM live
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
                .fetch_all(&self.pool)
                .await?
            }
            RetentionAction::Delete => {
                let Some(after) = days(policy.delete_archived_after_days) else { return Ok(Vec::new()) };
                sqlx::query_scalar(
                    "SELECT id FROM messages
                     WHERE tenant_id = $1 AND archived_at IS NOT NULL AND NOT pinned
                       AND archived_at < $3 - make_interval(days => $2)
                     ORDER BY archived_at, id LIMIT $4",
                )
                .bind(tenant.as_str())
                .bind(after)
                .bind(now)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(ids.into_iter().map(MessageId).collect())
    }

    async fn archive_messages(
        &self,
        tenant: &TenantId,
        ids: &[MessageId],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let done = sqlx::query(
            "UPDATE messages SET archived_at = $3, updated_at = now()
             WHERE tenant_id = $1 AND id = ANY($2) AND archived_at IS NULL AND NOT pinned",
        )
        .bind(tenant.as_str())
        .bind(&ids)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn set_archived(
        &self,
        id: MessageId,
        tenant: Option<&TenantId>,
        archived: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let row: Option<MessageRow> = sqlx::query_as(concat!(
            "UPDATE messages m SET archived_at = CASE WHEN $3 THEN coalesce(m.archived_at, $4) END, updated_at = now()
             WHERE m.id = $1 AND ($2::text IS NULL OR m.tenant_id = $2)
             RETURNING ",
            message_columns!()
        ))
        .bind(id.0)
        .bind(tenant.map(TenantId::as_str))
        .bind(archived)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(StoredMessage::try_from).transpose()
    }

    async fn delete_messages(&self, tenant: &TenantId, ids: &[MessageId]) -> Result<u64, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let done = sqlx::query(
            "DELETE FROM messages WHERE tenant_id = $1 AND id = ANY($2) AND archived_at IS NOT NULL AND NOT pinned",
        )
        .bind(tenant.as_str())
        .bind(&ids)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
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

    async fn tenant_ranking(&self, tenant: &TenantId) -> Result<Option<Ranking>, StoreError> {
        let row: Option<Option<Json<Ranking>>> =
            sqlx::query_scalar("SELECT ranking FROM tenant_settings WHERE tenant_id = $1")
                .bind(tenant.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.flatten().map(|j| j.0))
    }

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

    async fn tombstoned(&self, rows: &[NewRow]) -> Result<Vec<MessageId>, StoreError> {
        let c = RowColumns::of(rows);
        let ids: Vec<Uuid> = sqlx::query_scalar(concat!(
            "SELECT u.id FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::timestamptz[])
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
        Ok(ids.into_iter().map(MessageId).collect())
    }

    async fn hold_tenant(&self, tenant: &TenantId) -> Result<Box<dyn TenantHold>, StoreError> {
        let mut tx = self.pool.begin().await?;
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
        let deleted: Vec<Uuid> = sqlx::query_scalar(
            "DELETE FROM messages WHERE id IN (
                 SELECT id FROM messages
                 WHERE tenant_id = $1 AND ($2::text IS NULL OR conversation_id = $2) AND stored_at <= $3
                 ORDER BY id LIMIT $4 FOR UPDATE)
             RETURNING id",
        )
        .bind(tenant.as_str())
        .bind(conversation.map(ConversationId::as_str))
        .bind(stored_before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
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
        let done = sqlx::query("DELETE FROM tombstones WHERE created_at < $2 AND before_sequence < $1")
            .bind(i64::try_from(first_sequence).unwrap_or(i64::MAX))
            .bind(older_than)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn update_message(
        &self,
        id: MessageId,
        tenant: Option<&TenantId>,
        update: &ValidUpdate,
        weights: ImportanceWeights,
        now: DateTime<Utc>,
    ) -> Result<Option<Edited>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<MessageRow> = sqlx::query_as(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages m WHERE m.id = $1 AND ($2::text IS NULL OR m.tenant_id = $2) FOR UPDATE"
        ))
        .bind(id.0)
        .bind(tenant.map(TenantId::as_str))
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
             WHERE m.id = $1 RETURNING ",
            message_columns!()
        ))
        .bind(id.0)
        .bind(update.content.as_deref().unwrap_or(&old.content))
        .bind(Json(Value::Object(update.metadata.clone().unwrap_or(old.metadata))))
        .bind(importance_override)
        .bind(pinned)
        .bind(importance)
        .bind(archived_at)
        .bind(content_changed)
        .fetch_one(&mut *tx)
        .await?;
        if content_changed {
            // The old text's vectors and refusals, in every space, no longer describe it.
            let spaces: Vec<i32> = sqlx::query_scalar("SELECT id FROM embedding_spaces").fetch_all(&mut *tx).await?;
            for space in spaces {
                let table = Self::vector_table_of(space);
                sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE message_id = $1")))
                    .bind(id.0)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM embedding_failures WHERE message_id = $1").bind(id.0).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        let archived = match (old.archived_at.is_some(), archived_at.is_some()) {
            (false, true) => Some(true),
            (true, false) => Some(false),
            _ => None,
        };
        Ok(Some(Edited { message: StoredMessage::try_from(row)?, content_changed, archived }))
    }

    async fn export(
        &self,
        tenant: &TenantId,
        after: Option<MessageId>,
        limit: u32,
        vectors: Option<&Space>,
    ) -> Result<Vec<Exported>, StoreError> {
        let rows: Vec<MessageRow> = sqlx::query_as(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages m WHERE m.tenant_id = $1 AND ($2::uuid IS NULL OR m.id > $2) ORDER BY m.id LIMIT $3"
        ))
        .bind(tenant.as_str())
        .bind(after.map(|a| a.0))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut found: std::collections::HashMap<Uuid, Vec<f32>> = std::collections::HashMap::new();
        if let Some(space) = vectors {
            let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
            let table = Self::vector_table(space);
            let pairs: Vec<(Uuid, Vector)> = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT message_id, embedding FROM {table} WHERE message_id = ANY($1)"
            )))
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?;
            found = pairs.into_iter().map(|(id, v)| (id, v.to_vec())).collect();
        }
        rows.into_iter()
            .map(|r| {
                let vector = found.remove(&r.id);
                Ok(Exported { message: StoredMessage::try_from(r)?, vector })
            })
            .collect()
    }
}
