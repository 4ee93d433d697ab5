//! The gateway: the HTTP face of the pipeline. It authenticates, validates, publishes to NATS and
//! turns worker replies into HTTP responses. It never embeds and never writes a message.

pub mod auth;
pub mod error;
mod extract;
mod guard;
pub mod limit;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod routes;
mod serve;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName;
use axum::middleware;
use common::config::{Config, ConfigError};
use common::store::{
    Analytics, ApiKeys, Conversations, Health, Operations, Settings, SettingsAdmin, TenantLookup, Tenants,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

pub use error::ApiError;
pub use metrics::Metrics;
pub use state::AppState;

/// Shortest admin key accepted: anything shorter is guessable.
const ADMIN_KEY_MIN: usize = 16;

/// The storage roles the gateway uses: tenants, their keys and settings, conversations and usage
/// counters (and a count of the messages not embedded), and the operations of long work it starts;
/// never a message row (messages go through NATS to the workers that own them).
pub trait Store:
    Health + Tenants + TenantLookup + ApiKeys + Settings + SettingsAdmin + Conversations + Analytics + Operations + 'static
{
}

impl<
    T: Health
        + Tenants
        + TenantLookup
        + ApiKeys
        + Settings
        + SettingsAdmin
        + Conversations
        + Analytics
        + Operations
        + 'static,
> Store for T
{
}

/// The gateway's handles: its view of the store.
pub type Deps = common::Deps<dyn Store>;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("the gateway cannot start with this configuration")]
    Config(#[from] ConfigError),
    #[error("cannot bind the HTTP listener on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot subscribe to key revocations")]
    Subscribe(#[source] common::bus::BusError),
}

/// The application: every route, layer and the shared state.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let api = Router::new()
        .merge(routes::messages::router())
        .merge(routes::lifecycle::router())
        .merge(routes::conversations::router())
        .merge(routes::analytics::router())
        .merge(routes::transfer::router())
        .merge(routes::search::router())
        .merge(routes::tenants::router())
        .merge(routes::admin::router())
        .merge(routes::live::router())
        .merge(routes::operations::router())
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        // Shed before any work, even a key lookup; health, readiness and metrics are never shed.
        .route_layer(middleware::from_fn_with_state(state.clone(), guard::shed));
    let app = Router::new()
        .merge(api)
        .merge(routes::health::router())
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi::ApiDoc::openapi()))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), guard::deadline))
        .layer(middleware::from_fn_with_state(state.clone(), guard::watch_body))
        .layer(middleware::from_fn(guard::api_version))
        .layer(middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new([
            axum::http::header::AUTHORIZATION,
            HeaderName::from_static("x-api-key"),
        ]));
    // Outermost: a browser's preflight is answered before keys, limits or routes. Without
    // configured origins there is no cross-origin access at all (and OPTIONS is a 405).
    let app = if state.allowed_origins.is_empty() { app } else { app.layer(cors(&state.allowed_origins)) };
    app.with_state(state)
}

/// Cross-origin calls from the configured browser origins (none by default), as the original
/// service allowed them: its methods and headers, its exposed headers and ours, cached an hour.
/// Keys travel in headers, never cookies, so no credentials are allowed.
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let name = HeaderName::from_static;
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            name("x-api-key"),
            name("x-api-version"),
            name("x-request-id"),
            name("x-tenant-id"),
        ])
        .expose_headers([
            name("x-api-version"),
            name("x-request-id"),
            header::RETRY_AFTER,
            header::LOCATION,
            name("ratelimit-limit"),
            name("ratelimit-remaining"),
            name("ratelimit-reset"),
            name("ratelimit-policy"),
            name("x-ratelimit-limit"),
            name("x-ratelimit-remaining"),
            name("x-ratelimit-reset"),
            name("x-ratelimit-tenant-limit"),
            name("x-ratelimit-tenant-remaining"),
            name("x-ratelimit-tenant-reset"),
        ])
        .max_age(std::time::Duration::from_secs(3600))
}

/// How often the last-used times of keys are written.
const LAST_USED_FLUSH: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Gateway {
    listener: TcpListener,
    state: AppState,
    /// Keys revoked by any gateway, to forget here.
    revocations: futures::stream::BoxStream<'static, common::bus::Envelope>,
    limits: serve::Limits,
}

