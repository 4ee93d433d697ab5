//! Export and import: `GET /v1/tenants/{tenant_id}/export` streams a tenant's messages as NDJSON,
//! page by page from the retention service; `POST /v1/tenants/{tenant_id}/import` reads such a
//! stream back through the normal ingest path, so an import is validated like any message and,
//! being keyed by message id, can be repeated without duplicating anything.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use chrono::Utc;
use common::contract::{EXPORT_PAGE_MAX, ExportPage, ExportRecord, ExportRequest, VERSION};
use common::domain::{MessageId, MessageInput, Scope, TenantId};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::lifecycle::known;
use super::messages::publish_as;
use super::{call_read, request_id};
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::extract::AppQuery;
use crate::limit::{Decision, Payer};
use crate::state::AppState;

/// Largest import body.
pub const IMPORT_BODY_MAX: usize = 256 * 1024 * 1024;
/// Longest import line.
const LINE_MAX: usize = 1024 * 1024;
/// Import lines published at once.
const IMPORT_CHUNK: usize = 100;
/// Line errors reported in full; the count covers the rest.
const ERRORS_MAX: usize = 1_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tenants/{tenant_id}/export", get(export))
        .route("/v1/tenants/{tenant_id}/import", post(import))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// Add each message's vector in the active space.
    #[serde(default)]
    include_vectors: bool,
}

/// Every message of the tenant as NDJSON (`application/x-ndjson`), one `ExportRecord` per line
/// in id order: content, metadata, importance, timestamps, archive state, and with
/// `include_vectors=true` the vector. A failure midway ends the stream early (the body is then
/// cut short, not closed cleanly).
#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/export", tag = "tenants",
    params(("tenant_id" = String, Path), ExportParams),
    responses(
        (status = 200, description = "NDJSON, one ExportRecord per line", body = ExportRecord, content_type = "application/x-ndjson"),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn export(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path(tenant_id): Path<String>,
    AppQuery(params): AppQuery<ExportParams>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Admin)?;
    let tenant_id = principal.tenant(Some(&tenant_id))?;
    known(&state, &tenant_id).await?;
    let request_id = request_id(&headers);
    // The first page is fetched before answering, so an unavailable service is a clean 503.
    let first = page(&state, &tenant_id, None, params.include_vectors, &request_id).await?;
    let pages = futures::stream::try_unfold(Some(first), move |current| {
        let (state, tenant_id, request_id) = (state.clone(), tenant_id.clone(), request_id.clone());
        async move {
            let Some(current) = current else { return Ok(None) };
            let lines = lines(&current.records);
            let next = match current.next {
                Some(after) => Some(page(&state, &tenant_id, Some(after), params.include_vectors, &request_id).await?),
                None => None,
            };
            Ok::<_, ApiError>(Some((lines, next)))
        }
    })
    .map_err(|e| std::io::Error::other(e.to_string()));
    let mut response = Body::from_stream(pages).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(response)
}

async fn page(
    state: &AppState,
    tenant_id: &TenantId,
    after: Option<MessageId>,
    include_vectors: bool,
    request_id: &str,
) -> Result<ExportPage, ApiError> {
    let request =
        ExportRequest { v: VERSION, tenant_id: tenant_id.clone(), after, limit: EXPORT_PAGE_MAX, include_vectors };
    call_read(state, state.deps.subjects.export_tenant(), &request, request_id).await
}

