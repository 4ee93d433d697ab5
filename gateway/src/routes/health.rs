//! `/healthz` (the process is alive), `/readyz` (NATS and Postgres answer, not shutting down),
//! `/metrics` (Prometheus text), and the original service's `/v1/admin/health` and
//! `/v1/admin/readiness`. None needs a key, none is rate-limited or shed.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/admin/health", get(admin_health))
        .route("/v1/admin/readiness", get(admin_readiness))
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

/// `/v1/admin/health`, as the original service answered it: the database's state and latency,
/// uptime, environment and version.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminHealth {
    /// `ok`, or `down` when Postgres does not answer.
    status: &'static str,
    /// `ok` or `down`.
    database: &'static str,
    timestamp: DateTime<Utc>,
    /// The database check's round trip.
    latency_ms: f64,
    uptime_seconds: f64,
    /// `MEMORY_ENVIRONMENT`.
    environment: String,
    version: &'static str,
    /// Not checked here: `skipped` (see `/v1/admin/readiness`).
    embedding: &'static str,
    notes: Option<String>,
}

/// The original service's health check. Unlike the original (which answered 200 even when
/// down), a `down` status answers 503.
#[utoipa::path(get, path = "/v1/admin/health", tag = "operations",
    responses((status = 200, description = "Postgres answers", body = AdminHealth),
              (status = 503, description = "Postgres does not answer", body = AdminHealth)))]
pub async fn admin_health(State(state): State<AppState>) -> (StatusCode, axum::Json<AdminHealth>) {
    let checked = check(&state).await;
    let (status, notes) = match &checked.database {
        Ok(()) => ("ok", None),
        Err(_) => ("down", Some("database check failed".to_owned())),
    };
    let code = if checked.database.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        code,
        axum::Json(AdminHealth {
            status,
            database: up(&checked.database),
            timestamp: Utc::now(),
            latency_ms: checked.latency_ms,
            uptime_seconds: state.started.elapsed().as_secs_f64(),
            environment: state.environment.to_string(),
            version: env!("CARGO_PKG_VERSION"),
            embedding: "skipped",
            notes,
        }),
    )
}

/// One check of Postgres and NATS for the original's health routes: whether each answered (the
/// cause is logged, never shown: these routes need no key), and how long the check took.
#[derive(Debug, Clone)]
pub struct Checked {
    database: Result<(), ()>,
    nats: Result<(), ()>,
    latency_ms: f64,
}

/// Checks Postgres and NATS at once, or reuses the check of the last second (these routes need
/// no key, so anyone may call them as often as they like).
async fn check(state: &AppState) -> Checked {
    state
        .admin_checks
        .get(|| async {
            let at = Instant::now();
            let (database, nats) = tokio::join!(state.deps.store.ping(), state.deps.bus.ping());
            let latency_ms = at.elapsed().as_secs_f64() * 1000.0;
            if let Err(e) = &database {
                tracing::warn!(error = %e, "health check: Postgres does not answer");
            }
            if let Err(e) = &nats {
                tracing::warn!(error = %e, "health check: NATS does not answer");
            }
            Checked { database: database.map_err(drop), nats: nats.map_err(drop), latency_ms }
        })
        .await
}

fn up(check: &Result<(), ()>) -> &'static str {
    if check.is_ok() { "ok" } else { "down" }
}

/// `/v1/admin/readiness`: the original service's fields, and ours beside them (`nats`, `redis`).
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminReadiness {
    /// `ok`; `degraded` when Redis does not answer (rate limits are then kept per process);
    /// `down` when Postgres or NATS does not answer, or the gateway is stopping.
    status: &'static str,
    /// `ok` or `down`.
    database: &'static str,
    /// `ok` or `down`.
    nats: &'static str,
    /// `ok`, `down`, or `skipped` without `MEMORY_REDIS_URL`.
    redis: &'static str,
    /// `skipped`, as the original's default: each embedder's own `/readyz` on its ops port
    /// reports its provider's circuit.
    embedding: &'static str,
    timestamp: DateTime<Utc>,
    latency_ms: f64,
    uptime_seconds: f64,
    environment: String,
    version: &'static str,
    /// What failed, `; `-separated.
    notes: Option<String>,
}

/// The original service's readiness check. Unlike the original (always 200), `down` answers 503;
/// `ok` and `degraded` answer 200.
#[utoipa::path(get, path = "/v1/admin/readiness", tag = "operations",
    responses((status = 200, description = "ready, perhaps degraded", body = AdminReadiness),
              (status = 503, description = "down", body = AdminReadiness)))]
pub async fn admin_readiness(State(state): State<AppState>) -> (StatusCode, axum::Json<AdminReadiness>) {
    let Checked { database, nats, latency_ms } = check(&state).await;
    let redis = match state.limiter.redis_up() {
        None => "skipped",
        Some(true) => "ok",
        Some(false) => "down",
    };
    let mut notes = Vec::new();
    if database.is_err() {
        notes.push("database check failed".to_owned());
    }
    if nats.is_err() {
        notes.push("nats check failed".to_owned());
    }
    if redis == "down" {
        notes.push("redis check failed".to_owned());
    }
    let stopping = state.shutdown.is_cancelled();
    if stopping {
        notes.push("shutting down".to_owned());
    }
    let status = if database.is_err() || nats.is_err() || stopping {
        "down"
    } else if redis == "down" {
        "degraded"
    } else {
        "ok"
    };
    let body = AdminReadiness {
        status,
        database: up(&database),
        nats: up(&nats),
        redis,
        embedding: "skipped",
        timestamp: Utc::now(),
        latency_ms,
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        environment: state.environment.to_string(),
        version: env!("CARGO_PKG_VERSION"),
        notes: (!notes.is_empty()).then(|| notes.join("; ")),
    };
    (if status == "down" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }, axum::Json(body))
}
