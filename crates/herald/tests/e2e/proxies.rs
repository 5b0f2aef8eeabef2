//! Behind proxies and in the open: per-address limits follow
//! `X-Forwarded-For` only from `server.trusted_proxies`, HTTP publish has a
//! per-user rate, and `/metrics` can require a token.

use crate::common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Open a WebSocket with `X-Forwarded-For: forwarded`; the HTTP status of a refusal.
async fn connect_as(g: &Gateway, forwarded: &str) -> Result<Client, u16> {
    let mut req = g.ws_url().into_client_request().expect("request");
    req.headers_mut().insert("x-forwarded-for", forwarded.parse().expect("header"));
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(Client::from_stream(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected {e}"),
    }
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    // The tests connect from 127.0.0.1: trusted here, so each forwarded client has its own quota.
    let g =
        Gateway::start_with("[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[limits]\nmax_connections_per_ip = 1\n");
    let _a = connect_as(&g, "203.0.113.5").await.expect("first client");
    let _b = connect_as(&g, "203.0.113.6").await.expect("another client behind the same proxy");
    assert_eq!(connect_as(&g, "198.51.100.1, 203.0.113.5").await.err(), Some(429), "the right-most entry counts");

    // Not trusted: the header is ignored and every connection is 127.0.0.1.
    let g = Gateway::start_with("[limits]\nmax_connections_per_ip = 1\n");
    let _a = connect_as(&g, "203.0.113.5").await.expect("first");
    assert_eq!(connect_as(&g, "203.0.113.6").await.err(), Some(429), "a client cannot pick its address");
}

#[tokio::test]
async fn http_publish_is_rate_limited_per_user() {
    let g = Gateway::start_with("[limits]\nhttp_publishes_per_second = 5\n");
    let client = reqwest::Client::new();
    let url = format!("{}/v1/publish", g.base);
    let event = json!({"exchange": "rate", "routing_key": "k", "payload": 1});
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let resp = client.post(&url).json(&event).send().await.expect("post");
        statuses.push((resp.status().as_u16(), resp.headers().get("retry-after").is_some()));
        if resp.status() == 429 {
            let v: Value = resp.json().await.expect("json");
            assert_eq!(v["error"]["code"], "limit_exceeded", "{v}");
        }
    }
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    assert!((10..30).contains(&ok), "a burst of twice the rate passes, then 429: {statuses:?}");
    assert!(statuses.iter().filter(|(s, _)| *s == 429).all(|(_, retry)| *retry), "429s carry Retry-After");
    assert_eq!(g.metric("herald_log_head").await, ok as f64, "refused publishes stored nothing");
    let (_, w) = g.hello().await;
    assert_eq!(w["limits"]["http_publishes_per_second"], 5, "advertised in welcome.limits");
}

#[tokio::test]
async fn metrics_can_require_a_token() {
    let g = Gateway::start_with("[metrics]\ntoken = \"metrics-token-0123456789\"\n");
    let url = format!("{}/metrics", g.base);
    let client = reqwest::Client::new();
    assert_eq!(client.get(&url).send().await.expect("get").status(), 401);
    assert_eq!(client.get(&url).bearer_auth("wrong-token-0123456789").send().await.expect("get").status(), 401);
    let ok = client.get(&url).bearer_auth("metrics-token-0123456789").send().await.expect("get");
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.expect("text").contains("herald_auth_failures_total 2"));
    let err = Gateway::try_start_with("[metrics]\ntoken = \"short\"\n");
    assert!(err.contains("metrics.token must be at least 16"), "{err}");
    let err = Gateway::try_start_with("[server]\ntrusted_proxies = [\"not-a-cidr\"]\n");
    assert!(err.contains("server.trusted_proxies"), "{err}");
}
