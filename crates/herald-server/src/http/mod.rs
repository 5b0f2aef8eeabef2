//! HTTP endpoints: publish, SSE, history, peers, health and the inspector.

pub(crate) mod api;
pub(crate) mod cluster;
pub(crate) mod health;
pub(crate) mod history;
pub(crate) mod inspector;
pub(crate) mod metrics;
pub(crate) mod openapi;
pub(crate) mod peers;
pub(crate) mod publish;
pub(crate) mod rendezvous;
pub(crate) mod revoke;
pub(crate) mod sse;
mod stream_query;

/// The `token` query parameter (for clients that cannot set headers).
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TokenQuery {
    /// The bearer token, for clients that cannot set `Authorization`.
    pub(crate) token: Option<String>,
}

pub(crate) use crate::error::ClientError;

/// Authenticate an HTTP request (bearer header, else the `token` parameter),
/// counting failures.
pub(crate) fn authenticate(
    state: &crate::state::AppState,
    headers: &axum::http::HeaderMap,
    query_token: Option<&str>,
) -> Result<std::sync::Arc<herald_core::Principal>, ClientError> {
    let s = state.get();
    s.auth.authenticate(crate::auth::bearer(headers, query_token).as_deref()).map_err(|e| {
        s.metrics.auth_failures.inc();
        ClientError::new(e.code, e.message)
    })
}

/// Authenticate and require the `admin` grant (`forbidden` with `why` otherwise).
pub(crate) fn require_admin(
    state: &crate::state::AppState,
    headers: &axum::http::HeaderMap,
    q: &TokenQuery,
    why: &str,
) -> Result<(), ClientError> {
    let principal = authenticate(state, headers, q.token.as_deref())?;
    if principal.grants.admin {
        Ok(())
    } else {
        Err(ClientError::new(herald_protocol::ErrorCode::Forbidden, why))
    }
}
