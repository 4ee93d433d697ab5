//! Live connections, at the original service's WebSocket paths: a tenant's message events as they
//! happen (`/v1/ws/messages/{tenant_id}`, and as Server-Sent Events at
//! `/v1/tenants/{tenant_id}/events`), and searches over one socket (`/v1/ws/stream/{tenant_id}`).
//!
//! Each is authenticated and charged like any request when it opens (browsers, which cannot set
//! headers on a WebSocket or an `EventSource`, may give the key as `?token=` or `?api_key=`), held
//! within the tenant's and the gateway's caps, pinged every [`HEARTBEAT`], and closed with a
//! reason: a slow consumer, an unresponsive client, or the gateway stopping.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::{Extension, Router};
use common::contract::SearchHit;
use common::domain::{ConversationId, FieldError, Scope, SearchFilters, SearchMode, TenantId};
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use utoipa::IntoParams;

use super::search::{Search, search};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::AppQuery;
use crate::limit::Payer;
use crate::live::{Admitted, Ended, Feed, LiveEvent, Subscription};
use crate::metrics::ClosedLabels;
use crate::state::AppState;

/// How often an idle connection is pinged; a client silent for [`SILENCE`] is closed.
const HEARTBEAT: Duration = Duration::from_secs(30);
const SILENCE: Duration = Duration::from_secs(75);
/// Longest a client may take to take one frame: longer, and it is not reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest frame a client may send (a search of 10,000 characters with its filters fits).
const FRAME_MAX: usize = 64 * 1024;
/// What the original service sent for text that was not JSON.
const INVALID_JSON: &str = "Invalid JSON";

/// Whether a path is a live route, where a key may come as a query parameter.
pub(crate) fn takes_key_in_query(path: &str) -> bool {
    path.starts_with("/v1/ws/") || (path.starts_with("/v1/tenants/") && path.ends_with("/events"))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/ws/messages/{tenant_id}", get(message_socket))
        .route("/v1/ws/stream/{tenant_id}", get(search_socket))
        .route("/v1/tenants/{tenant_id}/events", get(event_stream))
}

/// The key on a WebSocket, for browsers (a header works too, and is better: URLs get logged).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SocketParams {
    /// The tenant's key (the original service's name), for clients that cannot set headers.
    #[expect(dead_code, reason = "read by authentication")]
    token: Option<String>,
    /// The same as `token`.
    #[expect(dead_code, reason = "read by authentication")]
    api_key: Option<String>,
    /// `/v1/ws/stream` only: searches are limited to this conversation unless a query's own
    /// filters name one.
    conversation_id: Option<String>,
}

/// Where an event stream starts, and what it carries.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// The tenant's key, for `EventSource`, which cannot set headers.
    #[expect(dead_code, reason = "read by authentication")]
    token: Option<String>,
    /// The same as `token`.
    #[expect(dead_code, reason = "read by authentication")]
    api_key: Option<String>,
    /// Resume after this event id (the `Last-Event-ID` header does the same); without it, the
    /// stream starts with the next event.
    since: Option<String>,
    /// Only these kinds, comma-separated: `stored`, `embedded`, `embedding_failed`, `updated`,
    /// `archived`, `restored`, `deleted`, `erased`. Default: all.
    events: Option<String>,
}

