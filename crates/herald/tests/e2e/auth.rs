//! Authentication, grants and ACL, attacked from every side.

use crate::common::*;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

const SECRET: &str = "test-secret-of-at-least-16-bytes";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

fn sign(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

fn token(sub: &str, groups: &[&str], herald: Value) -> String {
    sign(json!({"sub": sub, "exp": now() + 3600, "groups": groups, "herald": herald}), SECRET)
}

fn secured() -> Gateway {
    Gateway::start_with(&format!("[auth]\njwt_secret = \"{SECRET}\"\nleeway = \"1s\"\n"))
}

async fn hello_with(g: &Gateway, token: &str) -> (Client, Value) {
    let mut c = g.client().await;
    let w = c.request(json!({"type": "hello", "token": token})).await;
    (c, w)
}

async fn refused(g: &Gateway, token: Option<&str>, why: &str) {
    let mut c = g.client().await;
    let mut hello = json!({"type": "hello"});
    if let Some(t) = token {
        hello["token"] = json!(t);
    }
    let e = c.request(hello).await;
    assert_eq!(e["code"], "unauthorized", "{why}: {e}");
    assert_eq!(c.expect_close().await, 4401, "{why}");
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let g = secured();
    refused(&g, None, "no token").await;
    refused(&g, Some("not.a.jwt"), "garbage").await;
    refused(&g, Some(&sign(json!({"sub": "a", "exp": now() + 60}), "another-secret-16-bytes!")), "wrong secret").await;
    refused(&g, Some(&sign(json!({"sub": "a", "exp": now() - 120}), SECRET)), "expired").await;
    refused(&g, Some(&sign(json!({"sub": "a", "exp": now() + 60, "nbf": now() + 120}), SECRET)), "not yet valid").await;
    refused(&g, Some(&sign(json!({"sub": "a"}), SECRET)), "no exp").await;
    refused(&g, Some(&sign(json!({"exp": now() + 60}), SECRET)), "no sub").await;
    let none = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub": "a", "exp": now() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    refused(&g, Some(&none), "other algorithm").await;
    let (_, w) = hello_with(&g, &token("alice", &[], json!({}))).await;
    assert_eq!(w["type"], "welcome", "{w}");
}

#[tokio::test]
async fn bindings_outside_grants_are_forbidden_and_events_are_clipped_to_grants() {
    let g = secured();
    let t = token("alice", &[], json!({"subscribe": [{"exchange": "team/*", "pattern": "eu.#"}]}));
    let (mut c, _) = hello_with(&g, &t).await;
    for (x, p) in [("other", "#"), ("team/orders", "us.#"), ("team", "eu.#")] {
        let e = c.subscribe("s", binding(x, p), json!({})).await;
        assert_eq!(e["code"], "forbidden", "{x} {p}: {e}");
    }
    // Overlapping but wider than the grant: allowed, clipped.
    let s = c.subscribe("wide", binding("team/orders", "#"), json!({})).await;
    assert_eq!(s["type"], "subscribed", "{s}");
    let s = c.subscribe("exact", binding("team/orders", "eu.*"), json!({})).await;
    assert_eq!(s["type"], "subscribed");
    g.publish(json!([
        {"exchange": "team/orders", "routing_key": "us.x", "payload": 1},
        {"exchange": "team/orders", "routing_key": "eu.x", "payload": 2},
        {"exchange": "team/orders", "routing_key": "eu", "payload": 3},
    ]))
    .await;
    let evs = c.events(3).await;
    let got: Vec<(String, u64)> =
        evs.iter().map(|e| (e["sub"].as_str().unwrap_or("").into(), e["id"].as_u64().unwrap_or(0))).collect();
    assert_eq!(got, vec![("wide".into(), 2), ("exact".into(), 2), ("wide".into(), 3)]);
    // Nothing else: a sentinel inside the grant, which both match, comes next.
    let sentinel = c.expect_sentinel_next(&g, "team/orders", "eu.sentinel", &["wide", "exact"]).await;
    // Replay is clipped the same way (the sentinel is history now, inside the grant).
    let s = c.subscribe("old", binding("team/orders", "#"), json!({"since": {"id": 0}})).await;
    assert_eq!(s["type"], "subscribed");
    assert_eq!(ids(&c.events(3).await), vec![2, 3, sentinel]);
    c.expect_sentinel_next(&g, "team/orders", "eu.sentinel", &["wide", "exact", "old"]).await;
}

#[tokio::test]
async fn acl_limits_events_to_named_users_and_groups_live_replay_and_resume() {
    let g = secured();
    let all = json!({"subscribe": [{"exchange": "*", "pattern": "#"}], "publish": [{"exchange": "*", "pattern": "#"}]});
    let (mut alice, w) = hello_with(&g, &token("alice", &["ops"], all.clone())).await;
    let (mut bob, _) = hello_with(&g, &token("bob", &["dev"], all.clone())).await;
    alice.subscribe("s", binding("x", "#"), json!({})).await;
    bob.subscribe("s", binding("x", "#"), json!({})).await;
    let publish =
        |acl: Value| json!({"type": "publish", "exchange": "x", "routing_key": "k", "payload": 0, "acl": acl});
    for acl in [json!(["user:alice"]), json!(["group:dev"]), json!(["group:ops", "user:carol"]), json!(["user:carol"])]
    {
        assert_eq!(bob.request(publish(acl)).await["type"], "published");
    }
    assert_eq!(ids(&alice.events(2).await), vec![1, 3]);
    assert_eq!(ids(&bob.events(1).await), vec![2]);
    // Nothing else for either: an event without an ACL, which both may see, comes next.
    let open = g.publish_sentinel("x", "k").await;
    alice.expect_next_events(open, &["s"]).await;
    bob.expect_next_events(open, &["s"]).await;
    let s = bob.subscribe("r", binding("x", "#"), json!({"since": {"id": 0}})).await;
    assert_eq!(s["type"], "subscribed");
    assert_eq!(ids(&bob.events(2).await), vec![2, open], "replay applies the ACL");
    let open = bob.expect_sentinel_next(&g, "x", "k", &["s", "r"]).await;
    alice.expect_next_events(open, &["s"]).await;
    // Resume applies it too, and only alice may resume alice's session.
    alice.send(json!({"type": "ack", "sub": "s", "id": open})).await;
    alice.request(json!({"type": "ping"})).await;
    alice.abort();
    let for_alice = bob.request(publish(json!(["user:alice"]))).await["id"].as_u64().expect("id");
    bob.request(publish(json!(["user:bob"]))).await;
    let creds = json!({"id": w["session"]["id"], "secret": w["session"]["secret"]});
    let mut thief = g.client().await;
    let e = thief.request(json!({"type": "hello", "token": token("bob", &[], all.clone()), "session": creds})).await;
    assert_eq!(e["code"], "unauthorized", "another user cannot resume the session: {e}");
    let mut alice = g.client().await;
    let w2 =
        alice.request(json!({"type": "hello", "token": token("alice", &["ops"], all.clone()), "session": creds})).await;
    assert_eq!(w2["resumed"], true, "{w2}");
    assert_eq!(ids(&alice.events(1).await), vec![for_alice]);
    // Not bob's event: a sentinel published after it comes next.
    alice.expect_sentinel_next(&g, "x", "k", &["s"]).await;
}

#[tokio::test]
async fn publishing_needs_a_publish_grant() {
    let g = secured();
    let t = token("p", &[], json!({"publish": [{"exchange": "in/*", "pattern": "ok.#"}]}));
    let (mut c, _) = hello_with(&g, &t).await;
    let e = c.request(json!({"type": "publish", "exchange": "in/a", "routing_key": "bad", "payload": 1})).await;
    assert_eq!(e["code"], "forbidden", "{e}");
    let ok = c.request(json!({"type": "publish", "exchange": "in/a", "routing_key": "ok.1", "payload": 1})).await;
    assert_eq!(ok["type"], "published");
    let http = reqwest::Client::new();
    let url = format!("{}/v1/publish", g.base);
    let body = json!({"exchange": "in/a", "routing_key": "ok", "payload": 1});
    assert_eq!(http.post(&url).json(&body).send().await.expect("post").status(), 401);
    assert_eq!(http.post(&url).bearer_auth("junk").json(&body).send().await.expect("post").status(), 401);
    assert_eq!(http.post(&url).bearer_auth(&t).json(&body).send().await.expect("post").status(), 200);
    let bad = json!([body, {"exchange": "out", "routing_key": "ok", "payload": 1}]);
    let resp = http.post(&url).bearer_auth(&t).json(&bad).send().await.expect("post");
    assert_eq!(resp.status(), 403);
    // Nothing of the refused batch was stored: the next id follows the last success.
    let next: Value =
        http.post(&url).bearer_auth(&t).json(&body).send().await.expect("post").json().await.expect("json");
    assert_eq!(next["id"], 3);
}

#[tokio::test]
async fn anonymous_access_only_where_configured() {
    let g = Gateway::start_with(&format!(
        "[auth]\njwt_secret = \"{SECRET}\"\n[auth.anonymous]\nsubscribe = [{{exchange = \"public\", pattern = \"#\"}}]\n"
    ));
    let (mut c, w) = g.hello().await;
    assert_eq!(w["type"], "welcome");
    assert_eq!(c.subscribe("p", binding("public", "#"), json!({})).await["type"], "subscribed");
    assert_eq!(c.subscribe("q", binding("private", "#"), json!({})).await["code"], "forbidden");
    let e = c.request(json!({"type": "publish", "exchange": "public", "routing_key": "", "payload": 1})).await;
    assert_eq!(e["code"], "forbidden");
}

#[tokio::test]
async fn browser_origins_are_checked() {
    let g = Gateway::start_with("[auth]\nallowed_origins = [\"https://app.example\"]\n");
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = g.ws_url().into_client_request().expect("request");
    req.headers_mut().insert("Origin", "https://evil.example".parse().expect("header"));
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected a 403, got {:?}", other.map(|_| ())),
    }
    let mut req = g.ws_url().into_client_request().expect("request");
    req.headers_mut().insert("Origin", "https://app.example".parse().expect("header"));
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
    // Non-browser clients send no Origin.
    let (_c, w) = g.hello().await;
    assert_eq!(w["type"], "welcome");
}

