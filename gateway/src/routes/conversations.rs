//! Conversations, at the original service's paths: list, read, create, edit and stats. Messages
//! define conversations (no create step is needed); their counts come from the `conversations`
//! table, which triggers keep current, so no request counts messages.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use chrono::{DateTime, Utc};
use common::domain::{ConversationId, FieldError, Scope, TenantId, check_metadata};
use common::store::{Conversation, ConversationPatch};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::lifecycle::{TenantParam, delete_conversation};
use super::store_unavailable;
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::extract::{AppJson, AppQuery};
use crate::state::AppState;

/// Longest title, in characters (as the original's).
const TITLE_MAX: usize = 512;
/// Most conversations on a page.
const PAGE_SIZE_MAX: u32 = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/conversations", post(create_conversation).get(list_conversations))
        .route(
            "/v1/conversations/{conversation_id}",
            get(get_conversation).put(update_conversation).delete(delete_conversation),
        )
        .route("/v1/conversations/{conversation_id}/stats", get(conversation_stats))
}

/// A conversation, in the original service's shape (`id` is the conversation id; `user_id` is
/// always null: keys, not users, act here) and with ours.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationBody {
    id: String,
    conversation_id: String,
    tenant_id: String,
    user_id: Option<String>,
    title: Option<String>,
    #[schema(value_type = Object)]
    metadata: Map<String, Value>,
    archived: bool,
    /// Stored messages (a queued one counts once stored).
    message_count: i64,
    first_message_at: Option<DateTime<Utc>>,
    last_message_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    /// The last change: a message stored or deleted, or an edit.
    updated_at: DateTime<Utc>,
}

