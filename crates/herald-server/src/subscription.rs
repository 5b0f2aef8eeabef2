//! Bringing a subscription up to date: replaying from the log until it
//! reaches the fan-out head, then switching it to live delivery.
//!
//! The catch-up task reads in chunks and waits for space in the client's
//! outbox between frames, so a replay of any size uses bounded memory and
//! never overflows a client that reads. It stops when the subscription is
//! paused or removed, or when the connection closes.

use crate::state::AppState;
use herald_core::{Frame, GoLive, Overflow, SubEntry};
use herald_log::ReadQuery;
use herald_protocol::{encode, ErrorCode, ServerMessage};
use std::sync::Arc;
use std::time::Duration;
use tracing::error;

/// Events read from the log per step.
const CHUNK: usize = 512;

/// Start catching up `entry` in the background.
pub(crate) fn spawn_catch_up(state: AppState, entry: Arc<SubEntry>) {
    tokio::spawn(catch_up(state, entry));
}

async fn catch_up(state: AppState, entry: Arc<SubEntry>) {
    let s = state.get();
    let exchanges = entry.spec.exchanges();
    loop {
        if entry.park_if_pause_requested() {
            return;
        }
        let target = match s.fanout.try_go_live(&entry) {
            GoLive::Live | GoLive::Stopped => return,
            GoLive::Ahead => {
                // Committed but not yet dispatched: the fan-out is a moment behind the log.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            GoLive::Behind(head) => head,
        };
        let cursor = entry.cursor();
        let query = ReadQuery {
            exchanges: Some(exchanges.clone()),
            after: cursor,
            upto: target,
            limit: CHUNK,
            newest_first: false,
        };
        let events = match s.log.read(query).await {
            Ok(events) => events,
            Err(e) => {
                error!(error = %e, sub = %entry.sub, "Replay failed: the log could not be read.");
                let msg = encode(&ServerMessage::Error {
                    reference: None,
                    sub: Some(entry.sub.to_string()),
                    code: ErrorCode::Internal,
                    message: "history could not be read; reconnect to resume".into(),
                });
                entry.outbox.close_with(Some(msg.into()), 1011, "internal error");
                return;
            }
        };
        let upto = match events.last() {
            Some(last) if events.len() == CHUNK => last.id,
            _ => target,
        };
        let mut stopped_at = None;
        for event in &events {
            if !entry.wants(event) {
                continue;
            }
            if entry.pause_pending() {
                stopped_at = Some(event.id - 1);
                break;
            }
            let frame = entry.frame(event);
            loop {
                if !entry.outbox.wait_for_space(frame.len()).await {
                    return;
                }
                match entry.outbox.offer(Frame::Text(frame.clone())) {
                    Ok(()) => {
                        s.metrics.replayed.inc();
                        break;
                    }
                    Err(Overflow::Full) => continue,
                    Err(_) => return,
                }
            }
        }
        entry.set_cursor(stopped_at.unwrap_or(upto));
    }
}
