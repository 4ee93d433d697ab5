//! Every failure the API can answer with, mapped once to an RFC 9457 problem+json response with a
//! stable `code`. The match has no catch-all: a new variant does not compile until it has a status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::bus::BusError;
use common::contract::{RemoteError, RemoteErrorCode};
use common::domain::{FieldError, MessageId, Scope};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid API key is required (x-api-key or Authorization: Bearer)")]
    Unauthorized,
    #[error("this key lacks the `{}` scope", .0.as_str())]
    InsufficientScope(Scope),
    #[error("this key may not act for that tenant")]
    TenantForbidden,
    #[error("only the operator key may do this")]
    OperatorOnly,
    #[error("tenant {0} was not found")]
    TenantNotFound(String),
    #[error("tenant {0} exists already")]
    TenantExists(String),
    #[error("key {0} was not found")]
    KeyNotFound(String),
    #[error("the request has invalid fields")]
    Invalid(Vec<FieldError>),
    #[error("the request body is not valid JSON for this endpoint: {0}")]
    MalformedBody(String),
    #[error("the query string is invalid: {0}")]
    MalformedQuery(String),
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("`{0}` is not a valid message id (a UUID)")]
    InvalidMessageId(String),
    #[error("message {0} was not found")]
    MessageNotFound(MessageId),
    #[error("message {0} is still queued: edit it once it is stored (its status shows when)")]
    MessageQueued(MessageId),
    #[error("{0}")]
    NotFound(String),
    #[error("no route for this path")]
    RouteNotFound,
    #[error("API version {0} is not supported; use v1")]
    UnsupportedVersion(String),
    #[error("this path takes a WebSocket handshake: {0}")]
    UpgradeRequired(String),
    #[error("this path does not take this method (see the Allow header)")]
    MethodNotAllowed,
    #[error("message {message_id} was accepted, but did not reach the requested state in time")]
    WaitTimeout { message_id: MessageId },
    #[error("a backing service did not answer in time")]
    UpstreamTimeout,
    #[error(
        "message {message_id} may not have been accepted: the stream did not confirm in time; retry with this message_id, it is stored once"
    )]
    PublishTimeout { message_id: MessageId },
    #[error(
        "message {message_id} was not accepted: the message bus is unavailable; retry with this message_id, it is stored once"
    )]
    PublishFailed { message_id: MessageId },
    #[error("the message is larger than the message bus accepts")]
    MessageTooLarge,
    #[error(
        "message {message_id} was not accepted: the ingest queue is full (the pipeline is behind or its database is down); retry with this message_id later, it is stored once"
    )]
    QueueFull { message_id: MessageId },
    #[error("the service is temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("the service is handling as many requests as it can; retry shortly")]
    Overloaded,
    #[error("the request took longer than the service allows")]
    RequestTimeout,
    #[error("the request body stopped arriving")]
    BodyTimeout,
    #[error("tenant {tenant} has {limit} live connections open on this gateway, the most it may; close one first")]
    TooManyLiveConnections { tenant: String, limit: usize },
    #[error("{}", rate_limited(.0))]
    RateLimited(Box<crate::limit::Decision>),
}

/// The original service's texts: `Rate limit exceeded: 200/minute`, `Tenant rate limit exceeded
/// for acme: 120/minute`.
fn rate_limited(d: &crate::limit::Decision) -> String {
    match (d.scope, &d.tenant) {
        (crate::limit::Scope::Tenant, Some(t)) => {
            format!("Tenant rate limit exceeded for {}: {}", t.tenant_id, d.limit)
        }
        (crate::limit::Scope::Tenant, None) => format!("Tenant rate limit exceeded: {}", d.limit),
        (crate::limit::Scope::Client, _) => format!("Rate limit exceeded: {}", d.limit),
    }
}

