//! Rendezvous across nodes: requesters on one node, responders on the
//! others, over WebSocket, HTTP and SQS; a node that dies.

use super::common::*;
use super::NatsCluster;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A WebSocket responder of `service` on `g`, answering `{"by": name, "echo": body}`.
async fn ws_responder(g: &Gateway, service: &str, name: &str) -> tokio::task::JoinHandle<()> {
    let (mut client, _) = g.hello().await;
    let r = client.request(json!({"type": "serve", "service": service})).await;
    assert_eq!(r["type"], "serving", "{r}");
    let name = name.to_string();
    tokio::spawn(async move {
        loop {
            let m = client.recv().await;
            if m["type"] == "incoming" {
                let a = client
                    .request(
                        json!({"type": "answer", "request": m["request"], "body": {"by": name, "echo": m["body"]}}),
                    )
                    .await;
                assert_eq!(a["type"], "answered", "{a}");
            }
        }
    })
}

/// An HTTP responder: long-polls `poll_at`, answers at `answer_at` (another
/// node: the answer is carried to the node holding the request).
fn http_responder(poll_at: &str, answer_at: &str, service: &str, name: &str) -> tokio::task::JoinHandle<()> {
    let (poll, answer, name) =
        (format!("{poll_at}/v1/rendezvous/{service}/poll?timeout_ms=1000"), answer_at.to_string(), name.to_string());
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        loop {
            let r = http.post(&poll).send().await.expect("poll");
            if r.status() != 200 {
                continue;
            }
            let got: Value = r.json().await.expect("json");
            let body = json!({"by": name, "echo": got["body"]});
            let url = format!("{answer}/v1/rendezvous/answer/{}", got["request"].as_str().expect("request id"));
            let done = http.post(url).json(&body).send().await.expect("answer");
            assert_eq!(done.status(), 200, "the answer reached the holding node");
        }
    })
}

/// Requesters on node A, a WebSocket responder on B and an HTTP responder
/// on C (answering through B): every request gets its own answer, both
/// responders work, and a service nobody serves is `unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_one_node_are_answered_by_responders_on_the_others() {
    let nats = NatsCluster::start();
    let rv = "[rendezvous]\nmatch_timeout = \"5s\"\n";
    let a = Gateway::start_with(&nats.herald_config("a", rv));
    let b = Gateway::start_with(&nats.herald_config("b", rv));
    let c = Gateway::start_with(&nats.herald_config("c", rv));
    let rb = ws_responder(&b, "echo", "b-ws").await;
    let rc = http_responder(&c.base, &b.base, "echo", "c-http");
    let mut tasks = Vec::new();
    for i in 0..12u64 {
        let ws = a.ws_url();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&ws).await;
            client.request(json!({"type": "hello"})).await;
            let r = client.request(json!({"type": "request", "service": "echo", "body": {"i": i}})).await;
            assert_eq!(r["type"], "response", "{r}");
            (i, r["body"].clone())
        }));
    }
    for i in 12..18u64 {
        let url = format!("{}/v1/rendezvous/echo", a.base);
        tasks.push(tokio::spawn(async move {
            let r = reqwest::Client::new().post(url).json(&json!({"i": i})).send().await.expect("request");
            assert_eq!(r.status(), 200);
            (i, r.json::<Value>().await.expect("json"))
        }));
    }
    let mut by = Vec::new();
    for t in tasks {
        let (i, answer) = t.await.expect("requester");
        assert_eq!(answer["echo"], json!({"i": i}), "requester {i} got its own answer: {answer}");
        by.push(answer["by"].as_str().expect("by").to_string());
    }
    assert!(by.iter().any(|b| b == "b-ws") && by.iter().any(|b| b == "c-http"), "both worked: {by:?}");
    // Nobody serves this one anywhere.
    let t0 = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{}/v1/rendezvous/nobody?timeout_ms=1500", a.base))
        .json(&json!({}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 503, "no responder anywhere: unavailable");
    assert!(t0.elapsed() >= Duration::from_millis(1400), "it waited for one: {:?}", t0.elapsed());
    // The cluster view shows the three nodes, and where the responders are.
    let view: Value =
        reqwest::get(format!("{}/v1/cluster", a.base)).await.expect("cluster").json().await.expect("json");
    let nodes: Vec<&str> = view["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["node"].as_str()).collect();
    assert_eq!(nodes, vec!["a", "b", "c"], "{view}");
    assert_eq!(view["nodes"][1]["responders"], 1, "{view}");
    rb.abort();
    rc.abort();
}

/// A node dies while its responder holds a request from another node: the
/// requester gets `unavailable` within the node timeout, not at the answer
/// deadline. A node dies while its requester waits: the responder's late
/// answer gets `not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_requests_fail_unavailable_and_answers_to_its_requesters_not_found() {
    let nats = NatsCluster::start();
    let extra = "node_timeout = \"1s\"\n[rendezvous]\nanswer_timeout = \"30s\"\n";
    let mut a = Gateway::start_with(&nats.herald_config("a", extra));
    let mut b = Gateway::start_with(&nats.herald_config("b", extra));
    let c = Gateway::start_with(&nats.herald_config("c", extra));

    // B's responder holds A's request; B dies.
    let (mut holder, _) = b.hello().await;
    assert_eq!(holder.request(json!({"type": "serve", "service": "hold"})).await["type"], "serving");
    let (mut requester, _) = a.hello().await;
    requester.send(json!({"type": "request", "service": "hold", "ref": "q1", "body": {}})).await;
    let incoming = holder.recv().await;
    assert_eq!(incoming["type"], "incoming", "{incoming}");
    b.child.kill().expect("kill -9 node b");
    let _ = b.child.wait();
    let t0 = Instant::now();
    let r = requester.recv().await;
    assert_eq!((r["type"].as_str(), r["code"].as_str()), (Some("error"), Some("unavailable")), "{r}");
    assert_eq!(r["ref"], "q1");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "failed at the node timeout, not the answer deadline: {:?}",
        t0.elapsed()
    );

    // C's responder holds A's request; A dies; C's answer finds no requester.
    let (mut responder, _) = c.hello().await;
    assert_eq!(responder.request(json!({"type": "serve", "service": "late"})).await["type"], "serving");
    let (mut asker, _) = a.hello().await;
    asker.send(json!({"type": "request", "service": "late", "ref": "q2", "body": {}})).await;
    let incoming = responder.recv().await;
    assert_eq!(incoming["type"], "incoming", "{incoming}");
    a.child.kill().expect("kill -9 node a");
    let _ = a.child.wait();
    tokio::time::sleep(Duration::from_millis(2500)).await; // past the node timeout
    let r = responder.request(json!({"type": "answer", "request": incoming["request"], "body": "late"})).await;
    assert_eq!((r["type"].as_str(), r["code"].as_str()), (Some("error"), Some("not_found")), "{r}");
}

