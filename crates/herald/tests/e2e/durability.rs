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

/// A reader that follows exchange `t` across gateway crashes, resuming with
/// `since: {id}` from the last id it saw; it returns every (id, payload) it
/// received once it has reached `until` (set when the publishers are done).
async fn follow(url: String, until: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Vec<(u64, serde_json::Value)> {
    use futures_util::{SinkExt, StreamExt};
    use std::sync::atomic::Ordering;
    use tokio_tungstenite::tungstenite::Message;
    let mut seen: Vec<(u64, serde_json::Value)> = Vec::new();
    loop {
        let last = seen.last().map_or(0, |(id, _)| *id);
        let target = until.load(Ordering::SeqCst);
        if target != 0 && last >= target {
            return seen;
        }
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let sub = json!({"type": "subscribe", "ref": 1, "sub": "r", "bindings": [{"exchange": "t", "pattern": "#"}], "since": {"id": last}});
        if ws.send(Message::text(json!({"type": "hello"}).to_string())).await.is_err()
            || ws.send(Message::text(sub.to_string())).await.is_err()
        {
            continue;
        }
        loop {
            let target = until.load(Ordering::SeqCst);
            if target != 0 && seen.last().map_or(0, |(id, _)| *id) >= target {
                return seen;
            }
            let next = tokio::time::timeout(std::time::Duration::from_millis(200), ws.next()).await;
            let msg = match next {
                Err(_) => continue, // quiet: check the target again
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(_))) => continue,
                Ok(_) => break, // the gateway died: reconnect and resume
            };
            let v: serde_json::Value = serde_json::from_str(msg.as_str()).expect("json");
            if v["type"] == "event" {
                seen.push((v["id"].as_u64().expect("id"), v["payload"].clone()));
            }
        }
    }
}

/// Crash torture: `kill -9` at random moments, five times, while four
/// publishers publish and a reader resumes with `since: {id}` after every
/// restart. Every acknowledged id is in the log, in order, once; the reader
/// sees exactly the log (the same ids with the same payloads: no id is
/// reused for another event after a crash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing_acknowledged_and_the_reader_sees_exactly_the_log() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let mut g = Gateway::start_with("[log]\nsegment_bytes = 65536\n");
    let (base, ws_url) = (g.base.clone(), g.ws_url());
    let stop = Arc::new(AtomicBool::new(false));
    let until = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(follow(ws_url, until.clone()));
    let mut publishers = Vec::new();
    for p in 0..4 {
        let (base, stop) = (base.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acked: Vec<(u64, serde_json::Value)> = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let payload = json!({"p": p, "i": i});
                let body = json!({"exchange": "t", "routing_key": "k", "payload": payload});
                match client.post(format!("{base}/v1/publish")).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {
                        // A lost answer: maybe stored, not acknowledged.
                        if let Ok(v) = r.json::<serde_json::Value>().await {
                            acked.push((v["id"].as_u64().expect("id"), payload));
                        }
                    }
                    // Down or refused: not acknowledged; try again shortly.
                    _ => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                }
            }
            acked
        }));
    }
    for _ in 0..5 {
        let head = g.metric("herald_log_head").await;
        g.wait_metric("herald_log_head", head + rand::random_range(50.0..400.0)).await;
        g.kill_and_restart();
    }
    g.wait_metric("herald_log_head", g.metric("herald_log_head").await + 50.0).await;
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    for t in publishers {
        acked.extend(t.await.expect("publisher"));
    }
    let head = g.metric("herald_log_head").await as u64;
    until.store(head, Ordering::SeqCst);
    let read = reader.await.expect("reader");

    // The log now: every event once.
    let (mut c, _) = g.hello().await;
    c.subscribe("all", binding("t", "#"), json!({"since": {"id": 0}})).await;
    let log: Vec<(u64, serde_json::Value)> =
        c.events(head as usize).await.iter().map(|e| (e["id"].as_u64().expect("id"), e["payload"].clone())).collect();
    assert_eq!(log.iter().map(|(id, _)| *id).collect::<Vec<_>>(), (1..=head).collect::<Vec<_>>(), "dense ids");
    let by_id: std::collections::BTreeMap<u64, &serde_json::Value> = log.iter().map(|(id, p)| (*id, p)).collect();
    assert!(acked.len() > 200, "the publishers got going: {}", acked.len());
    for (id, payload) in &acked {
        assert_eq!(by_id.get(id), Some(&payload), "acknowledged id {id} holds what was published");
    }
    let distinct: BTreeSet<(u64, u64)> =
        log.iter().map(|(_, p)| (p["p"].as_u64().expect("p"), p["i"].as_u64().expect("i"))).collect();
    assert_eq!(distinct.len(), log.len(), "no publish stored twice");
    assert_eq!(read, log, "the reader saw exactly the log, across five crashes");
}