#[tokio::test]
async fn connections_close_when_the_token_expires() {
    let g =
        Gateway::start_with(&format!("heartbeat = \"300ms\"\n[auth]\njwt_secret = \"{SECRET}\"\nleeway = \"0s\"\n"));
    let t = sign(json!({"sub": "a", "exp": now() + 2, "herald": {}}), SECRET);
    let (mut c, w) = hello_with(&g, &t).await;
    assert_eq!(w["type"], "welcome");
    let e = c.recv().await;
    assert_eq!(e["code"], "unauthorized", "{e}");
    assert_eq!(c.expect_close().await, 4401);
}

#[tokio::test]
async fn es256_and_rs256_public_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (alg, genkey) in [
        ("ES256", vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        ("RS256", vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
    ] {
        let private = dir.path().join(format!("{alg}.key"));
        let public = dir.path().join(format!("{alg}.pub"));
        let ok = std::process::Command::new("openssl")
            .arg("genpkey")
            .args(&genkey)
            .arg("-out")
            .arg(&private)
            .status()
            .expect("openssl");
        assert!(ok.success());
        let ok = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .expect("openssl");
        assert!(ok.success());
        let g = Gateway::start_with(&format!(
            "[auth]\njwt_public_key_file = \"{}\"\njwt_algorithm = \"{alg}\"\n",
            public.display()
        ));
        let pem = std::fs::read(&private).expect("key");
        let (key, algorithm) = if alg == "ES256" {
            (jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("ec"), jsonwebtoken::Algorithm::ES256)
        } else {
            (jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("rsa"), jsonwebtoken::Algorithm::RS256)
        };
        let t =
            jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), &json!({"sub": "k", "exp": now() + 60}), &key)
                .expect("sign");
        let (_c, w) = hello_with(&g, &t).await;
        assert_eq!(w["type"], "welcome", "{alg}: {w}");
        refused(&g, Some(&sign(json!({"sub": "k", "exp": now() + 60}), SECRET)), "HS256 against a public key").await;
    }
}

