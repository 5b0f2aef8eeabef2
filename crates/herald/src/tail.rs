//! `herald tail`.

use crate::cli::TailArgs;
use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// `http://h:p` or `ws://h:p` → `ws://h:p/v1/ws`.
pub(crate) fn ws_url(url: &str) -> String {
    let base = url.trim_end_matches('/');
    let base = base.strip_prefix("http://").map(|r| format!("ws://{r}")).unwrap_or_else(|| base.to_string());
    let base = base.strip_prefix("https://").map(|r| format!("wss://{r}")).unwrap_or(base);
    if base.ends_with("/v1/ws") {
        base
    } else {
        format!("{base}/v1/ws")
    }
}

pub(crate) async fn run(args: TailArgs) -> anyhow::Result<()> {
    let mut bindings = Vec::new();
    for b in &args.bindings {
        let Some((exchange, pattern)) = b.split_once('=') else {
            bail!("binding `{b}` must be EXCHANGE=PATTERN");
        };
        bindings.push(json!({"exchange": exchange, "pattern": pattern}));
    }
    let filters: Vec<Value> = args
        .filter
        .iter()
        .map(|f| serde_json::from_str(f).with_context(|| format!("filter `{f}` is not JSON")))
        .collect::<Result<_, _>>()?;
    let mut sub = json!({"type": "subscribe", "ref": 1, "sub": "tail", "bindings": bindings, "filters": filters});
    if let Some(id) = args.since {
        sub["since"] = json!({"id": id});
    } else if let Some(n) = args.last {
        sub["since"] = json!({"last": n});
    } else if let Some(t) = &args.since_time {
        sub["since"] = json!({"time": t});
    }
    let url = ws_url(&args.url);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(&url).await.with_context(|| format!("cannot connect to {url}"))?;
    let mut hello = json!({"type": "hello", "client": {"name": "herald-tail"}});
    if let Some(token) = &args.token {
        hello["token"] = json!(token);
    }
    ws.send(Message::text(hello.to_string())).await?;
    ws.send(Message::text(sub.to_string())).await?;
    let mut printed = 0u64;
    let mut last_ack = 0u64;
    while let Some(msg) = ws.next().await {
        let text = match msg.context("connection failed")? {
            Message::Text(t) => t,
            Message::Close(frame) => bail!("server closed the connection: {frame:?}"),
            _ => continue,
        };
        let v: Value = serde_json::from_str(text.as_str()).context("server sent invalid JSON")?;
        match v["type"].as_str() {
            Some("event") => {
                let id = v["id"].as_u64().unwrap_or(0);
                let mut out = v.clone();
                if let Some(o) = out.as_object_mut() {
                    o.remove("type");
                    o.remove("sub");
                }
                println!("{out}");
                printed += 1;
                if id >= last_ack + 100 || args.count == Some(printed) {
                    ws.send(Message::text(json!({"type": "ack", "sub": "tail", "id": id}).to_string())).await?;
                    last_ack = id;
                }
                if args.count == Some(printed) {
                    let _ = ws.close(None).await;
                    return Ok(());
                }
            }
            Some("error") => {
                eprintln!("herald: {} {}", v["code"].as_str().unwrap_or("?"), v["message"].as_str().unwrap_or(""));
                if v["ref"] == json!(1) {
                    bail!("subscription refused");
                }
                if v["code"] == "unauthorized" {
                    bail!("not authorized");
                }
            }
            Some("status") => eprintln!("herald: source {} is {}", v["source"], v["state"]),
            Some("closing") => eprintln!("herald: server closing: {}", v["reason"]),
            _ => {}
        }
    }
    bail!("connection closed")
}
