//! Cluster mode: Herald nodes on one NATS JetStream log. Every test starts
//! its own three nats-server 2.15 nodes (from `scripts/services.sh`, in
//! `target/nats-server-*`) on free loopback ports, each with its own store
//! and `sync_interval: always`, and never touches a NATS on 4222.
#![allow(missing_docs, unreachable_pub)]

#[path = "../support/amqp.rs"]
mod amqp;
#[path = "../e2e/common.rs"]
mod common;
#[path = "../support/moto.rs"]
mod moto;
#[path = "../support/pg.rs"]
mod pg;

mod connectors;
mod operations;
mod rendezvous;

use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HERALD_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let found = std::fs::read_dir(&target).ok().and_then(|d| {
        d.filter_map(Result::ok).map(|e| e.path().join("bin/nats-server")).find(|p| {
            p.parent().and_then(|b| b.parent()).is_some_and(|d| d.to_string_lossy().contains("nats-server-"))
                && p.exists()
        })
    });
    found.expect("nats-server 2.15 is installed by scripts/services.sh into target/nats-server-*; run it first")
}

struct NatsNode {
    child: Option<Child>,
    port: u16,
    monitor: u16,
    config: PathBuf,
}

/// Three nats-server nodes in one cluster, JetStream on, syncing every write.
struct NatsCluster {
    nodes: Vec<NatsNode>,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    fn start() -> NatsCluster {
        Self::start_with(&nats_server_bin(), 3, "sync_interval: always\n")
    }

    /// `n` nodes of `bin`, with `js` added to their `jetstream` blocks.
    fn start_with(bin: &std::path::Path, n: usize, js: &str) -> NatsCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        // Hold every listener until all ports are chosen, so that no port is handed out twice.
        let held: Vec<std::net::TcpListener> =
            (0..3 * n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
        let port = |i: usize| held[i].local_addr().expect("addr").port();
        let ports: Vec<(u16, u16, u16)> = (0..n).map(|i| (port(3 * i), port(3 * i + 1), port(3 * i + 2))).collect();
        drop(held);
        let routes: Vec<String> = ports.iter().map(|(_, c, _)| format!("nats-route://127.0.0.1:{c}")).collect();
        let mut nodes = Vec::new();
        for (i, (port, cport, mport)) in ports.iter().enumerate() {
            let store = dir.path().join(format!("n{i}"));
            let cluster = if n > 1 {
                format!(
                    "cluster {{\n  name: herald-test\n  listen: 127.0.0.1:{cport}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let conf = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{mport}\njetstream {{\n  store_dir: \"{}\"\n  {js}}}\n{cluster}",
                store.display()
            );
            let config = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&config, conf).expect("write nats config");
            let mut node = NatsNode { child: None, port: *port, monitor: *mport, config };
            node.spawn(bin);
            nodes.push(node);
        }
        let c = NatsCluster { nodes, bin: bin.to_path_buf(), _dir: dir };
        c.wait_ready();
        c
    }

    /// Until every running node says JetStream is healthy (a meta leader is elected).
    fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            loop {
                let ok = http_probe::blocking_get(&format!("http://127.0.0.1:{}/healthz", node.monitor));
                if ok {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "nats-server on {} did not become ready", node.port);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// `kill -9` node `i`.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start node `i` again on its store and ports.
    fn restart(&mut self, i: usize) {
        let bin = self.bin.clone();
        self.nodes[i].spawn(&bin);
    }

    fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(|n| format!("\"nats://127.0.0.1:{}\"", n.port)).collect();
        urls.join(", ")
    }

    /// The `[cluster]` section of a Herald node called `node`.
    fn herald_config(&self, node: &str, extra: &str) -> String {
        format!("[cluster]\nnats_urls = [{}]\nnode = \"{node}\"\n{extra}", self.urls())
    }
}

