//! The connector itself.

use super::config::AmqpConfig;
use crate::peer::{decode_body, Codec, Interceptor, PeerStats};
use crate::DynamicBindings;
use crate::{BoxFuture, Connector, Control, Host};
use anyhow::{anyhow, Context};
use futures_util::{FutureExt, StreamExt};
use herald_core::event::Origin;
use herald_core::NewEvent;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;
use tracing::warn;

/// A RabbitMQ source peer.
pub struct AmqpSource {
    peer: String,
    config: AmqpConfig,
    codec: Codec,
    interceptors: Vec<Interceptor>,
    stats: Arc<PeerStats>,
    session: Option<(Connection, Channel, Consumer)>,
    /// Bindings clients asked for, and those in place on the current channel.
    dynamic: Arc<DynamicBindings>,
    applied: BTreeSet<(String, String)>,
    /// Applied bindings nobody wants any more, and since when (unbound
    /// after the grace).
    unwanted: std::collections::HashMap<(String, String), tokio::time::Instant>,
}

impl AmqpSource {
    /// A source for peer `peer`.
    pub fn new(
        peer: String,
        config: AmqpConfig,
        codec: Codec,
        interceptors: Vec<Interceptor>,
        stats: Arc<PeerStats>,
    ) -> AmqpSource {
        let dynamic = Arc::new(DynamicBindings::new(config.dynamic_exchanges.clone(), config.max_dynamic_bindings));
        AmqpSource {
            peer,
            config,
            codec,
            interceptors,
            stats,
            session: None,
            dynamic,
            applied: BTreeSet::new(),
            unwanted: std::collections::HashMap::new(),
        }
    }

    /// The dynamic bindings, shared with the gateway.
    pub fn dynamic(&self) -> Arc<DynamicBindings> {
        self.dynamic.clone()
    }

