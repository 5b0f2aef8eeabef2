//! `/healthz` (the process is alive) and `/readyz` (it can take traffic).

use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use herald_log::WriteHealth;
use serde_json::{json, Value};

/// Always 200 while the process serves HTTP.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// 200 when serving (`ready`, or `degraded` when a peer is down or the
/// log's disk is full: history, live delivery and other sources still work);
/// 503 while draining, and after a failed fsync (publishes are refused until
/// a restart).
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let s = state.get();
    let head = s.log.bounds().head;
    let (log_ok, log) = match s.log.write_health() {
        WriteHealth::Ok => (true, json!({"writable": true})),
        WriteHealth::Full(why) => (false, json!({"writable": false, "full": true, "detail": why})),
        WriteHealth::Disconnected(why) => (false, json!({"writable": false, "detail": why})),
        WriteHealth::Failed(why) => {
            let body = json!({"status": "failed", "log_head": head, "log": {"writable": false, "detail": why}});
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
        }
    };
    let mut peers = serde_json::Map::new();
    let mut all_up = true;
    for (id, rt) in s.peers.iter() {
        let (up, detail) = rt.health.lock().clone();
        all_up &= up;
        peers.insert(id.clone(), json!({"type": rt.kind, "up": up, "detail": detail}));
    }
    if s.is_draining() {
        let body = json!({"status": "draining", "log_head": head, "log": log, "peers": peers});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    } else {
        let status = if all_up && log_ok { "ready" } else { "degraded" };
        (StatusCode::OK, Json(json!({"status": status, "log_head": head, "log": log, "peers": peers})))
    }
}
