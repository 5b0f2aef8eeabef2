//! Rendezvous over HTTP: `POST /v1/rendezvous/{service}` (a requester that
//! waits for the answer), `POST /v1/rendezvous/{service}/poll` (a responder
//! long-polling for one request) and `POST /v1/rendezvous/answer/{request}`.
//!
//! Bodies: a JSON `Content-Type` (`application/json`, `…+json`) carries any
//! JSON value; any other body is taken as a string (UTF-8). Answers are
//! returned as JSON, or as the bare string with `Accept: text/plain` when
//! the answer is a JSON string.

use super::ClientError;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::rendezvous::Body;
use herald_core::Sink;
use herald_protocol::ErrorCode;
use serde_json::value::RawValue;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Query parameters of the rendezvous endpoints.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RendezvousQuery {
    /// The bearer token, for clients that cannot set `Authorization`.
    token: Option<String>,
    /// Requester: the longest wait for the answer. Poll: the longest wait
    /// for a request. At least 1 (a deadline of 0 can never be met).
    #[param(minimum = 1)]
    timeout_ms: Option<u64>,
}

impl RendezvousQuery {
    fn timeout(&self) -> Result<Option<Duration>, ClientError> {
        match self.timeout_ms {
            Some(0) => Err(ClientError::new(ErrorCode::BadRequest, "timeout_ms must be at least 1")),
            ms => Ok(ms.map(Duration::from_millis)),
        }
    }
}

/// A request body as an opaque JSON value.
fn body_value(headers: &HeaderMap, bytes: &[u8], max: usize) -> Result<Body, ClientError> {
    if bytes.len() > max {
        let msg = format!("body of {} bytes exceeds rendezvous.max_body_bytes ({max})", bytes.len());
        return Err(ClientError::new(ErrorCode::LimitExceeded, msg));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| ClientError::new(ErrorCode::BadRequest, "body is not UTF-8"))?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            ct == "application/json" || ct.ends_with("+json")
        })
        .unwrap_or(false);
    let raw = if json {
        RawValue::from_string(text.trim().to_string())
            .map_err(|e| ClientError::new(ErrorCode::BadRequest, format!("body is not valid JSON: {e}")))?
    } else {
        let quoted = serde_json::to_string(text).map_err(|e| ClientError::new(ErrorCode::Internal, e.to_string()))?;
        RawValue::from_string(quoted).map_err(|e| ClientError::new(ErrorCode::Internal, e.to_string()))?
    };
    // A string body grows when quoted; the limit is on what travels on.
    if raw.get().len() > max {
        let msg = format!("body of {} bytes as JSON exceeds rendezvous.max_body_bytes ({max})", raw.get().len());
        return Err(ClientError::new(ErrorCode::LimitExceeded, msg));
    }
    Ok(raw)
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `POST /v1/rendezvous/{service}`: ask one responder; answer 200 with its
/// answer, 503 when no responder is available, 504 when it does not answer.
#[utoipa::path(
    post,
    path = "/v1/rendezvous/{service}",
    tag = "rendezvous",
    params(("service" = String, Path, description = "The service to ask", example = "echo"), RendezvousQuery),
    request_body(
        description = "The request: any JSON value with a JSON content type, else the text as a string",
        content((serde_json::Value = "application/json"), (String = "text/plain"))
    ),
    responses(
        (status = 200, description = "The responder's answer (JSON, or the bare string with `Accept: text/plain`)",
            content((serde_json::Value = "application/json"), (String = "text/plain"))),
        (status = 504, description = "`timeout`: the responder did not answer in time", body = super::api::ErrorBody),
        super::openapi::Errors
    ),
    security((), ("bearer" = []), ("token" = []))
)]
pub(crate) async fn request(
    State(state): State<AppState>,
    Path(service): Path<String>,
    headers: HeaderMap,
    Query(q): Query<RendezvousQuery>,
    bytes: Bytes,
) -> Result<Response, ClientError> {
    let s = state.get();
    let principal = super::authenticate(&state, &headers, q.token.as_deref())?;
    if s.is_draining() {
        return Err(ClientError::new(ErrorCode::Unavailable, "the server is shutting down"));
    }
    let body = body_value(&headers, &bytes, s.config.rendezvous.max_body_bytes)?;
    crate::rendezvous::check_request(&principal, &service, body.get(), s)?;
    // If the client goes away, this future is dropped with the pending
    // request: a late answer learns the requester is gone.
    let answer = s.broker.request(&service, body, q.timeout()?).answer().await;
    let answer = answer.map_err(|e| ClientError::new(e.code(), e.to_string()))?;
    let wants_text =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.starts_with("text/plain"));
    if wants_text {
        if let Ok(text) = serde_json::from_str::<String>(answer.get()) {
            let mut r = text.into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            return Ok(r);
        }
    }
    Ok(json_response(StatusCode::OK, answer.get().to_string()))
}

