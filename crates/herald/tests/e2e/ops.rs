//! Operations: metrics and health.

use crate::common::*;
use serde_json::json;

async fn scrape(g: &Gateway) -> String {
    let resp = reqwest::get(format!("{}/metrics", g.base)).await.expect("metrics");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap_or("").contains("openmetrics-text"));
    resp.text().await.expect("text")
}

fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

#[tokio::test]
async fn metrics_follow_what_happens() {
    let g = Gateway::start();
    let (mut c, _) = g.hello().await;
    c.subscribe("s", binding("m", "#"), json!({})).await;
    g.publish_n("m", "k", 3).await;
    assert_eq!(ids(&c.events(3).await), vec![1, 2, 3]);
    c.request(json!({"type": "publish", "exchange": "m", "routing_key": "k", "payload": 1})).await;
    c.events(1).await;
    let (mut r, _) = g.hello().await;
    r.subscribe("old", binding("m", "#"), json!({"since": {"id": 0}})).await;
    r.events(4).await;
    let t = scrape(&g).await;
    assert!(t.ends_with("# EOF\n"));
    assert_eq!(value(&t, "herald_connections"), 2.0);
    assert_eq!(value(&t, "herald_subscriptions"), 2.0);
    assert_eq!(value(&t, "herald_sessions"), 2.0);
    assert_eq!(value(&t, "herald_log_head"), 4.0);
    assert_eq!(value(&t, "herald_events_in_total"), 4.0);
    assert_eq!(value(&t, "herald_deliveries_total"), 4.0);
    assert_eq!(value(&t, "herald_replayed_events_total"), 4.0);
    assert_eq!(value(&t, "herald_published_events_total{transport=\"http\"}"), 3.0);
    assert_eq!(value(&t, "herald_published_events_total{transport=\"ws\"}"), 1.0);
    assert_eq!(value(&t, "herald_publish_to_deliver_seconds_count"), 4.0);
    assert!(value(&t, "herald_log_bytes") > 0.0);
}

#[tokio::test]
async fn health_and_readiness() {
    let g = Gateway::start();
    let h = reqwest::get(format!("{}/healthz", g.base)).await.expect("healthz");
    assert_eq!(h.status(), 200);
    let r: serde_json::Value =
        reqwest::get(format!("{}/readyz", g.base)).await.expect("readyz").json().await.expect("json");
    assert_eq!(r["status"], "ready");
}

#[tokio::test]
async fn inspector_files_are_served_from_the_binary() {
    let g = Gateway::start();
    for (path, kind) in [
        ("/inspector", "text/html"),
        ("/inspector/", "text/html"),
        ("/inspector/herald.js", "text/javascript"),
        ("/inspector/inspector.js", "text/javascript"),
        ("/inspector/inspector.css", "text/css"),
    ] {
        let r = reqwest::get(format!("{}{path}", g.base)).await.expect("inspector");
        assert_eq!(r.status(), 200, "{path}");
        let headers = r.headers().clone();
        assert!(headers["content-type"].to_str().unwrap_or("").starts_with(kind), "{path}: {headers:?}");
        assert!(headers["content-security-policy"].to_str().unwrap_or("").contains("frame-ancestors 'none'"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(!r.text().await.expect("body").is_empty());
    }
    let client =
        reqwest::get(format!("{}/inspector/herald.js", g.base)).await.expect("get").text().await.expect("text");
    assert!(client.contains("export class HeraldClient"), "the client library itself");
    let missing = reqwest::get(format!("{}/inspector/../Cargo.toml", g.base)).await.expect("get");
    assert_eq!(missing.status(), 404);
    let missing = reqwest::get(format!("{}/inspector/nope.js", g.base)).await.expect("get");
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn tls_with_a_certificate_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ok = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let g =
        Gateway::start_with(&format!("[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n", cert.display(), key.display()));
    assert!(g.base.starts_with("https://"), "{}", g.base);
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&cert)
        .arg(format!("{}/healthz", g.base))
        .output()
        .expect("curl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), r#"{"status":"ok"}"#);
    let plain = reqwest::get(format!("http://{}/healthz", g.addr)).await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true), "plain HTTP is not served on the TLS port");
    let bad = Gateway::try_start_with("[tls]\ncert_file = \"/nonexistent.pem\"\nkey_file = \"/nonexistent.key\"\n");
    assert!(bad.contains("tls: cannot load"), "{bad}");
}

#[tokio::test]
async fn stream_lifecycle_events_on_herald_streams() {
    let g = Gateway::start_with("stream_events = true\n");
    let (mut observer, _) = g.hello().await;
    observer.subscribe("st", binding("herald.streams", "ws.*"), json!({})).await;
    let (mut c, w) = g.hello().await;
    c.ws.close(None).await.expect("close");
    // (The observer's own start may also show up: it is stored asynchronously.)
    let mut start = None;
    let end = loop {
        let e = observer.events(1).await.remove(0);
        if e["routing_key"] == "ws.start" && e["payload"]["session"] == w["session"]["id"] {
            start = Some(e);
        } else if e["routing_key"] == "ws.end" {
            break e;
        }
    };
    let start = start.expect("the start came before the end");
    assert_eq!(end["payload"]["end"], "closed");
    assert_eq!(start["payload"]["stream"], end["payload"]["stream"]);
    assert_eq!(start["payload"]["peer"], "ws");
}
