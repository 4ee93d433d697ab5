//! Operations: long work (deletes of conversations and tenants, retention runs) a client follows
//! after its request ended. Those routes answer through [`tracked`]: the work's own answer when it
//! comes within the request's deadline, else 202 with `Location: /v1/operations/{id}` (at once
//! with `Prefer: respond-async`). The worker carries on, heartbeats the operation and records the
//! outcome; `GET /v1/operations/{id}` reads it.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use common::domain::TenantId;
use common::store::{OPERATION_SILENCE, Operation, OperationStatus};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{LONG_TIMEOUT, envelope, reply, request_id, store_unavailable};
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

/// Share of the request deadline a route of long work waits for the work before answering 202.
const WAIT_SHARE: f64 = 0.8;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/operations/{id}", get(get_operation))
}

/// Long work a client follows.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationBody {
    id: Uuid,
    /// `delete_conversation`, `erase_tenant` or `retention_run`.
    kind: String,
    /// The tenant it acts on; null for a run over every tenant.
    tenant_id: Option<String>,
    /// `running`, `succeeded` or `failed`. A running operation whose worker went silent for a
    /// minute is `failed` (interrupted): repeat the request, long work is idempotent.
    status: &'static str,
    /// What the work answered, once it succeeded (what the request would have answered).
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
    /// Why it failed.
    error: Option<String>,
    created_at: DateTime<Utc>,
    /// Its worker's last sign of life.
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl From<Operation> for OperationBody {
    fn from(o: Operation) -> Self {
        let silent = (Utc::now() - o.updated_at).to_std().unwrap_or_default() > OPERATION_SILENCE;
        let (status, error) = match o.status {
            OperationStatus::Running if silent => (
                "failed",
                Some(
                    "interrupted: its worker stopped before it finished; repeat the request (it is idempotent)".into(),
                ),
            ),
            status => (status.as_str(), o.error),
        };
        Self {
            id: o.id,
            kind: o.kind,
            tenant_id: o.tenant_id.map(|t| t.to_string()),
            status,
            result: o.result,
            error,
            created_at: o.created_at,
            updated_at: o.updated_at,
            finished_at: o.finished_at,
        }
    }
}

/// What a route of long work answers.
pub enum Tracked<T> {
    /// The work's answer, in time: 200.
    Done(T),
    /// Still running: 202, `Location` of the operation.
    Running { operation: OperationBody, asked_async: bool },
}

impl<T: Serialize> IntoResponse for Tracked<T> {
    fn into_response(self) -> Response {
        match self {
            Self::Done(answer) => Json(answer).into_response(),
            Self::Running { operation, asked_async } => {
                let location = format!("/v1/operations/{}", operation.id);
                let mut response = (StatusCode::ACCEPTED, Json(operation)).into_response();
                let headers = response.headers_mut();
                headers
                    .insert(header::LOCATION, HeaderValue::from_str(&location).expect("a UUID path is a header value"));
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                if asked_async {
                    headers.insert("preference-applied", HeaderValue::from_static("respond-async"));
                }
                response
            }
        }
    }
}

/// Whether the client asked not to wait (`Prefer: respond-async`, RFC 7240).
fn asks_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

/// Starts an operation of `kind`, sends the worker `request(operation id)` on `subject`, and
/// answers with the worker's reply if it comes within the request's deadline (less a margin),
/// else with the operation to follow. A request the worker never answered (none running, the
/// bus down) ends its operation as failed.
pub(crate) async fn tracked<Req: Serialize, Resp: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    kind: &'static str,
    tenant: Option<&TenantId>,
    subject: String,
    request: impl FnOnce(Uuid) -> Req,
) -> Result<Tracked<Resp>, ApiError> {
    let id = Uuid::now_v7();
    let operation = state.deps.store.start_operation(id, kind, tenant).await.map_err(store_unavailable)?;
    let message = envelope(subject, &request(id), &request_id(headers));
    let (bus, worker_limit) = (state.deps.bus.clone(), LONG_TIMEOUT.max(state.request_timeout));
    let mut asked = tokio::spawn(async move { bus.request(message, worker_limit).await });
    let asked_async = asks_async(headers);
    let patience = if asked_async { Duration::ZERO } else { state.http_request_timeout.mul_f64(WAIT_SHARE) };
    let Ok(joined) = tokio::time::timeout(patience, &mut asked).await else {
        return Ok(Tracked::Running { operation: operation.into(), asked_async });
    };
    let answer = match joined {
        Ok(replied) => replied.map_err(ApiError::from).and_then(reply),
        Err(e) => {
            tracing::error!(error = %e, "the request to a worker failed to run");
            Err(ApiError::Unavailable("the request could not be sent".into()))
        }
    };
    if let Err(e) = &answer
        && let Err(recording) = state.deps.store.finish_operation(id, Err(e.to_string())).await
    {
        tracing::warn!(operation = %id, error = %recording, "recording a failed operation failed");
    }
    answer.map(Tracked::Done)
}

/// Follow long work: a delete of a conversation or a tenant, or a retention run, that outlasted
/// its request (or was asked for with `Prefer: respond-async`). A tenant key sees its tenant's
/// operations; the operator's, every one.
#[utoipa::path(
    get, path = "/v1/operations/{id}", tag = "long-running",
    params(("id" = String, Path, description = "The operation id, from the 202's `Location`")),
    responses(
        (status = 200, body = OperationBody, description = "Where the operation stands"),
        (status = 401, body = Problem), (status = 404, body = Problem, description = "No such operation for this key"),
        (status = 503, body = Problem),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get_operation(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<OperationBody>, ApiError> {
    let not_found = || ApiError::NotFound(format!("operation {id} was not found"));
    let uuid = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let operation = state.deps.store.operation(uuid).await.map_err(store_unavailable)?.ok_or_else(not_found)?;
    // Another tenant's operation, or one over every tenant, is not there for a tenant key.
    if let Some(mine) = principal.bound_tenant()
        && operation.tenant_id.as_ref() != Some(mine)
    {
        return Err(not_found());
    }
    Ok(Json(operation.into()))
}
