//! One WebSocket connection: the context every command works in, the read
//! loop, and what happens when the connection ends. The commands live in
//! their own files (`hello.rs`, `subscribe.rs`, `pause.rs`, `ack.rs`,
//! `publish.rs`, `rendezvous.rs`), as mini-redis keeps one file per command.
//!
//! Every reply goes through the connection's outbox, the same queue as
//! events, so a reply is always ordered correctly against the events around
//! it (for example `subscribed` precedes the subscription's first event).
//!
//! The loop is generic over the socket's two halves, so tests drive a
//! connection over an in-memory pipe (the in-process tests).

use super::wire::{Inbound, Reader};
use super::{publish::Publication, writer};
use crate::admission::{RateLimit, Slot};
use crate::connections::ConnHandle;
use crate::error::ClientError;
use crate::state::AppState;
use herald_core::{Attachment, Frame, Outbox, Principal, ReplayPermits, Session, StoreOp};
use herald_protocol::{decode_client, encode, ClientMessage, CloseCode, ErrorCode, Ref, ServerMessage};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// How long a connection works through commands before it lets others run.
const YIELD_AFTER: std::time::Duration = std::time::Duration::from_millis(1);

/// A session and the proof that this connection holds it.
pub(super) struct Held {
    pub(super) session: Arc<Session>,
    pub(super) att: Attachment,
}

/// The state of one connection that its commands share.
pub(super) struct Connection {
    /// The client's address.
    pub(super) peer: SocketAddr,
    /// This connection's place in the connection limits.
    pub(super) slot: Slot,
    pub(super) rate: RateLimit,
    pub(super) handle: Arc<ConnHandle>,
    pub(super) state: AppState,
    pub(super) conn_id: u64,
    pub(super) outbox: Arc<Outbox>,
    pub(super) principal: Arc<Principal>,
    /// Whose budgets this connection counts against (set at `hello`).
    pub(super) owner: Arc<str>,
    /// Turns for reading history (set with the owner).
    pub(super) replay: Arc<ReplayPermits>,
    pub(super) session: Option<Held>,
    pub(super) publisher: Option<mpsc::Sender<Publication>>,
    pub(super) publish_seq: u64,
    /// Services this connection serves, with its responder id for each.
    pub(super) serving: HashMap<String, herald_core::rendezvous::ResponderId>,
    /// This connection's requests waiting for answers; dropping the set
    /// (the connection ends) drops them, so a late answer learns the
    /// requester is gone.
    pub(super) requests: tokio::task::JoinSet<()>,
    /// The client reads several messages per frame (`hello.batch`); the
    /// writer task packs frames while it is set.
    pub(super) batch: Arc<std::sync::atomic::AtomicBool>,
}

