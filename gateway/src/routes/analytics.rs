//! Usage analytics at the original service's paths, tenant-scoped (the operator lists every
//! tenant). Read from counters kept by triggers (`conversations`, `message_days`) and the
//! partial index of messages not embedded: cheap at any tenant size.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Router};
use chrono::{DateTime, Days, NaiveDate, Utc};
use common::domain::{FieldError, Scope};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::lifecycle::TenantParam;
use super::store_unavailable;
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::extract::AppQuery;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/analytics/usage", get(usage))
        .route("/v1/analytics/trends", get(trends))
        .route("/v1/analytics/top-conversations", get(top_conversations))
        .route("/v1/analytics/embeddings", get(embeddings))
        .route("/v1/analytics/tenants", get(tenants))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageBody {
    tenant_id: String,
    total_messages: i64,
    total_conversations: i64,
    /// Not archived.
    active_conversations: i64,
    archived_conversations: i64,
    /// Created today (UTC).
    messages_today: i64,
    /// Created since 00:00 UTC seven days ago.
    messages_this_week: i64,
    /// Created since 00:00 UTC thirty days ago.
    messages_this_month: i64,
    avg_importance_score: Option<f64>,
    /// Stored messages with a vector in the active space.
    total_embeddings: i64,
    pending_embeddings: i64,
    failed_embeddings: i64,
}

