//! Durability: every acknowledged event survives kill -9; drain on SIGTERM.

use crate::common::*;
use serde_json::json;
use std::collections::BTreeSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9() {
    let mut g = Gateway::start_with("[log]\nsegment_bytes = 65536\n");
    let base = g.base.clone();
    // Publish continuously from several tasks; record every acknowledged id.
    let mut tasks = Vec::new();
    for p in 0..4 {
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acked = Vec::new();
            for i in 0..100_000 {
                let body = json!([{"exchange": "d", "routing_key": "k", "payload": {"p": p, "i": i}}, {"exchange": "d", "routing_key": "k", "payload": {"p": p, "i": i, "second": true}}]);
                match client.post(format!("{base}/v1/publish")).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {
                        let v: serde_json::Value = match r.json().await {
                            Ok(v) => v,
                            Err(_) => break,
                        };
                        acked.extend(v["ids"].as_array().into_iter().flatten().filter_map(|x| x.as_u64()));
                    }
                    _ => break,
                }
            }
            acked
        }));
    }
    // Kill once the publishers are well under way.
    g.wait_metric("herald_log_head", 200.0).await;
    g.kill_and_restart();
    let mut acked = BTreeSet::new();
    for t in tasks {
        acked.extend(t.await.expect("task"));
    }
    assert!(acked.len() > 50, "the publishers got going: {}", acked.len());
    let max = *acked.iter().max().expect("some");
    // Everything up to the newest acknowledged id is there, dense and in order.
    let (mut c, _) = g.hello().await;
    c.subscribe("s", binding("d", "#"), json!({"since": {"id": 0}})).await;
    let got = ids(&c.events(max as usize).await);
    assert_eq!(got, (1..=max).collect::<Vec<_>>());
    // And the log continues after the recovered head.
    let next = g.publish(json!({"exchange": "d", "routing_key": "k", "payload": 0})).await[0];
    assert!(next > max);
}

#[tokio::test]
async fn sigterm_drains_with_closing_and_sessions_resume_after_restart() {
    let mut g = Gateway::start();
    g.publish_n("x", "k", 3).await;
    let (mut c, w) = g.hello().await;
    c.subscribe("s", binding("x", "#"), json!({"since": {"id": 0}})).await;
    assert_eq!(ids(&c.events(3).await), vec![1, 2, 3]);
    c.send(json!({"type": "ack", "sub": "s", "id": 2})).await;
    c.request(json!({"type": "ping"})).await;
    let status = {
        let pid = g.child.id().to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill")
    };
    assert!(status.success());
    let m = c.recv().await;
    assert_eq!(m["type"], "closing", "{m}");
    assert!(m["retry_after_ms"].as_u64().is_some());
    assert_eq!(c.expect_close().await, 1001);
    let exit = g.child.wait().expect("wait");
    assert!(exit.success(), "clean exit: {exit:?}");
    let saved = g.data.join("sessions.redb");
    assert!(saved.exists(), "sessions kept in the data directory");
    assert!(!g.data.join("sessions.json").exists(), "no secrets in a JSON file any more");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&saved).expect("meta").permissions().mode() & 0o777, 0o600);
    g.restart();
    g.publish_n("x", "k", 1).await;
    let mut c = g.client().await;
    let creds = json!({"id": w["session"]["id"], "secret": w["session"]["secret"]});
    let w2 = c.request(json!({"type": "hello", "session": creds})).await;
    assert_eq!(w2["resumed"], true, "{w2}");
    assert_eq!(c.recv().await["type"], "subscribed");
    assert_eq!(ids(&c.events(2).await), vec![3, 4], "after the ack, across the restart");
}
