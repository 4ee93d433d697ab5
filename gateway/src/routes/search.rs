//! `GET /v1/memory/search`: the seed's search, answered by a searcher over NATS.

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use common::contract::{SearchRequest, SearchResponse, VERSION};
use common::domain::{ConversationId, TOP_K_DEFAULT, TenantId, check_search};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{call, request_id};
use crate::error::{ApiError, Problem};
use crate::extract::AppQuery;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/memory/search", get(search_memories))
}

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
    top_k: Option<u32>,
    /// Only this conversation.
    conversation_id: Option<String>,
}

/// Find a tenant's messages most relevant to a query.
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
    headers: HeaderMap,
    AppQuery(params): AppQuery<SearchParams>,
) -> Result<axum::Json<SearchResponse>, ApiError> {
    let top_k = params.top_k.unwrap_or(TOP_K_DEFAULT);
    let mut errors = Vec::new();
    let tenant_id = TenantId::parse(params.tenant_id).map_err(|e| errors.extend(e.0)).ok();
    let conversation_id =
        params.conversation_id.map(ConversationId::parse).transpose().map_err(|e| errors.extend(e.0)).ok().flatten();
    if let Err(e) = check_search(&params.query, top_k) {
        errors.extend(e.0);
    }
    let Some(tenant_id) = tenant_id.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Invalid(errors));
    };
    let request = SearchRequest { v: VERSION, tenant_id, query: params.query, top_k, conversation_id };
    let response: SearchResponse = call(&state, state.deps.subjects.search(), &request, &request_id(&headers)).await?;
    Ok(axum::Json(response))
}
