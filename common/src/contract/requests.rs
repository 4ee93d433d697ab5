//! Request/reply payloads between the gateway (or a direct NATS client) and the workers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{Reply, SpaceRef};
use crate::domain::{
    ConversationId, MessageId, MessageUpdate, MessageView, Ranking, RetentionAction, RetentionPolicy, Role,
    SearchFilters, SearchMode, TenantId, TenantRetention,
};

/// A request payload, which says which version of the contract it speaks.
pub trait Versioned {
    fn version(&self) -> u8;
}

macro_rules! versioned {
    ($($request:ty),* $(,)?) => {
        $(impl Versioned for $request {
            fn version(&self) -> u8 {
                self.v
            }
        })*
    };
}

versioned!(
    SearchRequest,
    RetentionRunRequest,
    GetMessageRequest,
    EmbedQueryRequest,
    UpdateMessagesRequest,
    DeleteMessagesRequest,
    DeleteConversationRequest,
    EraseTenantRequest,
    RetentionPolicyRequest,
    ExportRequest,
);

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
    /// Vector candidates from an exact scan of the tenant's vectors instead of the index (the
    /// gateway allows it to the operator key only): what the index's recall is measured against.
    #[serde(default)]
    pub exact: bool,
    /// Candidates read from each retriever before ranking (the original service's
    /// `candidate_limit`): from `top_k` up to 1,000. Default: `top_k` times the searcher's
    /// candidate factor (vector mode) or fusion window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_limit: Option<u32>,
}

/// Most candidates a search may ask each retriever for (`candidate_limit`).
pub const CANDIDATES_MAX: u32 = 1_000;

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

/// `mem.v1.retention.run`: apply the retention policy to one tenant, or to every tenant. A
/// request naming no tenant is refused unless it says `all_tenants` (which only the operator
/// may ask for through the gateway): leaving a field out never widens a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetentionRunRequest {
    pub v: u8,
    #[serde(default)]
    pub tenant_id: Option<TenantId>,
    #[serde(default)]
    pub all_tenants: bool,
    pub actions: Vec<RetentionAction>,
    #[serde(default)]
    pub dry_run: bool,
    /// The operation the gateway started for this run: heartbeated, and given the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<uuid::Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RetentionRunResponse {
    pub dry_run: bool,
    pub archived: u64,
    pub deleted: u64,
    pub tenants: Vec<TenantRetention>,
}

/// `mem.v1.messages.get` (and `archive`, `restore`): one of the tenant's messages by id, with
/// its pipeline status. Ids are unique within a tenant only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetMessageRequest {
    pub v: u8,
    pub tenant_id: TenantId,
    pub message_id: MessageId,
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

/// `mem.v1.messages.update`: edit some of the tenant's messages.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UpdateMessagesRequest {
    pub v: u8,
    #[schema(value_type = String)]
    pub tenant_id: TenantId,
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

/// `mem.v1.messages.delete`: delete some of the tenant's messages by id, stored or still queued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteMessagesRequest {
    pub v: u8,
    pub tenant_id: TenantId,
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
    /// The operation the gateway started for this delete: heartbeated, and given the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<uuid::Uuid>,
}

/// `mem.v1.tenants.erase`: every message, vector, queued event and cached query of a tenant;
/// with `settings`, its ranking, rate limit and retention policy too.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EraseTenantRequest {
    pub v: u8,
    pub tenant_id: TenantId,
    #[serde(default)]
    pub settings: bool,
    /// The operation the gateway started for this erasure: heartbeated, and given the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<uuid::Uuid>,
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
