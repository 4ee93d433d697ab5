//! Route modules, each exposing `router()`, plus the request/reply call every handler uses.

pub mod admin;
pub mod health;
pub mod lifecycle;
pub mod messages;
pub mod search;
pub mod tenants;
pub mod transfer;

use axum::http::HeaderMap;
use common::bus::Envelope;
use common::contract::{REQUEST_ID_HEADER, Reply};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// The request id set by the request-id layer.
pub fn request_id(headers: &HeaderMap) -> String {
    headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned()
}

/// A store the gateway reads for tenants, keys and settings did not answer.
pub(crate) fn store_unavailable(e: common::store::StoreError) -> ApiError {
    tracing::warn!(error = %e, cause = ?std::error::Error::source(&e), "the tenant store is unavailable");
    ApiError::Unavailable("tenants, keys and settings cannot be read or written right now".into())
}

/// How long the gateway waits for a delete of a whole conversation or tenant: they go in
/// batches and may take minutes on a large tenant. A client that gives up earlier may repeat the
/// request (deletes are idempotent); the first one carries on.
pub const LONG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Sends a request to a worker and maps its typed reply.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    state: &AppState,
    subject: String,
    request: &Req,
    request_id: &str,
) -> Result<Resp, ApiError> {
    call_within(state, subject, request, request_id, state.request_timeout).await
}

/// [`call`], waiting up to `timeout`.
pub async fn call_within<Req: Serialize, Resp: DeserializeOwned>(
    state: &AppState,
    subject: String,
    request: &Req,
    request_id: &str,
    timeout: std::time::Duration,
) -> Result<Resp, ApiError> {
    let payload = serde_json::to_vec(request).expect("requests serialise");
    let envelope = Envelope::new(subject, payload).with_header(REQUEST_ID_HEADER, request_id);
    let bytes = state.deps.bus.request(envelope, timeout.max(state.request_timeout)).await?;
    match serde_json::from_slice::<Reply<Resp>>(&bytes) {
        Ok(Reply::Ok(r)) => Ok(r),
        Ok(Reply::Error(e)) => Err(e.into()),
        Err(e) => Err(ApiError::Unavailable(format!("unreadable reply from a worker: {e}"))),
    }
}
