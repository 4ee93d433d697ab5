//! The contract between services and with direct NATS publishers: subjects, stream names,
//! headers, events and request/reply payloads. No subject or stream name is written anywhere
//! else. Every payload carries `"v": 1`; a breaking change bumps it together with the `v1` token.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::domain::{
    ConversationId, MessageId, MessageInput, MessageUpdate, MessageView, Ranking, RetentionAction, RetentionPolicy,
    Role, SearchFilters, SearchMode, TenantId, TenantRetention,
};

/// Payload version of every event and request defined here.
pub const VERSION: u8 = 1;

/// Header carrying the request id from the gateway to every worker.
pub const REQUEST_ID_HEADER: &str = "Memory-Request-Id";
/// Set (to the revision) on an ingest event that asks for a stored message to be embedded again
/// after an edit: the embedder never inserts from it, so it cannot bring back a message deleted
/// in the meantime.
pub const REEMBED_HEADER: &str = "Memory-Reembed";
/// Headers set on a dead-lettered message: why it was rejected and where it came from.
pub const DEAD_REASON_HEADER: &str = "Memory-Dead-Reason";
pub const DEAD_CODE_HEADER: &str = "Memory-Dead-Code";
pub const DEAD_SUBJECT_HEADER: &str = "Memory-Dead-Subject";
pub const DEAD_SEQUENCE_HEADER: &str = "Memory-Dead-Sequence";

/// Builds every subject, stream and consumer name from one prefix: `mem` in production, a unique
/// prefix per test so parallel tests never share a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

/// The Redis key of a cached query vector: `<namespace>:query-vector:<tenant>:<hash>` (`_` for
/// no tenant; tenant ids hold no glob characters). Shared by the embedders that fill the cache
/// and the retention service that erases a tenant's entries.
pub fn query_cache_key(namespace: &str, tenant: Option<&TenantId>, hash_hex: &str) -> String {
    format!("{namespace}:query-vector:{}:{hash_hex}", tenant.map_or("_", TenantId::as_str))
}

/// The `SCAN MATCH` pattern of every cached query vector of a tenant.
pub fn query_cache_pattern(namespace: &str, tenant: &TenantId) -> String {
    query_cache_key(namespace, Some(tenant), "*")
}

/// Which stream a name is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Ingest,
    Events,
    Dead,
}

impl Subjects {
    /// `prefix` must be one NATS token of `[A-Za-z0-9_-]` (checked by config).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A tenant id as one subject token: tenant ids may contain `.`, which NATS reads as a token
    /// separator, so it is written as `~` (never valid in a tenant id).
    pub fn tenant_token(tenant: &TenantId) -> String {
        tenant.as_str().replace('.', "~")
    }

    /// Where a message for `tenant` is published: `mem.v1.ingest.<tenant>.<message_id>`.
    /// Direct publishers may also use `mem.v1.ingest.<tenant>`.
    pub fn ingest(&self, tenant: &TenantId, id: MessageId) -> String {
        self.ingest_lookup(Some(tenant), id)
    }
    /// Every subject a tenant's data may sit on in each stream, for erasing it: ingest with and
    /// without a message id, events, dead letters.
    pub fn tenant_subjects(&self, tenant: &TenantId) -> [(StreamKind, String); 4] {
        let (p, t) = (&self.prefix, Self::tenant_token(tenant));
        [
            (StreamKind::Ingest, format!("{p}.v1.ingest.{t}")),
            (StreamKind::Ingest, format!("{p}.v1.ingest.{t}.>")),
            (StreamKind::Events, format!("{p}.v1.events.{t}.>")),
            (StreamKind::Dead, format!("{p}.v1.dead.{t}")),
        ]
    }
    /// The ingest subject of a message, for looking it up in the stream: any tenant when `None`.
    pub fn ingest_lookup(&self, tenant: Option<&TenantId>, id: MessageId) -> String {
        let tenant = tenant.map_or_else(|| "*".to_owned(), Self::tenant_token);
        format!("{}.v1.ingest.{tenant}.{id}", self.prefix)
    }

