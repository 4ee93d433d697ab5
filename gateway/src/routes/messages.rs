//! `POST /v1/messages`, `POST /v1/messages/batch`, `GET /v1/messages/{id}`. The gateway never
//! writes a message: it validates, publishes `MessageReceived` to the ingest stream and answers
//! once the stream has stored it (or, with `?wait=`, once the embedder reports progress).

use axum::Extension;
use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use common::bus::{BusError, Envelope, Published};
use common::contract::{EventKind, GetMessageRequest, GetMessageResponse, MessageReceived, REQUEST_ID_HEADER, VERSION};
use common::domain::{
    BATCH_MAX, FieldError, MessageId, MessageInput, MessageStatus, MessageView, NewMessage, Scope, TenantId,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{call, request_id};
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::extract::{AppJson, AppQuery};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/messages", post(create_message))
        .route("/v1/messages/batch", post(create_messages))
        .route("/v1/messages/{id}", get(get_message))
        .route("/v1/messages/{id}/archive", post(archive_message))
        .route("/v1/messages/{id}/restore", post(restore_message))
}

/// How long `POST /v1/messages` waits before answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Wait {
    /// Until the embedder has stored the message (status `pending` or later).
    Stored,
    /// Until the message is embedded, hence searchable by meaning, or `failed` (the provider
    /// refused it).
    Embedded,
}

