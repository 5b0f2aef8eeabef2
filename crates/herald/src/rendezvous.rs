//! `herald rendezvous`: send one request and print the answer, over
//! WebSocket, HTTP or (as Snowflake's clients do) Amazon SQS.

use crate::cli::{RendezvousAction, RendezvousArgs};
use anyhow::{anyhow, bail, Context};
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::MessageAttributeValue;
use base64::Engine;
use herald_client::{Client, ClientConfig};
use herald_connectors::sqs::{self, Credentials, STATUS_ATTRIBUTE};
use serde_json::Value;
use std::io::Read;
use std::time::{Duration, Instant};

/// Snowflake's encoding of SQS credentials: base64 of this JSON.
#[derive(serde::Serialize, serde::Deserialize)]
struct EncodedCreds {
    #[serde(rename = "aws-access-key-id")]
    access_key_id: String,
    #[serde(rename = "aws-secret-key")]
    secret_key: String,
}

pub(crate) async fn run(args: RendezvousArgs) -> anyhow::Result<()> {
    if let Some(RendezvousAction::EncodeCreds { access_key_id, secret_key }) = &args.action {
        let json = serde_json::to_string(&EncodedCreds {
            access_key_id: access_key_id.clone(),
            secret_key: secret_key.clone(),
        })?;
        println!("{}", base64::engine::general_purpose::STANDARD.encode(json));
        return Ok(());
    }
    let service = args.service.clone().context("--service is required")?;
    let timeout = humantime::parse_duration(&args.timeout).context("--timeout")?;
    let text = match &args.body {
        Some(b) => b.clone(),
        None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("reading the body from standard input")?;
            s
        }
    };
    let body: Value = if args.json {
        serde_json::from_str(&text).context("--json: the body is not JSON")?
    } else {
        Value::String(text)
    };
    let answer = match &args.sqs_queue {
        Some(queue) => over_sqs(&args, queue, &body, timeout).await?,
        None if args.url.starts_with("ws://") || args.url.starts_with("wss://") => {
            over_websocket(&args, &service, body, timeout).await?
        }
        None => over_http(&args, &service, &body, timeout).await?,
    };
    // A string answer prints as is; anything else as JSON.
    match answer {
        Value::String(s) => println!("{s}"),
        other => println!("{other}"),
    }
    Ok(())
}

async fn over_http(args: &RendezvousArgs, service: &str, body: &Value, timeout: Duration) -> anyhow::Result<Value> {
    let base = args.url.trim_end_matches('/');
    let url = format!("{base}/v1/rendezvous/{service}?timeout_ms={}", timeout.as_millis());
    let mut req = reqwest::Client::new().post(&url).json(body).timeout(timeout + Duration::from_secs(5));
    if let Some(t) = &args.token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let value: Value = resp.json().await.context("the gateway's answer is not JSON")?;
    if !status.is_success() {
        bail!(
            "{}: {}",
            value["error"]["code"].as_str().unwrap_or(status.as_str()),
            value["error"]["message"].as_str().unwrap_or("request failed")
        );
    }
    Ok(value)
}

async fn over_websocket(args: &RendezvousArgs, service: &str, body: Value, timeout: Duration) -> anyhow::Result<Value> {
    let mut config = ClientConfig::new(&args.url).with_client_name("herald rendezvous").without_reconnect();
    if let Some(t) = &args.token {
        config = config.with_token(t.clone());
    }
    let client = Client::connect(config).await.with_context(|| format!("cannot reach {}", args.url))?;
    let body = serde_json::value::to_raw_value(&body)?;
    let answer = client.request(service, body, Some(timeout)).await;
    client.close().await;
    let answer = answer.map_err(|e| anyhow!("{e}"))?;
    serde_json::from_str(answer.get()).context("the answer is not JSON")
}

