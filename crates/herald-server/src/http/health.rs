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

/// 200 when ready; 503 while draining.
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let s = state.get();
    let head = s.log.bounds().head;
    if s.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "draining", "log_head": head})))
    } else {
        (StatusCode::OK, Json(json!({"status": "ready", "log_head": head})))
    }
}
