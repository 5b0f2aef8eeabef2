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
    // Nothing more (no duplicate, nothing of 11..12): a live sentinel comes next.
    c.expect_sentinel_next(&g, "s", "a.sentinel", &["a"]).await;
    // And live delivery continues.
    let live = g.publish_n("s", "b.z", 1).await;
    assert_eq!(ids(&c.events(1).await), live);
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
    // The gateway has ended the session once it removes it from the store.
    g.wait_metric("herald_session_writes_total{op=\"delete\"}", 1.0).await;
    let mut c = g.client().await;
    let w2 = c.request(json!({"type": "hello", "session": creds(&w)})).await;
    assert_eq!(w2["type"], "welcome");
    assert_eq!(w2["resumed"], false, "a new session");
    assert_ne!(w2["session"]["id"], w["session"]["id"]);
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

/// Subscribe, receive, ack, `kill -9`, restart: the session resumes and gets
/// exactly the events after the stored ack, including those published after
/// the restart.
#[tokio::test]
async fn a_session_survives_kill_9_and_replays_exactly_after_the_stored_ack() {
    let mut g = Gateway::start_with("[session]\nack_flush = \"100ms\"\n");
    let (mut c, w) = g.hello().await;
    c.subscribe("a", binding("k9", "a.#"), json!({})).await;
    c.subscribe("p", binding("k9", "p.#"), json!({})).await;
    c.request(json!({"type": "pause", "sub": "p"})).await;
    g.publish_n("k9", "a.x", 5).await; // ids 1..5
    assert_eq!(ids(&c.events(5).await), vec![1, 2, 3, 4, 5]);
    c.send(json!({"type": "ack", "sub": "a", "id": 4})).await;
    c.request(json!({"type": "ping"})).await;
    // The coalesced flush has written the ack once the counter moves.
    g.wait_metric("herald_session_writes_total{op=\"acks\"}", 1.0).await;
    g.kill_and_restart();
    g.publish_n("k9", "a.y", 2).await; // 6..7, after the restart
    g.publish_n("k9", "p.z", 1).await; // 8, for the paused subscription

    let mut c = g.client().await;
    let w2 = c.request(json!({"type": "hello", "session": creds(&w)})).await;
    assert_eq!(w2["resumed"], true, "{w2}");
    assert_eq!(w2["session"], w["session"]);
    let mut restored = [c.recv().await, c.recv().await];
    restored.sort_by_key(|m| m["sub"].as_str().unwrap_or("").to_string());
    assert_eq!((restored[0]["type"].as_str(), restored[0]["sub"].as_str()), (Some("subscribed"), Some("a")));
    assert_eq!((restored[1]["type"].as_str(), restored[1]["sub"].as_str()), (Some("subscribed"), Some("p")));
    assert_eq!(ids(&c.events(3).await), vec![5, 6, 7], "after the stored ack of 4, once each");
    // The paused subscription stayed paused across the crash: resuming it
    // delivers id 8 and nothing came before that.
    let r = c.request(json!({"type": "resume", "sub": "p"})).await;
    assert_eq!(r["type"], "resumed", "{r}");
    let e = c.events(1).await;
    assert_eq!((e[0]["sub"].as_str(), e[0]["id"].as_u64()), (Some("p"), Some(8)));
}

/// A detached session's TTL keeps running while the gateway is down.
#[tokio::test]
async fn a_ttl_counts_the_time_the_gateway_was_down() {
    let mut g = Gateway::start_with("[session]\nttl = \"2s\"\nack_flush = \"100ms\"\n");
    let (mut c, w) = g.hello().await;
    c.subscribe("a", binding("t", "#"), json!({})).await;
    c.abort();
    // Detached and stored; then the process dies and stays down past the TTL.
    g.wait_metric("herald_session_writes_total{op=\"put\"}", 2.0).await;
    g.child.kill().expect("kill");
    let _ = g.child.wait();
    // The behaviour under test: real time passes (past the 2 s TTL) while no process runs.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    g.restart();
    let mut c = g.client().await;
    let w2 = c.request(json!({"type": "hello", "session": creds(&w)})).await;
    assert_eq!(w2["resumed"], false, "expired while down: {w2}");
}
