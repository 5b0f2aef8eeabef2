//! `herald publish`.

use crate::cli::PublishArgs;
use anyhow::Context;
use serde_json::{json, Value};
use std::io::BufRead;

pub(crate) async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let url = format!("{}/v1/publish", args.url.trim_end_matches('/'));
    let acl = (!args.acl.is_empty()).then(|| args.acl.clone());
    let payloads: Vec<String> = match &args.payload {
        Some(p) => vec![p.clone()],
        None => std::io::stdin().lock().lines().collect::<Result<Vec<_>, _>>().context("reading standard input")?,
    };
    for (i, text) in payloads.iter().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let payload: Value = serde_json::from_str(text).with_context(|| format!("payload #{} is not JSON", i + 1))?;
        let mut event = json!({"exchange": args.exchange, "routing_key": args.routing_key, "payload": payload});
        if let Some(acl) = &acl {
            event["acl"] = json!(acl);
        }
        let mut req = client.post(&url).json(&event);
        if let Some(token) = &args.token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            anyhow::bail!("{status}: {}", body["error"]["message"].as_str().unwrap_or("request failed"));
        }
        println!("{}", body["id"]);
    }
    Ok(())
}
