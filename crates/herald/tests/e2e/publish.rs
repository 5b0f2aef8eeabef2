//! Publishing over HTTP and WebSocket.

use crate::common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn http_publish_single_and_array_assign_increasing_ids() {
    let g = Gateway::start();
    let one = g.publish(json!({"exchange": "x", "routing_key": "a", "payload": {"v": 1}})).await;
    assert_eq!(one, vec![1]);
    let many = g
        .publish(json!([
            {"exchange": "x", "routing_key": "a", "payload": 1},
            {"exchange": "y", "routing_key": "", "payload": "s", "acl": ["user:alice"]}
        ]))
        .await;
    assert_eq!(many, vec![2, 3]);
}

#[tokio::test]
async fn http_publish_rejects_bad_events_whole() {
    let g = Gateway::start();
    let client = reqwest::Client::new();
    let url = format!("{}/v1/publish", g.base);
    for (body, code) in [
        (json!({"exchange": "", "routing_key": "a", "payload": 1}), "bad_request"),
        (json!({"exchange": "x", "payload": 1}), "bad_request"),
        (json!({"exchange": "x", "routing_key": "a", "payload": 1, "acl": ["alice"]}), "bad_request"),
        (json!({"exchange": "x", "routing_key": "a", "payload": 1, "colour": "red"}), "bad_request"),
        (json!([]), "bad_request"),
        (
            json!([{"exchange": "x", "routing_key": "a", "payload": 1}, {"exchange": "x".repeat(300), "routing_key": "a", "payload": 1}]),
            "bad_request",
        ),
    ] {
        let resp = client.post(&url).json(&body).send().await.expect("post");
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = resp.json().await.expect("json");
        assert_eq!(v["error"]["code"], code, "{v}");
    }
    let resp = client.post(&url).body("{oops").send().await.expect("post");
    assert_eq!(resp.status(), 400);
    // Nothing of the rejected requests was stored.
    assert_eq!(g.publish(json!({"exchange": "x", "routing_key": "a", "payload": 1})).await, vec![1]);
}

#[tokio::test]
async fn ws_publish_answers_with_the_id_in_order() {
    let g = Gateway::start();
    let (mut c, _) = g.hello().await;
    for i in 0..50 {
        c.send(json!({"type": "publish", "ref": i, "exchange": "x", "routing_key": "k", "payload": {"i": i}})).await;
    }
    for i in 0..50u64 {
        let m = c.recv().await;
        assert_eq!(m["type"], "published", "{m}");
        assert_eq!(m["ref"], i);
        assert_eq!(m["id"], i + 1, "ids follow the order the connection sent them");
    }
    let e = c.request(json!({"type": "publish", "exchange": "x", "routing_key": "k".repeat(300), "payload": 1})).await;
    assert_eq!(e["code"], "bad_request", "{e}");
}

fn keyed(exchange: &str, key: &str, n: u64) -> Value {
    json!({"exchange": exchange, "routing_key": "k", "payload": {"n": n}, "idempotency_key": key})
}

/// A repeat with the same key and exchange is answered with the first id
/// and not stored again, over HTTP and WebSocket alike, also after a
/// `kill -9` (the window is rebuilt from the log); a subscriber sees the
/// event once.
#[tokio::test]
async fn an_idempotency_key_stores_an_event_once_across_transports_and_restarts() {
    let mut g = Gateway::start();
    let (mut c, _) = g.hello().await;
    c.subscribe("s", binding("idem", "#"), json!({})).await;
    let first = g.publish(keyed("idem", "order-1", 1)).await[0];
    assert_eq!(g.publish(keyed("idem", "order-1", 2)).await, vec![first], "same key: the first id");
    let (mut w, _) = g.hello().await;
    let p = w.request(json!({"type": "publish", "exchange": "idem", "routing_key": "k", "payload": 3, "idempotency_key": "order-1"})).await;
    assert_eq!((p["type"].as_str(), p["id"].as_u64()), (Some("published"), Some(first)), "{p}");
    // Per exchange: the same key elsewhere is another event.
    let other = g.publish(keyed("idem-other", "order-1", 4)).await[0];
    assert!(other > first);
    // Repeats inside one array share one event.
    let batch =
        g.publish(json!([keyed("idem", "order-2", 5), keyed("idem", "order-2", 6), keyed("idem", "order-1", 7)])).await;
    assert_eq!(batch[0], batch[1]);
    assert_eq!(batch[2], first);
    let e = c.events(2).await;
    assert_eq!(ids(&e), vec![first, batch[0]], "each key delivered once");
    assert_eq!(e[0]["payload"]["n"], 1, "the first publish's payload is the one kept");
    c.expect_sentinel_next(&g, "idem", "k", &["s"]).await;
    assert_eq!(g.metric("herald_publish_duplicates_total").await, 4.0);

    g.kill_and_restart();
    assert_eq!(g.publish(keyed("idem", "order-1", 8)).await, vec![first], "the window survives a crash");
    assert_eq!(g.publish(keyed("idem", "order-2", 9)).await, vec![batch[0]]);
}

#[tokio::test]
async fn concurrent_repeats_of_a_key_store_one_event() {
    let g = Gateway::start();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let base = g.base.clone();
        tasks.push(tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .post(format!("{base}/v1/publish"))
                .json(&keyed("race", "once", i))
                .send()
                .await
                .expect("post");
            let v: Value = resp.json().await.expect("json");
            v["id"].as_u64().expect("id")
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.expect("join"));
    }
    got.dedup();
    assert_eq!(got.len(), 1, "every publisher got the same id: {got:?}");
    assert_eq!(g.metric("herald_log_head").await, got[0] as f64, "and only one event was stored");
}

#[tokio::test]
async fn a_bad_idempotency_key_is_refused() {
    let g = Gateway::start();
    let client = reqwest::Client::new();
    for key in [String::new(), "k".repeat(129)] {
        let resp = client.post(format!("{}/v1/publish", g.base)).json(&keyed("x", &key, 1)).send().await.expect("post");
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await.expect("json");
        assert_eq!(v["error"]["code"], "bad_request", "{v}");
        assert!(v["error"]["message"].as_str().unwrap_or("").contains("idempotency_key"), "{v}");
    }
    assert_eq!(g.publish(keyed("x", &"k".repeat(128), 1)).await, vec![1], "128 bytes is fine");
}

/// The window does not count the time the gateway was down, and it does
/// end while the gateway runs. (The waits are the behaviour under test:
/// real time passing.)
#[tokio::test]
async fn the_idempotency_window_ignores_downtime_and_ends_while_running() {
    let mut g = Gateway::start_with("[publish]\nidempotency_window = \"1s\"\n");
    let first = g.publish(keyed("win", "k", 1)).await[0];
    g.child.kill().expect("kill");
    let _ = g.child.wait();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    g.restart();
    assert_eq!(g.publish(keyed("win", "k", 2)).await, vec![first], "downtime does not age the key");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let again = g.publish(keyed("win", "k", 3)).await[0];
    assert!(again > first, "after the window a repeat is a new event");
}