    /// Every ingest subject, for the stream and the embedder's consumer.
    pub fn ingest_all(&self) -> String {
        format!("{}.v1.ingest.>", self.prefix)
    }
    /// Reads `(tenant token, optional message id token)` from an ingest subject. The tenant token
    /// is still encoded (see [`Subjects::tenant_token`]); [`Subjects::tenant_of`] decodes it.
    pub fn parse_ingest<'a>(&self, subject: &'a str) -> Option<(&'a str, Option<&'a str>)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".v1.ingest.")?;
        let mut tokens = rest.split('.');
        let tenant = tokens.next().filter(|t| !t.is_empty())?;
        let id = tokens.next();
        if tokens.next().is_some() {
            return None;
        }
        Some((tenant, id))
    }

    /// The tenant id a subject token stands for.
    pub fn tenant_of(token: &str) -> String {
        token.replace('~', ".")
    }

    /// `mem.v1.events.<tenant>.<event>.<message_id>`: the id token lets a client wait for one
    /// message's event with an exact subscription, filtered by the server.
    pub fn event(&self, tenant: &TenantId, event: EventKind, id: MessageId) -> String {
        format!("{}.v1.events.{}.{}.{id}", self.prefix, Self::tenant_token(tenant), event.as_str())
    }
    /// Every event about one message: `mem.v1.events.<tenant>.*.<id>`.
    pub fn events_of(&self, tenant: &TenantId, id: MessageId) -> String {
        format!("{}.v1.events.{}.*.{id}", self.prefix, Self::tenant_token(tenant))
    }
    pub fn events_all(&self) -> String {
        format!("{}.v1.events.>", self.prefix)
    }

    /// `mem.v1.dead.<tenant>`; the tenant token is whatever the rejected subject carried.
    pub fn dead(&self, tenant_token: &str) -> String {
        format!("{}.v1.dead.{tenant_token}", self.prefix)
    }
    pub fn dead_all(&self) -> String {
        format!("{}.v1.dead.>", self.prefix)
    }
    /// The dead-letter subject for a rejected ingest subject.
    pub fn dead_for(&self, ingest_subject: &str) -> String {
        let tenant = self.parse_ingest(ingest_subject).map_or("_unknown", |(t, _)| t);
        self.dead(tenant)
    }

    pub fn search(&self) -> String {
        format!("{}.v1.search", self.prefix)
    }
    pub fn get_message(&self) -> String {
        format!("{}.v1.messages.get", self.prefix)
    }
    /// `mem.v1.embed.query.<space id>`: query vectors in one embedding space, answered by the
    /// embedders of that space. Searchers ask the active space's.
    pub fn embed_query(&self, space_id: i32) -> String {
        format!("{}.v1.embed.query.{space_id}", self.prefix)
    }

    /// `MEMORY_INGEST` for the production prefix `mem`, `<PREFIX>_INGEST` otherwise.
    pub fn stream(&self, kind: StreamKind) -> String {
        let base =
            if self.prefix == "mem" { "MEMORY".to_owned() } else { self.prefix.to_uppercase().replace('-', "_") };
        let suffix = match kind {
            StreamKind::Ingest => "INGEST",
            StreamKind::Events => "EVENTS",
            StreamKind::Dead => "DEAD",
        };
        format!("{base}_{suffix}")
    }
    /// Durable consumer name of the embedder on the ingest stream.
    pub fn embedder_consumer(&self) -> &'static str {
        "embedder"
    }
    /// Queue groups: every replica of a service joins the same one.
    /// `mem.v1.retention.run`: a retention run, answered by the retention service.
    pub fn retention_run(&self) -> String {
        format!("{}.v1.retention.run", self.prefix)
    }
    /// `mem.v1.messages.archive` and `mem.v1.messages.restore`: one message, answered by retention.
    pub fn archive_message(&self) -> String {
        format!("{}.v1.messages.archive", self.prefix)
    }
    pub fn restore_message(&self) -> String {
        format!("{}.v1.messages.restore", self.prefix)
    }
    /// `mem.v1.retention.policy`: read or change a tenant's retention policy.
    pub fn retention_policy(&self) -> String {
        format!("{}.v1.retention.policy", self.prefix)
    }
    /// `mem.v1.messages.update` and `mem.v1.messages.delete`: edits and deletes, by id.
    pub fn update_messages(&self) -> String {
        format!("{}.v1.messages.update", self.prefix)
    }
    pub fn delete_messages(&self) -> String {
        format!("{}.v1.messages.delete", self.prefix)
    }
    /// `mem.v1.conversations.delete`: every message of one conversation.
    pub fn delete_conversation(&self) -> String {
        format!("{}.v1.conversations.delete", self.prefix)
    }
    /// `mem.v1.tenants.erase`: every message, vector and cache entry of a tenant.
    pub fn erase_tenant(&self) -> String {
        format!("{}.v1.tenants.erase", self.prefix)
    }
    /// `mem.v1.tenants.export`: one page of a tenant's messages.
    pub fn export_tenant(&self) -> String {
        format!("{}.v1.tenants.export", self.prefix)
    }
    /// `mem.v1.cache.purge`: a broadcast (no queue group) telling every embedder to drop a
    /// tenant's cached query vectors.
    pub fn cache_purge(&self) -> String {
        format!("{}.v1.cache.purge", self.prefix)
    }
    pub fn retention_group(&self) -> &'static str {
        "retention"
    }
    pub fn searcher_group(&self) -> &'static str {
        "searcher"
    }
    pub fn embedder_group(&self) -> &'static str {
        "embedder"
    }
}