/// A tenant's message events over a WebSocket.
///
/// Send `{"action":"subscribe"}` (optionally with `"since": <event id>` to resume and
/// `"events": ["stored","embedded"]` to choose kinds); the answer is
/// `{"type":"subscribed","tenant_id":…}`, then each event as
/// `{"type":"message_event","event":"stored","event_id":…,"tenant_id":…,"at":…,"data":{…}}`.
/// `{"action":"unsubscribe"}` stops them; `{"action":"ping"}` answers `{"type":"pong"}`. Mistakes
/// get `{"type":"error","code":…,"message":…}` and the connection stays open. A client that falls
/// `MEMORY_LIVE_BUFFER` events behind gets an error `slow_consumer` with the last event id it
/// was sent, and close code 1008; the gateway stopping closes with 1001.
#[utoipa::path(
    get, path = "/v1/ws/messages/{tenant_id}", tag = "live",
    params(("tenant_id" = String, Path, description = "The tenant whose events are sent"), SocketParams),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol"),
        (status = 401, body = crate::error::Problem, description = "No valid key"),
        (status = 403, body = crate::error::Problem, description = "The key lacks `read` or is another tenant's"),
        (status = 426, body = crate::error::Problem, description = "Not a WebSocket handshake"),
        (status = 429, body = crate::error::Problem, description = "Rate limited, or the tenant holds `MEMORY_LIVE_MAX_PER_TENANT` live connections"),
        (status = 503, body = crate::error::Problem, description = "The gateway holds `MEMORY_LIVE_MAX_CONNECTIONS` live connections"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn message_socket(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(tenant_id): Path<String>,
    AppQuery(_params): AppQuery<SocketParams>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let (tenant, upgrade) = open(&principal, &tenant_id, upgrade)?;
    let admitted = state.live.admit(&tenant)?;
    let session = state.live.sessions.token();
    Ok(upgrade.on_upgrade(move |socket| async move {
        let reason = Socket::new(socket, &state, principal).events(tenant, admitted).await;
        state.metrics.live_closed.get_or_create(&ClosedLabels { reason }).inc();
        drop(session);
    }))
}

/// Searches over a WebSocket.
///
/// Send a search as JSON: `{"query":"…","top_k":5}`, with any field of `POST /v1/memory/search`
/// (`mode`, `explain`, `filters`, `candidate_limit`) and an optional `id` echoed in the answer.
/// The answer is `{"type":"search_results","query":…,"total":…,"results":[hit…]}`, each hit as
/// `POST /v1/memory/search` gives it (`message_id`, `content`, `role`, `score`, `importance`, …).
/// Each search is charged to the rate limits like a request; a refused or invalid one gets
/// `{"type":"error","code":…,"message":…}` and the connection stays open.
#[utoipa::path(
    get, path = "/v1/ws/stream/{tenant_id}", tag = "live",
    params(("tenant_id" = String, Path, description = "The tenant whose messages are searched"), SocketParams),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol"),
        (status = 401, body = crate::error::Problem, description = "No valid key"),
        (status = 403, body = crate::error::Problem, description = "The key lacks `read` or is another tenant's"),
        (status = 422, body = crate::error::Problem, description = "An invalid `conversation_id`"),
        (status = 426, body = crate::error::Problem, description = "Not a WebSocket handshake"),
        (status = 429, body = crate::error::Problem, description = "Rate limited, or the tenant holds `MEMORY_LIVE_MAX_PER_TENANT` live connections"),
        (status = 503, body = crate::error::Problem, description = "The gateway holds `MEMORY_LIVE_MAX_CONNECTIONS` live connections"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn search_socket(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(payer): Extension<Payer>,
    Path(tenant_id): Path<String>,
    AppQuery(params): AppQuery<SocketParams>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let conversation =
        params.conversation_id.map(ConversationId::parse).transpose().map_err(|e| ApiError::Invalid(e.0))?;
    let (tenant, upgrade) = open(&principal, &tenant_id, upgrade)?;
    let admitted = state.live.admit(&tenant)?;
    let session = state.live.sessions.token();
    Ok(upgrade.on_upgrade(move |socket| async move {
        let searching = Searching { tenant, conversation, payer };
        let reason = Socket::new(socket, &state, principal).searches(searching, admitted).await;
        state.metrics.live_closed.get_or_create(&ClosedLabels { reason }).inc();
        drop(session);
    }))
}

/// A tenant's message events as Server-Sent Events.
///
/// The first event, `subscribed`, confirms the subscription (`gap: true` when events after
/// `since` may have expired). Then each event has its kind as the SSE event name, its event id
/// as the SSE id (so a reconnecting `EventSource` resumes with `Last-Event-ID`), and the same JSON
/// as the WebSocket sends. A slow consumer gets an `error` event and the stream ends; so does
/// the gateway stopping, with a `close` event.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/events", tag = "live",
    params(
        ("tenant_id" = String, Path, description = "The tenant whose events are sent"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
        StreamParams,
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = LiveEvent, description = "The events, as they happen"),
        (status = 401, body = crate::error::Problem, description = "No valid key"),
        (status = 403, body = crate::error::Problem, description = "The key lacks `read` or is another tenant's"),
        (status = 422, body = crate::error::Problem, description = "An invalid `since` or `events`"),
        (status = 429, body = crate::error::Problem, description = "Rate limited, or the tenant holds `MEMORY_LIVE_MAX_PER_TENANT` live connections"),
        (status = 503, body = crate::error::Problem, description = "The events stream is unavailable, or the gateway holds `MEMORY_LIVE_MAX_CONNECTIONS` live connections"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn event_stream(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    AppQuery(params): AppQuery<StreamParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    principal.require(Scope::Read)?;
    let tenant = principal.tenant(Some(&tenant_id))?;
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let since = params.since.or(resume).map(|v| since(&v)).transpose()?;
    let kinds = Subscription::kinds(params.events.as_deref().unwrap_or_default().split(','))?;
    let admitted = state.live.admit(&tenant)?;
    let subscription = Subscription { tenant, kinds, since };
    let following = subscription.follow(&state.deps.bus, &state.deps.subjects, &state.live).await?;
    let subscribed = Event::default().event("subscribed").json_data(subscribed(&subscription, following.gap));
    let first = subscribed.expect("a subscription serialises");
    let open = Streaming {
        state,
        principal,
        feed: following.feed,
        _admitted: admitted,
        first: Some(first),
        last: None,
        done: false,
    };
    let events = futures::stream::unfold(open, |mut open| async move {
        let event = open.next().await?;
        Some((Ok(event), open))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(HEARTBEAT)))
}

/// What an event stream holds while open.
struct Streaming {
    state: AppState,
    principal: Principal,
    feed: mpsc::Receiver<Feed>,
    /// Its place among the live connections, freed when the stream is dropped.
    _admitted: Admitted,
    first: Option<Event>,
    /// The last event id sent.
    last: Option<u64>,
    /// Ended by the gateway (the reason was counted).
    done: bool,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        if !self.done {
            self.state.metrics.live_closed.get_or_create(&ClosedLabels { reason: "client" }).inc();
        }
    }
}

impl Streaming {
    /// The next SSE event; `None` ends the stream (and frees its place).
    async fn next(&mut self) -> Option<Event> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.done {
            return None;
        }
        let item = tokio::select! {
            () = self.state.shutdown.cancelled() => None,
            item = self.feed.recv() => Some(item.unwrap_or(Feed::End(Ended::Interrupted))),
        };
        let closed = |reason| self.state.metrics.live_closed.get_or_create(&ClosedLabels { reason }).inc();
        let (name, body) = match item {
            Some(Feed::Event(_)) if !self.state.keys.still_valid(&self.principal) => {
                closed("revoked");
                ("error", revoked_frame())
            }
            Some(Feed::Event(event)) => {
                self.state.metrics.live_events.inc();
                self.last = Some(event.event_id);
                let id = event.event_id.to_string();
                return Some(Event::default().id(id).event(event.event).json_data(&event).expect("events serialise"));
            }
            None => {
                closed("shutdown");
                (
                    "close",
                    json!({"type": "close", "code": "shutting_down", "message": "the gateway is stopping; reconnect with Last-Event-ID"}),
                )
            }
            Some(Feed::End(end)) => {
                closed(end_reason(end));
                ("error", ended(end, self.last))
            }
        };
        self.done = true;
        Some(Event::default().event(name).json_data(body).expect("JSON serialises"))
    }
}

/// Checks a socket's key and tenant, then that it is a WebSocket handshake.
fn open(
    principal: &Principal,
    tenant_id: &str,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<(TenantId, WebSocketUpgrade), ApiError> {
    principal.require(Scope::Read)?;
    let tenant = principal.tenant(Some(tenant_id))?;
    let upgrade = upgrade.map_err(|e| ApiError::UpgradeRequired(e.body_text()))?;
    let upgrade = upgrade.max_message_size(FRAME_MAX).max_frame_size(FRAME_MAX).max_write_buffer_size(1 << 20);
    Ok((tenant, upgrade))
}

fn since(value: &str) -> Result<u64, ApiError> {
    value.trim().parse().map_err(|_| {
        ApiError::Invalid(vec![FieldError::new("since", "invalid", format!("{value:?} is not an event id"))])
    })
}

fn subscribed(subscription: &Subscription, gap: bool) -> Value {
    let events: Vec<&str> = subscription.kinds.iter().map(|k| k.as_str()).collect();
    let mut frame = json!({"type": "subscribed", "tenant_id": subscription.tenant, "events": events});
    if let Some(since) = subscription.since {
        frame["since"] = json!(since);
        frame["gap"] = json!(gap);
    }
    frame
}

fn end_reason(end: Ended) -> &'static str {
    match end {
        Ended::SlowConsumer { .. } => "slow_consumer",
        Ended::Interrupted => "interrupted",
    }
}

/// The error frame that ends a feed.
fn ended(end: Ended, last: Option<u64>) -> Value {
    match end {
        Ended::SlowConsumer { buffer } => json!({
            "type": "error",
            "code": "slow_consumer",
            "message": format!("{buffer} events waited unsent: the client reads too slowly; resume after last_event_id"),
            "last_event_id": last,
        }),
        Ended::Interrupted => json!({
            "type": "error",
            "code": "unavailable",
            "message": "the events stream cannot be read right now; resume after last_event_id",
            "last_event_id": last,
        }),
    }
}

/// An error frame from a problem: the original's `message`, and our `code` beside it.
fn error_frame(e: &ApiError) -> Value {
    let problem = e.problem();
    let mut frame = json!({"type": "error", "code": problem.code, "status": problem.status, "message": problem.detail});
    if !problem.errors.is_empty() {
        frame["errors"] = json!(problem.errors);
    }
    if let Some(retry_after) = problem.retry_after {
        frame["retry_after"] = json!(retry_after);
    }
    frame
}

fn revoked_frame() -> Value {
    invalid("unauthorized", "the key was revoked or has expired")
}

/// A text frame that was not what the route takes.
fn invalid(code: &'static str, message: impl Into<String>) -> Value {
    json!({"type": "error", "code": code, "message": message.into()})
}

/// What a search socket searches as.
struct Searching {
    tenant: TenantId,
    conversation: Option<ConversationId>,
    payer: Payer,
}

/// One search frame.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchFrame {
    /// Echoed in the answer, to match answers to questions.
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    query: Option<String>,
    top_k: Option<u32>,
    #[serde(default)]
    mode: SearchMode,
    #[serde(default)]
    explain: bool,
    #[serde(default)]
    filters: SearchFilters,
    candidate_limit: Option<u32>,
}

/// What a client of the events socket may send.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Subscribe {
    #[expect(dead_code, reason = "matched before")]
    action: String,
    since: Option<u64>,
    #[serde(default)]
    events: Vec<String>,
}