/// Unregisters a long-poll responder when its request ends, however it ends.
struct PollGuard<'a> {
    broker: &'a herald_core::Broker,
    id: herald_core::rendezvous::ResponderId,
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        self.broker.unserve(self.id);
    }
}

/// `POST /v1/rendezvous/{service}/poll`: wait for one request (200
/// `{request, service, body, deadline_ms}`) or answer 204 after the poll
/// timeout.
#[utoipa::path(
    post,
    path = "/v1/rendezvous/{service}/poll",
    tag = "rendezvous",
    params(("service" = String, Path, description = "The service to serve", example = "echo"), RendezvousQuery),
    responses(
        (status = 200, description = "A request to answer", body = super::api::Incoming),
        (status = 204, description = "No request came within the poll timeout"),
        super::openapi::Errors
    ),
    security((), ("bearer" = []), ("token" = []))
)]
pub(crate) async fn poll(
    State(state): State<AppState>,
    Path(service): Path<String>,
    headers: HeaderMap,
    Query(q): Query<RendezvousQuery>,
) -> Result<Response, ClientError> {
    let s = state.get();
    let principal = super::authenticate(&state, &headers, q.token.as_deref())?;
    crate::rendezvous::check_service(&service)?;
    if !principal.may_serve(&service) {
        return Err(ClientError::new(ErrorCode::Forbidden, format!("your token does not grant serving `{service}`")));
    }
    if s.is_draining() {
        return Err(ClientError::new(ErrorCode::Unavailable, "the server is shutting down"));
    }
    let max = s.config.rendezvous.poll_timeout;
    let wait = q.timeout()?.map_or(max, |t| t.min(max));
    let (tx, mut rx) = oneshot::channel();
    let id = s.broker.serve(&service, 1, Sink::Once(tx));
    let _guard = PollGuard { broker: &s.broker, id };
    let incoming = match tokio::time::timeout(wait, &mut rx).await {
        Ok(Ok(incoming)) => incoming,
        // Timed out; a request may have arrived in the same instant.
        Ok(Err(_)) | Err(_) => match rx.try_recv() {
            Ok(incoming) => incoming,
            Err(_) => return Ok(StatusCode::NO_CONTENT.into_response()),
        },
    };
    let deadline_ms = incoming.deadline.saturating_duration_since(Instant::now()).as_millis() as u64;
    let out = super::api::Incoming {
        request: incoming.request,
        service: incoming.service.to_string(),
        body: incoming.body,
        deadline_ms,
    };
    Ok((StatusCode::OK, axum::Json(out)).into_response())
}

/// `POST /v1/rendezvous/answer/{request}`: deliver an answer; 200
/// `{"request": …, "delivered": true}`, 404 when the request is unknown or
/// its requester is gone.
/// Answer a request taken with `poll`.
#[utoipa::path(
    post,
    path = "/v1/rendezvous/answer/{request}",
    tag = "rendezvous",
    params(("request" = String, Path, description = "The request id `poll` gave"), RendezvousQuery),
    request_body(
        description = "The answer: any JSON value with a JSON content type, else the text as a string",
        content((serde_json::Value = "application/json"), (String = "text/plain"))
    ),
    responses((status = 200, description = "Delivered", body = super::api::Delivered), super::openapi::Errors),
    security((), ("bearer" = []), ("token" = []))
)]
pub(crate) async fn answer(
    State(state): State<AppState>,
    Path(request): Path<String>,
    headers: HeaderMap,
    Query(q): Query<RendezvousQuery>,
    bytes: Bytes,
) -> Result<Response, ClientError> {
    let s = state.get();
    let principal = super::authenticate(&state, &headers, q.token.as_deref())?;
    let body = body_value(&headers, &bytes, s.config.rendezvous.max_body_bytes)?;
    // In a cluster, a request taken by another node is answered there.
    let elsewhere = s.cluster.as_ref().and_then(|c| c.rendezvous.holder_elsewhere(&request).map(|n| (c, n)));
    match elsewhere {
        Some((c, node)) => c.rendezvous.answer_elsewhere(node, &request, body, |svc| principal.may_serve(svc)).await,
        None => s.broker.answer(&request, body, |service| principal.may_serve(service)),
    }
    .map_err(|e| ClientError::new(e.code(), e.to_string()))?;
    Ok((StatusCode::OK, axum::Json(super::api::Delivered { request, delivered: true })).into_response())
}