    /// Bring the channel's dynamic bindings in line with what clients want.
    async fn reconcile(&mut self, conn: &Connection, ch: &Channel) -> anyhow::Result<()> {
        let wanted = self.dynamic.wanted();
        let queue = self.config.queue.as_str();
        for (x, p) in wanted.difference(&self.applied.clone()) {
            // Binding to a missing exchange would close the channel: check on a
            // throwaway channel first.
            let probe = conn.create_channel().await.context("opening a probe channel")?;
            let exists = probe
                .exchange_declare(
                    x.as_str().into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() },
                    FieldTable::default(),
                )
                .await
                .is_ok();
            let _ = probe.close(200, "probe".into()).await;
            if !exists {
                warn!(peer = %self.peer, exchange = %x, "A dynamic binding names an exchange that does not exist; ignored.");
                self.dynamic.forget(x, p);
                continue;
            }
            ch.queue_bind(
                queue.into(),
                x.as_str().into(),
                p.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("binding {x} {p}"))?;
            PeerStats::add(&self.stats.send, 1);
            self.applied.insert((x.clone(), p.clone()));
        }
        // Unbind only what nobody has wanted for the grace (in a cluster,
        // another node's new want may still be on its way).
        let grace = self.dynamic.unbind_grace();
        let now = tokio::time::Instant::now();
        self.unwanted.retain(|k, _| !wanted.contains(k));
        let mut due = Vec::new();
        for k in self.applied.difference(&wanted) {
            let since = *self.unwanted.entry(k.clone()).or_insert(now);
            if now.duration_since(since) >= grace {
                due.push(k.clone());
            }
        }
        for (x, p) in due {
            self.unwanted.remove(&(x.clone(), p.clone()));
            ch.queue_unbind(queue.into(), x.as_str().into(), p.as_str().into(), FieldTable::default())
                .await
                .with_context(|| format!("unbinding {x} {p}"))?;
            PeerStats::add(&self.stats.send, 1);
            self.applied.remove(&(x.clone(), p.clone()));
        }
        Ok(())
    }

    async fn open(&self) -> anyhow::Result<(Connection, Channel, Consumer)> {
        let c = &self.config;
        let conn = Connection::connect(&c.url, ConnectionProperties::default()).await.context("connecting")?;
        let ch = conn.create_channel().await.context("opening a channel")?;
        ch.basic_qos(c.prefetch, BasicQosOptions::default()).await.context("setting prefetch")?;
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(i64::from(c.max_queue_length)));
        // Refuse publishers rather than silently dropping the oldest messages.
        args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
        let opts = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        ch.queue_declare(c.queue.as_str().into(), opts, args).await.context("declaring the queue")?;
        for b in &c.bindings {
            if c.declare_exchanges {
                let opts = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
                ch.exchange_declare(b.exchange.as_str().into(), ExchangeKind::Topic, opts, FieldTable::default())
                    .await
                    .with_context(|| format!("declaring exchange {}", b.exchange))?;
            }
            ch.queue_bind(
                c.queue.as_str().into(),
                b.exchange.as_str().into(),
                b.pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("binding {} {}", b.exchange, b.pattern))?;
            PeerStats::add(&self.stats.send, 1);
        }
        let tag = format!("herald-{}", self.peer);
        let consumer = ch
            .basic_consume(
                c.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("consuming")?;
        Ok((conn, ch, consumer))
    }

    /// Turn one delivery into events; `Err` for a body the codec refuses.
    fn events(&self, d: &Delivery) -> Result<Vec<NewEvent>, String> {
        let payloads = decode_body(self.codec, &self.interceptors, &d.data)?;
        let mut headers: serde_json::Map<String, Value> = d
            .properties
            .headers()
            .as_ref()
            .map(|t| t.inner().iter().map(|(k, v)| (k.to_string(), amqp_to_json(v))).collect())
            .unwrap_or_default();
        if let Some(id) = d.properties.message_id() {
            headers.insert("message_id".into(), Value::String(id.to_string()));
        }
        let headers = Some(headers);
        let parts = payloads.len();
        let message_id =
            d.properties.message_id().as_ref().map(|m| m.to_string()).filter(|_| self.config.dedupe_window > 0);
        payloads
            .into_iter()
            .enumerate()
            .map(|(part, p)| {
                let payload = RawValue::from_string(p).map_err(|e| e.to_string())?;
                let idempotency_key = message_id.as_deref().map(|id| idempotency_key(id, part, parts));
                Ok(NewEvent {
                    exchange: d.exchange.to_string(),
                    routing_key: d.routing_key.to_string(),
                    payload,
                    acl: None,
                    headers: headers.clone().filter(|h| !h.is_empty()),
                    origin: Some(Origin { peer: self.peer.clone(), stream: 0, seq: d.delivery_tag }),
                    idempotency_key,
                })
            })
            .collect()
    }
}

/// The idempotency key of part `part` of `parts` events made from a message
/// with this `message_id`: the id itself (hashed when it is too long for a
/// key), with `#<part>` when an interceptor split the body into several.
fn idempotency_key(message_id: &str, part: usize, parts: usize) -> String {
    let base = if message_id.len() <= 100 {
        message_id.to_string()
    } else {
        format!("sha256:{}", herald_core::session::hash_secret(message_id))
    };
    if parts == 1 {
        base
    } else {
        format!("{base}#{part}")
    }
}

fn amqp_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Float(f) => Value::from(*f),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::ShortString(s) => Value::String(s.to_string()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_to_json).collect()),
        AMQPValue::FieldTable(t) => {
            Value::Object(t.inner().iter().map(|(k, v)| (k.to_string(), amqp_to_json(v))).collect())
        }
        AMQPValue::Void => Value::Null,
        other => Value::String(format!("{other:?}")),
    }
}

