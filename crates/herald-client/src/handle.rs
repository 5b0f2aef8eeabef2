//! What the application holds: [`Client`], [`Subscription`], [`Responder`]
//! and [`IncomingRequest`]. Each talks to the connection task over a
//! channel; the task owns the socket and all protocol state.

use crate::connection::{Command, Connection};
use crate::{ClientConfig, Error, Event};
use herald_protocol::{Binding, ClientMessage, Ping, Publish, Request, ServerMessage, Since};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most commands waiting in the channel to the connection task.
const COMMANDS: usize = 1024;

/// A connection to Herald that reconnects by itself and keeps its
/// subscriptions and responders. Cheap to clone; the connection closes
/// when [`Client::close`] is called (or every clone is dropped).
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// What to subscribe to: bindings, filters and a starting point.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// `{exchange, pattern}` pairs (at least one).
    pub bindings: Vec<Binding>,
    /// `[field, op, value]` filters, all of which must hold.
    pub filters: Vec<Value>,
    /// Where to start; absent: live only.
    pub since: Option<Since>,
    /// The subscription id (default: `s1`, `s2`, ...).
    pub id: Option<String>,
    /// Override the client's automatic acks for this subscription.
    pub auto_ack: Option<bool>,
}

impl SubscribeOptions {
    /// One binding.
    pub fn new(exchange: &str, pattern: &str) -> SubscribeOptions {
        SubscribeOptions::default().bind(exchange, pattern)
    }

    /// Add a binding.
    pub fn bind(mut self, exchange: &str, pattern: &str) -> SubscribeOptions {
        self.bindings.push(Binding { exchange: exchange.into(), pattern: pattern.into() });
        self
    }

    /// Add a filter such as `json!(["payload/total", ">", 100])`.
    pub fn filter(mut self, filter: Value) -> SubscribeOptions {
        self.filters.push(filter);
        self
    }

    /// Start after event `id`.
    pub fn since_id(mut self, id: u64) -> SubscribeOptions {
        self.since = Some(Since::Id { id });
        self
    }

    /// Start with the last `n` matching events.
    pub fn last(mut self, n: u64) -> SubscribeOptions {
        self.since = Some(Since::Last { last: n });
        self
    }

    /// Start at an RFC 3339 time.
    pub fn since_time(mut self, time: &str) -> SubscribeOptions {
        self.since = Some(Since::Time { time: time.into() });
        self
    }

    /// Manual acks for this subscription.
    pub fn manual_ack(mut self) -> SubscribeOptions {
        self.auto_ack = Some(false);
        self
    }
}

/// One event to publish.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Exchange.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// The payload, as JSON text.
    pub payload: Box<RawValue>,
    /// Who may see it (`user:NAME`, `group:NAME`).
    pub acl: Option<Vec<String>>,
    /// Headers.
    pub headers: Option<serde_json::Map<String, Value>>,
    /// A key that makes publishing again after a lost answer safe.
    pub idempotency_key: Option<String>,
}

impl NewEvent {
    /// An event with a payload serialized from `payload`.
    pub fn new(exchange: &str, routing_key: &str, payload: &impl Serialize) -> Result<NewEvent, Error> {
        Ok(NewEvent::raw(exchange, routing_key, serde_json::value::to_raw_value(payload)?))
    }

    /// An event whose payload is JSON text already.
    pub fn raw(exchange: &str, routing_key: &str, payload: Box<RawValue>) -> NewEvent {
        NewEvent {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            payload,
            acl: None,
            headers: None,
            idempotency_key: None,
        }
    }

    /// With an idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> NewEvent {
        self.idempotency_key = Some(key.into());
        self
    }

    /// With an ACL.
    pub fn acl(mut self, acl: Vec<String>) -> NewEvent {
        self.acl = Some(acl);
        self
    }
}

