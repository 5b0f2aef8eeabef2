//! The WebSocket endpoint `/v1/ws`.

mod ack;
pub(crate) mod connection;
mod hello;
mod pause;
mod publish;
mod rendezvous;
mod subscribe;
pub(crate) mod wire;
mod writer;

use crate::admission::Refusal;
use crate::http::ClientError;
use crate::state::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use herald_protocol::ErrorCode;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use std::net::SocketAddr;
use tracing::debug;

/// Upgrade to WebSocket (RFC 6455 §4.2). Messages larger than four times
/// `max_frame_bytes` are refused by the framing layer itself (close 1009);
/// smaller oversized ones get a `limit_exceeded` error and the connection
/// stays open.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let accept = match accept_key(req.headers()) {
        Ok(key) => key,
        Err(resp) => return *resp,
    };
    let headers = req.headers();
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if !state.get().origin_allowed(origin) {
        return ClientError::new(ErrorCode::Forbidden, "this Origin may not connect (auth.allowed_origins)")
            .into_response();
    }
    // Behind a trusted proxy, the client is who the proxy says.
    let peer =
        SocketAddr::new(crate::client_addr::client_ip(peer.ip(), headers, &state.get().trusted_proxies), peer.port());
    let slot = match state.get().admission.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(refusal) => {
            state.get().metrics.refused.get_or_create(&crate::metrics::Reason { reason: refusal.as_str() }).inc();
            return refuse(refusal);
        }
    };
    let max = state.get().config.limits.max_frame_bytes.saturating_mul(4);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(io) => TokioIo::new(io),
            Err(e) => {
                debug!(error = %e, %peer, "WebSocket upgrade failed.");
                return;
            }
        };
        let (read, write) = tokio::io::split(io);
        connection::run(write, wire::Reader::new(read, &[], max), state, peer, slot).await;
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

/// Check the handshake's headers; the `Sec-WebSocket-Accept` value, or the
/// answer to a request that is not a WebSocket handshake Herald accepts.
fn accept_key(headers: &HeaderMap) -> Result<HeaderValue, Box<Response>> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    let bad = |message: &str| Box::new(ClientError::new(ErrorCode::BadRequest, message).into_response());
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(bad("this is the WebSocket endpoint: send a WebSocket handshake (Upgrade: websocket)"));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        let mut resp =
            ClientError::new(ErrorCode::BadRequest, "only WebSocket version 13 is supported").into_response();
        *resp.status_mut() = StatusCode::UPGRADE_REQUIRED;
        resp.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return Err(Box::new(resp));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(bad("the WebSocket handshake has no Sec-WebSocket-Key"));
    };
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    HeaderValue::from_str(&accept).map_err(|_| bad("bad Sec-WebSocket-Key"))
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