impl From<Conversation> for ConversationBody {
    fn from(c: Conversation) -> Self {
        Self {
            id: c.conversation_id.as_str().to_owned(),
            conversation_id: c.conversation_id.as_str().to_owned(),
            tenant_id: c.tenant_id.as_str().to_owned(),
            user_id: None,
            title: c.title,
            metadata: c.metadata,
            archived: c.archived,
            message_count: c.message_count,
            first_message_at: c.first_message_at,
            last_message_at: c.last_message_at,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationList {
    conversations: Vec<ConversationBody>,
    /// Every matching conversation, on all pages.
    total: i64,
    page: u32,
    page_size: u32,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// The tenant; a tenant key implies its own.
    tenant_id: Option<String>,
    /// Only archived (`true`) or only live (`false`) conversations.
    archived: Option<bool>,
    /// From 1 (default 1).
    page: Option<u32>,
    /// 1–100, default 20.
    page_size: Option<u32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    /// 1–128 characters of `[A-Za-z0-9_.-]`.
    conversation_id: String,
    /// Implied by a tenant key.
    #[serde(default)]
    tenant_id: String,
    /// Up to 512 characters.
    title: Option<String>,
    #[schema(value_type = Object)]
    metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateConversation {
    /// Up to 512 characters; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    title: Option<Option<String>>,
    /// Replaces the metadata.
    #[schema(value_type = Object)]
    metadata: Option<Map<String, Value>>,
    archived: Option<bool>,
}

/// `Some(None)` for an explicit `null`, `None` for an absent field.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationStats {
    conversation_id: String,
    tenant_id: String,
    total_messages: i64,
    user_messages: i64,
    assistant_messages: i64,
    system_messages: i64,
    avg_importance: Option<f64>,
    first_message_at: Option<DateTime<Utc>>,
    last_message_at: Option<DateTime<Utc>>,
}

/// A title and metadata Postgres stores: within their limits (a message's, for metadata), and
/// without NUL characters, which it takes in neither text nor JSON.
fn check_fields(title: Option<&str>, metadata: Option<&Map<String, Value>>, errors: &mut Vec<FieldError>) {
    if title.is_some_and(|t| t.chars().count() > TITLE_MAX) {
        errors.push(FieldError::new("title", "too_long", format!("at most {TITLE_MAX} characters")));
    }
    if title.is_some_and(|t| t.contains('\0')) {
        errors.push(FieldError::new("title", "invalid_characters", "must not contain NUL characters"));
    }
    if let Some(metadata) = metadata {
        check_metadata(metadata, errors);
    }
}

fn parse_id(id: String) -> Result<ConversationId, ApiError> {
    ConversationId::parse(id).map_err(|e| ApiError::Invalid(e.0))
}

/// A tenant's conversations, most recently active first.
#[utoipa::path(
    get, path = "/v1/conversations", tag = "conversations", params(ListParams),
    responses(
        (status = 200, body = ConversationList), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list_conversations(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    AppQuery(params): AppQuery<ListParams>,
) -> Result<axum::Json<ConversationList>, ApiError> {
    principal.require(Scope::Read)?;
    let tenant = principal.tenant(params.tenant_id.as_deref())?;
    let (page, page_size) = (params.page.unwrap_or(1), params.page_size.unwrap_or(20));
    let mut errors = Vec::new();
    if page == 0 {
        errors.push(FieldError::new("page", "out_of_range", "pages start at 1"));
    }
    if !(1..=PAGE_SIZE_MAX).contains(&page_size) {
        errors.push(FieldError::new("page_size", "out_of_range", format!("must be 1 to {PAGE_SIZE_MAX}")));
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let offset = u64::from(page - 1) * u64::from(page_size);
    let found =
        state.deps.store.conversations(&tenant, params.archived, offset, page_size).await.map_err(store_unavailable)?;
    Ok(axum::Json(ConversationList {
        conversations: found.items.into_iter().map(ConversationBody::from).collect(),
        total: found.total,
        page,
        page_size,
    }))
}

/// Create a conversation with a title and metadata. Messages create their conversation anyway;
/// an existing one is returned as it is (200).
#[utoipa::path(
    post, path = "/v1/conversations", tag = "conversations", request_body = CreateConversation,
    responses(
        (status = 201, description = "Created", body = ConversationBody),
        (status = 200, description = "It existed: returned unchanged", body = ConversationBody),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem),
        (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn create_conversation(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    AppJson(mut body): AppJson<CreateConversation>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Write)?;
    principal.bind_tenant(&mut body.tenant_id)?;
    let mut errors = Vec::new();
    let tenant = TenantId::parse(body.tenant_id).map_err(|e| errors.extend(e.0)).ok();
    let id = ConversationId::parse(body.conversation_id).map_err(|e| errors.extend(e.0)).ok();
    check_fields(body.title.as_deref(), body.metadata.as_ref(), &mut errors);
    let (Some(tenant), Some(id)) = (tenant, id) else { return Err(ApiError::Invalid(errors)) };
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let metadata = body.metadata.unwrap_or_default();
    let (conversation, created) = state
        .deps
        .store
        .create_conversation(&tenant, &id, body.title.as_deref(), &metadata)
        .await
        .map_err(store_unavailable)?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(ConversationBody::from(conversation))).into_response())
}

/// One conversation.
#[utoipa::path(
    get, path = "/v1/conversations/{conversation_id}", tag = "conversations",
    params(("conversation_id" = String, Path), TenantParam),
    responses(
        (status = 200, body = ConversationBody), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get_conversation(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    AppQuery(params): AppQuery<TenantParam>,
) -> Result<axum::Json<ConversationBody>, ApiError> {
    let (id, found) = read(&state, &principal, id, params).await?;
    found.map(|c| axum::Json(c.into())).ok_or_else(|| ApiError::NotFound(format!("no conversation {id}")))
}

/// The conversation a read asks for, once the key may read the tenant's: its id, and the
/// conversation if there is one.
async fn read(
    state: &AppState,
    principal: &Principal,
    id: String,
    params: TenantParam,
) -> Result<(ConversationId, Option<Conversation>), ApiError> {
    principal.require(Scope::Read)?;
    let tenant = principal.tenant(params.tenant_id.as_deref())?;
    let id = parse_id(id)?;
    let found = state.deps.store.conversation(&tenant, &id).await.map_err(store_unavailable)?;
    Ok((id, found))
}

/// Edit a conversation's title, metadata or archived flag.
#[utoipa::path(
    put, path = "/v1/conversations/{conversation_id}", tag = "conversations",
    params(("conversation_id" = String, Path), TenantParam), request_body = UpdateConversation,
    responses(
        (status = 200, body = ConversationBody), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn update_conversation(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    AppQuery(params): AppQuery<TenantParam>,
    AppJson(body): AppJson<UpdateConversation>,
) -> Result<axum::Json<ConversationBody>, ApiError> {
    principal.require(Scope::Write)?;
    let tenant = principal.tenant(params.tenant_id.as_deref())?;
    let id = parse_id(id)?;
    let mut errors = Vec::new();
    check_fields(body.title.clone().flatten().as_deref(), body.metadata.as_ref(), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let patch = ConversationPatch { title: body.title, metadata: body.metadata, archived: body.archived };
    let updated = state.deps.store.update_conversation(&tenant, &id, &patch).await.map_err(store_unavailable)?;
    updated.map(|c| axum::Json(c.into())).ok_or_else(|| ApiError::NotFound(format!("no conversation {id}")))
}

/// A conversation's messages counted by role, their mean importance, and the first and last.
#[utoipa::path(
    get, path = "/v1/conversations/{conversation_id}/stats", tag = "conversations",
    params(("conversation_id" = String, Path), TenantParam),
    responses(
        (status = 200, body = ConversationStats), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, description = "No messages in this conversation", body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn conversation_stats(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    AppQuery(params): AppQuery<TenantParam>,
) -> Result<axum::Json<ConversationStats>, ApiError> {
    let (_, found) = read(&state, &principal, id, params).await?;
    let Some(c) = found.filter(|c| c.message_count > 0) else {
        return Err(ApiError::NotFound("No messages found for this conversation".into()));
    };
    Ok(axum::Json(ConversationStats {
        conversation_id: c.conversation_id.as_str().to_owned(),
        tenant_id: c.tenant_id.as_str().to_owned(),
        total_messages: c.message_count,
        user_messages: c.user_messages,
        assistant_messages: c.assistant_messages,
        system_messages: c.system_messages,
        avg_importance: c.avg_importance,
        first_message_at: c.first_message_at,
        last_message_at: c.last_message_at,
    }))
}
