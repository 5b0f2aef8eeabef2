//! `GET /v1/sse`: one subscription as a Server-Sent Events stream.
//!
//! Every event is a record `id: <event id>` / `data: <event JSON>`, so a
//! browser's `EventSource` resumes by itself with `Last-Event-ID`, without
//! gap or duplicate. The stream starts with an `event: subscribed` record;
//! errors come as `event: error` records; a comment line (`: ping`) is sent
//! every heartbeat. Grants, ACL, filters, limits and slow-consumer handling
//! are those of WebSocket subscriptions.

use super::stream_query::StreamQuery;
use super::ClientError;
use crate::admission::Slot;
use crate::state::AppState;
use crate::subscription::{compile_spec, open};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use herald_core::{Frame, FrameFormat, Outbox, Registration, SubEntry};
use herald_protocol::{encode, CloseCode, ErrorCode, ServerMessage};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// An SSE record for a protocol message (`event: <type>`).
fn record(kind: &str, msg: &ServerMessage) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {}\n\n", encode(msg)))
}

/// Unregisters the subscription and frees the connection's place when the
/// stream ends, however it ends (client gone, slow consumer, shutdown).
struct Guard {
    state: AppState,
    entry: Arc<SubEntry>,
    conn_id: u64,
    _slot: Slot,
}

impl Drop for Guard {
    fn drop(&mut self) {
        crate::streams::publish(&self.state, "sse", "end", self.conn_id, serde_json::json!({}));
        let s = self.state.get();
        s.fanout.unregister(&self.entry);
        s.connections.remove(self.conn_id);
    }
}

/// Follow events as Server-Sent Events (`id:` is the event id, `data:` the
/// event as JSON); resumes after `Last-Event-ID`.
#[utoipa::path(
    get,
    path = "/v1/sse",
    tag = "events",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id (wins over since_*)"),
    ),
    responses(
        (status = 200, description = "The stream: `retry:`, then one `id:`/`data:` record per event, comments as heartbeats",
            content_type = "text/event-stream", body = String),
        super::openapi::Errors
    ),
    security((), ("bearer" = []), ("token" = []))
)]
pub(crate) async fn sse(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, ClientError> {
    let s = state.get();
    let q = StreamQuery::from_request(query)?;
    if s.is_draining() {
        return Err(ClientError::new(ErrorCode::Unavailable, "the server is shutting down"));
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if !s.origin_allowed(origin) {
        return Err(ClientError::new(ErrorCode::Forbidden, "this Origin may not connect (auth.allowed_origins)"));
    }
    let principal = super::authenticate(&state, &headers, q.token.as_deref())?;
    let peer = SocketAddr::new(crate::client_addr::client_ip(peer.ip(), &headers, &s.trusted_proxies), peer.port());
    let mut slot = match s.admission.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(refusal) => {
            s.metrics.refused.get_or_create(&crate::metrics::Reason { reason: refusal.as_str() }).inc();
            return Ok(crate::ws::refuse(refusal));
        }
    };
    if let Some(user) = &principal.user {
        if slot.claim_user(user).is_err() {
            return Ok(crate::ws::refuse(crate::admission::Refusal::PerUser));
        }
    }
    let spec = compile_spec(&s.config.limits, &principal, &q.bindings()?, &q.filters()?)?;
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let since = q.since(last_event_id)?;

    let slow = record(
        "error",
        &ServerMessage::Error {
            reference: None,
            sub: None,
            code: ErrorCode::SlowConsumer,
            message: "the stream was not read; closing".into(),
        },
    );
    let outbox =
        Arc::new(Outbox::new(s.config.limits.max_outbound_bytes, slow, (CloseCode::SlowConsumer.code(), "slow")));
    let (conn_id, handle) = s.connections.add(outbox.clone(), s.now_ms(), true);
    let leeway = s.config.auth.leeway.as_secs();
    handle.expires_at.store(principal.expires_at.map_or(0, |e| e + leeway), Ordering::Relaxed);
    *handle.principal.lock() = Some(principal.clone());
    // A revocation that ran before the line above did not see this stream.
    if s.auth.revoked.refuses(&principal) {
        s.connections.remove(conn_id);
        return Err(ClientError::new(ErrorCode::Unauthorized, "the token has been revoked"));
    }
    let principal_user = principal.user.clone();
    let reg = Registration {
        sub: Arc::from("sse"),
        spec: Arc::new(spec),
        principal,
        outbox: outbox.clone(),
        format: FrameFormat::Sse,
        replay: s.replays.permits(&herald_core::owner_key(principal_user.as_deref(), Some(peer.ip()))),
    };
    let announced = outbox.clone();
    // SSE has no session: its position is the `Last-Event-ID` the client keeps.
    let opened = open(
        &state,
        reg,
        since,
        |_| async { Ok(()) },
        move |a| {
            let msg = ServerMessage::Subscribed {
                reference: None,
                sub: "sse".into(),
                head: a.head,
                recovered: a.recovered,
                history: None,
            };
            let _ = announced.push(Frame::Text(record("subscribed", &msg)));
            if let Some(message) = a.truncated {
                let err = ServerMessage::Error {
                    reference: None,
                    sub: Some("sse".into()),
                    code: ErrorCode::HistoryTruncated,
                    message,
                };
                let _ = announced.push(Frame::Text(record("error", &err)));
            }
        },
    )
    .await;
    let entry = match opened {
        Ok((entry, _)) => entry,
        Err(e) => {
            s.connections.remove(conn_id);
            return Err(e);
        }
    };
    let user = entry.principal.user.clone();
    crate::streams::publish(
        &state,
        "sse",
        "start",
        conn_id,
        serde_json::json!({"user": user, "remote": peer.ip().to_string()}),
    );
    let guard = Guard { state: state.clone(), entry, conn_id, _slot: slot };
    let latency = s.metrics.deliver_latency.clone();
    let stream = futures_util::stream::unfold(Some((outbox, guard)), move |st| {
        let latency = latency.clone();
        async move {
            let (outbox, guard) = st?;
            let mut frames = Vec::new();
            loop {
                outbox.take(&mut frames);
                if !frames.is_empty() {
                    break;
                }
                outbox.ready().await;
            }
            let mut buf = BytesMut::new();
            let mut closing = false;
            for f in &frames {
                match f {
                    Frame::Text(b) | Frame::Event(b, _) => buf.extend_from_slice(b),
                    Frame::Ping => buf.extend_from_slice(b": ping\n\n"),
                    // A WebSocket-only frame; SSE clients never ping.
                    Frame::Pong(_) => {}
                    Frame::Close(..) => {
                        closing = true;
                        break;
                    }
                }
            }
            outbox.written(&frames);
            crate::metrics::observe_written(&latency, &frames);
            let next = if closing { None } else { Some((outbox, guard)) };
            Some((Ok::<Bytes, Infallible>(buf.freeze()), next))
        }
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}
