//! Edits and real deletes: `mem.v1.messages.update`, `mem.v1.messages.delete`,
//! `mem.v1.conversations.delete`, `mem.v1.tenants.erase`, and the export pages of
//! `mem.v1.tenants.export`.
//!
//! A delete first writes a tombstone against the ingest events the stream holds at that moment,
//! then removes the rows in bounded batches, then purges what it can from the streams. An event
//! still in flight when the delete came is dropped by the embedder on sight of the tombstone,
//! so deleted data never comes back.

use std::time::Duration;

use crate::Deps;
use chrono::Utc;
use common::bus::{BusError, Envelope};
use common::config::ImportanceWeights;
use common::contract::{
    CachePurge, DeleteConversationRequest, DeleteMessagesRequest, DeleteMessagesResponse, Deleted, EraseTenantRequest,
    MessageReceived, MessageUpdated, REEMBED_HEADER, RemoteError, RemoteErrorCode, Reply, StreamKind,
    UpdateMessagesRequest, UpdateMessagesResponse, VERSION,
};
use common::domain::{BATCH_MAX, MessageId, MessageInput, TenantId};
use common::store::{Cutoff, Edited, StoreError, StoredMessage, Tombstone};
use redis::AsyncCommands as _;
use tracing::{info, warn};

/// Tries of a delete that Postgres aborted to break a deadlock.
const CONFLICT_ATTEMPTS: u32 = 3;

/// Why a tombstone transaction failed.
enum Held {
    Store(StoreError),
    Remote(RemoteError),
}

impl From<StoreError> for Held {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// A Redis call slower than this fails the cache purge (the erase can be retried).
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(crate) struct Lifecycle {
    pub(crate) deps: Deps,
    pub(crate) weights: ImportanceWeights,
    pub(crate) batch_size: u32,
    pub(crate) redis: Option<redis::Client>,
    pub(crate) metrics: crate::Metrics,
    /// The deployment's retention policy.
    pub(crate) policy: common::domain::RetentionPolicy,
}

pub(crate) use common::bus::respond::{bad_request as bad, unavailable};

fn check_batch(n: usize, what: &str) -> Result<(), RemoteError> {
    if (1..=BATCH_MAX).contains(&n) { Ok(()) } else { Err(bad(format!("give 1 to {BATCH_MAX} {what}, got {n}"))) }
}

impl Lifecycle {
    /// The last ingest event accepted so far: a delete covers it and everything before.
    async fn cutoff(&self) -> Result<Cutoff, RemoteError> {
        let state = self
            .deps
            .bus
            .stream_state(StreamKind::Ingest)
            .await
            .map_err(|e| unavailable("reading the ingest stream", &e))?;
        Ok(Cutoff { sequence: state.last_sequence, at: state.last_at })
    }

    pub(crate) async fn update(&self, request: UpdateMessagesRequest) -> Result<UpdateMessagesResponse, RemoteError> {
        check_batch(request.updates.len(), "updates")?;
        let mut results = Vec::with_capacity(request.updates.len());
        for edit in request.updates {
            results.push(match self.update_one(&request.tenant_id, edit.message_id, edit.update).await {
                Ok(view) => Reply::Ok(view),
                Err(e) => Reply::Error(e),
            });
        }
        Ok(UpdateMessagesResponse { results })
    }

    async fn update_one(
        &self,
        tenant: &TenantId,
        id: MessageId,
        update: common::domain::MessageUpdate,
    ) -> Result<common::domain::MessageView, RemoteError> {
        let update = update.validate().map_err(|e| bad(e.to_string()))?;
        let now = Utc::now();
        let edit = || async {
            self.deps
                .store
                .update_message(tenant, id, &update, self.weights, now)
                .await
                .map_err(|e| unavailable("updating the message", &e))
        };
        let mut updated = edit().await?;
        if updated.is_none() {
            if self.queued(tenant, id).await? {
                return Err(RemoteError::new(
                    RemoteErrorCode::Queued,
                    format!("message {id} is still queued: edit it once it is stored (its status shows when)"),
                ));
            }
            // Stored (and acked) between the two lookups?
            updated = edit().await?;
        }
        let Some(Edited { message, content_changed, archived }) = updated else {
            return Err(RemoteError::new(RemoteErrorCode::NotFound, format!("no message {id}")));
        };
        match archived {
            Some(true) => {
                let at = message.archived_at.unwrap_or(now);
                crate::events::archived(&self.deps, &message.tenant_id, &[message.message_id], at).await;
            }
            Some(false) => crate::events::restored(&self.deps, &message.tenant_id, &[message.message_id]).await,
            None => {}
        }
        if content_changed {
            self.reembed(&message).await;
        }
        let event = MessageUpdated {
            v: VERSION,
            message_id: message.message_id,
            tenant_id: message.tenant_id.clone(),
            revision: message.revision,
            content_changed,
        };
        crate::events::updated(&self.deps, &event).await;
        Ok(message.view())
    }

