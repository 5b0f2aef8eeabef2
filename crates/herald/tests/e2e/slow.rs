//! A client that does not read is disconnected; a client that reads gets
//! everything even through bursts larger than its outbound bound; nobody
//! waits for anybody.

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_reading_client_is_closed_and_others_are_unaffected() {
    let g = Gateway::start_with(
        "[limits]\nmax_outbound_bytes = 262144\nmax_frame_bytes = 65536\nslow_consumer_timeout = \"1s\"\n",
    );
    let mut slow = Client::connect_small_buffer(&g.addr).await;
    assert_eq!(slow.request(json!({"type": "hello"})).await["type"], "welcome");
    slow.subscribe("s", binding("big", "#"), json!({})).await;
    let (mut fast, _) = g.hello().await;
    fast.subscribe("f", binding("big", "#"), json!({})).await;
    // 6000 events of about 8 KB (48 MB) in batches of 800 KB: each batch is
    // larger than the outbound bound, and all of it far more than socket buffers.
    let rss_before = rss(g.child.id());
    let pad = "x".repeat(8000);
    let total = 6000u64;
    let reader = tokio::spawn(async move {
        let got = ids(&fast.events(total as usize).await);
        (got, fast)
    });
    for chunk in 0..(total / 100) {
        let batch: Vec<_> = (0..100)
            .map(|i| json!({"exchange": "big", "routing_key": "k", "payload": {"i": chunk * 100 + i, "pad": pad}}))
            .collect();
        g.publish(serde_json::Value::Array(batch)).await;
    }
    let (got, _fast) = reader.await.expect("reader");
    let growth = rss(g.child.id()).saturating_sub(rss_before);
    assert!(growth < 24 << 20, "memory stays bounded while a client does not read: grew {growth} bytes");
    // The slow client stays unread until the gateway closes it as a slow
    // consumer (the timeout itself is tested in process).
    g.wait_metric("herald_slow_consumer_closes_total", 1.0).await;
    assert_eq!(got, (1..=total).collect::<Vec<_>>(), "the reading client got everything, in order");
    // The slow client finds, after what was already in flight, the error and close 4408.
    let mut saw_error = false;
    let mut slow_events = 0u64;
    let code = loop {
        match slow.try_recv(TIMEOUT).await {
            Ok(m) if m["type"] == "event" => {
                slow_events += 1;
                continue;
            }
            Ok(m) => {
                assert_eq!(m["code"], "slow_consumer", "{m}");
                saw_error = true;
            }
            Err(e) => break e,
        }
    };
    assert!(saw_error, "slow_consumer error before the close, then: {code}");
    assert!(code.contains("4408"), "{code}");
    assert!(slow_events < total, "what was queued for the slow client was dropped, not kept: {slow_events}");
}

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}
