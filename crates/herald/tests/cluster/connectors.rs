//! Connectors in a cluster: one RabbitMQ queue consumed by every node, its
//! dynamic bindings counted cluster-wide, and a PostgreSQL source that runs
//! on one node at a time.

use super::amqp::*;
use super::common::*;
use super::pg::*;
use super::NatsCluster;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::BasicProperties;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

async fn get(url: String) -> Value {
    reqwest::get(url).await.expect("get").json().await.expect("json")
}

/// Wait until `g`'s peer `id` says it is up (or standby).
async fn wait_peer_up(g: &Gateway, id: &str) {
    for _ in 0..200 {
        if get(format!("{}/readyz", g.base)).await["peers"][id]["up"] == true {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("peer {id} never came up on {}", g.base);
}

/// Every event of `exchange` in the log, read through `base`'s history pages.
async fn history(base: &str, exchange: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let page = get(format!("{base}/v1/history?exchange={exchange}&pattern=%23&after={after}&limit=1000")).await;
        out.extend(page["events"].as_array().expect("events").iter().cloned());
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => return out,
        }
    }
}

/// Until the log holds `n` events of `exchange` (or the time is up).
async fn wait_history(base: &str, exchange: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = history(base, exchange).await;
        if events.len() >= n || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn amqp_peer(exchange: &str, queue: &str, extra: &str) -> String {
    format!(
        "[[peer]]\nid = \"rabbit\"\ntype = \"amqp\"\n[peer.config]\nurl = \"{URL}\"\nqueue = \"{queue}\"\nbindings = [{{exchange = \"{exchange}\", pattern = \"#\"}}]\ndeclare_exchanges = true\nprefetch = 50\n{extra}"
    )
}

/// Three nodes consume one durable queue; 3,000 messages with a
/// `message_id` are published while one node is killed (-9) with
/// deliveries in hand: every message is in the log exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_one_queue_store_each_message_once_while_one_is_killed() {
    let nats = NatsCluster::start();
    let (exchange, queue) = names("cluster");
    let peer = amqp_peer(&exchange, &queue, "");
    let a = Gateway::start_with(&nats.herald_config("a", &peer));
    let mut b = Gateway::start_with(&nats.herald_config("b", &peer));
    let c = Gateway::start_with(&nats.herald_config("c", &peer));
    for g in [&a, &b, &c] {
        wait_peer_up(g, "rabbit").await;
    }
    let (conn, ch) = declare_topic(&exchange).await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let n = 3000u64;
    let mut confirms: Vec<lapin::PublisherConfirm> = Vec::new();
    for i in 0..n {
        if i == 1000 {
            for confirm in confirms.drain(..) {
                confirm.await.expect("confirm");
            }
            // Some stored, some in flight: kill a consumer with deliveries in hand.
            a.wait_metric("herald_log_head", 600.0).await;
            b.child.kill().expect("kill -9 node b");
            let _ = b.child.wait();
        }
        let props = BasicProperties::default().with_message_id(format!("m-{i}").into()).with_delivery_mode(2);
        let confirm = ch
            .basic_publish(
                exchange.as_str().into(),
                "k".into(),
                BasicPublishOptions::default(),
                json!({"i": i}).to_string().as_bytes(),
                props,
            )
            .await
            .expect("publish");
        confirms.push(confirm);
    }
    for confirm in confirms {
        confirm.await.expect("confirm");
    }
    let events = wait_history(&c.base, &exchange, n as usize).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in &events {
        *seen.entry(e["headers"]["message_id"].as_str().expect("message_id").to_string()).or_default() += 1;
    }
    let twice: Vec<&String> = seen.iter().filter(|(_, k)| **k > 1).map(|(m, _)| m).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    assert_eq!(seen.len(), n as usize, "every message stored ({} events)", events.len());
    // A sentinel after them: nothing more arrives (no late duplicate).
    let sentinel_props = BasicProperties::default().with_message_id("sentinel".into());
    ch.basic_publish(exchange.as_str().into(), "k".into(), BasicPublishOptions::default(), b"{}", sentinel_props)
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let events = wait_history(&c.base, &exchange, n as usize + 1).await;
    assert_eq!(events.len(), n as usize + 1);
    assert_eq!(events.last().expect("sentinel")["headers"]["message_id"], "sentinel");
    // Both survivors consumed: competing consumers, not one active node.
    let out = |g: &Gateway| {
        let url = format!("{}/v1/peers", g.base);
        async move { get(url).await["rabbit"]["out"].as_u64().unwrap_or(0) }
    };
    let (out_a, out_c) = (out(&a).await, out(&c).await);
    eprintln!("3,000 messages, node b killed: a stored {out_a}, c stored {out_c}, log holds {}", events.len());
    assert!(out_a > 0 && out_c > 0, "both nodes consumed: {out_a} / {out_c}");
    let _ = ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    let _ = conn.close(200, "done".into()).await;
}

