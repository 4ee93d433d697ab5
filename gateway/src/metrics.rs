//! The gateway's HTTP metrics, registered under `memory_gateway_*`. Every label comes from a
//! closed set, because it is taken before authentication: routes by their template
//! (`/v1/messages/{id}`, never the raw path), methods from the standard ones or `OTHER`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use common::metrics::{registered, seconds};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::state::AppState;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LimitLabels {
    /// `client` or `tenant`.
    pub scope: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allowed` or `limited`.
    pub decision: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ClosedLabels {
    /// `client`, `slow_consumer`, `unresponsive`, `shutdown` or `interrupted`.
    pub reason: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    /// Messages the ingest stream accepted from this gateway (single, batch or import):
    /// `memory_gateway_accepted_messages_total`.
    pub accepted: Counter,
    /// API keys looked up in the database (no cache knew them):
    /// `memory_gateway_key_lookups_total`.
    pub key_lookups: Counter,
    /// Rate-limit checks, by outcome: `memory_gateway_rate_limit_decisions_total`.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Requests refused by a rate limit: `memory_gateway_rate_limited_total{scope}`.
    pub rate_limited: Family<LimitLabels, Counter>,
    /// Where rate limits are kept: 1 Redis (shared), 0 in process (`memory_gateway_rate_limiter_redis`).
    pub limiter_backend: Gauge,
    /// Times Redis failed and the in-process limiter answered:
    /// `memory_gateway_rate_limiter_fallbacks_total`.
    pub limiter_fallbacks: Counter,
    /// API requests shed because too many were in flight: `memory_gateway_shed_requests_total`.
    pub shed: Counter,
    /// Client connections open now: `memory_gateway_connections`.
    pub connections: Gauge,
    /// Live event and search connections open now: `memory_gateway_live_connections`.
    pub live_connections: Gauge,
    /// Events sent to live subscribers: `memory_gateway_live_events_total`.
    pub live_events: Counter,
    /// Live connections closed, by reason: `memory_gateway_live_closed_total{reason}`.
    pub live_closed: Family<ClosedLabels, Counter>,
    /// `memory_gateway_http_requests_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// `memory_gateway_http_request_duration_seconds`.
    pub duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("gateway");
        Self {
            accepted: registered(r, "accepted_messages", "Messages the ingest stream accepted", Counter::default()),
            key_lookups: registered(r, "key_lookups", "API keys looked up in the database", Counter::default()),
            decisions: registered(r, "rate_limit_decisions", "Rate-limit checks, by outcome", Family::default()),
            rate_limited: registered(r, "rate_limited", "Requests refused by a rate limit", Family::default()),
            limiter_backend: registered(
                r,
                "rate_limiter_redis",
                "1 while rate limits are kept in Redis, 0 in process",
                Gauge::default(),
            ),
            limiter_fallbacks: registered(
                r,
                "rate_limiter_fallbacks",
                "Times Redis failed and the in-process limiter answered",
                Counter::default(),
            ),
            shed: registered(
                r,
                "shed_requests",
                "API requests shed because too many were in flight",
                Counter::default(),
            ),
            connections: registered(r, "connections", "Client connections open now", Gauge::default()),
            live_connections: registered(
                r,
                "live_connections",
                "Live event and search connections open now",
                Gauge::default(),
            ),
            live_events: registered(r, "live_events", "Events sent to live subscribers", Counter::default()),
            live_closed: registered(r, "live_closed", "Live connections closed, by reason", Family::default()),
            requests: registered(
                r,
                "http_requests",
                "HTTP requests answered, by method, route and status",
                Family::default(),
            ),
            duration: seconds(
                r,
                "http_request_duration",
                "Time to answer an HTTP request",
                Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
            ),
        }
    }
}

pub(crate) async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    let status = response.status().as_u16();
    state.metrics.requests.get_or_create(&RequestLabels { method, route: route.clone(), status }).inc();
    state.metrics.duration.get_or_create(&RouteLabels { method, route }).observe(started.elapsed().as_secs_f64());
    response
}

/// A method as a label: one of the standard methods, or `OTHER` for any extension method a
/// client makes up (each would otherwise be a new series).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}
