//! The writer task: drains a connection's outbox into the socket.
//!
//! Every frame queued since the last wake-up is fed into the WebSocket sink
//! before one flush, so a client that is behind gets many frames per
//! syscall. Bytes stay counted against the outbox bound until written.
//!
//! A client that said `hello.batch` gets consecutive text messages packed
//! into one WebSocket frame, one per line (JSON never holds a raw newline),
//! up to [`MAX_BATCH_BYTES`]: fewer frames to build, mask-check and parse
//! on both sides when events come faster than the client reads.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::Bytes;
use futures_util::{Sink, SinkExt};
use herald_core::{Frame, Outbox};
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tracing::debug;

/// The largest batched frame: a few socket writes' worth, so that a batch
/// does not hold back the first message for long nor need a big buffer.
pub(crate) const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Write `outbox` into `sink` until a close frame or a write error.
pub(crate) async fn run<S>(mut sink: S, outbox: Arc<Outbox>, latency: Histogram, batch: Arc<AtomicBool>)
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
        let batching = batch.load(Ordering::Relaxed);
        let mut close = None;
        let mut packed = String::new();
        for frame in &frames {
            let msg = match frame {
                Frame::Text(b) | Frame::Event(b, _) if batching => {
                    let Ok(text) = std::str::from_utf8(b) else { continue };
                    // Full: what is packed goes out first.
                    let full = !packed.is_empty() && packed.len() + 1 + text.len() > MAX_BATCH_BYTES;
                    if full
                        && feed(&mut sink, Message::Text(Utf8Bytes::from(std::mem::take(&mut packed)))).await.is_err()
                    {
                        return;
                    }
                    if !packed.is_empty() {
                        packed.push('\n');
                    }
                    packed.push_str(text);
                    continue;
                }
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
            // A ping goes after the text packed before it.
            if !packed.is_empty()
                && feed(&mut sink, Message::Text(Utf8Bytes::from(std::mem::take(&mut packed)))).await.is_err()
            {
                return;
            }
            if feed(&mut sink, msg).await.is_err() {
                return;
            }
        }
        if !packed.is_empty() && feed(&mut sink, Message::Text(Utf8Bytes::from(packed))).await.is_err() {
            return;
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

/// Queue one message in the sink (written at the next flush).
async fn feed<S>(sink: &mut S, msg: Message) -> Result<(), ()>
where
    S: Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    sink.feed(msg).await.map_err(|e| debug!(error = %e, "WebSocket write failed."))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run the writer over `frames` into a channel; the messages it wrote.
    async fn written(frames: Vec<Frame>, batch: bool) -> Vec<Message> {
        let outbox = Arc::new(Outbox::new(1 << 20, Bytes::from_static(b"{}"), (4408, "slow".into())));
        for f in frames {
            outbox.push(f).expect("queued");
        }
        outbox.push(Frame::Close(1000, "done".into())).expect("queued");
        let got = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let into = got.clone();
        let sink = Box::pin(futures_util::sink::unfold((), move |(), m: Message| {
            into.lock().push(m);
            async { Ok::<(), String>(()) }
        }));
        run(sink, outbox, Histogram::new([1.0]), Arc::new(AtomicBool::new(batch))).await;
        let out = got.lock().clone();
        out
    }

    fn text(s: &str) -> Frame {
        Frame::Text(Bytes::from(s.to_string()))
    }

    #[tokio::test]
    async fn batched_frames_hold_one_message_per_line_in_order_and_pings_keep_their_place() {
        let got = written(vec![text("{\"a\":1}"), text("{\"b\":2}"), Frame::Ping, text("{\"c\":3}")], true).await;
        let kinds: Vec<String> = got
            .iter()
            .map(|m| match m {
                Message::Text(t) => t.to_string(),
                Message::Ping(_) => "ping".into(),
                Message::Close(_) => "close".into(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, vec!["{\"a\":1}\n{\"b\":2}", "ping", "{\"c\":3}", "close"]);
        let plain = written(vec![text("{\"a\":1}"), text("{\"b\":2}")], false).await;
        assert_eq!(plain.len(), 3, "one message per frame without batch: {plain:?}");
    }

    #[tokio::test]
    async fn a_batch_stops_at_its_size_limit() {
        let big = format!("\"{}\"", "x".repeat(MAX_BATCH_BYTES / 2));
        let got = written(vec![text(&big), text(&big), text(&big), text("1")], true).await;
        let sizes: Vec<usize> = got
            .iter()
            .filter_map(|m| match m {
                Message::Text(t) => Some(t.len()),
                _ => None,
            })
            .collect();
        assert_eq!(sizes.len(), 3, "{sizes:?}");
        assert!(sizes.iter().all(|s| *s <= MAX_BATCH_BYTES), "{sizes:?}");
        assert_eq!(
            sizes.iter().sum::<usize>(),
            3 * big.len() + 1 + 1,
            "nothing lost: one separator before the small one"
        );
    }
}
