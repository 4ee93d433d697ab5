//! Storage, cut by role: each trait is what one kind of worker may do with the database, and
//! each worker's handle names only the traits it uses (so a forbidden call does not compile).
//! One implementation: Postgres + pgvector ([`PgStore`]). Writes are idempotent by message id,
//! so a redelivered event never duplicates a row.
//!
//! | trait | what | used by |
//! |---|---|---|
//! | [`Health`], [`Locks`] | ping; advisory locks across replicas | readiness (gateway, composition roots); embedder, retention |
//! | [`MessageReads`] | one message; which ingest rows a tombstone stops | embedder, searcher, retention |
//! | [`IngestWrites`] | new messages, their vectors and refusals; the sweeper's queue | embedder |
//! | [`Spaces`], [`Backfill`] | the active space; registering, backfilling, activating | all readers; embedder |
//! | [`SearchReads`] | vector and lexical candidates | searcher |
//! | [`Tenants`], [`ApiKeys`], [`TenantLookup`] | tenants and their keys | gateway (lookup: retention too) |
//! | [`Settings`], [`SettingsAdmin`] | a tenant's ranking and rate limit | gateway, searcher (reads) |
//! | [`Conversations`], [`Analytics`] | conversations' titles, metadata, archived flags and counts; usage from counters | gateway |
//! | [`RetentionRuns`], [`Edits`], [`Deletes`] | policies and runs; edits, archive, export; deletes and tombstones | retention |
//! | [`Operations`] | long work a client follows: started by the gateway, heartbeated and finished by retention | gateway, retention |

mod analytics;
mod conversations;
mod error;
mod ingest;
mod lifecycle;
pub mod locks;
mod message;
mod operations;
mod postgres;
mod search;
mod spaces;
mod tenants;

use async_trait::async_trait;

pub use analytics::{Analytics, DayCount, TenantUsage, Usage};
pub use conversations::{Conversation, ConversationPage, ConversationPatch, Conversations};
pub use error::StoreError;
pub use ingest::{Failure, IngestWrites, Inserted, MessageReads, NewRow, NewVector, Origin};
pub use lifecycle::{Candidates, Cutoff, Deletes, Edited, Edits, Exported, RetentionRuns, TenantHold, Tombstone};
pub use message::StoredMessage;
pub use operations::{OPERATION_HEARTBEAT, OPERATION_SILENCE, Operation, OperationStatus, Operations};
pub use postgres::PgStore;
pub use search::{LexicalHit, LexicalQuery, SearchReads, Term, TextQuery, VectorHit, VectorQuery};
pub use spaces::{Backfill, Coverage, Space, Spaces};
pub use tenants::{ApiKeys, Settings, SettingsAdmin, TenantLookup, Tenants};

/// Whether the store answers: readiness (the gateway's `/readyz`, and the ops port of every
/// process through its composition root's handle).
#[async_trait]
pub trait Health: Send + Sync {
    /// Succeeds when the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// A lock held across every replica until dropped (a Postgres session advisory lock on a
/// connection of its own).
pub trait Lock: Send + Sync {}

/// Advisory locks, so one replica at a time does a job (keys in [`locks`]).
#[async_trait]
pub trait Locks: Send + Sync {
    /// Takes the advisory lock `key` if no one holds it.
    async fn try_lock(&self, key: i64) -> Result<Option<Box<dyn Lock>>, StoreError>;
}