/// Most field errors one problem lists; `errors_omitted` counts the rest.
pub const FIELD_ERRORS_MAX: usize = 20;
/// Longest `detail`, and a field error's longest path and message, in characters: input quoted
/// back (a field name, say) never makes a problem large. With the list cap, a problem stays
/// under about 16 KiB whatever it was sent.
const DETAIL_MAX: usize = 1024;
const FIELD_PATH_MAX: usize = 200;
const FIELD_MESSAGE_MAX: usize = 300;

/// `text` cut to `max` characters, marked with `…` when cut.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// The RFC 9457 body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type: `urn:memory:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable, machine-readable: codes are added, never renamed.
    pub code: &'static str,
    /// Per-field problems, on `validation_failed`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Field errors found beyond the first [`FIELD_ERRORS_MAX`], not listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors_omitted: Option<usize>,
    /// The message concerned, on `wait_timeout`, `publish_timeout` and `publish_failed`: retry
    /// with it as `message_id` and the message is stored once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
    /// On `rate_limited`: seconds until the request would pass (also in `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// On `unsupported_api_version`, the original service's fields beside ours.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub version: Option<VersionProblem>,
}

/// The original service's answer to an unsupported API version.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionProblem {
    /// `Unsupported API version`.
    pub error: &'static str,
    /// The version asked for (`v2`).
    pub version: String,
    /// `["v1"]`.
    pub supported_versions: [&'static str; 1],
}

impl ApiError {
    /// A refused rate-limit charge of `cost` `what`s: 429, or 422 `exceeds_rate_limit` when the
    /// cost alone is more than the whole quota (waiting would never help).
    pub fn refused(decision: &crate::limit::Decision, cost: u32, what: &str) -> Self {
        if decision.retry_after == std::time::Duration::MAX {
            let (count, secs) = (decision.limit.count, decision.limit.period.as_secs());
            Self::Invalid(vec![FieldError::new(
                "messages",
                "exceeds_rate_limit",
                format!("{cost} {what} exceed the rate limit of {count} per {secs}s"),
            )])
        } else {
            Self::RateLimited(Box::new(decision.clone()))
        }
    }

    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::InsufficientScope(_) => (StatusCode::FORBIDDEN, "insufficient_scope"),
            Self::TenantForbidden => (StatusCode::FORBIDDEN, "tenant_forbidden"),
            Self::OperatorOnly => (StatusCode::FORBIDDEN, "operator_only"),
            Self::TenantNotFound(_) => (StatusCode::NOT_FOUND, "tenant_not_found"),
            Self::TenantExists(_) => (StatusCode::CONFLICT, "tenant_exists"),
            Self::KeyNotFound(_) => (StatusCode::NOT_FOUND, "key_not_found"),
            Self::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            Self::MalformedBody(_) => (StatusCode::BAD_REQUEST, "malformed_body"),
            Self::MalformedQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            Self::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::InvalidMessageId(_) => (StatusCode::BAD_REQUEST, "invalid_message_id"),
            Self::MessageNotFound(_) => (StatusCode::NOT_FOUND, "message_not_found"),
            Self::MessageQueued(_) => (StatusCode::CONFLICT, "message_queued"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::RouteNotFound => (StatusCode::NOT_FOUND, "route_not_found"),
            Self::UnsupportedVersion(_) => (StatusCode::BAD_REQUEST, "unsupported_api_version"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::UpgradeRequired(_) => (StatusCode::UPGRADE_REQUIRED, "websocket_required"),
            Self::WaitTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "wait_timeout"),
            // A dependency that did not answer in time is an outage to the client: retry later.
            Self::UpstreamTimeout => (StatusCode::SERVICE_UNAVAILABLE, "upstream_timeout"),
            Self::PublishTimeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, "publish_timeout"),
            Self::PublishFailed { .. } => (StatusCode::SERVICE_UNAVAILABLE, "publish_failed"),
            Self::QueueFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, "queue_full"),
            Self::MessageTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Self::RequestTimeout => (StatusCode::GATEWAY_TIMEOUT, "request_timeout"),
            Self::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::TooManyLiveConnections { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_live_connections"),
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, code) = self.status_and_code();
        Problem {
            kind: format!("urn:memory:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: clip(&self.to_string(), DETAIL_MAX),
            code,
            errors: match self {
                Self::Invalid(errors) => errors
                    .iter()
                    .take(FIELD_ERRORS_MAX)
                    .map(|e| FieldError {
                        field: clip(&e.field, FIELD_PATH_MAX),
                        code: clip(&e.code, FIELD_PATH_MAX),
                        message: clip(&e.message, FIELD_MESSAGE_MAX),
                    })
                    .collect(),
                _ => Vec::new(),
            },
            errors_omitted: match self {
                Self::Invalid(errors) if errors.len() > FIELD_ERRORS_MAX => Some(errors.len() - FIELD_ERRORS_MAX),
                _ => None,
            },
            message_id: match self {
                Self::WaitTimeout { message_id }
                | Self::MessageQueued(message_id)
                | Self::PublishTimeout { message_id }
                | Self::PublishFailed { message_id }
                | Self::QueueFull { message_id } => Some(*message_id),
                _ => None,
            },
            retry_after: match self {
                Self::RateLimited(d) => {
                    Some((d.retry_after.as_secs() + u64::from(d.retry_after.subsec_nanos() > 0)).max(1))
                }
                _ => None,
            },
            version: match self {
                Self::UnsupportedVersion(version) => Some(VersionProblem {
                    error: "Unsupported API version",
                    version: clip(version, FIELD_PATH_MAX),
                    supported_versions: ["v1"],
                }),
                _ => None,
            },
        }
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        // The cause is logged here, once; the client gets fixed text.
        match e {
            BusError::Timeout { .. } => {
                tracing::warn!(error = %e, "a worker did not answer in time");
                Self::UpstreamTimeout
            }
            BusError::NoResponders { .. } => {
                tracing::warn!(error = %e, "no worker serves this request");
                Self::Unavailable("no worker is serving this request".into())
            }
            BusError::TooLarge => Self::MessageTooLarge,
            BusError::Full(reason) => {
                tracing::warn!(%reason, "a stream is full");
                Self::Unavailable("a stream is full".into())
            }
            BusError::Closed
            | BusError::BadUrl { .. }
            | BusError::Credentials(_)
            | BusError::Connect { .. }
            | BusError::Nats { .. } => {
                tracing::error!(error = %e, cause = ?std::error::Error::source(&e), "bus failure");
                Self::Unavailable("the message bus is unreachable".into())
            }
        }
    }
}

