//! A minimal protocol client for the benchmark.

use anyhow::{bail, Context};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub(crate) type Tx = SplitSink<Ws, Message>;
pub(crate) type Rx = SplitStream<Ws>;

pub(crate) fn ws_url(base: &str) -> String {
    let rest = base.strip_prefix("http://").unwrap_or(base);
    format!("ws://{rest}/v1/ws")
}

/// Connect and say hello; returns the split socket after `welcome`.
pub(crate) async fn connect(base: &str) -> anyhow::Result<(Tx, Rx)> {
    connect_with(base, false).await
}

/// Connect and say hello, asking for batched frames (several messages per
/// frame, one per line: read them with [`next_text`] and split on `\n`).
pub(crate) async fn connect_batched(base: &str) -> anyhow::Result<(Tx, Rx)> {
    connect_with(base, true).await
}

async fn connect_with(base: &str, batch: bool) -> anyhow::Result<(Tx, Rx)> {
    let (ws, _) = tokio_tungstenite::connect_async(ws_url(base)).await.context("connect")?;
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::text(json!({"type": "hello", "batch": batch}).to_string())).await?;
    let welcome = next_json(&mut rx).await?;
    if welcome["type"] != "welcome" {
        bail!("expected welcome, got {welcome}");
    }
    Ok((tx, rx))
}

/// The next JSON text frame.
pub(crate) async fn next_json(rx: &mut Rx) -> anyhow::Result<Value> {
    loop {
        match rx.next().await {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
            Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// The next text frame as it came (with batching, several lines).
pub(crate) async fn next_text(rx: &mut Rx) -> anyhow::Result<String> {
    loop {
        match rx.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_string()),
            Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// The id of an `event` message, read without parsing the whole message
/// (the server writes `type` first and `id` before the payload), so that
/// the benchmark measures the gateway rather than its own JSON parser.
pub(crate) fn event_id(line: &str) -> Option<u64> {
    if !line.starts_with("{\"type\":\"event\"") {
        return None;
    }
    let rest = &line[line.find("\"id\":")? + 5..];
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

pub(crate) async fn send(tx: &mut Tx, v: Value) -> anyhow::Result<()> {
    tx.send(Message::text(v.to_string())).await?;
    Ok(())
}
