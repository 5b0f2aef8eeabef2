//! Rendezvous over WebSocket and HTTP: requests reach one responder, each
//! answer reaches exactly its own requester, deadlines and grants hold.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A WebSocket responder of `service` answering `{"by": name, "echo": body}`
/// until aborted; returns how many it answered.
async fn ws_responder(g: &Gateway, service: &str, name: &str) -> tokio::task::JoinHandle<usize> {
    let (mut c, _) = g.hello().await;
    let r = c.request(json!({"type": "serve", "service": service})).await;
    assert_eq!(r["type"], "serving", "{r}");
    let name = name.to_string();
    tokio::spawn(async move {
        let mut answered = 0;
        loop {
            let Ok(m) = c.try_recv(Duration::from_secs(30)).await else { return answered };
            if m["type"] != "incoming" {
                continue;
            }
            let reply = c
                .request(json!({"type": "answer", "request": m["request"], "body": {"by": name, "echo": m["body"]}}))
                .await;
            assert_eq!(reply["type"], "answered", "{reply}");
            answered += 1;
        }
    })
}

/// An HTTP long-poll responder loop, answering like `ws_responder`.
fn http_responder(base: String, service: &str, name: &str) -> tokio::task::JoinHandle<usize> {
    let (service, name) = (service.to_string(), name.to_string());
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut answered = 0;
        loop {
            let Ok(resp) = http.post(format!("{base}/v1/rendezvous/{service}/poll?timeout_ms=2000")).send().await
            else {
                return answered;
            };
            if resp.status() == 204 {
                continue;
            }
            assert_eq!(resp.status(), 200);
            let m: Value = resp.json().await.expect("json");
            assert!(m["deadline_ms"].as_u64().expect("deadline") > 0);
            let r = http
                .post(format!("{base}/v1/rendezvous/answer/{}", m["request"].as_str().expect("id")))
                .json(&json!({"by": name, "echo": m["body"]}))
                .send()
                .await
                .expect("answer");
            assert_eq!(r.status(), 200, "{:?}", r.text().await);
            answered += 1;
        }
    })
}

#[tokio::test]
async fn websocket_requests_reach_one_responder_and_come_back_to_their_requester() {
    let g = Gateway::start();
    let mut responders = Vec::new();
    for i in 0..3 {
        responders.push(ws_responder(&g, "echo", &format!("r{i}")).await);
    }
    // One requester at a time: every responder is idle at each request, so
    // the rotation is exact.
    let (mut one, _) = g.hello().await;
    let mut turns = Vec::new();
    for n in 0..9 {
        let r = one.request(json!({"type": "request", "service": "echo", "body": n})).await;
        assert_eq!(r["body"]["echo"], n, "{r}");
        turns.push(r["body"]["by"].as_str().expect("by").to_string());
    }
    assert_eq!(&turns[0..3], &turns[3..6], "round robin: {turns:?}");
    assert_eq!(&turns[0..3], &turns[6..9], "round robin: {turns:?}");
    let mut distinct = turns[0..3].to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "three different responders in turn: {turns:?}");
    // Twenty at once: whoever is free takes the next waiting request.
    let mut requesters = Vec::new();
    for who in 0..20 {
        let url = g.ws_url();
        requesters.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await;
            c.request(json!({"type": "hello"})).await;
            let mut by = Vec::new();
            for n in 0..5 {
                let body = json!({"who": who, "n": n});
                let r = c.request(json!({"type": "request", "service": "echo", "body": body})).await;
                assert_eq!(r["type"], "response", "{r}");
                assert_eq!(r["body"]["echo"], body, "the answer to exactly this request");
                by.push(r["body"]["by"].as_str().expect("by").to_string());
            }
            by
        }));
    }
    let mut per_responder: HashMap<String, usize> = HashMap::new();
    for r in requesters {
        for by in r.await.expect("requester") {
            *per_responder.entry(by).or_default() += 1;
        }
    }
    assert_eq!(per_responder.values().sum::<usize>(), 100);
    assert_eq!(per_responder.len(), 3, "every responder took requests: {per_responder:?}");
    for r in responders {
        r.abort();
    }
}

