//! `GET /v1/history`: page through past events as JSON.
//!
//! Answer: `{"events": [...], "next_after": N or null, "head": H,
//! "truncated": bool}`. Pass `next_after` back as `after` for the next page;
//! `null` means the page reached the head. Each page scans a bounded number
//! of stored events, so a sparse filter yields short (even empty) pages with
//! a `next_after`, never a long stall.

use super::stream_query::StreamQuery;
use super::ClientError;
use crate::state::AppState;
use crate::subscription::compile_spec;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use herald_core::event::parse_time_us;
use herald_log::ReadQuery;
use herald_protocol::{ErrorCode, Since};

/// Default and largest page.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Stored events examined per page at most.
const SCAN_BUDGET: usize = 20_000;

/// One page of past events matching the bindings and filters, oldest first.
#[utoipa::path(
    get,
    path = "/v1/history",
    tag = "events",
    params(StreamQuery),
    responses((status = 200, description = "A page", body = super::api::HistoryPage), super::openapi::Errors),
    security((), ("bearer" = []), ("token" = []))
)]
pub(crate) async fn history(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, ClientError> {
    let s = state.get();
    let q = StreamQuery::from_request(query)?;
    let principal = super::authenticate(&state, &headers, q.token.as_deref())?;
    let spec = compile_spec(&s.config.limits, &principal, &q.bindings()?, &q.filters()?)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ClientError::new(ErrorCode::BadRequest, format!("limit must be 1 to {MAX_LIMIT}")));
    }
    let bounds = s.log.bounds();
    let after = match (q.after, q.since(None)?) {
        (Some(_), Some(_)) => {
            return Err(ClientError::new(ErrorCode::BadRequest, "give `after` or a since_* start, not both"))
        }
        (Some(after), None) | (None, Some(Since::Id { id: after })) => after,
        (None, Some(Since::Time { time })) => {
            let t = parse_time_us(&time)
                .ok_or_else(|| ClientError::new(ErrorCode::BadRequest, "since_time must be RFC 3339"))?;
            s.log.first_at_or_after(t).await.map_err(|e| ClientError::new(ErrorCode::Internal, e.to_string()))? - 1
        }
        (None, Some(Since::Last { .. })) => {
            return Err(ClientError::new(ErrorCode::BadRequest, "history pages forward: use `after` or since_time"))
        }
        (None, None) => 0,
    };
    let exchanges = spec.exchanges();
    // Anonymous requests share one budget per address only when the
    // address is known here; they all count against the node's.
    let permits = s.replays.permits(&herald_core::owner_key(principal.user.as_deref(), None));
    let mut cursor = after;
    let mut scanned = 0usize;
    let mut out: Vec<String> = Vec::new();
    let mut more = false;
    while cursor < bounds.head {
        let query = ReadQuery {
            exchanges: Some(exchanges.clone()),
            after: cursor,
            upto: bounds.head,
            limit: 512,
            newest_first: false,
            max_bytes: crate::subscription::CHUNK_BYTES,
        };
        // History pages take turns with replays (per user and per node).
        let turn = permits.turn().await;
        let chunk = s.log.read(query).await.map_err(|e| ClientError::new(ErrorCode::Internal, e.to_string()))?;
        drop(turn);
        let Some(last) = chunk.last().map(|e| e.id) else {
            cursor = bounds.head;
            break;
        };
        for e in &chunk {
            cursor = e.id;
            scanned += 1;
            if spec.matches(e) && principal.may_see(e) {
                out.push(format!("{{{}", String::from_utf8_lossy(e.frame_tail())));
                if out.len() == limit {
                    break;
                }
            }
        }
        if out.len() == limit || scanned >= SCAN_BUDGET {
            more = cursor < bounds.head;
            break;
        }
        cursor = last;
    }
    let next_after = if more { cursor.to_string() } else { "null".to_string() };
    let truncated = after + 1 < bounds.first;
    let body = format!(
        r#"{{"events":[{}],"next_after":{next_after},"head":{},"truncated":{truncated}}}"#,
        out.join(","),
        bounds.head
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
