//! Fault tests for the RabbitMQ source: kill -9 Herald and restart RabbitMQ
//! in the middle of a stream, then check that every message arrived exactly
//! once and in order. Run one at a time: restarting RabbitMQ affects everyone.
#![allow(missing_docs, unreachable_pub)]

#[path = "e2e/common.rs"]
mod common;

use common::*;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
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

async fn log_head(g: &Gateway) -> u64 {
    match reqwest::get(format!("{}/readyz", g.base)).await {
        Ok(r) => r.json::<Value>().await.ok().and_then(|v| v["log_head"].as_u64()).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Read everything from the start; every i in 0..n exactly once, in order.
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
    c.expect_silence(Duration::from_millis(500)).await;
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
    for _ in 0..100 {
        if reqwest::get(format!("{}/readyz", g.base)).await.expect("readyz").json::<Value>().await.expect("json")
            ["peers"]["rabbit"]["up"]
            == true
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
