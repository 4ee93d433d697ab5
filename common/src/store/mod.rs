//! Storage: the `Store` trait every worker uses, and its Postgres + pgvector implementation.
//! Writes are idempotent by message id, so a redelivered event never duplicates a row.

mod postgres;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::config::{ImportanceWeights, RateLimit};
use crate::contract::SpaceRef;
use crate::domain::{
    ApiKey, ConversationId, MessageId, MessageStatus, MessageView, NewApiKey, NewMessage, Ranking, RetentionAction,
    RetentionPolicy, Role, SearchFilters, Tenant, TenantId, ValidUpdate,
};

pub use postgres::PgStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("vector has {got} dimensions, space {space} has {expected}")]
    Dimensions { space: i32, expected: u32, got: usize },
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    /// The space is not the active one (any more): its vectors are not written as current.
    #[error("embedding space {0} is not active")]
    SpaceInactive(i32),
    /// A row with this key exists already.
    #[error("{0} exists already")]
    Exists(String),
    /// The database's schema is older than this build's (migrations are not applied yet).
    #[error("the database schema is at migration {applied}, this build needs {expected}: run `memory migrate`")]
    SchemaBehind { applied: i64, expected: i64 },
    /// The database's schema is newer than this build knows: a newer release migrated it.
    #[error("the database schema is at migration {applied}, newer than this build's {expected}")]
    SchemaAhead { applied: i64, expected: i64 },
}

impl StoreError {
    /// Whether the database refused the data itself (SQLSTATE class 22 or 23): retrying the same
    /// row cannot succeed.
    pub fn is_data_error(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(e)) => {
                e.code().is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
            }
            _ => false,
        }
    }

    /// Whether the database gave up on a transaction to break a deadlock or a serialization
    /// conflict (SQLSTATE 40P01, 40001): running it again may succeed.
    pub fn is_conflict(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(e)) => matches!(e.code().as_deref(), Some("40P01" | "40001")),
            _ => false,
        }
    }

    /// Whether the database was unreachable or not ready yet, so trying again may succeed.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)) => true,
            // 57P03: the database system is starting up.
            Self::Database(sqlx::Error::Database(e)) => e.code().as_deref() == Some("57P03"),
            // Not migrated yet: `memory migrate` (a Job, say) is probably running.
            Self::SchemaBehind { .. } => true,
            _ => false,
        }
    }
}

/// A registered embedding space and the id naming its vector table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    pub id: i32,
    pub reference: SpaceRef,
    pub active: bool,
    /// When it last became active; a space that was active and is not any more is retired.
    pub activated_at: Option<DateTime<Utc>>,
    /// Where an interrupted backfill resumes: the last message id it finished.
    pub backfill_cursor: Option<MessageId>,
    /// Messages embedded (or refused) by backfills of this space so far.
    pub backfilled: i64,
}

impl Space {
    /// Active once, replaced since: it no longer backfills or activates on its own.
    pub fn is_retired(&self) -> bool {
        !self.active && self.activated_at.is_some()
    }
}

/// How far a space is from holding every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    pub messages: i64,
    /// Messages with neither a vector nor a recorded refusal in the space.
    pub missing: i64,
}

/// A lock held across every replica until dropped (a Postgres session advisory lock on a
/// connection of its own).
pub trait Lock: Send + Sync {}

/// A tenant's ingest held off (see [`Store::hold_tenant`]); dropping it without `commit` undoes
/// what it did.
#[async_trait]
pub trait TenantHold: Send {
    /// Tombstones messages, conversations or the whole tenant against ingest events up to
    /// `cutoff`; the tombstones' time: rows stored up to it are what the delete removes (with
    /// [`Store::delete_stored`]), rows stored later come from newer events.
    async fn tombstone(&mut self, what: &[Tombstone], cutoff: Cutoff) -> Result<DateTime<Utc>, StoreError>;

