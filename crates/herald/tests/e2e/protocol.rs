//! hello/welcome, ping, errors that keep the connection, protocol violations.

use crate::common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn welcome_carries_session_limits_and_server() {
    let g = Gateway::start();
    let (_c, w) = g.hello().await;
    assert!(w["session"]["id"].as_str().is_some_and(|s| s.len() >= 16), "{w}");
    assert!(w["session"]["secret"].as_str().is_some_and(|s| s.len() >= 32), "{w}");
    assert_eq!(w["resumed"], false);
    assert!(w["heartbeat_ms"].as_u64().is_some_and(|h| h > 0));
    assert_eq!(w["limits"]["max_subscriptions"], 100);
    assert_eq!(w["server"]["name"], "herald");
}

/// `hello.batch`: events that come faster than the client reads share
/// frames, one JSON message per line, in order, none lost; without it,
/// every frame holds exactly one message.
#[tokio::test]
async fn a_client_that_asks_for_batches_gets_several_messages_per_frame() {
    let g = Gateway::start();
    let mut batched = g.client().await;
    let w = batched.request(json!({"type": "hello", "batch": true})).await;
    assert_eq!(w["batch"], true, "the welcome confirms it: {w}");
    let (mut plain, w) = g.hello().await;
    assert!(w.get("batch").is_none(), "not asked, not said: {w}");
    for c in [&mut batched, &mut plain] {
        assert_eq!(c.subscribe("s", binding("b", "#"), json!({})).await["type"], "subscribed");
    }
    let mut published = Vec::new();
    for _ in 0..4 {
        let batch: Vec<serde_json::Value> =
            (0..250).map(|i| json!({"exchange": "b", "routing_key": "k", "payload": {"i": i}})).collect();
        published.extend(g.publish(batch.into()).await);
    }
    for c in [&mut batched, &mut plain] {
        let got = c.events(published.len()).await;
        assert_eq!(ids(&got), published, "every event once, in order");
    }
    assert!(batched.batched_frames > 0, "some frames held several events ({} frames)", batched.frames);
    assert!(batched.frames < published.len(), "fewer frames than events: {}", batched.frames);
    assert_eq!(plain.batched_frames, 0, "one message per frame without `batch`");
}

#[tokio::test]
async fn ping_pong_echoes_ref() {
    let g = Gateway::start();
    let (mut c, _) = g.hello().await;
    c.send(json!({"type": "ping", "ref": 42})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "ref": 42}));
}

#[tokio::test]
async fn bad_input_gets_an_error_and_the_connection_goes_on() {
    let g = Gateway::start();
    let (mut c, _) = g.hello().await;
    c.send_raw(Message::text("{not json")).await;
    let e = c.recv().await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "bad_request");
    assert!(e["message"].as_str().unwrap_or("").contains("malformed JSON"), "{e}");

    c.send(json!({"type": "frobnicate", "ref": "x"})).await;
    let e = c.recv().await;
    assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("bad_request"), Some("x")), "{e}");

    c.send(json!({"type": "subscribe", "ref": 5, "sub": "s"})).await;
    let e = c.recv().await;
    assert_eq!(e["ref"], 5);
    assert!(e["message"].as_str().unwrap_or("").contains("bindings"), "{e}");

    c.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    let e = c.recv().await;
    assert_eq!(e["code"], "bad_request", "{e}");

    c.send(json!({"type": "hello", "ref": 9})).await;
    let e = c.recv().await;
    assert_eq!((e["code"].as_str(), e["ref"].as_i64()), (Some("conflict"), Some(9)), "{e}");

    // Still usable.
    let r = c.request(json!({"type": "ping"})).await;
    assert_eq!(r["type"], "pong");
}

#[tokio::test]
async fn anything_before_hello_is_a_protocol_violation() {
    let g = Gateway::start();
    let mut c = g.client().await;
    c.send(json!({"type": "ping", "ref": 1})).await;
    let e = c.recv().await;
    assert_eq!(e["code"], "bad_request", "{e}");
    assert_eq!(c.expect_close().await, 4400);
}

#[tokio::test]
async fn oversized_frame_is_refused_and_connection_continues() {
    let g = Gateway::start_with("[limits]\nmax_frame_bytes = 2048\nmax_outbound_bytes = 65536\n");
    let (mut c, w) = g.hello().await;
    assert_eq!(w["limits"]["max_frame_bytes"], 2048);
    let big = "x".repeat(4000);
    c.send(json!({"type": "ping", "ref": 1, "pad": big})).await;
    let e = c.recv().await;
    assert_eq!(e["code"], "limit_exceeded", "{e}");
    // One error and nothing else (no close): the answer to the next ping comes next.
    c.expect_pong_next().await;
    // Beyond four times the limit the WebSocket layer refuses the frame.
    c.send(json!({"type": "ping", "ref": 2, "pad": "x".repeat(10_000)})).await;
    assert_eq!(c.expect_close().await, 1009);
}

#[tokio::test]
async fn invalid_utf8_text_is_a_websocket_protocol_error_and_the_server_stays_up() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let g = Gateway::start();
    let (mut c, _) = g.hello().await;
    let frame = Frame::message(vec![0x7b, 0xff, 0xfe, 0x7d], OpCode::Data(Data::Text), true);
    c.send_raw(Message::Frame(frame)).await;
    assert_eq!(c.expect_close().await, 1007);
    let (mut other, _) = g.hello().await;
    assert_eq!(other.request(json!({"type": "ping"})).await["type"], "pong");
}

#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--data"])
        .arg(dir.path())
        .env("HERALD_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let line = std::io::BufReader::new(stderr).lines().next().expect("a log line").expect("read");
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{v}");
}