/// Rendezvous over SQS with the peer on every node: requests that any node
/// receives from the broker queue are served by responders on B and C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_requests_received_on_any_node_are_served_by_responders_on_others() {
    let moto = super::moto::Moto::start();
    let sdk = moto.sdk();
    let nats = NatsCluster::start();
    let peer = format!(
        "[rendezvous]\nmatch_timeout = \"5s\"\n[[peer]]\nid = \"sqs\"\ntype = \"sqs\"\n[peer.config]\nqueue = \"cbroker\"\nservice = \"snow\"\nendpoint_url = \"{}\"\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\nwait_time_s = 1\n",
        moto.endpoint
    );
    let _a = Gateway::start_with(&nats.herald_config("a", &peer));
    let b = Gateway::start_with(&nats.herald_config("b", &peer));
    let c = Gateway::start_with(&nats.herald_config("c", &peer));
    let rb = ws_responder(&b, "snow", "b").await;
    let rc = ws_responder(&c, "snow", "c").await;
    let mut url = None;
    for _ in 0..100 {
        if let Ok(r) = sdk.get_queue_url().queue_name("cbroker").send().await {
            url = r.queue_url().map(str::to_string);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = url.expect("the peers created the broker queue");
    let creds = herald_cli(&["encode-creds", "--access-key-id", "testing", "--secret-key", "testing"]).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (url, creds) = (url.clone(), creds.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"offer": i}).to_string();
            let out = herald_cli(&[
                "--service",
                "snow",
                "--sqs-queue",
                &url,
                "--sqs-creds",
                &creds,
                "--body",
                &body,
                "--json",
                "--timeout",
                "30s",
            ])
            .await;
            (i, serde_json::from_str::<Value>(&out).unwrap_or_else(|_| panic!("requester {i} printed {out}")))
        }));
    }
    let mut by = Vec::new();
    for t in tasks {
        let (i, answer) = t.await.expect("requester");
        assert_eq!(answer["echo"], json!({"offer": i}), "requester {i} got its own answer");
        by.push(answer["by"].as_str().expect("by").to_string());
    }
    assert!(by.iter().all(|b| b == "b" || b == "c"), "{by:?}");
    rb.abort();
    rc.abort();
}

/// `herald rendezvous <args>`: its stdout, asserting success.
async fn herald_cli(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("rendezvous")
            .args(&args)
            .output()
            .expect("run herald rendezvous");
        assert!(out.status.success(), "herald rendezvous {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
    .await
    .expect("cli")
}