/// An open WebSocket and its heartbeat.
struct Socket<'a> {
    socket: WebSocket,
    state: &'a AppState,
    /// Who opened it: checked as it goes, so a revoked or expired key stops.
    principal: Principal,
    heard: Instant,
    beat: tokio::time::Interval,
}

/// What a session loop does next.
enum Step {
    Frame(Message),
    Feed(Feed),
    Beat,
    /// The session ends for this reason.
    Close(&'static str),
}

impl<'a> Socket<'a> {
    fn new(socket: WebSocket, state: &'a AppState, principal: Principal) -> Self {
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { socket, state, principal, heard: Instant::now(), beat }
    }

    /// Sends one JSON frame; false when the client is gone or does not take it in time.
    async fn send(&mut self, frame: &Value) -> bool {
        let text = Message::text(frame.to_string());
        matches!(tokio::time::timeout(SEND_TIMEOUT, self.socket.send(text)).await, Ok(Ok(())))
    }

    /// Closes with a code and reason (for a client that still reads).
    async fn close(mut self, code: u16, reason: &'static str) {
        let frame = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
        let _ = tokio::time::timeout(SEND_TIMEOUT, self.socket.send(frame)).await;
    }

    /// The next thing to act on: a client frame, a feed item (if subscribed), a heartbeat, or
    /// the gateway stopping.
    async fn step(&mut self, feed: &mut Option<mpsc::Receiver<Feed>>) -> Step {
        let next_feed = async {
            match feed {
                Some(rx) => rx.recv().await.unwrap_or(Feed::End(Ended::Interrupted)),
                None => std::future::pending().await,
            }
        };
        let step = tokio::select! {
            () = self.state.shutdown.cancelled() => Step::Close("shutdown"),
            frame = self.socket.recv() => match frame {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Step::Close("client"),
                Some(Ok(frame)) => {
                    self.heard = Instant::now();
                    Step::Frame(frame)
                }
            },
            item = next_feed => Step::Feed(item),
            _ = self.beat.tick() => Step::Beat,
        };
        match step {
            Step::Frame(_) | Step::Beat if !self.state.keys.still_valid(&self.principal) => Step::Close("revoked"),
            step => step,
        }
    }

