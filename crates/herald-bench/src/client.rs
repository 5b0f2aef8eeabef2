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

/// Subscribe to `exchange` from the start (`since: {id: 0}`) and read until
/// `expected` events arrived, checking that ids ascend: returns the events
/// per second. Events are counted without parsing each one (see
/// [`event_id`]); an `error` message or 30 s without a frame fails it.
pub(crate) async fn replay_from_start(base: &str, exchange: &str, expected: u64) -> anyhow::Result<f64> {
    let (mut tx, mut rx) = connect_batched(base).await?;
    let start = std::time::Instant::now();
    send(
        &mut tx,
        json!({"type": "subscribe", "ref": "s", "sub": "s", "since": {"id": 0},
               "bindings": [{"exchange": exchange, "pattern": "#"}]}),
    )
    .await?;
    let (mut got, mut last) = (0u64, 0u64);
    while got < expected {
        let text = tokio::time::timeout(std::time::Duration::from_secs(30), next_text(&mut rx))
            .await
            .context("replay stalled for 30 s")??;
        for line in text.split('\n') {
            match event_id(line) {
                Some(id) if id > last => {
                    last = id;
                    got += 1;
                }
                Some(id) => bail!("replay out of order: {id} after {last}"),
                None if line.contains("\"type\":\"error\"") => bail!("replay failed: {line}"),
                None => {}
            }
        }
    }
    Ok(got as f64 / start.elapsed().as_secs_f64())
}
