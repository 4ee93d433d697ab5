//! Postgres + pgvector: [`PgStore`] implements every role trait, one file per aggregate.
//! Runtime queries only, so nothing needs a database to build; the integration tests run every
//! query against a real server.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};

use super::{Health, Lock, Locks, StoreError};
use crate::config::DatabaseConfig;

// The SQL fragments several files share: macros, so `concat!` builds constant statements.

macro_rules! message_columns {
    () => {
        "m.id, m.tenant_id, m.conversation_id, m.role, m.name, m.content, m.metadata, m.importance, \
         m.importance_override, m.pinned, m.status, m.failure_reason, m.created_at, m.stored_at, m.archived_at, \
         m.revision, m.updated_at"
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
            .bind($f.conversation_id.as_ref().map(crate::domain::ConversationId::as_str))
            .bind($f.role.map(crate::domain::Role::as_str))
            .bind($f.created_after)
            .bind($f.created_before)
            .bind($f.metadata.clone().map(|m| sqlx::types::Json(serde_json::Value::Object(m))))
            .bind($f.min_importance)
            .bind($f.include_archived)
    };
}

macro_rules! space_columns {
    () => {
        "id, provider, model, dimensions, active, activated_at, backfill_cursor_tenant, backfill_cursor, backfilled"
    };
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

macro_rules! key_columns {
    () => {
        "id, tenant_id, name, prefix, scopes, created_at, expires_at, revoked_at, last_used_at"
    };
}

mod analytics;
mod conversations;
mod deletes;
mod ingest;
mod lifecycle;
mod operations;
mod rows;
mod search;
mod spaces;
mod tenants;
mod vectors;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Serialises space registration across every worker replica.
const SPACES_LOCK: i64 = 0x006d_656d_0001;

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// `statement_timeout` of lifecycle work, in milliseconds (see [`Self::long_work`]).
    long_timeout_ms: u64,
    /// `hnsw.ef_search` of every connection.
    ef_search: u32,
}

impl PgStore {
    /// Connects a pool (opening one connection now, so a bad URL fails here) and applies pending
    /// migrations.
    pub async fn connect(url: &str, settings: &DatabaseConfig) -> Result<Self, StoreError> {
        let store = Self::connect_only(url, settings).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects a pool without touching the schema; see [`Self::check_schema`]. Every
    /// connection's statements are cancelled after `settings.statement_timeout`, except in
    /// [`Self::long_work`].
    ///
    /// Every execution of a prepared statement is planned for its parameters
    /// (`plan_cache_mode = force_custom_plan`): tenants range from a handful of messages to
    /// millions and words from rare to everywhere, and the best plan differs (an exact scan or
    /// the HNSW index, a word's few matches or the newest messages read backwards). A generic
    /// plan, which Postgres may switch to after five executions, would fit one of them only.
    ///
    /// Vector searches go on past HNSW's first `ef_search` candidates until they have enough of
    /// the tenant's (`hnsw.iterative_scan = strict_order`, pgvector ≥ 0.8), with
    /// `settings.ef_search`: set here, so a search is one statement, with no transaction.
    pub async fn connect_only(url: &str, settings: &DatabaseConfig) -> Result<Self, StoreError> {
        let ef_search = settings.ef_search.clamp(1, 1000);
        let options = PgConnectOptions::from_str(url)?.application_name("memory-layer").options([
            ("statement_timeout", settings.statement_timeout.as_millis().to_string()),
            ("plan_cache_mode", "force_custom_plan".to_owned()),
            ("hnsw.iterative_scan", "strict_order".to_owned()),
            ("hnsw.ef_search", ef_search.to_string()),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let long_timeout_ms = u64::try_from(settings.long_statement_timeout.as_millis()).unwrap_or(u64::MAX);
        Ok(Self { pool, long_timeout_ms, ef_search })
    }

    /// Applies pending migrations; concurrent callers wait on sqlx's migration lock. They run on
    /// a connection of their own without a statement timeout (an index over a large table takes
    /// what it takes), closed afterwards.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut connection = self.pool.acquire().await?.detach();
        sqlx::query("SET statement_timeout = 0").execute(&mut connection).await?;
        MIGRATOR.run(&mut connection).await?;
        Ok(())
    }

    /// A transaction for lifecycle work over many rows, whose statements may run up to the long
    /// timeout instead of the request paths' one. Begun in one round trip, like any other.
    pub async fn long_work(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        // An integer, so no injection; SET takes no parameters.
        let begin = format!("BEGIN; SET LOCAL statement_timeout = {}", self.long_timeout_ms);
        Ok(self.pool.begin_with(AssertSqlSafe(begin)).await?)
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
}

#[async_trait]
impl Health for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[async_trait]
impl Locks for PgStore {
    async fn try_lock(&self, key: i64) -> Result<Option<Box<dyn Lock>>, StoreError> {
        let mut connection = self.pool.acquire().await?.detach();
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut connection).await?;
        Ok(locked.then(|| Box::new(PgLock { _connection: connection }) as Box<dyn Lock>))
    }
}

/// A session advisory lock on a connection taken out of the pool: dropping it closes the
/// connection, which releases the lock.
struct PgLock {
    _connection: sqlx::PgConnection,
}

impl Lock for PgLock {}
