//! The writer task: drains a connection's outbox into the socket.
//!
//! Every frame queued since the last wake-up is fed into the WebSocket sink
//! before one flush, so a client that is behind gets many frames per
//! syscall. Bytes stay counted against the outbox bound until written.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::Bytes;
use futures_util::{Sink, SinkExt};
use herald_core::{Frame, Outbox};
use prometheus_client::metrics::histogram::Histogram;
use std::sync::Arc;
use tracing::debug;

/// Write `outbox` into `sink` until a close frame or a write error.
pub(crate) async fn run<S>(mut sink: S, outbox: Arc<Outbox>, latency: Histogram)
where
    S: Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    let mut frames: Vec<Frame> = Vec::new();
    loop {
        outbox.take(&mut frames);
        if frames.is_empty() {
            outbox.ready().await;
            continue;
        }
        let mut close = None;
        for frame in &frames {
            let msg = match frame {
                Frame::Text(b) | Frame::Event(b, _) => match Utf8Bytes::try_from(b.clone()) {
                    Ok(t) => Message::Text(t),
                    Err(_) => continue,
                },
                Frame::Ping => Message::Ping(Bytes::new()),
                Frame::Close(code, reason) => {
                    close = Some(Message::Close(Some(CloseFrame { code: *code, reason: reason.as_str().into() })));
                    break;
                }
            };
            if let Err(e) = sink.feed(msg).await {
                debug!(error = %e, "WebSocket write failed.");
                return;
            }
        }
        if let Err(e) = sink.flush().await {
            debug!(error = %e, "WebSocket flush failed.");
            return;
        }
        outbox.written(&frames);
        crate::metrics::observe_written(&latency, &frames);
        frames.clear();
        if let Some(msg) = close {
            let _ = sink.send(msg).await;
            let _ = sink.close().await;
            return;
        }
    }
}
