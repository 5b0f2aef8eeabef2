//! Server-Sent Events and history.

use crate::common::*;
use serde_json::{json, Value};

/// A minimal SSE reader over a streaming HTTP response.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

#[derive(Debug)]
struct Record {
    id: Option<u64>,
    event: Option<String>,
    data: Option<Value>,
    comment: bool,
}

impl Sse {
    async fn open(url: &str, last_event_id: Option<u64>) -> Sse {
        let mut req = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.expect("sse");
        assert_eq!(resp.status(), 200, "{url}");
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Sse { resp, buf: String::new() }
    }

    async fn next(&mut self) -> Record {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let mut r = Record { id: None, event: None, data: None, comment: false };
                for line in raw.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        r.id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        r.event = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        r.data = Some(serde_json::from_str(v).expect("data is JSON"));
                    } else if line.starts_with(':') {
                        r.comment = true;
                    }
                }
                return r;
            }
            let chunk = tokio::time::timeout(TIMEOUT, self.resp.chunk()).await.expect("sse timeout").expect("read");
            let chunk = chunk.expect("stream ended");
            self.buf.push_str(std::str::from_utf8(&chunk).expect("utf8"));
        }
    }

    async fn events(&mut self, n: usize) -> Vec<u64> {
        let mut ids = Vec::new();
        while ids.len() < n {
            let r = self.next().await;
            if r.event.is_none() && !r.comment {
                let id = r.id.expect("id");
                assert_eq!(r.data.as_ref().and_then(|d| d["id"].as_u64()), Some(id), "id: matches the data");
                ids.push(id);
            }
        }
        ids
    }
}

#[tokio::test]
async fn sse_replays_goes_live_and_resumes_with_last_event_id() {
    let g = Gateway::start();
    g.publish_n("s", "a", 5).await;
    let url = format!("{}/v1/sse?exchange=s&pattern=a&since_id=2", g.base);
    let mut sse = Sse::open(&url, None).await;
    let first = sse.next().await;
    assert_eq!(first.event.as_deref(), Some("subscribed"), "{first:?}");
    assert_eq!(first.data.as_ref().map(|d| d["recovered"].clone()), Some(json!(true)));
    assert_eq!(sse.events(3).await, vec![3, 4, 5]);
    g.publish_n("s", "a", 2).await;
    g.publish_n("s", "b", 1).await;
    assert_eq!(sse.events(2).await, vec![6, 7]);
    drop(sse);
    g.publish_n("s", "a", 1).await; // 9
    let mut again = Sse::open(&format!("{}/v1/sse?exchange=s&pattern=a", g.base), Some(7)).await;
    assert_eq!(again.next().await.event.as_deref(), Some("subscribed"));
    assert_eq!(again.events(1).await, vec![9], "Last-Event-ID resumes without gap or duplicate");
}

#[tokio::test]
async fn sse_heartbeats_and_filters() {
    let g = Gateway::start_with("heartbeat = \"300ms\"\n");
    let filters = urlencode(&json!([["payload/n", ">=", 1]]).to_string());
    let bindings = urlencode(&json!([{"exchange": "f", "pattern": "#"}]).to_string());
    let mut sse = Sse::open(&format!("{}/v1/sse?bindings={bindings}&filters={filters}", g.base), None).await;
    assert_eq!(sse.next().await.event.as_deref(), Some("subscribed"));
    let mut saw_ping = false;
    for _ in 0..3 {
        if sse.next().await.comment {
            saw_ping = true;
            break;
        }
    }
    assert!(saw_ping, "a comment every heartbeat");
    g.publish_n("f", "k", 3).await; // n = 0, 1, 2
    assert_eq!(sse.events(2).await, vec![2, 3]);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn sse_and_history_enforce_auth_grants_and_acl() {
    let secret = "sse-secret-0123456789abcdef";
    let g = Gateway::start_with(&format!("[auth]\njwt_secret = \"{secret}\"\n"));
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "alice", "exp": exp, "herald": {"subscribe": [{"exchange": "a", "pattern": "ok.#"}]}}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign");
    g.publish(json!([
        {"exchange": "a", "routing_key": "ok.1", "payload": 1},
        {"exchange": "a", "routing_key": "no.1", "payload": 2},
        {"exchange": "a", "routing_key": "ok.2", "payload": 3, "acl": ["user:bob"]},
        {"exchange": "a", "routing_key": "ok.3", "payload": 4, "acl": ["user:alice"]},
    ]))
    .await;
    let http = reqwest::Client::new();
    let unauth = http.get(format!("{}/v1/sse?exchange=a", g.base)).send().await.expect("sse");
    assert_eq!(unauth.status(), 401);
    let forbidden =
        http.get(format!("{}/v1/sse?exchange=a&pattern=no.%23&token={token}", g.base)).send().await.expect("sse");
    assert_eq!(forbidden.status(), 403);
    let mut sse = Sse::open(&format!("{}/v1/sse?exchange=a&since_id=0&token={token}", g.base), None).await;
    assert_eq!(sse.next().await.event.as_deref(), Some("subscribed"));
    assert_eq!(sse.events(2).await, vec![1, 4], "grants clip the wide binding; the ACL hides bob's event");

    let h: Value = http
        .get(format!("{}/v1/history?exchange=a", g.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    let got: Vec<u64> = h["events"].as_array().expect("events").iter().map(|e| e["id"].as_u64().unwrap_or(0)).collect();
    assert_eq!(got, vec![1, 4]);
    assert_eq!(h["next_after"], Value::Null);
    let r = http.get(format!("{}/v1/history?exchange=a", g.base)).send().await.expect("history");
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn history_pages_through_events() {
    let g = Gateway::start();
    for i in 0..25 {
        g.publish(json!([{"exchange": "h", "routing_key": "k", "payload": {"i": i}}, {"exchange": "other", "routing_key": "k", "payload": 0}])).await;
    }
    let http = reqwest::Client::new();
    let mut after = 0u64;
    let mut all = Vec::new();
    let mut pages = 0;
    loop {
        let page: Value = http
            .get(format!("{}/v1/history?exchange=h&limit=10&after={after}", g.base))
            .send()
            .await
            .expect("history")
            .json()
            .await
            .expect("json");
        pages += 1;
        let events = page["events"].as_array().expect("events");
        all.extend(events.iter().map(|e| e["payload"]["i"].as_u64().unwrap_or(99)));
        match page["next_after"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
        assert!(pages < 10);
    }
    assert_eq!(all, (0..25).collect::<Vec<_>>());
    assert_eq!(pages, 3);
    for bad in [
        "exchange=h&limit=0",
        "exchange=h&limit=5000",
        "limit=5",
        "exchange=h&after=x",
        "exchange=h&bogus=1",
        "exchange=h&filters=[1]",
    ] {
        let r = http.get(format!("{}/v1/history?{bad}", g.base)).send().await.expect("history");
        assert_eq!(r.status(), 400, "{bad}");
        let v: Value = r.json().await.expect("json error body");
        assert_eq!(v["error"]["code"], "bad_request", "{bad}");
    }
}
