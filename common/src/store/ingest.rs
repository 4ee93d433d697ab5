//! What ingest writes: new messages, their vectors and the provider's refusals; and the reads
//! ingest shares with the other roles.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Space, StoreError, StoredMessage};
use crate::domain::{MessageId, MessageKey, NewMessage, TenantId};

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
    pub tenant_id: TenantId,
    pub reason: String,
    /// The revision refused: an edited message is not failed for its old content.
    pub revision: i32,
}

/// Reads of single messages, which every role that handles messages shares.
#[async_trait]
pub trait MessageReads: Send + Sync {
    /// The tenant's message with this id (ids are unique within a tenant only).
    async fn get_message(&self, tenant: &TenantId, id: MessageId) -> Result<Option<StoredMessage>, StoreError>;

    /// Of these ingest rows, those a tombstone stops (their message, conversation or tenant
    /// was deleted after they were accepted).
    async fn tombstoned(&self, rows: &[NewRow]) -> Result<Vec<MessageKey>, StoreError>;
}

/// The embedder's writes: the only way a message row comes into being.
#[async_trait]
pub trait IngestWrites: Send + Sync {
    /// Inserts the rows in one statement, skipping messages already stored (the same tenant and
    /// id), and returns the stored row of every one given, new or not, in no particular order.
    async fn insert_messages(&self, rows: &[NewRow]) -> Result<Vec<Inserted>, StoreError>;

    /// Stores vectors in `space` and marks their messages `embedded`, in one transaction.
    async fn save_vectors(&self, space: &Space, vectors: &[NewVector]) -> Result<(), StoreError>;

    /// Records the provider's refusals in `space` and marks the messages `failed` with the reason.
    /// Like `save_vectors`, only for the active space (else `SpaceInactive`).
    async fn mark_failed(&self, space: &Space, failures: &[Failure]) -> Result<(), StoreError>;

    /// Messages of the active space left `pending` or `failed` (with fewer than `max_failures`
    /// refusals) whose last change is older than `before`, oldest first.
    async fn stale(
        &self,
        before: DateTime<Utc>,
        max_failures: u32,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// Marks messages as just changed, which sends them to the back of the sweeper's queue.
    async fn touch(&self, keys: &[MessageKey]) -> Result<(), StoreError>;

    /// Messages with status `pending`.
    async fn pending_count(&self) -> Result<i64, StoreError>;
}