impl NatsNode {
    fn spawn(&mut self, bin: &std::path::Path) {
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A tiny blocking GET for readiness polls (the test runtime is async).
mod http_probe {
    pub fn blocking_get(url: &str) -> bool {
        let Some(rest) = url.strip_prefix("http://") else { return false };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(host) else { return false };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        if write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").is_err() {
            return false;
        }
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
    }
}

async fn http_publish(base: &str, events: Value) -> Vec<u64> {
    let resp = reqwest::Client::new().post(format!("{base}/v1/publish")).json(&events).send().await.expect("publish");
    let status = resp.status();
    let body: Value = resp.json().await.expect("json");
    assert!(status.is_success(), "{status} {body}");
    match body["id"].as_u64() {
        Some(id) => vec![id],
        None => body["ids"].as_array().expect("ids").iter().map(|v| v.as_u64().expect("id")).collect(),
    }
}

/// Events published on node A (over HTTP and WebSocket) reach subscribers
/// on B and C once each, in order, with the same ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_on_one_node_reach_subscribers_on_the_others_once_in_order() {
    let nats = NatsCluster::start();
    let a = Gateway::start_with(&nats.herald_config("a", ""));
    let b = Gateway::start_with(&nats.herald_config("b", ""));
    let c = Gateway::start_with(&nats.herald_config("c", ""));
    let mut subs = Vec::new();
    for g in [&b, &c] {
        let (mut client, _) = g.hello().await;
        let s = client.subscribe("s", binding("orders", "eu.#"), json!({})).await;
        assert_eq!(s["type"], "subscribed", "{s}");
        subs.push(client);
    }
    let mut ids = http_publish(
        &a.base,
        (0..20).map(|i| json!({"exchange": "orders", "routing_key": "eu.new", "payload": {"i": i}})).collect(),
    )
    .await;
    let (mut publisher, _) = a.hello().await;
    for i in 20..30 {
        let r = publisher
            .request(json!({"type": "publish", "exchange": "orders", "routing_key": "eu.paid", "payload": {"i": i}}))
            .await;
        assert_eq!(r["type"], "published", "{r}");
        ids.push(r["id"].as_u64().expect("id"));
    }
    // Not for these subscribers: another exchange, another key.
    http_publish(&a.base, json!([{"exchange": "orders", "routing_key": "us.new", "payload": {}}, {"exchange": "other", "routing_key": "eu.new", "payload": {}}])).await;
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    for client in &mut subs {
        let got = client.events(30).await;
        assert_eq!(common::ids(&got), ids, "same ids, in order, once");
        let n: Vec<u64> = got.iter().map(|e| e["payload"]["i"].as_u64().expect("i")).collect();
        assert_eq!(n, (0..30).collect::<Vec<_>>());
    }
    // Nothing else arrives: the next event each sees is a sentinel published after.
    let sentinel =
        http_publish(&a.base, json!({"exchange": "orders", "routing_key": "eu.x", "payload": {"sentinel": true}}))
            .await[0];
    for client in &mut subs {
        let e = client.events(1).await;
        assert_eq!(e[0]["id"], json!(sentinel), "{e:?}");
    }
}

