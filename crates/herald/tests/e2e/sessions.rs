//! Sessions: resume after an abrupt disconnect, acks, refusal, orderly end.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn creds(w: &Value) -> Value {
    json!({"id": w["session"]["id"], "secret": w["session"]["secret"]})
}

#[tokio::test]
async fn resume_replays_everything_after_the_ack_once_in_order() {
    let g = Gateway::start();
    let (mut c, w) = g.hello().await;
    c.subscribe("a", binding("s", "a.#"), json!({})).await;
    c.subscribe("b", binding("s", "b.#"), json!({})).await;
    g.publish_n("s", "a.x", 5).await; // ids 1..5
    let got = ids(&c.events(5).await);
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
    c.send(json!({"type": "ack", "sub": "a", "id": 3})).await;
    c.request(json!({"type": "ping"})).await; // the ack is processed before this answer
    c.abort();

    g.publish_n("s", "a.y", 3).await; // 6..8
    g.publish_n("s", "b.y", 2).await; // 9..10
    g.publish_n("s", "c.y", 2).await; // 11..12, matches nothing

    let mut c = g.client().await;
    let w2 = c.request(json!({"type": "hello", "session": creds(&w)})).await;
    assert_eq!(w2["type"], "welcome", "{w2}");
    assert_eq!(w2["resumed"], true);
    assert_eq!(w2["session"]["id"], w["session"]["id"]);
    let mut restored = Vec::new();
    let mut a = Vec::new();
    let mut b = Vec::new();
    while a.len() < 5 || b.len() < 2 {
        let m = c.recv().await;
        match (m["type"].as_str(), m["sub"].as_str()) {
            (Some("subscribed"), Some(sub)) => {
                assert!(m.get("ref").is_none(), "restored subscriptions carry no ref");
                restored.push(sub.to_string());
            }
            (Some("event"), Some("a")) => a.push(m["id"].as_u64().unwrap_or(0)),
            (Some("event"), Some("b")) => b.push(m["id"].as_u64().unwrap_or(0)),
            _ => panic!("unexpected {m}"),
        }
    }
    restored.sort();
    assert_eq!(restored, vec!["a", "b"]);
    assert_eq!(a, vec![4, 5, 6, 7, 8], "after the ack of 3, once each, in order");
    assert_eq!(b, vec![9, 10]);
    c.expect_silence(Duration::from_millis(200)).await;
    // And live delivery continues.
    g.publish_n("s", "b.z", 1).await;
    assert_eq!(ids(&c.events(1).await), vec![13]);
}

#[tokio::test]
async fn a_wrong_secret_is_refused() {
    let g = Gateway::start();
    let (c, w) = g.hello().await;
    c.abort();
    let mut c = g.client().await;
    let e = c.request(json!({"type": "hello", "session": {"id": w["session"]["id"], "secret": "0".repeat(64)}})).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "unauthorized");
    assert_eq!(c.expect_close().await, 4401);
    // The real owner can still resume.
    let mut c = g.client().await;
    let w2 = c.request(json!({"type": "hello", "session": creds(&w)})).await;
    assert_eq!(w2["resumed"], true);
}

#[tokio::test]
async fn an_orderly_close_ends_the_session() {
    let g = Gateway::start();
    let (mut c, w) = g.hello().await;
    c.subscribe("a", binding("s", "#"), json!({})).await;
    c.ws.close(None).await.expect("close");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = g.client().await;
    let w2 = c.request(json!({"type": "hello", "session": creds(&w)})).await;
    assert_eq!(w2["type"], "welcome");
    assert_eq!(w2["resumed"], false, "a new session");
    assert_ne!(w2["session"]["id"], w["session"]["id"]);
}

#[tokio::test]
async fn sessions_expire_after_the_ttl() {
    let g = Gateway::start_with("heartbeat = \"200ms\"\n[session]\nttl = \"1s\"\n");
    let (c, w) = g.hello().await;
    c.abort();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let mut c = g.client().await;
    let w2 = c.request(json!({"type": "hello", "session": creds(&w)})).await;
    assert_eq!(w2["resumed"], false);
}

#[tokio::test]
async fn resuming_on_a_second_connection_takes_the_session_over() {
    let g = Gateway::start();
    let (mut old, w) = g.hello().await;
    old.subscribe("a", binding("s", "#"), json!({})).await;
    let mut new = g.client().await;
    let w2 = new.request(json!({"type": "hello", "session": creds(&w)})).await;
    assert_eq!(w2["resumed"], true);
    let closing = old.recv().await;
    assert_eq!(closing["type"], "closing", "{closing}");
    assert_eq!(old.expect_close().await, 4409);
    assert_eq!(new.recv().await["type"], "subscribed");
    g.publish_n("s", "k", 1).await;
    assert_eq!(ids(&new.events(1).await), vec![1]);
}
