//! Helpers: start a gateway process, talk to it.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const TIMEOUT: Duration = Duration::from_secs(15);

/// A running gateway process with its own data directory.
pub struct Gateway {
    pub child: Child,
    pub base: String,
    pub addr: String,
    pub data: PathBuf,
    _dir: Option<tempfile::TempDir>,
    config: Option<PathBuf>,
    /// A token with every grant, when the configuration has a `jwt_secret`.
    pub admin_token: Option<String>,
}

impl Gateway {
    pub fn start() -> Gateway {
        Self::start_with("")
    }

    /// Start with extra TOML configuration.
    pub fn start_with(toml: &str) -> Gateway {
        Self::start_with_env(toml, &[])
    }

    /// Start with extra TOML configuration and environment variables.
    pub fn start_with_env(toml: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let config = dir.path().join("herald.toml");
        std::fs::write(&config, toml).expect("write config");
        let (child, base) = Self::spawn_env(&data, &config, "127.0.0.1:0", env);
        let addr = base.strip_prefix("http://").or_else(|| base.strip_prefix("https://")).expect("url").to_string();
        let admin_token = toml.lines().find_map(|l| l.trim().strip_prefix("jwt_secret = ")).map(|s| {
            let secret = s.trim_matches('"');
            let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 3600;
            let claims = json!({"sub": "admin", "exp": exp, "herald": {"subscribe": [{"exchange": "*", "pattern": "#"}], "publish": [{"exchange": "*", "pattern": "#"}]}});
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()))
                .expect("sign")
        });
        Gateway { child, base, addr, data, _dir: Some(dir), config: Some(config), admin_token }
    }

    /// Start with extra TOML configuration on the data directory `data`.
    pub fn start_on(toml: &str, data: &Path) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("herald.toml");
        std::fs::write(&config, toml).expect("write config");
        let (child, base) = Self::spawn(data, &config, "127.0.0.1:0");
        let addr = base.strip_prefix("http://").expect("url").to_string();
        Gateway {
            child,
            base,
            addr,
            data: data.to_path_buf(),
            _dir: Some(dir),
            config: Some(config),
            admin_token: None,
        }
    }

    /// Start with a configuration expected to be refused; returns stderr.
    pub fn try_start_with(toml: &str) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("herald.toml");
        std::fs::write(&config, toml).expect("write config");
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data")
            .arg(dir.path().join("data"))
            .output()
            .expect("run herald");
        assert!(!out.status.success(), "expected the gateway to refuse this configuration");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn spawn(data: &Path, config: &Path, listen: &str) -> (Child, String) {
        Self::spawn_env(data, config, listen, &[])
    }

    fn spawn_env(data: &Path, config: &Path, listen: &str, env: &[(&str, &str)]) -> (Child, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--listen", listen, "--config"])
            .arg(config)
            .arg("--data")
            .arg(data)
            .env("HERALD_LOG", "warn,herald_log=info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn herald");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().expect("herald printed nothing").expect("read stdout");
        let base = first.strip_prefix("herald listening on ").expect("listening line").to_string();
        std::thread::spawn(move || for _ in lines {});
        (child, base)
    }

    /// Kill (SIGKILL) and start again on the same data directory and port.
    pub fn kill_and_restart(&mut self) {
        self.child.kill().expect("kill");
        let _ = self.child.wait();
        let config = self.config.clone().expect("config");
        self.child = Self::spawn(&self.data, &config, &self.addr).0;
    }

    /// SIGTERM and wait for exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        self.child.wait().expect("wait")
    }

    pub fn restart(&mut self) {
        let config = self.config.clone().expect("config");
        self.child = Self::spawn(&self.data, &config, &self.addr).0;
    }

    /// The value of one metric line (`name{labels}`), 0 when absent. A
    /// cluster node's `node` label is left out of the comparison.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base)).await.expect("metrics").text().await.expect("text");
        text.lines()
            .map(without_node_label)
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).map(str::to_string))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Wait until a metric reaches `at_least` (fails after [`TIMEOUT`]).
    pub async fn wait_metric(&self, series: &str, at_least: f64) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let v = self.metric(series).await;
            if v >= at_least {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{series} stayed at {v}, below {at_least}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until a metric has come down to `at_most` (fails after [`TIMEOUT`]).
    pub async fn wait_metric_at_most(&self, series: &str, at_most: f64) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let v = self.metric(series).await;
            if v <= at_most {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{series} stayed at {v}, above {at_most}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Publish one sentinel event (payload `{"sentinel": true}`) over HTTP; returns its id.
    pub async fn publish_sentinel(&self, exchange: &str, routing_key: &str) -> u64 {
        let ids = self
            .publish(json!({"exchange": exchange, "routing_key": routing_key, "payload": {"sentinel": true}}))
            .await;
        ids[0]
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// A client that has said hello.
    pub async fn hello(&self) -> (Client, Value) {
        let mut c = self.client().await;
        let w = c.request(json!({"type": "hello"})).await;
        assert_eq!(w["type"], "welcome", "{w}");
        (c, w)
    }

    /// Publish over HTTP; returns the ids.
    pub async fn publish(&self, events: Value) -> Vec<u64> {
        let mut req = reqwest::Client::new().post(format!("{}/v1/publish", self.base)).json(&events);
        if let Some(t) = &self.admin_token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("publish");
        let status = resp.status();
        let body: Value = resp.json().await.expect("json");
        assert!(status.is_success(), "{status} {body}");
        if let Some(id) = body["id"].as_u64() {
            vec![id]
        } else {
            body["ids"].as_array().expect("ids").iter().map(|v| v.as_u64().expect("id")).collect()
        }
    }

    /// Publish `n` events to `exchange` with routing key `rk` and payload `{"n": i}`.
    pub async fn publish_n(&self, exchange: &str, rk: &str, n: u64) -> Vec<u64> {
        let events: Vec<Value> =
            (0..n).map(|i| json!({"exchange": exchange, "routing_key": rk, "payload": {"n": i}})).collect();
        let mut ids = Vec::new();
        for chunk in events.chunks(500) {
            ids.extend(self.publish(Value::Array(chunk.to_vec())).await);
        }
        ids
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw protocol client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ref: u64,
    /// Messages received while waiting for a reply, returned by later `recv`s.
    pending: std::collections::VecDeque<Value>,
    /// Text frames received, and how many of them held several messages
    /// (`hello.batch`).
    pub frames: usize,
    pub batched_frames: usize,
}

impl Client {
    /// Connect with a small kernel receive buffer, so that a client that does
    /// not read blocks the server quickly (loopback buffers autotune to tens of MB).
    pub async fn connect_small_buffer(addr: &str) -> Client {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = sock.connect(addr.parse().expect("addr")).await.expect("tcp connect");
        let url = format!("ws://{addr}/v1/ws");
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await.expect("ws handshake");
        Client { ws, next_ref: 0, pending: Default::default(), frames: 0, batched_frames: 0 }
    }

    /// A client on an already open WebSocket.
    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client { ws, next_ref: 0, pending: Default::default(), frames: 0, batched_frames: 0 }
    }

    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
        Client { ws, next_ref: 0, pending: Default::default(), frames: 0, batched_frames: 0 }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// Next JSON message (panics on timeout or close).
    pub async fn recv(&mut self) -> Value {
        match self.try_recv(TIMEOUT).await {
            Ok(v) => v,
            Err(e) => panic!("expected a message: {e}"),
        }
    }

    /// Next JSON message, or why there is none.
    pub async fn try_recv(&mut self, wait: Duration) -> Result<Value, String> {
        if let Some(v) = self.pending.pop_front() {
            return Ok(v);
        }
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next()).await.map_err(|_| "timeout".to_string())?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    // A batched frame: one message per line.
                    self.frames += 1;
                    let mut lines = t.as_str().split('\n');
                    let first: Value =
                        serde_json::from_str(lines.next().unwrap_or_default()).expect("server sent JSON");
                    let mut more = 0;
                    for line in lines {
                        self.pending.push_back(serde_json::from_str(line).expect("server sent JSON lines"));
                        more += 1;
                    }
                    if more > 0 {
                        self.batched_frames += 1;
                    }
                    return Ok(first);
                }
                Some(Ok(Message::Close(f))) => {
                    return Err(format!("closed {:?}", f.map(|f| (u16::from(f.code), f.reason.to_string()))))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("error {e}")),
                None => return Err("ended".into()),
            }
        }
    }

    /// The next messages are exactly the event `id`, once for each of `subs`
    /// (in any order); anything else first panics. Events reach a connection
    /// in id order, so nothing published before `id` can still arrive after.
    pub async fn expect_next_events(&mut self, id: u64, subs: &[&str]) -> Vec<Value> {
        let mut want: Vec<&str> = subs.to_vec();
        let mut got = Vec::new();
        while !want.is_empty() {
            let m = match self.try_recv(TIMEOUT).await {
                Ok(m) => m,
                Err(e) => panic!("expected event {id} for {want:?} next, got nothing: {e}"),
            };
            let pos = want.iter().position(|s| m["sub"].as_str() == Some(*s));
            match pos {
                Some(i) if m["type"] == "event" && m["id"].as_u64() == Some(id) => {
                    want.swap_remove(i);
                    got.push(m);
                }
                _ => panic!("expected event {id} for {want:?} next, got {m}"),
            }
        }
        got
    }

    /// Show that nothing else is on its way: publish a sentinel on
    /// `exchange`/`routing_key` (which `subs` of this client match) and check
    /// that it is the next thing received, once for each of `subs`. Returns its id.
    pub async fn expect_sentinel_next(&mut self, g: &Gateway, exchange: &str, routing_key: &str, subs: &[&str]) -> u64 {
        let id = g.publish_sentinel(exchange, routing_key).await;
        self.expect_next_events(id, subs).await;
        id
    }

    /// Send a ping and check that its pong is the next message: commands are
    /// answered in order, so nothing sent in answer to earlier input is still to come.
    pub async fn expect_pong_next(&mut self) {
        self.next_ref += 1;
        let r = format!("fence{}", self.next_ref);
        self.send(json!({"type": "ping", "ref": r.as_str()})).await;
        let m = self.recv().await;
        assert_eq!(m, json!({"type": "pong", "ref": r.as_str()}), "expected the pong to {r} next");
    }

    /// Wait for the close frame; returns its code.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next()).await.expect("close within timeout");
            match msg {
                Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(Message::Close(None))) => return u16::from(CloseCode::Status),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Send a request with a fresh ref and return the reply with that ref;
    /// other messages received meanwhile are kept for later `recv`s.
    pub async fn request(&mut self, mut v: Value) -> Value {
        self.next_ref += 1;
        let r = format!("r{}", self.next_ref);
        v["ref"] = json!(r);
        self.send(v).await;
        let mut held = Vec::new();
        let reply = loop {
            let m = match self.pending.pop_front() {
                Some(m) => m,
                None => match self.try_recv(TIMEOUT).await {
                    Ok(m) => m,
                    Err(e) => panic!("no reply to {r}: {e}"),
                },
            };
            if m["ref"] == json!(r) {
                break m;
            }
            held.push(m);
        };
        for m in held.into_iter().rev() {
            self.pending.push_front(m);
        }
        reply
    }

    pub async fn subscribe(&mut self, sub: &str, bindings: Value, extra: Value) -> Value {
        let mut msg = json!({"type": "subscribe", "sub": sub, "bindings": bindings});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                msg[k] = v;
            }
        }
        self.request(msg).await
    }

    /// Collect `n` events (skipping other messages), returning them.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let m = self.recv().await;
            if m["type"] == "event" {
                out.push(m);
            }
        }
        out
    }

    /// Drop the TCP connection without a close handshake.
    pub fn abort(self) {
        drop(self.ws.into_inner());
    }
}

/// A metric line without its `node="…"` label (cluster mode).
fn without_node_label(line: &str) -> String {
    let Some(start) = line.find("node=\"") else { return line.to_string() };
    let Some(len) = line[start + 6..].find('"') else { return line.to_string() };
    let (mut a, mut b) = (start, start + 6 + len + 1);
    if line[b..].starts_with(',') {
        b += 1;
    } else if line[..a].ends_with(',') {
        a -= 1;
    }
    let out = format!("{}{}", &line[..a], &line[b..]);
    out.replace("{}", "")
}

pub fn ids(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["id"].as_u64().expect("id")).collect()
}

pub fn binding(exchange: &str, pattern: &str) -> Value {
    json!([{"exchange": exchange, "pattern": pattern}])
}
