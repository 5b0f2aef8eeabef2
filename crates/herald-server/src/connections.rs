//! The registry of open WebSocket connections, for heartbeats and draining.
//!
//! Connections carry no timer each: one sweeper task walks this registry,
//! pings connections that have been silent for a heartbeat and closes those
//! silent for three.

use herald_core::{Frame, Outbox};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What the registry knows of one connection.
#[derive(Debug)]
pub(crate) struct ConnHandle {
    pub(crate) outbox: Arc<Outbox>,
    /// Milliseconds since server start of the last frame received.
    pub(crate) last_seen_ms: AtomicU64,
    /// When the client's token expires, seconds since the Unix epoch (0: never).
    pub(crate) expires_at: AtomicU64,
    /// An SSE stream: it never sends, so it is pinged but not closed for silence.
    pub(crate) sse: bool,
    /// Who authenticated on it (for closing the connections of a revoked token).
    pub(crate) principal: Mutex<Option<Arc<herald_core::Principal>>>,
}

#[derive(Debug, Default)]
pub(crate) struct Connections {
    map: Mutex<HashMap<u64, Arc<ConnHandle>>>,
    next_id: AtomicU64,
}

impl Connections {
    pub(crate) fn add(&self, outbox: Arc<Outbox>, now_ms: u64, sse: bool) -> (u64, Arc<ConnHandle>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let handle = Arc::new(ConnHandle {
            outbox,
            last_seen_ms: AtomicU64::new(now_ms),
            expires_at: AtomicU64::new(0),
            sse,
            principal: Mutex::new(None),
        });
        self.map.lock().insert(id, handle.clone());
        (id, handle)
    }

    pub(crate) fn remove(&self, id: u64) {
        self.map.lock().remove(&id);
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub(crate) fn all(&self) -> Vec<Arc<ConnHandle>> {
        self.map.lock().values().cloned().collect()
    }

    /// Ping connections silent for `heartbeat_ms`, close those silent for
    /// three times that, and close as slow consumers those that have had
    /// bytes waiting with nothing written for `stall_limit`.
    pub(crate) fn sweep(
        &self,
        now_ms: u64,
        heartbeat_ms: u64,
        stall_limit: Duration,
        metrics: &crate::metrics::Metrics,
    ) {
        let now = Instant::now();
        let unix = herald_core::event::now_us() / 1_000_000;
        for c in self.all() {
            if c.outbox.stalled_for(now) >= stall_limit {
                if let Some(dropped) = c.outbox.close_slow() {
                    metrics.slow_consumer_closes.inc();
                    metrics
                        .drops
                        .get_or_create(&crate::metrics::Reason { reason: "slow_consumer" })
                        .inc_by(dropped as u64);
                }
                continue;
            }
            // An idle connection holds no queue buffer (the writer does not
            // give it back itself: it goes idle after every batch).
            c.outbox.release_buffer();
            let exp = c.expires_at.load(Ordering::Relaxed);
            if exp != 0 && unix >= exp {
                let msg = herald_protocol::encode(&herald_protocol::ServerMessage::Error {
                    reference: None,
                    sub: None,
                    code: herald_protocol::ErrorCode::Unauthorized,
                    message: "the token has expired; reconnect with a fresh token to resume the session".into(),
                });
                c.outbox.close_with(Some(msg.into()), herald_protocol::CloseCode::Unauthorized.code(), "token expired");
                continue;
            }
            let idle = now_ms.saturating_sub(c.last_seen_ms.load(Ordering::Relaxed));
            if c.sse {
                // SSE clients never send: a comment line every heartbeat keeps
                // proxies from timing the stream out; dead peers show up as
                // write errors or stalls.
                if idle >= heartbeat_ms {
                    let _ = c.outbox.push(Frame::Ping);
                    c.last_seen_ms.store(now_ms, Ordering::Relaxed);
                }
            } else if idle >= 3 * heartbeat_ms {
                c.outbox.close_with(None, herald_protocol::CloseCode::Draining.code(), "heartbeat timeout");
            } else if idle >= heartbeat_ms {
                let _ = c.outbox.push(Frame::Ping);
            }
        }
    }
}
