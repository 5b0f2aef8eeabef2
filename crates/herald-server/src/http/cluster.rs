//! `GET /v1/cluster` (admin token): the nodes of the cluster as this node
//! hears them, each with its last heartbeat, connections, sessions,
//! responders and peers. On a single node, that node alone.

use super::{ClientError, TokenQuery};
use crate::state::AppState;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

/// The nodes of the cluster as this node hears them (admin token).
#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "operations",
    params(TokenQuery),
    responses((status = 200, description = "`mode`, `node` and `nodes` (docs/cluster.md)", body = Object), super::openapi::Errors),
    security((), ("bearer" = []), ("token" = []))
)]
pub(crate) async fn cluster(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Result<Json<Value>, ClientError> {
    super::require_admin(&state, &headers, &q, "the cluster view needs an admin token")?;
    let s = state.get();
    let Some(parts) = &s.cluster else {
        let me = crate::cluster::node_info(&state, "local", false);
        let mut node = serde_json::to_value(&me).unwrap_or_default();
        node["last_heartbeat_ms"] = json!(0);
        node["lost"] = json!(false);
        return Ok(Json(json!({"mode": "single", "node": null, "nodes": [node]})));
    };
    let nodes: Vec<Value> = parts
        .cluster
        .nodes
        .list()
        .into_iter()
        .map(|(info, ago, lost)| {
            let mut v = serde_json::to_value(&info).unwrap_or_default();
            v["last_heartbeat_ms"] = json!(ago.as_millis() as u64);
            v["lost"] = json!(lost);
            if lost && info.state != "left" {
                v["state"] = json!("lost");
            }
            v
        })
        .collect();
    let (asked, held) = parts.rendezvous.counts();
    let c = s.config.cluster.as_ref();
    Ok(Json(json!({
        "mode": "cluster",
        "node": parts.cluster.node,
        "stream": c.map(|c| c.stream.as_str()),
        "node_timeout_ms": c.map(|c| c.node_timeout.as_millis() as u64),
        "nodes": nodes,
        "rendezvous": {"asked_here": asked, "held_here": held},
    })))
}