impl Gateway {
    /// Checks the configuration, registers the gateway's metrics and binds the listener. Refuses
    /// to start without an admin key: the API is never open.
    pub async fn build(
        config: &Config,
        deps: common::Deps<impl Store>,
        registry: &mut Registry,
    ) -> Result<Self, GatewayError> {
        let deps: Deps = deps.view(|s| s as Arc<dyn Store>);
        let admin_key = config.http.admin_api_key.clone().ok_or_else(|| {
            ConfigError::one("MEMORY_ADMIN_API_KEY is not set: the gateway never runs without authentication")
        })?;
        if admin_key.expose().len() < ADMIN_KEY_MIN {
            return Err(
                ConfigError::one(format!("MEMORY_ADMIN_API_KEY must be at least {ADMIN_KEY_MIN} characters")).into()
            );
        }
        let metrics = Metrics::register(registry);
        let listener = TcpListener::bind(config.http.addr)
            .await
            .map_err(|source| GatewayError::Bind { addr: config.http.addr, source })?;
        let limiter = limit::Limiter::new(
            config.rate_limit,
            config.redis_url.as_ref(),
            deps.subjects.clone(),
            deps.store.clone(),
            metrics.clone(),
        );
        let live = Arc::new(live::Live::new(
            config.http.live_max_connections,
            config.http.live_max_per_tenant,
            config.http.live_buffer,
            metrics.clone(),
        ));
        let state = AppState {
            keys: Arc::new(auth::Keys::new(
                deps.store.clone(),
                admin_key.expose(),
                config.http.auth_cache_ttl,
                metrics.key_lookups.clone(),
            )),
            limiter: Arc::new(limiter),
            rate_limit: config.rate_limit,
            deps,
            body_limit: config.http.body_limit,
            body_timeout: config.http.body_timeout,
            http_request_timeout: config.http.request_timeout,
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.http.max_in_flight)),
            wait_timeout: config.http.wait_timeout,
            request_timeout: config.nats.request_timeout,
            ranking: config.searcher.ranking,
            registry: None,
            metrics,
            ready: Arc::default(),
            shutdown: CancellationToken::new(),
            admin_checks: Arc::default(),
            started: std::time::Instant::now(),
            environment: config.http.environment.as_str().into(),
            allowed_origins: config.http.allowed_origins.clone().into(),
            live,
        };
        let revocations =
            state.deps.bus.subscribe(state.deps.subjects.keys_revoked()).await.map_err(GatewayError::Subscribe)?;
        let limits =
            serve::Limits { header_timeout: config.http.header_timeout, max_connections: config.http.max_connections };
        Ok(Self { listener, state, revocations, limits })
    }

    /// Serves `registry` (the whole process's, once every role registered) at `/metrics`.
    pub fn expose_metrics(&mut self, registry: Arc<Registry>) {
        self.state.registry = Some(registry);
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` is cancelled, then finishes the requests in flight, for at most
    /// `grace`. A request cut off then was either published (and will be stored) or not (and its
    /// client saw no answer, so it retries): nothing is half-written.
    pub async fn run(mut self, shutdown: CancellationToken, grace: std::time::Duration) -> Result<(), GatewayError> {
        self.state.shutdown = shutdown.clone();
        tracing::info!(addr = %self.local_addr(), "gateway listening");
        // Last-used times of keys, written in batches.
        let keys = self.state.keys.clone();
        // Its own token: the last flush comes after the requests of the drain, not at SIGTERM.
        let flushing = CancellationToken::new();
        let stop_flushing = flushing.clone();
        let flusher = tokio::spawn(async move {
            let mut every = tokio::time::interval(LAST_USED_FLUSH);
            loop {
                tokio::select! {
                    () = flushing.cancelled() => break,
                    _ = every.tick() => keys.flush_last_used().await,
                }
            }
            keys.flush_last_used().await;
        });
        // Keys revoked on any gateway stop here at once.
        let (keys, mut revocations) = (self.state.keys.clone(), self.revocations);
        let forgetting = tokio::spawn(async move {
            while let Some(revoked) = futures::StreamExt::next(&mut revocations).await {
                match std::str::from_utf8(&revoked.payload).ok().and_then(|id| uuid::Uuid::parse_str(id).ok()) {
                    Some(id) => keys.forget(id),
                    None => tracing::warn!("ignoring a malformed key revocation"),
                }
            }
        });
        let open = self.state.metrics.connections.clone();
        let live = self.state.live.clone();
        let serve = async {
            serve::serve(self.listener, router(self.state), self.limits, open, shutdown.clone()).await;
            // Live sockets left the server when they upgraded: each closes itself on shutdown.
            live.sessions.close();
            live.sessions.wait().await;
        };
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        let served = tokio::select! {
            () = serve => Ok(()),
            () = deadline => {
                tracing::warn!(?grace, "requests still in flight at the end of the grace period");
                Ok(())
            }
        };
        forgetting.abort();
        // The last flush of last-used times.
        stop_flushing.cancel();
        if let Err(e) = flusher.await {
            tracing::error!(error = %e, "the last-used flusher panicked");
        }
        served
    }
}