/// Unmounts the small filesystem when the test ends, however it ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A real full disk: the data directory on a 16 MiB tmpfs, filled by another
/// file. Publishing answers 503 `unavailable` naming the cause, reads and
/// live delivery keep working, and publishing recovers by itself once the
/// other file is gone.
#[tokio::test]
async fn a_full_disk_answers_503_keeps_serving_reads_and_recovers_when_space_returns() {
    let mnt = tempfile::tempdir().expect("tempdir");
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "herald-full-disk-test"])
        .arg(mnt.path())
        .status()
        .expect("run mount");
    assert!(status.success(), "this test mounts a small tmpfs, which needs root (as in CI)");
    let _mounted = Mounted(mnt.path().to_path_buf());
    let g = Gateway::start_on("", &mnt.path().join("data"));
    let first = g.publish_n("disk", "k", 10).await;
    let (mut reader, _) = g.hello().await;
    let s = reader.subscribe("r", binding("disk", "#"), json!({})).await;
    assert_eq!(s["type"], "subscribed", "{s}");

    // Fill the filesystem with another file.
    let filler = mnt.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let client = reqwest::Client::new();
    let big = "y".repeat(32 << 10);
    let event = json!({"exchange": "disk", "routing_key": "k", "payload": {"pad": big}});
    let mut refused = None;
    for _ in 0..50 {
        let resp = client.post(format!("{}/v1/publish", g.base)).json(&event).send().await.expect("publish");
        if resp.status() == 503 {
            refused = Some(resp.json::<serde_json::Value>().await.expect("json"));
            break;
        }
    }
    let refused = refused.expect("a publish onto a full disk is refused");
    assert_eq!(refused["error"]["code"], "unavailable", "{refused}");
    let msg = refused["error"]["message"].as_str().expect("message");
    assert!(msg.contains("disk holding the log is full"), "{msg}");
    // Reads keep working, and so does the gateway's view of itself.
    let page: serde_json::Value = client
        .get(format!("{}/v1/history?exchange=disk&pattern=%23", g.base))
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    let ids: Vec<u64> =
        page["events"].as_array().expect("events").iter().map(|e| e["id"].as_u64().expect("id")).collect();
    assert_eq!(ids[..10], first[..], "{page}");
    let ready: serde_json::Value =
        client.get(format!("{}/readyz", g.base)).send().await.expect("readyz").json().await.expect("json");
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["log"]["full"], true, "{ready}");

    // Space returns: publishing works again by itself, and the reader gets it live.
    std::fs::remove_file(&filler).expect("remove filler");
    let id = g.publish_sentinel("disk", "k").await;
    loop {
        let m = reader.recv().await;
        if m["type"] == "event" && m["id"] == json!(id) {
            break;
        }
    }
    let ready: serde_json::Value =
        client.get(format!("{}/readyz", g.base)).send().await.expect("readyz").json().await.expect("json");
    assert_eq!(ready["status"], "ready", "{ready}");
}
