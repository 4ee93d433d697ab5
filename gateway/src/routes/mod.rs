//! Route modules, each exposing `router()`, plus the request/reply call every handler uses.

pub mod admin;
pub mod analytics;
pub mod conversations;
pub mod health;
pub mod lifecycle;
pub mod live;
pub mod messages;
pub mod operations;
pub mod search;
pub mod tenants;
pub mod transfer;

use axum::http::HeaderMap;
use common::bus::Envelope;
use common::contract::{REQUEST_ID_HEADER, Reply, TIMEOUT_HEADER};
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

/// Sends a read to a worker and maps its typed reply, waiting up to
/// `MEMORY_NATS_REQUEST_TIMEOUT_MS`; the worker drops the work (and its database queries) when
/// the gateway stops waiting.
pub async fn call_read<Req: Serialize, Resp: DeserializeOwned>(
    state: &AppState,
    subject: String,
    request: &Req,
    request_id: &str,
) -> Result<Resp, ApiError> {
    let patience = state.request_timeout.as_millis().to_string();
    let envelope = envelope(subject, request, request_id).with_header(TIMEOUT_HEADER, patience);
    reply(state.deps.bus.request(envelope, state.request_timeout).await?)
}

/// [`call_read`] for a change: the worker finishes it even if the gateway stops waiting, so a
/// committed change always gets its events (a client that saw a timeout retries; changes are
/// idempotent).
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    state: &AppState,
    subject: String,
    request: &Req,
    request_id: &str,
) -> Result<Resp, ApiError> {
    let envelope = envelope(subject, request, request_id);
    reply(state.deps.bus.request(envelope, state.request_timeout).await?)
}

/// [`call`] for work over many rows that the caller waits out (the operator's tenant delete; other
/// long work goes through [`operations::tracked`]): waits up to [`LONG_TIMEOUT`], and the worker
/// carries on to the end even if nobody waits.
pub async fn call_long<Req: Serialize, Resp: DeserializeOwned>(
    state: &AppState,
    subject: String,
    request: &Req,
    request_id: &str,
) -> Result<Resp, ApiError> {
    let envelope = envelope(subject, request, request_id);
    reply(state.deps.bus.request(envelope, LONG_TIMEOUT.max(state.request_timeout)).await?)
}

pub(crate) fn envelope<Req: Serialize>(subject: String, request: &Req, request_id: &str) -> Envelope {
    let payload = serde_json::to_vec(request).expect("requests serialise");
    Envelope::new(subject, payload).with_header(REQUEST_ID_HEADER, request_id)
}

pub(crate) fn reply<Resp: DeserializeOwned>(bytes: bytes::Bytes) -> Result<Resp, ApiError> {
    match serde_json::from_slice::<Reply<Resp>>(&bytes) {
        Ok(Reply::Ok(r)) => Ok(r),
        Ok(Reply::Error(e)) => Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "a worker sent an unreadable reply");
            Err(ApiError::Unavailable("a worker sent an unreadable reply".into()))
        }
    }
}