fn lines(records: &[ExportRecord]) -> Bytes {
    let mut out = Vec::new();
    for record in records {
        serde_json::to_writer(&mut out, record).expect("records serialise");
        out.push(b'\n');
    }
    Bytes::from(out)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResponse {
    /// Lines accepted into the ingest stream (stored shortly after, once each).
    pub queued: usize,
    /// Lines refused.
    pub rejected: usize,
    /// Why, by 1-based line number (the first 1,000).
    pub errors: Vec<LineError>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LineError {
    pub line: usize,
    pub error: Problem,
}

/// Import NDJSON into the tenant: lines of an export (archive state kept; computed fields and
/// vectors ignored, the messages are embedded again) or plain messages as `POST /v1/messages`
/// takes them. Every message goes into the tenant of the path and keeps its id, so importing
/// twice stores each message once. Empty lines are skipped. At most 256 MiB, lines at most 1 MiB.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant_id}/import", tag = "tenants",
    params(("tenant_id" = String, Path)),
    request_body(content = ExportRecord, content_type = "application/x-ndjson", description = "One message per line"),
    responses(
        (status = 200, description = "Every line queued", body = ImportResponse),
        (status = 207, description = "Some lines refused: see `errors`", body = ImportResponse),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 413, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem),
        (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn import(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Extension(payer): Extension<Payer>,
    Path(tenant_id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    principal.require(Scope::Admin)?;
    // Charged per message, as batches are: the request's own charge covers the first.
    let mut meter = Meter { payer, credit: 1, last: None };
    let tenant_id = principal.tenant(Some(&tenant_id))?;
    let request_id = request_id(&headers);
    let mut report = ImportResponse { queued: 0, rejected: 0, errors: Vec::new() };
    let import = MessageId::new();
    let mut stream = body.into_data_stream();
    let (mut buffer, mut number, mut chunk) = (Vec::<u8>::new(), 0usize, Vec::new());
    // Inside a line longer than LINE_MAX (already reported): its rest is dropped.
    let mut skipping = false;
    // How much of the buffer's unfinished line is known to hold no newline.
    let mut scanned = 0;
    let too_long = || {
        ApiError::Invalid(vec![common::domain::FieldError::new(
            "line",
            "too_long",
            format!("lines must be at most {LINE_MAX} bytes"),
        )])
    };
    // Counted here: a raw body is not held to any extractor's limit.
    let mut received = 0usize;
    loop {
        let next = stream.next().await;
        let done = next.is_none();
        match next {
            Some(Ok(bytes)) => {
                received += bytes.len();
                if received > IMPORT_BODY_MAX {
                    return Err(ApiError::PayloadTooLarge { limit: IMPORT_BODY_MAX });
                }
                buffer.extend_from_slice(&bytes);
            }
            Some(Err(e)) if crate::guard::timed_out(&e) => return Err(ApiError::BodyTimeout),
            Some(Err(e)) => return Err(ApiError::MalformedBody(format!("the body could not be read: {e}"))),
            None => {}
        }
        // Whole lines; at the end of the body, the last one too.
        let mut start = 0;
        loop {
            let from = start.max(scanned);
            let newline = buffer[from..].iter().position(|b| *b == b'\n').map(|i| from + i);
            let end = match newline {
                Some(end) => end,
                None if done && start < buffer.len() => buffer.len(),
                None => break,
            };
            let line = &buffer[start..end];
            start = (end + 1).min(buffer.len());
            scanned = 0;
            if std::mem::take(&mut skipping) {
                continue;
            }
            number += 1;
            if line.len() > LINE_MAX {
                chunk.push((number, Err(too_long())));
            } else if !line.iter().all(u8::is_ascii_whitespace) {
                chunk.push((number, parse(line, &tenant_id)));
            }
            if chunk.len() == IMPORT_CHUNK {
                let chunk = std::mem::take(&mut chunk);
                if let Err(refused) = meter.charge(&state, &chunk).await {
                    return Ok(refused);
                }
                queue(&state, chunk, &request_id, import, &mut report).await?;
            }
        }
        buffer.drain(..start);
        scanned = buffer.len();
        if skipping {
            buffer.clear();
        } else if buffer.len() > LINE_MAX {
            number += 1;
            chunk.push((number, Err(too_long())));
            buffer.clear();
            skipping = true;
        }
        if buffer.is_empty() {
            scanned = 0;
        }
        if done {
            break;
        }
    }
    if let Err(refused) = meter.charge(&state, &chunk).await {
        return Ok(refused);
    }
    queue(&state, chunk, &request_id, import, &mut report).await?;
    let status = if report.rejected == 0 { StatusCode::OK } else { StatusCode::MULTI_STATUS };
    Ok(meter.with_headers((status, axum::Json(report)).into_response()))
}

/// An import's rate-limit charges, one per message about to be queued.
struct Meter {
    payer: Payer,
    /// Messages already paid for (by the request's own charge).
    credit: usize,
    last: Option<Decision>,
}

impl Meter {
    /// Charges the chunk's valid lines; `Err` is the refusal to answer with: 429, or 422 when
    /// the chunk alone exceeds the whole limit. What was queued before stays queued (an import
    /// sent again stores each message once).
    async fn charge(&mut self, state: &AppState, chunk: &[(usize, Result<Line, ApiError>)]) -> Result<(), Response> {
        let valid = chunk.iter().filter(|(_, parsed)| parsed.is_ok()).count();
        let covered = valid.min(self.credit);
        self.credit -= covered;
        let cost = u32::try_from(valid - covered).unwrap_or(u32::MAX);
        if cost == 0 {
            return Ok(());
        }
        let decision = state.limiter.check(&self.payer.client, self.payer.tenant.as_ref(), cost).await;
        self.last = Some(decision.clone());
        if decision.allowed {
            return Ok(());
        }
        Err(self.with_headers(ApiError::refused(&decision, cost, "messages in one chunk").into_response()))
    }

    /// The response, carrying the last decision for the rate-limit headers.
    fn with_headers(&self, mut response: Response) -> Response {
        if let Some(decision) = &self.last {
            response.extensions_mut().insert(decision.clone());
        }
        response
    }
}

/// A line to import, and the importance it had when exported.
type Line = (common::domain::NewMessage, Option<f64>);

/// One line as a message of `tenant`: an export record (its importance kept), or a message as
/// clients submit it.
fn parse(line: &[u8], tenant: &TenantId) -> Result<Line, ApiError> {
    let value: Value = serde_json::from_slice(line).map_err(|e| ApiError::MalformedBody(e.to_string()))?;
    let mut importance = None;
    let mut input = if value.get("id").is_some() {
        let record: ExportRecord = serde_json::from_value(value).map_err(|e| ApiError::MalformedBody(e.to_string()))?;
        let m = record.message;
        importance = m.importance.filter(|i| (0.0..=1.0).contains(i));
        MessageInput {
            message_id: Some(m.id.to_string()),
            tenant_id: String::new(),
            conversation_id: m.conversation_id.to_string(),
            role: m.role.as_str().to_owned(),
            name: m.name,
            content: m.content,
            metadata: Some(Value::Object(m.metadata)),
            importance_override: m.importance_override,
            pinned: Some(m.pinned),
            created_at: Some(m.created_at),
            archived_at: m.archived_at,
        }
    } else {
        serde_json::from_value::<MessageInput>(value).map_err(|e| ApiError::MalformedBody(e.to_string()))?
    };
    tenant.as_str().clone_into(&mut input.tenant_id);
    let message = input.validate(Utc::now(), MessageId::new).map_err(|e| ApiError::Invalid(e.0))?;
    Ok((message, importance))
}

/// Publishes a chunk of parsed lines; a bus failure fails the whole import (what was queued
/// stays queued, and a retry stores each message once).
async fn queue(
    state: &AppState,
    chunk: Vec<(usize, Result<Line, ApiError>)>,
    request_id: &str,
    import: MessageId,
    report: &mut ImportResponse,
) -> Result<(), ApiError> {
    // Idempotency comes from the store (a message id is stored once), not the stream's
    // duplicate window, which would swallow a message erased and imported again within it.
    let outcomes = futures::future::join_all(chunk.into_iter().map(|(line, parsed)| async move {
        let outcome = match parsed {
            Ok((message, importance)) => {
                let dedup = format!("{}.import.{import}", message.message_id);
                publish_as(state, &message, importance, request_id, &dedup).await.map(|_| ())
            }
            Err(e) => Err(e),
        };
        (line, outcome)
    }))
    .await;
    for (line, outcome) in outcomes {
        match outcome {
            Ok(()) => report.queued += 1,
            Err(e @ (ApiError::PublishFailed { .. } | ApiError::PublishTimeout { .. })) => return Err(e),
            Err(e) => {
                report.rejected += 1;
                if report.errors.len() < ERRORS_MAX {
                    report.errors.push(LineError { line, error: e.problem() });
                }
            }
        }
    }
    Ok(())
}