    /// Queues an edited message for embedding through the ingest stream: the embedder finds it
    /// stored and `pending` at its new revision. If the publish fails, the sweeper embeds it later.
    async fn reembed(&self, m: &StoredMessage) {
        let payload = serde_json::to_vec(&MessageReceived {
            v: VERSION,
            message: MessageInput::from(&m.message),
            importance: None,
        })
        .expect("events serialise");
        let envelope = Envelope::new(self.deps.subjects.ingest(&m.tenant_id, m.message_id), payload)
            .with_header(REEMBED_HEADER, m.revision.to_string());
        // A duplicate id of its own: a message deleted, sent again and edited within the
        // stream's duplicate window must not have its re-embed taken for the old one's.
        let dedup = format!("{}.r{}.{}", m.message_id, m.revision, MessageId::new());
        if let Err(e) = self.deps.bus.publish(envelope, Some(&dedup)).await {
            warn!(error = %e, message_id = %m.message_id, "queueing an edited message for embedding failed; the sweeper will embed it");
        }
    }

    /// Whether the tenant's message is still in the ingest stream.
    async fn queued(&self, tenant: &TenantId, id: MessageId) -> Result<bool, RemoteError> {
        let subject = self.deps.subjects.ingest(tenant, id);
        let envelope = self
            .deps
            .bus
            .last_on_subject(StreamKind::Ingest, &subject)
            .await
            .map_err(|e| unavailable("reading the ingest stream", &e))?;
        Ok(envelope.is_some())
    }

    /// Whether the tenant's message is stored.
    async fn stored(&self, tenant: &TenantId, id: MessageId) -> Result<bool, RemoteError> {
        let stored = self.deps.store.get_message(tenant, id).await.map_err(|e| unavailable("reading a message", &e))?;
        Ok(stored.is_some())
    }

    pub(crate) async fn delete(&self, request: DeleteMessagesRequest) -> Result<DeleteMessagesResponse, RemoteError> {
        check_batch(request.message_ids.len(), "message ids")?;
        let owner = &request.tenant_id;
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<MessageId> = request.message_ids.iter().copied().filter(|id| seen.insert(*id)).collect();
        // Each message is stored, or still queued (or stored and acked between the two
        // lookups); else it does not exist.
        let mut ids = Vec::new();
        let mut not_found = Vec::new();
        for &id in &unique {
            if self.stored(owner, id).await? || self.queued(owner, id).await? || self.stored(owner, id).await? {
                ids.push(id);
            } else {
                not_found.push(id);
            }
        }
        let mut deleted = Vec::new();
        if !ids.is_empty() {
            let what: Vec<Tombstone> = ids.iter().map(|id| Tombstone::Message(*id)).collect();
            let (cutoff, _, rows) = self.tombstone(owner, &what, &ids).await?;
            self.metrics.deleted.inc_by(rows.len() as u64);
            crate::events::deleted(&self.deps, owner, &rows).await;
            for id in ids {
                let subject = self.deps.subjects.ingest(owner, id);
                let purged = self
                    .deps
                    .bus
                    .purge(StreamKind::Ingest, &subject, Some(cutoff.sequence))
                    .await
                    .map_err(|e| unavailable("dropping a queued message", &e))?;
                if rows.contains(&id) || purged > 0 {
                    deleted.push(id);
                } else {
                    // Stored or queued a moment ago, gone now (another delete, or a queued event
                    // dropped as the embedder took it): nothing of it is left.
                    not_found.push(id);
                }
            }
        }
        let order = |id: &MessageId| request.message_ids.iter().position(|x| x == id);
        deleted.sort_by_key(order);
        not_found.sort_by_key(order);
        Ok(DeleteMessagesResponse { deleted, not_found })
    }

    pub(crate) async fn delete_conversation(&self, request: DeleteConversationRequest) -> Result<Deleted, RemoteError> {
        let (tenant, conversation) = (&request.tenant_id, &request.conversation_id);
        let (_, at, _) = self.tombstone(tenant, &[Tombstone::Conversation(conversation.clone())], &[]).await?;
        let deleted = self.delete_stored(tenant, Some(conversation), at, true).await?;
        info!(%tenant, %conversation, deleted, "conversation deleted");
        // Its queued events cannot be told apart by subject: the embedder drops them on sight.
        Ok(Deleted { deleted, dropped_queued: 0 })
    }

