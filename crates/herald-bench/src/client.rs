//! The benchmark's side of the protocol: connections from
//! `herald_client::wire` (hello and welcome handled there), messages built
//! from herald-protocol's types, and frames read raw, so that the benchmark
//! measures the gateway rather than a client's bookkeeping or its JSON parser.

use anyhow::{bail, Context};
use herald_client::wire;
use herald_protocol::{Answer, Binding, ClientMessage, Hello, Ref, Request, Serve, Since, Subscribe};
use serde_json::value::RawValue;
use serde_json::Value;

pub(crate) use herald_client::wire::{Rx, Tx};

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
    let hello = Hello { batch, client: Some(serde_json::json!({"name": "herald-bench"})), ..Hello::default() };
    let (tx, rx, _welcome) = wire::connect(base, hello).await.context("connect")?;
    Ok((tx, rx))
}

/// The next JSON text frame.
pub(crate) async fn next_json(rx: &mut Rx) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&wire::next_text(rx).await?)?)
}

/// The next text frame as it came (with batching, several lines).
pub(crate) async fn next_text(rx: &mut Rx) -> anyhow::Result<String> {
    Ok(wire::next_text(rx).await?)
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

/// Write one message.
pub(crate) async fn send(tx: &mut Tx, msg: &ClientMessage) -> anyhow::Result<()> {
    Ok(wire::send(tx, msg).await?)
}

/// Queue one message without a flush (pipelined publishing).
pub(crate) async fn feed(tx: &mut Tx, msg: &ClientMessage) -> anyhow::Result<()> {
    Ok(wire::feed(tx, msg).await?)
}

/// Flush what [`feed`] queued.
pub(crate) async fn flush(tx: &mut Tx) -> anyhow::Result<()> {
    Ok(wire::flush(tx).await?)
}

/// JSON text as a payload or body.
pub(crate) fn raw(json: String) -> anyhow::Result<Box<RawValue>> {
    Ok(RawValue::from_string(json)?)
}

/// `publish` with `ref`.
pub(crate) fn publish(reference: u64, exchange: &str, routing_key: &str, payload: Box<RawValue>) -> ClientMessage {
    let mut msg = ClientMessage::from(herald_client::NewEvent::raw(exchange, routing_key, payload));
    wire::set_ref(&mut msg, Ref::Num(reference as i64));
    msg
}

/// `subscribe` (id `s`) to everything on `exchange`.
pub(crate) fn subscribe(exchange: &str, since: Option<Since>) -> ClientMessage {
    ClientMessage::Subscribe(Subscribe {
        reference: Some(Ref::Str("s".into())),
        sub: "s".into(),
        bindings: vec![Binding { exchange: exchange.into(), pattern: "#".into() }],
        filters: Vec::new(),
        since,
    })
}

/// `serve`.
pub(crate) fn serve(service: &str, concurrency: u32) -> ClientMessage {
    ClientMessage::Serve(Serve {
        reference: Some(Ref::Str("s".into())),
        service: service.into(),
        concurrency: Some(concurrency),
    })
}

/// `request` with `ref`.
pub(crate) fn request(reference: u64, service: &str, body: Box<RawValue>) -> ClientMessage {
    ClientMessage::Request(Request {
        reference: Some(Ref::Num(reference as i64)),
        service: service.into(),
        body,
        timeout_ms: None,
    })
}

/// `answer`.
pub(crate) fn answer(request: String, body: Box<RawValue>) -> ClientMessage {
    ClientMessage::Answer(Answer { reference: None, request, body })
}

/// Subscribe to `exchange` from the start (`since: {id: 0}`) and read until
/// `expected` events arrived, checking that ids ascend: returns the events
/// per second. Events are counted without parsing each one (see
/// [`event_id`]); an `error` message or 30 s without a frame fails it.
pub(crate) async fn replay_from_start(base: &str, exchange: &str, expected: u64) -> anyhow::Result<f64> {
    let (mut tx, mut rx) = connect_batched(base).await?;
    let start = std::time::Instant::now();
    send(&mut tx, &subscribe(exchange, Some(Since::Id { id: 0 }))).await?;
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