/// The past-tense events on `mem.v1.events.<tenant>.<event>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Stored,
    Embedded,
    EmbeddingFailed,
    Archived,
    Restored,
    Deleted,
    Updated,
    Erased,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Embedded => "embedded",
            Self::EmbeddingFailed => "embedding_failed",
            Self::Archived => "archived",
            Self::Restored => "restored",
            Self::Deleted => "deleted",
            Self::Updated => "updated",
            Self::Erased => "erased",
        }
    }
}

/// Published by the gateway (or a direct publisher) on `mem.v1.ingest.<tenant>[.<id>]`: a message
/// that passed validation, not yet stored. The `Nats-Msg-Id` header is the message id.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageReceived {
    /// Payload version: 1.
    pub v: u8,
    /// The message, as a client submits it. Re-validated by the embedder.
    #[serde(flatten)]
    pub message: MessageInput,
    /// 0–1: the importance it had when it was exported, kept by an import. Computed at ingest
    /// when absent (and ignored for pinned messages or with an override).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance: Option<f64>,
}

/// Published by the embedder once a message is committed to the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageStored {
    pub v: u8,
    pub message_id: MessageId,
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub role: Role,
    pub importance: f64,
    pub stored_at: DateTime<Utc>,
}

/// Published by the embedder once a message's vector is committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageEmbedded {
    pub v: u8,
    pub message_id: MessageId,
    pub tenant_id: TenantId,
    pub space: SpaceRef,
}

/// Published by the embedder when the provider refused a message: it is stored, `failed`, and
/// found by lexical search only. The sweeper tries it again later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageEmbeddingFailed {
    pub v: u8,
    pub message_id: MessageId,
    pub tenant_id: TenantId,
    pub space: SpaceRef,
    pub reason: String,
}

/// Published on `mem.v1.events.<tenant>.archived.<batch id>` when retention archived messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesArchived {
    pub v: u8,
    pub tenant_id: TenantId,
    pub message_ids: Vec<MessageId>,
    pub archived_at: DateTime<Utc>,
}

/// Published on `mem.v1.events.<tenant>.restored.<id>` when an archived message was restored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesRestored {
    pub v: u8,
    pub tenant_id: TenantId,
    pub message_ids: Vec<MessageId>,
}

