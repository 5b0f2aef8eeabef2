//! Rendezvous over Amazon SQS, end to end: a real `herald serve` with an
//! `sqs` peer, moto's SQS-compatible server (started here on a free port),
//! `herald rendezvous` as the requester, and the real AWS SDK to look at
//! the queues.
#![allow(missing_docs, clippy::unwrap_used)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[path = "support/moto.rs"]
mod moto;
use moto::Moto;

/// `herald serve` with `toml`, killed on drop.
struct Herald {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Herald {
    fn start(toml: &str) -> Herald {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("herald.toml");
        std::fs::write(&config, toml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data")
            .arg(dir.path().join("data"))
            .env("HERALD_LOG", "warn,herald_connectors=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base = line.trim().strip_prefix("herald listening on ").expect("listening line").to_string();
        Herald { child, base, _dir: dir }
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket responder of `service` answering `{"by": name, "echo": body}`.
async fn responder(base: &str, service: &str, name: &str) -> tokio::task::JoinHandle<()> {
    let url = format!("{}/v1/ws", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text(json!({"type": "hello"}).to_string())).await.unwrap();
    ws.send(Message::text(json!({"type": "serve", "service": service}).to_string())).await.unwrap();
    let name = name.to_string();
    tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == "incoming" {
                let answer =
                    json!({"type": "answer", "request": v["request"], "body": {"by": name, "echo": v["body"]}});
                ws.send(Message::text(answer.to_string())).await.unwrap();
            }
        }
    })
}

/// Runs `herald rendezvous` with `args`; returns (success, stdout, stderr).
async fn cli(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_herald")).arg("rendezvous").args(&args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    })
    .await
    .unwrap()
}

/// `herald rendezvous` arguments for a request over SQS.
fn sqs_args(service: &str, queue_url: &str, creds: &str, body: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["--service", service, "--sqs-queue", queue_url, "--sqs-creds", creds, "--body", body].map(String::from).into();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

async fn queue_names(sdk: &aws_sdk_sqs::Client, prefix: &str) -> Vec<String> {
    let out = sdk.list_queues().queue_name_prefix(prefix).send().await.unwrap();
    out.queue_urls().iter().map(|u| u.rsplit('/').next().unwrap().to_string()).collect()
}

async fn messages_left(sdk: &aws_sdk_sqs::Client, url: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sdk
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let attrs = out.attributes().unwrap();
    [A::ApproximateNumberOfMessages, A::ApproximateNumberOfMessagesNotVisible]
        .iter()
        .map(|a| attrs.get(a).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
        .sum()
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqs_rendezvous_end_to_end() {
    let moto = Moto::start();
    let sdk = moto.sdk();
    let herald = Herald::start(&format!(
        r#"
[rendezvous]
match_timeout = "1s"

[[peer]]
id = "sqs-broker"
type = "sqs"
[peer.config]
queue = "hbroker"
service = "snow"
endpoint_url = "{e}"
access_key_id = "testing"
secret_access_key = "testing"
wait_time_s = 1
cleanup_interval_s = 1
reply_queue_max_age_s = 3

[[peer]]
id = "sqs-nobody"
type = "sqs"
codec = "string"
[peer.config]
queue = "hnobody"
service = "nobody"
endpoint_url = "{e}"
access_key_id = "testing"
secret_access_key = "testing"
wait_time_s = 1
"#,
        e = moto.endpoint
    ));
    // The peer creates its broker queue.
    wait_until("the broker queues", || async { queue_names(&sdk, "h").await.len() >= 2 }).await;
    let broker_url = sdk.get_queue_url().queue_name("hbroker").send().await.unwrap().queue_url().unwrap().to_string();
    let nobody_url = sdk.get_queue_url().queue_name("hnobody").send().await.unwrap().queue_url().unwrap().to_string();
    let r1 = responder(&herald.base, "snow", "r1").await;
    let r2 = responder(&herald.base, "snow", "r2").await;

    let (ok, encoded, err) = cli(vec![
        "encode-creds".into(),
        "--access-key-id".into(),
        "testing".into(),
        "--secret-key".into(),
        "testing".into(),
    ])
    .await;
    assert!(ok, "{err}");

    // Many concurrent requesters over SQS: each gets exactly its own answer.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let body = json!({"offer": i}).to_string();
        let args = sqs_args("snow", &broker_url, &encoded, &body, &["--json", "--timeout", "20s"]);
        tasks.push(tokio::spawn(cli(args)));
    }
    let mut by = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (ok, out, err) = t.await.unwrap();
        assert!(ok, "requester {i}: {err}");
        let answer: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("requester {i} printed {out}"));
        assert_eq!(answer["echo"], json!({"offer": i}), "requester {i} got its own answer");
        by.push(answer["by"].as_str().unwrap().to_string());
    }
    assert!(by.contains(&"r1".to_string()) && by.contains(&"r2".to_string()), "both responders worked: {by:?}");
    // Requests are deleted once answered; clients delete their reply queues.
    wait_until("an empty broker queue", || async { messages_left(&sdk, &broker_url).await == 0 }).await;
    assert_eq!(queue_names(&sdk, "hbroker-client-").await, Vec::<String>::new());

    // A request without ClientID is logged and deleted, and gets no reply queue.
    sdk.send_message().queue_url(&broker_url).message_body("{}").send().await.unwrap();
    wait_until("the request without ClientID to be deleted", || async { messages_left(&sdk, &broker_url).await == 0 })
        .await;

    // A body the peer's codec refuses (not JSON): the requester is told `bad_request`.
    let (ok, _, err) = cli(sqs_args("snow", &broker_url, &encoded, "not json", &["--sqs-attempts", "1"])).await;
    assert!(!ok && err.contains("bad_request"), "{err}");

    // No responder: the requester is told `unavailable` through its reply queue.
    let args = sqs_args("nobody", &nobody_url, &encoded, "offer", &["--sqs-attempts", "1", "--timeout", "15s"]);
    let (ok, _, err) = cli(args).await;
    assert!(!ok);
    assert!(err.contains("unavailable"), "{err}");
    wait_until("an empty queue", || async { messages_left(&sdk, &nobody_url).await == 0 }).await;

    // Stale reply queues (of clients that never came back) are removed on a
    // timer; other queues are left alone.
    sdk.create_queue().queue_name("hbroker-client-stale").send().await.unwrap();
    sdk.create_queue().queue_name("unrelated-client-x").send().await.unwrap();
    wait_until("the stale reply queue to be removed", || async {
        queue_names(&sdk, "hbroker-client-").await.is_empty()
    })
    .await;
    assert_eq!(queue_names(&sdk, "unrelated-client-").await, vec!["unrelated-client-x".to_string()]);

    // The same requests over WebSocket and HTTP, with the same CLI.
    let ws_url = herald.base.replace("http://", "ws://");
    for url in [herald.base.clone(), ws_url] {
        let (ok, out, err) = cli(vec![
            "--service".into(),
            "snow".into(),
            "--url".into(),
            url.clone(),
            "--body".into(),
            "plain text".into(),
        ])
        .await;
        assert!(ok, "{url}: {err}");
        let answer: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(answer["echo"], "plain text", "{url}");
    }
    let (ok, _, err) = cli(vec![
        "--service".into(),
        "nobody".into(),
        "--url".into(),
        herald.base.clone(),
        "--body".into(),
        "x".into(),
    ])
    .await;
    assert!(!ok && err.contains("unavailable"), "{err}");
    r1.abort();
    r2.abort();
}

#[test]
fn sqs_peer_configuration_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        "[[peer]]\nid = \"q\"\ntype = \"sqs\"\n[peer.config]\nqueue = \"bad name!\"\nservice = \"\"\nwait_time_s = 30\naccess_key_id = \"x\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in ["config.queue", "config.service", "config.wait_time_s", "access_key_id and secret_access_key"] {
        assert!(err.contains(expected), "{expected} in {err}");
    }
}
