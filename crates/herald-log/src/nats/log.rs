//! [`JetStreamLog`]: the [`EventLog`] on one JetStream stream.
//!
//! - **Ids** are stream sequences: strictly increasing cluster-wide, dense
//!   (a sequence is never reused), assigned by the stream's leader.
//! - **Append** publishes every event of the batch (pipelined) and answers
//!   once JetStream acknowledged each: with `sync_interval: always` on the
//!   servers (see `docs/cluster.md`) that is after a quorum wrote and synced
//!   it. An event with an `idempotency_key` carries a `Nats-Msg-Id`, so a
//!   repeat within `cluster.duplicate_window` is not stored again, on any
//!   node, and is answered with the first id.
//! - **Reads** are batched direct gets (`$JS.API.DIRECT.GET`) filtered by
//!   subject: one exchange is `<stream>.<exchange>.>`, so a replay of one
//!   exchange reads only its messages.
//! - **The feed**: one ordered consumer per node reads every new message
//!   once and hands batches to the fan-out, in sequence order, as the
//!   embedded log's writer does.
//! - **Bounds** come from the stream's state, refreshed every second and
//!   advanced by every acknowledgement and every message fed.

use super::subject;
use super::ClusterConfig;
use crate::error::LogError;
use crate::record;
use crate::{Bounds, BoxFuture, CommittedBatch, EventLog, LogConfig, LogStats, ReadQuery, WriteHealth};
use async_nats::jetstream::{self, consumer, stream};
use futures_util::{FutureExt, StreamExt};
use herald_core::event::now_us;
use herald_core::{Event, NewEvent};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Most messages asked for in one direct get.
const BATCH: usize = 1000;
/// How long one direct get may take before the read fails.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Retries of a read that no server answered (503), 50 ms apart and then
/// longer: 2.75 s in all, the time a replica takes to start answering.
const NO_RESPONDERS_RETRIES: u64 = 10;

/// Why one direct get failed: no server answered it (worth a retry), or
/// anything else.
enum Refused {
    NoResponders(LogError),
    Other(LogError),
}

impl From<LogError> for Refused {
    fn from(e: LogError) -> Refused {
        Refused::Other(e)
    }
}

/// The log on a JetStream stream.
pub struct JetStreamLog {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    /// Subjects are `<prefix>.<exchange>.<words>._E`.
    prefix: String,
    head: AtomicU64,
    first: AtomicU64,
    events: AtomicU64,
    bytes: AtomicU64,
    appended: AtomicU64,
    commits: AtomicU64,
    health: Arc<Mutex<WriteHealth>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for JetStreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamLog").field("stream", &self.stream).finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("{what}: {e}"))
}

