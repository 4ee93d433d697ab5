//! Search: `GET /v1/memory/search` (the seed's, filters as query parameters) and
//! `POST /v1/memory/search` (the same as a JSON body), answered by a searcher over NATS.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Extension, Router};
use chrono::{DateTime, Utc};
use common::contract::{CANDIDATES_MAX, SearchRequest, SearchResponse, VERSION};
use common::domain::{
    ConversationId, FieldError, Role, Scope, SearchFilters, SearchMode, TOP_K_DEFAULT, TenantId, check_search,
};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::{call_read, request_id};
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::extract::{AppJson, AppQuery};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/memory/search", get(search_memories).post(search_memories_post))
}

/// Query parameters, read as text so that every bad value is reported with its field.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// The tenant whose messages are searched.
    #[serde(default)]
    tenant_id: String,
    /// What to look for: 1–10,000 characters.
    #[serde(default)]
    query: String,
    /// 1–50, default 5.
    top_k: Option<String>,
    /// `hybrid` (default), `vector` or `lexical`.
    mode: Option<String>,
    /// `true`: each hit explains its score.
    explain: Option<String>,
    /// Only this conversation.
    conversation_id: Option<String>,
    /// Only this role: `user`, `assistant` or `system`.
    role: Option<String>,
    /// Only messages created at or after this RFC 3339 instant.
    created_after: Option<String>,
    /// Only messages created before this RFC 3339 instant.
    created_before: Option<String>,
    /// Only messages whose metadata contains this JSON object, e.g. `{"topic":"travel"}`.
    metadata: Option<String>,
    /// Only messages of at least this importance (0–1).
    min_importance: Option<String>,
    /// The original service's name for `min_importance`.
    importance_min: Option<String>,
    /// Candidates read from each retriever before ranking: 1–1,000 (at least `top_k` are read).
    /// Default: `top_k` times the searcher's candidate factor or fusion window.
    candidate_limit: Option<String>,
    /// `true`: archived messages too.
    include_archived: Option<String>,
    /// `true`: vector candidates from an exact scan of the tenant's vectors, not the index, to
    /// measure the index's recall. Operator key only.
    exact: Option<String>,
}

/// A search as a JSON body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    /// Implied by a tenant key.
    #[serde(default)]
    tenant_id: String,
    query: String,
    /// 1–50, default 5.
    top_k: Option<u32>,
    #[serde(default)]
    mode: SearchMode,
    #[serde(default)]
    explain: bool,
    #[serde(default)]
    filters: SearchFilters,
    /// Vector candidates from an exact scan, not the index. Operator key only.
    #[serde(default)]
    exact: bool,
    /// Candidates read from each retriever before ranking: 1–1,000.
    candidate_limit: Option<u32>,
}

