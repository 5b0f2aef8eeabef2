//! Query parameters shared by `GET /v1/sse` and `GET /v1/history`.

use super::ClientError;
use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use herald_protocol::{Binding, ErrorCode, Since};
use serde::Deserialize;
use serde_json::Value;

/// `?bindings=[...]` or `?exchange=X&pattern=P`, `filters=[...]`, a start
/// (`since_id`, `last`, `since_time`; for history `after`), `limit`, `token`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamQuery {
    /// JSON array of `{exchange, pattern}` (or give `exchange` and `pattern`).
    bindings: Option<String>,
    /// One binding's exchange (with `pattern`, default `#`).
    exchange: Option<String>,
    /// One binding's topic pattern (default `#`).
    pattern: Option<String>,
    /// JSON array of `[field, op, value]` filters (docs/protocol.md).
    filters: Option<String>,
    /// Start after this event id.
    since_id: Option<u64>,
    /// Start with the last N matching events (SSE only).
    last: Option<u64>,
    /// Start at this RFC 3339 time.
    since_time: Option<String>,
    /// History: ids greater than this.
    pub(crate) after: Option<u64>,
    /// History: page size.
    pub(crate) limit: Option<usize>,
    /// Bearer token, for clients that cannot set headers.
    pub(crate) token: Option<String>,
}

fn bad(message: impl Into<String>) -> ClientError {
    ClientError::new(ErrorCode::BadRequest, message)
}

impl StreamQuery {
    /// Extract, turning a malformed query into a documented error.
    pub(crate) fn from_request(q: Result<Query<StreamQuery>, QueryRejection>) -> Result<StreamQuery, ClientError> {
        q.map(|Query(q)| q).map_err(|e| bad(format!("invalid query: {}", e.body_text())))
    }

    pub(crate) fn bindings(&self) -> Result<Vec<Binding>, ClientError> {
        match (&self.bindings, &self.exchange) {
            (Some(_), Some(_)) => Err(bad("give `bindings` or `exchange`, not both")),
            (Some(json), None) => serde_json::from_str(json)
                .map_err(|e| bad(format!("`bindings` must be a JSON array of {{exchange, pattern}}: {e}"))),
            (None, Some(x)) => {
                Ok(vec![Binding { exchange: x.clone(), pattern: self.pattern.clone().unwrap_or_else(|| "#".into()) }])
            }
            (None, None) => Err(bad("name what to read: `exchange` (and `pattern`) or `bindings`")),
        }
    }

    pub(crate) fn filters(&self) -> Result<Vec<Value>, ClientError> {
        match &self.filters {
            None => Ok(Vec::new()),
            Some(json) => serde_json::from_str(json)
                .map_err(|e| bad(format!("`filters` must be a JSON array of [field, op, value]: {e}"))),
        }
    }

    /// The start: `Last-Event-ID` wins over the query.
    pub(crate) fn since(&self, last_event_id: Option<&str>) -> Result<Option<Since>, ClientError> {
        if let Some(id) = last_event_id {
            let id = id.trim().parse::<u64>().map_err(|_| bad("Last-Event-ID must be an event id"))?;
            return Ok(Some(Since::Id { id }));
        }
        match (self.since_id, self.last, &self.since_time) {
            (None, None, None) => Ok(None),
            (Some(id), None, None) => Ok(Some(Since::Id { id })),
            (None, Some(last), None) => Ok(Some(Since::Last { last })),
            (None, None, Some(time)) => Ok(Some(Since::Time { time: time.clone() })),
            _ => Err(bad("give at most one of since_id, last and since_time")),
        }
    }
}
