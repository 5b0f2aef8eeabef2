//! The SQS rendezvous peer: long-polls the broker queue and answers each
//! request through the rendezvous broker.

use super::client::{client, reply_queue_name, valid_client_id, Credentials, STATUS_ATTRIBUTE};
use super::config::SqsConfig;
use crate::peer::{decode_body, Codec, PeerStats};
use crate::{runnable, BoxFuture, Connector, Control, Host};
use anyhow::{anyhow, Context};
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use herald_core::Broker;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

/// The SQS rendezvous peer (`type = "sqs"`).
pub struct SqsRendezvous {
    shared: Arc<Shared>,
    client: Option<aws_sdk_sqs::Client>,
    queue_url: Option<String>,
}

struct Shared {
    id: String,
    config: SqsConfig,
    codec: Codec,
    broker: Arc<Broker>,
    stats: Arc<PeerStats>,
}

/// What the SQS calls of one request need.
struct Ctx {
    shared: Arc<Shared>,
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsRendezvous {
    /// A peer that will answer requests from `config.queue` for `config.service`.
    pub fn new(id: String, config: SqsConfig, codec: Codec, broker: Arc<Broker>, stats: Arc<PeerStats>) -> Self {
        SqsRendezvous { shared: Arc::new(Shared { id, config, codec, broker, stats }), client: None, queue_url: None }
    }
}

fn sqs_err<E: std::error::Error + Send + Sync + 'static, R: std::fmt::Debug>(
    what: impl std::fmt::Display,
) -> impl FnOnce(aws_sdk_sqs::error::SdkError<E, R>) -> anyhow::Error {
    move |e| anyhow!("{what}: {}", DisplayErrorContext(e))
}

