//! `POST /v1/publish`: one event (an object) or several (an array).
//!
//! The request is all or nothing: every event is validated first, and the
//! answer (`{"id": N}` or `{"ids": [..]}`) comes once all of them are durable.

use super::api::Published;
use super::{ClientError, TokenQuery};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use herald_core::event::Origin;
use herald_core::NewEvent;
use herald_protocol::ErrorCode;
use std::net::SocketAddr;
use tracing::error;

/// Publish one event or an array of events; answered once all are durable.
#[utoipa::path(
    post,
    path = "/v1/publish",
    tag = "events",
    params(TokenQuery),
    request_body(content = super::api::PublishBody, content_type = "application/json"),
    responses((status = 200, description = "Stored: the ids", body = Published), super::openapi::Errors),
    security((), ("bearer" = []), ("token" = []))
)]
pub(crate) async fn publish(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    body: Bytes,
) -> Result<Json<Published>, axum::response::Response> {
    let s = state.get();
    let principal = super::authenticate(&state, &headers, q.token.as_deref()).map_err(IntoResponse::into_response)?;
    let key = match &principal.user {
        Some(user) => format!("user:{user}"),
        None => format!("addr:{}", crate::client_addr::client_ip(peer.ip(), &headers, &s.trusted_proxies)),
    };
    if !s.publish_rate.allow(&key) {
        s.metrics.refused.get_or_create(&crate::metrics::Reason { reason: "http_publish_rate" }).inc();
        let rate = s.config.limits.http_publishes_per_second;
        let msg = format!("more than {rate} publish requests per second (limits.http_publishes_per_second)");
        let mut resp = ClientError::new(ErrorCode::LimitExceeded, msg).into_response();
        resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        return Err(resp);
    }
    publish_events(s, &principal, &body).await.map_err(IntoResponse::into_response)
}

async fn publish_events(
    s: &crate::state::Inner,
    principal: &herald_core::Principal,
    body: &Bytes,
) -> Result<Json<Published>, ClientError> {
    if s.is_draining() {
        return Err(ClientError::new(ErrorCode::Unavailable, "the server is shutting down"));
    }
    let text = std::str::from_utf8(body).map_err(|_| ClientError::new(ErrorCode::BadRequest, "body is not UTF-8"))?;
    let trimmed = text.trim_start();
    let (events, single) = if trimmed.starts_with('[') {
        let events: Vec<NewEvent> = serde_json::from_str(text)
            .map_err(|e| ClientError::new(ErrorCode::BadRequest, format!("invalid event array: {e}")))?;
        (events, false)
    } else {
        let event: NewEvent = serde_json::from_str(text)
            .map_err(|e| ClientError::new(ErrorCode::BadRequest, format!("invalid event: {e}")))?;
        (vec![event], true)
    };
    let limits = &s.config.limits;
    if events.is_empty() {
        return Err(ClientError::new(ErrorCode::BadRequest, "the array is empty"));
    }
    if events.len() > limits.max_publish_batch {
        return Err(ClientError::new(
            ErrorCode::LimitExceeded,
            format!(
                "{} events in one request; the limit is {} (limits.max_publish_batch)",
                events.len(),
                limits.max_publish_batch
            ),
        ));
    }
    let mut events = events;
    for (i, e) in events.iter_mut().enumerate() {
        crate::publishing::admit(principal, e, limits).map_err(|mut err| {
            if !single {
                err.message = format!("event #{i}: {}", err.message);
            }
            err
        })?;
        e.origin = Some(Origin { peer: "http".into(), stream: 0, seq: i as u64 });
    }
    let ids = crate::publishing::append_detached(s.log.clone(), s.idempotency.clone(), events).await.map_err(|e| {
        error!(error = %e, "Publish failed: the log did not store the events.");
        ClientError::new(ErrorCode::Unavailable, format!("the log could not store the events: {e}"))
    })?;
    s.metrics.published.get_or_create(&crate::metrics::Transport { transport: "http" }).inc_by(ids.len() as u64);
    match (single, ids.first()) {
        (true, Some(&id)) => Ok(Json(Published::One { id })),
        _ => Ok(Json(Published::Many { ids })),
    }
}
