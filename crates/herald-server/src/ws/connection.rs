//! One WebSocket connection: reads client messages and acts on them.
//!
//! Every reply goes through the connection's outbox, the same queue as
//! events, so a reply is always ordered correctly against the events around
//! it (for example `subscribed` precedes the subscription's first event).

use super::writer;
use crate::admission::{RateLimit, Slot};
use crate::state::AppState;
use crate::subscription::{compile_spec, open, spawn_catch_up, truncated_message};
use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use herald_core::event::Origin;
use herald_core::fanout::Registration;
use herald_core::{Frame, FrameFormat, NewEvent, Outbox, Principal, ResumeError, Session, Start, SubRecord, SubSpec};
use herald_protocol::{
    decode_client, encode, Ack, Answer, ClientMessage, CloseCode, ErrorCode, Hello, Publish, Ref, Request, Serve,
    ServerMessage, SessionInfo, StatusState, SubOnly, Subscribe, Unserve,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Longest subscription id, in bytes.
const MAX_SUB_ID_BYTES: usize = 128;
/// Publishes waiting for the log, per connection, before reading pauses.
const PUBLISH_QUEUE: usize = 256;

type Publication = (NewEvent, Option<Ref>);

struct Connection {
    /// The client's address.
    peer: SocketAddr,
    /// This connection's place in the connection limits.
    slot: Slot,
    rate: RateLimit,
    handle: Arc<crate::connections::ConnHandle>,
    state: AppState,
    conn_id: u64,
    outbox: Arc<Outbox>,
    principal: Arc<Principal>,
    session: Option<Arc<Session>>,
    publisher: Option<mpsc::Sender<Publication>>,
    publish_seq: u64,
    /// Services this connection serves, with its responder id for each.
    serving: HashMap<String, herald_core::rendezvous::ResponderId>,
    /// This connection's requests waiting for answers; dropping the set
    /// (the connection ends) drops them, so a late answer learns the
    /// requester is gone.
    requests: tokio::task::JoinSet<()>,
}

pub(crate) async fn run(socket: WebSocket, state: AppState, peer: SocketAddr, slot: Slot) {
    let s = state.get();
    let (sink, mut stream) = socket.split();
    let slow = encode(&ServerMessage::Error {
        reference: None,
        sub: None,
        code: ErrorCode::SlowConsumer,
        message: format!(
            "more than {} bytes were waiting to be sent (limits.max_outbound_bytes); closing",
            s.config.limits.max_outbound_bytes
        ),
    });
    let outbox = Arc::new(Outbox::new(
        s.config.limits.max_outbound_bytes,
        slow.into(),
        (CloseCode::SlowConsumer.code(), "slow consumer".into()),
    ));
    let (conn_id, handle) = s.connections.add(outbox.clone(), s.now_ms(), false);
    let expiry = handle.clone();
    debug!(conn = conn_id, %peer, "WebSocket connected.");
    let mut writer = tokio::spawn(writer::run(sink, outbox.clone(), s.metrics.deliver_latency.clone()));
    let mut conn = Connection {
        peer,
        slot,
        rate: RateLimit::new(s.config.limits.commands_per_second),
        handle: expiry,
        state: state.clone(),
        conn_id,
        outbox: outbox.clone(),
        principal: Arc::new(Principal::anonymous()),
        session: None,
        publisher: None,
        publish_seq: 0,
        serving: HashMap::new(),
        requests: tokio::task::JoinSet::new(),
    };
    if s.is_draining() {
        let closing = encode(&ServerMessage::Closing { reason: "server shutting down".into(), retry_after_ms: 1000 });
        outbox.close_with(Some(closing.into()), CloseCode::Draining.code(), "server shutting down");
    }
    let mut orderly = false;
    loop {
        tokio::select! {
            msg = stream.next() => {
                handle.last_seen_ms.store(s.now_ms(), Ordering::Relaxed);
                match msg {
                    Some(Ok(Message::Text(text))) => {
                        if conn.on_text(text.as_str()).await.is_break() {
                            break;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        conn.error(None, None, ErrorCode::BadRequest, "binary frames are not supported; send JSON text frames");
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) => {
                        // A close the client started ends the session; one the
                        // server started (drain, slow consumer) does not.
                        orderly = !outbox.is_closed();
                        break;
                    }
                    Some(Err(e)) => {
                        // Tell the client which WebSocket rule it broke, if the
                        // socket can still carry a close frame.
                        let text = e.to_string();
                        let (code, reason) = if text.contains("UTF-8") {
                            (1007, "text frame is not valid UTF-8")
                        } else if text.contains("Space limit") || text.contains("too long") {
                            (1009, "frame too large")
                        } else {
                            (1002, "WebSocket protocol error")
                        };
                        debug!(conn = conn_id, error = %text, "WebSocket read failed.");
                        outbox.close_with(None, code, reason);
                        break;
                    }
                    None => break,
                }
            }
            _ = &mut writer => break,
        }
    }
    if conn.session.is_some() {
        let how = if orderly { "closed" } else { "lost" };
        crate::streams::publish(&state, "ws", "end", conn_id, serde_json::json!({"end": how}));
    }
    conn.finish(orderly);
    conn.finish_rendezvous();
    s.connections.remove(conn_id);
    if outbox.is_closed() {
        // The server closed: keep reading (and ignoring) until the client's
        // close reply, so that unread input does not reset the connection
        // before the client has read the error and the close frame.
        let drain = async {
            while let Some(Ok(m)) = stream.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
    }
    if !writer.is_finished() {
        outbox.close_with(None, CloseCode::Normal.code(), "bye");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer).await;
    }
    debug!(conn = conn_id, orderly, "WebSocket closed.");
}

impl Connection {
    fn send(&self, msg: &ServerMessage) {
        let _ = self.outbox.push(Frame::Text(encode(msg).into()));
    }

    fn error(&self, reference: Option<Ref>, sub: Option<String>, code: ErrorCode, message: impl Into<String>) {
        self.send(&ServerMessage::Error { reference, sub, code, message: message.into() });
    }

    /// Send an error and close the connection with `close`.
    fn fatal(&self, reference: Option<Ref>, code: ErrorCode, message: &str, close: CloseCode) -> ControlFlow<()> {
        let frame = encode(&ServerMessage::Error { reference, sub: None, code, message: message.to_string() });
        self.outbox.close_with(Some(frame.into()), close.code(), message);
        ControlFlow::Break(())
    }

    async fn on_text(&mut self, text: &str) -> ControlFlow<()> {
        let max = self.state.get().config.limits.max_frame_bytes;
        if text.len() > max {
            self.error(
                None,
                None,
                ErrorCode::LimitExceeded,
                format!("frame of {} bytes exceeds limits.max_frame_bytes ({max})", text.len()),
            );
            return ControlFlow::Continue(());
        }
        if !self.rate.allow() {
            if self.rate.refused_in_a_row > 100 {
                return self.fatal(
                    None,
                    ErrorCode::LimitExceeded,
                    "command rate limit exceeded persistently",
                    CloseCode::Limits,
                );
            }
            let rate = self.state.get().config.limits.commands_per_second;
            self.error(
                None,
                None,
                ErrorCode::LimitExceeded,
                format!("more than {rate} commands per second (limits.commands_per_second); this one was not run"),
            );
            return ControlFlow::Continue(());
        }
        let msg = match decode_client(text) {
            Ok(m) => m,
            Err(e) => {
                self.error(e.reference, None, e.code, e.message);
                return ControlFlow::Continue(());
            }
        };
        let Some(session) = self.session.clone() else {
            return match msg {
                ClientMessage::Hello(h) => self.hello(h),
                other => self.fatal(
                    other.reference().cloned(),
                    ErrorCode::BadRequest,
                    "the first message must be `hello`",
                    CloseCode::ProtocolViolation,
                ),
            };
        };
        match msg {
            ClientMessage::Hello(h) => {
                self.error(h.reference, None, ErrorCode::Conflict, "`hello` was already sent on this connection");
            }
            ClientMessage::Subscribe(m) => self.subscribe(&session, m).await,
            ClientMessage::Unsubscribe(m) => self.unsubscribe(&session, m),
            ClientMessage::Pause(m) => self.pause(&session, m),
            ClientMessage::Resume(m) => self.resume(&session, m),
            ClientMessage::Ack(m) => self.ack(&session, m),
            ClientMessage::Ping(m) => self.send(&ServerMessage::Pong { reference: m.reference }),
            ClientMessage::Publish(m) => self.publish(m).await,
            ClientMessage::Request(m) => self.request(m),
            ClientMessage::Serve(m) => self.serve(m),
            ClientMessage::Unserve(m) => self.unserve(m),
            ClientMessage::Answer(m) => self.answer(m),
        }
        ControlFlow::Continue(())
    }

    fn stream_started(&self, session: &Session, resumed: bool) {
        let detail = serde_json::json!({
            "session": session.id,
            "resumed": resumed,
            "user": self.principal.user,
            "remote": self.peer.ip().to_string(),
        });
        crate::streams::publish(&self.state, "ws", "start", self.conn_id, detail);
    }

    fn welcome(&self, reference: Option<Ref>, session: &Session, resumed: bool) {
        let s = self.state.get();
        self.send(&ServerMessage::Welcome {
            reference,
            session: SessionInfo { id: session.id.clone(), secret: session.secret().to_string() },
            resumed,
            heartbeat_ms: s.config.heartbeat.as_millis() as u64,
            limits: s.limits(),
            server: crate::state::SERVER_INFO,
        });
    }

    fn hello(&mut self, h: Hello) -> ControlFlow<()> {
        let s = self.state.get();
        match s.auth.authenticate(h.token.as_deref()) {
            Ok(p) => {
                if let Some(user) = &p.user {
                    if self.slot.claim_user(user).is_err() {
                        let msg = "too many connections for this user (limits.max_connections_per_user)";
                        return self.fatal(h.reference, ErrorCode::LimitExceeded, msg, CloseCode::Limits);
                    }
                }
                // Closed by the sweeper once expired (with the same leeway as at hello).
                let leeway = s.config.auth.leeway.as_secs();
                self.handle.expires_at.store(p.expires_at.map_or(0, |e| e + leeway), Ordering::Relaxed);
                self.principal = p;
            }
            Err(e) => {
                s.metrics.auth_failures.inc();
                return self.fatal(h.reference, e.code, &e.message, CloseCode::Unauthorized);
            }
        }
        let user = self.principal.user.clone();
        if let Some(creds) = h.session {
            match s.sessions.find(&creds.id, &creds.secret, user.as_deref()) {
                Ok(session) => {
                    self.resume_session(h.reference, session);
                    return ControlFlow::Continue(());
                }
                Err(ResumeError::Mismatch) => {
                    warn!(conn = self.conn_id, session = %creds.id.chars().take(64).collect::<String>(), "Refused a session resume with wrong credentials.");
                    return self.fatal(
                        h.reference,
                        ErrorCode::Unauthorized,
                        "session credentials do not match",
                        CloseCode::Unauthorized,
                    );
                }
                Err(ResumeError::NotFound) => {
                    // Expired or unknown: start afresh; `resumed: false` tells the
                    // client to subscribe again from its own last ids.
                    debug!(conn = self.conn_id, "Resume of an unknown or expired session; starting a new one.");
                }
            }
        }
        let session = s.sessions.create(user, self.outbox.clone());
        debug!(conn = self.conn_id, session = %session.id, "Session started.");
        self.welcome(h.reference, &session, false);
        self.stream_started(&session, false);
        self.session = Some(session);
        ControlFlow::Continue(())
    }

    fn resume_session(&mut self, reference: Option<Ref>, session: Arc<Session>) {
        let s = self.state.get();
        let mut st = session.state.lock();
        if let Some(old) = st.attached.take() {
            let closing = encode(&ServerMessage::Closing {
                reason: "session resumed on another connection".into(),
                retry_after_ms: 0,
            });
            old.close_with(Some(closing.into()), CloseCode::SessionTakenOver.code(), "session taken over");
        }
        for rec in st.subs.values_mut() {
            if let Some(e) = rec.entry.take() {
                s.fanout.unregister(&e);
            }
        }
        st.attached = Some(self.outbox.clone());
        st.detached_at = None;
        self.welcome(reference, &session, true);
        let first = s.log.bounds().first;
        // The client may come back with other grants: a subscription they no
        // longer allow is dropped, and the client told.
        let principal = self.principal.clone();
        let refused: Vec<String> = st
            .subs
            .iter()
            .filter(|(_, r)| !r.spec.bindings.iter().all(|(x, p)| principal.may_bind(x, p)))
            .map(|(sub, _)| sub.clone())
            .collect();
        for sub in refused {
            if let Some(rec) = st.subs.remove(&sub) {
                crate::peers::release(&self.state, &rec.leases);
            }
            self.error(
                None,
                Some(sub),
                ErrorCode::Forbidden,
                "your grants no longer allow this subscription; it was removed",
            );
        }
        let mut catch_up = Vec::new();
        for (sub, rec) in st.subs.iter_mut() {
            let reg = Registration {
                sub: Arc::from(sub.as_str()),
                spec: rec.spec.clone(),
                principal: self.principal.clone(),
                outbox: self.outbox.clone(),
                format: FrameFormat::WebSocket,
            };
            let start = if rec.paused { Start::Paused(rec.acked) } else { Start::CatchUp(rec.acked) };
            let recovered = rec.acked + 1 >= first;
            let (entry, _) = s.fanout.register(reg, start, |head| {
                self.send(&ServerMessage::Subscribed {
                    reference: None,
                    sub: sub.clone(),
                    head,
                    recovered,
                    history: None,
                });
            });
            if !recovered {
                self.error(None, Some(sub.clone()), ErrorCode::HistoryTruncated, truncated_message(rec.acked, first));
            }
            if !rec.paused {
                catch_up.push(entry.clone());
            }
            rec.entry = Some(entry);
        }
        drop(st);
        info!(conn = self.conn_id, session = %session.id, subscriptions = catch_up.len(), "Session resumed.");
        self.stream_started(&session, true);
        self.session = Some(session);
        for entry in catch_up {
            spawn_catch_up(self.state.clone(), entry);
        }
    }

    fn validate_subscribe(&self, m: &Subscribe) -> Result<SubSpec, (ErrorCode, String)> {
        if m.sub.is_empty() || m.sub.len() > MAX_SUB_ID_BYTES {
            return Err((ErrorCode::BadRequest, format!("`sub` must be 1 to {MAX_SUB_ID_BYTES} bytes")));
        }
        compile_spec(&self.state.get().config.limits, &self.principal, &m.bindings, &m.filters)
    }

    async fn subscribe(&mut self, session: &Arc<Session>, m: Subscribe) {
        let s = self.state.get();
        let spec = match self.validate_subscribe(&m) {
            Ok(spec) => Arc::new(spec),
            Err((code, msg)) => return self.error(m.reference, Some(m.sub), code, msg),
        };
        {
            let st = session.state.lock();
            if st.subs.contains_key(&m.sub) {
                return self.error(
                    m.reference,
                    Some(m.sub),
                    ErrorCode::Conflict,
                    "a subscription with this `sub` already exists",
                );
            }
            if st.subs.len() >= s.config.limits.max_subscriptions {
                let msg = format!(
                    "the limit is {} subscriptions (limits.max_subscriptions)",
                    s.config.limits.max_subscriptions
                );
                return self.error(m.reference, Some(m.sub), ErrorCode::LimitExceeded, msg);
            }
        }
        let reg = Registration {
            sub: Arc::from(m.sub.as_str()),
            spec: spec.clone(),
            principal: self.principal.clone(),
            outbox: self.outbox.clone(),
            format: FrameFormat::WebSocket,
        };
        // Exchanges a peer binds on demand: history starts now for those.
        let leases = match crate::peers::lease(&self.state, &m.bindings) {
            Ok(leases) => leases,
            Err(msg) => return self.error(m.reference, Some(m.sub), ErrorCode::LimitExceeded, msg),
        };
        let history = (!leases.is_empty()).then_some("from_now");
        let (reference, sub) = (m.reference.clone(), m.sub.clone());
        let opened = open(&self.state, reg, m.since, |a| {
            let head = a.head;
            self.send(&ServerMessage::Subscribed {
                reference,
                sub: sub.clone(),
                head,
                recovered: a.recovered,
                history,
            });
            if let Some(msg) = a.truncated {
                self.error(None, Some(sub), ErrorCode::HistoryTruncated, msg);
            }
        })
        .await;
        match opened {
            Ok((entry, cursor)) => {
                // Tell the client at once about any source feeding it that is down.
                let exchanges = entry.spec.exchanges();
                for (id, rt) in &self.state.get().peers {
                    let (up, detail) = rt.health.lock().clone();
                    if !up && rt.exchanges.iter().any(|x| exchanges.contains(x)) {
                        self.send(&ServerMessage::Status { source: id.clone(), state: StatusState::Down, detail });
                    }
                }
                let record = SubRecord {
                    spec,
                    bindings: m.bindings,
                    filters: m.filters,
                    acked: cursor,
                    paused: false,
                    entry: Some(entry),
                    leases,
                };
                session.state.lock().subs.insert(m.sub, record);
            }
            Err((code, msg)) => {
                crate::peers::release(&self.state, &leases);
                self.error(m.reference, Some(m.sub), code, msg)
            }
        }
    }

    fn with_entry(&self, session: &Session, m: &SubOnly, f: impl FnOnce(&mut SubRecord) -> ServerMessage) {
        let reply = {
            let mut st = session.state.lock();
            st.subs.get_mut(&m.sub).map(f)
        };
        match reply {
            Some(msg) => self.send(&msg),
            None => self.error(
                m.reference.clone(),
                Some(m.sub.clone()),
                ErrorCode::NotFound,
                "no subscription with this `sub`",
            ),
        }
    }

    fn unsubscribe(&self, session: &Session, m: SubOnly) {
        let removed = session.state.lock().subs.remove(&m.sub);
        match removed {
            Some(rec) => {
                if let Some(e) = rec.entry {
                    self.state.get().fanout.unregister(&e);
                }
                crate::peers::release(&self.state, &rec.leases);
                self.send(&ServerMessage::Unsubscribed { reference: m.reference, sub: m.sub });
            }
            None => self.error(m.reference, Some(m.sub), ErrorCode::NotFound, "no subscription with this `sub`"),
        }
    }

    fn pause(&self, session: &Session, m: SubOnly) {
        let fanout = self.state.get().fanout.clone();
        self.with_entry(session, &m, |rec| {
            if let Some(e) = &rec.entry {
                fanout.pause(e);
            }
            rec.paused = true;
            ServerMessage::Paused { reference: m.reference.clone(), sub: m.sub.clone() }
        });
    }

    fn resume(&self, session: &Session, m: SubOnly) {
        let fanout = self.state.get().fanout.clone();
        let mut restart = None;
        self.with_entry(session, &m, |rec| {
            if let Some(e) = &rec.entry {
                if fanout.resume(e) {
                    restart = Some(e.clone());
                }
            }
            rec.paused = false;
            ServerMessage::Resumed { reference: m.reference.clone(), sub: m.sub.clone() }
        });
        if let Some(entry) = restart {
            spawn_catch_up(self.state.clone(), entry);
        }
    }

    fn ack(&self, session: &Session, m: Ack) {
        let mut st = session.state.lock();
        match st.subs.get_mut(&m.sub) {
            Some(rec) => rec.acked = rec.acked.max(m.id),
            None => {
                drop(st);
                self.error(None, Some(m.sub), ErrorCode::NotFound, "ack for an unknown subscription");
            }
        }
    }

    async fn publish(&mut self, m: Publish) {
        let s = self.state.get();
        let mut event = NewEvent {
            exchange: m.exchange,
            routing_key: m.routing_key,
            payload: m.payload,
            acl: m.acl,
            headers: m.headers,
            origin: None,
        };
        if !self.principal.may_publish(&event.exchange, &event.routing_key) {
            let msg = format!("publishing to {} {} is outside your publish grants", event.exchange, event.routing_key);
            return self.error(m.reference, None, ErrorCode::Forbidden, msg);
        }
        if let Err(e) = event.validate(s.config.limits.max_payload_bytes) {
            let code = if matches!(e, herald_core::EventError::PayloadTooLarge { .. }) {
                ErrorCode::LimitExceeded
            } else {
                ErrorCode::BadRequest
            };
            return self.error(m.reference, None, code, e.to_string());
        }
        self.publish_seq += 1;
        event.origin = Some(Origin { peer: "ws".into(), stream: self.conn_id, seq: self.publish_seq });
        let tx = self.publisher.get_or_insert_with(|| spawn_publisher(self.state.clone(), self.outbox.clone())).clone();
        // Waiting here when the queue is full stops reading from this client:
        // backpressure, not buffering.
        let _ = tx.send((event, m.reference)).await;
    }

    /// `request`: hand it to the broker; a task sends the `response` (or
    /// the error) when it comes.
    fn request(&mut self, m: Request) {
        let s = self.state.get();
        if let Err((code, msg)) = crate::rendezvous::check_request(&self.principal, &m.service, m.body.get(), s) {
            return self.error(m.reference, None, code, msg);
        }
        while self.requests.try_join_next().is_some() {}
        let most = s.config.rendezvous.max_requests_per_connection;
        if self.requests.len() >= most {
            return self.error(
                m.reference,
                None,
                ErrorCode::LimitExceeded,
                format!("{most} requests already wait for answers on this connection (rendezvous.max_requests_per_connection)"),
            );
        }
        let timeout = m.timeout_ms.map(std::time::Duration::from_millis);
        let pending = s.broker.request(&m.service, m.body, timeout);
        debug!(conn = self.conn_id, service = %m.service, request = %pending.id, "Rendezvous request.");
        let outbox = self.outbox.clone();
        let reference = m.reference;
        self.requests.spawn(async move {
            let reply = match pending.answer().await {
                Ok(body) => ServerMessage::Response { reference, body },
                Err(e) => ServerMessage::Error { reference, sub: None, code: e.code(), message: e.to_string() },
            };
            let _ = outbox.push(Frame::Text(encode(&reply).into()));
        });
    }

    /// `serve`: register this connection as a responder of the service.
    fn serve(&mut self, m: Serve) {
        let s = self.state.get();
        if let Err((code, msg)) = crate::rendezvous::check_service(&m.service) {
            return self.error(m.reference, None, code, msg);
        }
        if !self.principal.may_serve(&m.service) {
            let msg = format!("your token does not grant serving `{}`", m.service);
            return self.error(m.reference, None, ErrorCode::Forbidden, msg);
        }
        let most = s.config.rendezvous.max_concurrency;
        let concurrency = m.concurrency.unwrap_or(1);
        if concurrency == 0 || concurrency > most {
            let msg = format!("`concurrency` must be 1 to {most} (rendezvous.max_concurrency)");
            return self.error(m.reference, None, ErrorCode::BadRequest, msg);
        }
        if self.serving.contains_key(&m.service) {
            let msg = format!("this connection already serves `{}`", m.service);
            return self.error(m.reference, None, ErrorCode::Conflict, msg);
        }
        // `serving` goes out before the first `incoming`: both pass through the outbox.
        self.send(&ServerMessage::Serving { reference: m.reference, service: m.service.clone() });
        let outbox = self.outbox.clone();
        let deliver: herald_core::rendezvous::Deliver = Arc::new(move |incoming: herald_core::Incoming| {
            let msg = ServerMessage::Incoming {
                request: incoming.request.clone(),
                service: incoming.service.to_string(),
                body: incoming.body.clone(),
                deadline_ms: incoming.deadline.saturating_duration_since(Instant::now()).as_millis() as u64,
            };
            match outbox.push(Frame::Text(encode(&msg).into())) {
                Ok(()) => Ok(()),
                Err(_) => Err(incoming),
            }
        });
        let id = s.broker.serve(&m.service, concurrency, herald_core::Sink::Stream(deliver));
        debug!(conn = self.conn_id, service = %m.service, concurrency, "Serving.");
        self.serving.insert(m.service, id);
    }

    /// `unserve`: no new requests; those already here may still be answered.
    fn unserve(&mut self, m: Unserve) {
        match self.serving.remove(&m.service) {
            Some(id) => {
                self.state.get().broker.unserve(id);
                self.send(&ServerMessage::Unserved { reference: m.reference, service: m.service });
            }
            None => {
                let msg = format!("this connection does not serve `{}`", m.service);
                self.error(m.reference, None, ErrorCode::NotFound, msg);
            }
        }
    }

    /// `answer`: route the body back to the requester.
    fn answer(&mut self, m: Answer) {
        let s = self.state.get();
        let max = s.config.rendezvous.max_body_bytes;
        if m.body.get().len() > max {
            let msg = format!("answer body of {} bytes exceeds rendezvous.max_body_bytes ({max})", m.body.get().len());
            return self.error(m.reference, None, ErrorCode::LimitExceeded, msg);
        }
        let principal = self.principal.clone();
        match s.broker.answer(&m.request, m.body, |service| principal.may_serve(service)) {
            Ok(()) => self.send(&ServerMessage::Answered { reference: m.reference, request: m.request }),
            Err(e) => self.error(m.reference, None, e.code(), e.to_string()),
        }
    }

    /// The connection ended: its responders are gone (their requests fail
    /// at once) and its requests are abandoned.
    fn finish_rendezvous(&mut self) {
        let broker = &self.state.get().broker;
        for (_, id) in self.serving.drain() {
            broker.responder_gone(id);
        }
        self.requests.abort_all();
    }

    /// The connection ended: detach the session (abrupt end) or end it (orderly close).
    fn finish(&mut self, orderly: bool) {
        let Some(session) = self.session.take() else {
            return;
        };
        let s = self.state.get();
        let mut st = session.state.lock();
        let mine = st.attached.as_ref().is_some_and(|o| Arc::ptr_eq(o, &self.outbox));
        if !mine {
            return; // taken over by another connection
        }
        for rec in st.subs.values_mut() {
            if let Some(e) = rec.entry.take() {
                s.fanout.unregister(&e);
            }
        }
        if orderly {
            for rec in st.subs.values() {
                crate::peers::release(&self.state, &rec.leases);
            }
            drop(st);
            s.sessions.remove(&session.id);
            debug!(conn = self.conn_id, session = %session.id, "Session ended by the client.");
        } else {
            st.attached = None;
            st.detached_at = Some(Instant::now());
            debug!(conn = self.conn_id, session = %session.id, "Session detached; it can be resumed.");
        }
    }
}

/// A per-connection task that appends this connection's publishes in order,
/// as many per log commit as are waiting.
fn spawn_publisher(state: AppState, outbox: Arc<Outbox>) -> mpsc::Sender<Publication> {
    let (tx, mut rx) = mpsc::channel::<Publication>(PUBLISH_QUEUE);
    tokio::spawn(async move {
        let mut batch: Vec<Publication> = Vec::new();
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < PUBLISH_QUEUE {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let (events, refs): (Vec<NewEvent>, Vec<Option<Ref>>) = batch.drain(..).unzip();
            match state.get().log.append(events).await {
                Ok(committed) => {
                    state
                        .get()
                        .metrics
                        .published
                        .get_or_create(&crate::metrics::Transport { transport: "ws" })
                        .inc_by(committed.len() as u64);
                    for (e, reference) in committed.iter().zip(refs) {
                        let msg = ServerMessage::Published { reference, id: e.id };
                        let _ = outbox.push(Frame::Text(encode(&msg).into()));
                    }
                }
                Err(err) => {
                    for reference in refs {
                        let msg = ServerMessage::Error {
                            reference,
                            sub: None,
                            code: ErrorCode::Unavailable,
                            message: format!("the log could not store the event: {err}"),
                        };
                        let _ = outbox.push(Frame::Text(encode(&msg).into()));
                    }
                }
            }
        }
    });
    tx
}