/// History on a cluster node: `since` by id, last N and time merge with
/// live delivery; `/v1/history` pages; SSE resumes; a start older than the
/// stream's first message is reported as `history_truncated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_history_and_sse_work_on_a_cluster_node_and_truncation_is_reported() {
    let nats = NatsCluster::start();
    let a = Gateway::start_with(&nats.herald_config("a", "[log]\nmax_events = 50\n"));
    let b = Gateway::start_with(&nats.herald_config("b", "[log]\nmax_events = 50\n"));
    let ids = http_publish(
        &a.base,
        (0..40).map(|i| json!({"exchange": "h", "routing_key": "k", "payload": {"i": i}})).collect(),
    )
    .await;
    let (mut client, _) = b.hello().await;
    let s = client.subscribe("id", binding("h", "#"), json!({"since": {"id": ids[29]}})).await;
    assert_eq!(s["type"], "subscribed", "{s}");
    assert_eq!(common::ids(&client.events(10).await), ids[30..].to_vec());
    let s = client.subscribe("last", binding("h", "#"), json!({"since": {"last": 5}})).await;
    assert_eq!(s["type"], "subscribed", "{s}");
    assert_eq!(common::ids(&client.events(5).await), ids[35..].to_vec());
    // A live event after the replays reaches both, once.
    let live = http_publish(&a.base, json!({"exchange": "h", "routing_key": "k", "payload": {"live": true}})).await[0];
    let got = client.events(2).await;
    assert!(got.iter().all(|e| e["id"] == json!(live)), "{got:?}");
    // since.time on B: only what was published after that moment.
    let before_time = http_publish(&a.base, json!({"exchange": "t", "routing_key": "k", "payload": {"n": 0}})).await[0];
    tokio::time::sleep(Duration::from_millis(20)).await; // a later clock reading for the start
    let start = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after_time = http_publish(
        &a.base,
        (1..4).map(|n| json!({"exchange": "t", "routing_key": "k", "payload": {"n": n}})).collect(),
    )
    .await;
    let s = client.subscribe("time", binding("t", "#"), json!({"since": {"time": start}})).await;
    assert_eq!(s["type"], "subscribed", "{s}");
    let got = client.events(3).await;
    assert!(got.iter().all(|e| e["sub"] == "time"), "{got:?}");
    assert_eq!(common::ids(&got), after_time, "not {before_time}, published before the start");
    // History pages on B.
    let page: Value = reqwest::get(format!("{}/v1/history?exchange=h&pattern=%23&after={}&limit=5", b.base, ids[9]))
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    let page_ids: Vec<u64> =
        page["events"].as_array().expect("events").iter().map(|e| e["id"].as_u64().expect("id")).collect();
    assert_eq!(page_ids, ids[10..15].to_vec(), "{page}");
    // SSE on B resumes after its Last-Event-ID.
    let mut resp = reqwest::Client::new()
        .get(format!("{}/v1/sse?exchange=h&pattern=%23", b.base))
        .header("Last-Event-ID", ids[37].to_string())
        .send()
        .await
        .expect("sse");
    assert_eq!(resp.status(), 200);
    let (mut text, mut seen) = (String::new(), Vec::new());
    while seen.len() < 3 {
        let chunk =
            tokio::time::timeout(TIMEOUT, resp.chunk()).await.expect("sse data in time").expect("read").expect("open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        seen = text.lines().filter_map(|l| l.strip_prefix("id: ")).filter_map(|v| v.parse::<u64>().ok()).collect();
    }
    assert_eq!(seen, vec![ids[38], ids[39], live], "replayed then live, once each");
    drop(resp);
    // Retention: 50 events kept; push 40 more, and a start at the beginning is truncated.
    http_publish(
        &a.base,
        (0..40).map(|i| json!({"exchange": "h", "routing_key": "k", "payload": {"more": i}})).collect(),
    )
    .await;
    b.wait_metric("herald_log_first", 2.0).await; // the node refreshes the stream's bounds every second
    let s = client.subscribe("old", binding("h", "#"), json!({"since": {"id": 0}})).await;
    assert_eq!(s["type"], "subscribed", "{s}");
    assert_eq!(s["recovered"], false, "{s}");
    // (The live subscriptions receive the 40 new events meanwhile.)
    let e = loop {
        let m = client.recv().await;
        if m["type"] != "event" {
            break m;
        }
    };
    assert_eq!(e["code"], "history_truncated", "{e}");
    assert_eq!(e["sub"], "old", "{e}");
}

/// A server older than Herald needs is refused at start, naming the version.
#[test]
fn a_nats_server_too_old_is_refused_with_the_version_needed() {
    let old = PathBuf::from("/usr/sbin/nats-server");
    let old = if old.exists() { old } else { PathBuf::from("/usr/bin/nats-server") };
    assert!(old.exists(), "Debian's nats-server (2.9) is on these machines");
    // 2.9 knows no `sync_interval`.
    let nats = NatsCluster::start_with(&old, 1, "");
    let err =
        Gateway::try_start_with(&format!("[cluster]\nnats_urls = [{}]\nnode = \"a\"\nreplicas = 1\n", nats.urls()));
    assert!(err.contains("too old") && err.contains("2.11.0"), "{err}");
}

/// The four publishers below outrun the default HTTP publish rate of one
/// (anonymous) user when NATS is quick; these tests are about durability.
const UNLIMITED_HTTP: &str = "[limits]\nhttp_publishes_per_second = 0\n";

/// Acknowledged publishes as (id, publisher, n), and how many were refused.
type Published = (Vec<(u64, u64, u64)>, u64);

