//! `/healthz` (the process is alive), `/readyz` (NATS and Postgres answer, not shutting down),
//! `/metrics` (Prometheus text). None needs a key.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok", detail: None })
}

/// Readiness: NATS and Postgres reachable.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, axum::Json<Health>) {
    match common::ops::readiness(&state.deps, &state.shutdown, &state.ready).await {
        Ok(()) => (StatusCode::OK, axum::Json(Health { status: "ok", detail: None })),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(Health { status: "unavailable", detail: Some(e) })),
    }
}

/// Prometheus metrics of the whole process (the same as on the ops port).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    match &state.registry {
        Some(registry) => common::ops::render(registry).into_response(),
        None => crate::ApiError::RouteNotFound.into_response(),
    }
}
