//! Edits and real deletes, through the retention service: `PUT` and `DELETE /v1/messages/{id}`,
//! `POST /v1/messages/batch/update|delete`, `DELETE /v1/conversations/{id}` and
//! `DELETE /v1/tenants/{tenant_id}/data`. A delete leaves a tombstone, so a message still queued
//! when it was deleted is never stored afterwards.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post, put};
use axum::{Extension, Router};
use common::contract::{
    DeleteConversationRequest, DeleteMessagesRequest, DeleteMessagesResponse, Deleted, EraseTenantRequest, MessageEdit,
    RemoteErrorCode, Reply, StreamKind, UpdateMessagesRequest, UpdateMessagesResponse, VERSION,
};
use common::domain::{BATCH_MAX, ConversationId, FieldError, MessageId, MessageUpdate, MessageView, Scope, TenantId};

use super::messages::MessageBody;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::operations::{Tracked, tracked};
use super::{call, call_long, request_id, store_unavailable};
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::extract::{AppJson, AppQuery};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/messages/{id}", put(update_message).delete(delete_message))
        .route("/v1/messages/batch/update", post(update_messages))
        .route("/v1/messages/batch/delete", post(delete_messages))
        .route("/v1/tenants/{tenant_id}/data", delete(erase_tenant))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TenantParam {
    /// The tenant; a tenant key implies its own. When the operator gives none, any tenant's.
    pub(crate) tenant_id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchUpdate {
    /// 1–100 edits.
    updates: Vec<MessageEdit>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchUpdateResponse {
    /// The edited messages, as they are now.
    updated: Vec<MessageBody>,
    /// The edits that were not made, and why.
    errors: Vec<ItemError>,
    /// Always empty: the original service's shape.
    created: Vec<MessageBody>,
    /// Always empty: the original service's shape.
    #[schema(value_type = Vec<String>)]
    deleted: Vec<MessageId>,
}

/// An edit or delete not made, as the original service listed it (`message_id`, `error` the
/// problem's `detail`), with the problem itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemError {
    #[schema(value_type = String)]
    message_id: MessageId,
    error: String,
    code: &'static str,
    problem: Problem,
}

impl ItemError {
    fn new(message_id: MessageId, e: &ApiError) -> Self {
        let problem = e.problem();
        Self { message_id, error: problem.detail.clone(), code: problem.code, problem }
    }
}

/// The answer to a batch delete: ours (`deleted`, `not_found`), and the original service's
/// (`created`, `updated`, `errors`).
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchDeleteResponse {
    #[serde(flatten)]
    outcome: DeleteMessagesResponse,
    /// Always empty.
    created: Vec<MessageBody>,
    /// Always empty.
    updated: Vec<MessageBody>,
    /// One per id in `not_found`.
    errors: Vec<ItemError>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchDelete {
    /// 1–100 message ids.
    #[schema(value_type = Vec<String>)]
    message_ids: Vec<MessageId>,
}

fn parse_id(id: String) -> Result<MessageId, ApiError> {
    MessageId::parse(&id).map_err(|_| ApiError::InvalidMessageId(id))
}

fn check_batch(n: usize, field: &str) -> Result<(), ApiError> {
    if (1..=BATCH_MAX).contains(&n) {
        return Ok(());
    }
    Err(ApiError::Invalid(vec![FieldError::new(
        field,
        "batch_size",
        format!("must hold 1 to {BATCH_MAX} items, got {n}"),
    )]))
}

/// The error of one edit the retention service refused.
fn edit_error(id: MessageId, e: common::contract::RemoteError) -> ApiError {
    match e.code {
        RemoteErrorCode::NotFound => ApiError::MessageNotFound(id),
        RemoteErrorCode::Queued => ApiError::MessageQueued(id),
        _ => e.into(),
    }
}

async fn edit(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    tenant_id: Option<String>,
    edits: Vec<MessageEdit>,
) -> Result<Vec<Result<MessageView, ApiError>>, ApiError> {
    principal.require(Scope::Write)?;
    let tenant_id = principal.tenant(tenant_id.as_deref())?;
    check_batch(edits.len(), "updates")?;
    // Validated here for field-level errors; the retention service checks again.
    let mut results: Vec<Option<Result<MessageView, ApiError>>> = Vec::with_capacity(edits.len());
    let mut valid = Vec::with_capacity(edits.len());
    for edit in edits {
        match edit.update.clone().validate() {
            Ok(_) => {
                results.push(None);
                valid.push(edit);
            }
            Err(e) => results.push(Some(Err(ApiError::Invalid(e.0)))),
        }
    }
    if !valid.is_empty() {
        let ids: Vec<MessageId> = valid.iter().map(|e| e.message_id).collect();
        let request = UpdateMessagesRequest { v: VERSION, tenant_id, updates: valid };
        let response: UpdateMessagesResponse =
            call(state, state.deps.subjects.update_messages(), &request, &request_id(headers)).await?;
        let mut answers = ids.into_iter().zip(response.results);
        for slot in results.iter_mut().filter(|r| r.is_none()) {
            let (id, reply) =
                answers.next().ok_or_else(|| ApiError::Unavailable("short reply from retention".into()))?;
            *slot = Some(match reply {
                Reply::Ok(view) => Ok(view),
                Reply::Error(e) => Err(edit_error(id, e)),
            });
        }
    }
    Ok(results.into_iter().map(|r| r.expect("every edit has a result")).collect())
}

/// Edit a message: content (embedded again), metadata (replaced), `importance_override`
/// (`null` clears it), `pinned`, `archived`. Only the fields given change.
#[utoipa::path(
    put, path = "/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "The message id (UUID)"), TenantParam),
    request_body = MessageUpdate,
    responses(
        (status = 200, body = MessageBody), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, description = "`message_queued`: not stored yet", body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn update_message(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path(id): Path<String>,
    AppQuery(params): AppQuery<TenantParam>,
    AppJson(update): AppJson<MessageUpdate>,
) -> Result<axum::Json<MessageBody>, ApiError> {
    let message_id = parse_id(id)?;
    let edits = vec![MessageEdit { message_id, update }];
    let mut results = edit(&state, &principal, &headers, params.tenant_id, edits).await?;
    results.pop().expect("one result").map(|view| axum::Json(MessageBody::from(view)))
}

/// Edit up to 100 messages. 200 when every edit was made, 207 when some were not (see `errors`).
#[utoipa::path(
    post, path = "/v1/messages/batch/update", tag = "messages",
    params(TenantParam), request_body = BatchUpdate,
    responses(
        (status = 200, body = BatchUpdateResponse), (status = 207, body = BatchUpdateResponse),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn update_messages(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    AppQuery(params): AppQuery<TenantParam>,
    AppJson(batch): AppJson<BatchUpdate>,
) -> Result<Response, ApiError> {
    let ids: Vec<MessageId> = batch.updates.iter().map(|e| e.message_id).collect();
    let results = edit(&state, &principal, &headers, params.tenant_id, batch.updates).await?;
    let (mut updated, mut errors) = (Vec::new(), Vec::new());
    for (message_id, result) in ids.into_iter().zip(results) {
        match result {
            Ok(view) => updated.push(MessageBody::from(view)),
            Err(e) => errors.push(ItemError::new(message_id, &e)),
        }
    }
    let status = if errors.is_empty() { StatusCode::OK } else { StatusCode::MULTI_STATUS };
    let body = BatchUpdateResponse { updated, errors, created: Vec::new(), deleted: Vec::new() };
    Ok((status, axum::Json(body)).into_response())
}

async fn remove(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    tenant_id: Option<String>,
    message_ids: Vec<MessageId>,
) -> Result<DeleteMessagesResponse, ApiError> {
    principal.require(Scope::Write)?;
    let tenant_id = principal.tenant(tenant_id.as_deref())?;
    check_batch(message_ids.len(), "message_ids")?;
    let request = DeleteMessagesRequest { v: VERSION, tenant_id, message_ids };
    call(state, state.deps.subjects.delete_messages(), &request, &request_id(headers)).await
}

/// Delete a message for good (stored or still queued), with its vectors.
#[utoipa::path(
    delete, path = "/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "The message id (UUID)"), TenantParam),
    responses(
        (status = 204), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn delete_message(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path(id): Path<String>,
    AppQuery(params): AppQuery<TenantParam>,
) -> Result<StatusCode, ApiError> {
    let message_id = parse_id(id)?;
    let response = remove(&state, &principal, &headers, params.tenant_id, vec![message_id]).await?;
    if response.deleted.contains(&message_id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::MessageNotFound(message_id))
    }
}

/// Delete up to 100 messages for good; ids not found (for this tenant) are listed.
#[utoipa::path(
    post, path = "/v1/messages/batch/delete", tag = "messages",
    params(TenantParam), request_body = BatchDelete,
    responses(
        (status = 200, body = BatchDeleteResponse), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn delete_messages(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    AppQuery(params): AppQuery<TenantParam>,
    AppJson(batch): AppJson<BatchDelete>,
) -> Result<axum::Json<BatchDeleteResponse>, ApiError> {
    let outcome = remove(&state, &principal, &headers, params.tenant_id, batch.message_ids).await?;
    let errors = outcome.not_found.iter().map(|&id| ItemError::new(id, &ApiError::MessageNotFound(id))).collect();
    Ok(axum::Json(BatchDeleteResponse { outcome, created: Vec::new(), updated: Vec::new(), errors }))
}

/// Where a conversation's delete acts, and how.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteConversationParams {
    /// The tenant; a tenant key implies its own.
    tenant_id: Option<String>,
    /// The original service's switch. `false`: only the conversation's title, metadata and
    /// archived flag go, its messages stay (204). `true` or absent: its messages go too (200).
    delete_messages: Option<bool>,
}

/// Delete every message of a conversation for good, including those still queued, and its title
/// and metadata. Idempotent: an unknown conversation deletes nothing. With
/// `delete_messages=false`, only the title, metadata and archived flag go (204; 404 for an unknown
/// conversation).
#[utoipa::path(
    delete, path = "/v1/conversations/{conversation_id}", tag = "messages",
    params(
        ("conversation_id" = String, Path), DeleteConversationParams,
        ("Prefer" = Option<String>, Header, description = "`respond-async`: answer 202 at once and follow the delete"),
    ),
    responses(
        (status = 200, body = Deleted, description = "The messages deleted"),
        (status = 202, body = super::operations::OperationBody, description = "Still running after the request's deadline (or `Prefer: respond-async`): follow the `Location`"),
        (status = 204, description = "`delete_messages=false`: the conversation's record is gone, its messages stay"),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn delete_conversation(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path(conversation_id): Path<String>,
    AppQuery(params): AppQuery<DeleteConversationParams>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Write)?;
    let tenant_id = principal.tenant(params.tenant_id.as_deref())?;
    let conversation_id = ConversationId::parse(conversation_id).map_err(|e| ApiError::Invalid(e.0))?;
    if params.delete_messages == Some(false) {
        let found =
            state.deps.store.forget_conversation(&tenant_id, &conversation_id).await.map_err(store_unavailable)?;
        if !found {
            return Err(ApiError::NotFound(format!("conversation {conversation_id} was not found")));
        }
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let subject = state.deps.subjects.delete_conversation();
    let tenant = tenant_id.clone();
    let deleted: Tracked<Deleted> =
        tracked(&state, &headers, "delete_conversation", Some(&tenant), subject, |operation_id| {
            DeleteConversationRequest { v: VERSION, tenant_id, conversation_id, operation_id: Some(operation_id) }
        })
        .await?;
    Ok(deleted.into_response())
}

/// Erase every message, vector, queued message, event and cached query of the tenant (the
/// right to erasure). The tenant, its keys and settings stay. Idempotent.
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant_id}/data", tag = "tenants",
    params(
        ("tenant_id" = String, Path),
        ("Prefer" = Option<String>, Header, description = "`respond-async`: answer 202 at once and follow the erasure"),
    ),
    responses(
        (status = 200, body = Deleted),
        (status = 202, body = super::operations::OperationBody, description = "Still running after the request's deadline (or `Prefer: respond-async`): follow the `Location`"),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn erase_tenant(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path(tenant_id): Path<String>,
) -> Result<Tracked<Deleted>, ApiError> {
    principal.require(Scope::Admin)?;
    let tenant_id = principal.tenant(Some(&tenant_id))?;
    known(&state, &tenant_id).await?;
    let (subject, tenant) = (state.deps.subjects.erase_tenant(), tenant_id.clone());
    tracked(&state, &headers, "erase_tenant", Some(&tenant), subject, |operation_id| EraseTenantRequest {
        v: VERSION,
        tenant_id,
        settings: false,
        operation_id: Some(operation_id),
    })
    .await
}

/// 404 `tenant_not_found` unless the tenant exists or has messages, stored or still queued.
pub(crate) async fn known(state: &AppState, tenant: &TenantId) -> Result<(), ApiError> {
    if state.deps.store.tenant_known(tenant).await.map_err(store_unavailable)? {
        return Ok(());
    }
    for (stream, subject) in state.deps.subjects.tenant_subjects(tenant) {
        if stream == StreamKind::Ingest && state.deps.bus.last_on_subject(stream, &subject).await?.is_some() {
            return Ok(());
        }
    }
    Err(ApiError::TenantNotFound(tenant.to_string()))
}

/// Erases a tenant's data (and its settings, with `settings`) through the retention service.
pub(crate) async fn erase(
    state: &AppState,
    tenant_id: TenantId,
    settings: bool,
    request_id: &str,
) -> Result<Deleted, ApiError> {
    let request = EraseTenantRequest { v: VERSION, tenant_id, settings, operation_id: None };
    call_long(state, state.deps.subjects.erase_tenant(), &request, request_id).await
}