/// Published on `mem.v1.events.<tenant>.deleted.<batch id>` when messages were deleted for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesDeleted {
    pub v: u8,
    pub tenant_id: TenantId,
    pub message_ids: Vec<MessageId>,
}

/// Published on `mem.v1.events.<tenant>.updated.<id>` when a message was edited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageUpdated {
    pub v: u8,
    pub message_id: MessageId,
    pub tenant_id: TenantId,
    /// Content edits so far; a content change means the message is being embedded again.
    pub revision: i32,
    pub content_changed: bool,
}

/// Published on `mem.v1.events.<tenant>.erased.<id>` once every message of a tenant was erased
/// (after the tenant's earlier events were purged from the events stream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantErased {
    pub v: u8,
    pub tenant_id: TenantId,
    pub deleted: u64,
}

/// Broadcast on `mem.v1.cache.purge`: drop the tenant's cached query vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachePurge {
    pub v: u8,
    pub tenant_id: TenantId,
}

/// An embedding space: vectors are only ever compared within one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SpaceRef {
    pub provider: String,
    pub model: String,
    pub dimensions: u32,
}

/// `mem.v1.search`: rank a tenant's messages against a query.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchRequest {
    pub v: u8,
    pub tenant_id: TenantId,
    pub query: String,
    pub top_k: u32,
    /// Default `hybrid`.
    #[serde(default)]
    pub mode: SearchMode,
    #[serde(default)]
    pub filters: SearchFilters,
    /// Each hit explains its score.
    #[serde(default)]
    pub explain: bool,
}

/// The reply to a search: the seed's `{total, items}` shape.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchResponse {
    /// Number of items returned.
    pub total: usize,
    pub items: Vec<SearchHit>,
    /// Set when part of the retrieval failed and the items come from the rest (full-text search
    /// while query embeddings are unavailable, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<String>,
}

/// One ranked message. `score = w_rel·relevance + w_imp·importance + w_rec·decay` (by default
/// 0.6 / 0.3 / 0.1).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchHit {
    pub message_id: MessageId,
    pub score: f64,
    /// Cosine similarity of the query and the message, −1 to 1; null when it has no vector (a
    /// `failed` message found by its words) or in lexical mode.
    pub similarity: Option<f64>,
    /// `exp(−age / τ)`, τ = 7 days by default.
    pub decay: f64,
    pub importance: f64,
    pub content: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    pub conversation_id: ConversationId,
    /// With `explain=true`: how the score was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explain: Option<Explain>,
}

/// The parts of a hit's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Explain {
    pub mode: SearchMode,
    /// Cosine similarity, when the message has a vector and the query was embedded.
    pub similarity: Option<f64>,
    /// 1-based rank among the vector candidates, if it was one.
    pub vector_rank: Option<u32>,
    /// 1-based rank among the full-text candidates, if it was one.
    pub lexical_rank: Option<u32>,
    /// Its full-text score: the summed rarity (BM25 inverse document frequency) of the query
    /// words it contains, or `ts_rank_cd` for a query with operators.
    pub lexical_score: Option<f64>,
    /// The reciprocal-rank-fusion score, `Σ 1/(k + rank)`.
    pub fused: f64,
    /// What entered the score as relevance: the similarity in vector mode; otherwise the fused
    /// position spread over 0–1 (the first of n candidates 1, the last 1/n).
    pub relevance: f64,
    pub importance: f64,
    pub decay: f64,
    pub score: f64,
    /// The normalised weights and parameters used.
    pub ranking: Ranking,
}

/// `mem.v1.retention.run`: apply the retention policy to one tenant, or to every tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetentionRunRequest {
    pub v: u8,
    #[serde(default)]
    pub tenant_id: Option<TenantId>,
    pub actions: Vec<RetentionAction>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RetentionRunResponse {
    pub dry_run: bool,
    pub archived: u64,
    pub deleted: u64,
    pub tenants: Vec<TenantRetention>,
}