impl From<NewEvent> for ClientMessage {
    /// The `publish` message (without a `ref`).
    fn from(event: NewEvent) -> ClientMessage {
        ClientMessage::Publish(Publish {
            reference: None,
            exchange: event.exchange,
            routing_key: event.routing_key,
            payload: event.payload,
            acl: event.acl,
            headers: event.headers,
            idempotency_key: event.idempotency_key,
        })
    }
}

impl Client {
    /// Connect; returns at the first `welcome`. Fails with
    /// [`Error::Refused`] if the server refuses for good (a bad token, say).
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let (tx, rx) = mpsc::channel(COMMANDS);
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(Connection::new(config, rx).with_handle(tx.downgrade()).run(ready_tx));
        ready_rx.await.map_err(|_| Error::Closed)??;
        Ok(Client { commands: tx })
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    async fn send(&self, msg: ClientMessage) -> Result<ServerMessage, Error> {
        self.call(|reply| Command::Send { msg, reply }).await
    }

    /// Subscribe; returns once the server confirms it (or its error:
    /// `forbidden`, `bad_request`, `conflict`, `limit_exceeded`).
    pub async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, Error> {
        if options.bindings.is_empty() {
            return Err(Error::Server {
                code: herald_protocol::ErrorCode::BadRequest,
                message: "subscribe needs at least one binding".into(),
            });
        }
        self.call(|reply| Command::Subscribe { options, reply }).await
    }

    /// Publish; returns the event's id once it is durable.
    pub async fn publish(&self, event: NewEvent) -> Result<u64, Error> {
        match self.send(event.into()).await? {
            ServerMessage::Published { id, .. } => Ok(id),
            other => Err(unexpected(&other)),
        }
    }

    /// Rendezvous: ask one responder of `service`; returns its answer.
    /// Fails with `unavailable` (no responder), `timeout`, `forbidden` or
    /// [`Error::Disconnected`].
    pub async fn request(
        &self,
        service: &str,
        body: Box<RawValue>,
        timeout: Option<Duration>,
    ) -> Result<Box<RawValue>, Error> {
        let msg = ClientMessage::Request(Request {
            reference: None,
            service: service.into(),
            body,
            timeout_ms: timeout.map(|t| (t.as_millis() as u64).max(1)),
        });
        match self.send(msg).await? {
            ServerMessage::Response { body, .. } => Ok(body),
            other => Err(unexpected(&other)),
        }
    }

    /// Rendezvous: take requests for `service`, at most `concurrency` at
    /// once. Renewed after every reconnect.
    pub async fn serve(&self, service: &str, concurrency: u32) -> Result<Responder, Error> {
        let service = service.to_string();
        self.call(|reply| Command::Serve { service, concurrency: concurrency.max(1), reply }).await
    }

    /// A round trip to the server.
    pub async fn ping(&self) -> Result<(), Error> {
        self.send(ClientMessage::Ping(Ping { reference: None })).await.map(|_| ())
    }

    /// The session (`id`, `secret`) of the current connection.
    pub async fn session(&self) -> Result<Option<herald_protocol::SessionCredentials>, Error> {
        self.call(|reply| Command::Session { reply }).await
    }

    /// Connections opened after the first, and duplicate events dropped
    /// after resumes.
    pub async fn stats(&self) -> Result<ClientStats, Error> {
        self.call(|reply| Command::Stats { reply }).await
    }

    /// Close for good (the server ends the session). Pending calls fail with [`Error::Closed`].
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Close { reply: tx }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Counters of a client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Connections opened after the first.
    pub reconnects: u64,
    /// Duplicate events dropped (redeliveries after a resume).
    pub duplicates_dropped: u64,
}

pub(crate) fn unexpected(msg: &ServerMessage) -> Error {
    Error::Json(format!("unexpected answer: {}", herald_protocol::encode(msg)))
}

