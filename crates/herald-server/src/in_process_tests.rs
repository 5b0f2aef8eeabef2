//! The in-process test tier: a real [`Server`] (log, fan-out, sessions,
//! broker and every background task) with WebSocket connections over
//! in-memory pipes instead of sockets (a WebSocket library as the client),
//! under tokio's paused clock. Timeouts of
//! minutes (session TTL, heartbeats, slow consumers, rendezvous deadlines)
//! are tested to the second without waiting for them: when every task is
//! idle, the clock jumps to the next timer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::config::{Config, SessionStoreKind};
use crate::state::AppState;
use crate::ws::connection;
use crate::Server;
use futures_util::future::BoxFuture;
use herald_core::{MemoryStore, NewEvent, SessionStore, StoreError, StoreOp, StoredSession};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// A started server and its data directory.
struct Harness {
    _server: Server,
    state: AppState,
    _dir: tempfile::TempDir,
}

async fn start(configure: impl FnOnce(&mut Config)) -> Harness {
    start_with_store(configure, Arc::new(MemoryStore::new())).await
}

async fn start_with_store(configure: impl FnOnce(&mut Config), store: Arc<dyn SessionStore>) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config { listen: "127.0.0.1:0".into(), data: dir.path().join("data"), ..Default::default() };
    config.session.store = SessionStoreKind::Memory;
    configure(&mut config);
    let server = Server::start_with_store(config, Some(store)).await.expect("server starts");
    let state = server.state();
    Harness { _server: server, state, _dir: dir }
}

/// What a test client receives.
#[derive(Debug, PartialEq)]
enum Got {
    Msg(Value),
    Ping,
    Close(u16),
}

/// One WebSocket connection over an in-memory pipe, seen through channels.
struct TestConn {
    tx: Option<mpsc::Sender<Message>>,
    rx: mpsc::Receiver<Message>,
    next_ref: u64,
}

