//! Authentication. For now one operator key (`MEMORY_ADMIN_API_KEY`) acts for every tenant;
//! tenant-bound keys come with the tenancy work. The key is compared in constant time.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// The key a request presents: `x-api-key`, or `Authorization: Bearer <key>`.
fn presented(req: &Request) -> Option<&str> {
    if let Some(v) = req.headers().get("x-api-key") {
        return v.to_str().ok();
    }
    let auth = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

pub(crate) async fn require_api_key(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let expected = state.admin_key.expose().as_bytes();
    match presented(&req) {
        Some(key) if bool::from(key.as_bytes().ct_eq(expected)) => Ok(next.run(req).await),
        _ => Err(ApiError::Unauthorized),
    }
}
