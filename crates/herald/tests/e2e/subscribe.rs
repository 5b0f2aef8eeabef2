//! Live subscriptions: bindings, several per socket, unsubscribe, filters, pause/resume.

use crate::common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn bindings_select_events_and_subscriptions_are_independent() {
    let g = Gateway::start();
    let (mut c, _) = g.hello().await;
    let s = c
        .subscribe(
            "orders",
            json!([{"exchange": "shop", "pattern": "order.*"}, {"exchange": "shop", "pattern": "#.refund"}]),
            json!({}),
        )
        .await;
    assert_eq!(s["type"], "subscribed", "{s}");
    assert_eq!(s["recovered"], true);
    assert_eq!(s["head"], 0);
    let s2 = c.subscribe("all", binding("shop", "#"), json!({})).await;
    assert_eq!(s2["type"], "subscribed");

    g.publish(json!([
        {"exchange": "shop", "routing_key": "order.created", "payload": 1},
        {"exchange": "shop", "routing_key": "order.created.eu", "payload": 2},
        {"exchange": "shop", "routing_key": "a.b.refund", "payload": 3},
        {"exchange": "other", "routing_key": "order.created", "payload": 4},
    ]))
    .await;
    let evs = c.events(5).await;
    let orders: Vec<u64> = evs.iter().filter(|e| e["sub"] == "orders").map(|e| e["id"].as_u64().unwrap_or(0)).collect();
    let all: Vec<u64> = evs.iter().filter(|e| e["sub"] == "all").map(|e| e["id"].as_u64().unwrap_or(0)).collect();
    assert_eq!(orders, vec![1, 3]);
    assert_eq!(all, vec![1, 2, 3]);
    let e = &evs[0];
    assert_eq!(e["exchange"], "shop");
    assert_eq!(e["routing_key"], "order.created");
    assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    // Nothing else: a sentinel both subscriptions match comes next.
    c.expect_sentinel_next(&g, "shop", "order.sentinel", &["orders", "all"]).await;

    let u = c.request(json!({"type": "unsubscribe", "sub": "all"})).await;
    assert_eq!(u["type"], "unsubscribed");
    let id = g.publish(json!({"exchange": "shop", "routing_key": "x.refund", "payload": 5})).await[0];
    let evs = c.events(1).await;
    assert_eq!((evs[0]["sub"].as_str(), evs[0]["id"].as_u64()), (Some("orders"), Some(id)));
    // No copy of it for `all`: the next event, which `all` would match too, comes for `orders` alone.
    c.expect_sentinel_next(&g, "shop", "s.refund", &["orders"]).await;

    let e = c.request(json!({"type": "unsubscribe", "sub": "all"})).await;
    assert_eq!(e["code"], "not_found");
    let e = c.subscribe("orders", binding("shop", "#"), json!({})).await;
    assert_eq!(e["code"], "conflict");
}

#[tokio::test]
async fn invalid_subscriptions_are_refused_with_reasons() {
    let g = Gateway::start_with("[limits]\nmax_bindings = 2\nmax_subscriptions = 1\n");
    let (mut c, _) = g.hello().await;
    let cases = [
        (json!([]), json!({}), "bad_request"),
        (binding("", "#"), json!({}), "bad_request"),
        (binding("x", &"a.".repeat(200)), json!({}), "bad_request"),
        (
            json!([{"exchange": "x", "pattern": "a"}, {"exchange": "x", "pattern": "b"}, {"exchange": "x", "pattern": "c"}]),
            json!({}),
            "limit_exceeded",
        ),
        (binding("x", "#"), json!({"filters": [["colour", "=", 1]]}), "bad_request"),
        (binding("x", "#"), json!({"filters": [["payload/a", "~", 1]]}), "bad_request"),
        (binding("x", "#"), json!({"since": {"id": 1, "last": 2}}), "bad_request"),
        (binding("x", "#"), json!({"since": {"time": "yesterday"}}), "bad_request"),
    ];
    for (bindings, extra, code) in cases {
        let e = c.subscribe("s", bindings.clone(), extra.clone()).await;
        assert_eq!(e["type"], "error", "{bindings} {extra}: {e}");
        assert_eq!(e["code"], code, "{bindings} {extra}: {e}");
    }
    assert_eq!(c.subscribe("s", binding("x", "#"), json!({})).await["type"], "subscribed");
    assert_eq!(c.subscribe("t", binding("x", "#"), json!({})).await["code"], "limit_exceeded");
}

#[tokio::test]
async fn filters_on_fields_and_payload() {
    let g = Gateway::start();
    let (mut c, _) = g.hello().await;
    let f = |filters: serde_json::Value| json!({"filters": filters});
    c.subscribe("big", binding("m", "#"), f(json!([["payload/n", ">=", 10]]))).await;
    c.subscribe("state", binding("m", "#"), f(json!([["payload/task/state", "in", ["done", "failed"]]]))).await;
    c.subscribe("rk", binding("m", "#"), f(json!([["routing_key", "!=", "a"], ["payload/flag", "exists"]]))).await;
    g.publish(json!([
        {"exchange": "m", "routing_key": "a", "payload": {"n": 5, "task": {"state": "done"}}},
        {"exchange": "m", "routing_key": "b", "payload": {"n": 15, "flag": true}},
        {"exchange": "m", "routing_key": "a", "payload": {"n": 20, "task": {"state": "running"}, "flag": 0}},
    ]))
    .await;
    let evs = c.events(4).await;
    let got: Vec<(String, u64)> =
        evs.iter().map(|e| (e["sub"].as_str().unwrap_or("").to_string(), e["id"].as_u64().unwrap_or(0))).collect();
    assert_eq!(got, vec![("state".into(), 1), ("big".into(), 2), ("rk".into(), 2), ("big".into(), 3)]);
    // Nothing else: a sentinel that passes all three filters comes next, once for each.
    let sentinel = json!({"n": 100, "task": {"state": "done"}, "flag": true, "sentinel": true});
    let id = g.publish(json!({"exchange": "m", "routing_key": "b", "payload": sentinel})).await[0];
    c.expect_next_events(id, &["big", "state", "rk"]).await;
}

