//! What keeps one client from holding the gateway: a cap on requests in flight, a deadline per
//! request, a pause limit on request bodies, and connections that stay usable after a rejection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::error::ApiError;
use crate::state::AppState;

/// Routes that wait for long work to its end (the operator's tenant delete): they get
/// [`crate::routes::LONG_TIMEOUT`] on top of the usual deadline. The other long work (deletes of
/// conversations, tenant erasures, retention runs) answers 202 with an operation within the usual
/// deadline (`routes::operations::tracked`).
const LONG_ROUTES: [(Method, &str); 1] = [(Method::DELETE, "/v1/admin/tenants/{tenant_id}")];

/// An import reads its body as it goes (up to 256 MiB): its time is the upload's, bounded by the
/// body's pause limit and its charge per message, not by a deadline.
const UNBOUNDED_ROUTES: [(Method, &str); 1] = [(Method::POST, "/v1/tenants/{tenant_id}/import")];

/// Routes that may wait for a message to be stored or embedded (`?wait=`).
const WAITING_ROUTES: [&str; 2] = ["/v1/messages", "/v1/messages/batch"];

/// Sheds API requests beyond the configured number in flight with 503 `overloaded`: a burst
/// queues nowhere, and each shed request costs next to nothing.
pub(crate) async fn shed(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match state.in_flight.clone().try_acquire_owned() {
        Ok(permit) => {
            let response = next.run(req).await;
            drop(permit);
            response
        }
        Err(_) => {
            state.metrics.shed.inc();
            discard_body(req, state.body_limit).await;
            ApiError::Overloaded.into_response()
        }
    }
}

/// Ends a request that has not started answering within its deadline with 504 `request_timeout`;
/// dropping the handler cancels its work (a NATS request, a database query).
pub(crate) async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    if let Some(r) = route.as_deref()
        && UNBOUNDED_ROUTES.iter().any(|(m, p)| m == req.method() && *p == r)
    {
        return next.run(req).await;
    }
    let budget = budget(&state, req.method(), route.as_deref());
    match tokio::time::timeout(budget, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(route = route.as_deref().unwrap_or("-"), ?budget, "request ran out of time");
            ApiError::RequestTimeout.into_response()
        }
    }
}

fn budget(state: &AppState, method: &Method, route: Option<&str>) -> Duration {
    let base = state.http_request_timeout;
    match route {
        Some(r) if LONG_ROUTES.iter().any(|(m, p)| m == method && *p == r) => base + crate::routes::LONG_TIMEOUT,
        Some(r) if *method == Method::POST && WAITING_ROUTES.contains(&r) => base + state.wait_timeout,
        _ => base,
    }
}

/// Watches each request body: a pause longer than the body timeout ends it (408
/// `body_timeout`), and a response to a request whose body was left unread says
/// `Connection: close`, so the client never sends its next request into a dropped connection.
pub(crate) async fn watch_body(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !has_body(req.headers()) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let finished = Arc::new(AtomicBool::new(false));
    let seen = finished.clone();
    let timed = tower_http::timeout::TimeoutBody::new(state.body_timeout, body);
    let frames = Body::new(timed).into_data_stream().chain(futures::stream::poll_fn(move |_| {
        seen.store(true, Ordering::Release);
        Poll::Ready(None)
    }));
    let mut response = next.run(Request::from_parts(parts, Body::from_stream(frames))).await;
    if !finished.load(Ordering::Acquire) {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() != "0")
}

/// Reads and drops a request's body (up to `limit` bytes) before a rejection is answered, so
/// the connection can carry the client's next request. A body that is too large or too slow
/// is left: [`watch_body`] then closes the connection.
pub(crate) async fn discard_body(req: Request, limit: usize) {
    let _ = axum::body::to_bytes(req.into_body(), limit).await;
}

/// Whether a body read failed because the client paused longer than the body timeout.
pub(crate) fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// API versions, as the original service had them: answers on `/v1/…` carry `X-API-Version: v1`,
/// and a path of another version (`/v2/…`) answers 400 `unsupported_api_version`.
pub(crate) async fn api_version(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let versioned = first.len() > 1 && first.starts_with('v') && first[1..].bytes().all(|b| b.is_ascii_digit());
    if versioned && first != "v1" {
        return ApiError::UnsupportedVersion(first.to_owned()).into_response();
    }
    let mut response = next.run(req).await;
    if versioned {
        response.headers_mut().insert(HeaderName::from_static("x-api-version"), HeaderValue::from_static("v1"));
    }
    response
}