impl Connector for AmqpSource {
    fn connect(&mut self, _attempt: u32) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.session = None;
            self.session = Some(self.open().await?);
            Ok(())
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some((conn, _, _)) = self.session.take() {
                let _ = conn.close(200, "herald closing".into()).await;
            }
        })
    }

    fn run<'a>(
        &'a mut self,
        host: &'a dyn Host,
        mut control: tokio::sync::watch::Receiver<Control>,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let Some((conn, ch, mut consumer)) = self.session.take() else {
                return Err(anyhow!("not connected"));
            };
            // Bindings live on the durable queue, so what was applied before a
            // reconnect is still there; apply what changed meanwhile.
            self.reconcile(&conn, &ch).await?;
            let max_batch = usize::from(self.config.prefetch);
            loop {
                // A busy queue must not keep an unwanted binding forever.
                let grace = self.dynamic.unbind_grace();
                if self.unwanted.values().any(|since| since.elapsed() >= grace) {
                    self.reconcile(&conn, &ch).await?;
                }
                // Paused: stop taking deliveries; RabbitMQ holds the rest (prefetch bounds what is in flight).
                if !crate::runnable(&mut control).await {
                    let _ = conn.close(200, "herald draining".into()).await;
                    return Ok(());
                }
                let first = tokio::select! {
                    r = control.changed() => {
                        if r.is_err() {
                            return Ok(());
                        }
                        continue;
                    }
                    _ = self.dynamic.changed() => {
                        self.reconcile(&conn, &ch).await?;
                        continue;
                    }
                    // An unwanted binding's grace ran out.
                    _ = tokio::time::sleep(self.dynamic.unbind_grace()), if !self.unwanted.is_empty() => {
                        self.reconcile(&conn, &ch).await?;
                        continue;
                    }
                    d = consumer.next() => d,
                };
                let Some(first) = first else { return Err(anyhow!("the consumer was cancelled")) };
                let mut batch = vec![first.context("delivery failed")?];
                // Take what has already arrived: one log commit for all of it.
                while batch.len() < max_batch {
                    match consumer.next().now_or_never() {
                        Some(Some(d)) => batch.push(d.context("delivery failed")?),
                        _ => break,
                    }
                }
                PeerStats::add(&self.stats.recv, batch.len() as u64);
                PeerStats::add(&self.stats.r#in, batch.len() as u64);
                let mut events = Vec::new();
                let mut rejected = Vec::new();
                for d in &batch {
                    // A `message_id` becomes the events' idempotency key: a
                    // redelivery of a message stored before a crash (or a
                    // lost ack) gets the stored ids and is not stored twice.
                    match self.events(d) {
                        Ok(mut e) => events.append(&mut e),
                        Err(reason) => rejected.push((d.delivery_tag, reason)),
                    }
                }
                let count = events.len() as u64;
                if !events.is_empty() {
                    host.append(events).await.context("the log did not store the batch; it will be redelivered")?;
                    PeerStats::add(&self.stats.out, count);
                }
                // Durable now: acknowledge. Rejected bodies are dead-lettered
                // (or dropped when the queue has no dead-letter exchange), never requeued forever.
                for (tag, reason) in &rejected {
                    warn!(peer = %self.peer, %reason, "Rejected an AMQP message.");
                    PeerStats::add(&self.stats.err, 1);
                    ch.basic_nack(*tag, BasicNackOptions { requeue: false, ..Default::default() })
                        .await
                        .context("rejecting")?;
                }
                for d in &batch {
                    if rejected.iter().any(|(t, _)| *t == d.delivery_tag) {
                        continue;
                    }
                    d.acker.ack(BasicAckOptions::default()).await.context("acknowledging")?;
                    PeerStats::add(&self.stats.send, 1);
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::idempotency_key;

    #[test]
    fn message_ids_become_keys_of_at_most_128_bytes_one_per_part() {
        assert_eq!(idempotency_key("m-1", 0, 1), "m-1");
        assert_eq!((idempotency_key("m-1", 0, 2), idempotency_key("m-1", 1, 2)), ("m-1#0".into(), "m-1#1".into()));
        let long = "x".repeat(255);
        let k = idempotency_key(&long, 3, 4);
        assert!(k.starts_with("sha256:") && k.ends_with("#3") && k.len() <= 128, "{k}");
        assert_ne!(idempotency_key(&long, 0, 1), idempotency_key(&"y".repeat(255), 0, 1));
    }
}
