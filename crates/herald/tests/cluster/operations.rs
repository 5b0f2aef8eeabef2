//! Operating a cluster: draining a node, peer status on every node, the
//! cluster view, metrics per node.

use super::common::*;
use super::NatsCluster;
use serde_json::{json, Value};

/// A drained node (SIGTERM) sends its clients `closing`; they resume on
/// another node with nothing lost and nothing twice, and the others see it
/// leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_nodes_clients_resume_on_the_others_without_loss() {
    let nats = NatsCluster::start();
    let fast = "[session]\nack_flush = \"50ms\"\n";
    let a = Gateway::start_with(&nats.herald_config("a", fast));
    let mut b = Gateway::start_with(&nats.herald_config("b", fast));
    let c = Gateway::start_with(&nats.herald_config("c", fast));
    // Three clients of B, each with a session and a subscription.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (mut client, w) = b.hello().await;
        assert_eq!(client.subscribe("s", binding("d", "#"), json!({})).await["type"], "subscribed");
        clients.push((client, w["session"].clone()));
    }
    let mut ids = a.publish_n("d", "k", 20).await;
    for (client, _) in &mut clients {
        let got = client.events(20).await;
        assert_eq!(super::common::ids(&got), ids);
        client.send(json!({"type": "ack", "sub": "s", "id": ids[9]})).await;
    }
    b.wait_metric("herald_session_writes_total{op=\"acks\"}", 1.0).await;
    let status = b.terminate();
    assert!(status.success(), "drained cleanly: {status}");
    for (client, _) in &mut clients {
        let closing = client.recv().await;
        assert_eq!(closing["type"], "closing", "{closing}");
    }
    ids.extend(a.publish_n("d", "k", 10).await);
    // A says B left.
    let view: Value = reqwest::get(format!("{}/v1/cluster", a.base)).await.expect("view").json().await.expect("json");
    let b_view = view["nodes"].as_array().expect("nodes").iter().find(|n| n["node"] == "b").cloned();
    assert_eq!(b_view.as_ref().map(|n| n["state"].clone()), Some(json!("left")), "{view}");
    let mut resumed = Vec::new();
    for (n, (_, session)) in clients.into_iter().enumerate() {
        let target = if n % 2 == 0 { &a } else { &c };
        let mut client = target.client().await;
        let w = client.request(json!({"type": "hello", "session": session})).await;
        assert_eq!(w["resumed"], true, "{w}");
        let got = client.events(20).await;
        assert_eq!(super::common::ids(&got), ids[10..].to_vec(), "after the ack, once, in order");
        resumed.push(client);
    }
    let sentinel = a.publish_sentinel("d", "k").await;
    for client in &mut resumed {
        let next = client.events(1).await;
        assert_eq!(next[0]["id"], json!(sentinel), "nothing twice");
    }
}

/// A peer's `status` on one node reaches subscribers of its exchanges on
/// the others, naming the node; every metric carries the node's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_status_reaches_every_node_and_metrics_name_the_node() {
    let nats = NatsCluster::start();
    // A RabbitMQ peer that cannot connect (nothing listens on that port).
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let peer = format!(
        "[[peer]]\nid = \"broken\"\ntype = \"amqp\"\n[peer.config]\nurl = \"amqp://guest:guest@127.0.0.1:{port}/%2f\"\nqueue = \"q\"\nbindings = [{{exchange = \"st\", pattern = \"#\"}}]\n"
    );
    let b = Gateway::start_with(&nats.herald_config("b", ""));
    let (mut client, _) = b.hello().await;
    assert_eq!(client.subscribe("s", binding("st", "#"), json!({})).await["type"], "subscribed");
    // Node a runs the peer; b does not, yet its subscriber hears a's status.
    let a = Gateway::start_with(&nats.herald_config("a", &peer));
    let m = client.recv().await;
    assert_eq!(
        (m["type"].as_str(), m["source"].as_str(), m["state"].as_str()),
        (Some("status"), Some("broken"), Some("down")),
        "{m}"
    );
    assert_eq!(m["node"], "a", "{m}");
    let metrics = reqwest::get(format!("{}/metrics", a.base)).await.expect("metrics").text().await.expect("text");
    let lines: Vec<&str> = metrics.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    assert!(!lines.is_empty());
    assert!(
        lines.iter().all(|l| l.contains("node=\"a\"")),
        "every series names the node: {:?}",
        lines.iter().find(|l| !l.contains("node=\"a\""))
    );
}
