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