    /// A heartbeat: a ping, or the end of a client silent too long.
    async fn beat(&mut self) -> Result<(), &'static str> {
        if self.heard.elapsed() > SILENCE {
            return Err("unresponsive");
        }
        let ping = tokio::time::timeout(SEND_TIMEOUT, self.socket.send(Message::Ping(Default::default()))).await;
        if matches!(ping, Ok(Ok(()))) { Ok(()) } else { Err("unresponsive") }
    }

    /// Ends a session for `reason`, telling a client that still reads why.
    async fn finish(mut self, reason: &'static str, last: Option<u64>, end: Option<Ended>) -> &'static str {
        let (frame, code, text) = match (reason, end) {
            ("shutdown", _) => (None, close_code::AWAY, "the gateway is stopping; reconnect"),
            (_, Some(end @ Ended::SlowConsumer { .. })) => (Some(ended(end, last)), close_code::POLICY, reason),
            (_, Some(end)) => (Some(ended(end, last)), close_code::ERROR, reason),
            ("unresponsive", None) => (None, close_code::POLICY, "no answer to pings"),
            ("revoked", None) => (Some(revoked_frame()), close_code::POLICY, "the key was revoked or has expired"),
            // The client closed, or went.
            _ => return reason,
        };
        let told = match &frame {
            Some(frame) => self.send(frame).await,
            None => true,
        };
        if told {
            self.close(code, text).await;
        }
        reason
    }

    /// The events socket: subscribe, unsubscribe, ping; events while subscribed.
    async fn events(mut self, tenant: TenantId, admitted: Admitted) -> &'static str {
        let mut feed: Option<mpsc::Receiver<Feed>> = None;
        let mut last: Option<u64> = None;
        let (reason, end) = loop {
            let reply = match self.step(&mut feed).await {
                Step::Close(reason) => break (reason, None),
                Step::Beat => match self.beat().await {
                    Ok(()) => continue,
                    Err(reason) => break (reason, None),
                },
                Step::Feed(Feed::Event(event)) => {
                    last = Some(event.event_id);
                    self.state.metrics.live_events.inc();
                    json!(event)
                }
                Step::Feed(Feed::End(end)) => break (end_reason(end), Some(end)),
                Step::Frame(Message::Text(text)) => match self.action(&tenant, text.as_str()).await {
                    Action::Reply(reply) => reply,
                    Action::Subscribed(reply, following) => {
                        feed = Some(following);
                        reply
                    }
                    Action::Unsubscribed(reply) => {
                        feed = None;
                        reply
                    }
                },
                Step::Frame(Message::Binary(_)) => invalid("invalid_json", INVALID_JSON),
                Step::Frame(_) => continue,
            };
            if !self.send(&reply).await {
                break ("unresponsive", None);
            }
        };
        drop(admitted);
        self.finish(reason, last, end).await
    }

