//! A tenant's own settings: `GET`, `PUT` and `DELETE /v1/tenants/{tenant_id}/ranking`,
//! `…/rate-limit` and `…/retention-policy`. Searchers pick a ranking up within 5 seconds. The
//! retention policy is the retention service's: these routes ask it over NATS.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Extension, Router};
use common::config::RateLimit;
use common::contract::{RetentionPolicyReply, RetentionPolicyRequest, SettingSource, VERSION};
use common::domain::{Ranking, RetentionPolicy, Scope, TenantId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{call, request_id, store_unavailable as unavailable};
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::extract::AppJson;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tenants/{tenant_id}/ranking", get(get_ranking).put(put_ranking).delete(delete_ranking))
        .route("/v1/tenants/{tenant_id}/rate-limit", get(get_rate_limit).put(put_rate_limit).delete(delete_rate_limit))
        .route(
            "/v1/tenants/{tenant_id}/retention-policy",
            get(get_retention).put(put_retention).delete(delete_retention),
        )
}

/// The retention policy a tenant's runs apply.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/retention-policy", tag = "tenants",
    params(("tenant_id" = String, Path)),
    responses(
        (status = 200, body = RetentionPolicyReply), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 503, body = Problem), (status = 504, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get_retention(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path(tenant_id): Path<String>,
) -> Result<axum::Json<RetentionPolicyReply>, ApiError> {
    let tenant_id = tenant(&principal, &tenant_id, Scope::Read)?;
    Ok(axum::Json(retention_policy(&state, tenant_id, None, false, &headers).await?))
}

/// Sets the tenant's own retention policy (the whole policy; `null` turns a rule off).
#[utoipa::path(
    put, path = "/v1/tenants/{tenant_id}/retention-policy", tag = "tenants",
    params(("tenant_id" = String, Path)), request_body = RetentionPolicy,
    responses(
        (status = 200, body = RetentionPolicyReply), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem),
        (status = 504, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn put_retention(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path(tenant_id): Path<String>,
    AppJson(policy): AppJson<RetentionPolicy>,
) -> Result<axum::Json<RetentionPolicyReply>, ApiError> {
    let tenant_id = tenant(&principal, &tenant_id, Scope::Admin)?;
    policy.check().map_err(|e| ApiError::Invalid(e.0))?;
    Ok(axum::Json(retention_policy(&state, tenant_id, Some(policy), false, &headers).await?))
}

/// Back to the deployment's retention policy.
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant_id}/retention-policy", tag = "tenants",
    params(("tenant_id" = String, Path)),
    responses(
        (status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 503, body = Problem),
        (status = 504, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn delete_retention(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path(tenant_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant_id = tenant(&principal, &tenant_id, Scope::Admin)?;
    retention_policy(&state, tenant_id, None, true, &headers).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Asks the retention service for a tenant's policy, setting (`policy`) or resetting it first.
async fn retention_policy(
    state: &AppState,
    tenant_id: TenantId,
    policy: Option<RetentionPolicy>,
    reset: bool,
    headers: &HeaderMap,
) -> Result<RetentionPolicyReply, ApiError> {
    let request = RetentionPolicyRequest { v: VERSION, tenant_id, policy, reset };
    call(state, state.deps.subjects.retention_policy(), &request, &request_id(headers)).await
}

/// A tenant's rate limit over all its keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantRateLimit {
    pub tenant_id: TenantId,
    /// E.g. `120/minute`.
    pub limit: String,
    pub source: SettingSource,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitChange {
    /// E.g. `1000/minute`, `10 per second`.
    pub limit: String,
}

/// The rate limit over all of a tenant's keys.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/rate-limit", tag = "tenants",
    params(("tenant_id" = String, Path)),
    responses((status = 200, body = TenantRateLimit), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get_rate_limit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(tenant_id): Path<String>,
) -> Result<axum::Json<TenantRateLimit>, ApiError> {
    let tenant_id = tenant(&principal, &tenant_id, Scope::Read)?;
    let own = state.deps.store.tenant_rate_limit(&tenant_id).await.map_err(unavailable)?;
    Ok(axum::Json(match own {
        Some(limit) => TenantRateLimit { tenant_id, limit: limit.to_string(), source: SettingSource::Tenant },
        None => {
            TenantRateLimit { tenant_id, limit: state.rate_limit.tenant.to_string(), source: SettingSource::Deployment }
        }
    }))
}

/// Give a tenant its own rate limit (operator key).
#[utoipa::path(
    put, path = "/v1/tenants/{tenant_id}/rate-limit", tag = "tenants",
    params(("tenant_id" = String, Path)), request_body = RateLimitChange,
    responses(
        (status = 200, body = TenantRateLimit), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn put_rate_limit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(tenant_id): Path<String>,
    AppJson(change): AppJson<RateLimitChange>,
) -> Result<axum::Json<TenantRateLimit>, ApiError> {
    principal.require_operator()?;
    let tenant_id = TenantId::parse(tenant_id).map_err(|e| ApiError::Invalid(e.0))?;
    let limit: RateLimit = change
        .limit
        .parse()
        .map_err(|e: String| ApiError::Invalid(vec![common::domain::FieldError::new("limit", "invalid", e)]))?;
    state.deps.store.set_tenant_rate_limit(&tenant_id, Some(limit)).await.map_err(unavailable)?;
    state.limiter.forget(&tenant_id);
    Ok(axum::Json(TenantRateLimit { tenant_id, limit: limit.to_string(), source: SettingSource::Tenant }))
}

/// Back to the deployment's rate limit (operator key).
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant_id}/rate-limit", tag = "tenants",
    params(("tenant_id" = String, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn delete_rate_limit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(tenant_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require_operator()?;
    let tenant_id = TenantId::parse(tenant_id).map_err(|e| ApiError::Invalid(e.0))?;
    state.deps.store.set_tenant_rate_limit(&tenant_id, None).await.map_err(unavailable)?;
    state.limiter.forget(&tenant_id);
    Ok(StatusCode::NO_CONTENT)
}

/// The ranking a tenant's searches use.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantRanking {
    pub tenant_id: TenantId,
    pub ranking: Ranking,
    /// `tenant`: set for this tenant; `deployment`: the deployment's default.
    pub source: SettingSource,
}

/// A change of ranking; fields left out keep the deployment's value.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RankingPatch {
    relevance_weight: Option<f64>,
    importance_weight: Option<f64>,
    recency_weight: Option<f64>,
    decay_days: Option<f64>,
    rrf_k: Option<f64>,
}

/// The path's tenant, if the principal may act for it with `scope`.
fn tenant(principal: &Principal, id: &str, scope: Scope) -> Result<TenantId, ApiError> {
    principal.require(scope)?;
    principal.tenant(Some(id))
}

/// The ranking a tenant's searches use.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/ranking", tag = "tenants",
    params(("tenant_id" = String, Path)),
    responses((status = 200, body = TenantRanking), (status = 401, body = Problem), (status = 422, body = Problem)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get_ranking(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(tenant_id): Path<String>,
) -> Result<axum::Json<TenantRanking>, ApiError> {
    let tenant_id = tenant(&principal, &tenant_id, Scope::Read)?;
    let own = state.deps.store.tenant_ranking(&tenant_id).await.map_err(unavailable)?;
    Ok(axum::Json(match own {
        Some(ranking) => TenantRanking { tenant_id, ranking, source: SettingSource::Tenant },
        None => TenantRanking { tenant_id, ranking: state.ranking, source: SettingSource::Deployment },
    }))
}

/// Sets the tenant's own ranking (weights need not sum to 1: they are normalised).
#[utoipa::path(
    put, path = "/v1/tenants/{tenant_id}/ranking", tag = "tenants",
    params(("tenant_id" = String, Path)),
    request_body = RankingPatch,
    responses(
        (status = 200, body = TenantRanking), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn put_ranking(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(tenant_id): Path<String>,
    AppJson(patch): AppJson<RankingPatch>,
) -> Result<axum::Json<TenantRanking>, ApiError> {
    let tenant_id = tenant(&principal, &tenant_id, Scope::Admin)?;
    let base = state.ranking;
    let ranking = Ranking {
        relevance_weight: patch.relevance_weight.unwrap_or(base.relevance_weight),
        importance_weight: patch.importance_weight.unwrap_or(base.importance_weight),
        recency_weight: patch.recency_weight.unwrap_or(base.recency_weight),
        decay_days: patch.decay_days.unwrap_or(base.decay_days),
        rrf_k: patch.rrf_k.unwrap_or(base.rrf_k),
    };
    ranking.check().map_err(|e| ApiError::Invalid(e.0))?;
    state.deps.store.set_tenant_ranking(&tenant_id, Some(&ranking)).await.map_err(unavailable)?;
    Ok(axum::Json(TenantRanking { tenant_id, ranking, source: SettingSource::Tenant }))
}

/// Back to the deployment's ranking.
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant_id}/ranking", tag = "tenants",
    params(("tenant_id" = String, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn delete_ranking(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(tenant_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant_id = tenant(&principal, &tenant_id, Scope::Admin)?;
    state.deps.store.set_tenant_ranking(&tenant_id, None).await.map_err(unavailable)?;
    Ok(StatusCode::NO_CONTENT)
}
