//! Tenants and their keys: `/v1/admin/tenants…`. Creating, listing and deleting tenants takes the
//! operator key; a tenant's own `admin` key may read its tenant and manage its keys.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use chrono::{DateTime, Utc};
use common::contract::{RetentionRunRequest, RetentionRunResponse, VERSION};
use common::domain::{ApiKey, FieldError, NewApiKey, RetentionAction, Scope, Tenant, TenantId};
use common::store::{ApiKeys, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::operations::{Tracked, tracked};
use super::{request_id, store_unavailable as unavailable};
use crate::auth::{self, Principal};
use crate::error::{ApiError, Problem};
use crate::extract::{AppJson, AppQuery};
use crate::state::AppState;

const LIST_MAX: u32 = 1_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/tenants", get(list_tenants).post(create_tenant))
        .route("/v1/admin/tenants/{tenant_id}", get(get_tenant).delete(delete_tenant))
        .route("/v1/admin/tenants/{tenant_id}/keys", get(list_keys).post(create_key))
        .route("/v1/admin/tenants/{tenant_id}/keys/{key_id}", delete(revoke_key))
        .route("/v1/admin/retention/run", post(run_retention))
}

/// A retention run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionRun {
    /// One tenant; every tenant when absent (operator key). A tenant's admin key implies its own.
    pub tenant_id: Option<String>,
    /// `archive`, `delete`; both when absent.
    pub actions: Option<Vec<RetentionAction>>,
    /// Report what would change, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Apply the retention policy now: archive old, unimportant messages and delete long-archived
