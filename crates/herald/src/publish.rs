//! `herald publish`: one event, or one per line of standard input, over
//! WebSocket with the Rust client; prints each id once it is durable.

use crate::cli::PublishArgs;
use anyhow::{anyhow, Context};
use herald_client::{Client, ClientConfig, NewEvent};
use serde_json::value::RawValue;
use std::io::BufRead;

pub(crate) async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let acl = (!args.acl.is_empty()).then(|| args.acl.clone());
    let payloads: Vec<String> = match &args.payload {
        Some(p) => vec![p.clone()],
        None => std::io::stdin().lock().lines().collect::<Result<Vec<_>, _>>().context("reading standard input")?,
    };
    // Check every payload before sending any.
    let mut events = Vec::new();
    for (i, text) in payloads.iter().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let payload = RawValue::from_string(text.trim().to_string())
            .with_context(|| format!("payload #{} is not JSON", i + 1))?;
        let mut event = NewEvent::raw(&args.exchange, &args.routing_key, payload);
        if let Some(acl) = &acl {
            event = event.acl(acl.clone());
        }
        events.push(event);
    }
    let mut config = ClientConfig::new(&args.url).with_client_name("herald-publish").without_reconnect();
    if let Some(token) = &args.token {
        config = config.with_token(token.clone());
    }
    let client = Client::connect(config).await.with_context(|| format!("cannot reach {}", args.url))?;
    let mut result = Ok(());
    for event in events {
        match client.publish(event).await {
            Ok(id) => println!("{id}"),
            Err(e) => {
                result = Err(anyhow!("{e}"));
                break;
            }
        }
    }
    client.close().await;
    result
}