    /// Deletes these messages of the tenant, whatever their state, with their vectors; the ids
    /// it deleted.
    async fn delete(&mut self, ids: &[MessageId]) -> Result<Vec<MessageId>, StoreError>;

    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// The advisory-lock keys workers coordinate with.
pub mod locks {
    /// One backfill of a space at a time.
    pub fn backfill(space_id: i32) -> i64 {
        0x006d_656d_0002_0000_i64 | i64::from(space_id)
    }
    /// One sweeper at a time.
    pub const SWEEPER: i64 = 0x006d_656d_0003;

    /// Ingest writes of a tenant take this shared, deletes take it exclusively (both for the
    /// length of a transaction), so a delete and an insert of the same tenant never interleave:
    /// the insert either commits first (and the delete removes its row) or sees the tombstone.
    pub fn tenant_writes(tenant: &crate::domain::TenantId) -> i64 {
        (0x6d05_i64 << 48) | (retention(tenant) & 0xFFFF_FFFF_FFFF)
    }

    /// One retention run per tenant at a time.
    pub fn retention(tenant: &crate::domain::TenantId) -> i64 {
        // FNV-1a of the id, in a range of its own.
        let h = tenant
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        (0x6d04_i64 << 48) | i64::try_from(h & 0xFFFF_FFFF_FFFF).unwrap_or(0)
    }
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub id: MessageId,
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub role: Role,
    pub name: Option<String>,
    pub content: String,
    pub metadata: Map<String, Value>,
    pub importance: f64,
    pub importance_override: Option<f64>,
    pub pinned: bool,
    pub status: MessageStatus,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub stored_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    /// Content edits so far; a vector is stored only for the revision it was computed from.
    pub revision: i32,
}

impl StoredMessage {
    pub fn view(self) -> MessageView {
        MessageView {
            id: self.id,
            tenant_id: self.tenant_id,
            conversation_id: self.conversation_id,
            role: self.role,
            name: self.name,
            content: self.content,
            metadata: self.metadata,
            importance: Some(self.importance),
            importance_override: self.importance_override,
            pinned: self.pinned,
            status: self.status,
            failure_reason: self.failure_reason,
            created_at: self.created_at,
            stored_at: Some(self.stored_at),
            archived_at: self.archived_at,
        }
    }
}

/// A validated message with the importance computed at ingest.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub message: NewMessage,
    pub importance: f64,
    /// The ingest event it comes from; `None` for a direct write, which no tombstone stops.
    pub origin: Option<Origin>,
}

/// Where an ingest event sits in the ingest stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub sequence: u64,
    /// When the stream stored it, by the NATS server's clock.
    pub published_at: DateTime<Utc>,
}

/// What a tombstone stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tombstone {
    Message(MessageId),
    Conversation(ConversationId),
    Tenant,
}

/// The last ingest event accepted before a delete: events up to it (by sequence and by the
/// server's clock, so a recreated stream's new events are never taken for old ones) are
/// dropped if a tombstone covers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoff {
    pub sequence: u64,
    pub at: Option<DateTime<Utc>>,
}

/// A message as an edit left it, and what the edit changed.
#[derive(Debug, Clone)]
pub struct Edited {
    pub message: StoredMessage,
    pub content_changed: bool,
    /// Archived (`Some(true)`) or restored (`Some(false)`) by the edit.
    pub archived: Option<bool>,
}

/// A stored message in an export, with its vector in the asked-for space if it has one.
#[derive(Debug, Clone)]
pub struct Exported {
    pub message: StoredMessage,
    pub vector: Option<Vec<f32>>,
}

/// A row as stored after an insert, and whether this insert created it.
#[derive(Debug, Clone)]
pub struct Inserted {
    pub row: StoredMessage,
    pub new: bool,
}

/// A vector to store for a message.
#[derive(Debug, Clone)]
pub struct NewVector {
    pub message_id: MessageId,
    pub tenant_id: TenantId,
    pub vector: Vec<f32>,
    /// The revision of the content it was computed from: a stale vector is not stored.
    pub revision: i32,
}