#[tokio::test]
async fn http_requesters_and_long_poll_responders() {
    let g = Gateway::start();
    let pollers: Vec<_> = (0..2).map(|i| http_responder(g.base.clone(), "offers", &format!("p{i}"))).collect();
    // A WebSocket responder serves the same service beside the pollers.
    let ws = ws_responder(&g, "offers", "ws").await;
    let mut requesters = Vec::new();
    for who in 0..12 {
        let base = g.base.clone();
        requesters.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let body = json!({"offer": format!("sdp-{who}")});
            let resp = http.post(format!("{base}/v1/rendezvous/offers")).json(&body).send().await.expect("post");
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-type"], "application/json");
            let answer: Value = resp.json().await.expect("json");
            assert_eq!(answer["echo"], body);
            answer["by"].as_str().expect("by").to_string()
        }));
    }
    let mut by = Vec::new();
    for r in requesters {
        by.push(r.await.expect("requester"));
    }
    assert!(by.iter().any(|b| b.starts_with('p')), "pollers answered: {by:?}");
    // A text body travels as a JSON string; `Accept: text/plain` gets the bare text back.
    let (mut responder, _) = g.hello().await;
    responder.request(json!({"type": "serve", "service": "text"})).await;
    let base = g.base.clone();
    let asking = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{base}/v1/rendezvous/text"))
            .header("accept", "text/plain")
            .body("v=0 o=- 1 2 IN IP4 0.0.0.0")
            .send()
            .await
            .expect("post")
    });
    let inc = responder.recv().await;
    assert_eq!(inc["type"], "incoming");
    assert_eq!(inc["body"], "v=0 o=- 1 2 IN IP4 0.0.0.0");
    responder.request(json!({"type": "answer", "request": inc["request"], "body": "answer text"})).await;
    let resp = asking.await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("text"), "answer text");
    // A WebSocket requester of the HTTP-served service.
    let (mut c, _) = g.hello().await;
    let r = c.request(json!({"type": "request", "service": "offers", "body": 42})).await;
    assert_eq!(r["body"]["echo"], 42, "{r}");
    for p in pollers {
        p.abort();
    }
    ws.abort();
}