impl Wait {
    fn reached(self, status: MessageStatus) -> bool {
        match self {
            Self::Stored => status != MessageStatus::Queued,
            Self::Embedded => matches!(status, MessageStatus::Embedded | MessageStatus::Failed),
        }
    }
    /// Whether an event (by its subject) ends the wait.
    fn ends(self, subject: &str) -> bool {
        let kinds: &[EventKind] = match self {
            Self::Stored => &[EventKind::Stored],
            Self::Embedded => &[EventKind::Embedded, EventKind::EmbeddingFailed],
        };
        let kind = subject.rsplit('.').nth(1);
        kinds.iter().any(|k| Some(k.as_str()) == kind)
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CreateParams {
    /// Answer 201 once the message is `stored` or `embedded` (bounded wait; 504 on timeout).
    wait: Option<Wait>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetParams {
    /// When given, a message of another tenant is not found.
    tenant_id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1–100 messages. Each is validated on its own: invalid items are reported, valid ones queued.
    #[schema(value_type = Vec<MessageInput>)]
    messages: Vec<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    Queued,
    Rejected,
}

/// A message as the API answers it: our fields, and the original service's names for three of
/// them beside them, so its clients read our answers unchanged.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageBody {
    #[serde(flatten)]
    view: MessageView,
    /// `metadata`, under the original service's name.
    #[schema(value_type = Object)]
    message_metadata: serde_json::Map<String, Value>,
    /// `importance`, under the original service's name.
    importance_score: Option<f64>,
    /// `status` in the original service's terms: `pending` (queued or stored, not yet
    /// embedded), `completed` (embedded) or `failed`.
    embedding_status: &'static str,
}

impl From<MessageView> for MessageBody {
    fn from(view: MessageView) -> Self {
        Self {
            message_metadata: view.metadata.clone(),
            importance_score: view.importance,
            embedding_status: view.status.embedding_status(),
            view,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItem {
    /// Position in the request's `messages`.
    index: usize,
    status: ItemStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<MessageId>,
    /// Why the item was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Problem>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    queued: usize,
    rejected: usize,
    /// One entry per request item, in order.
    results: Vec<BatchItem>,
    /// The original service's fields. The queued messages, in order.
    created: Vec<MessageBody>,
    /// Always empty (a batch creates).
    updated: Vec<MessageBody>,
    /// Always empty (a batch creates).
    #[schema(value_type = Vec<String>)]
    deleted: Vec<MessageId>,
    /// The rejected items: `message_index` in the request, `error` the problem's `detail`, `code`
    /// its code.
    errors: Vec<BatchError>,
}

/// A rejected item of a batch, as the original service listed it (and our `code`).
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchError {
    message_index: usize,
    error: String,
    code: &'static str,
}

impl BatchResponse {
    /// The answer to a batch whose items ended as `outcomes`, in request order.
    fn new(outcomes: Vec<Result<NewMessage, ApiError>>) -> Self {
        let (mut results, mut created, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        for (index, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Ok(message) => {
                    results.push(BatchItem {
                        index,
                        status: ItemStatus::Queued,
                        id: Some(message.message_id),
                        error: None,
                    });
                    created.push(MessageBody::from(MessageView::queued(&message)));
                }
                Err(e) => {
                    let problem = e.problem();
                    errors.push(BatchError { message_index: index, error: problem.detail.clone(), code: problem.code });
                    results.push(BatchItem {
                        index,
                        status: ItemStatus::Rejected,
                        id: problem.message_id,
                        error: Some(problem),
                    });
                }
            }
        }
        Self {
            queued: created.len(),
            rejected: errors.len(),
            results,
            created,
            updated: Vec::new(),
            deleted: Vec::new(),
            errors,
        }
    }
}

/// Publishes to the ingest stream. A failure names the message id, so the client can retry with
/// it and still have the message stored once.
pub(crate) async fn publish(state: &AppState, m: &NewMessage, request_id: &str) -> Result<Published, ApiError> {
    // The stream's duplicate window is shared by every tenant: the tenant is part of the id.
    let published = publish_as(state, m, None, request_id, &m.key().to_string()).await?;
    if !published.duplicate {
        return Ok(published);
    }
    // The stream saw this id within its duplicate window. If nothing of it is left (it was
    // deleted since), this is a new message: publish it again under a duplicate id of its own.
    match lookup(state, m.tenant_id.clone(), m.message_id, request_id).await {
        Ok(None) => publish_as(state, m, None, request_id, &format!("{}.{}", m.key(), MessageId::new())).await,
        Ok(Some(_)) => Ok(published),
        Err(e) => {
            tracing::warn!(error = %e, message_id = %m.message_id, "cannot tell a duplicate from a re-sent deleted message; taking it as a duplicate");
            Ok(published)
        }
    }
}

/// Publishes with `dedup` as the stream's duplicate id (`<tenant>/<id>`, unless an import needs
/// one of its own: a message erased and imported again within the stream's duplicate window
/// must not be taken for the erased one).
pub(crate) async fn publish_as(
    state: &AppState,
    m: &NewMessage,
    importance: Option<f64>,
    request_id: &str,
    dedup: &str,
) -> Result<Published, ApiError> {
    let event = MessageReceived { v: VERSION, message: MessageInput::from(m), importance };
    let payload = serde_json::to_vec(&event).expect("events serialise");
    let envelope = Envelope::new(state.deps.subjects.ingest(&m.tenant_id, m.message_id), payload)
        .with_header(REQUEST_ID_HEADER, request_id);
    let message_id = m.message_id;
    let published = state.deps.bus.publish(envelope, Some(dedup)).await.map_err(|e| match e {
        BusError::Timeout { .. } => ApiError::PublishTimeout { message_id },
        BusError::TooLarge => ApiError::MessageTooLarge,
        BusError::Full(reason) => {
            tracing::warn!(%reason, %message_id, "the ingest stream is full: refusing the message");
            ApiError::QueueFull { message_id }
        }
        e => {
            tracing::error!(error = %e, cause = ?std::error::Error::source(&e), "publishing to the ingest stream failed");
            ApiError::PublishFailed { message_id }
        }
    })?;
    if !published.duplicate {
        state.metrics.accepted.inc();
    }
    Ok(published)
}

async fn lookup(
    state: &AppState,
    tenant_id: TenantId,
    id: MessageId,
    request_id: &str,
) -> Result<Option<MessageView>, ApiError> {
    let request = GetMessageRequest { v: VERSION, tenant_id, message_id: id };
    let response: GetMessageResponse =
        super::call_read(state, state.deps.subjects.get_message(), &request, request_id).await?;
    Ok(response.message)
}

/// Where the message is read: ids are unique within a tenant, so the URL names the tenant too
/// (a tenant key may leave it out; the operator key may not).
fn location(tenant: &TenantId, id: MessageId) -> [(header::HeaderName, HeaderValue); 1] {
    let url = format!("/v1/messages/{id}?tenant_id={tenant}");
    [(header::LOCATION, HeaderValue::from_str(&url).expect("tenant ids and uuids are header-safe"))]
}

/// Store one message.
#[utoipa::path(
    post, path = "/v1/messages", tag = "messages",
    params(CreateParams),
    request_body = MessageInput,
    responses(
        (status = 202, description = "Queued: in the ingest stream, not yet stored", body = MessageBody),
        (status = 201, description = "With `wait`: stored (or embedded)", body = MessageBody),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 413, body = Problem),
        (status = 415, body = Problem), (status = 422, body = Problem),
        (status = 503, description = "Not accepted (`publish_failed`), or not confirmed in time (`publish_timeout`): retry with the `message_id` given, it is stored once", body = Problem),
        (status = 504, description = "`wait_timeout`: the wait ran out, the message is still queued", body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn create_message(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    AppQuery(params): AppQuery<CreateParams>,
    AppJson(mut input): AppJson<MessageInput>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Write)?;
    principal.bind_tenant(&mut input.tenant_id)?;
    let request_id = request_id(&headers);
    let message = input.validate(Utc::now(), MessageId::new).map_err(|e| ApiError::Invalid(e.0))?;
    let id = message.message_id;
    let Some(wait) = params.wait else {
        publish(&state, &message, &request_id).await?;
        return Ok((
            StatusCode::ACCEPTED,
            location(&message.tenant_id, id),
            axum::Json(MessageBody::from(MessageView::queued(&message))),
        )
            .into_response());
    };
    // Subscribe before publishing, so the event cannot slip past. The subject names this
    // message, so the server delivers only its events.
    let subject = state.deps.subjects.events_of(&message.tenant_id, id);
    let mut events =
        state.deps.bus.subscribe(subject).await?.filter(move |e| std::future::ready(wait.ends(&e.subject)));
    let published = publish(&state, &message, &request_id).await?;
    let tenant = message.tenant_id.clone();
    if published.duplicate
        && let Some(view) = lookup(&state, tenant.clone(), id, &request_id).await?
        && wait.reached(view.status)
    {
        return Ok((StatusCode::CREATED, location(&message.tenant_id, id), axum::Json(MessageBody::from(view)))
            .into_response());
    }
    let arrived = matches!(tokio::time::timeout(state.wait_timeout, events.next()).await, Ok(Some(_)));
    drop(events);
    // Whether or not the event arrived, the stored row is the truth (a duplicate's event may
    // have been published long ago).
    // The message is accepted whatever happens now: a read that fails (the database is down,
    // say) ends the wait as a timeout, with the message's id, not as an outage.
    let read = lookup(&state, tenant, id, &request_id).await.unwrap_or_else(|e| {
        tracing::warn!(message_id = %id, error = %e, "reading a waited-for message failed; the wait ends as timed out");
        None
    });
    match read {
        Some(view) if wait.reached(view.status) => {
            Ok((StatusCode::CREATED, location(&message.tenant_id, id), axum::Json(MessageBody::from(view)))
                .into_response())
        }
        _ => {
            if arrived {
                tracing::warn!(message_id = %id, "event arrived but the message is not readable yet");
            }
            Err(ApiError::WaitTimeout { message_id: id })
        }
    }
}

/// Store up to 100 messages.
#[utoipa::path(
    post, path = "/v1/messages/batch", tag = "messages",
    request_body = BatchRequest,
    responses(
        (status = 201, description = "Every item queued", body = BatchResponse),
        (status = 207, description = "Some items rejected: see `results`", body = BatchResponse),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 413, body = Problem),
        (status = 422, description = "Empty, or more than 100 items", body = Problem),
        (status = 503, description = "The stream took no item (`publish_failed`) or confirmed none in time (`publish_timeout`): retry with the same ids", body = BatchResponse),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn create_messages(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    AppJson(batch): AppJson<BatchRequest>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Write)?;
    let request_id = request_id(&headers);
    let n = batch.messages.len();
    if n == 0 || n > BATCH_MAX {
        return Err(ApiError::Invalid(vec![FieldError::new(
            "messages",
            "batch_size",
            format!("must hold 1 to {BATCH_MAX} items, got {n}"),
        )]));
    }
    let now = Utc::now();
    let checked: Vec<Result<NewMessage, ApiError>> = batch
        .messages
        .into_iter()
        .map(|item| {
            let mut input: MessageInput =
                serde_json::from_value(item).map_err(|e| ApiError::MalformedBody(e.to_string()))?;
            principal.bind_tenant(&mut input.tenant_id)?;
            input.validate(now, MessageId::new).map_err(|e| ApiError::Invalid(e.0))
        })
        .collect();
    let outcomes = futures::future::join_all(checked.into_iter().map(|item| {
        let (state, request_id) = (&state, &request_id);
        async move {
            let message = item?;
            publish(state, &message, request_id).await?;
            Ok::<NewMessage, ApiError>(message)
        }
    }))
    .await;
    // Nothing accepted because the bus failed: one retryable error for the whole request.
    if let Some(Err(first)) = outcomes.first()
        && outcomes.iter().all(|o| {
            matches!(
                o,
                Err(ApiError::PublishFailed { .. } | ApiError::PublishTimeout { .. } | ApiError::QueueFull { .. })
            )
        })
    {
        let status = first.status_and_code().0;
        let retry_after = [(axum::http::header::RETRY_AFTER, "2")];
        return Ok((status, retry_after, axum::Json(BatchResponse::new(outcomes))).into_response());
    }
    let body = BatchResponse::new(outcomes);
    let status = if body.queued == n { StatusCode::CREATED } else { StatusCode::MULTI_STATUS };
    Ok((status, axum::Json(body)).into_response())
}

/// Read one message and where it is in the pipeline.
#[utoipa::path(
    get, path = "/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "The message id (UUID)"), GetParams),
    responses(
        (status = 200, body = MessageBody),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get_message(State(state): State<AppState>, one: OneMessage) -> Result<axum::Json<MessageBody>, ApiError> {
    let (message_id, tenant) = one.checked(Scope::Read)?;
    // Ids are unique within a tenant: another tenant's message is not even looked at.
    lookup(&state, tenant, message_id, &one.request_id)
        .await?
        .map(|view| axum::Json(MessageBody::from(view)))
        .ok_or(ApiError::MessageNotFound(message_id))
}

/// Archive one message: out of search (unless `include_archived`), still readable, restorable.
#[utoipa::path(
    post, path = "/v1/messages/{id}/archive", tag = "messages",
    params(("id" = String, Path, description = "The message id (UUID)"), GetParams),
    responses(
        (status = 200, body = MessageBody), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn archive_message(
    State(state): State<AppState>,
    one: OneMessage,
) -> Result<axum::Json<MessageBody>, ApiError> {
    set_archived(&state, one, true).await
}

/// Restore an archived message.
#[utoipa::path(
    post, path = "/v1/messages/{id}/restore", tag = "messages",
    params(("id" = String, Path, description = "The message id (UUID)"), GetParams),
    responses(
        (status = 200, body = MessageBody), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn restore_message(
    State(state): State<AppState>,
    one: OneMessage,
) -> Result<axum::Json<MessageBody>, ApiError> {
    set_archived(&state, one, false).await
}

async fn set_archived(state: &AppState, one: OneMessage, archive: bool) -> Result<axum::Json<MessageBody>, ApiError> {
    let (message_id, tenant_id) = one.checked(Scope::Write)?;
    let subject = if archive { state.deps.subjects.archive_message() } else { state.deps.subjects.restore_message() };
    let request = GetMessageRequest { v: VERSION, tenant_id, message_id };
    let response: GetMessageResponse = call(state, subject, &request, &one.request_id).await?;
    response.message.map(|view| axum::Json(MessageBody::from(view))).ok_or(ApiError::MessageNotFound(message_id))
}

/// A request about one message (`/v1/messages/{id}?tenant_id=`): who asks, the request id, and
/// the id and tenant as given; [`OneMessage::checked`] checks them in that order.
pub struct OneMessage {
    principal: Principal,
    request_id: String,
    id: String,
    tenant_id: Option<String>,
}

impl OneMessage {
    /// The message id and the tenant filter, once the key has `scope`: a key without it is
    /// refused before its input is looked at.
    fn checked(&self, scope: Scope) -> Result<(MessageId, TenantId), ApiError> {
        self.principal.require(scope)?;
        let message_id = MessageId::parse(&self.id).map_err(|_| ApiError::InvalidMessageId(self.id.clone()))?;
        Ok((message_id, self.principal.tenant(self.tenant_id.as_deref())?))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for OneMessage {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let principal = parts.extensions.get::<Principal>().cloned().ok_or(ApiError::Unauthorized)?;
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::InvalidMessageId("(a path segment that is not UTF-8)".into()))?;
        let AppQuery(GetParams { tenant_id }) = AppQuery::from_request_parts(parts, state).await?;
        Ok(Self { principal, request_id: request_id(&parts.headers), id, tenant_id })
    }
}
