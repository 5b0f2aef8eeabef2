//! The RabbitMQ source against the real RabbitMQ on this machine.

use crate::amqp_support::*;
use crate::common::*;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};
use std::time::Duration;

fn peer_config(exchange: &str, queue: &str, url: &str) -> String {
    format!(
        "heartbeat = \"300ms\"\n[[peer]]\nid = \"rabbit\"\ntype = \"amqp\"\ncodec = \"json\"\ninterceptors = [{{type = \"size_guard\", max_bytes = 10000}}]\n[peer.config]\nurl = \"{url}\"\nqueue = \"{queue}\"\nbindings = [{{exchange = \"{exchange}\", pattern = \"orders.#\"}}]\ndeclare_exchanges = true\nprefetch = 100\n"
    )
}

async fn readyz(g: &Gateway) -> Value {
    reqwest::get(format!("{}/readyz", g.base)).await.expect("readyz").json().await.expect("json")
}

/// `/v1/peers` (the gateways here have no authentication).
async fn peer_list(g: &Gateway) -> Value {
    reqwest::get(format!("{}/v1/peers", g.base)).await.expect("peers").json().await.expect("json")
}

/// Wait until the peer's number of wanted dynamic bindings is `n`.
async fn wait_dynamic_bindings(g: &Gateway, n: u64) {
    for _ in 0..100 {
        if peer_list(g).await["rabbit"]["dynamic_bindings"] == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the peer never held {n} dynamic bindings: {}", peer_list(g).await);
}

async fn wait_up(g: &Gateway) {
    for _ in 0..100 {
        if readyz(g).await["peers"]["rabbit"]["up"] == true {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the peer never came up: {}", readyz(g).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_messages_become_events_acked_only_when_durable() {
    let (exchange, queue) = names("src");
    let g = Gateway::start_with(&peer_config(&exchange, &queue, URL));
    wait_up(&g).await;
    let (mut c, _) = g.hello().await;
    c.subscribe("s", binding(&exchange, "#"), json!({})).await;

    let conn = Connection::connect(URL, ConnectionProperties::default()).await.expect("RabbitMQ must be running");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let n = 500u64;
    for i in 0..n {
        let mut headers = FieldTable::default();
        headers.insert("trace".into(), AMQPValue::LongString(format!("t{i}").into()));
        let key = if i % 2 == 0 { "orders.eu" } else { "orders.us.created" };
        ch.basic_publish(
            exchange.as_str().into(),
            key.into(),
            BasicPublishOptions::default(),
            json!({"i": i}).to_string().as_bytes(),
            BasicProperties::default().with_headers(headers),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    // Not JSON, and too big: rejected, never delivered; not routed: never seen.
    for body in [b"not json".to_vec(), vec![b'1'; 20_000]] {
        ch.basic_publish(
            exchange.as_str().into(),
            "orders.bad".into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    ch.basic_publish(
        exchange.as_str().into(),
        "other.key".into(),
        BasicPublishOptions::default(),
        b"{}",
        BasicProperties::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");

    let evs = c.events(n as usize).await;
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e["payload"]["i"], i as u64, "in order, once");
        assert_eq!(e["exchange"], exchange.as_str());
        assert_eq!(e["headers"]["trace"], format!("t{i}"));
    }
    assert_eq!(evs[1]["routing_key"], "orders.us.created");
    // The two bad messages, queued after the 500, have been dealt with (rejected) ...
    g.wait_metric("herald_peer_err_total{peer=\"rabbit\"}", 2.0).await;
    // ... and became no event: a sentinel published now comes next.
    c.expect_sentinel_next(&g, &exchange, "orders.sentinel", &["s"]).await;

    // Everything was acknowledged (after being stored): the queue is empty.
    assert_eq!(ready_count(&ch, &queue).await, 0);
    let metrics = reqwest::get(format!("{}/metrics", g.base)).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("herald_peer_out_total{peer=\"rabbit\"} 500"), "{metrics}");
    assert!(metrics.contains("herald_peer_err_total{peer=\"rabbit\"} 2"), "{metrics}");
    assert!(metrics.contains("herald_peer_up{peer=\"rabbit\"} 1"), "{metrics}");

    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.expect("cleanup queue");
    ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await.expect("cleanup exchange");
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_reported_down_to_subscribers_and_readyz() {
    let (exchange, queue) = names("down");
    let g = Gateway::start_with(&peer_config(&exchange, &queue, "amqp://guest:guest@127.0.0.1:1/%2f"));
    let (mut c, _) = g.hello().await;
    // Wait for the first failed attempt to connect (the peer starts out down, "starting").
    for _ in 0..100 {
        if readyz(&g).await["peers"]["rabbit"]["detail"] != "starting" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = readyz(&g).await;
    assert_ne!(r["peers"]["rabbit"]["detail"], "starting", "the peer never tried to connect: {r}");
    c.subscribe("s", binding(&exchange, "#"), json!({})).await;
    let m = c.recv().await;
    assert_eq!(m["type"], "status", "{m}");
    assert_eq!(m["source"], "rabbit");
    assert_eq!(m["state"], "down");
    let r = readyz(&g).await;
    assert_eq!(r["status"], "degraded", "{r}");
    assert_eq!(r["peers"]["rabbit"]["up"], false);
}

#[test]
fn peer_configuration_is_checked() {
    let err = Gateway::try_start_with("[[peer]]\nid = \"p\"\ntype = \"kafka\"\n");
    assert!(err.contains("unknown type `kafka`"), "{err}");
    let err = Gateway::try_start_with(
        "[[peer]]\nid = \"p\"\ntype = \"amqp\"\n[peer.config]\nurl = \"http://x\"\nqueue = \"\"\nbindings = []\n",
    );
    assert!(err.contains("url must start") && err.contains("queue must be") && err.contains("bindings"), "{err}");
}

/// Messages ready (not handed to a consumer) in `queue`.
async fn ready_count(ch: &lapin::Channel, queue: &str) -> u32 {
    let q = ch
        .queue_declare(queue.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("queue exists");
    q.message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_bindings_are_made_on_demand_counted_capped_and_removed() {
    let (exchange, queue) = names("dyn");
    let dynamic = format!("{exchange}-dyn");
    let (conn, ch) = declare_topic(&dynamic).await;
    // A long heartbeat: rabbitmqctl takes a while and this client only reads in between.
    let cfg = peer_config(&exchange, &queue, URL).replace("heartbeat = \"300ms\"", "heartbeat = \"30s\"")
        + &format!("dynamic_exchanges = [\"{exchange}-dyn*\"]\nmax_dynamic_bindings = 1\n");
    let g = Gateway::start_with(&cfg);
    wait_up(&g).await;
    let (mut c, _) = g.hello().await;
    let s = c.subscribe("a", binding(&dynamic, "a.#"), json!({})).await;
    assert_eq!(s["type"], "subscribed", "{s}");
    assert_eq!(s["history"], "from_now");
    let s2 = c.subscribe("a2", binding(&dynamic, "a.#"), json!({})).await;
    assert_eq!(s2["type"], "subscribed", "the same binding is shared");
    let e = c.subscribe("b", binding(&dynamic, "b.#"), json!({})).await;
    assert_eq!(e["code"], "limit_exceeded", "capped: {e}");
    // Publish until the binding is in place (earlier messages are unroutable).
    let mut got = None;
    for i in 0..50 {
        ch.basic_publish(
            dynamic.as_str().into(),
            "a.x".into(),
            BasicPublishOptions::default(),
            json!({"i": i}).to_string().as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish");
        if let Ok(m) = c.try_recv(Duration::from_millis(200)).await {
            got = Some(m);
            break;
        }
    }
    let m = got.expect("an event through the dynamic binding");
    assert_eq!(m["type"], "event");
    assert_eq!(m["exchange"], dynamic.as_str());
    assert!(bound(&queue, &dynamic, "a.#"));
    c.request(json!({"type": "unsubscribe", "sub": "a"})).await;
    // The binding is still wanted (a2 holds it) ...
    assert_eq!(peer_list(&g).await["rabbit"]["dynamic_bindings"], 1, "still used by a2");
    // ... and still routes: a message published after the unsubscribe reaches a2.
    let probe = json!({"sentinel": "after unsubscribing a"});
    ch.basic_publish(
        dynamic.as_str().into(),
        "a.x".into(),
        BasicPublishOptions::default(),
        probe.to_string().as_bytes(),
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    loop {
        let m = c.recv().await;
        assert_eq!(m["type"], "event", "{m}");
        if m["payload"] == probe {
            assert_eq!(m["sub"], "a2", "only a2 is subscribed: {m}");
            break;
        }
        // Before it: more of the messages published while waiting for the binding.
        assert!(m["payload"]["i"].is_u64(), "{m}");
    }
    assert!(bound(&queue, &dynamic, "a.#"), "still used by a2");
    c.request(json!({"type": "unsubscribe", "sub": "a2"})).await;
    let mut gone = false;
    for _ in 0..50 {
        if !bound(&queue, &dynamic, "a.#") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "unbound when the last subscriber left");
    // A missing exchange is ignored without disturbing the peer.
    let s = c.subscribe("m", binding(&format!("{exchange}-dyn-missing"), "#"), json!({})).await;
    assert_eq!(s["type"], "subscribed");
    // The peer has looked for the exchange and dropped the binding it cannot make ...
    wait_dynamic_bindings(&g, 0).await;
    // ... without disturbing the peer.
    assert_eq!(readyz(&g).await["peers"]["rabbit"]["up"], true);
    let _ = ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = ch.exchange_delete(dynamic.as_str().into(), ExchangeDeleteOptions::default()).await;
    let _ = ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_pause_and_resume_without_losing_anything() {
    let (exchange, queue) = names("pause");
    let g = Gateway::start_with(
        &peer_config(&exchange, &queue, URL).replace("heartbeat = \"300ms\"", "heartbeat = \"30s\""),
    );
    wait_up(&g).await;
    let (mut c, _) = g.hello().await;
    c.subscribe("s", binding(&exchange, "#"), json!({})).await;
    let http = reqwest::Client::new();
    let r = http.post(format!("{}/v1/peers/rabbit/pause", g.base)).send().await.expect("pause");
    assert_eq!(r.status(), 200);
    let st = c.recv().await;
    assert_eq!((st["type"].as_str(), st["state"].as_str()), (Some("status"), Some("down")), "{st}");
    let peers: Value = http.get(format!("{}/v1/peers", g.base)).send().await.expect("list").json().await.expect("json");
    assert_eq!(peers["rabbit"]["control"], "paused");
    let conn = Connection::connect(URL, ConnectionProperties::default()).await.expect("RabbitMQ");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    for i in 0..20u64 {
        ch.basic_publish(
            exchange.as_str().into(),
            "orders.x".into(),
            BasicPublishOptions::default(),
            json!({"i": i}).to_string().as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    // RabbitMQ has handed all twenty to the paused consumer (prefetch 100): none is ready in the queue.
    let mut handed_over = false;
    for _ in 0..100 {
        if ready_count(&ch, &queue).await == 0 {
            handed_over = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(handed_over, "RabbitMQ never delivered the messages to the paused peer");
    // Paused, the peer takes none of them: a sentinel published now comes next ...
    c.expect_sentinel_next(&g, &exchange, "orders.sentinel", &["s"]).await;
    // ... and the peer has received nothing from its upstream.
    assert_eq!(peer_list(&g).await["rabbit"]["in"], 0);
    assert_eq!(http.post(format!("{}/v1/peers/nope/pause", g.base)).send().await.expect("pause").status(), 404);
    assert_eq!(http.post(format!("{}/v1/peers/rabbit/resume", g.base)).send().await.expect("resume").status(), 200);
    let mut got = Vec::new();
    while got.len() < 20 {
        let m = c.recv().await;
        if m["type"] == "event" {
            got.push(m["payload"]["i"].as_u64().unwrap_or(99));
        } else {
            assert_eq!((m["type"].as_str(), m["state"].as_str()), (Some("status"), Some("up")), "{m}");
        }
    }
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    let _ = ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    let _ = conn.close(200, "done".into()).await;
    // Operating peers needs an admin token.
    let secured = Gateway::start_with("[auth]\njwt_secret = \"peers-secret-0123456789\"\n");
    assert_eq!(http.get(format!("{}/v1/peers", secured.base)).send().await.expect("list").status(), 401);
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 60;
    let user = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "u", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(b"peers-secret-0123456789"),
    )
    .expect("sign");
    let r = http.get(format!("{}/v1/peers", secured.base)).bearer_auth(&user).send().await.expect("list");
    assert_eq!(r.status(), 403);
    let admin = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "ops", "exp": exp, "herald": {"admin": true}}),
        &jsonwebtoken::EncodingKey::from_secret(b"peers-secret-0123456789"),
    )
    .expect("sign");
    let r = http.get(format!("{}/v1/peers", secured.base)).bearer_auth(&admin).send().await.expect("list");
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc_routing_keys_route_like_in_rabbitmq() {
    let (exchange, queue) = names("cc");
    let g = Gateway::start_with(&peer_config(&exchange, &queue, URL));
    wait_up(&g).await;
    let (mut c, _) = g.hello().await;
    c.subscribe("cc", binding(&exchange, "orders.cc"), json!({})).await;
    c.subscribe("all", binding(&exchange, "#"), json!({})).await;
    let conn = Connection::connect(URL, ConnectionProperties::default()).await.expect("RabbitMQ");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let mut headers = FieldTable::default();
    headers.insert(
        "CC".into(),
        AMQPValue::FieldArray(
            vec![AMQPValue::LongString("orders.cc".into()), AMQPValue::LongString("orders.other".into())].into(),
        ),
    );
    // Routed to Herald's queue by the CC key only (the binding is orders.#).
    ch.basic_publish(
        exchange.as_str().into(),
        "misc.1".into(),
        BasicPublishOptions::default(),
        b"{\"n\":1}",
        BasicProperties::default().with_headers(headers),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    let evs = c.events(2).await;
    let subs: Vec<&str> = evs.iter().map(|e| e["sub"].as_str().unwrap_or("")).collect();
    assert_eq!(subs, vec!["cc", "all"], "each subscription once, although two CC keys match `#`");
    assert_eq!(evs[0]["routing_key"], "misc.1");
    assert_eq!(evs[0]["headers"]["CC"], json!(["orders.cc", "orders.other"]));
    // No second copy for `all`: a sentinel both subscriptions match comes next, once each.
    c.expect_sentinel_next(&g, &exchange, "orders.cc", &["cc", "all"]).await;
    let _ = ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    let _ = conn.close(200, "done".into()).await;
}

/// Wait until `bound(..)` is `want` (rabbitmqctl is slow: up to ~10 s).
/// Regression: a session restored after a crash held no leases, so the
/// dynamic binding it needed stayed on the durable queue for good once the
/// client resumed and unsubscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_binding_held_by_a_restored_session_is_removed_when_its_last_subscription_ends() {
    let (exchange, queue) = names("dynrestore");
    let dynamic = format!("{exchange}-dyn");
    let (conn, ch) = declare_topic(&dynamic).await;
    let cfg = peer_config(&exchange, &queue, URL).replace("heartbeat = \"300ms\"", "heartbeat = \"30s\"")
        + &format!("dynamic_exchanges = [\"{exchange}-dyn*\"]\n");
    let mut g = Gateway::start_with(&cfg);
    wait_up(&g).await;
    let (mut c, w) = g.hello().await;
    let s = c.subscribe("a", binding(&dynamic, "a.#"), json!({})).await;
    assert_eq!(s["type"], "subscribed", "{s}");
    assert!(wait_bound(&queue, &dynamic, "a.#", true).await, "bound on demand");

    // The subscription was stored before `subscribed`: kill -9 now.
    g.kill_and_restart();
    wait_up(&g).await;
    let mut c = g.client().await;
    let creds = json!({"id": w["session"]["id"], "secret": w["session"]["secret"]});
    let w2 = c.request(json!({"type": "hello", "session": creds})).await;
    assert_eq!(w2["resumed"], true, "{w2}");
    assert_eq!(c.recv().await["type"], "subscribed");
    let u = c.request(json!({"type": "unsubscribe", "sub": "a"})).await;
    assert_eq!(u["type"], "unsubscribed", "{u}");
    assert!(
        wait_bound(&queue, &dynamic, "a.#", false).await,
        "unbound when the restored session's last subscription ended"
    );

    let _ = ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = ch.exchange_delete(dynamic.as_str().into(), ExchangeDeleteOptions::default()).await;
    let _ = ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    let _ = conn.close(200, "done".into()).await;
}
