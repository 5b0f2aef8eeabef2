//! `/healthz` (the process is alive) and `/readyz` (it can take traffic).

use super::api::{Liveness, LogHealth, PeerHealth, Readiness};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use herald_log::WriteHealth;
use std::collections::BTreeMap;

/// Always 200 while the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = Liveness)))]
pub(crate) async fn healthz() -> Json<Liveness> {
    Json(Liveness { status: "ok" })
}

/// 200 when serving (`ready`, or `degraded` when a peer is down or the
/// log's disk is full: history, live delivery and other sources still work);
/// 503 while draining, and after a failed fsync (publishes are refused until
/// a restart).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "`ready` or `degraded`", body = Readiness),
        (status = 503, description = "`draining` or `failed`", body = Readiness)
    )
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let s = state.get();
    let head = s.log.bounds().head;
    let (log_ok, log) = match s.log.write_health() {
        WriteHealth::Ok => (true, LogHealth { writable: true, full: None, detail: None }),
        WriteHealth::Full(why) => (false, LogHealth { writable: false, full: Some(true), detail: Some(why) }),
        WriteHealth::Disconnected(why) => (false, LogHealth { writable: false, full: None, detail: Some(why) }),
        WriteHealth::Failed(why) => {
            let log = LogHealth { writable: false, full: None, detail: Some(why) };
            let body = Readiness { status: "failed", log_head: head, log, peers: None };
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
        }
    };
    let mut peers = BTreeMap::new();
    let mut all_up = true;
    for (id, rt) in s.peers.iter() {
        let (up, detail) = rt.health.lock().clone();
        all_up &= up;
        peers.insert(id.clone(), PeerHealth { kind: rt.kind.to_string(), up, detail });
    }
    if s.is_draining() {
        let body = Readiness { status: "draining", log_head: head, log, peers: Some(peers) };
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    } else {
        let status = if all_up && log_ok { "ready" } else { "degraded" };
        (StatusCode::OK, Json(Readiness { status, log_head: head, log, peers: Some(peers) }))
    }
}