/// Snowflake's SQS rendezvous, client side: send the request with a fresh
/// ClientID, wait for the reply queue Herald creates, read the answer,
/// delete the reply queue. Retries with a new ClientID when no answer comes.
async fn over_sqs(args: &RendezvousArgs, queue_url: &str, body: &Value, timeout: Duration) -> anyhow::Result<Value> {
    let encoded = args.sqs_creds.as_deref().context("--sqs-creds is required with --sqs-queue")?;
    let json = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .context("--sqs-creds is not base64 (make it with `herald rendezvous encode-creds`)")?;
    let creds: EncodedCreds = serde_json::from_slice(&json)
        .context("--sqs-creds does not hold {\"aws-access-key-id\", \"aws-secret-key\"}")?;
    let (endpoint, region) = sqs::endpoint_and_region(queue_url, &args.sqs_region)
        .with_context(|| format!("--sqs-queue `{queue_url}` is not a queue URL"))?;
    let prefix = match &args.sqs_reply_prefix {
        Some(p) => p.clone(),
        None => queue_url.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_string(),
    };
    let client = sqs::client(
        Some(&endpoint),
        &region,
        Credentials { access_key_id: creds.access_key_id, secret_access_key: creds.secret_key },
    );
    let text = match body {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut last_error = anyhow!("no attempt made");
    for attempt in 1..=args.sqs_attempts.max(1) {
        let client_id = format!("{:032x}", rand::random::<u128>());
        match sqs_attempt(&client, queue_url, &prefix, &client_id, &text, timeout).await {
            Ok(v) => return Ok(v),
            Err(e) => {
                eprintln!("herald: attempt {attempt} failed: {e:#}");
                last_error = e;
            }
        }
    }
    Err(last_error)
}

async fn sqs_attempt(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    prefix: &str,
    client_id: &str,
    text: &str,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let attr = MessageAttributeValue::builder()
        .data_type("String")
        .string_value(client_id)
        .build()
        .map_err(|e| anyhow!("message attribute: {e}"))?;
    client
        .send_message()
        .queue_url(queue_url)
        .message_body(text)
        .message_attributes("ClientID", attr)
        .send()
        .await
        .map_err(|e| anyhow!("sending the request: {}", DisplayErrorContext(e)))?;
    let reply_name = sqs::reply_queue_name(prefix, client_id);
    let deadline = Instant::now() + timeout;
    // Herald creates the reply queue when it has the answer: look for it,
    // a bounded number of times.
    let reply_url = loop {
        match client.get_queue_url().queue_name(&reply_name).send().await {
            Ok(out) => break out.queue_url().context("no reply queue URL")?.to_string(),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_queue_does_not_exist()) => {}
            Err(e) => bail!("looking for the reply queue: {}", DisplayErrorContext(e)),
        }
        if Instant::now() >= deadline {
            bail!("timeout: no reply queue {reply_name} after {}", humantime::format_duration(timeout));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let outcome = read_reply(client, &reply_url, deadline).await;
    // The reply queue is this attempt's alone: remove it whatever happened.
    if let Err(e) = client.delete_queue().queue_url(&reply_url).send().await {
        eprintln!("herald: could not delete the reply queue {reply_name}: {}", DisplayErrorContext(e));
    }
    outcome
}

async fn read_reply(client: &aws_sdk_sqs::Client, reply_url: &str, deadline: Instant) -> anyhow::Result<Value> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("timeout: the reply queue stayed empty");
        }
        let out = client
            .receive_message()
            .queue_url(reply_url)
            .wait_time_seconds(left.as_secs().clamp(1, 20) as i32)
            .max_number_of_messages(1)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| anyhow!("reading the reply: {}", DisplayErrorContext(e)))?;
        let Some(m) = out.messages.unwrap_or_default().into_iter().next() else { continue };
        let status = m
            .message_attributes()
            .and_then(|a| a.get(STATUS_ATTRIBUTE))
            .and_then(|v| v.string_value())
            .unwrap_or("ok")
            .to_string();
        let body = m.body().unwrap_or_default();
        if status != "ok" {
            let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            bail!("{status}: {}", v["error"]["message"].as_str().unwrap_or(body));
        }
        // JSON answers parse; anything else is the bare string.
        return Ok(serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string())));
    }
}