/// A dynamic binding wanted on two nodes stays while either wants it, and
/// goes when the last subscription in the cluster ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_bindings_are_counted_across_nodes() {
    let nats = NatsCluster::start();
    let (exchange, queue) = names("clusterdyn");
    let dynamic = format!("{exchange}-dyn");
    let (conn, ch) = declare_topic(&dynamic).await;
    let peer = amqp_peer(&exchange, &queue, &format!("dynamic_exchanges = [\"{exchange}-dyn*\"]\n"));
    let a = Gateway::start_with(&nats.herald_config("a", &peer));
    let b = Gateway::start_with(&nats.herald_config("b", &peer));
    wait_peer_up(&a, "rabbit").await;
    wait_peer_up(&b, "rabbit").await;
    let (mut on_a, _) = a.hello().await;
    let (mut on_b, _) = b.hello().await;
    assert_eq!(on_a.subscribe("s", binding(&dynamic, "x.#"), json!({})).await["type"], "subscribed");
    assert!(wait_bound(&queue, &dynamic, "x.#", true).await, "bound on demand");
    assert_eq!(on_b.subscribe("s", binding(&dynamic, "x.#"), json!({})).await["type"], "subscribed");
    // A lets go; B still wants it: it stays bound past the grace.
    assert_eq!(on_a.request(json!({"type": "unsubscribe", "sub": "s"})).await["type"], "unsubscribed");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(bound(&queue, &dynamic, "x.#"), "still wanted on node b");
    ch.basic_publish(
        dynamic.as_str().into(),
        "x.1".into(),
        BasicPublishOptions::default(),
        b"{\"n\":1}",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let e = on_b.events(1).await;
    assert_eq!(e[0]["payload"]["n"], 1, "B's subscriber still gets events: {e:?}");
    // The last subscription in the cluster ends: unbound.
    assert_eq!(on_b.request(json!({"type": "unsubscribe", "sub": "s"})).await["type"], "unsubscribed");
    let mut gone = false;
    for _ in 0..100 {
        if !bound(&queue, &dynamic, "x.#") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "unbound once nobody in the cluster wants it");
    let _ = ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = ch.exchange_delete(dynamic.as_str().into(), ExchangeDeleteOptions::default()).await;
    let _ = ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    let _ = conn.close(200, "done".into()).await;
}

/// Which node leads the `pg` peer, from the cluster view.
async fn pg_leader(gateways: &[&Gateway]) -> Option<String> {
    for g in gateways {
        let peers = get(format!("{}/v1/peers", g.base)).await;
        if peers["pg"]["role"] == "leader" {
            return Some(g.base.clone());
        }
    }
    None
}

/// Three nodes with the same PostgreSQL source: one reads at a time; its
/// node is killed (-9) mid-stream of 3,000 rows, another takes over within
/// the lease TTL, and every row arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_leader_killed_mid_stream_loses_and_doubles_no_row() {
    let nats = NatsCluster::start();
    let (db, client) = pg_setup("cluster").await;
    let extra = format!("lease_ttl = \"2s\"\n{}", pg_config(&db));
    let mut nodes: Vec<Gateway> =
        ["a", "b", "c"].iter().map(|n| Gateway::start_with(&nats.herald_config(n, &extra))).collect();
    let mut leader = None;
    for _ in 0..100 {
        leader = pg_leader(&nodes.iter().collect::<Vec<_>>()).await;
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = leader.expect("one node leads the peer");
    let leaders = {
        let mut n = 0;
        for g in &nodes {
            if get(format!("{}/v1/peers", g.base)).await["pg"]["role"] == "leader" {
                n += 1;
            }
        }
        n
    };
    assert_eq!(leaders, 1, "exactly one leader");
    let total = 3000u64;
    let writer = tokio::spawn(async move {
        for i in 0..total {
            insert(&client, i, None, json!({"i": i})).await;
        }
        client
    });
    let i = nodes.iter().position(|g| g.base == leader).expect("leader node");
    let survivor = nodes[(i + 1) % 3].base.clone();
    for _ in 0..600 {
        if history(&survivor, "pg.logs").await.len() >= 1000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored_at_kill = history(&survivor, "pg.logs").await.len();
    nodes[i].child.kill().expect("kill -9 the leader");
    let _ = nodes[i].child.wait();
    let killed_at = Instant::now();
    assert!(stored_at_kill < total as usize, "killed mid-stream ({stored_at_kill} stored)");
    let client = writer.await.expect("writer");
    let events = wait_history(&survivor, "pg.logs", total as usize).await;
    let took = killed_at.elapsed();
    let got: Vec<u64> = events.iter().map(|e| e["payload"]["i"].as_u64().expect("i")).collect();
    assert_eq!(got, (0..total).collect::<Vec<_>>(), "every row once, in order");
    let rest: Vec<&Gateway> = nodes.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, g)| g).collect();
    let new_leader = pg_leader(&rest).await.expect("a new leader");
    eprintln!(
        "postgres leader {leader} killed; {new_leader} took over; all {total} rows stored {took:?} after the kill"
    );
    // Nothing doubled after them: a row inserted now comes next.
    insert(&client, total, None, json!({"i": total})).await;
    let events = wait_history(&survivor, "pg.logs", total as usize + 1).await;
    assert_eq!(events.len(), total as usize + 1);
    assert_eq!(events.last().expect("last")["payload"]["i"], total);
    drop(nodes);
    pg_cleanup(&db).await;
}