/// Publish over HTTP from four tasks until `stop`.
fn publishers(
    base: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Published>> {
    (0..4u64)
        .map(|p| {
            let (base, stop) = (base.to_string(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
                let (mut acked, mut refused) = (Vec::new(), 0);
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = json!({"exchange": "f", "routing_key": "k", "payload": {"p": p, "n": n}});
                    match client.post(format!("{base}/v1/publish")).json(&body).send().await {
                        Ok(r) if r.status().is_success() => {
                            let v: Value = r.json().await.expect("json");
                            acked.push((v["id"].as_u64().expect("id"), p, n));
                        }
                        Ok(r) => {
                            assert_eq!(r.status(), 503, "a refused publish is `unavailable`");
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(_) => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    n += 1;
                }
                (acked, refused)
            })
        })
        .collect()
}

/// Every event of exchange `f` in the log, as (id, publisher, n), read
/// through a node's history pages.
async fn all_events(base: &str) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let page: Value = reqwest::get(format!("{base}/v1/history?exchange=f&pattern=%23&after={after}&limit=1000"))
            .await
            .expect("history")
            .json()
            .await
            .expect("json");
        for e in page["events"].as_array().expect("events") {
            out.push((
                e["id"].as_u64().expect("id"),
                e["payload"]["p"].as_u64().expect("p"),
                e["payload"]["n"].as_u64().expect("n"),
            ));
        }
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => return out,
        }
    }
}

fn check_acknowledged(acked: &[(u64, u64, u64)], log: &[(u64, u64, u64)]) {
    assert!(log.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
    let stored: std::collections::HashMap<u64, (u64, u64)> = log.iter().map(|(id, p, n)| (*id, (*p, *n))).collect();
    for (id, p, n) in acked {
        assert_eq!(stored.get(id), Some(&(*p, *n)), "acknowledged id {id} holds its event");
    }
    let mut seen = std::collections::HashSet::new();
    for (_, p, n) in log {
        assert!(seen.insert((*p, *n)), "publish ({p}, {n}) stored twice");
    }
}

/// `kill -9` one NATS node of three while four publishers publish through
/// Herald: every acknowledged id is readable afterwards, and publishing
/// continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nats_node_killed_during_publishing_loses_nothing_acknowledged() {
    let mut nats = NatsCluster::start();
    let a = Gateway::start_with(&nats.herald_config("a", UNLIMITED_HTTP));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = publishers(&a.base, stop.clone());
    a.wait_metric("herald_events_in_total", 200.0).await;
    nats.kill(0);
    let before = a.metric("herald_events_in_total").await;
    // Publishing continues on the two nodes left.
    a.wait_metric("herald_events_in_total", before + 200.0).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("publisher").0);
    }
    let log = all_events(&a.base).await;
    eprintln!("one NATS node killed: {} acknowledged, {} in the log", acked.len(), log.len());
    check_acknowledged(&acked, &log);
    nats.restart(0);
}