/// Find a tenant's messages most relevant to a query.
///
/// Candidates come from the vector index and from full-text search (`mode`), fused by
/// reciprocal-rank fusion and scored `w_rel·relevance + w_imp·importance + w_rec·decay`.
#[utoipa::path(
    get, path = "/v1/memory/search", tag = "search",
    params(SearchParams),
    responses(
        (status = 200, body = SearchResponse),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 422, body = Problem),
        (status = 503, body = Problem), (status = 504, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn search_memories(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    AppQuery(mut params): AppQuery<SearchParams>,
) -> Result<axum::Json<SearchResponse>, ApiError> {
    principal.require(Scope::Read)?;
    principal.bind_tenant(&mut params.tenant_id)?;
    let mut errors = Vec::new();
    let top_k = parse(&mut errors, "top_k", params.top_k, |v| v.parse::<u32>().ok()).unwrap_or(TOP_K_DEFAULT);
    let mode = parse(&mut errors, "mode", params.mode, |v| serde_json::from_value(Value::String(v.to_owned())).ok())
        .unwrap_or_default();
    let explain = parse(&mut errors, "explain", params.explain, |v| v.parse::<bool>().ok()).unwrap_or(false);
    let exact = parse(&mut errors, "exact", params.exact, |v| v.parse::<bool>().ok()).unwrap_or(false);
    if exact {
        principal.require_operator()?;
    }
    let filters = SearchFilters {
        conversation_id: params
            .conversation_id
            .map(ConversationId::parse)
            .transpose()
            .map_err(|e| errors.extend(e.0))
            .ok()
            .flatten(),
        role: parse(&mut errors, "role", params.role, Role::parse),
        created_after: parse(&mut errors, "created_after", params.created_after, instant),
        created_before: parse(&mut errors, "created_before", params.created_before, instant),
        metadata: parse(&mut errors, "metadata", params.metadata, |v| {
            serde_json::from_str::<Map<String, Value>>(v).ok()
        }),
        min_importance: match (params.min_importance, params.importance_min) {
            (Some(_), Some(_)) => {
                errors.push(FieldError::new(
                    "importance_min",
                    "conflict",
                    "give min_importance or importance_min, not both",
                ));
                None
            }
            (ours, original) => {
                let field = if original.is_some() { "importance_min" } else { "min_importance" };
                parse(&mut errors, field, ours.or(original), |v| v.parse::<f64>().ok())
            }
        },
        include_archived: parse(&mut errors, "include_archived", params.include_archived, |v| v.parse::<bool>().ok())
            .unwrap_or(false),
    };
    let candidate_limit = parse(&mut errors, "candidate_limit", params.candidate_limit, |v| v.parse::<u32>().ok());
    let request = Search {
        tenant_id: params.tenant_id,
        query: params.query,
        top_k,
        mode,
        explain,
        filters,
        exact,
        candidate_limit,
    };
    search(&state, &request_id(&headers), errors, request).await.map(axum::Json)
}

/// The same search, as a JSON body (convenient for metadata filters).
#[utoipa::path(
    post, path = "/v1/memory/search", tag = "search",
    request_body = SearchBody,
    responses(
        (status = 200, body = SearchResponse),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 422, body = Problem),
        (status = 503, body = Problem), (status = 504, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn search_memories_post(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    AppJson(mut body): AppJson<SearchBody>,
) -> Result<axum::Json<SearchResponse>, ApiError> {
    principal.require(Scope::Read)?;
    principal.bind_tenant(&mut body.tenant_id)?;
    if body.exact {
        principal.require_operator()?;
    }
    let request = Search {
        tenant_id: body.tenant_id,
        query: body.query,
        top_k: body.top_k.unwrap_or(TOP_K_DEFAULT),
        mode: body.mode,
        explain: body.explain,
        filters: body.filters,
        exact: body.exact,
        candidate_limit: body.candidate_limit,
    };
    search(&state, &request_id(&headers), Vec::new(), request).await.map(axum::Json)
}

/// A search as a route reads it, before validation.
pub(crate) struct Search {
    pub(crate) tenant_id: String,
    pub(crate) query: String,
    pub(crate) top_k: u32,
    pub(crate) mode: SearchMode,
    pub(crate) explain: bool,
    pub(crate) filters: SearchFilters,
    pub(crate) exact: bool,
    pub(crate) candidate_limit: Option<u32>,
}

/// Validates a search (adding to the `errors` found while reading it) and asks a searcher.
pub(crate) async fn search(
    state: &AppState,
    request_id: &str,
    mut errors: Vec<FieldError>,
    search: Search,
) -> Result<SearchResponse, ApiError> {
    let Search { tenant_id, query, top_k, mode, explain, filters, exact, candidate_limit } = search;
    let tenant_id = TenantId::parse(tenant_id).map_err(|e| errors.extend(e.0)).ok();
    if let Err(e) = check_search(&query, top_k) {
        errors.extend(e.0);
    }
    if let Err(e) = filters.check() {
        errors.extend(e.0);
    }
    if candidate_limit.is_some_and(|c| !(1..=CANDIDATES_MAX).contains(&c)) {
        errors.push(FieldError::new("candidate_limit", "out_of_range", format!("must be 1 to {CANDIDATES_MAX}")));
    }
    let Some(tenant_id) = tenant_id.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Invalid(errors));
    };
    let request = SearchRequest { v: VERSION, tenant_id, query, top_k, mode, filters, explain, exact, candidate_limit };
    call_read(state, state.deps.subjects.search(), &request, request_id).await
}

/// Parses an optional parameter; a value that does not parse is reported under its field.
fn parse<T>(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: Option<String>,
    f: impl FnOnce(&str) -> Option<T>,
) -> Option<T> {
    let value = value?;
    let parsed = f(value.trim());
    if parsed.is_none() {
        errors.push(FieldError::new(field, "invalid", format!("{value:?} is not a valid {field}")));
    }
    parsed
}

fn instant(v: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v).ok().map(|t| t.with_timezone(&Utc))
}
