//! HTTP endpoints: publish, SSE, history, peers, health and the inspector.

pub(crate) mod health;
pub(crate) mod history;
pub(crate) mod inspector;
pub(crate) mod peers;
pub(crate) mod publish;
pub(crate) mod rendezvous;
pub(crate) mod sse;
mod stream_query;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_protocol::ErrorCode;

/// The `token` query parameter (for clients that cannot set headers).
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct TokenQuery {
    pub(crate) token: Option<String>,
}

/// An HTTP error: a status derived from the code, and a JSON body
/// `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (status, Json(body)).into_response()
    }
}

/// Authenticate an HTTP request (bearer header, else the `token` parameter),
/// counting failures.
pub(crate) fn authenticate(
    state: &crate::state::AppState,
    headers: &axum::http::HeaderMap,
    query_token: Option<&str>,
) -> Result<std::sync::Arc<herald_core::Principal>, ApiError> {
    let s = state.get();
    s.auth.authenticate(crate::auth::bearer(headers, query_token).as_deref()).map_err(|e| {
        s.metrics.auth_failures.inc();
        ApiError::new(e.code, e.message)
    })
}
