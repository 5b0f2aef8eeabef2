//! `herald tail`: subscribe and print events as JSON lines, on the Rust
//! client (so a lost connection is resumed with nothing missed or doubled).

use crate::cli::TailArgs;
use anyhow::{anyhow, bail, Context};
use herald_client::{Client, ClientConfig, SubscribeOptions};
use serde_json::value::RawValue;
use serde_json::Value;

/// One printed line: the event without its `type` and `sub`.
#[derive(serde::Serialize)]
struct Line<'a> {
    id: u64,
    exchange: &'a str,
    routing_key: &'a str,
    time: &'a str,
    payload: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<&'a serde_json::Map<String, Value>>,
}

pub(crate) async fn run(args: TailArgs) -> anyhow::Result<()> {
    let mut options = SubscribeOptions { id: Some("tail".into()), ..Default::default() };
    for b in &args.bindings {
        let Some((exchange, pattern)) = b.split_once('=') else {
            bail!("binding `{b}` must be EXCHANGE=PATTERN");
        };
        options = options.bind(exchange, pattern);
    }
    for f in &args.filter {
        options = options.filter(serde_json::from_str(f).with_context(|| format!("filter `{f}` is not JSON"))?);
    }
    if let Some(id) = args.since {
        options = options.since_id(id);
    } else if let Some(n) = args.last {
        options = options.last(n);
    } else if let Some(t) = &args.since_time {
        options = options.since_time(t);
    }
    let mut config = ClientConfig::new(&args.url).with_client_name("herald-tail");
    if let Some(token) = &args.token {
        config = config.with_token(token.clone());
    }
    let client = Client::connect(config).await.with_context(|| format!("cannot connect to {}", args.url))?;
    let mut sub = client.subscribe(options).await.map_err(|e| anyhow!("subscription refused: {e}"))?;
    let mut printed = 0u64;
    while let Some(event) = sub.next().await {
        let e = event.map_err(|e| anyhow!("{e}"))?;
        let line = Line {
            id: e.id,
            exchange: &e.exchange,
            routing_key: &e.routing_key,
            time: &e.time,
            payload: &e.payload,
            headers: e.headers.as_ref(),
        };
        println!("{}", serde_json::to_string(&line)?);
        printed += 1;
        if args.count == Some(printed) {
            sub.ack(e.id);
            client.close().await;
            return Ok(());
        }
    }
    bail!("the subscription ended")
}