#[tokio::test]
async fn pause_holds_events_until_resume_in_order() {
    let g = Gateway::start();
    let (mut c, _) = g.hello().await;
    c.subscribe("s", binding("p", "#"), json!({})).await;
    // A second, live subscription on this connection carries the sentinel while `s` is paused.
    c.subscribe("live", binding("fence", "#"), json!({})).await;
    g.publish_n("p", "k", 3).await;
    assert_eq!(ids(&c.events(3).await), vec![1, 2, 3]);
    assert_eq!(c.request(json!({"type": "pause", "sub": "s"})).await["type"], "paused");
    let mut held = g.publish_n("p", "k", 5).await;
    // Held: an event published after them reaches the live subscription first.
    c.expect_sentinel_next(&g, "fence", "k", &["live"]).await;
    assert_eq!(c.request(json!({"type": "resume", "sub": "s"})).await["type"], "resumed");
    held.extend(g.publish_n("p", "k", 2).await);
    assert_eq!(ids(&c.events(7).await), held);
    c.expect_sentinel_next(&g, "p", "k", &["s"]).await;
    assert_eq!(c.request(json!({"type": "pause", "sub": "nope"})).await["code"], "not_found");
}

#[tokio::test]
async fn acl_events_are_not_shown_to_anonymous_clients() {
    let g = Gateway::start();
    let (mut c, _) = g.hello().await;
    c.subscribe("s", binding("a", "#"), json!({})).await;
    g.publish(json!([
        {"exchange": "a", "routing_key": "k", "payload": 1, "acl": ["user:alice"]},
        {"exchange": "a", "routing_key": "k", "payload": 2},
    ]))
    .await;
    assert_eq!(ids(&c.events(1).await), vec![2]);
    c.expect_sentinel_next(&g, "a", "k", &["s"]).await;
}

/// Publishers in parallel and many subscribers: wherever the fan-out ran
/// (`server.fanout_dispatch`: on a writer thread, on its own thread, or
/// either by load), every subscriber gets every event once and in id order.
#[tokio::test]
async fn a_burst_to_many_subscribers_arrives_whole_and_in_order_wherever_the_fanout_runs() {
    for (mode, writer_only, thread_only) in [("writer", true, false), ("thread", false, true), ("auto", false, false)] {
        let g = Gateway::start_with(&format!("[server]\nfanout_dispatch = \"{mode}\"\n"));
        let (writer, thread) = burst(&g, mode).await;
        assert!(writer + thread >= 1.0, "{mode}: dispatches counted: writer {writer}, thread {thread}");
        assert!(!writer_only || thread == 0.0, "{mode}: all on a writer thread, {thread} on the thread");
        assert!(!thread_only || writer == 0.0, "{mode}: all on the thread, {writer} on a writer thread");
    }
    let err = Gateway::try_start_with("[server]\nfanout_dispatch = \"fast\"\n");
    assert!(err.contains("fanout_dispatch") && err.contains("auto"), "names the key and the choices: {err}");
}

/// 40 subscribers, 4 publishers of 250 events each in batches of 10;
/// checks that each subscriber got them all in id order, and returns the
/// dispatches counted on a writer thread and on the fan-out thread.
async fn burst(g: &Gateway, mode: &str) -> (f64, f64) {
    const SUBS: usize = 40;
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 250;
    let mut readers = Vec::new();
    for _ in 0..SUBS {
        let (mut c, _) = g.hello().await;
        let s = c.subscribe("s", binding("burst", "#"), json!({})).await;
        assert_eq!(s["type"], "subscribed", "{s}");
        readers.push(tokio::spawn(async move { ids(&c.events((PUBLISHERS * EACH) as usize).await) }));
    }
    // Small batches from several publishers at once: commits follow each
    // other while the writers still write the earlier ones.
    let published = futures_util::future::join_all((0..PUBLISHERS).map(|p| async move {
        let mut ids = Vec::new();
        for chunk in 0..EACH / 10 {
            let events: Vec<Value> = (0..10)
                .map(|i| json!({"exchange": "burst", "routing_key": format!("p{p}"), "payload": chunk * 10 + i}))
                .collect();
            ids.extend(g.publish(Value::Array(events)).await);
        }
        ids
    }))
    .await;
    let mut all: Vec<u64> = published.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(all.len() as u64, PUBLISHERS * EACH);
    for (n, r) in readers.into_iter().enumerate() {
        let got = r.await.expect("reader");
        assert_eq!(got, all, "{mode}, subscriber {n}: every event once, in id order");
    }
    let writer = g.metric("herald_fanout_dispatches_total{on=\"writer\"}").await;
    let thread = g.metric("herald_fanout_dispatches_total{on=\"thread\"}").await;
    assert!(writer + thread <= all.len() as f64, "{mode}: at most one dispatch per event: {writer} + {thread}");
    (writer, thread)
}
