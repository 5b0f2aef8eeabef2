//! `since`: replay merged with live delivery, no gap and no duplicate.

use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn since_id_replays_then_goes_live() {
    let g = Gateway::start();
    g.publish_n("r", "a", 10).await;
    g.publish_n("other", "a", 5).await;
    let (mut c, _) = g.hello().await;
    let s = c.subscribe("s", binding("r", "#"), json!({"since": {"id": 4}})).await;
    assert_eq!(s["recovered"], true, "{s}");
    assert_eq!(s["head"], 15);
    assert_eq!(ids(&c.events(6).await), vec![5, 6, 7, 8, 9, 10]);
    g.publish_n("r", "a", 2).await;
    assert_eq!(ids(&c.events(2).await), vec![16, 17]);
    c.expect_sentinel_next(&g, "r", "a", &["s"]).await;
}

#[tokio::test]
async fn since_last_gives_the_n_most_recent_matching() {
    let g = Gateway::start();
    let events: Vec<_> = (0..30)
        .map(|i| json!({"exchange": "r", "routing_key": if i % 3 == 0 { "hit" } else { "miss" }, "payload": {"i": i}}))
        .collect();
    g.publish(serde_json::Value::Array(events)).await;
    let (mut c, _) = g.hello().await;
    let s = c.subscribe("s", binding("r", "hit"), json!({"since": {"last": 4}})).await;
    assert_eq!(s["recovered"], true);
    // Ids of "hit" events: 1, 4, 7, ..., 28; the last four:
    assert_eq!(ids(&c.events(4).await), vec![19, 22, 25, 28]);
    g.publish(json!({"exchange": "r", "routing_key": "hit", "payload": 0})).await;
    assert_eq!(ids(&c.events(1).await), vec![31]);
    let s = c.subscribe("t", binding("r", "hit"), json!({"since": {"last": 0}})).await;
    assert_eq!(s["type"], "subscribed");
    // `t` replays nothing: the next event, live, comes to both and nothing before it.
    c.expect_sentinel_next(&g, "r", "hit", &["s", "t"]).await;
    let e = c.subscribe("u", binding("r", "#"), json!({"since": {"last": 100_000_000}})).await;
    assert_eq!(e["code"], "limit_exceeded", "{e}");
}

#[tokio::test]
async fn since_time_starts_at_that_instant() {
    let g = Gateway::start();
    // Events committed together share a time; these five are one commit.
    g.publish_n("t", "a", 5).await;
    g.publish_n("t", "a", 1).await;
    let (mut c, _) = g.hello().await;
    c.subscribe("probe", binding("t", "#"), json!({"since": {"id": 4}})).await;
    let mut first = c.events(2).await;
    let sixth = first.remove(1);
    let fifth = first.remove(0);
    let t = sixth["time"].as_str().expect("time").to_string();
    // The two commits, one after the other, have different times (fixed-width
    // RFC 3339 in microseconds, so the strings compare like the instants).
    let t5 = fifth["time"].as_str().expect("time");
    assert!(t.as_str() > t5, "the sixth event's commit is later than the fifth's: {t5} then {t}");
    g.publish_n("t", "a", 3).await;
    c.subscribe("s", binding("t", "#"), json!({"since": {"time": t}})).await;
    let evs = c.events(3 + 4).await;
    let s_ids: Vec<u64> = evs.iter().filter(|e| e["sub"] == "s").map(|e| e["id"].as_u64().unwrap_or(0)).collect();
    assert_eq!(s_ids, vec![6, 7, 8, 9]);
    let e = c.subscribe("x", binding("t", "#"), json!({"since": {"time": "2999-01-01T00:00:00Z"}})).await;
    assert_eq!(e["type"], "subscribed");
    g.publish_n("t", "a", 1).await;
    let evs = c.events(3).await;
    assert!(evs.iter().all(|e| e["id"] == 10), "{evs:?}");
}

/// Publishers keep publishing while a client subscribes with `since`: the
/// client must see every id exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_live_merge_without_gap_or_duplicate_under_load() {
    let g = Gateway::start();
    g.publish_n("load", "k", 1000).await;
    let base = g.base.clone();
    let publisher = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for round in 0..40 {
            let batch: Vec<_> = (0..50)
                .map(|i| json!({"exchange": "load", "routing_key": "k", "payload": {"r": round, "i": i}}))
                .collect();
            client.post(format!("{base}/v1/publish")).json(&batch).send().await.expect("publish");
        }
    });
    let mut clients = Vec::new();
    for since in [0u64, 500, 999] {
        let (mut c, _) = g.hello().await;
        let s = c.subscribe("s", binding("load", "#"), json!({"since": {"id": since}})).await;
        assert_eq!(s["type"], "subscribed");
        // Let the publisher move on before the next client subscribes, so that
        // each one joins at a different point of the stream (3000 is its last id).
        let head = s["head"].as_u64().expect("head");
        g.wait_metric("herald_log_head", (head + 1).min(3000) as f64).await;
        clients.push((since, c));
    }
    publisher.await.expect("publisher");
    // Published after everything else: each client's next event after 1..=3000.
    let sentinel = g.publish_sentinel("load", "k").await;
    for (since, mut c) in clients {
        let want: Vec<u64> = (since + 1..=3000).collect();
        let got = ids(&c.events(want.len()).await);
        assert_eq!(got, want, "since {since}");
        c.expect_next_events(sentinel, &["s"]).await;
    }
}

#[tokio::test]
async fn truncated_history_is_reported_not_hidden() {
    let g = Gateway::start_with("[log]\nsegment_bytes = 4096\nmax_events = 50\n");
    // Forty commits of ten roll many 4 KiB segments; retention runs after each.
    for _ in 0..40 {
        g.publish_n("h", "k", 10).await;
    }
    g.publish_n("h", "k", 1).await;
    let (mut c, _) = g.hello().await;
    let s = c.subscribe("s", binding("h", "#"), json!({"since": {"id": 0}})).await;
    assert_eq!(s["type"], "subscribed");
    assert_eq!(s["recovered"], false, "{s}");
    let e = c.recv().await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "history_truncated");
    assert_eq!(e["sub"], "s");
    let first = c.events(1).await[0]["id"].as_u64().expect("id");
    assert!(first > 1 && first <= 351, "replay starts at the oldest kept event: {first}");
    let rest = ids(&c.events((401 - first) as usize).await);
    assert_eq!(rest.last(), Some(&401));

    let s = c.subscribe("t", binding("h", "#"), json!({"since": {"id": 390}})).await;
    assert_eq!(s["recovered"], true, "recent history is intact");
}