/// A message the provider refused to embed, and why.
#[derive(Debug, Clone)]
pub struct Failure {
    pub message_id: MessageId,
    pub reason: String,
    /// The revision refused: an edited message is not failed for its old content.
    pub revision: i32,
}

/// A nearest-neighbour query within one tenant.
#[derive(Debug, Clone)]
pub struct VectorQuery<'a> {
    pub tenant_id: &'a TenantId,
    pub vector: &'a [f32],
    pub limit: u32,
    pub filters: &'a SearchFilters,
    /// HNSW's candidate list size (`hnsw.ef_search`).
    pub ef_search: u32,
}

/// A candidate with its cosine similarity to the query.
#[derive(Debug, Clone)]
pub struct VectorHit {
    pub message: StoredMessage,
    pub similarity: f64,
}

/// A full-text query within one tenant.
#[derive(Debug, Clone)]
pub struct LexicalQuery<'a> {
    pub tenant_id: &'a TenantId,
    pub query: &'a TextQuery,
    pub limit: u32,
    pub filters: &'a SearchFilters,
}

/// The text a lexical search looks for.
#[derive(Debug, Clone, PartialEq)]
pub enum TextQuery {
    /// Web-search syntax as typed (`"a phrase"`, `or`, `-word`): `websearch_to_tsquery`, ranked
    /// by `ts_rank_cd`.
    Websearch(String),
    /// Any of these words (lexemes of the `simple` configuration); a message ranks by the sum of
    /// the weights of the words it contains.
    AnyOf(Vec<Term>),
}

/// A query word and how much finding it counts (its inverse document frequency).
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub lexeme: String,
    pub weight: f64,
}

/// A candidate with its full-text rank (`ts_rank_cd`).
#[derive(Debug, Clone)]
pub struct LexicalHit {
    pub message: StoredMessage,
    pub rank: f64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Succeeds when the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Registers a space (creating its vector table and index) and returns it. The first space
    /// registered becomes active; later ones wait for a backfill to activate them.
    async fn register_space(&self, space: &SpaceRef) -> Result<Space, StoreError>;

    /// The space searches compare against, if any.
    async fn active_space(&self) -> Result<Option<Space>, StoreError>;

    /// Inserts the rows in one statement, skipping ids already stored, and returns the stored row
    /// of every id given, new or not, in no particular order.
    async fn insert_messages(&self, rows: &[NewRow]) -> Result<Vec<Inserted>, StoreError>;

    /// Stores vectors in `space` and marks their messages `embedded`, in one transaction.
    async fn save_vectors(&self, space: &Space, vectors: &[NewVector]) -> Result<(), StoreError>;

    /// Records the provider's refusals in `space` and marks the messages `failed` with the reason.
    /// Like `save_vectors`, only for the active space (else `SpaceInactive`).
    async fn mark_failed(&self, space: &Space, failures: &[Failure]) -> Result<(), StoreError>;

    /// The space with this id, as stored now.
    async fn space(&self, id: i32) -> Result<Option<Space>, StoreError>;

