//! Fault tests for the sources: kill -9 Herald, restart RabbitMQ, kill the
//! PostgreSQL backend, in the middle of a stream of thousands of events, then
//! check that every event arrived exactly once and in order. Run one at a
//! time: restarting RabbitMQ affects everyone.
#![allow(missing_docs, unreachable_pub)]

#[path = "e2e/common.rs"]
mod common;
#[path = "support/pg.rs"]
mod pg;

use common::*;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use pg::*;
use serde_json::{json, Value};
use std::time::Duration;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn names(tag: &str) -> (String, String) {
    let n = format!("herald-fault-{tag}-{}", std::process::id());
    (format!("{n}-x"), format!("{n}-q"))
}

fn config(exchange: &str, queue: &str) -> String {
    format!(
        "[[peer]]\nid = \"rabbit\"\ntype = \"amqp\"\n[peer.config]\nurl = \"{URL}\"\nqueue = \"{queue}\"\nbindings = [{{exchange = \"{exchange}\", pattern = \"#\"}}]\ndeclare_exchanges = true\nprefetch = 50\n"
    )
}

async fn connect() -> Connection {
    for _ in 0..120 {
        if let Ok(c) = Connection::connect(URL, ConnectionProperties::default()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("RabbitMQ is not reachable");
}

async fn publish(conn: &Connection, exchange: &str, range: std::ops::Range<u64>) {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    for i in range {
        let props = BasicProperties::default().with_message_id(format!("m{i}").into()).with_delivery_mode(2);
        ch.basic_publish(
            exchange.into(),
            "k".into(),
            BasicPublishOptions::default(),
            json!({"i": i}).to_string().as_bytes(),
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
}

async fn wait_peer_up(g: &Gateway) {
    wait_up(g, "rabbit").await;
}

/// Wait until peer `id` reports up (for PostgreSQL: connected and listening).
async fn wait_up(g: &Gateway, id: &str) {
    for _ in 0..100 {
        let r: Value = reqwest::get(format!("{}/readyz", g.base)).await.expect("readyz").json().await.expect("json");
        if r["peers"][id]["up"] == true {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the peer {id} never came up");
}

/// The next message is the event with payload `{key: i}`: published last, by
/// the same upstream, it shows that nothing (no duplicate) came before it.
async fn expect_sentinel_event(c: &mut Client, key: &str, i: u64) {
    let m = c.recv().await;
    assert_eq!((m["type"].as_str(), m["payload"][key].as_u64()), (Some("event"), Some(i)), "the sentinel next: {m}");
}

async fn log_head(g: &Gateway) -> u64 {
    match reqwest::get(format!("{}/readyz", g.base)).await {
        Ok(r) => r.json::<Value>().await.ok().and_then(|v| v["log_head"].as_u64()).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Read everything from the start; every i in 0..n exactly once, in order,
/// and nothing after them but a sentinel `i = n` sent through RabbitMQ last.
async fn assert_exactly_once_in_order(g: &Gateway, exchange: &str, n: u64) {
    for _ in 0..300 {
        if log_head(g).await >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut c, _) = g.hello().await;
    c.subscribe("all", binding(exchange, "#"), json!({"since": {"id": 0}})).await;
    let events = c.events(n as usize).await;
    let got: Vec<u64> = events.iter().map(|e| e["payload"]["i"].as_u64().expect("i")).collect();
    assert_eq!(got, (0..n).collect::<Vec<_>>(), "every message once, in order");
    // RabbitMQ delivers a queue in order, redeliveries first: a message
    // published now comes after any duplicate still on its way.
    let conn = connect().await;
    publish(&conn, exchange, n..n + 1).await;
    let _ = conn.close(200, "done".into()).await;
    expect_sentinel_event(&mut c, "i", n).await;
}

async fn cleanup(exchange: &str, queue: &str) {
    let conn = connect().await;
    let ch = conn.create_channel().await.expect("channel");
    let _ = ch.queue_delete(queue.into(), QueueDeleteOptions::default()).await;
    let _ = ch.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await;
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_herald_mid_stream_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let (exchange, queue) = names("kill");
    let mut g = Gateway::start_with(&config(&exchange, &queue));
    wait_peer_up(&g).await;
    let n = 3000u64;
    let conn = connect().await;
    let x = exchange.clone();
    let publisher = tokio::spawn(async move {
        publish(&conn, &x, 0..n).await;
        conn
    });
    // Kill while the stream is flowing.
    for _ in 0..300 {
        if log_head(&g).await >= 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_kill = log_head(&g).await;
    g.kill_and_restart();
    let conn = publisher.await.expect("publisher");
    let _ = conn.close(200, "done".into()).await;
    eprintln!("killed at log head {at_kill}; {n} messages in total");
    assert!(at_kill < n, "killed mid-stream");
    assert_exactly_once_in_order(&g, &exchange, n).await;
    drop(g);
    cleanup(&exchange, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_mid_stream_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let (exchange, queue) = names("restart");
    let g = Gateway::start_with(&config(&exchange, &queue));
    wait_peer_up(&g).await;
    let (mut watcher, _) = g.hello().await;
    watcher.subscribe("w", binding(&exchange, "#"), json!({})).await;
    let n = 2000u64;
    let conn = connect().await;
    publish(&conn, &exchange, 0..n / 2).await;
    let _ = conn.close(200, "restart".into()).await;
    let stop = std::process::Command::new("rabbitmqctl").arg("stop_app").output().expect("rabbitmqctl");
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    let start = std::process::Command::new("rabbitmqctl").arg("start_app").output().expect("rabbitmqctl");
    assert!(start.status.success(), "{}", String::from_utf8_lossy(&start.stderr));
    let conn = connect().await;
    publish(&conn, &exchange, n / 2..n).await;
    let _ = conn.close(200, "done".into()).await;
    // The watcher saw the source go down and come back.
    let mut states = Vec::new();
    while !(states.contains(&"down".to_string()) && states.last().map(String::as_str) == Some("up")) {
        let m = watcher.recv().await;
        if m["type"] == "status" {
            states.push(m["state"].as_str().unwrap_or("").to_string());
        }
    }
    assert_exactly_once_in_order(&g, &exchange, n).await;
    drop(g);
    cleanup(&exchange, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_become_events_with_acl_and_large_rows() {
    let _serial = SERIAL.lock().await;
    let (db, client) = pg_setup("e2e").await;
    let g = Gateway::start_with(&pg_config(&db));
    let (mut c, _) = g.hello().await;
    c.subscribe("s", binding("pg.logs", "k.*"), json!({})).await;
    wait_up(&g, "pg").await;
    insert(&client, 0, None, json!({"n": 0})).await;
    insert(&client, 1, Some("alice"), json!({"n": 1})).await; // ACL user:alice: not for anonymous
    insert(&client, 2, None, json!({"n": 2, "big": "x".repeat(20_000)})).await; // far over NOTIFY's limit
    let evs = c.events(2).await;
    assert_eq!(evs[0]["payload"]["n"], 0);
    assert_eq!(evs[0]["routing_key"], "k.0");
    assert_eq!(evs[0]["exchange"], "pg.logs");
    assert_eq!(evs[1]["payload"]["n"], 2);
    assert_eq!(evs[1]["payload"]["big"].as_str().map(str::len), Some(20_000));
    // Not alice's row: a row inserted after it comes next.
    insert(&client, 3, None, json!({"n": 3})).await;
    expect_sentinel_event(&mut c, "n", 3).await;
    drop(g);
    pg_cleanup(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backend_killed_and_herald_killed_mid_stream_lose_and_duplicate_nothing() {
    let _serial = SERIAL.lock().await;
    let (db, client) = pg_setup("fault").await;
    let mut g = Gateway::start_with(&pg_config(&db));
    wait_up(&g, "pg").await;
    let n = 3000u64;
    let writer = tokio::spawn(async move {
        for i in 0..n {
            insert(&client, i, None, json!({"i": i})).await;
        }
        client
    });
    let admin = pg("postgres").await;
    for _ in 0..300 {
        if log_head(&g).await >= 800 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = admin
        .query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'herald-pg'", &[])
        .await
        .expect("terminate");
    assert_eq!(killed.len(), 1, "Herald's LISTEN backend was terminated");
    for _ in 0..300 {
        if log_head(&g).await >= 1800 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_kill = log_head(&g).await;
    g.kill_and_restart();
    let client = writer.await.expect("writer");
    eprintln!("PostgreSQL backend killed at about 800, Herald killed at log head {at_kill}; {n} rows in total");
    assert!(at_kill < n, "Herald was killed mid-stream");
    let mut got = Vec::new();
    let (mut c, _) = g.hello().await;
    c.subscribe("all", binding("pg.logs", "#"), json!({"since": {"id": 0}})).await;
    for e in c.events(n as usize).await {
        got.push(e["payload"]["i"].as_u64().expect("i"));
    }
    assert_eq!(got, (0..n).collect::<Vec<_>>(), "every row once, in order");
    // No duplicate after them: a row inserted now comes next.
    insert(&client, n, None, json!({"i": n})).await;
    expect_sentinel_event(&mut c, "i", n).await;
    drop(g);
    pg_cleanup(&db).await;
}