#[tokio::test]
async fn herald_token_mints_usable_tokens() {
    let g = secured();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["token", "--sub", "cli", "--subscribe", "a=#", "--publish", "a=x.*", "--ttl", "10m"])
        .env("HERALD_JWT_SECRET", SECRET)
        .output()
        .expect("herald token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t = String::from_utf8(out.stdout).expect("utf8").trim().to_string();
    let (mut c, w) = hello_with(&g, &t).await;
    assert_eq!(w["type"], "welcome");
    assert_eq!(c.subscribe("s", binding("a", "#"), json!({})).await["type"], "subscribed");
    assert_eq!(c.subscribe("t", binding("b", "#"), json!({})).await["code"], "forbidden");
    assert_eq!(
        c.request(json!({"type": "publish", "exchange": "a", "routing_key": "x.y", "payload": 1})).await["type"],
        "published"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["token", "--sub", "x"])
        .env_remove("HERALD_JWT_SECRET")
        .output()
        .expect("run");
    assert!(!out.status.success(), "no secret, no token");
}

/// Revocation before expiry: by `jti` and by user, live connections closed
/// with 4401, new authentications refused, kept across a `kill -9`, and only
/// for admins.
#[tokio::test]
async fn revoked_tokens_are_refused_and_their_connections_closed() {
    let mut g = secured();
    let grants = json!({"subscribe": [{"exchange": "*", "pattern": "#"}]});
    let a1 = sign(json!({"sub": "alice", "exp": now() + 3600, "jti": "a1", "herald": grants}), SECRET);
    let a2 = sign(json!({"sub": "alice", "exp": now() + 3600, "jti": "a2", "herald": grants}), SECRET);
    let bob = sign(json!({"sub": "bob", "exp": now() + 3600, "iat": now() - 10, "herald": grants}), SECRET);
    let admin = sign(json!({"sub": "root", "exp": now() + 3600, "herald": {"admin": true}}), SECRET);
    let revoke = |token: String, body: Value| {
        let url = format!("{}/v1/admin/revoke", g.base);
        async move { reqwest::Client::new().post(url).bearer_auth(token).json(&body).send().await.expect("post") }
    };
    assert_eq!(revoke(a2.clone(), json!({"jti": "a1"})).await.status(), 403, "admins only");
    assert_eq!(revoke(admin.clone(), json!({"jti": "a1", "user": "x"})).await.status(), 400, "one of jti and user");

    let (mut alice1, _) = hello_with(&g, &a1).await;
    let (mut alice2, _) = hello_with(&g, &a2).await;
    let (mut bobc, _) = hello_with(&g, &bob).await;
    let r = revoke(admin.clone(), json!({"jti": "a1", "exp": now() + 3600})).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["closed"], 1, "{v}");
    let e = alice1.recv().await;
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("unauthorized")), "{e}");
    assert_eq!(alice1.expect_close().await, 4401);
    alice2.expect_pong_next().await; // the other token of the same user still works

    let r = revoke(admin.clone(), json!({"user": "bob"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(bobc.recv().await["code"], "unauthorized");
    assert_eq!(bobc.expect_close().await, 4401);
    // A token issued after the revocation works.
    let later = sign(json!({"sub": "bob", "exp": now() + 3600, "iat": now() + 2, "herald": grants}), SECRET);

    g.kill_and_restart();
    for t in [&a1, &bob] {
        let mut c = g.client().await;
        let e = c.request(json!({"type": "hello", "token": t})).await;
        assert_eq!(e["code"], "unauthorized", "still revoked after a crash: {e}");
        assert!(e["message"].as_str().unwrap_or("").contains("revoked"), "{e}");
        assert_eq!(c.expect_close().await, 4401);
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/publish", g.base))
        .bearer_auth(&a1)
        .json(&json!({"exchange": "x", "routing_key": "k", "payload": 1}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 401, "HTTP refuses it too");
    let (_, w) = hello_with(&g, &a2).await;
    assert_eq!(w["type"], "welcome");
    let (_, w) = hello_with(&g, &later).await;
    assert_eq!(w["type"], "welcome", "issued after the user's revocation");
    assert_eq!(g.metric("herald_revocations").await, 2.0);
}
