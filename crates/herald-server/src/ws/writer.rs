//! The writer task: drains a connection's outbox into the socket.
//!
//! Every frame queued since the last wake-up is framed and written with
//! one write (see [`super::wire::Encoder`]: small payloads copied into one
//! buffer, large ones referenced), so a client that is behind gets many
//! frames per syscall. Bytes stay counted against the outbox bound until
//! written. While idle the task holds no buffer.
//!
//! A client that said `hello.batch` gets consecutive text messages packed
//! into one WebSocket frame, one per line (JSON never holds a raw newline),
//! up to [`MAX_BATCH_BYTES`]: fewer frames to build, mask-check and parse
//! on both sides when events come faster than the client reads.

use super::wire::{Encoder, COPY_MAX};
use crate::metrics::LatencyHistogram;
use bytes::Bytes;
use herald_core::{Frame, Outbox};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::debug;

/// The largest batched frame: a few socket writes' worth, so that a batch
/// does not hold back the first message for long nor need a big buffer.
pub(crate) const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Encoded bytes after which the writer writes before it encodes more, so
/// that a deep queue is not copied into the buffer all at once.
const WRITE_CHUNK: usize = 256 * 1024;

/// Write `outbox` into `io` until a close frame or a write error.
pub(crate) async fn run<W>(mut io: W, outbox: Arc<Outbox>, latency: LatencyHistogram, batch: Arc<AtomicBool>)
where
    W: AsyncWrite + Unpin,
{
    let mut frames: VecDeque<Frame> = VecDeque::new();
    let mut enc = Encoder::default();
    outbox.take_all(&mut frames);
    loop {
        if frames.is_empty() {
            // Idle: hold no buffers while waiting (the sweeper gives back
            // the outbox's queue buffer of an idle connection).
            frames = VecDeque::new();
            enc = Encoder::default();
            outbox.ready().await;
            outbox.take_all(&mut frames);
            continue;
        }
        let batching = batch.load(Ordering::Relaxed);
        let frames_now = frames.make_contiguous();
        // Room for what will be copied (headers and small payloads), so
        // the buffer is allocated once, not grown frame by frame.
        let copied: usize = frames_now.iter().map(|f| if f.cost() <= COPY_MAX { f.cost() + 14 } else { 14 }).sum();
        enc.reserve(copied.min(WRITE_CHUNK + MAX_BATCH_BYTES));
        let mut close = None;
        let (mut i, mut reported) = (0, 0);
        while i < frames_now.len() {
            let frame = &frames_now[i];
            match frame {
                Frame::Text(_) | Frame::Event(..) if batching => {
                    // The run of text messages that fits one batched frame
                    // (one alone goes out as itself).
                    let start = i;
                    let mut len = text(frame).map_or(0, Bytes::len);
                    i += 1;
                    while let Some(b) = frames_now.get(i).and_then(text) {
                        if len + 1 + b.len() > MAX_BATCH_BYTES {
                            break;
                        }
                        len += 1 + b.len();
                        i += 1;
                    }
                    enc.text_lines(frames_now[start..i].iter().filter_map(text));
                }
                Frame::Text(b) | Frame::Event(b, _) => {
                    enc.text(b);
                    i += 1;
                }
                Frame::Ping => {
                    enc.ping();
                    i += 1;
                }
                Frame::Pong(body) => {
                    enc.pong(body);
                    i += 1;
                }
                Frame::Close(code, reason) => {
                    close = Some((*code, reason.clone()));
                    i = frames_now.len();
                }
            }
            if close.is_none() && (enc.pending() >= WRITE_CHUNK || i == frames_now.len()) {
                if let Err(e) = enc.write_to(&mut io).await {
                    debug!(error = %e, "WebSocket write failed.");
                    return;
                }
                let done = &frames_now[reported..i];
                crate::metrics::observe_written(&latency, done);
                let bytes = done.iter().map(Frame::cost).sum();
                reported = i;
                if i < frames_now.len() {
                    // Give the space back as each chunk is written, not
                    // after the whole batch: a replay (or a fan-out to a
                    // client that fell behind) refills the outbox while the
                    // rest is written, instead of waiting for all of up to
                    // `limits.max_outbound_bytes` to drain.
                    outbox.written_bytes(bytes);
                } else {
                    // All written: free the bytes and take what came
                    // meanwhile under one lock.
                    frames.clear();
                    outbox.written_and_take(bytes, &mut frames);
                    break;
                }
            }
        }
        if let Some((code, reason)) = close {
            // What came before the close is encoded and not yet written.
            enc.close(code, &reason);
            let _ = enc.write_to(&mut io).await;
            let _ = io.shutdown().await;
            return;
        }
    }
}

/// The bytes of a text message (a reply or an event).
fn text(frame: &Frame) -> Option<&Bytes> {
    match frame {
        Frame::Text(b) | Frame::Event(b, _) => Some(b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::{protocol::Role, Message};

    /// Run the writer over `frames` into a socket pair; the messages a
    /// WebSocket library reads from it.
    async fn written(frames: Vec<Frame>, batch: bool) -> Vec<Message> {
        let outbox = Arc::new(Outbox::new(1 << 20, Bytes::from_static(b"{}"), (4408, "slow")));
        for f in frames {
            outbox.push(f).expect("queued");
        }
        outbox.push(Frame::Close(1000, "done".into())).expect("queued");
        let (mut server, client) = tokio::io::duplex(1 << 20);
        // The server's end stays open: the client answers pings into it.
        run(&mut server, outbox, LatencyHistogram::new(&[1.0]), Arc::new(AtomicBool::new(batch))).await;
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let mut got = Vec::new();
        while let Some(m) = ws.next().await {
            let m = m.expect("valid frames");
            let last = matches!(m, Message::Close(_));
            got.push(m);
            if last {
                break;
            }
        }
        got
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