    /// Up to `limit` messages in id order after `after`, with neither a vector nor a recorded
    /// refusal in `space`: what a backfill still has to embed.
    async fn unembedded(
        &self,
        space: &Space,
        after: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// Saves a backfill batch into `space` (vectors, refusals, and the cursor to resume after),
    /// in one transaction. Message statuses are untouched until the space is activated.
    async fn save_backfill(
        &self,
        space: &Space,
        vectors: &[NewVector],
        failures: &[Failure],
        cursor: MessageId,
    ) -> Result<(), StoreError>;

    async fn coverage(&self, space: &Space) -> Result<Coverage, StoreError>;

    /// Makes `space` the active one if at most `leftover_limit` messages lack a vector or a
    /// refusal in it, and sets every message's status from it, in one transaction that waits for
    /// in-flight writes to the old space. Returns the leftovers (now `pending`) for the caller to
    /// embed, or `None` (nothing changed) when more are missing.
    async fn activate_space(
        &self,
        space: &Space,
        leftover_limit: u32,
    ) -> Result<Option<Vec<StoredMessage>>, StoreError>;

    /// Messages of the active space left `pending` or `failed` (with fewer than `max_failures`
    /// refusals) whose last change is older than `before`, oldest first.
    async fn stale(
        &self,
        before: DateTime<Utc>,
        max_failures: u32,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// Marks messages as just changed, which sends them to the back of the sweeper's queue.
    async fn touch(&self, ids: &[MessageId]) -> Result<(), StoreError>;

    /// Messages with status `pending`.
    async fn pending_count(&self) -> Result<i64, StoreError>;

    /// Takes the advisory lock `key` if no one holds it.
    async fn try_lock(&self, key: i64) -> Result<Option<Box<dyn Lock>>, StoreError>;

    async fn get_message(&self, id: MessageId) -> Result<Option<StoredMessage>, StoreError>;

    /// The tenant's nearest messages to the query vector by cosine distance, filtered.
    async fn search_vectors(&self, space: &Space, query: VectorQuery<'_>) -> Result<Vec<VectorHit>, StoreError>;

    /// The tenant's messages matching the text, best full-text rank first, filtered.
    async fn search_lexical(&self, query: LexicalQuery<'_>) -> Result<Vec<LexicalHit>, StoreError>;

    /// The distinct words of `text` as the full-text index stores them (`simple` configuration).
    async fn lexemes(&self, text: &str) -> Result<Vec<String>, StoreError>;

    /// How many of the tenant's messages there are, and how many contain each lexeme, counting
    /// no further than `cap`.
    async fn document_frequencies(
        &self,
        tenant: &TenantId,
        lexemes: &[String],
        cap: i64,
    ) -> Result<(i64, Vec<i64>), StoreError>;

    /// Cosine similarity of `vector` to each of these messages that has a vector in `space`.
    async fn similarities(
        &self,
        space: &Space,
        ids: &[MessageId],
        vector: &[f32],
    ) -> Result<Vec<(MessageId, f64)>, StoreError>;

    /// A tenant's own ranking, if it set one.
    async fn tenant_ranking(&self, tenant: &TenantId) -> Result<Option<Ranking>, StoreError>;

    /// Creates a tenant; `Exists` if the id is taken.
    async fn create_tenant(&self, id: &TenantId, name: Option<&str>) -> Result<Tenant, StoreError>;

    async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError>;

    /// Tenants in id order after `after`, at most `limit`.
    async fn tenants(&self, after: Option<&TenantId>, limit: u32) -> Result<Vec<Tenant>, StoreError>;

    /// Deletes a tenant and its keys (not its messages); `false` if there was none.
    async fn delete_tenant(&self, id: &TenantId) -> Result<bool, StoreError>;

    async fn create_key(&self, key: &NewApiKey) -> Result<ApiKey, StoreError>;

    /// The key whose SHA-256 is `hash`, live or not.
    async fn key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKey>, StoreError>;

    async fn keys(&self, tenant: &TenantId) -> Result<Vec<ApiKey>, StoreError>;

    /// Revokes a key of the tenant; `false` if it has no such key.
    async fn revoke_key(&self, tenant: &TenantId, id: uuid::Uuid) -> Result<bool, StoreError>;

    /// Records that these keys were used now.
    async fn touch_keys(&self, ids: &[uuid::Uuid]) -> Result<(), StoreError>;

    /// Tenants that have messages.
    async fn tenants_with_messages(&self) -> Result<Vec<TenantId>, StoreError>;

    /// Whether the tenant exists or has messages (the operator may write for any tenant id).
    async fn tenant_known(&self, tenant: &TenantId) -> Result<bool, StoreError>;

    /// Up to `limit` (or all) of the tenant's messages the policy would archive or delete at `now`,
    /// oldest first.
    async fn retention_candidates(
        &self,
        tenant: &TenantId,
        policy: &RetentionPolicy,
        action: RetentionAction,
        now: DateTime<Utc>,
        limit: Option<u32>,
    ) -> Result<Vec<MessageId>, StoreError>;

    /// Archives these live, unpinned messages of the tenant at `now`; how many it archived.
    async fn archive_messages(
        &self,
        tenant: &TenantId,
        ids: &[MessageId],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Archives (at `now`) or restores one message, of `tenant` when given; the message as it is
    /// now, or `None` if there is no such message.
    async fn set_archived(
        &self,
        id: MessageId,
        tenant: Option<&TenantId>,
        archived: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredMessage>, StoreError>;

    /// Deletes these archived, unpinned messages of the tenant (their vectors with them); how many.
    async fn delete_messages(&self, tenant: &TenantId, ids: &[MessageId]) -> Result<u64, StoreError>;

    /// A tenant's own retention policy, if it set one.
    async fn tenant_retention(&self, tenant: &TenantId) -> Result<Option<RetentionPolicy>, StoreError>;

    /// Sets (or, with `None`, removes) a tenant's own retention policy.
    async fn set_tenant_retention(&self, tenant: &TenantId, policy: Option<&RetentionPolicy>)
    -> Result<(), StoreError>;

    /// A tenant's own rate limit, if the operator set one.
    async fn tenant_rate_limit(&self, tenant: &TenantId) -> Result<Option<RateLimit>, StoreError>;

    /// Sets (or, with `None`, removes) a tenant's own rate limit.
    async fn set_tenant_rate_limit(&self, tenant: &TenantId, limit: Option<RateLimit>) -> Result<(), StoreError>;

    /// Sets (or, with `None`, removes) a tenant's own ranking.
    async fn set_tenant_ranking(&self, tenant: &TenantId, ranking: Option<&Ranking>) -> Result<(), StoreError>;

    /// Of these ingest rows, the ids a tombstone stops (their message, conversation or tenant
    /// was deleted after they were accepted).
    async fn tombstoned(&self, rows: &[NewRow]) -> Result<Vec<MessageId>, StoreError>;

    /// Holds off the tenant's ingest inserts (they wait) until the returned handle commits or
    /// is dropped: a delete reads the stream's position and writes its tombstone under it, so
    /// every event stored before is covered and every insert after sees the tombstone.
    async fn hold_tenant(&self, tenant: &TenantId) -> Result<Box<dyn TenantHold>, StoreError>;

    /// Deletes up to `limit` of the tenant's messages (of one conversation, when given) stored
    /// no later than `stored_before`, with their vectors; the ids it deleted.
    async fn delete_stored(
        &self,
        tenant: &TenantId,
        conversation: Option<&ConversationId>,
        stored_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<MessageId>, StoreError>;

    /// Removes a tenant's settings (ranking, rate limit, retention policy).
    async fn delete_tenant_settings(&self, tenant: &TenantId) -> Result<(), StoreError>;

    /// Drops tombstones older than `older_than` that no event still in the ingest stream (whose
    /// first sequence is `first_sequence`) can match; how many.
    async fn prune_tombstones(&self, first_sequence: u64, older_than: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Applies an edit to one message (of `tenant`, when given). A change of the override or the
    /// pin recomputes its importance with `weights` as of when it was stored. A content change
    /// bumps the revision, drops its vectors and refusals and sets it `pending`. `None` if there
    /// is no such message.
    async fn update_message(
        &self,
        id: MessageId,
        tenant: Option<&TenantId>,
        update: &ValidUpdate,
        weights: ImportanceWeights,
        now: DateTime<Utc>,
    ) -> Result<Option<Edited>, StoreError>;

    /// Up to `limit` of the tenant's messages in id order after `after`, with their vectors in
    /// `vectors` when given.
    async fn export(
        &self,
        tenant: &TenantId,
        after: Option<MessageId>,
        limit: u32,
        vectors: Option<&Space>,
    ) -> Result<Vec<Exported>, StoreError>;
}
