//! `/healthz` (the process is alive) and `/readyz` (it can take traffic).

use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

/// Always 200 while the process serves HTTP.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// 200 when serving (`ready`, or `degraded` when a peer is down: history and
/// other sources still work); 503 while draining.
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let s = state.get();
    let head = s.log.bounds().head;
    let mut peers = serde_json::Map::new();
    let mut all_up = true;
    for (id, rt) in s.peers.iter() {
        let (up, detail) = rt.health.lock().clone();
        all_up &= up;
        peers.insert(id.clone(), json!({"type": rt.kind, "up": up, "detail": detail}));
    }
    if s.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "draining", "log_head": head, "peers": peers})))
    } else {
        let status = if all_up { "ready" } else { "degraded" };
        (StatusCode::OK, Json(json!({"status": status, "log_head": head, "peers": peers})))
    }
}