#[tokio::test]
async fn no_responder_is_unavailable_and_a_silent_one_times_out() {
    let g = Gateway::start_with("[rendezvous]\nmatch_timeout = \"200ms\"\nanswer_timeout = \"400ms\"\n");
    let (mut c, _) = g.hello().await;
    let started = Instant::now();
    let r = c.request(json!({"type": "request", "service": "nobody", "body": null})).await;
    assert_eq!((r["type"].as_str(), r["code"].as_str()), (Some("error"), Some("unavailable")), "{r}");
    assert!(r["message"].as_str().expect("message").contains("no responder"), "{r}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let http = reqwest::Client::new();
    let resp = http.post(format!("{}/v1/rendezvous/nobody", g.base)).json(&json!(1)).send().await.expect("post");
    assert_eq!(resp.status(), 503);
    let e: Value = resp.json().await.expect("json");
    assert_eq!(e["error"]["code"], "unavailable");

    // A responder that takes the request and never answers.
    let (mut silent, _) = g.hello().await;
    silent.request(json!({"type": "serve", "service": "slow"})).await;
    let r = c.request(json!({"type": "request", "service": "slow", "body": 1})).await;
    assert_eq!(r["code"], "timeout", "{r}");
    let inc = silent.recv().await;
    assert_eq!(inc["type"], "incoming");
    // Its late answer finds nobody waiting.
    let late = silent.request(json!({"type": "answer", "request": inc["request"], "body": 1})).await;
    assert_eq!(late["code"], "not_found", "{late}");
    // The slot was freed: the next request reaches it again, then times out over HTTP.
    let resp = http.post(format!("{}/v1/rendezvous/slow", g.base)).json(&json!(2)).send().await.expect("post");
    assert_eq!(resp.status(), 504);
    assert_eq!(silent.recv().await["body"], 2);
    // A request's own timeout_ms shortens the wait.
    let started = Instant::now();
    let r = c.request(json!({"type": "request", "service": "slow", "body": 3, "timeout_ms": 50})).await;
    assert_eq!(r["code"], "timeout", "{r}");
    assert!(started.elapsed() < Duration::from_millis(390), "{:?}", started.elapsed());
    let metrics = reqwest::get(format!("{}/metrics", g.base)).await.expect("metrics").text().await.expect("text");
    for line in [
        "herald_rendezvous_requests_total 5",
        "herald_rendezvous_unavailable_total 2",
        "herald_rendezvous_timeouts_total 3",
        "herald_rendezvous_responders 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn a_responder_that_disconnects_mid_request_fails_it_at_once() {
    let g = Gateway::start_with("[rendezvous]\nanswer_timeout = \"30s\"\n");
    let (mut responder, _) = g.hello().await;
    responder.request(json!({"type": "serve", "service": "flaky", "concurrency": 2})).await;
    let (mut c, _) = g.hello().await;
    c.send(json!({"type": "request", "ref": "a", "service": "flaky", "body": "x"})).await;
    c.send(json!({"type": "request", "ref": "b", "service": "flaky", "body": "y"})).await;
    // concurrency 2: both are handed over before any answer.
    assert_eq!(responder.recv().await["type"], "incoming");
    assert_eq!(responder.recv().await["type"], "incoming");
    let started = Instant::now();
    responder.abort();
    for _ in 0..2 {
        let r = c.recv().await;
        assert_eq!(r["code"], "unavailable", "{r}");
        assert!(r["message"].as_str().expect("message").contains("went away"), "{r}");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "not after the 30 s deadline");
}

#[tokio::test]
async fn an_answer_whose_requester_is_gone_is_told_so() {
    let g = Gateway::start();
    let (mut responder, _) = g.hello().await;
    responder.request(json!({"type": "serve", "service": "gone"})).await;
    let (mut c, _) = g.hello().await;
    c.send(json!({"type": "request", "ref": 1, "service": "gone", "body": 1})).await;
    let inc = responder.recv().await;
    c.abort();
    // The requester's connection is gone (with its pending request) once only the responder is counted.
    g.wait_metric_at_most("herald_connections", 1.0).await;
    let r = responder.request(json!({"type": "answer", "request": inc["request"], "body": 1})).await;
    assert_eq!(r["code"], "not_found", "{r}");
    assert!(r["message"].as_str().expect("message").contains("gone"), "{r}");

    // An HTTP requester that hangs up. Nothing shows when the gateway has
    // noticed (it drops the pending request with the connection), so a request
    // answered before that is tried again with a fresh one, a bounded number of times.
    let mut attempt = 0;
    let e: Value = loop {
        attempt += 1;
        let base = g.base.clone();
        let hung_up = tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().expect("client");
            http.post(format!("{base}/v1/rendezvous/gone")).json(&json!(2)).send().await.is_err()
        });
        let inc = responder.recv().await;
        assert!(hung_up.await.expect("task"));
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/rendezvous/answer/{}", g.base, inc["request"].as_str().expect("id")))
            .json(&json!("late"))
            .send()
            .await
            .expect("answer");
        if resp.status() == 404 {
            break resp.json().await.expect("json");
        }
        assert_eq!(resp.status(), 200, "answered before the hang-up was noticed, or refused: {:?}", resp.text().await);
        assert!(attempt < 20, "the gateway never noticed the HTTP requester hang up");
    };
    assert!(e["error"]["message"].as_str().expect("message").contains("gone"), "{e}");
}

fn token(secret: &str, sub: &str, herald: Value) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": sub, "exp": exp, "herald": herald}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