/// All three NATS nodes killed and restarted: every acknowledged event is
/// there, and Herald publishes again without a restart of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nats_nodes_killed_and_restarted_lose_nothing_acknowledged() {
    let mut nats = NatsCluster::start();
    let a = Gateway::start_with(&nats.herald_config("a", UNLIMITED_HTTP));
    let (mut watcher, _) = a.hello().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = publishers(&a.base, stop.clone());
    a.wait_metric("herald_events_in_total", 300.0).await;
    for i in 0..3 {
        nats.kill(i);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("publisher").0);
    }
    // While NATS is down the node says so, to its clients and on /readyz,
    // and refuses publishes.
    let down = watcher.recv().await;
    assert_eq!(
        (down["type"].as_str(), down["source"].as_str(), down["state"].as_str()),
        (Some("status"), Some("log"), Some("down")),
        "{down}"
    );
    let ready: Value = reqwest::get(format!("{}/readyz", a.base)).await.expect("readyz").json().await.expect("json");
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["log"]["writable"], false, "{ready}");
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/publish", a.base))
        .json(&json!({"exchange": "f", "routing_key": "k", "payload": {"p": 9, "n": 0}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(refused.status(), 503, "refused while NATS is down");
    for i in 0..3 {
        nats.restart(i);
    }
    nats.wait_ready();
    // Back by itself: a publish succeeds again (retry while JetStream elects its leaders).
    let mut back = false;
    for _ in 0..100 {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/publish", a.base))
            .json(&json!({"exchange": "f", "routing_key": "k", "payload": {"p": 9, "n": 1}}))
            .send()
            .await
            .expect("publish");
        if r.status().is_success() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back, "publishing resumes once NATS is back");
    let up = loop {
        let m = watcher.recv().await;
        if m["type"] == "status" {
            break m;
        }
    };
    assert_eq!((up["source"].as_str(), up["state"].as_str()), (Some("log"), Some("up")), "{up}");
    let log = all_events(&a.base).await;
    eprintln!(
        "all NATS nodes killed: {} acknowledged, {} in the log; readyz while down: {ready}",
        acked.len(),
        log.len()
    );
    check_acknowledged(&acked, &log);
}

/// A client of node B: B is killed (-9) while events stream; the client
/// resumes on C with its session and gets everything after its last ack,
/// once, in order. Resuming again on A takes the session over: C's
/// connection is closed with 4409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_on_another_node_after_kill_9_and_a_take_over_closes_the_old_connection() {
    let nats = NatsCluster::start();
    let fast_acks = "[session]\nack_flush = \"100ms\"\n";
    let a = Gateway::start_with(&nats.herald_config("a", fast_acks));
    let mut b = Gateway::start_with(&nats.herald_config("b", fast_acks));
    let c = Gateway::start_with(&nats.herald_config("c", fast_acks));
    let (mut client, w) = b.hello().await;
    let session = w["session"].clone();
    let s = client.subscribe("s", binding("r", "#"), json!({})).await;
    assert_eq!(s["type"], "subscribed", "{s}");
    let mut ids = http_publish(
        &a.base,
        (0..20).map(|i| json!({"exchange": "r", "routing_key": "k", "payload": {"i": i}})).collect(),
    )
    .await;
    assert_eq!(common::ids(&client.events(20).await), ids);
    client.send(json!({"type": "ack", "sub": "s", "id": ids[9]})).await;
    b.wait_metric("herald_session_writes_total{op=\"acks\"}", 1.0).await;
    b.child.kill().expect("kill -9 node b");
    let _ = b.child.wait();
    client.abort();
    ids.extend(
        http_publish(
            &a.base,
            (20..30).map(|i| json!({"exchange": "r", "routing_key": "k", "payload": {"i": i}})).collect(),
        )
        .await,
    );

    let mut on_c = c.client().await;
    let w = on_c.request(json!({"type": "hello", "session": session})).await;
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(w["resumed"], true, "{w}");
    let got = on_c.events(20).await;
    assert_eq!(common::ids(&got), ids[10..].to_vec(), "everything after the ack, once, in order");

    // Taken over by a connection on A: C's connection hears `closing` and 4409.
    let mut on_a = a.client().await;
    let w = on_a.request(json!({"type": "hello", "session": session})).await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(on_c.expect_close().await, 4409);
    // And A delivers from where C's acks left off (none were sent: from the first ack).
    let live = http_publish(&a.base, json!({"exchange": "r", "routing_key": "k", "payload": {"live": true}})).await[0];
    let got = on_a.events(21).await;
    assert_eq!(*common::ids(&got).last().expect("events"), live);
}

/// A node that starts on a stream that already holds events (a restart, or
/// a node added later) rebuilds its idempotency window from it, serves its
/// history, and a repeated idempotency key is answered with the first id,
/// also across nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_on_a_full_stream_serves_it_and_keys_are_deduplicated_across_nodes() {
    let nats = NatsCluster::start();
    let mut a = Gateway::start_with(&nats.herald_config("a", ""));
    let mut ids = Vec::new();
    for part in 0..3 {
        let batch: Vec<Value> = (0..500)
            .map(|i| json!({"exchange": "full", "routing_key": "k", "payload": {"i": part * 500 + i}}))
            .collect();
        ids.extend(http_publish(&a.base, batch.into()).await);
    }
    let first = http_publish(
        &a.base,
        json!({"exchange": "full", "routing_key": "k", "payload": {}, "idempotency_key": "once"}),
    )
    .await[0];
    a.kill_and_restart();
    let b = Gateway::start_with(&nats.herald_config("b", ""));
    for g in [&a, &b] {
        let again = http_publish(
            &g.base,
            json!({"exchange": "full", "routing_key": "k", "payload": {}, "idempotency_key": "once"}),
        )
        .await[0];
        assert_eq!(again, first, "the same key on {} is answered with the first id", g.base);
        let (mut client, _) = g.hello().await;
        let s = client.subscribe("s", binding("full", "#"), json!({"since": {"id": ids[1399]}})).await;
        assert_eq!(s["type"], "subscribed", "{s}");
        let got = client.events(101).await;
        assert_eq!(common::ids(&got)[..100], ids[1400..], "history on a node started later");
        assert_eq!(got[100]["id"], json!(first));
    }
}
