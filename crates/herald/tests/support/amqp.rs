//! RabbitMQ for tests: names of their own, a topic exchange, and whether a
//! binding is in place (`rabbitmqctl`).
#![allow(dead_code, unreachable_pub, missing_docs)]

use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use std::time::Duration;

pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn names(tag: &str) -> (String, String) {
    let n = format!("herald-test-{tag}-{}-{}", std::process::id(), rand_suffix());
    (format!("{n}-x"), format!("{n}-q"))
}

pub fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos() as u64).unwrap_or(0)
}

pub fn bound(queue: &str, exchange: &str, pattern: &str) -> bool {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_bindings", "-q", "source_name", "destination_name", "routing_key"])
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        let f: Vec<&str> = l.split('\t').collect();
        f.len() == 3 && f[0] == exchange && f[1] == queue && f[2] == pattern
    })
}

/// A connection and channel to RabbitMQ, with the durable topic exchange `name` declared.
pub async fn declare_topic(name: &str) -> (Connection, lapin::Channel) {
    let conn = Connection::connect(URL, ConnectionProperties::default()).await.expect("RabbitMQ must be running");
    let ch = conn.create_channel().await.expect("channel");
    ch.exchange_declare(
        name.into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() },
        FieldTable::default(),
    )
    .await
    .expect("declare");
    (conn, ch)
}

pub async fn wait_bound(queue: &str, exchange: &str, pattern: &str, want: bool) -> bool {
    for _ in 0..50 {
        if bound(queue, exchange, pattern) == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