#[tokio::test]
async fn grants_decide_who_serves_and_who_requests() {
    let secret = "rendezvous-secret-16-bytes";
    let g = Gateway::start_with(&format!("[auth]\njwt_secret = \"{secret}\"\n"));
    let server_token = token(secret, "proxy", json!({"serve": ["snowflake"]}));
    let client_token = token(secret, "client", json!({"request": ["snowflake"]}));
    let hello = |t: String| {
        let url = g.ws_url();
        async move {
            let mut c = Client::connect(&url).await;
            let w = c.request(json!({"type": "hello", "token": t})).await;
            assert_eq!(w["type"], "welcome");
            c
        }
    };
    let mut proxy = hello(server_token.clone()).await;
    let r = proxy.request(json!({"type": "serve", "service": "other"})).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let r = proxy.request(json!({"type": "request", "service": "snowflake", "body": 1})).await;
    assert_eq!(r["code"], "forbidden", "serving does not grant requesting: {r}");
    assert_eq!(proxy.request(json!({"type": "serve", "service": "snowflake"})).await["type"], "serving");

    let mut client = hello(client_token.clone()).await;
    let r = client.request(json!({"type": "serve", "service": "snowflake"})).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    client.send(json!({"type": "request", "ref": "q", "service": "snowflake", "body": "offer"})).await;
    let inc = proxy.recv().await;
    // The requester may not answer its own request: it does not serve the service.
    let r = client.request(json!({"type": "answer", "request": inc["request"], "body": "forged"})).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    proxy.request(json!({"type": "answer", "request": inc["request"], "body": "answer"})).await;
    let r = client.recv().await;
    assert_eq!((r["type"].as_str(), r["body"].as_str()), (Some("response"), Some("answer")), "{r}");

    let http = reqwest::Client::new();
    let resp = http.post(format!("{}/v1/rendezvous/snowflake/poll", g.base)).bearer_auth(&client_token).send().await;
    assert_eq!(resp.expect("poll").status(), 403);
    let resp =
        http.post(format!("{}/v1/rendezvous/snowflake", g.base)).bearer_auth(&server_token).json(&1).send().await;
    assert_eq!(resp.expect("request").status(), 403);
    let resp = http.post(format!("{}/v1/rendezvous/snowflake", g.base)).json(&1).send().await;
    assert_eq!(resp.expect("request").status(), 401);
}

#[tokio::test]
async fn bad_rendezvous_input_gets_clear_errors() {
    let g = Gateway::start_with("[rendezvous]\nmax_body_bytes = 100\nmax_concurrency = 4\n");
    let (mut c, _) = g.hello().await;
    let big = "x".repeat(200);
    let cases = [
        (json!({"type": "request", "service": "s", "body": big}), "limit_exceeded"),
        (json!({"type": "request", "service": "", "body": 1}), "bad_request"),
        (json!({"type": "request", "service": "s"}), "bad_request"),
        (json!({"type": "serve", "service": "s", "concurrency": 0}), "bad_request"),
        (json!({"type": "serve", "service": "s", "concurrency": 5}), "bad_request"),
        (json!({"type": "unserve", "service": "s"}), "not_found"),
        (json!({"type": "answer", "request": "nope", "body": 1}), "not_found"),
        (json!({"type": "answer", "request": "nope", "body": big}), "limit_exceeded"),
    ];
    for (msg, code) in cases {
        let r = c.request(msg.clone()).await;
        assert_eq!(r["code"], code, "{msg} -> {r}");
    }
    assert_eq!(c.request(json!({"type": "serve", "service": "s", "concurrency": 4})).await["type"], "serving");
    assert_eq!(c.request(json!({"type": "serve", "service": "s"})).await["code"], "conflict");
    assert_eq!(c.request(json!({"type": "unserve", "service": "s"})).await["type"], "unserved");
    let http = reqwest::Client::new();
    let post = |path: &str, body: &'static str, json: bool| {
        let mut req = http.post(format!("{}{path}", g.base)).body(body);
        if json {
            req = req.header("content-type", "application/json");
        }
        req.send()
    };
    assert_eq!(post("/v1/rendezvous/s", "{not json", true).await.expect("post").status(), 400);
    assert_eq!(post("/v1/rendezvous/s", include_str!("rendezvous.rs"), false).await.expect("post").status(), 429);
    assert_eq!(post("/v1/rendezvous/answer/nope", "1", true).await.expect("post").status(), 404);
    // The connection is still fine.
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
}