/// One day of a trend.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrendDay {
    /// `YYYY-MM-DD` (UTC).
    date: String,
    count: i64,
    /// Messages per role that day.
    role_breakdown: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopConversation {
    conversation_id: String,
    tenant_id: String,
    message_count: i64,
    /// Its last message's time.
    last_activity: Option<DateTime<Utc>>,
    avg_importance: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingStats {
    total_embeddings: i64,
    completed: i64,
    pending: i64,
    failed: i64,
    /// Not measured per message: always null (the embedder's latency histograms are in `/metrics`).
    avg_processing_time_seconds: Option<f64>,
    /// Percent of the decided (completed + failed) that completed; null before any.
    success_rate: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantUsageBody {
    tenant_id: String,
    total_messages: i64,
    total_conversations: i64,
    /// Not measured per tenant: always null.
    storage_size_mb: Option<f64>,
    last_activity: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TrendParams {
    /// The tenant; a tenant key implies its own.
    tenant_id: Option<String>,
    /// 1–365, default 30: today and the days before it.
    days: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TopParams {
    /// The tenant; a tenant key implies its own.
    tenant_id: Option<String>,
    /// 1–100, default 10.
    limit: Option<u32>,
}

fn in_range(field: &str, value: u32, max: u32) -> Result<u32, ApiError> {
    if (1..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::Invalid(vec![FieldError::new(field, "out_of_range", format!("must be 1 to {max}"))]))
    }
}

/// The first day (UTC) of a window of `days` ending today.
fn since(days: u32) -> NaiveDate {
    let today = Utc::now().date_naive();
    today.checked_sub_days(Days::new(u64::from(days.saturating_sub(1)))).unwrap_or(today)
}

/// A tenant's totals: messages and conversations, recent messages, importance, embeddings.
#[utoipa::path(
    get, path = "/v1/analytics/usage", tag = "analytics", params(TenantParam),
    responses(
        (status = 200, body = UsageBody), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn usage(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    AppQuery(params): AppQuery<TenantParam>,
) -> Result<axum::Json<UsageBody>, ApiError> {
    principal.require(Scope::Read)?;
    let tenant = principal.tenant(params.tenant_id.as_deref())?;
    let store = &state.deps.store;
    let (usage, days) = tokio::join!(store.usage(&tenant), store.days(&tenant, since(31)));
    let (usage, days) = (usage.map_err(store_unavailable)?, days.map_err(store_unavailable)?);
    let today = Utc::now().date_naive();
    let from = |n: u64| today.checked_sub_days(Days::new(n)).unwrap_or(today);
    let count = |first: NaiveDate| days.iter().filter(|d| d.day >= first).map(|d| d.messages).sum::<i64>();
    Ok(axum::Json(UsageBody {
        tenant_id: tenant.as_str().to_owned(),
        total_messages: usage.total_messages,
        total_conversations: usage.total_conversations,
        active_conversations: usage.total_conversations - usage.archived_conversations,
        archived_conversations: usage.archived_conversations,
        messages_today: count(today),
        messages_this_week: count(from(7)),
        messages_this_month: count(from(30)),
        avg_importance_score: (usage.total_messages > 0).then(|| usage.importance_sum / usage.total_messages as f64),
        total_embeddings: usage.embedded(),
        pending_embeddings: usage.pending_embeddings,
        failed_embeddings: usage.failed_embeddings,
    }))
}

/// Messages per day (UTC) with each role's share, oldest first; days without messages count 0.
#[utoipa::path(
    get, path = "/v1/analytics/trends", tag = "analytics", params(TrendParams),
    responses(
        (status = 200, body = Vec<TrendDay>), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn trends(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    AppQuery(params): AppQuery<TrendParams>,
) -> Result<axum::Json<Vec<TrendDay>>, ApiError> {
    principal.require(Scope::Read)?;
    let tenant = principal.tenant(params.tenant_id.as_deref())?;
    let days = in_range("days", params.days.unwrap_or(30), 365)?;
    let first = since(days);
    let counted = state.deps.store.days(&tenant, first).await.map_err(store_unavailable)?;
    let mut trend: BTreeMap<NaiveDate, TrendDay> = first
        .iter_days()
        .take(days as usize)
        .map(|day| (day, TrendDay { date: day.to_string(), count: 0, role_breakdown: BTreeMap::new() }))
        .collect();
    for d in counted {
        if let Some(day) = trend.get_mut(&d.day) {
            day.count += d.messages;
            *day.role_breakdown.entry(d.role).or_default() += d.messages;
        }
    }
    Ok(axum::Json(trend.into_values().collect()))
}

/// The tenant's conversations by their last message, newest first.
#[utoipa::path(
    get, path = "/v1/analytics/top-conversations", tag = "analytics", params(TopParams),
    responses(
        (status = 200, body = Vec<TopConversation>), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn top_conversations(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    AppQuery(params): AppQuery<TopParams>,
) -> Result<axum::Json<Vec<TopConversation>>, ApiError> {
    principal.require(Scope::Read)?;
    let tenant = principal.tenant(params.tenant_id.as_deref())?;
    let limit = in_range("limit", params.limit.unwrap_or(10), 100)?;
    let found = state.deps.store.recent_conversations(&tenant, limit).await.map_err(store_unavailable)?;
    Ok(axum::Json(
        found
            .into_iter()
            .map(|c| TopConversation {
                conversation_id: c.conversation_id.as_str().to_owned(),
                tenant_id: c.tenant_id.as_str().to_owned(),
                message_count: c.message_count,
                last_activity: c.last_message_at,
                avg_importance: c.avg_importance,
            })
            .collect(),
    ))
}

/// Embedding outcomes of the tenant's stored messages, in the active space.
#[utoipa::path(
    get, path = "/v1/analytics/embeddings", tag = "analytics", params(TenantParam),
    responses(
        (status = 200, body = EmbeddingStats), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn embeddings(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    AppQuery(params): AppQuery<TenantParam>,
) -> Result<axum::Json<EmbeddingStats>, ApiError> {
    principal.require(Scope::Read)?;
    let tenant = principal.tenant(params.tenant_id.as_deref())?;
    let usage = state.deps.store.usage(&tenant).await.map_err(store_unavailable)?;
    let completed = usage.embedded();
    let decided = completed + usage.failed_embeddings;
    Ok(axum::Json(EmbeddingStats {
        total_embeddings: completed,
        completed,
        pending: usage.pending_embeddings,
        failed: usage.failed_embeddings,
        avg_processing_time_seconds: None,
        success_rate: (decided > 0).then(|| 100.0 * completed as f64 / decided as f64),
    }))
}

/// Every tenant's totals (operator key only).
#[utoipa::path(
    get, path = "/v1/analytics/tenants", tag = "analytics",
    responses(
        (status = 200, body = Vec<TenantUsageBody>), (status = 401, body = Problem),
        (status = 403, description = "Not the operator key", body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn tenants(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<axum::Json<Vec<TenantUsageBody>>, ApiError> {
    principal.require_operator()?;
    let all = state.deps.store.tenants_usage().await.map_err(store_unavailable)?;
    Ok(axum::Json(
        all.into_iter()
            .map(|t| TenantUsageBody {
                tenant_id: t.tenant_id.as_str().to_owned(),
                total_messages: t.total_messages,
                total_conversations: t.total_conversations,
                storage_size_mb: None,
                last_activity: t.last_activity,
            })
            .collect(),
    ))
}