/// ones (pinned messages exempt). A dry run reports counts and a sample of ids and changes nothing.
#[utoipa::path(
    post, path = "/v1/admin/retention/run", tag = "admin", request_body = RetentionRun,
    params(("Prefer" = Option<String>, Header, description = "`respond-async`: answer 202 at once and follow the run")),
    responses(
        (status = 200, body = RetentionRunResponse),
        (status = 202, body = super::operations::OperationBody, description = "Still running after the request's deadline (or `Prefer: respond-async`): follow the `Location`"),
        (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem),
        (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn run_retention(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    AppJson(body): AppJson<RetentionRun>,
) -> Result<Tracked<RetentionRunResponse>, ApiError> {
    principal.require(Scope::Admin)?;
    // A tenant with nothing stored yet (or none at all) has nothing to archive or delete: zeros,
    // as the original service answered, rather than 404.
    let tenant_id = principal.tenant_filter(body.tenant_id)?;
    let actions = body.actions.unwrap_or_else(|| vec![RetentionAction::Archive, RetentionAction::Delete]);
    if actions.is_empty() {
        return Err(ApiError::Invalid(vec![FieldError::new(
            "actions",
            "empty",
            "give at least one action: archive, delete",
        )]));
    }
    // Only the operator names no tenant, and means every tenant.
    let all_tenants = tenant_id.is_none();
    let subject = state.deps.subjects.retention_run();
    let tenant = tenant_id.clone();
    tracked(&state, &headers, "retention_run", tenant.as_ref(), subject, |operation_id| RetentionRunRequest {
        v: VERSION,
        tenant_id,
        all_tenants,
        actions,
        dry_run: body.dry_run,
        operation_id: Some(operation_id),
    })
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1–64 characters of `[A-Za-z0-9_.-]`.
    pub id: String,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Tenants after this id (the last of the previous page).
    after: Option<String>,
    /// 1–1000, default 100.
    limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    pub items: Vec<Tenant>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<TenantId>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// What the key is for.
    pub name: Option<String>,
    /// `read`, `write`, `admin`: at least one.
    pub scopes: Vec<Scope>,
    /// When it stops working (RFC 3339); never, if absent.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A new key. `key` is shown this once: only its hash is kept.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    pub key: String,
    #[serde(flatten)]
    pub api_key: ApiKey,
}

fn tenant_id(id: String) -> Result<TenantId, ApiError> {
    TenantId::parse(id).map_err(|e| ApiError::Invalid(e.0))
}

/// The tenant of the path, if the principal may manage it: the operator, or its own admin key.
fn managed(principal: &Principal, id: &str) -> Result<TenantId, ApiError> {
    principal.require(Scope::Admin)?;
    principal.tenant(Some(id))
}

async fn existing(state: &AppState, id: &TenantId) -> Result<Tenant, ApiError> {
    state.deps.store.tenant(id).await.map_err(unavailable)?.ok_or_else(|| ApiError::TenantNotFound(id.to_string()))
}

/// Create a tenant (operator key).
#[utoipa::path(
    post, path = "/v1/admin/tenants", tag = "admin", request_body = CreateTenant,
    responses(
        (status = 201, body = Tenant), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn create_tenant(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    AppJson(body): AppJson<CreateTenant>,
) -> Result<Response, ApiError> {
    principal.require_operator()?;
    let id = tenant_id(body.id)?;
    if let Some(name) = &body.name {
        let mut errors = Vec::new();
        common::domain::check_name("name", name, &mut errors);
        if !errors.is_empty() {
            return Err(ApiError::Invalid(errors));
        }
    }
    let tenant = state.deps.store.create_tenant(&id, body.name.as_deref()).await.map_err(|e| match e {
        StoreError::Exists(_) => ApiError::TenantExists(id.to_string()),
        e => unavailable(e),
    })?;
    Ok((StatusCode::CREATED, axum::Json(tenant)).into_response())
}

/// List tenants in id order (operator key).
#[utoipa::path(
    get, path = "/v1/admin/tenants", tag = "admin", params(ListParams),
    responses((status = 200, body = TenantList), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list_tenants(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    AppQuery(params): AppQuery<ListParams>,
) -> Result<axum::Json<TenantList>, ApiError> {
    principal.require_operator()?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=LIST_MAX).contains(&limit) {
        return Err(ApiError::Invalid(vec![FieldError::new(
            "limit",
            "out_of_range",
            format!("must be between 1 and {LIST_MAX}"),
        )]));
    }
    let after = params.after.map(tenant_id).transpose()?;
    let items = state.deps.store.tenants(after.as_ref(), limit).await.map_err(unavailable)?;
    let next = (items.len() == limit as usize).then(|| items.last().map(|t| t.id.clone())).flatten();
    Ok(axum::Json(TenantList { items, next }))
}

/// One tenant (operator key, or the tenant's admin key).
#[utoipa::path(
    get, path = "/v1/admin/tenants/{tenant_id}", tag = "admin", params(("tenant_id" = String, Path)),
    responses(
        (status = 200, body = Tenant), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get_tenant(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<axum::Json<Tenant>, ApiError> {
    let id = managed(&principal, &id)?;
    Ok(axum::Json(existing(&state, &id).await?))
}

/// Delete a tenant (operator key): its keys and settings, and every message, vector, queued
/// message, event and cached query of it, as `DELETE /v1/tenants/{tenant_id}/data` erases them.
#[utoipa::path(
    delete, path = "/v1/admin/tenants/{tenant_id}", tag = "admin", params(("tenant_id" = String, Path)),
    responses(
        (status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn delete_tenant(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require_operator()?;
    let id = tenant_id(id)?;
    existing(&state, &id).await?;
    // Its keys stop first, so nothing is written between the erase and the tenant's end. The
    // data goes next: if erasing fails, the tenant is still there to retry with.
    let keys = state.deps.store.keys(&id).await.map_err(unavailable)?;
    for key in &keys {
        state.deps.store.revoke_key(&id, key.id).await.map_err(unavailable)?;
        revoked(&state, key.id).await;
    }
    super::lifecycle::erase(&state, id.clone(), true, &request_id(&headers)).await?;
    if !state.deps.store.delete_tenant(&id).await.map_err(unavailable)? {
        return Err(ApiError::TenantNotFound(id.to_string()));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Create a key for the tenant; the response holds the key, shown this once.
#[utoipa::path(
    post, path = "/v1/admin/tenants/{tenant_id}/keys", tag = "admin", params(("tenant_id" = String, Path)),
    request_body = CreateKey,
    responses(
        (status = 201, body = CreatedKey), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn create_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    AppJson(body): AppJson<CreateKey>,
) -> Result<Response, ApiError> {
    let id = managed(&principal, &id)?;
    let mut errors = Vec::new();
    if body.scopes.is_empty() {
        errors.push(FieldError::new("scopes", "empty", "give at least one of read, write, admin"));
    }
    if body.expires_at.is_some_and(|at| at <= Utc::now()) {
        errors.push(FieldError::new("expires_at", "out_of_range", "must be in the future"));
    }
    if let Some(name) = &body.name {
        common::domain::check_name("name", name, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    existing(&state, &id).await?;
    let created =
        issue(state.deps.store.as_ref(), id, body.name, body.scopes, body.expires_at).await.map_err(unavailable)?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// Mints and stores a key for an existing tenant.
pub async fn issue(
    store: &dyn ApiKeys,
    tenant_id: TenantId,
    name: Option<String>,
    mut scopes: Vec<Scope>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<CreatedKey, StoreError> {
    scopes.sort();
    scopes.dedup();
    let minted = auth::mint();
    let new =
        NewApiKey { id: Uuid::now_v7(), tenant_id, name, prefix: minted.prefix, hash: minted.hash, scopes, expires_at };
    let api_key = store.create_key(&new).await?;
    Ok(CreatedKey { key: minted.key, api_key })
}

/// The tenant's keys (never the keys themselves).
#[utoipa::path(
    get, path = "/v1/admin/tenants/{tenant_id}/keys", tag = "admin", params(("tenant_id" = String, Path)),
    responses(
        (status = 200, body = Vec<ApiKey>), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list_keys(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<axum::Json<Vec<ApiKey>>, ApiError> {
    let id = managed(&principal, &id)?;
    existing(&state, &id).await?;
    Ok(axum::Json(state.deps.store.keys(&id).await.map_err(unavailable)?))
}

/// Revoke a key. It stops working here at once, on other gateways within
/// `MEMORY_AUTH_CACHE_TTL_SECS`.
#[utoipa::path(
    delete, path = "/v1/admin/tenants/{tenant_id}/keys/{key_id}", tag = "admin",
    params(("tenant_id" = String, Path), ("key_id" = String, Path)),
    responses(
        (status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = managed(&principal, &id)?;
    let key = Uuid::parse_str(&key_id).map_err(|_| ApiError::KeyNotFound(key_id.clone()))?;
    if !state.deps.store.revoke_key(&id, key).await.map_err(unavailable)? {
        return Err(ApiError::KeyNotFound(key_id));
    }
    revoked(&state, key).await;
    Ok(StatusCode::NO_CONTENT)
}

/// A key revoked in the store stops here at once, and on every other gateway as soon as the
/// broadcast reaches it (else when its cache entry expires).
async fn revoked(state: &AppState, key: Uuid) {
    state.keys.forget(key);
    let notice = common::bus::Envelope::new(state.deps.subjects.keys_revoked(), key.to_string());
    if let Err(e) = state.deps.bus.broadcast(notice).await {
        tracing::warn!(error = %e, %key, "telling the other gateways of a revoked key failed; they drop it when their cache expires");
    }
}
