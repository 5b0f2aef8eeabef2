//! Which nodes are alive: every node publishes a heartbeat (its
//! [`NodeInfo`]) on `<prefix>.node` every third of `cluster.node_timeout`,
//! and every node keeps what it hears. A node unheard for the timeout is
//! lost; one that says `left` (an orderly shutdown) is gone at once.

use super::Cluster;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// What a node says of itself in each heartbeat (and `GET /v1/cluster` shows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct NodeInfo {
    /// `cluster.node`.
    pub(crate) node: String,
    /// `up`, `draining`, or `left` (its last heartbeat, at shutdown).
    pub(crate) state: String,
    /// When it started (Unix ms).
    pub(crate) started_ms: u64,
    /// When it sent this (Unix ms, its own clock).
    pub(crate) heartbeat_ms: u64,
    /// Open client connections (WebSocket and SSE).
    pub(crate) connections: usize,
    /// Sessions it holds (attached or detached).
    pub(crate) sessions: usize,
    /// Rendezvous responders registered on it.
    pub(crate) responders: usize,
    /// Its peers, and what each does there.
    pub(crate) peers: Vec<PeerRole>,
}

/// A peer as one node runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PeerRole {
    /// The peer's id.
    pub(crate) id: String,
    /// Its type (`amqp`, `postgres`, `sqs`).
    pub(crate) kind: String,
    /// `running` (every node runs it), `leader` or `standby` (one node at a
    /// time), or `paused`.
    pub(crate) role: String,
    /// Connected upstream.
    pub(crate) up: bool,
}

struct Seen {
    info: NodeInfo,
    at: Instant,
    /// When a new run of the node (another `started_ms`) was first heard;
    /// `None` for the first run heard.
    run_since: Option<Instant>,
}

/// Nodes heard from.
pub(crate) struct Registry {
    me: String,
    timeout: Duration,
    nodes: Mutex<HashMap<String, Seen>>,
}

impl Registry {
    pub(crate) fn new(me: String, timeout: Duration) -> Registry {
        Registry { me, timeout, nodes: Mutex::new(HashMap::new()) }
    }

    fn note(&self, info: NodeInfo) {
        let mut nodes = self.nodes.lock();
        let fresh = !nodes.contains_key(&info.node);
        if fresh && info.node != self.me {
            info!(node = %info.node, "A cluster node joined (first heartbeat).");
        }
        if info.state == "left" {
            info!(node = %info.node, "A cluster node left.");
        }
        let now = Instant::now();
        // A node that restarted under its name is a new run: what the old
        // one held is gone as surely as if it had been unheard.
        let run_since = match nodes.get(&info.node) {
            Some(seen) if seen.info.started_ms == info.started_ms => seen.run_since,
            Some(_) => {
                info!(node = %info.node, "A cluster node restarted.");
                Some(now)
            }
            None => None,
        };
        nodes.insert(info.node.clone(), Seen { info, at: now, run_since });
    }

    /// Whether `node` is lost for something it took at `since`: it said it
    /// left, it restarted after `since`, or nothing was heard of it for the
    /// timeout, counting from `since` when that is later (a node that just
    /// answered is not lost because its first heartbeat is due).
    pub(crate) fn lost(&self, node: &str, since: Instant) -> bool {
        if node == self.me {
            return false;
        }
        let nodes = self.nodes.lock();
        let (last, gone) = match nodes.get(node) {
            Some(seen) => (seen.at.max(since), seen.info.state == "left" || seen.run_since.is_some_and(|r| r > since)),
            None => (since, false),
        };
        gone || last.elapsed() > self.timeout
    }

    /// Every node heard from in the last minute, this one first, each with
    /// how long ago it was heard and whether it is lost.
    pub(crate) fn list(&self) -> Vec<(NodeInfo, Duration, bool)> {
        let nodes = self.nodes.lock();
        let mut out: Vec<(NodeInfo, Duration, bool)> = nodes
            .values()
            .filter(|s| s.at.elapsed() < Duration::from_secs(60))
            .map(|s| {
                let ago = s.at.elapsed();
                let lost = s.info.node != self.me && (s.info.state == "left" || ago > self.timeout);
                (s.info.clone(), ago, lost)
            })
            .collect();
        out.sort_by(|a, b| (a.0.node != self.me, &a.0.node).cmp(&(b.0.node != self.me, &b.0.node)));
        out
    }
}

/// Send this node's heartbeat every third of the timeout (what `info`
/// returns), and listen to everyone's.
pub(crate) async fn start(
    cluster: &Arc<Cluster>,
    info: impl Fn() -> NodeInfo + Send + Sync + 'static,
) -> Result<(), async_nats::SubscribeError> {
    let mut sub = cluster.client.subscribe(cluster.subject("node")).await?;
    let listener = cluster.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            match serde_json::from_slice::<NodeInfo>(&msg.payload) {
                Ok(info) => listener.nodes.note(info),
                Err(e) => debug!(error = %e, "A heartbeat that is not a node's; ignored."),
            }
        }
    });
    let sender = cluster.clone();
    let info = Arc::new(info);
    let every = cluster.nodes.timeout / 3;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let me = info();
            sender.nodes.note(me.clone());
            if let Err(e) = publish(&sender, &me).await {
                warn!(error = %e, "Could not send this node's heartbeat.");
            }
        }
    });
    Ok(())
}

/// Publish one heartbeat now (also the last one, `left`, at shutdown).
pub(crate) async fn publish(cluster: &Cluster, info: &NodeInfo) -> Result<(), async_nats::PublishError> {
    let json = serde_json::to_vec(info).unwrap_or_default();
    cluster.client.publish(cluster.subject("node"), json.into()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(node: &str, started_ms: u64, state: &str) -> NodeInfo {
        NodeInfo {
            node: node.into(),
            state: state.into(),
            started_ms,
            heartbeat_ms: 0,
            connections: 0,
            sessions: 0,
            responders: 0,
            peers: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_node_is_lost_when_unheard_when_it_left_or_when_it_restarted() {
        let r = Registry::new("me".into(), Duration::from_millis(50));
        let before = Instant::now();
        r.note(info("b", 1, "up"));
        assert!(!r.lost("b", before), "just heard");
        assert!(!r.lost("me", before), "never this node");
        assert!(!r.lost("c", Instant::now()), "not heard yet, but just answered");
        let taken = Instant::now();
        r.note(info("b", 1, "up"));
        assert!(!r.lost("b", taken), "the same run");
        r.note(info("b", 2, "up"));
        assert!(r.lost("b", taken), "a new run does not hold what the old one took");
        assert!(!r.lost("b", Instant::now()), "but holds what it takes now");
        r.note(info("c", 5, "left"));
        assert!(r.lost("c", Instant::now()), "left");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(r.lost("b", taken), "unheard for the timeout");
        let listed: Vec<(String, bool)> = r.list().into_iter().map(|(i, _, lost)| (i.node, lost)).collect();
        assert_eq!(listed, vec![("b".into(), true), ("c".into(), true)]);
    }
}
