//! The operations endpoint of a worker: `/metrics`, `/healthz` and `/readyz` on their own port.
//! (The gateway serves the same paths on its API port.)

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::deps::Deps;

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> impl IntoResponse + use<> {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        ),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], String::new()),
    }
}

/// A worker's own readiness condition beyond its dependencies (an embedder's open circuit, say).
/// `Err` says why the worker is not ready.
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
struct OpsState {
    registry: Arc<Registry>,
    deps: Deps,
    check: Option<Check>,
    shutdown: CancellationToken,
}

/// Serves the operations endpoints until `shutdown` is cancelled. `/readyz` also asks `check`.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    deps: Deps,
    check: Option<Check>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = OpsState { registry, deps, check, shutdown: shutdown.clone() };
    let app = axum::Router::new()
        .route("/metrics", get(|State(s): State<OpsState>| async move { render(&s.registry) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Readiness of any worker: not shutting down, and Postgres and NATS answer. `Err` says why not.
pub async fn readiness(deps: &Deps, shutdown: &CancellationToken) -> Result<(), String> {
    if shutdown.is_cancelled() {
        return Err("shutting down".into());
    }
    deps.ready().await
}

async fn readyz(State(s): State<OpsState>) -> (StatusCode, String) {
    let own = s.check.as_ref().map_or(Ok(()), |check| check());
    match readiness(&s.deps, &s.shutdown).await.and(own) {
        Ok(()) => (StatusCode::OK, "ok".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e),
    }
}
