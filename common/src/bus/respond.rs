//! Serving typed requests: every worker's request loop in one place. Each request is parsed, its
//! version checked, handled in a span named for it (with its request id), within the worker's
//! capacity and the caller's patience, and answered with the result or a typed error.
//!
//! - Beyond `capacity` requests in hand, a request is answered `busy` at once: a burst never
//!   becomes an unbounded heap of tasks.
//! - A request carrying [`TIMEOUT_HEADER`] is dropped (and its database work with it) once its
//!   caller has stopped waiting; it is answered `unavailable` in case anyone still listens.
//! - Errors reach the caller as fixed text; their causes are logged once, where they happen.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::{Bus, Request};
use crate::contract::{REQUEST_ID_HEADER, RemoteError, RemoteErrorCode, Reply, TIMEOUT_HEADER, VERSION, Versioned};

/// How a request ended, for the worker's metrics.
#[derive(Debug, Clone, Copy)]
pub struct Answered {
    pub endpoint: &'static str,
    /// `None` when it succeeded.
    pub error: Option<RemoteErrorCode>,
    pub took: Duration,
}

/// What a handler knows of its request besides the payload.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub request_id: Option<String>,
}

/// Answers requests for one worker; cheap to clone.
#[derive(Clone)]
pub struct Responder {
    bus: Arc<dyn Bus>,
    room: Arc<Semaphore>,
}

impl Responder {
    /// At most `capacity` requests in hand at once.
    pub fn new(bus: Arc<dyn Bus>, capacity: usize) -> Self {
        Self { bus, room: Arc::new(Semaphore::new(capacity.max(1))) }
    }

    /// Handles `request` as a task on `tasks` (or answers `busy` at once when full), then
    /// reports how it ended to `answered`, inside the request's span (so a worker's own log line
    /// there carries the request id).
    pub fn spawn<Q, A, F, Fut>(
        &self,
        tasks: &TaskTracker,
        endpoint: &'static str,
        request: Request,
        handle: F,
        answered: impl FnOnce(Answered) + Send + 'static,
    ) where
        Q: DeserializeOwned + Versioned + Send + 'static,
        A: Serialize + Send + 'static,
        F: FnOnce(Q, Context) -> Fut + Send + 'static,
        Fut: Future<Output = Result<A, RemoteError>> + Send,
    {
        let request_id = request.message.header(REQUEST_ID_HEADER).map(str::to_owned);
        let span = tracing::info_span!("request", endpoint, request_id = request_id.as_deref().unwrap_or("-"));
        let started = Instant::now();
        let Ok(permit) = self.room.clone().try_acquire_owned() else {
            let _entered = span.enter();
            tracing::warn!("at capacity; answering busy");
            let busy = RemoteError::new(RemoteErrorCode::Busy, "the worker is at capacity; retry shortly");
            let (bus, reply, payload) = (self.bus.clone(), request.reply, encode(&Reply::<A>::Error(busy)));
            tasks.spawn(
                async move {
                    send(bus.as_ref(), reply.as_deref(), payload).await;
                    answered(Answered { endpoint, error: Some(RemoteErrorCode::Busy), took: started.elapsed() });
                }
                .instrument(span.clone()),
            );
            return;
        };
        let bus = self.bus.clone();
        tasks.spawn(
            async move {
                let patience = request.message.header(TIMEOUT_HEADER).and_then(|ms| ms.parse().ok());
                let context = Context { request_id };
                let work = answer(&request.message.payload, context, handle);
                let reply = match patience.map(Duration::from_millis) {
                    None => work.await,
                    Some(patience) => tokio::time::timeout(patience, work).await.unwrap_or_else(|_| {
                        tracing::warn!(?patience, "the caller stopped waiting; its work is dropped");
                        Reply::Error(RemoteError::new(RemoteErrorCode::Unavailable, "the request took too long"))
                    }),
                };
                drop(permit);
                let error = match &reply {
                    Reply::Ok(_) => None,
                    Reply::Error(e) => Some(e.code),
                };
                send(bus.as_ref(), request.reply.as_deref(), encode(&reply)).await;
                answered(Answered { endpoint, error, took: started.elapsed() });
            }
            .instrument(span),
        );
    }
}

async fn answer<Q, A, F, Fut>(payload: &[u8], context: Context, handle: F) -> Reply<A>
where
    Q: DeserializeOwned + Versioned,
    F: FnOnce(Q, Context) -> Fut,
    Fut: Future<Output = Result<A, RemoteError>>,
{
    let bad = |message: String| Reply::Error(RemoteError::new(RemoteErrorCode::BadRequest, message));
    let request: Q = match serde_json::from_slice(payload) {
        Ok(request) => request,
        Err(e) => return bad(format!("malformed request: {e}")),
    };
    if request.version() != VERSION {
        return bad(format!("unsupported version {}: this worker speaks {VERSION}", request.version()));
    }
    match handle(request, context).await {
        Ok(a) => Reply::Ok(a),
        Err(e) => Reply::Error(e),
    }
}

fn encode<A: Serialize>(answer: &Reply<A>) -> Bytes {
    Bytes::from(serde_json::to_vec(answer).expect("replies serialise"))
}

async fn send(bus: &dyn Bus, reply: Option<&str>, payload: Bytes) {
    let Some(reply) = reply else { return };
    if let Err(e) = bus.respond(reply, payload).await {
        tracing::warn!(error = %e, "sending a reply failed");
    }
}

/// A failure of the worker's own dependencies, as the caller sees it: `unavailable` with fixed
/// text naming the step. The cause is logged here, once; it never reaches the caller.
pub fn unavailable(step: &str, cause: &(dyn std::error::Error + 'static)) -> RemoteError {
    tracing::warn!(error = %cause, cause = ?cause.source(), "{step} failed");
    let timed_out = cause.downcast_ref::<crate::store::StoreError>().is_some_and(crate::store::StoreError::is_timeout);
    let text = if timed_out { format!("{step} took longer than allowed") } else { format!("{step} failed") };
    RemoteError::new(RemoteErrorCode::Unavailable, text)
}

/// A request the caller got wrong: `bad_request` with this text (about the caller's input).
pub fn bad_request(message: impl Into<String>) -> RemoteError {
    RemoteError::new(RemoteErrorCode::BadRequest, message)
}
