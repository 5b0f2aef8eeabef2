//! The WebSocket endpoint `/v1/ws`.

mod ack;
pub(crate) mod connection;
mod hello;
mod pause;
mod publish;
mod rendezvous;
mod subscribe;
mod writer;

use crate::admission::Refusal;
use crate::http::ClientError;
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
        return ClientError::new(ErrorCode::Forbidden, "this Origin may not connect (auth.allowed_origins)")
            .into_response();
    }
    // Behind a trusted proxy, the client is who the proxy says.
    let peer =
        SocketAddr::new(crate::client_addr::client_ip(peer.ip(), &headers, &state.get().trusted_proxies), peer.port());
    let slot = match state.get().admission.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(refusal) => {
            state.get().metrics.refused.get_or_create(&crate::metrics::Reason { reason: refusal.as_str() }).inc();
            return refuse(refusal);
        }
    };
    let max = state.get().config.limits.max_frame_bytes;
    // Small socket buffers keep idle connections cheap; they grow while busy.
    ws.read_buffer_size(4096)
        .write_buffer_size(32 * 1024)
        .max_message_size(max.saturating_mul(4))
        .max_frame_size(max.saturating_mul(4))
        .on_upgrade(move |socket| {
            let (sink, stream) = futures_util::StreamExt::split(socket);
            connection::run(sink, stream, state, peer, slot)
        })
}

/// The HTTP answer for a refused connection, with retry advice.
pub(crate) fn refuse(refusal: Refusal) -> Response {
    let (code, message) = match refusal {
        Refusal::Capacity => {
            (ErrorCode::Unavailable, "the server is at capacity (limits.max_connections); retry later")
        }
        Refusal::PerIp => {
            (ErrorCode::LimitExceeded, "too many connections from this address (limits.max_connections_per_ip)")
        }
        Refusal::PerUser => {
            (ErrorCode::LimitExceeded, "too many connections for this user (limits.max_connections_per_user)")
        }
    };
    let mut resp = ClientError::new(code, message).into_response();
    resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    resp
}