/// Shared between a [`Subscription`] and the connection task.
#[derive(Debug, Default)]
pub(crate) struct SubShared {
    /// Highest id the application is done with.
    pub(crate) ackable: AtomicU64,
}

/// A subscription. [`Subscription::next`] yields every matching event once,
/// in id order, across reconnects; `None` once it ended.
///
/// Events wait in a buffer of `max_buffered`; when it is full the client
/// stops reading the connection until the application takes one (the
/// gateway then serves the subscription from its log at that pace).
#[derive(Debug)]
pub struct Subscription {
    pub(crate) id: String,
    pub(crate) head: u64,
    pub(crate) recovered: bool,
    pub(crate) events: mpsc::Receiver<Result<Event, Error>>,
    pub(crate) shared: Arc<SubShared>,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) auto_ack: bool,
    pub(crate) unacked: Option<u64>,
}

impl Subscription {
    /// The subscription id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The log head when the subscription went into place.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// False when the requested history was no longer (or not) in the log.
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// The next event; `None` once the subscription ended (unsubscribed,
    /// client closed). An error ends it too (for example `forbidden` after a
    /// resume with a narrower token). With automatic acks, the previous
    /// event is acknowledged first.
    pub async fn next(&mut self) -> Option<Result<Event, Error>> {
        if self.auto_ack {
            if let Some(id) = self.unacked.take() {
                self.ack(id);
            }
        }
        let item = self.events.recv().await?;
        if let Ok(e) = &item {
            self.unacked = Some(e.id);
        }
        Some(item)
    }

    /// Acknowledge everything up to and including `id` (sent batched): a
    /// resume restarts after the highest acknowledged id.
    pub fn ack(&self, id: u64) {
        self.shared.ackable.fetch_max(id, Ordering::Relaxed);
    }

    async fn command(&self, make: impl FnOnce(oneshot::Sender<Result<(), Error>>) -> Command) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Stop delivery; what arrives meanwhile comes after [`Subscription::resume`].
    pub async fn pause(&self) -> Result<(), Error> {
        let sub = self.id.clone();
        self.command(|reply| Command::Pause { sub, paused: true, reply }).await
    }

    /// Resume delivery.
    pub async fn resume(&self) -> Result<(), Error> {
        let sub = self.id.clone();
        self.command(|reply| Command::Pause { sub, paused: false, reply }).await
    }

    /// End the subscription.
    pub async fn unsubscribe(self) -> Result<(), Error> {
        let sub = self.id.clone();
        self.command(|reply| Command::Unsubscribe { sub, reply }).await
    }
}

/// A rendezvous responder: [`Responder::next`] yields the requests to answer.
#[derive(Debug)]
pub struct Responder {
    pub(crate) service: String,
    pub(crate) requests: mpsc::Receiver<IncomingRequest>,
    pub(crate) commands: mpsc::Sender<Command>,
}

impl Responder {
    /// The next request; `None` once stopped or the client closed.
    pub async fn next(&mut self) -> Option<IncomingRequest> {
        self.requests.recv().await
    }

    /// Stop taking requests.
    pub async fn stop(self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        let service = self.service.clone();
        self.commands.send(Command::Unserve { service, reply: tx }).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

/// One request handed to a [`Responder`].
#[derive(Debug)]
pub struct IncomingRequest {
    /// The request id.
    pub request: String,
    /// The service asked.
    pub service: String,
    /// The body, as the requester sent it.
    pub body: Box<RawValue>,
    /// Milliseconds left to answer when it arrived.
    pub deadline_ms: u64,
    pub(crate) commands: mpsc::Sender<Command>,
}

impl IncomingRequest {
    /// Answer it; fails with `not_found` when the requester left or the deadline passed.
    pub async fn answer(self, body: Box<RawValue>) -> Result<(), Error> {
        let msg = ClientMessage::Answer(herald_protocol::Answer { reference: None, request: self.request, body });
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Send { msg, reply: tx }).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?.map(|_| ())
    }
}
