//! Embedding spaces (a provider, model and dimensions, each with its own vector table) and the
//! backfill that fills a new one before it becomes active.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Failure, NewVector, StoreError, StoredMessage};
use crate::contract::SpaceRef;
use crate::domain::MessageKey;

/// A registered embedding space and the id naming its vector table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    pub id: i32,
    pub reference: SpaceRef,
    pub active: bool,
    /// When it last became active; a space that was active and is not any more is retired.
    pub activated_at: Option<DateTime<Utc>>,
    /// Where an interrupted backfill resumes: the last message it finished.
    pub backfill_cursor: Option<MessageKey>,
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

/// Which space is active, for every role that reads vectors.
#[async_trait]
pub trait Spaces: Send + Sync {
    /// The space searches compare against, if any.
    async fn active_space(&self) -> Result<Option<Space>, StoreError>;

    /// The space with this id, as stored now.
    async fn space(&self, id: i32) -> Result<Option<Space>, StoreError>;
}

/// Registering a space, filling it and switching to it: the embedder's.
#[async_trait]
pub trait Backfill: Send + Sync {
    /// Registers a space (creating its vector table and index) and returns it. The first space
    /// registered becomes active; later ones wait for a backfill to activate them.
    async fn register_space(&self, space: &SpaceRef) -> Result<Space, StoreError>;

    /// Up to `limit` messages in (tenant, id) order after `after`, with neither a vector nor a recorded
    /// refusal in `space`: what a backfill still has to embed.
    async fn unembedded(
        &self,
        space: &Space,
        after: Option<&MessageKey>,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// Saves a backfill batch into `space` (vectors, refusals, and the cursor to resume after),
    /// in one transaction. Message statuses are untouched until the space is activated.
    async fn save_backfill(
        &self,
        space: &Space,
        vectors: &[NewVector],
        failures: &[Failure],
        cursor: &MessageKey,
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
}