impl From<RemoteError> for ApiError {
    fn from(e: RemoteError) -> Self {
        match e.code {
            // The gateway validated first, so this is a contract mismatch between versions.
            RemoteErrorCode::BadRequest => Self::MalformedQuery(e.message),
            RemoteErrorCode::Unavailable | RemoteErrorCode::NoActiveSpace => Self::Unavailable(e.message),
            RemoteErrorCode::NotFound => Self::NotFound(e.message),
            RemoteErrorCode::Queued => Self::Unavailable(e.message),
            RemoteErrorCode::Busy => Self::Overloaded,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // The cause was logged where it happened (here or in the worker, under the same request
        // id); this only notes the answer.
        if status.is_server_error() {
            tracing::debug!(code = problem.code, detail = %problem.detail, "request failed");
        }
        let mut response = (status, Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        match self {
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"memory\""));
            }
            // Every 503 says when to come back: the service sheds load or a dependency is away,
            // and either passes.
            Self::Overloaded | Self::ShuttingDown => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Unavailable(_) | Self::PublishFailed { .. } | Self::PublishTimeout { .. } | Self::UpstreamTimeout => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            }
            // A full queue drains at the pipeline's pace: come back later than for a blip.
            Self::QueueFull { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            }
            Self::UpgradeRequired(_) => {
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            // The client stopped sending: the rest of its request is not coming.
            Self::BodyTimeout => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}
