//! The WebSocket endpoint `/v1/ws`.

mod connection;
mod writer;

use crate::http::ApiError;
use crate::state::AppState;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use herald_protocol::ErrorCode;
use std::net::SocketAddr;

/// Upgrade to WebSocket. Frames larger than four times `max_frame_bytes`
/// are refused by the WebSocket layer itself (close 1009); smaller oversized
/// frames get a `limit_exceeded` error and the connection stays open.
pub(crate) async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if !state.get().origin_allowed(origin) {
        return ApiError::new(ErrorCode::Forbidden, "this Origin may not connect (auth.allowed_origins)")
            .into_response();
    }
    let max = state.get().config.limits.max_frame_bytes;
    // Small socket buffers keep idle connections cheap; they grow while busy.
    ws.read_buffer_size(4096)
        .write_buffer_size(32 * 1024)
        .max_message_size(max.saturating_mul(4))
        .max_frame_size(max.saturating_mul(4))
        .on_upgrade(move |socket| connection::run(socket, state, peer))
}