    /// Answers one text frame of the events socket.
    async fn action(&mut self, tenant: &TenantId, text: &str) -> Action {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return Action::Reply(invalid("invalid_json", INVALID_JSON));
        };
        let action = frame.get("action").cloned().unwrap_or(Value::Null);
        match action.as_str() {
            Some("ping") => Action::Reply(json!({"type": "pong"})),
            Some("unsubscribe") => Action::Unsubscribed(json!({"type": "unsubscribed", "tenant_id": tenant})),
            Some("subscribe") => {
                let subscribe = match serde_json::from_value::<Subscribe>(frame) {
                    Ok(s) => s,
                    Err(e) => return Action::Reply(invalid("malformed_body", format!("Invalid subscription: {e}"))),
                };
                let kinds = match Subscription::kinds(subscribe.events.iter().map(String::as_str)) {
                    Ok(kinds) => kinds,
                    Err(e) => return Action::Reply(error_frame(&e)),
                };
                let subscription = Subscription { tenant: tenant.clone(), kinds, since: subscribe.since };
                match subscription.follow(&self.state.deps.bus, &self.state.deps.subjects, &self.state.live).await {
                    Ok(following) => Action::Subscribed(subscribed(&subscription, following.gap), following.feed),
                    Err(e) => Action::Reply(error_frame(&e)),
                }
            }
            // The original's text: Python's `str` of what was sent (`None` when absent).
            Some(other) => Action::Reply(invalid("unknown_action", format!("Unknown action: {other}"))),
            None if action.is_null() => Action::Reply(invalid("unknown_action", "Unknown action: None")),
            None => Action::Reply(invalid("unknown_action", format!("Unknown action: {action}"))),
        }
    }

    /// The search socket: one search per text frame, answered in order.
    async fn searches(mut self, searching: Searching, admitted: Admitted) -> &'static str {
        let mut no_feed = None;
        let reason = loop {
            let reply = match self.step(&mut no_feed).await {
                Step::Close(reason) => break reason,
                Step::Beat => match self.beat().await {
                    Ok(()) => continue,
                    Err(reason) => break reason,
                },
                Step::Frame(Message::Text(text)) => self.search(&searching, text.as_str()).await,
                Step::Frame(Message::Binary(_)) => invalid("invalid_json", INVALID_JSON),
                Step::Frame(_) | Step::Feed(_) => continue,
            };
            if !self.send(&reply).await {
                break "unresponsive";
            }
        };
        drop(admitted);
        self.finish(reason, None, None).await
    }

    /// Answers one search frame.
    async fn search(&mut self, searching: &Searching, text: &str) -> Value {
        let frame = match serde_json::from_str::<Value>(text) {
            Ok(frame) => frame,
            Err(_) => return invalid("invalid_json", INVALID_JSON),
        };
        if frame.get("query").is_none_or(Value::is_null) {
            return invalid("validation_failed", "Query is required");
        }
        let mut frame = match serde_json::from_value::<SearchFrame>(frame) {
            Ok(frame) => frame,
            Err(e) => return invalid("malformed_body", format!("Invalid search: {e}")),
        };
        let id = frame.id.take();
        let answer = self.answer(searching, frame).await;
        let mut reply = match answer {
            Ok((query, results, partial)) => {
                let mut reply =
                    json!({"type": "search_results", "query": query, "total": results.len(), "results": results});
                if let Some(partial) = partial {
                    reply["partial"] = json!(partial);
                }
                reply
            }
            Err(e) => error_frame(&e),
        };
        if let Some(id) = id {
            reply["id"] = id;
        }
        reply
    }

    async fn answer(
        &mut self,
        searching: &Searching,
        frame: SearchFrame,
    ) -> Result<(String, Vec<SearchHit>, Option<String>), ApiError> {
        let payer = &searching.payer;
        let decision = self.state.limiter.check(&payer.client, payer.tenant.as_ref(), 1).await;
        if !decision.allowed {
            return Err(ApiError::refused(&decision, 1, "searches"));
        }
        let mut filters = frame.filters;
        if filters.conversation_id.is_none() {
            filters.conversation_id.clone_from(&searching.conversation);
        }
        let query = frame.query.unwrap_or_default();
        let request = Search {
            tenant_id: searching.tenant.to_string(),
            query: query.clone(),
            top_k: frame.top_k.unwrap_or(common::domain::TOP_K_DEFAULT),
            mode: frame.mode,
            explain: frame.explain,
            filters,
            exact: false,
            candidate_limit: frame.candidate_limit,
        };
        let request_id = uuid::Uuid::now_v7().to_string();
        let response = search(self.state, &request_id, Vec::new(), request).await?;
        Ok((query, response.items, response.partial))
    }
}

/// What a frame of the events socket leads to.
enum Action {
    Reply(Value),
    Subscribed(Value, mpsc::Receiver<Feed>),
    Unsubscribed(Value),
}
