//! `GET /v1/peers` and `POST /v1/peers/{id}/pause|resume`: operating the
//! connectors. Needs a token with `"admin": true` in its `herald` claim (or
//! open mode).

use super::api::{PeerControl, PeerStatus};
use super::{ClientError, TokenQuery};
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use herald_connectors::Control;
use herald_protocol::ErrorCode;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

fn admin(state: &AppState, headers: &HeaderMap, q: &TokenQuery) -> Result<(), ClientError> {
    super::require_admin(state, headers, q, "operating peers needs an admin token")
}

/// Every peer with its state and counters (admin token).
#[utoipa::path(
    get,
    path = "/v1/peers",
    tag = "operations",
    params(TokenQuery),
    responses((status = 200, description = "The peers by id", body = BTreeMap<String, PeerStatus>), super::openapi::Errors),
    security((), ("bearer" = []), ("token" = []))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Result<Json<BTreeMap<String, PeerStatus>>, ClientError> {
    admin(&state, &headers, &q)?;
    let mut out = BTreeMap::new();
    for (id, rt) in state.get().peers.iter() {
        let (up, detail) = rt.health.lock().clone();
        let control = match *rt.control.borrow() {
            Control::Run => "running",
            Control::Pause => "paused",
            Control::Drain => "draining",
        };
        let st = &rt.stats;
        out.insert(
            id.clone(),
            PeerStatus {
                kind: rt.kind.to_string(),
                up,
                detail,
                control,
                role: rt.role.lock().to_string(),
                received: st.r#in.load(Ordering::Relaxed),
                out: st.out.load(Ordering::Relaxed),
                err: st.err.load(Ordering::Relaxed),
                send: st.send.load(Ordering::Relaxed),
                recv: st.recv.load(Ordering::Relaxed),
                dynamic_bindings: rt.dynamic.as_ref().map_or(0, |d| d.len()),
            },
        );
    }
    Ok(Json(out))
}

async fn set(
    state: AppState,
    headers: HeaderMap,
    q: TokenQuery,
    id: String,
    paused: bool,
) -> Result<Json<PeerControl>, ClientError> {
    admin(&state, &headers, &q)?;
    if !crate::peers::set_paused(&state.get().host, &id, paused) {
        return Err(ClientError::new(ErrorCode::NotFound, format!("no peer `{id}`")));
    }
    Ok(Json(PeerControl { peer: id, control: if paused { "paused" } else { "running" } }))
}

/// Stop taking events from the peer's upstream (it buffers meanwhile).
#[utoipa::path(
    post,
    path = "/v1/peers/{id}/pause",
    tag = "operations",
    params(("id" = String, Path, description = "The peer"), TokenQuery),
    responses((status = 200, description = "Paused", body = PeerControl), super::openapi::Errors),
    security((), ("bearer" = []), ("token" = []))
)]
pub(crate) async fn pause(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    Path(id): Path<String>,
) -> Result<Json<PeerControl>, ClientError> {
    set(state, headers, q, id, true).await
}

/// Take events from the peer's upstream again.
#[utoipa::path(
    post,
    path = "/v1/peers/{id}/resume",
    tag = "operations",
    params(("id" = String, Path, description = "The peer"), TokenQuery),
    responses((status = 200, description = "Running", body = PeerControl), super::openapi::Errors),
    security((), ("bearer" = []), ("token" = []))
)]
pub(crate) async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    Path(id): Path<String>,
) -> Result<Json<PeerControl>, ClientError> {
    set(state, headers, q, id, false).await
}