impl JetStreamLog {
    /// Connect, create or update the stream (retention from `[log]`), and
    /// start the feed from the stream's head. Returns the log and the
    /// receiver of batches for the fan-out.
    pub async fn open(
        c: &ClusterConfig,
        log: &LogConfig,
    ) -> Result<(Arc<JetStreamLog>, mpsc::Receiver<CommittedBatch>), LogError> {
        // Told by the client at once when the connection drops or returns
        // (the periodic refresh below catches the rest).
        let health = Arc::new(Mutex::new(WriteHealth::Ok));
        let told = health.clone();
        let client = super::connect(c, move |up| {
            if up {
                warn!("Connected to NATS.");
                *told.lock() = WriteHealth::Ok;
            } else {
                warn!("Lost the connection to NATS: publishes are refused until it is back.");
                *told.lock() = WriteHealth::Disconnected("the connection to NATS is lost".into());
            }
        })
        .await?;
        let js = jetstream::new(client.clone());
        let config = stream::Config {
            name: c.stream.clone(),
            subjects: vec![format!("{}.>", c.stream)],
            storage: stream::StorageType::File,
            num_replicas: c.replicas,
            max_age: log.max_age.unwrap_or(Duration::ZERO),
            max_messages: log.max_events.map_or(-1, |n| n.min(i64::MAX as u64) as i64),
            max_bytes: log.max_bytes.map_or(-1, |n| n.min(i64::MAX as u64) as i64),
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            duplicate_window: c.duplicate_window,
            ..Default::default()
        };
        // A cluster that has just started may not have elected its
        // JetStream leader yet: keep trying for a while.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let info = loop {
            match js.create_or_update_stream(config.clone()).await {
                Ok(info) => break info,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    warn!(error = %e, stream = %c.stream, "JetStream is not ready to hold the log's stream yet; retrying.");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    return Err(LogError::Unavailable(format!(
                        "cannot create or update the stream {} (replicas {}; JetStream needs at least as many servers): {e}",
                        c.stream, c.replicas
                    )))
                }
            }
        };
        // A stream just created elects its leader a moment later; until
        // then publishes find no stream. Wait for it (publishes that still
        // find none are tried again, see `publish_again`).
        let mut info = info;
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while info.cluster.as_ref().is_some_and(|c| c.leader.is_none()) && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(mut s) = js.get_stream(&c.stream).await {
                if let Ok(i) = s.info().await {
                    info = i.clone();
                }
            }
        }
        let state = info.state;
        let first = if state.messages == 0 { state.last_sequence + 1 } else { state.first_sequence };
        info!(stream = %c.stream, head = state.last_sequence, first, replicas = c.replicas, "Cluster log opened on JetStream.");
        let log = Arc::new(JetStreamLog {
            client,
            js,
            stream: c.stream.clone(),
            prefix: c.stream.clone(),
            head: AtomicU64::new(state.last_sequence),
            first: AtomicU64::new(first),
            events: AtomicU64::new(state.messages),
            bytes: AtomicU64::new(state.bytes),
            appended: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            health,
            tasks: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::channel(256);
        let feed = tokio::spawn(feed(Arc::downgrade(&log), state.last_sequence + 1, tx));
        let refresh = tokio::spawn(refresh(Arc::downgrade(&log)));
        log.tasks.lock().extend([feed, refresh]);
        Ok((log, rx))
    }

    fn message(&self, time: u64, e: &NewEvent) -> jetstream::message::PublishMessage {
        let msg = jetstream::message::PublishMessage::build().payload(record::encode_message(time, e).into());
        match &e.idempotency_key {
            Some(k) => msg.message_id(message_id(&e.exchange, k)),
            None => msg,
        }
    }

    /// Publish one event again while no stream answers its subject, for up
    /// to five seconds; returns its sequence.
    async fn publish_again(&self, time: u64, e: &NewEvent) -> Result<u64, LogError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let subject = subject::encode(&self.prefix, &e.exchange, &e.routing_key);
            let sent = self.js.send_publish(subject, self.message(time, e)).await;
            let acked = match sent {
                Ok(ack) => ack.await,
                Err(err) => return Err(unavailable("the cluster log did not take the event", err)),
            };
            match acked {
                Ok(ack) => return Ok(ack.sequence),
                Err(err)
                    if err.kind() == jetstream::context::PublishErrorKind::StreamNotFound
                        && tokio::time::Instant::now() < deadline => {}
                Err(err) => return Err(unavailable("the cluster log did not acknowledge the event", err)),
            }
        }
    }

    fn raise_head(&self, id: u64) {
        self.head.fetch_max(id, Ordering::AcqRel);
    }

    /// Messages matching `filter` with sequences in `(after, upto]`, at most
    /// `limit` (one direct-get batch, or several).
    async fn forward(
        &self,
        filter: &str,
        after: u64,
        upto: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Arc<Event>>, LogError> {
        let mut out: Vec<Arc<Event>> = Vec::new();
        let (mut from, mut budget) = (after, max_bytes);
        while out.len() < limit && from < upto && (budget > 0 || out.is_empty()) {
            let want = (limit - out.len()).min(BATCH);
            let (chunk, used, more) = self.direct_batch(filter, from, upto, want, budget).await?;
            if budget != usize::MAX {
                budget = budget.saturating_sub(used);
            }
            let Some(last) = chunk.last().map(|e| e.id) else { break };
            from = last;
            out.extend(chunk);
            if !more {
                break;
            }
        }
        Ok(out)
    }

    /// One batched direct get: returns the events, their bytes, and whether
    /// more may follow (the batch was full).
    ///
    /// A direct get can find no server to answer it (status 503, NATS's "no
    /// responders") for a moment after the stream is created or while a
    /// replica starts; that is retried a few times, briefly, before the
    /// read fails (a replay that fails closes its connection with 1011).
    async fn direct_batch(
        &self,
        filter: &str,
        after: u64,
        upto: u64,
        batch: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Arc<Event>>, usize, bool), LogError> {
        let mut attempt = 0u64;
        loop {
            match self.direct_batch_once(filter, after, upto, batch, max_bytes).await {
                Err(Refused::NoResponders(e)) if attempt < NO_RESPONDERS_RETRIES => {
                    attempt += 1;
                    debug!(error = %e, attempt, "No server answered a read of the cluster log yet; retrying.");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(Refused::NoResponders(e) | Refused::Other(e)) => return Err(e),
                Ok(batch) => return Ok(batch),
            }
        }
    }

    /// [`Self::direct_batch`], tried once.
    async fn direct_batch_once(
        &self,
        filter: &str,
        after: u64,
        upto: u64,
        batch: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Arc<Event>>, usize, bool), Refused> {
        let inbox = self.client.new_inbox();
        let mut sub =
            self.client.subscribe(inbox.clone()).await.map_err(|e| unavailable("cannot read the cluster log", e))?;
        // The upper bound is applied here, not with `up_to_seq` (which
        // nats-server refuses in some combinations, 408 "Malformed
        // Request"): never more are asked for than the range holds.
        let batch = batch.min(usize::try_from(upto.saturating_sub(after)).unwrap_or(usize::MAX)).max(1);
        let mut req = serde_json::json!({"seq": after + 1, "next_by_subj": filter, "batch": batch});
        // Only a real budget (the server refuses sizes beyond an i64, and
        // "no limit" is usize::MAX here).
        if max_bytes <= 1 << 40 {
            req["max_bytes"] = max_bytes.max(1).into();
        }
        let api = format!("$JS.API.DIRECT.GET.{}", self.stream);
        self.client
            .publish_with_reply(api, inbox, req.to_string().into())
            .await
            .map_err(|e| unavailable("cannot read the cluster log", e))?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut beyond = false;
        loop {
            let msg = tokio::time::timeout(READ_TIMEOUT, sub.next())
                .await
                .map_err(|_| LogError::Unavailable("the cluster log did not answer a read within 10 s".into()))?;
            let Some(msg) = msg else { break };
            match msg.status.map(|s| s.as_u16()) {
                // End of the batch, or nothing (more) matches.
                Some(204) | Some(404) => break,
                None | Some(200) => {
                    let seq = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Sequence"))
                        .and_then(|v| v.as_str().parse::<u64>().ok())
                        .ok_or_else(|| LogError::Unavailable("a direct get answer without Nats-Sequence".into()))?;
                    if seq > upto {
                        beyond = true;
                        continue; // read on to the end of the batch, keeping none of it
                    }
                    bytes += msg.payload.len();
                    match record::decode_message(seq, &msg.payload) {
                        Ok(e) => out.push(Arc::new(e)),
                        Err(why) => warn!(seq, %why, "A message in the log's stream is not a Herald event; skipped."),
                    }
                }
                Some(code) => {
                    let why = msg.description.unwrap_or_default();
                    let _ = sub.unsubscribe().await;
                    let e =
                        LogError::Unavailable(format!("the cluster log refused a read ({code} {why}; request {req})"));
                    return Err(if code == 503 { Refused::NoResponders(e) } else { Refused::Other(e) });
                }
            }
        }
        let _ = sub.unsubscribe().await;
        let more = !beyond && out.len() >= batch;
        Ok((out, bytes, more))
    }

    fn filters(&self, exchanges: &Option<Vec<String>>) -> Vec<String> {
        match exchanges {
            None => vec![format!("{}.>", self.prefix)],
            Some(xs) => xs.iter().map(|x| subject::exchange_filter(&self.prefix, x)).collect(),
        }
    }

    async fn read_forward(&self, q: &ReadQuery) -> Result<Vec<Arc<Event>>, LogError> {
        let mut all: Vec<Arc<Event>> = Vec::new();
        for f in self.filters(&q.exchanges) {
            all.extend(self.forward(&f, q.after, q.upto, q.limit, q.max_bytes).await?);
        }
        all.sort_by_key(|e| e.id);
        all.dedup_by_key(|e| e.id);
        all.truncate(q.limit);
        Ok(cut_bytes(all, q.max_bytes))
    }

    /// Newest first: read growing windows backwards from `upto`.
    async fn read_backward(&self, q: &ReadQuery) -> Result<Vec<Arc<Event>>, LogError> {
        let mut found: Vec<Arc<Event>> = Vec::new();
        let mut hi = q.upto.min(self.head.load(Ordering::Acquire));
        let mut window = q.limit.clamp(256, 65_536) as u64;
        while found.len() < q.limit && hi > q.after {
            let lo = hi.saturating_sub(window).max(q.after);
            let part = self
                .read_forward(&ReadQuery { after: lo, upto: hi, limit: usize::MAX, max_bytes: usize::MAX, ..q.clone() })
                .await?;
            found.extend(part.into_iter().rev());
            hi = lo;
            window = (window * 2).min(65_536);
        }
        found.truncate(q.limit);
        Ok(cut_bytes(found, q.max_bytes))
    }
}

/// Keep a prefix whose payloads add up to at most `max_bytes` (at least one event).
fn cut_bytes(mut events: Vec<Arc<Event>>, max_bytes: usize) -> Vec<Arc<Event>> {
    if max_bytes == usize::MAX {
        return events;
    }
    let mut total = 0usize;
    let keep = events
        .iter()
        .position(|e| {
            total += e.payload.get().len() + e.exchange.len() + e.routing_key.len() + 32;
            total > max_bytes
        })
        .map_or(events.len(), |i| i.max(1));
    events.truncate(keep);
    events
}

/// The feed: one ordered consumer of the whole stream, from `next`, handing
/// batches to the fan-out in order. Recreated (from the next sequence) when
/// the consumer fails, for as long as the log lives.
async fn feed(log: Weak<JetStreamLog>, mut next: u64, tx: mpsc::Sender<CommittedBatch>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(l) = log.upgrade() else { return };
        let consumer = async {
            let stream = l.js.get_stream(&l.stream).await.map_err(|e| e.to_string())?;
            let config = consumer::pull::OrderedConfig {
                filter_subject: format!("{}.>", l.prefix),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: next },
                ..Default::default()
            };
            let c = stream.create_consumer(config).await.map_err(|e| e.to_string())?;
            c.messages().await.map_err(|e| e.to_string())
        }
        .await;
        drop(l);
        let mut messages = match consumer {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "Cannot start reading the cluster log; retrying.");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            let Some(first) = messages.next().await else { break };
            let mut batch: Vec<Arc<Event>> = Vec::new();
            let mut failed = None;
            let mut take = |m: Result<jetstream::Message, _>, batch: &mut Vec<Arc<Event>>| -> Result<(), String> {
                let m = m.map_err(|e: async_nats::jetstream::consumer::pull::OrderedError| e.to_string())?;
                let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
                match record::decode_message(seq, &m.payload) {
                    Ok(e) => batch.push(Arc::new(e)),
                    Err(why) => warn!(seq, %why, "A message in the log's stream is not a Herald event; skipped."),
                }
                next = next.max(seq + 1);
                Ok(())
            };
            if let Err(e) = take(first, &mut batch) {
                failed = Some(e);
            }
            while failed.is_none() && batch.len() < 1024 {
                match messages.next().now_or_never() {
                    Some(Some(m)) => {
                        if let Err(e) = take(m, &mut batch) {
                            failed = Some(e);
                        }
                    }
                    _ => break,
                }
            }
            if let Some(l) = log.upgrade() {
                l.raise_head(next - 1);
            }
            if !batch.is_empty() && tx.send(batch.into()).await.is_err() {
                return; // nobody dispatches any more
            }
            if let Some(e) = failed {
                warn!(error = %e, "Reading the cluster log failed; resuming from sequence {next}.");
                break;
            }
        }
    }
}

