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
    let (ws, _) = tokio_tungstenite::connect_async(ws_url(base)).await.context("connect")?;
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::text(json!({"type": "hello"}).to_string())).await?;
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

pub(crate) async fn send(tx: &mut Tx, v: Value) -> anyhow::Result<()> {
    tx.send(Message::text(v.to_string())).await?;
    Ok(())
}