/// Connect to the server with room for `capacity` received messages
/// (a small one, with a small pipe, stands for a client that reads slowly).
fn connect_with(h: &Harness, capacity: usize) -> TestConn {
    let (in_tx, mut in_rx) = mpsc::channel::<Message>(64);
    let (out_tx, out_rx) = mpsc::channel::<Message>(capacity);
    let pipe = if capacity < 64 { 1024 } else { 1 << 20 };
    let (server, client) = tokio::io::duplex(pipe);
    let (read, write) = tokio::io::split(server);
    let peer = "127.0.0.1:1".parse().expect("addr");
    let slot = h.state.get().admission.admit(std::net::IpAddr::from([127, 0, 0, 1])).expect("admitted");
    let max = h.state.get().config.limits.max_frame_bytes * 4;
    tokio::spawn(connection::run(write, crate::ws::wire::Reader::new(read, &[], max), h.state.clone(), peer, slot));
    // The client: a bare framer (a WebSocket library would answer pings by
    // itself, and some tests are about clients that do not). Dropping the
    // sender drops the pipe without a close frame.
    let (mut r, mut w) = tokio::io::split(client);
    let reader = tokio::spawn(async move {
        while let Ok(m) = read_server_frame(&mut r).await {
            if out_tx.send(m).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(m) = in_rx.recv().await {
            if w.write_all(&client_frame(&m)).await.is_err() {
                break;
            }
        }
        reader.abort();
    });
    TestConn { tx: Some(in_tx), rx: out_rx, next_ref: 0 }
}

/// One server frame (unmasked, never fragmented by Herald).
async fn read_server_frame(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> std::io::Result<Message> {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await?;
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7F {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    Ok(match h[0] & 0x0F {
        0x1 => Message::text(String::from_utf8(body).expect("UTF-8")),
        0x8 if body.len() >= 2 => Message::Close(Some(CloseFrame {
            code: u16::from_be_bytes([body[0], body[1]]).into(),
            reason: String::from_utf8(body[2..].to_vec()).expect("UTF-8").into(),
        })),
        0x8 => Message::Close(None),
        0x9 => Message::Ping(body.into()),
        0xA => Message::Pong(body.into()),
        op => panic!("unexpected opcode {op}"),
    })
}

/// A masked client frame.
fn client_frame(m: &Message) -> Vec<u8> {
    let (op, body): (u8, Vec<u8>) = match m {
        Message::Text(t) => (0x1, t.as_bytes().to_vec()),
        Message::Binary(b) => (0x2, b.to_vec()),
        Message::Ping(b) => (0x9, b.to_vec()),
        Message::Pong(b) => (0xA, b.to_vec()),
        Message::Close(None) => (0x8, Vec::new()),
        Message::Close(Some(f)) => (0x8, [&u16::from(f.code).to_be_bytes()[..], f.reason.as_bytes()].concat()),
        Message::Frame(_) => unreachable!("not sent by tests"),
    };
    crate::ws::wire::client_frame(true, op, &body)
}

fn connect(h: &Harness) -> TestConn {
    connect_with(h, 4096)
}

impl TestConn {
    async fn send(&self, v: Value) {
        let tx = self.tx.as_ref().expect("open");
        tx.send(Message::Text(v.to_string().into())).await.expect("server reads");
    }

    /// The next frame (an hour of virtual time at most: a hung test fails).
    async fn recv(&mut self) -> Got {
        let m = tokio::time::timeout(Duration::from_secs(3600), self.rx.recv()).await.expect("a frame within an hour");
        match m {
            Some(Message::Text(t)) => Got::Msg(serde_json::from_str(t.as_str()).expect("JSON")),
            Some(Message::Ping(_)) => Got::Ping,
            Some(Message::Close(frame)) => Got::Close(frame.map_or(1005, |f| f.code.into())),
            Some(other) => panic!("unexpected {other:?}"),
            None => Got::Close(1006),
        }
    }

    async fn recv_msg(&mut self) -> Value {
        match self.recv().await {
            Got::Msg(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Send with a fresh `ref` and return the answer to it (other messages
    /// in between are skipped).
    async fn request(&mut self, mut v: Value) -> Value {
        self.next_ref += 1;
        v["ref"] = json!(self.next_ref);
        self.send(v).await;
        loop {
            let m = self.recv_msg().await;
            if m["ref"] == json!(self.next_ref) {
                return m;
            }
        }
    }

    /// Drop the connection without a close frame (the network failed).
    fn cut(&mut self) {
        self.tx = None;
    }
}

/// Wait (in virtual time, 10 ms steps, 100 s at most) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

fn creds(w: &Value) -> Value {
    json!({"id": w["session"]["id"], "secret": w["session"]["secret"]})
}

#[tokio::test(start_paused = true)]
async fn a_detached_session_lives_exactly_its_ttl() {
    let h = start(|c| c.session.ttl = Duration::from_secs(120)).await;
    let mut c = connect(&h);
    let w = c.request(json!({"type": "hello"})).await;
    let s = c.request(json!({"type": "subscribe", "sub": "a", "bindings": [{"exchange": "x", "pattern": "#"}]})).await;
    assert_eq!(s["type"], "subscribed", "{s}");
    c.cut();
    let detached = || h.state.get().sessions.all().iter().all(|s| !s.is_attached());
    until("detached", detached).await;
    tokio::time::advance(Duration::from_millis(119_900)).await;
    let mut c = connect(&h);
    let w2 = c.request(json!({"type": "hello", "session": creds(&w)})).await;
    assert_eq!(w2["resumed"], true, "just under 120 s after the cut: {w2}");
    assert_eq!(c.recv_msg().await["type"], "subscribed");

    c.cut();
    until("detached again", detached).await;
    tokio::time::advance(Duration::from_secs(120)).await;
    let mut c = connect(&h);
    let w3 = c.request(json!({"type": "hello", "session": creds(&w)})).await;
    assert_eq!(w3["resumed"], false, "120 s after the second cut: {w3}");
    until("removed by the expiry task", || h.state.get().sessions.len() == 1).await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_pinged_after_one_heartbeat_and_closed_after_three() {
    let h = start(|c| c.heartbeat = Duration::from_secs(10)).await;
    let mut c = connect(&h);
    let w = c.request(json!({"type": "hello"})).await;
    assert_eq!(w["heartbeat_ms"], 10_000);
    let t0 = Instant::now();
    assert_eq!(c.recv().await, Got::Ping);
    let pinged = t0.elapsed();
    assert!(pinged >= Duration::from_secs(10) && pinged < Duration::from_secs(15), "pinged after {pinged:?}");
    loop {
        match c.recv().await {
            Got::Ping => continue,
            Got::Close(code) => {
                assert_eq!(code, 1001);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let closed = t0.elapsed();
    assert!(closed >= Duration::from_secs(30) && closed < Duration::from_secs(35), "closed after {closed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_answers_pings_stays() {
    let h = start(|c| c.heartbeat = Duration::from_secs(10)).await;
    let mut c = connect(&h);
    c.request(json!({"type": "hello"})).await;
    for _ in 0..5 {
        assert_eq!(c.recv().await, Got::Ping);
        c.tx.as_ref().expect("open").send(Message::Pong(Default::default())).await.expect("pong");
    }
    // Still open after 50 s: a request is answered.
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_closed_after_the_slow_consumer_timeout() {
    let h = start(|c| {
        c.heartbeat = Duration::from_secs(3600);
        c.limits.slow_consumer_timeout = Duration::from_secs(30);
    })
    .await;
    // Room for a handful of frames only: then the writer blocks, as on a full socket.
    let mut c = connect_with(&h, 4);
    c.request(json!({"type": "hello"})).await;
    let s =
        c.request(json!({"type": "subscribe", "sub": "a", "bindings": [{"exchange": "slow", "pattern": "#"}]})).await;
    assert_eq!(s["type"], "subscribed");
    let events: Vec<NewEvent> = (0..50)
        .map(|i| serde_json::from_value(json!({"exchange": "slow", "routing_key": "k", "payload": i})).expect("event"))
        .collect();
    h.state.get().log.append(events).await.expect("append");
    until("bytes wait in the outbox", || h.state.get().connections.all().iter().any(|c| c.outbox.queued_bytes() > 0))
        .await;
    // From when the bytes are seen waiting (to within `until`'s 10 ms): the
    // fan-out runs on a thread of its own, in real time, and the paused
    // clock may run ahead while it dispatches after the commit.
    let t0 = Instant::now();
    // Now read nothing for a while; the sweeper closes the client as a slow consumer.
    until("closed as a slow consumer", || h.state.get().metrics.slow_consumer_closes.get() == 1).await;
    let stalled = t0.elapsed();
    assert!(stalled >= Duration::from_secs(29) && stalled < Duration::from_secs(32), "closed after {stalled:?}");
    let mut last = None;
    while let Some(m) = c.rx.recv().await {
        last = Some(m);
    }
    match last {
        Some(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 4408),
        other => panic!("expected a 4408 close, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn rendezvous_deadlines_are_kept() {
    let h = start(|c| {
        c.heartbeat = Duration::from_secs(3600);
        c.rendezvous.match_timeout = Duration::from_secs(2);
        c.rendezvous.answer_timeout = Duration::from_secs(10);
    })
    .await;
    let mut requester = connect(&h);
    requester.request(json!({"type": "hello"})).await;
    // No responder: `unavailable` after the match timeout.
    let t0 = Instant::now();
    let e = requester.request(json!({"type": "request", "service": "echo", "body": 1})).await;
    assert_eq!(e["code"], "unavailable", "{e}");
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_millis(2100), "{waited:?}");

    // A responder that never answers: `timeout` after the answer timeout.
    let mut responder = connect(&h);
    responder.request(json!({"type": "hello"})).await;
    assert_eq!(responder.request(json!({"type": "serve", "service": "echo"})).await["type"], "serving");
    let t0 = Instant::now();
    requester.next_ref += 1;
    let reference = requester.next_ref;
    requester.send(json!({"type": "request", "ref": reference, "service": "echo", "body": 2})).await;
    let incoming = responder.recv_msg().await;
    assert_eq!(incoming["type"], "incoming", "{incoming}");
    assert_eq!(incoming["deadline_ms"], 10_000);
    let e = requester.recv_msg().await;
    assert_eq!((e["ref"].as_u64(), e["code"].as_str()), (Some(reference), Some("timeout")), "{e}");
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_secs(10) && waited < Duration::from_millis(10_100), "{waited:?}");
    // The late answer finds the requester's wait over.
    let late = responder.request(json!({"type": "answer", "request": incoming["request"], "body": 3})).await;
    assert_eq!(late["code"], "not_found", "{late}");
}

/// A store whose first write of a session holding subscription `a` waits
/// for the test to open the gate: it holds a `subscribe` mid-await.
#[derive(Debug)]
struct GateStore {
    inner: MemoryStore,
    armed: AtomicBool,
    waiting: AtomicBool,
    gate: tokio::sync::Semaphore,
}

impl SessionStore for GateStore {
    fn load(&self) -> BoxFuture<'_, Result<Vec<StoredSession>, StoreError>> {
        self.inner.load()
    }

    fn write(&self, ops: Vec<StoreOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let holds_a = ops.iter().any(|op| matches!(op, StoreOp::Put(s) if s.subs.contains_key("a")));
            if holds_a && self.armed.swap(false, Ordering::SeqCst) {
                self.waiting.store(true, Ordering::SeqCst);
                self.gate.acquire().await.expect("gate").forget();
            }
            self.inner.write(ops).await
        })
    }
}

/// Regression: `subscribe` awaited (history lookup, now also the store)
/// and then registered its subscription without checking that the
/// connection still held the session, so after a take-over in between the
/// subscription was registered against the old, closed outbox.
#[tokio::test(start_paused = true)]
async fn a_take_over_while_subscribe_awaits_leaves_nothing_on_the_old_connection() {
    let store = Arc::new(GateStore {
        inner: MemoryStore::new(),
        armed: AtomicBool::new(true),
        waiting: AtomicBool::new(false),
        gate: tokio::sync::Semaphore::new(0),
    });
    let h = start_with_store(|c| c.heartbeat = Duration::from_secs(3600), store.clone()).await;
    let mut old = connect(&h);
    let w = old.request(json!({"type": "hello"})).await;
    old.send(json!({"type": "subscribe", "ref": 1, "sub": "a", "bindings": [{"exchange": "t", "pattern": "#"}]})).await;
    until("the subscribe waits for the store", || store.waiting.load(Ordering::SeqCst)).await;

    let mut new = connect(&h);
    let w2 = new.request(json!({"type": "hello", "session": creds(&w)})).await;
    assert_eq!(w2["resumed"], true, "{w2}");
    let s = new.recv_msg().await;
    assert_eq!((s["type"].as_str(), s["sub"].as_str()), (Some("subscribed"), Some("a")), "the new holder has it: {s}");
    loop {
        if let Got::Close(code) = old.recv().await {
            assert_eq!(code, 4409);
            break;
        }
    }
    // Let the old connection's subscribe go on.
    store.gate.add_permits(1);
    until("the old connection is gone", || h.state.get().connections.len() == 1).await;
    assert_eq!(h.state.get().fanout.len(), 1, "only the new connection's registration");
    let events: Vec<NewEvent> =
        vec![serde_json::from_value(json!({"exchange": "t", "routing_key": "k", "payload": 1})).expect("event")];
    h.state.get().log.append(events).await.expect("append");
    let e = new.recv_msg().await;
    assert_eq!((e["type"].as_str(), e["sub"].as_str(), e["id"].as_u64()), (Some("event"), Some("a"), Some(1)), "{e}");
}

/// A session that never had a subscription holds nothing a crash could
/// lose: it costs no store write when it starts, detaches or ends, so a
/// storm of publish-only clients costs no fsyncs.
#[tokio::test(start_paused = true)]
async fn sessions_without_subscriptions_are_never_written() {
    let h = start(|c| c.heartbeat = Duration::from_secs(3600)).await;
    let writes = |op| h.state.get().metrics.session_writes.get_or_create(&crate::metrics::StoreOpLabel { op }).get();
    let mut abrupt = connect(&h);
    abrupt.request(json!({"type": "hello"})).await;
    abrupt.cut();
    let mut orderly = connect(&h);
    orderly.request(json!({"type": "hello"})).await;
    orderly.tx.as_ref().expect("open").send(Message::Close(None)).await.expect("close");
    until("both gone", || h.state.get().connections.len() == 0).await;
    assert_eq!((writes("put"), writes("delete")), (0, 0));
    // With a subscription the same life is stored: subscribe and detach.
    let mut c = connect(&h);
    c.request(json!({"type": "hello"})).await;
    c.request(json!({"type": "subscribe", "sub": "a", "bindings": [{"exchange": "x", "pattern": "#"}]})).await;
    c.cut();
    until("detached and stored", || writes("put") == 2).await;
}
