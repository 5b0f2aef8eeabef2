//! Stream lifecycle events: every WebSocket and SSE connection is a stream
//! with an id; when `stream_events` is on, its start and end are published
//! on the `herald.streams` exchange (routing keys `ws.start`, `ws.end`,
//! `sse.start`, `sse.end`), for clients granted that exchange.

use crate::state::AppState;
use herald_core::event::Origin;
use herald_core::NewEvent;
use serde_json::value::RawValue;
use serde_json::Value;
use tracing::warn;

/// The system exchange of lifecycle events.
pub(crate) const EXCHANGE: &str = "herald.streams";

/// Publish one lifecycle event in the background (never delays the connection).
pub(crate) fn publish(state: &AppState, transport: &'static str, phase: &'static str, stream: u64, detail: Value) {
    if !state.get().config.stream_events {
        return;
    }
    let mut payload = serde_json::json!({"stream": stream, "peer": transport, "phase": phase});
    if let (Some(p), Value::Object(extra)) = (payload.as_object_mut(), detail) {
        p.extend(extra);
    }
    let Ok(payload) = RawValue::from_string(payload.to_string()) else { return };
    let event = NewEvent {
        exchange: EXCHANGE.to_string(),
        routing_key: format!("{transport}.{phase}"),
        payload,
        acl: None,
        headers: None,
        origin: Some(Origin { peer: transport.to_string(), stream, seq: 0 }),
        idempotency_key: None,
    };
    let state = state.clone();
    tokio::spawn(async move {
        if let Err(e) = state.get().log.append(vec![event]).await {
            warn!(error = %e, stream, "Could not store a stream lifecycle event.");
        }
    });
}
