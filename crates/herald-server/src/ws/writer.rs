//! The writer task: drains a connection's outbox into the socket.
//!
//! Every frame queued since the last wake-up is framed (a header before
//! each shared payload, see [`super::wire`]) and written with one vectored
//! write, so a client that is behind gets many frames per syscall and no
//! payload is copied. Bytes stay counted against the outbox bound until
//! written. While idle the task holds no buffer.
//!
//! A client that said `hello.batch` gets consecutive text messages packed
//! into one WebSocket frame, one per line (JSON never holds a raw newline),
//! up to [`MAX_BATCH_BYTES`]: fewer frames to build, mask-check and parse
//! on both sides when events come faster than the client reads.

use super::wire::Encoder;
use bytes::Bytes;
use herald_core::{Frame, Outbox};
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::debug;

/// The largest batched frame: a few socket writes' worth, so that a batch
/// does not hold back the first message for long nor need a big buffer.
pub(crate) const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Write `outbox` into `io` until a close frame or a write error.
pub(crate) async fn run<W>(mut io: W, outbox: Arc<Outbox>, latency: Histogram, batch: Arc<AtomicBool>)
where
    W: AsyncWrite + Unpin,
{
    let mut frames: Vec<Frame> = Vec::new();
    let mut enc = Encoder::default();
    // Text messages waiting to be packed into one batched frame.
    let mut lines: Vec<Bytes> = Vec::new();
    let mut lines_len = 0usize;
    loop {
        outbox.take(&mut frames);
        if frames.is_empty() {
            // Idle: hold no buffers while waiting (the sweeper gives back
            // the outbox's queue buffer of an idle connection).
            frames = Vec::new();
            lines = Vec::new();
            enc = Encoder::default();
            outbox.ready().await;
            continue;
        }
        let batching = batch.load(Ordering::Relaxed);
        let mut close = None;
        for frame in &frames {
            match frame {
                Frame::Text(b) | Frame::Event(b, _) if batching => {
                    // Full: what is packed goes out first.
                    if !lines.is_empty() && lines_len + 1 + b.len() > MAX_BATCH_BYTES {
                        flush_lines(&mut enc, &mut lines, &mut lines_len);
                    }
                    lines_len += b.len() + usize::from(!lines.is_empty());
                    lines.push(b.clone());
                }
                other => {
                    // A control frame goes after the text packed before it.
                    flush_lines(&mut enc, &mut lines, &mut lines_len);
                    match other {
                        Frame::Text(b) | Frame::Event(b, _) => enc.text(b.clone()),
                        Frame::Ping => enc.ping(),
                        Frame::Pong(body) => enc.pong(body.clone()),
                        Frame::Close(code, reason) => {
                            close = Some((*code, reason.clone()));
                            break;
                        }
                    }
                }
            }
        }
        flush_lines(&mut enc, &mut lines, &mut lines_len);
        if let Err(e) = enc.write_to(&mut io).await {
            debug!(error = %e, "WebSocket write failed.");
            return;
        }
        outbox.written(&frames);
        crate::metrics::observe_written(&latency, &frames);
        frames.clear();
        if let Some((code, reason)) = close {
            enc.close(code, &reason);
            let _ = enc.write_to(&mut io).await;
            let _ = io.shutdown().await;
            return;
        }
    }
}

/// Frame the packed lines (one message alone goes out as itself).
fn flush_lines(enc: &mut Encoder, lines: &mut Vec<Bytes>, len: &mut usize) {
    match lines.len() {
        0 => {}
        1 => enc.text(lines[0].clone()),
        _ => enc.text_lines(lines),
    }
    lines.clear();
    *len = 0;
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
        run(&mut server, outbox, Histogram::new([1.0]), Arc::new(AtomicBool::new(batch))).await;
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
