//! The connection task: owns the socket and every piece of protocol state
//! (session, subscriptions with the last id handed out, responders,
//! requests waiting for answers), reconnects with backoff and resumes.

use crate::handle::{ClientStats, IncomingRequest, Responder, SubShared, SubscribeOptions, Subscription};
use crate::{ClientConfig, Error, Event, Token};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use herald_protocol::{
    decode_server, encode_client, Ack, ClientMessage, ErrorCode, Hello, Ref, Serve, ServerFrame, ServerMessage,
    SessionCredentials, Since, SubOnly, Subscribe, Unserve,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Close codes after which reconnecting unchanged cannot help.
const FATAL_CLOSE: [u16; 7] = [1002, 1007, 1009, 4400, 4401, 4403, 4409];

/// Most commands waiting for a connection; more fail with [`Error::Backlog`].
const MAX_QUEUED: usize = 1000;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Ws, Message>;
type Stream = SplitStream<Ws>;

/// What a handle asks the connection task.
pub(crate) enum Command {
    Send { msg: ClientMessage, reply: oneshot::Sender<Result<ServerMessage, Error>> },
    Subscribe { options: SubscribeOptions, reply: oneshot::Sender<Result<Subscription, Error>> },
    Unsubscribe { sub: String, reply: oneshot::Sender<Result<(), Error>> },
    Pause { sub: String, paused: bool, reply: oneshot::Sender<Result<(), Error>> },
    Serve { service: String, concurrency: u32, reply: oneshot::Sender<Result<Responder, Error>> },
    Unserve { service: String, reply: oneshot::Sender<Result<(), Error>> },
    Session { reply: oneshot::Sender<Result<Option<SessionCredentials>, Error>> },
    Stats { reply: oneshot::Sender<Result<ClientStats, Error>> },
    Close { reply: oneshot::Sender<()> },
}

/// Who waits for a subscription's handle, and the receiver it will hold.
type SubReady = (oneshot::Sender<Result<Subscription, Error>>, mpsc::Receiver<Result<Event, Error>>);
/// Who waits for a responder's handle, and the receiver it will hold.
type ServeReady = (oneshot::Sender<Result<Responder, Error>>, mpsc::Receiver<IncomingRequest>);

/// A subscription as the task keeps it.
struct SubState {
    options: SubscribeOptions,
    events: mpsc::Sender<Result<Event, Error>>,
    shared: Arc<SubShared>,
    /// Highest id handed to the application (or the head a live start began after).
    last_id: Option<u64>,
    head: Option<u64>,
    confirmed: bool,
    paused: bool,
    pause_dirty: bool,
    ack_sent: u64,
    /// Until the first `subscribed`: who waits for the handle, and its receiver.
    ready: Option<SubReady>,
}

/// A responder as the task keeps it.
struct ServeState {
    concurrency: u32,
    requests: mpsc::Sender<IncomingRequest>,
    ready: Option<ServeReady>,
}

/// What an answer with a `ref` settles.
enum Pending {
    /// A call waiting for the answer; a lost connection fails it (`Disconnected`).
    Reply(oneshot::Sender<Result<ServerMessage, Error>>),
    /// A state change the task re-applies after a reconnect; a lost connection settles it.
    Unit(oneshot::Sender<Result<(), Error>>),
    /// A subscribe, settled by `subscribed` (or its error).
    Subscribe(String),
    /// A serve, settled by `serving`.
    Serve(String),
    /// Fire and forget.
    Quiet,
}

/// How one connection ended.
enum Ended {
    /// The application closed the client (or dropped every handle).
    Closed,
    /// Lost: close code, reason, whether it had been welcomed.
    Lost(u16, String, bool),
}

pub(crate) struct Connection {
    config: ClientConfig,
    commands: mpsc::Receiver<Command>,
    /// For the handles the task creates; weak so the task ends with the last handle.
    handle: Option<mpsc::WeakSender<Command>>,
    subs: HashMap<String, SubState>,
    serving: HashMap<String, ServeState>,
    pending: HashMap<i64, Pending>,
    queued: VecDeque<(ClientMessage, oneshot::Sender<Result<ServerMessage, Error>>)>,
    orphans: HashSet<String>,
    session: Option<SessionCredentials>,
    next_ref: i64,
    next_sub: u64,
    url_index: usize,
    attempt: u32,
    retry_after: Duration,
    auth_retried: bool,
    stats: ClientStats,
}

impl Connection {
    pub(crate) fn new(config: ClientConfig, commands: mpsc::Receiver<Command>) -> Connection {
        Connection {
            config,
            commands,
            handle: None,
            subs: HashMap::new(),
            serving: HashMap::new(),
            pending: HashMap::new(),
            queued: VecDeque::new(),
            orphans: HashSet::new(),
            session: None,
            next_ref: 1,
            next_sub: 1,
            url_index: 0,
            attempt: 0,
            retry_after: Duration::ZERO,
            auth_retried: false,
            stats: ClientStats::default(),
        }
    }

    /// Set by [`crate::Client::connect`] once the channel exists.
    pub(crate) fn with_handle(mut self, handle: mpsc::WeakSender<Command>) -> Connection {
        self.handle = Some(handle);
        self
    }

    fn handle(&self) -> Option<mpsc::Sender<Command>> {
        self.handle.as_ref().and_then(mpsc::WeakSender::upgrade)
    }

    pub(crate) async fn run(mut self, ready: oneshot::Sender<Result<(), Error>>) {
        let mut ready = Some(ready);
        let mut first = true;
        loop {
            if !first {
                self.stats.reconnects += 1;
            }
            first = false;
            let (code, reason, welcomed) = match self.connection(&mut ready).await {
                Ended::Closed => return self.shut(Error::Closed, ready),
                Ended::Lost(code, reason, welcomed) => (code, reason, welcomed),
            };
            self.settle_pending_on_drop();
            if FATAL_CLOSE.contains(&code) {
                let renewable =
                    code == 4401 && matches!(self.config.token, Token::Callback(_)) && welcomed && !self.auth_retried;
                if !renewable {
                    return self.dead(Error::Refused { code, reason }, ready).await;
                }
                // The token expired while connected: one more try with a fresh one.
                self.auth_retried = true;
            }
            if !self.config.reconnect {
                return self.dead(Error::Refused { code, reason }, ready).await;
            }
            tracing::debug!(code, %reason, "Herald connection lost; reconnecting.");
            // The next node, after exponential backoff with full jitter, never
            // sooner than the server asked (`closing.retry_after_ms`).
            self.url_index = (self.url_index + 1) % self.config.urls.len().max(1);
            let cap = self.config.max_delay.min(self.config.initial_delay.saturating_mul(1 << self.attempt.min(20)));
            let delay = cap.mul_f64(rand::random::<f64>()).max(self.retry_after);
            self.attempt = self.attempt.saturating_add(1);
            self.retry_after = Duration::ZERO;
            let until = Instant::now() + delay;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    cmd = self.commands.recv() => match cmd {
                        None => return self.shut(Error::Closed, ready),
                        Some(Command::Close { reply }) => {
                            self.shut(Error::Closed, ready);
                            let _ = reply.send(());
                            return;
                        }
                        Some(c) => self.offline(c),
                    },
                }
            }
        }
    }

    /// One connection, from connect to close.
    async fn connection(&mut self, ready: &mut Option<oneshot::Sender<Result<(), Error>>>) -> Ended {
        let token = match &self.config.token {
            Token::None => None,
            Token::Static(t) => Some(t.clone()),
            Token::Callback(f) => match f().await {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "The token function failed.");
                    return Ended::Lost(1006, format!("token function failed: {e}"), false);
                }
            },
        };
        let url = self.config.urls.get(self.url_index).cloned().unwrap_or_default();
        // Nagle off, as in `wire::connect`: acks and publishes are small writes.
        let connecting = tokio_tungstenite::connect_async_with_config(&url, None, true);
        let ws = match tokio::time::timeout(self.config.connect_timeout, connecting).await {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return Ended::Lost(1006, format!("cannot connect to {url}: {e}"), false),
            Err(_) => return Ended::Lost(1006, format!("no connection to {url} in time"), false),
        };
        let (mut sink, mut stream): (Sink, Stream) = ws.split();
        let hello = ClientMessage::Hello(Hello {
            reference: None,
            token,
            session: self.session.clone(),
            client: Some(serde_json::json!({"name": self.config.client_name, "version": env!("CARGO_PKG_VERSION")})),
            batch: true,
        });
        if let Err(e) = sink.send(Message::text(encode_client(&hello))).await {
            return Ended::Lost(1006, e.to_string(), false);
        }
        let welcome_by = Instant::now() + self.config.connect_timeout;
        let mut welcomed = false;
        let mut acks = tokio::time::interval(self.config.ack_interval);
        loop {
            tokio::select! {
                frame = stream.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        for line in text.as_str().split('\n').filter(|l| !l.is_empty()) {
                            if self.on_line(&mut sink, line).await {
                                welcomed = true;
                                if let Some(r) = ready.take() {
                                    let _ = r.send(Ok(()));
                                }
                            }
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                        return Ended::Lost(code, reason, welcomed);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Ended::Lost(1006, e.to_string(), welcomed),
                    None => return Ended::Lost(1006, "connection ended".into(), welcomed),
                },
                cmd = self.commands.recv() => match cmd {
                    None => {
                        let _ = sink.send(close_frame()).await;
                        return Ended::Closed;
                    }
                    Some(Command::Close { reply }) => {
                        self.flush_acks(&mut sink).await;
                        let _ = sink.send(close_frame()).await;
                        self.shut(Error::Closed, ready.take());
                        let _ = reply.send(());
                        return Ended::Closed;
                    }
                    Some(c) if welcomed => self.online(&mut sink, c).await,
                    Some(c) => self.offline(c),
                },
                _ = acks.tick(), if welcomed => self.flush_acks(&mut sink).await,
                _ = tokio::time::sleep_until(welcome_by), if !welcomed => {
                    return Ended::Lost(1006, "no welcome in time".into(), false);
                }
            }
        }
    }

    /// Send a message with a fresh `ref`, remembering what its answer settles.
    async fn send(&mut self, sink: &mut Sink, mut msg: ClientMessage, pending: Pending) {
        let r = self.next_ref;
        self.next_ref += 1;
        set_ref(&mut msg, Ref::Num(r));
        self.pending.insert(r, pending);
        // A failed send shows as a lost connection on the read side, which
        // settles the pending entry.
        let _ = sink.send(Message::text(encode_client(&msg))).await;
    }

    fn subscribe_message(id: &str, sub: &SubState) -> ClientMessage {
        // After what was seen, or the original start.
        let since = match sub.last_id {
            Some(id) => Some(Since::Id { id }),
            None => sub.options.since.clone(),
        };
        ClientMessage::Subscribe(Subscribe {
            reference: None,
            sub: id.to_string(),
            bindings: sub.options.bindings.clone(),
            filters: sub.options.filters.clone(),
            since,
        })
    }

    /// A command while connected and welcomed.
    async fn online(&mut self, sink: &mut Sink, cmd: Command) {
        match cmd {
            Command::Send { msg, reply } => self.send(sink, msg, Pending::Reply(reply)).await,
            Command::Subscribe { options, reply } => {
                if let Some(id) = self.add_sub(options, reply) {
                    let msg = Self::subscribe_message(&id, &self.subs[&id]);
                    self.send(sink, msg, Pending::Subscribe(id)).await;
                }
            }
            Command::Unsubscribe { sub, reply } => {
                self.subs.remove(&sub);
                let msg = ClientMessage::Unsubscribe(SubOnly { reference: None, sub });
                self.send(sink, msg, Pending::Unit(reply)).await;
            }
            Command::Pause { sub, paused, reply } => {
                let Some(s) = self.subs.get_mut(&sub) else {
                    let _ = reply.send(Ok(()));
                    return;
                };
                s.paused = paused;
                if !s.confirmed {
                    s.pause_dirty = true;
                    let _ = reply.send(Ok(()));
                    return;
                }
                let only = SubOnly { reference: None, sub };
                let msg = if paused { ClientMessage::Pause(only) } else { ClientMessage::Resume(only) };
                self.send(sink, msg, Pending::Unit(reply)).await;
            }
            Command::Serve { service, concurrency, reply } => {
                if self.add_serve(service.clone(), concurrency, reply) {
                    let msg = serve_message(&service, concurrency);
                    self.send(sink, msg, Pending::Serve(service)).await;
                }
            }
            Command::Unserve { service, reply } => {
                self.serving.remove(&service);
                let msg = ClientMessage::Unserve(Unserve { reference: None, service });
                self.send(sink, msg, Pending::Unit(reply)).await;
            }
            other => self.offline(other),
        }
    }

    /// A command while not connected: recorded, answered or queued.
    fn offline(&mut self, cmd: Command) {
        match cmd {
            Command::Send { msg, reply } => {
                if self.queued.len() >= MAX_QUEUED {
                    let _ = reply.send(Err(Error::Backlog(MAX_QUEUED)));
                } else {
                    self.queued.push_back((msg, reply));
                }
            }
            Command::Subscribe { options, reply } => {
                // Sent at the next welcome (it is not confirmed).
                self.add_sub(options, reply);
            }
            Command::Unsubscribe { sub, reply } => {
                if self.subs.remove(&sub).is_some() {
                    // The server forgets it with the session, or is told after a resume.
                    self.orphans.insert(sub);
                }
                let _ = reply.send(Ok(()));
            }
            Command::Pause { sub, paused, reply } => {
                if let Some(s) = self.subs.get_mut(&sub) {
                    s.paused = paused;
                    s.pause_dirty = true;
                }
                let _ = reply.send(Ok(()));
            }
            Command::Serve { service, concurrency, reply } => {
                self.add_serve(service, concurrency, reply);
            }
            Command::Unserve { service, reply } => {
                self.serving.remove(&service);
                let _ = reply.send(Ok(()));
            }
            Command::Session { reply } => {
                let _ = reply.send(Ok(self.session.clone()));
            }
            Command::Stats { reply } => {
                let _ = reply.send(Ok(self.stats));
            }
            Command::Close { reply } => {
                // Handled by the loops; answered here only if it slips through.
                let _ = reply.send(());
            }
        }
    }

    /// Record a new subscription; `None` (and the caller told) if its id is taken.
    fn add_sub(
        &mut self,
        options: SubscribeOptions,
        reply: oneshot::Sender<Result<Subscription, Error>>,
    ) -> Option<String> {
        let id = match &options.id {
            Some(id) => id.clone(),
            None => loop {
                let id = format!("s{}", self.next_sub);
                self.next_sub += 1;
                if !self.subs.contains_key(&id) {
                    break id;
                }
            },
        };
        if self.subs.contains_key(&id) {
            let _ = reply
                .send(Err(Error::Server { code: ErrorCode::Conflict, message: format!("subscription {id} exists") }));
            return None;
        }
        self.orphans.remove(&id);
        let (tx, rx) = mpsc::channel(self.config.max_buffered.max(1));
        self.subs.insert(
            id.clone(),
            SubState {
                options,
                events: tx,
                shared: Arc::new(SubShared::default()),
                last_id: None,
                head: None,
                confirmed: false,
                paused: false,
                pause_dirty: false,
                ack_sent: 0,
                ready: Some((reply, rx)),
            },
        );
        Some(id)
    }

    fn add_serve(
        &mut self,
        service: String,
        concurrency: u32,
        reply: oneshot::Sender<Result<Responder, Error>>,
    ) -> bool {
        if self.serving.contains_key(&service) {
            let _ = reply
                .send(Err(Error::Server { code: ErrorCode::Conflict, message: format!("already serving {service}") }));
            return false;
        }
        let (tx, rx) = mpsc::channel(concurrency as usize * 2);
        self.serving.insert(service, ServeState { concurrency, requests: tx, ready: Some((reply, rx)) });
        true
    }

    /// One server message; true for `welcome`.
    async fn on_line(&mut self, sink: &mut Sink, line: &str) -> bool {
        let frame = match decode_server(line) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "The server sent a message this client cannot read; skipped.");
                return false;
            }
        };
        let msg = match frame {
            ServerFrame::Event(event) => {
                self.on_event(sink, event).await;
                return false;
            }
            ServerFrame::Message(m) => m,
        };
        match msg {
            ServerMessage::Welcome { session, resumed, .. } => {
                self.on_welcome(sink, SessionCredentials { id: session.id, secret: session.secret }, resumed).await;
                return true;
            }
            ServerMessage::Subscribed { reference, sub, head, recovered, .. } => {
                if let Some(Ref::Num(r)) = reference {
                    self.pending.remove(&r);
                }
                self.on_subscribed(sink, sub, head, recovered).await;
            }
            ServerMessage::Error { reference, sub, code, message } => self.on_error(reference, sub, code, message),
            ServerMessage::Incoming { request, service, body, deadline_ms } => {
                let Some(commands) = self.handle() else { return false };
                let gone = match self.serving.get(&service) {
                    Some(s) => {
                        let incoming =
                            IncomingRequest { request, service: service.clone(), body, deadline_ms, commands };
                        s.requests.send(incoming).await.is_err()
                    }
                    // Stopped meanwhile: the request times out on the server.
                    None => false,
                };
                if gone {
                    self.serving.remove(&service);
                    let msg = ClientMessage::Unserve(Unserve { reference: None, service });
                    self.send(sink, msg, Pending::Quiet).await;
                }
            }
            ServerMessage::Status { source, state, detail, .. } => {
                tracing::info!(%source, ?state, %detail, "Upstream source status.");
            }
            ServerMessage::Closing { reason, retry_after_ms } => {
                tracing::info!(%reason, retry_after_ms, "The server is closing the connection.");
                self.retry_after = Duration::from_millis(retry_after_ms);
            }
            other => self.settle(other),
        }
        false
    }

    async fn on_event(&mut self, sink: &mut Sink, event: Event) {
        let Some(sub) = self.subs.get_mut(&event.sub) else { return };
        // A resume repeats what was sent but not acknowledged: ids only grow
        // within a subscription, so anything not above last_id was seen.
        if sub.last_id.is_some_and(|last| event.id <= last) {
            self.stats.duplicates_dropped += 1;
            return;
        }
        sub.last_id = Some(event.id);
        let id = event.sub.clone();
        // Waits while the application's buffer is full: the connection is
        // not read meanwhile (bounded memory; the server falls back to its log).
        if sub.events.send(Ok(event)).await.is_err() {
            // The application dropped the subscription.
            self.subs.remove(&id);
            self.send(sink, ClientMessage::Unsubscribe(SubOnly { reference: None, sub: id }), Pending::Quiet).await;
        }
    }

    async fn on_welcome(&mut self, sink: &mut Sink, session: SessionCredentials, resumed: bool) {
        self.attempt = 0;
        self.retry_after = Duration::ZERO;
        self.auth_retried = false;
        self.session = Some(session);
        if !resumed {
            // A new session holds nothing: every subscription starts again
            // after the last id the application saw.
            for s in self.subs.values_mut() {
                s.confirmed = false;
            }
            self.orphans.clear();
        }
        for sub in std::mem::take(&mut self.orphans) {
            self.send(sink, ClientMessage::Unsubscribe(SubOnly { reference: None, sub }), Pending::Quiet).await;
        }
        let ids: Vec<String> = self.subs.keys().cloned().collect();
        for id in ids {
            let Some(s) = self.subs.get_mut(&id) else { continue };
            if !s.confirmed {
                let msg = Self::subscribe_message(&id, s);
                self.send(sink, msg, Pending::Subscribe(id)).await;
            } else if s.pause_dirty {
                s.pause_dirty = false;
                let only = SubOnly { reference: None, sub: id };
                let msg = if s.paused { ClientMessage::Pause(only) } else { ClientMessage::Resume(only) };
                self.send(sink, msg, Pending::Quiet).await;
            }
        }
        // Responders belong to a connection, not to the session.
        let services: Vec<(String, u32)> = self.serving.iter().map(|(k, v)| (k.clone(), v.concurrency)).collect();
        for (service, concurrency) in services {
            self.send(sink, serve_message(&service, concurrency), Pending::Serve(service)).await;
        }
        while let Some((msg, reply)) = self.queued.pop_front() {
            self.send(sink, msg, Pending::Reply(reply)).await;
        }
    }

    async fn on_subscribed(&mut self, sink: &mut Sink, id: String, head: u64, recovered: bool) {
        let commands = self.handle();
        let auto_ack = self.config.auto_ack;
        let Some(s) = self.subs.get_mut(&id) else {
            // Restored by a resume after the application unsubscribed offline.
            self.send(sink, ClientMessage::Unsubscribe(SubOnly { reference: None, sub: id }), Pending::Quiet).await;
            return;
        };
        s.confirmed = true;
        if s.head.is_none() {
            s.head = Some(head);
            // A live subscription does not want what came before its head.
            if s.options.since.is_none() && s.last_id.is_none() {
                s.last_id = Some(head);
            }
        }
        let paused = s.paused;
        if let (Some((reply, events)), Some(commands)) = (s.ready.take(), commands) {
            let _ = reply.send(Ok(Subscription {
                id: id.clone(),
                head,
                recovered,
                events,
                shared: s.shared.clone(),
                commands,
                auto_ack: s.options.auto_ack.unwrap_or(auto_ack),
                unacked: None,
            }));
        }
        if paused {
            // Paused before the server knew it (offline): say so now.
            s.pause_dirty = false;
            self.send(sink, ClientMessage::Pause(SubOnly { reference: None, sub: id }), Pending::Quiet).await;
        }
    }

    fn on_error(&mut self, reference: Option<Ref>, sub: Option<String>, code: ErrorCode, message: String) {
        let err = Error::Server { code, message };
        let pending = match reference {
            Some(Ref::Num(r)) => self.pending.remove(&r),
            _ => None,
        };
        match pending {
            Some(Pending::Reply(reply)) => {
                let _ = reply.send(Err(err));
            }
            Some(Pending::Unit(reply)) => {
                // Unsubscribing what the server no longer has is done.
                let _ = reply.send(if code == ErrorCode::NotFound { Ok(()) } else { Err(err) });
            }
            Some(Pending::Subscribe(id)) => {
                // `conflict`: the session already holds it (a resume restored
                // what an unanswered subscribe created): `subscribed` follows.
                if code != ErrorCode::Conflict {
                    if let Some(s) = self.subs.remove(&id) {
                        end_sub(s, err);
                    }
                }
            }
            Some(Pending::Serve(service)) => {
                if let Some(s) = self.serving.remove(&service) {
                    if let Some((reply, _)) = s.ready {
                        let _ = reply.send(Err(err));
                    }
                }
            }
            Some(Pending::Quiet) => {}
            None => {
                // On a resume the server drops a subscription the new token no
                // longer allows: it is over here too.
                if let (Some(id), ErrorCode::Forbidden) = (&sub, code) {
                    if let Some(s) = self.subs.remove(id) {
                        end_sub(s, err);
                        return;
                    }
                }
                tracing::warn!(code = %code, sub = ?sub, "{err}");
            }
        }
    }

    /// An answer with a `ref`.
    fn settle(&mut self, msg: ServerMessage) {
        let Some(&Ref::Num(r)) = reference_of(&msg) else { return };
        match self.pending.remove(&r) {
            Some(Pending::Reply(reply)) => {
                let _ = reply.send(Ok(msg));
            }
            Some(Pending::Unit(reply)) => {
                let _ = reply.send(Ok(()));
            }
            Some(Pending::Serve(service)) => {
                let commands = self.handle();
                if let (Some(s), Some(commands)) = (self.serving.get_mut(&service), commands) {
                    if let Some((reply, requests)) = s.ready.take() {
                        let _ = reply.send(Ok(Responder { service, requests, commands }));
                    }
                }
            }
            // A subscribe is settled by `subscribed`, handled before this.
            Some(Pending::Subscribe(_)) | Some(Pending::Quiet) | None => {}
        }
    }

    async fn flush_acks(&mut self, sink: &mut Sink) {
        let mut acks = Vec::new();
        for (id, s) in &mut self.subs {
            let ackable = s.shared.ackable.load(Ordering::Relaxed);
            if s.confirmed && ackable > s.ack_sent {
                s.ack_sent = ackable;
                acks.push(ClientMessage::Ack(Ack { sub: id.clone(), id: ackable }));
            }
        }
        for ack in acks {
            let _ = sink.send(Message::text(encode_client(&ack))).await;
        }
    }

    /// The connection is gone: calls waiting for answers fail with
    /// `Disconnected`; what the task re-applies itself is settled.
    fn settle_pending_on_drop(&mut self) {
        for (_, p) in self.pending.drain() {
            match p {
                Pending::Reply(reply) => {
                    let _ = reply.send(Err(Error::Disconnected));
                }
                Pending::Unit(reply) => {
                    let _ = reply.send(Ok(()));
                }
                Pending::Subscribe(_) | Pending::Serve(_) | Pending::Quiet => {}
            }
        }
    }

    /// End everything with `err`.
    fn shut(&mut self, err: Error, ready: Option<oneshot::Sender<Result<(), Error>>>) {
        if let Some(r) = ready {
            let _ = r.send(Err(err.clone()));
        }
        for (_, p) in self.pending.drain() {
            match p {
                Pending::Reply(reply) => {
                    let _ = reply.send(Err(err.clone()));
                }
                Pending::Unit(reply) => {
                    let _ = reply.send(Err(err.clone()));
                }
                _ => {}
            }
        }
        for (_, reply) in self.queued.drain(..) {
            let _ = reply.send(Err(err.clone()));
        }
        for (_, s) in self.subs.drain() {
            end_sub(s, err.clone());
        }
        for (_, s) in self.serving.drain() {
            if let Some((reply, _)) = s.ready {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }

    /// Refused for good: end everything, then answer every later call with `err`.
    async fn dead(mut self, err: Error, ready: Option<oneshot::Sender<Result<(), Error>>>) {
        tracing::warn!("{err}");
        self.shut(err.clone(), ready);
        self.handle = None;
        while let Some(cmd) = self.commands.recv().await {
            match cmd {
                Command::Send { reply, .. } => drop(reply.send(Err(err.clone()))),
                Command::Subscribe { reply, .. } => drop(reply.send(Err(err.clone()))),
                Command::Unsubscribe { reply, .. } | Command::Pause { reply, .. } | Command::Unserve { reply, .. } => {
                    drop(reply.send(Err(err.clone())))
                }
                Command::Serve { reply, .. } => drop(reply.send(Err(err.clone()))),
                Command::Session { reply } => drop(reply.send(Err(err.clone()))),
                Command::Stats { reply } => drop(reply.send(Ok(self.stats))),
                Command::Close { reply } => drop(reply.send(())),
            }
        }
    }
}

/// End a subscription: the application sees `err` (unless it is a plain
/// close), then the end of the stream.
fn end_sub(s: SubState, err: Error) {
    match s.ready {
        Some((reply, _)) => {
            let _ = reply.send(Err(err));
        }
        None if err != Error::Closed => {
            let _ = s.events.try_send(Err(err));
        }
        None => {}
    }
}

fn close_frame() -> Message {
    Message::Close(Some(CloseFrame { code: WsCloseCode::Normal, reason: "bye".into() }))
}

fn serve_message(service: &str, concurrency: u32) -> ClientMessage {
    ClientMessage::Serve(Serve {
        reference: None,
        service: service.to_string(),
        concurrency: (concurrency != 1).then_some(concurrency),
    })
}

/// Put `r` in the message's `ref` (`ack` has none).
pub(crate) fn set_ref(msg: &mut ClientMessage, r: Ref) {
    let slot = match msg {
        ClientMessage::Hello(m) => &mut m.reference,
        ClientMessage::Subscribe(m) => &mut m.reference,
        ClientMessage::Unsubscribe(m) | ClientMessage::Pause(m) | ClientMessage::Resume(m) => &mut m.reference,
        ClientMessage::Ack(_) => return,
        ClientMessage::Ping(m) => &mut m.reference,
        ClientMessage::Publish(m) => &mut m.reference,
        ClientMessage::Request(m) => &mut m.reference,
        ClientMessage::Serve(m) => &mut m.reference,
        ClientMessage::Unserve(m) => &mut m.reference,
        ClientMessage::Answer(m) => &mut m.reference,
    };
    *slot = Some(r);
}

fn reference_of(msg: &ServerMessage) -> Option<&Ref> {
    match msg {
        ServerMessage::Welcome { reference, .. }
        | ServerMessage::Subscribed { reference, .. }
        | ServerMessage::Unsubscribed { reference, .. }
        | ServerMessage::Paused { reference, .. }
        | ServerMessage::Resumed { reference, .. }
        | ServerMessage::Pong { reference }
        | ServerMessage::Published { reference, .. }
        | ServerMessage::Response { reference, .. }
        | ServerMessage::Serving { reference, .. }
        | ServerMessage::Unserved { reference, .. }
        | ServerMessage::Answered { reference, .. }
        | ServerMessage::Error { reference, .. } => reference.as_ref(),
        ServerMessage::Incoming { .. } | ServerMessage::Status { .. } | ServerMessage::Closing { .. } => None,
    }
}
