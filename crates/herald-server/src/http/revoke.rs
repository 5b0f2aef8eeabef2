//! `POST /v1/admin/revoke`: revoke tokens before they expire (admin token).
//!
//! Body `{"jti": "…", "exp": 1767225600}` (one token; `exp` is the token's
//! expiry, so the revocation is kept exactly as long as needed) or
//! `{"user": "alice"}` (every token of the user issued until now). The
//! answer `{"revoked": {…}, "closed": N}` comes once the revocation is on
//! disk; live connections of the revoked tokens are closed with 4401.

use super::{ClientError, TokenQuery};
use crate::revocation::Revocation;
use crate::state::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use herald_protocol::{encode, CloseCode, ErrorCode, ServerMessage};
use serde::Deserialize;
use tracing::warn;

/// What to revoke.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeRequest {
    /// One token, by its `jti` claim.
    jti: Option<String>,
    /// Every token of this user issued until now.
    user: Option<String>,
    /// With `jti`: the token's expiry (Unix seconds), so the revocation is kept as long as needed.
    exp: Option<u64>,
}

/// Revoke tokens before they expire (admin token); their live connections close with 4401.
#[utoipa::path(
    post,
    path = "/v1/admin/revoke",
    tag = "operations",
    params(TokenQuery),
    request_body(content = RevokeRequest, content_type = "application/json"),
    responses((status = 200, description = "Stored", body = super::api::Revoked), super::openapi::Errors),
    security((), ("bearer" = []), ("token" = []))
)]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    body: Result<Json<RevokeRequest>, JsonRejection>,
) -> Result<Json<super::api::Revoked>, ClientError> {
    super::require_admin(&state, &headers, &q, "revoking tokens needs an admin token")?;
    let Json(req) = body.map_err(|e| ClientError::new(ErrorCode::BadRequest, format!("invalid revocation: {e}")))?;
    let s = state.get();
    let now = herald_core::event::now_us() / 1_000_000;
    let ttl = s.config.auth.revocation_ttl.as_secs();
    let revocation = match (req.jti, req.user) {
        (Some(jti), None) if !jti.is_empty() => {
            let until = req.exp.map_or(now + ttl, |exp| exp + s.config.auth.leeway.as_secs());
            Revocation { jti: Some(jti), user: None, revoked_at: now, until }
        }
        (None, Some(user)) if !user.is_empty() => {
            Revocation { jti: None, user: Some(user), revoked_at: now, until: now + ttl }
        }
        _ => return Err(ClientError::new(ErrorCode::BadRequest, "give exactly one of `jti` and `user`")),
    };
    s.auth.revoked.add(revocation.clone()).map_err(|e| {
        warn!(error = %e, "Could not store a token revocation.");
        ClientError::new(ErrorCode::Unavailable, format!("the revocation could not be stored: {e}"))
    })?;
    let error = encode(&ServerMessage::Error {
        reference: None,
        sub: None,
        code: ErrorCode::Unauthorized,
        message: "the token has been revoked".into(),
    });
    let mut closed = 0;
    for c in s.connections.all() {
        let refused = c.principal.lock().as_ref().is_some_and(|p| revocation.refuses(p));
        if refused {
            c.outbox.close_with(Some(error.clone().into()), CloseCode::Unauthorized.code(), "token revoked");
            closed += 1;
        }
    }
    Ok(Json(super::api::Revoked { revoked: revocation, closed }))
}
