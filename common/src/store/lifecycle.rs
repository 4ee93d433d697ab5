//! A stored message's life after ingest: retention runs, edits, archiving, export, and deletes
//! with the tombstones that keep deleted messages from coming back. The retention role's.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Space, StoreError, StoredMessage};
use crate::config::ImportanceWeights;
use crate::domain::{ConversationId, MessageId, RetentionAction, RetentionPolicy, TenantId, ValidUpdate};

/// A tenant's ingest held off (see [`Deletes::hold_tenant`]); dropping it without `commit` undoes
/// what it did.
#[async_trait]
pub trait TenantHold: Send {
    /// Tombstones messages, conversations or the whole tenant against ingest events up to
    /// `cutoff`; the tombstones' time: rows stored up to it are what the delete removes (with
    /// [`Deletes::delete_stored`]), rows stored later come from newer events.
    async fn tombstone(&mut self, what: &[Tombstone], cutoff: Cutoff) -> Result<DateTime<Utc>, StoreError>;

    /// Deletes these messages of the tenant, whatever their state, with their vectors; the ids
    /// it deleted.
    async fn delete(&mut self, ids: &[MessageId]) -> Result<Vec<MessageId>, StoreError>;

    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
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

/// What a retention action would take: the first ids, and the count of all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidates {
    pub ids: Vec<MessageId>,
    pub total: u64,
}

/// Retention policies and what a run archives and deletes.
#[async_trait]
pub trait RetentionRuns: Send + Sync {
    /// Tenants that have messages.
    async fn tenants_with_messages(&self) -> Result<Vec<TenantId>, StoreError>;

    /// A tenant's own retention policy, if it set one.
    async fn tenant_retention(&self, tenant: &TenantId) -> Result<Option<RetentionPolicy>, StoreError>;

    /// Sets (or, with `None`, removes) a tenant's own retention policy.
    async fn set_tenant_retention(&self, tenant: &TenantId, policy: Option<&RetentionPolicy>)
    -> Result<(), StoreError>;

    /// Up to `limit` of the tenant's messages the policy would archive or delete at `now`, oldest
    /// first, and how many there are in all (a dry run counts without loading every id).
    async fn retention_candidates(
        &self,
        tenant: &TenantId,
        policy: &RetentionPolicy,
        action: RetentionAction,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Candidates, StoreError>;

    /// Archives these live, unpinned messages of the tenant at `now`; how many it archived.
    async fn archive_messages(
        &self,
        tenant: &TenantId,
        ids: &[MessageId],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Deletes these archived, unpinned messages of the tenant (their vectors with them); how many.
    async fn delete_messages(&self, tenant: &TenantId, ids: &[MessageId]) -> Result<u64, StoreError>;
}

/// Changes to one stored message, and reading a tenant's messages out.
#[async_trait]
pub trait Edits: Send + Sync {
    /// Applies an edit to one of the tenant's messages. A change of the override or the
    /// pin recomputes its importance with `weights` as of when it was stored. A content change
    /// bumps the revision, drops its vectors and refusals and sets it `pending`. `None` if there
    /// is no such message.
    async fn update_message(
        &self,
        tenant: &TenantId,
        id: MessageId,
        update: &ValidUpdate,
        weights: ImportanceWeights,
        now: DateTime<Utc>,
    ) -> Result<Option<Edited>, StoreError>;

    /// Archives (at `now`) or restores one of the tenant's messages; the message as it is now,
    /// or `None` if there is no such message.
    async fn set_archived(
        &self,
        tenant: &TenantId,
        id: MessageId,
        archived: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredMessage>, StoreError>;

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

/// Deleting on request: messages, conversations or a whole tenant, behind tombstones.
#[async_trait]
pub trait Deletes: Send + Sync {
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
}