impl Connector for SqsRendezvous {
    fn connect(&mut self, _attempt: u32) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let c = &self.shared.config;
            let creds = match (&c.access_key_id, &c.secret_access_key) {
                (Some(id), Some(secret)) => {
                    Credentials { access_key_id: id.clone(), secret_access_key: secret.clone() }
                }
                _ => Credentials::from_env().context(
                    "no AWS credentials: set access_key_id and secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                )?,
            };
            let sqs = client(c.endpoint_url.as_deref(), &c.region, creds);
            // Make sure the broker queue exists (creating an existing queue with
            // the same attributes returns its URL).
            let out = sqs
                .create_queue()
                .queue_name(&c.queue)
                .send()
                .await
                .map_err(sqs_err(format!("creating the broker queue {}", c.queue)))?;
            let url = out.queue_url().context("SQS returned no queue URL")?.to_string();
            PeerStats::add(&self.shared.stats.send, 1);
            info!(peer = %self.shared.id, queue = %url, service = %c.service, "SQS rendezvous connected.");
            self.client = Some(sqs);
            self.queue_url = Some(url);
            Ok(())
        })
    }

    fn run<'a>(
        &'a mut self,
        _host: &'a dyn Host,
        mut control: watch::Receiver<Control>,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let (Some(sqs), Some(queue_url)) = (self.client.clone(), self.queue_url.clone()) else {
                return Err(anyhow!("not connected"));
            };
            let ctx = Arc::new(Ctx { shared: self.shared.clone(), client: sqs, queue_url });
            let c = &self.shared.config;
            // Stale reply queues are removed on a timer, beside the receive loop.
            let cleaner = tokio::spawn(clean_forever(ctx.clone()));
            let _stop_cleaner = AbortOnDrop(cleaner);
            let slots = Arc::new(Semaphore::new(c.max_in_flight));
            // A received request stays invisible to other receivers while it
            // is handled: longer than the broker's deadlines.
            let limits = self.shared.broker.limits();
            let visibility = (limits.match_timeout + limits.answer_timeout).as_secs() + 30;
            let visibility = i32::try_from(visibility).unwrap_or(43_200).min(43_200);
            loop {
                if !runnable(&mut control).await {
                    return Ok(());
                }
                // Receive only what can be handled now.
                let first = slots.clone().acquire_owned().await.context("semaphore closed")?;
                let free = (slots.available_permits() + 1).min(10) as i32;
                let receive = ctx
                    .client
                    .receive_message()
                    .queue_url(&ctx.queue_url)
                    .wait_time_seconds(c.wait_time_s as i32)
                    .max_number_of_messages(free)
                    .visibility_timeout(visibility)
                    .message_attribute_names("All")
                    .send();
                let out = tokio::select! {
                    r = receive => r.map_err(sqs_err(format!("receiving from {}", ctx.queue_url)))?,
                    // Pause or drain: stop receiving. Messages of an
                    // abandoned receive reappear after the visibility timeout.
                    _ = control.changed() => continue,
                };
                let mut first = Some(first);
                for m in out.messages.unwrap_or_default() {
                    PeerStats::add(&ctx.shared.stats.recv, 1);
                    PeerStats::add(&ctx.shared.stats.r#in, 1);
                    let permit = match first.take() {
                        Some(p) => p,
                        None => slots.clone().acquire_owned().await.context("semaphore closed")?,
                    };
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        handle(&ctx, m).await;
                        drop(permit);
                    });
                }
            }
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.client = None;
            self.queue_url = None;
        })
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One request: answer it through the broker, send the answer to the reply
/// queue, then delete it. A request is deleted only once its reply was sent,
/// or when it can never be answered (no valid ClientID).
async fn handle(ctx: &Ctx, m: aws_sdk_sqs::types::Message) {
    let s = &ctx.shared;
    let Some(receipt) = m.receipt_handle() else {
        warn!(peer = %s.id, "An SQS message without a receipt handle; ignored.");
        return;
    };
    let client_id =
        m.message_attributes().and_then(|a| a.get("ClientID")).and_then(|v| v.string_value()).map(str::to_string);
    let reply_queue = client_id.as_deref().map(|id| reply_queue_name(s.config.prefix(), id));
    let (Some(client_id), Some(reply_queue)) = (client_id, reply_queue) else {
        warn!(peer = %s.id, message = ?m.message_id(), "An SQS request without a ClientID attribute; deleted.");
        PeerStats::add(&s.stats.err, 1);
        delete(ctx, receipt).await;
        return;
    };
    if !valid_client_id(&client_id) || reply_queue.len() > 80 {
        warn!(peer = %s.id, client_id = %client_id.chars().take(80).collect::<String>(), "An SQS request with an unusable ClientID; deleted.");
        PeerStats::add(&s.stats.err, 1);
        delete(ctx, receipt).await;
        return;
    }
    let body = m.body().unwrap_or_default();
    let outcome = match decode_body(s.codec, &[], body.as_bytes()).map(|mut parts| parts.pop()) {
        Ok(Some(json)) => match RawValue::from_string(json) {
            Ok(raw) => match s.broker.request(&s.config.service, raw, None).answer().await {
                Ok(answer) => Ok(reply_text(s.codec, &answer)),
                Err(e) => Err((e.code(), e.to_string())),
            },
            Err(e) => Err((herald_protocol::ErrorCode::BadRequest, format!("body: {e}"))),
        },
        Ok(None) => Err((herald_protocol::ErrorCode::BadRequest, "empty body".to_string())),
        Err(e) => Err((herald_protocol::ErrorCode::BadRequest, e)),
    };
    if let Err((code, message)) = &outcome {
        debug!(peer = %s.id, %client_id, %code, %message, "SQS request not answered.");
    }
    match send_reply(ctx, &reply_queue, outcome).await {
        Ok(()) => {
            PeerStats::add(&s.stats.out, 1);
            delete(ctx, receipt).await;
        }
        Err(e) => {
            // Left in the queue: it comes back after the visibility timeout.
            warn!(peer = %s.id, %client_id, error = %e, "Could not send an SQS reply; the request will be retried.");
            PeerStats::add(&s.stats.err, 1);
        }
    }
}

/// The answer as SQS message text: JSON text, or with the `string` codec
/// the bare string when the answer is one.
fn reply_text(codec: Codec, answer: &RawValue) -> String {
    if codec == Codec::String {
        if let Ok(text) = serde_json::from_str::<String>(answer.get()) {
            return text;
        }
    }
    answer.get().to_string()
}