/// Serve one connection until it ends: messages from `stream`, frames
/// written into `sink` (the two halves of the upgraded socket).
pub(crate) async fn run<W, R>(sink: W, mut stream: Reader<R>, state: AppState, peer: SocketAddr, slot: Slot)
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin,
{
    let s = state.get();
    let outbox = Arc::new(Outbox::new(
        s.config.limits.max_outbound_bytes,
        s.ws_slow_consumer.clone(),
        (CloseCode::SlowConsumer.code(), "slow consumer"),
    ));
    let (conn_id, handle) = s.connections.add(outbox.clone(), s.now_ms(), false);
    debug!(conn = conn_id, %peer, "WebSocket connected.");
    let batch = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writer = crate::writers::handle().spawn(writer::run(
        sink,
        outbox.clone(),
        s.metrics.deliver_latency.clone(),
        batch.clone(),
    ));
    let owner = herald_core::owner_key(None, Some(peer.ip()));
    let mut conn = Connection {
        peer,
        slot,
        rate: RateLimit::new(s.config.limits.commands_per_second),
        handle: handle.clone(),
        state: state.clone(),
        conn_id,
        outbox: outbox.clone(),
        principal: Arc::new(Principal::anonymous()),
        owner: owner.clone(),
        replay: s.replays.permits(&owner),
        session: None,
        publisher: None,
        publish_seq: 0,
        serving: HashMap::new(),
        requests: tokio::task::JoinSet::new(),
        batch,
    };
    if s.is_draining() {
        let closing = encode(&ServerMessage::Closing { reason: "server shutting down".into(), retry_after_ms: 1000 });
        outbox.close_with(Some(closing.into()), CloseCode::Draining.code(), "server shutting down");
    }
    let mut orderly = false;
    let mut client_close = None;
    let mut busy_since = std::time::Instant::now();
    loop {
        tokio::select! {
            msg = stream.next() => {
                handle.last_seen_ms.store(s.now_ms(), Ordering::Relaxed);
                match msg {
                    Some(Ok(Inbound::Text(text))) => {
                        // Checked to be UTF-8 by the decoder.
                        let text = std::str::from_utf8(&text).unwrap_or_default();
                        // Boxed: a command's state (a `hello` or `subscribe`
                        // in progress is kilobytes) exists only while it
                        // runs, not in every idle connection's task.
                        if Box::pin(conn.on_text(text)).await.is_break() {
                            break;
                        }
                        // A client whose commands arrive back to back would
                        // keep this worker until tokio's budget runs out
                        // (a hundred commands or more): after a millisecond
                        // of work, let other connections' tasks run.
                        if busy_since.elapsed() >= YIELD_AFTER {
                            tokio::task::yield_now().await;
                            busy_since = std::time::Instant::now();
                        }
                    }
                    Some(Ok(Inbound::Binary(_))) => {
                        conn.error(None, None, ErrorCode::BadRequest, "binary frames are not supported; send JSON text frames");
                    }
                    Some(Ok(Inbound::Ping(body))) => {
                        let _ = outbox.push(Frame::Pong(body));
                    }
                    Some(Ok(Inbound::Pong)) => {}
                    Some(Ok(Inbound::Close(code))) => {
                        // A close the client started ends the session; one the
                        // server started (drain, slow consumer) does not.
                        orderly = !outbox.is_closed();
                        // Answer it, echoing the client's code (RFC 6455 §5.5.1).
                        client_close = Some(code.unwrap_or(CloseCode::Normal.code()));
                        break;
                    }
                    Some(Err(e)) => {
                        // Tell the client which WebSocket rule it broke, if the
                        // socket can still carry a close frame.
                        debug!(conn = conn_id, error = %e, "WebSocket read failed.");
                        let reason = match e.close_code() {
                            CloseCode::InvalidUtf8 => "text frame is not valid UTF-8",
                            CloseCode::TooBig => "frame too large",
                            _ => "WebSocket protocol error",
                        };
                        outbox.close_with(None, e.close_code().code(), reason);
                        break;
                    }
                    None => break,
                }
            }
            _ = &mut writer => break,
        }
    }
    // Boxed, as the commands are: the teardown's state (the drain's
    // timers) is not part of every idle connection's task.
    let state = conn.state.clone();
    Box::pin(async move {
        let s = state.get();
        if conn.session.is_some() {
            let how = if orderly { "closed" } else { "lost" };
            crate::streams::publish(&state, "ws", "end", conn_id, serde_json::json!({"end": how}));
        }
        conn.finish(orderly).await;
        conn.finish_rendezvous();
        s.connections.remove(conn_id);
        if outbox.is_closed() {
            // The server closed: keep reading (and ignoring) until the client's
            // close reply, so that unread input does not reset the connection
            // before the client has read the error and the close frame.
            let drain = async {
                while let Some(Ok(m)) = stream.next().await {
                    if matches!(m, Inbound::Close(_)) {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
        }
        if !writer.is_finished() {
            outbox.close_with(None, client_close.unwrap_or(CloseCode::Normal.code()), "bye");
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer).await;
        }
        debug!(conn = conn_id, orderly, "WebSocket closed.");
    })
    .await;
}

impl Connection {
    pub(super) fn send(&self, msg: &ServerMessage) {
        let _ = self.outbox.push(Frame::Text(encode(msg).into()));
    }

    pub(super) fn error(
        &self,
        reference: Option<Ref>,
        sub: Option<String>,
        code: ErrorCode,
        message: impl Into<String>,
    ) {
        self.send(&ServerMessage::Error { reference, sub, code, message: message.into() });
    }

    /// Send a [`ClientError`]; one that carries a close code also closes the connection.
    pub(super) fn reject(&self, reference: Option<Ref>, sub: Option<String>, e: ClientError) -> ControlFlow<()> {
        let frame = encode(&e.to_message(reference, sub));
        match e.close {
            Some(close) => {
                self.outbox.close_with(Some(frame.into()), close.code(), &e.message);
                ControlFlow::Break(())
            }
            None => {
                let _ = self.outbox.push(Frame::Text(frame.into()));
                ControlFlow::Continue(())
            }
        }
    }

    /// Send a [`ClientError`] that answers one command (the connection goes on
    /// unless the error carries a close code).
    pub(super) fn refuse(&self, reference: Option<Ref>, sub: Option<String>, e: ClientError) {
        let _ = self.reject(reference, sub, e);
    }

    /// Send an error and close the connection with `close`.
    pub(super) fn fatal(
        &self,
        reference: Option<Ref>,
        code: ErrorCode,
        message: &str,
        close: CloseCode,
    ) -> ControlFlow<()> {
        self.reject(reference, None, ClientError::new(code, message).fatal(close))
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
        if self.session.is_none() {
            return match msg {
                ClientMessage::Hello(h) => self.hello(h).await,
                other => self.fatal(
                    other.reference().cloned(),
                    ErrorCode::BadRequest,
                    "the first message must be `hello`",
                    CloseCode::ProtocolViolation,
                ),
            };
        }
        match msg {
            ClientMessage::Hello(h) => {
                self.error(h.reference, None, ErrorCode::Conflict, "`hello` was already sent on this connection");
            }
            ClientMessage::Subscribe(m) => self.subscribe(m).await,
            ClientMessage::Unsubscribe(m) => self.unsubscribe(m).await,
            ClientMessage::Pause(m) => self.pause(m).await,
            ClientMessage::Resume(m) => self.resume(m).await,
            ClientMessage::Ack(m) => self.ack(m),
            ClientMessage::Ping(m) => self.send(&ServerMessage::Pong { reference: m.reference }),
            ClientMessage::Publish(m) => self.publish(m).await,
            ClientMessage::Request(m) => self.request(m),
            ClientMessage::Serve(m) => self.serve(m),
            ClientMessage::Unserve(m) => self.unserve(m),
            ClientMessage::Answer(m) => self.answer(m),
        }
        // A take-over closed this connection while a command ran: stop reading.
        if self.outbox.is_closed() {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// Write the whole session to the store; `Err` is the client's error.
    pub(super) async fn persist(&self, session: &Arc<Session>) -> Result<(), ClientError> {
        let s = self.state.get();
        s.write_sessions(vec![StoreOp::Put(session.stored())]).await.map_err(|e| {
            warn!(conn = self.conn_id, session = %session.id(), error = %e, "Could not store a session change.");
            // Memory may already hold the change (an unsubscribe, a pause):
            // write the whole session again with the next flush.
            session.mark_unsaved();
            ClientError::new(ErrorCode::Unavailable, format!("the session could not be stored: {e}"))
        })?;
        session.mark_stored();
        Ok(())
    }

    /// The connection ended: detach the session (abrupt end, it waits for
    /// `session.ttl`) or end it (orderly close), and tell the store.
    async fn finish(&mut self, orderly: bool) {
        let Some(held) = self.session.take() else {
            return;
        };
        let s = self.state.get();
        let (session, att) = (held.session, held.att);
        if orderly {
            if s.sessions.end(&session, &att) && session.is_stored() {
                if let Err(e) = s.write_sessions(vec![StoreOp::Delete(session.id().to_string())]).await {
                    warn!(session = %session.id(), error = %e, "Could not remove an ended session from the store.");
                }
                debug!(conn = self.conn_id, session = %session.id(), "Session ended by the client.");
            }
        } else if session.detach(&att) {
            // The acks so far and the detach time: the TTL runs from here,
            // across restarts too. A session that never had a subscription
            // has nothing to keep.
            if session.is_stored() || session.sub_count() > 0 {
                match s.write_sessions(vec![StoreOp::Put(session.stored())]).await {
                    Ok(()) => session.mark_stored(),
                    Err(e) => warn!(session = %session.id(), error = %e, "Could not store a detached session."),
                }
            }
            debug!(conn = self.conn_id, session = %session.id(), "Session detached; it can be resumed.");
        }
    }
}