/// Refresh bounds and sizes from the stream's state, and the connection's
/// health, every second.
async fn refresh(log: Weak<JetStreamLog>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(l) = log.upgrade() else { return };
        let connected = matches!(l.client.connection_state(), async_nats::connection::State::Connected);
        let info = match l.js.get_stream(&l.stream).await {
            Ok(mut s) => s.info().await.map(|i| i.state.clone()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match info {
            Ok(state) if connected => {
                l.raise_head(state.last_sequence);
                let first = if state.messages == 0 { state.last_sequence + 1 } else { state.first_sequence };
                l.first.store(first, Ordering::Release);
                l.events.store(state.messages, Ordering::Relaxed);
                l.bytes.store(state.bytes, Ordering::Relaxed);
                *l.health.lock() = WriteHealth::Ok;
            }
            Ok(_) => *l.health.lock() = WriteHealth::Disconnected("not connected to NATS".into()),
            Err(e) => *l.health.lock() = WriteHealth::Disconnected(format!("the stream cannot be read: {e}")),
        }
    }
}

/// The `Nats-Msg-Id` of an event with an idempotency key: the exchange and
/// key, escaped so that any key fits in a header and no two pairs collide.
fn message_id(exchange: &str, key: &str) -> String {
    let mut s = String::new();
    subject::encode_token(exchange, &mut s);
    s.push('.');
    subject::encode_token(key, &mut s);
    s
}

impl EventLog for JetStreamLog {
    fn append(&self, events: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<Arc<Event>>, LogError>> {
        Box::pin(async move {
            if let WriteHealth::Disconnected(why) = &*self.health.lock() {
                return Err(LogError::Unavailable(format!("{why}; nothing was stored, publish again later")));
            }
            let time = now_us();
            let mut acks = Vec::with_capacity(events.len());
            for e in &events {
                let ack = self
                    .js
                    .send_publish(subject::encode(&self.prefix, &e.exchange, &e.routing_key), self.message(time, e))
                    .await
                    .map_err(|e| unavailable("the cluster log did not take the event", e))?;
                acks.push(ack);
            }
            let mut out = Vec::with_capacity(events.len());
            for (ack, e) in acks.into_iter().zip(events) {
                let seq = match ack.await {
                    Ok(ack) => ack.sequence,
                    // Nothing took it (no stream answers the subject yet: a
                    // stream just created, or a leader being elected), so
                    // nothing was stored: trying again cannot store it twice.
                    Err(err) if err.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
                        self.publish_again(time, &e).await?
                    }
                    Err(err) => return Err(unavailable("the cluster log did not acknowledge the event", err)),
                };
                self.raise_head(seq);
                out.push(Arc::new(Event::commit(seq, time, e)));
            }
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.appended.fetch_add(out.len() as u64, Ordering::Relaxed);
            Ok(out)
        })
    }

    fn read(&self, query: ReadQuery) -> BoxFuture<'_, Result<Vec<Arc<Event>>, LogError>> {
        Box::pin(async move {
            if query.limit == 0 || query.upto <= query.after {
                return Ok(Vec::new());
            }
            if query.newest_first {
                self.read_backward(&query).await
            } else {
                self.read_forward(&query).await
            }
        })
    }

    fn first_at_or_after(&self, time_us: u64) -> BoxFuture<'_, Result<u64, LogError>> {
        Box::pin(async move {
            let t = std::time::UNIX_EPOCH + Duration::from_micros(time_us);
            let req = serde_json::json!({
                "start_time": humantime::format_rfc3339_micros(t).to_string(),
                "next_by_subj": format!("{}.>", self.prefix),
            });
            let api = format!("$JS.API.DIRECT.GET.{}", self.stream);
            let msg = tokio::time::timeout(READ_TIMEOUT, self.client.request(api, req.to_string().into()))
                .await
                .map_err(|_| LogError::Unavailable("the cluster log did not answer a time lookup".into()))?
                .map_err(|e| unavailable("the cluster log refused a time lookup", e))?;
            if msg.status.map(|s| s.as_u16()) == Some(404) {
                return Ok(self.head.load(Ordering::Acquire) + 1);
            }
            msg.headers
                .as_ref()
                .and_then(|h| h.get("Nats-Sequence"))
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .ok_or_else(|| LogError::Unavailable("a time lookup answer without Nats-Sequence".into()))
        })
    }

    fn first_time(&self) -> BoxFuture<'_, Result<Option<u64>, LogError>> {
        Box::pin(async move {
            let first = self.first.load(Ordering::Acquire);
            let events =
                self.forward(&format!("{}.>", self.prefix), first.saturating_sub(1), u64::MAX, 1, usize::MAX).await?;
            Ok(events.first().map(|e| e.time_us))
        })
    }

    fn bounds(&self) -> Bounds {
        Bounds { first: self.first.load(Ordering::Acquire), head: self.head.load(Ordering::Acquire) }
    }

    fn stats(&self) -> LogStats {
        LogStats {
            events: self.events.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            segments: 0,
            commits: self.commits.load(Ordering::Relaxed),
            appended: self.appended.load(Ordering::Relaxed),
            ..LogStats::default()
        }
    }

    fn write_health(&self) -> WriteHealth {
        self.health.lock().clone()
    }

    fn enforce_retention(&self) {
        // JetStream applies the stream's limits itself.
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for t in self.tasks.lock().drain(..) {
                t.abort();
            }
            let _ = self.client.flush().await;
        })
    }
}