    /// Holds off the tenant's ingest, reads the stream's position under that hold, writes the
    /// tombstones and deletes `ids`, all in one transaction: every event stored before is
    /// covered, every insert after sees the tombstones. The cutoff, the tombstones' time and the
    /// ids deleted.
    async fn tombstone(
        &self,
        tenant: &TenantId,
        what: &[Tombstone],
        ids: &[MessageId],
    ) -> Result<(Cutoff, chrono::DateTime<Utc>, Vec<MessageId>), RemoteError> {
        let started = std::time::Instant::now();
        let mut attempt = 1;
        loop {
            // On any failure the hold is dropped, which rolls everything back.
            let done = async {
                let mut hold = self.deps.store.hold_tenant(tenant).await?;
                let cutoff = self.cutoff().await.map_err(Held::Remote)?;
                let at = hold.tombstone(what, cutoff).await?;
                let deleted = if ids.is_empty() { Vec::new() } else { hold.delete(ids).await? };
                hold.commit().await?;
                Ok::<_, Held>((cutoff, at, deleted))
            }
            .await;
            match done {
                Ok(done) => {
                    self.metrics.delete_lock.observe(started.elapsed().as_secs_f64());
                    return Ok(done);
                }
                // A deadlock Postgres broke (with an embedder saving vectors): once more.
                Err(Held::Store(e)) if e.is_conflict() && attempt < CONFLICT_ATTEMPTS => attempt += 1,
                Err(Held::Store(e)) => return Err(unavailable("writing tombstones", &e)),
                Err(Held::Remote(e)) => return Err(e),
            }
        }
    }

    /// Deletes, batch by batch, the rows stored up to the tombstone; how many.
    async fn delete_stored(
        &self,
        tenant: &TenantId,
        conversation: Option<&common::domain::ConversationId>,
        at: chrono::DateTime<Utc>,
        announce: bool,
    ) -> Result<u64, RemoteError> {
        let (mut total, mut attempt) = (0, 1);
        loop {
            let ids = match self.deps.store.delete_stored(tenant, conversation, at, self.batch_size).await {
                Ok(ids) => ids,
                Err(e) if e.is_conflict() && attempt < CONFLICT_ATTEMPTS => {
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(unavailable("deleting messages", &e)),
            };
            total += ids.len() as u64;
            self.metrics.deleted.inc_by(ids.len() as u64);
            if announce {
                crate::events::deleted(&self.deps, tenant, &ids).await;
            }
            if ids.len() < self.batch_size as usize {
                return Ok(total);
            }
        }
    }

    pub(crate) async fn erase(&self, request: EraseTenantRequest) -> Result<Deleted, RemoteError> {
        let tenant = &request.tenant_id;
        let (cutoff, at, _) = self.tombstone(tenant, &[Tombstone::Tenant], &[]).await?;
        let deleted = self.delete_stored(tenant, None, at, false).await?;
        // The streams: queued messages (up to the cutoff), events and dead letters.
        let mut dropped_queued = 0;
        for (stream, subject) in self.deps.subjects.tenant_subjects(tenant) {
            let through = (stream == StreamKind::Ingest).then_some(cutoff.sequence);
            let purged = self
                .deps
                .bus
                .purge(stream, &subject, through)
                .await
                .map_err(|e| unavailable("purging a stream", &e))?;
            if stream == StreamKind::Ingest {
                dropped_queued += purged;
            }
        }
        if request.settings {
            self.deps.store.delete_tenant_settings(tenant).await.map_err(|e| unavailable("deleting settings", &e))?;
        }
        self.purge_cache(tenant).await?;
        crate::events::erased(&self.deps, tenant, deleted).await;
        info!(%tenant, deleted, dropped_queued, "tenant erased");
        Ok(Deleted { deleted, dropped_queued })
    }

    /// Tells every embedder to drop the tenant's cached query vectors (and to cache none for a
    /// minute), then deletes those in Redis.
    async fn purge_cache(&self, tenant: &TenantId) -> Result<(), RemoteError> {
        let payload = serde_json::to_vec(&CachePurge { v: VERSION, tenant_id: tenant.clone() }).expect("serialise");
        // The embedders first: they stop caching the tenant's queries, so nothing they write
        // lands after the Redis purge below.
        self.deps
            .bus
            .broadcast(Envelope::new(self.deps.subjects.cache_purge(), payload))
            .await
            .map_err(|e| unavailable("telling embedders to purge their caches", &e))?;
        if let Some(client) = &self.redis {
            let pattern = self.deps.subjects.query_cache_pattern(tenant);
            let purge = async {
                let mut connection = client.get_multiplexed_async_connection().await?;
                let keys: Vec<String> = {
                    let mut scan = connection.scan_match::<_, String>(&pattern).await?;
                    let mut keys = Vec::new();
                    while let Some(key) = futures::StreamExt::next(&mut scan).await {
                        keys.push(key?);
                    }
                    keys
                };
                for chunk in keys.chunks(500) {
                    connection.unlink::<_, ()>(chunk).await?;
                }
                Ok::<usize, redis::RedisError>(keys.len())
            };
            match tokio::time::timeout(REDIS_TIMEOUT, purge).await {
                Ok(Ok(n)) => info!(%tenant, entries = n, "purged the tenant's cached queries from Redis"),
                Ok(Err(e)) => return Err(unavailable("purging the query cache (retry the erase)", &e)),
                Err(_) => {
                    let e = BusError::Timeout { operation: "purging the query cache in Redis" };
                    return Err(unavailable("purging the query cache (retry the erase)", &e));
                }
            }
        }
        Ok(())
    }
}