async fn send_reply(
    ctx: &Ctx,
    reply_queue: &str,
    outcome: Result<String, (herald_protocol::ErrorCode, String)>,
) -> anyhow::Result<()> {
    let s = &ctx.shared;
    let created = ctx
        .client
        .create_queue()
        .queue_name(reply_queue)
        .send()
        .await
        .map_err(sqs_err(format!("creating reply queue {reply_queue}")))?;
    PeerStats::add(&s.stats.send, 1);
    let url = created.queue_url().context("SQS returned no reply queue URL")?;
    let (status, text) = match outcome {
        // SQS refuses empty messages: an empty answer travels as JSON `""`.
        Ok(text) if text.is_empty() => ("ok".to_string(), "\"\"".to_string()),
        Ok(text) => ("ok".to_string(), text),
        Err((code, message)) => {
            let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
            (code.as_str().to_string(), body)
        }
    };
    let attr = MessageAttributeValue::builder()
        .data_type("String")
        .string_value(status)
        .build()
        .map_err(|e| anyhow!("message attribute: {e}"))?;
    ctx.client
        .send_message()
        .queue_url(url)
        .message_body(text)
        .message_attributes(STATUS_ATTRIBUTE, attr)
        .send()
        .await
        .map_err(sqs_err(format!("sending the reply to {reply_queue}")))?;
    PeerStats::add(&s.stats.send, 1);
    Ok(())
}

async fn delete(ctx: &Ctx, receipt: &str) {
    let s = &ctx.shared;
    match ctx.client.delete_message().queue_url(&ctx.queue_url).receipt_handle(receipt).send().await {
        Ok(_) => PeerStats::add(&s.stats.send, 1),
        Err(e) => {
            PeerStats::add(&s.stats.err, 1);
            warn!(peer = %s.id, error = %DisplayErrorContext(e), "Could not delete an SQS request; it may be handled again.");
        }
    }
}

async fn clean_forever(ctx: Arc<Ctx>) {
    let every = Duration::from_secs(ctx.shared.config.cleanup_interval_s);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = clean_once(&ctx).await {
            PeerStats::add(&ctx.shared.stats.err, 1);
            warn!(peer = %ctx.shared.id, error = %e, "Cleaning up stale SQS reply queues failed; will try again.");
        }
    }
}

/// Delete reply queues whose `LastModifiedTimestamp` is older than the
/// configured age. Returns how many were deleted.
async fn clean_once(ctx: &Ctx) -> anyhow::Result<usize> {
    let s = &ctx.shared;
    let prefix = format!("{}-client-", s.config.prefix());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut deleted = 0;
    let mut next: Option<String> = None;
    loop {
        let page = ctx
            .client
            .list_queues()
            .queue_name_prefix(&prefix)
            .max_results(1000)
            .set_next_token(next.take())
            .send()
            .await
            .map_err(sqs_err("listing reply queues"))?;
        PeerStats::add(&s.stats.send, 1);
        for url in page.queue_urls() {
            let attrs = match ctx
                .client
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::LastModifiedTimestamp)
                .send()
                .await
            {
                Ok(a) => a,
                // Deleted meanwhile (by its client, or another Herald node).
                Err(e) if e.as_service_error().is_some_and(|se| se.is_queue_does_not_exist()) => continue,
                Err(e) => return Err(sqs_err(format!("reading attributes of {url}"))(e)),
            };
            let modified = attrs
                .attributes()
                .and_then(|a| a.get(&QueueAttributeName::LastModifiedTimestamp))
                // Seconds since the epoch; AWS sends an integer, some compatible servers a fraction.
                .and_then(|v| v.parse::<f64>().ok())
                .map(|secs| secs as u64);
            let Some(modified) = modified else { continue };
            if now.saturating_sub(modified) < s.config.reply_queue_max_age_s {
                continue;
            }
            match ctx.client.delete_queue().queue_url(url).send().await {
                Ok(_) => {
                    deleted += 1;
                    debug!(peer = %s.id, queue = %url, "Deleted a stale reply queue.");
                }
                Err(e) if e.as_service_error().is_some_and(|se| se.is_queue_does_not_exist()) => {}
                Err(e) => return Err(sqs_err(format!("deleting {url}"))(e)),
            }
        }
        next = page.next_token().map(str::to_string);
        if next.is_none() {
            break;
        }
    }
    if deleted > 0 {
        info!(peer = %s.id, deleted, "Deleted stale SQS reply queues.");
    }
    Ok(deleted)
}
