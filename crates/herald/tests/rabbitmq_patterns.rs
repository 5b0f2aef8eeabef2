//! Herald's topic matching held against the RabbitMQ server itself: the same
//! patterns bound to a real topic exchange, the same routing keys published,
//! and every (pattern, key) answer compared.
//!
//! Needs RabbitMQ on 127.0.0.1:5672 (guest/guest), or `HERALD_TEST_AMQP_URL`;
//! it lives with the other tests that need services (`.ci/run` starts them),
//! so that `cargo test -p herald-core` needs none.
#![allow(missing_docs)]

use herald_core::{Pattern, PatternIndex};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use std::collections::BTreeSet;

fn sequences(alphabet: &[&str], max_len: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut frontier: Vec<Vec<&str>> = vec![vec![]];
    for _ in 0..=max_len {
        let mut next = Vec::new();
        for seq in &frontier {
            out.insert(seq.join("."));
            for w in alphabet {
                let mut s = seq.clone();
                s.push(w);
                next.push(s);
            }
        }
        frontier = next;
    }
    out
}

#[tokio::test]
async fn matcher_agrees_with_rabbitmq() {
    let url = std::env::var("HERALD_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be running for this test");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let exchange = format!("herald-test-patterns-{}", std::process::id());
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange");

    let patterns: Vec<String> = sequences(&["a", "b", "", "*", "#", "a*"], 3).into_iter().collect();
    let keys: Vec<String> = sequences(&["a", "b", "", "a*"], 3).into_iter().collect();
    let mut queues = Vec::new();
    let mut index = PatternIndex::new();
    for (i, p) in patterns.iter().enumerate() {
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("queue");
        ch.queue_bind(
            q.name().clone(),
            exchange.as_str().into(),
            p.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
        queues.push(q.name().clone());
        index.insert("x", &Pattern::parse(p).expect("pattern"), i);
    }
    for (k, key) in keys.iter().enumerate() {
        ch.basic_publish(
            exchange.as_str().into(),
            key.as_str().into(),
            BasicPublishOptions::default(),
            k.to_string().as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for (i, q) in queues.iter().enumerate() {
        let mut routed = BTreeSet::new();
        while let Some(msg) = ch.basic_get(q.clone(), BasicGetOptions { no_ack: true }).await.expect("get") {
            let k: usize = std::str::from_utf8(&msg.delivery.data).expect("utf8").parse().expect("index");
            routed.insert(k);
        }
        let pattern = Pattern::parse(&patterns[i]).expect("pattern");
        for (k, key) in keys.iter().enumerate() {
            checked += 1;
            let rabbit = routed.contains(&k);
            let ours = pattern.matches(key);
            let indexed = index.matches("x", key).contains(&i);
            if rabbit != ours || rabbit != indexed {
                mismatches.push(format!(
                    "pattern {:?} key {:?}: rabbitmq {rabbit}, matcher {ours}, index {indexed}",
                    patterns[i], key
                ));
            }
        }
    }
    ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await.expect("cleanup");
    let _ = conn.close(200, "done".into()).await;
    assert!(checked > 10_000, "{checked}");
    assert!(
        mismatches.is_empty(),
        "{} mismatches, e.g.:\n{}",
        mismatches.len(),
        mismatches.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}