/// `mem.v1.messages.get`: one message by id, with its pipeline status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetMessageRequest {
    pub v: u8,
    pub message_id: MessageId,
    /// When given, a message of another tenant is reported as not found.
    #[serde(default)]
    pub tenant_id: Option<TenantId>,
}

/// `None` when no such message is stored or queued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetMessageResponse {
    pub message: Option<MessageView>,
}

/// `mem.v1.embed.query`: embed search queries in the active space.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbedQueryRequest {
    pub v: u8,
    pub texts: Vec<String>,
    /// Whose queries these are: cached vectors are kept per tenant, so erasing a tenant erases
    /// its cached queries too, and no tenant can time another's cache.
    #[serde(default)]
    pub tenant_id: Option<TenantId>,
}

/// `mem.v1.messages.update`: edit messages (of `tenant_id` only, when given).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UpdateMessagesRequest {
    pub v: u8,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub tenant_id: Option<TenantId>,
    pub updates: Vec<MessageEdit>,
}

/// One message's edit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageEdit {
    #[schema(value_type = String, format = Uuid)]
    pub message_id: MessageId,
    pub update: MessageUpdate,
}

/// One result per edit, in order: the message as it is now, or why it was not edited.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateMessagesResponse {
    pub results: Vec<Reply<MessageView>>,
}

/// `mem.v1.messages.delete`: delete messages by id (of `tenant_id` only, when given), stored or
/// still queued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteMessagesRequest {
    pub v: u8,
    #[serde(default)]
    pub tenant_id: Option<TenantId>,
    pub message_ids: Vec<MessageId>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DeleteMessagesResponse {
    /// Deleted (stored or still queued), in request order.
    #[schema(value_type = Vec<String>)]
    pub deleted: Vec<MessageId>,
    /// No such message (of this tenant).
    #[schema(value_type = Vec<String>)]
    pub not_found: Vec<MessageId>,
}

/// `mem.v1.conversations.delete`: every message of one conversation, stored or queued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteConversationRequest {
    pub v: u8,
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
}

/// `mem.v1.tenants.erase`: every message, vector, queued event and cached query of a tenant;
/// with `settings`, its ranking, rate limit and retention policy too.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EraseTenantRequest {
    pub v: u8,
    pub tenant_id: TenantId,
    #[serde(default)]
    pub settings: bool,
}

/// How many stored messages a delete removed, and how many queued events it dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    pub deleted: u64,
    pub dropped_queued: u64,
}

/// `mem.v1.retention.policy`: a tenant's retention policy; with `policy`, set it first; with
/// `reset`, return it to the deployment's first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetentionPolicyRequest {
    pub v: u8,
    pub tenant_id: TenantId,
    #[serde(default)]
    pub policy: Option<RetentionPolicy>,
    #[serde(default)]
    pub reset: bool,
}

/// The policy a tenant's runs apply, and whose it is: the reply on NATS and the REST body alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RetentionPolicyReply {
    pub tenant_id: TenantId,
    pub policy: RetentionPolicy,
    pub source: SettingSource,
}

/// Whose a setting in effect is: the tenant's own, or the deployment's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SettingSource {
    Tenant,
    Deployment,
}

/// Most messages in one export page.
pub const EXPORT_PAGE_MAX: u32 = 1_000;

/// `mem.v1.tenants.export`: a page of a tenant's messages in id order, after `after`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportRequest {
    pub v: u8,
    pub tenant_id: TenantId,
    #[serde(default)]
    pub after: Option<MessageId>,
    pub limit: u32,
    #[serde(default)]
    pub include_vectors: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportPage {
    pub records: Vec<ExportRecord>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<MessageId>,
}

/// One exported message: one line of `GET /v1/tenants/{id}/export`, and what
/// `POST /v1/tenants/{id}/import` reads back (the message fields, archive state included; the
/// computed ones are informative and ignored on import).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExportRecord {
    #[serde(flatten)]
    pub message: MessageView,
    /// Content edits so far.
    #[serde(default)]
    pub revision: i32,
    /// With `include_vectors=true`: the vector in the active space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<ExportVector>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExportVector {
    #[schema(value_type = Object)]
    pub space: SpaceRef,
    pub values: Vec<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbedQueryResponse {
    pub space: SpaceRef,
    pub vectors: Vec<Vec<f32>>,
}

