//! The operations endpoint of a process: `/metrics`, `/healthz` and `/readyz` on their own port,
//! whatever roles the process runs. (The gateway also serves them on its API port.)

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::deps::Deps;
use crate::store::Health;

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

/// What the ops endpoint serves once the process has built its roles; until then `/readyz`
/// and `/metrics` answer 503 and `/healthz` 200, so a slow start (Postgres still starting, a
/// migration still running) is neither ready nor killed.
pub struct Built {
    pub registry: Arc<Registry>,
    pub deps: Deps,
    /// The roles' own readiness conditions.
    pub checks: Vec<Check>,
}

/// A handle on the ops endpoint's state, set once with [`Ops::built`].
#[derive(Clone, Default)]
pub struct Ops(Arc<std::sync::OnceLock<Built>>);

impl Ops {
    /// From now on, serve `built`'s metrics and readiness.
    pub fn built(&self, built: Built) {
        let _ = self.0.set(built);
    }
}

#[derive(Clone)]
struct OpsState {
    ops: Ops,
    shutdown: CancellationToken,
    ready: Arc<ReadyCache>,
}

/// How long a readiness answer is reused: `/readyz` needs no key, so without this every probe
/// (and anyone else) would cost a Postgres and a NATS round trip.
pub const READY_CACHE: std::time::Duration = std::time::Duration::from_secs(1);

/// The last readiness answer of the dependencies (or any answer of type `T`), reused for
/// [`READY_CACHE`]. Callers arriving while a check runs wait for it rather than start their own.
pub struct ReadyCache<T = Result<(), String>> {
    ttl: std::time::Duration,
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, T)>>,
}

impl<T> Default for ReadyCache<T> {
    fn default() -> Self {
        Self::new(READY_CACHE)
    }
}

impl<T> ReadyCache<T> {
    pub fn new(ttl: std::time::Duration) -> Self {
        Self { ttl, last: tokio::sync::Mutex::new(None) }
    }
}

impl<T: Clone> ReadyCache<T> {
    /// The cached answer if it is fresh, else `check`'s, remembered.
    pub async fn get<F, Fut>(&self, check: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = &*last
            && at.elapsed() < self.ttl
        {
            return answer.clone();
        }
        let answer = check().await;
        *last = Some((tokio::time::Instant::now(), answer.clone()));
        answer
    }
}

/// Serves the operations endpoints until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, ops: Ops, shutdown: CancellationToken) -> std::io::Result<()> {
    let state = OpsState { ops, shutdown: shutdown.clone(), ready: Arc::default() };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

async fn metrics(State(s): State<OpsState>) -> axum::response::Response {
    match s.ops.0.get() {
        Some(built) => render(&built.registry).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response(),
    }
}

/// Readiness of any worker: not shutting down, and Postgres and NATS answer. `Err` says why not.
/// Shutting down is seen at once; the dependencies' answer comes through `cache`.
pub async fn readiness<S: Health + ?Sized>(
    deps: &Deps<S>,
    shutdown: &CancellationToken,
    cache: &ReadyCache,
) -> Result<(), String> {
    if shutdown.is_cancelled() {
        return Err("shutting down".into());
    }
    cache.get(|| async { deps.ready().await.map_err(|e| e.to_string()) }).await
}

async fn readyz(State(s): State<OpsState>) -> (StatusCode, String) {
    let Some(built) = s.ops.0.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting: connecting to Postgres and NATS".into());
    };
    let own = built.checks.iter().try_for_each(|check| check());
    match readiness(&built.deps, &s.shutdown, &s.ready).await.and(own) {
        Ok(()) => (StatusCode::OK, "ok".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn readiness_is_checked_at_most_once_per_interval() {
        let cache: ReadyCache = ReadyCache::default();
        let checks = AtomicUsize::new(0);
        let check = || async {
            checks.fetch_add(1, Ordering::Relaxed);
            Err("postgres: down".to_owned())
        };
        for _ in 0..100 {
            assert_eq!(cache.get(check).await, Err("postgres: down".to_owned()));
        }
        assert_eq!(checks.load(Ordering::Relaxed), 1, "one check for a hundred probes");
        tokio::time::advance(READY_CACHE).await;
        let _ = cache.get(check).await;
        assert_eq!(checks.load(Ordering::Relaxed), 2, "checked again once the answer is old");
    }
}