/// Every request/reply answer: the result, or a typed error the caller maps instead of timing out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply<T> {
    Ok(T),
    Error(RemoteError),
}

/// A failure reported by a service over request/reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RemoteError {
    pub code: RemoteErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteErrorCode {
    /// The request itself is wrong (bad JSON, failed validation).
    BadRequest,
    /// The service cannot answer now (store or dependency down); retry later.
    Unavailable,
    /// No embedding space is active yet: nothing has been embedded.
    NoActiveSpace,
    /// No such message (of this tenant).
    NotFound,
    /// The message is accepted but not stored yet.
    Queued,
}

impl std::fmt::Display for RemoteErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::BadRequest => "bad_request",
            Self::Unavailable => "unavailable",
            Self::NoActiveSpace => "no_active_space",
            Self::NotFound => "not_found",
            Self::Queued => "queued",
        })
    }
}

impl RemoteError {
    pub fn new(code: RemoteErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_prefix() {
        let s = Subjects::new("mem");
        let tenant = TenantId::parse("acme").unwrap();
        let id = MessageId::new();
        assert_eq!(s.event(&tenant, EventKind::Stored, id), format!("mem.v1.events.acme.stored.{id}"));
        assert_eq!(s.stream(StreamKind::Ingest), "MEMORY_INGEST");
        assert_eq!(Subjects::new("t-1a").stream(StreamKind::Dead), "T_1A_DEAD");
    }

    #[test]
    fn ingest_subjects_parse_back() {
        let s = Subjects::new("mem");
        let tenant = TenantId::parse("acme.eu").unwrap();
        let id = MessageId::new();
        let subject = s.ingest(&tenant, id);
        assert_eq!(subject, format!("mem.v1.ingest.acme~eu.{id}"));
        assert_eq!(s.parse_ingest(&subject), Some(("acme~eu", Some(id.to_string().as_str()))));
        assert_eq!(Subjects::tenant_of("acme~eu"), "acme.eu");
        assert_eq!(s.ingest_lookup(None, id), format!("mem.v1.ingest.*.{id}"));
        assert_eq!(s.parse_ingest("mem.v1.ingest.acme"), Some(("acme", None)));
        assert_eq!(s.parse_ingest(&format!("mem.v1.ingest.acme.{id}")), Some(("acme", Some(id.to_string().as_str()))));
        assert_eq!(s.parse_ingest("mem.v1.ingest.a.b.c"), None);
        assert_eq!(s.parse_ingest("other.v1.ingest.acme"), None);
        assert_eq!(s.dead_for("mem.v1.ingest.acme"), "mem.v1.dead.acme");
    }

    #[test]
    fn message_received_rejects_unknown_fields_and_keeps_known_ones() {
        let ok: MessageReceived = serde_json::from_str(
            r#"{"v":1,"tenant_id":"t","conversation_id":"c","role":"user","content":"hi","pinned":true}"#,
        )
        .unwrap();
        assert_eq!((ok.v, ok.message.content.as_str(), ok.message.pinned), (1, "hi", Some(true)));
        let unknown = serde_json::from_str::<MessageReceived>(
            r#"{"v":1,"tenant_id":"t","conversation_id":"c","role":"user","content":"hi","colour":"red"}"#,
        );
        assert!(unknown.unwrap_err().to_string().contains("colour"));
    }

    #[test]
    fn replies_are_tagged() {
        let ok: Reply<u8> = Reply::Ok(1);
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"ok":1}"#);
        let err: Reply<u8> = Reply::Error(RemoteError::new(RemoteErrorCode::Unavailable, "db down"));
        assert_eq!(serde_json::to_string(&err).unwrap(), r#"{"error":{"code":"unavailable","message":"db down"}}"#);
    }
}
