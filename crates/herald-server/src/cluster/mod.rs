//! Cluster coordination beyond the shared log (cluster mode only): which
//! nodes are alive, rendezvous across nodes, connector leadership, dynamic
//! bindings counted cluster-wide, and peer `status` for every node's
//! clients.
//!
//! All of it runs on NATS: core subjects under `<stream>_CTL.` (outside the
//! stream's own `<stream>.>`, so nothing here is stored as an event) and a
//! key-value bucket `<stream>_CLUSTER` for what must outlive a message
//! (leases, bindings wanted per node). See `docs/cluster.md`.

pub(crate) mod bindings;
pub(crate) mod lease;
pub(crate) mod nodes;
pub(crate) mod rendezvous;
pub(crate) mod status;

use async_nats::jetstream::{self, kv};
use herald_log::ClusterConfig;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// This node's handle on the cluster.
pub(crate) struct Cluster {
    /// The NATS connection for control traffic.
    pub(crate) client: async_nats::Client,
    /// This node's name (`cluster.node`).
    pub(crate) node: String,
    /// Prefix of control subjects: `<stream>_CTL`.
    pub(crate) prefix: String,
    /// The `<stream>_CLUSTER` bucket: leases and wanted bindings.
    pub(crate) kv: kv::Store,
    js: jetstream::Context,
    bucket: String,
    /// Nodes heard from, with their last heartbeat.
    pub(crate) nodes: Arc<nodes::Registry>,
    /// `cluster.lease_ttl`.
    pub(crate) lease_ttl: Duration,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.node).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connect for control traffic and open (or create) the bucket.
    pub(crate) async fn open(c: &ClusterConfig) -> Result<Arc<Cluster>, herald_log::LogError> {
        let client = herald_log::connect_nats(c, |_| {}).await?;
        let js = jetstream::new(client.clone());
        let bucket = format!("{}_CLUSTER", c.stream);
        // Per-message TTLs: a lease or a node's bindings vanish with the node.
        let kv = herald_log::open_bucket(&js, &bucket, c.replicas, "the cluster's leases and bindings").await?;
        let nodes = Arc::new(nodes::Registry::new(c.node.clone(), c.node_timeout));
        Ok(Arc::new(Cluster {
            client,
            node: c.node.clone(),
            prefix: format!("{}_CTL", c.stream),
            kv,
            js,
            bucket,
            nodes,
            lease_ttl: c.lease_ttl,
        }))
    }

    /// Write `key` in the bucket with a per-message TTL (whole seconds).
    pub(crate) async fn put_with_ttl(&self, key: &str, value: bytes::Bytes, ttl: Duration) -> Result<(), String> {
        let msg = jetstream::message::PublishMessage::build()
            .payload(value)
            .header("Nats-TTL", ttl.as_secs().max(1).to_string().as_str());
        let ack = self.js.send_publish(format!("$KV.{}.{key}", self.bucket), msg).await.map_err(|e| e.to_string())?;
        ack.await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// A control subject: `<prefix>.<rest>`.
    pub(crate) fn subject(&self, rest: &str) -> String {
        format!("{}.{rest}", self.prefix)
    }
}

/// A name (service, peer id) as one subject token or key part: the log's
/// injective escaping (`A-Z a-z 0-9 -` as they are, other bytes `_XX`).
pub(crate) fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    herald_log::subject::encode_token(name, &mut out);
    out
}

/// Join the cluster: control connection and bucket, rendezvous across
/// nodes, peer status relayed, dynamic bindings shared.
pub(crate) async fn start(
    c: &ClusterConfig,
    broker: &Arc<herald_core::Broker>,
    host: &Arc<crate::peers::GatewayHost>,
    peers: &crate::peers::Peers,
    session_ttl: Duration,
) -> Result<crate::state::ClusterParts, crate::ServerError> {
    let fail = |what: &str, e: String| crate::ServerError::Config(vec![format!("cluster: cannot {what}: {e}")]);
    let cluster = Cluster::open(c).await?;
    let rendezvous = rendezvous::ClusterRendezvous::start(
        cluster.client.clone(),
        cluster.node.clone(),
        cluster.prefix.clone(),
        cluster.nodes.clone(),
        broker.clone(),
    )
    .await
    .map_err(|e| fail("start rendezvous", e.to_string()))?;
    status::start(&cluster, host).await.map_err(|e| fail("relay peer status", e.to_string()))?;
    for (id, rt) in peers.iter() {
        if let Some(d) = &rt.dynamic {
            bindings::start(&cluster, id, d.clone(), session_ttl * 3)
                .await
                .map_err(|e| fail("share dynamic bindings", e))?;
        }
    }
    Ok(crate::state::ClusterParts { cluster, rendezvous })
}

/// When this process started (Unix ms), computed once: the others tell a
/// restart under the same name by it.
static STARTED_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// What this node says of itself in its heartbeat.
pub(crate) fn node_info(state: &crate::AppState, node: &str, leaving: bool) -> nodes::NodeInfo {
    let s = state.get();
    let now = herald_core::event::now_us() / 1000;
    let peers = s
        .peers
        .iter()
        .map(|(id, rt)| {
            let paused = *rt.control.borrow() == herald_connectors::Control::Pause;
            nodes::PeerRole {
                id: id.clone(),
                kind: rt.kind.to_string(),
                role: if paused { "paused".into() } else { rt.role.lock().to_string() },
                up: rt.stats.up.load(std::sync::atomic::Ordering::Relaxed),
            }
        })
        .collect();
    nodes::NodeInfo {
        node: node.to_string(),
        state: if leaving {
            "left"
        } else if s.is_draining() {
            "draining"
        } else {
            "up"
        }
        .into(),
        started_ms: *STARTED_MS.get_or_init(|| now.saturating_sub(s.started.elapsed().as_millis() as u64)),
        heartbeat_ms: now,
        connections: s.connections.len(),
        sessions: s.sessions.len(),
        responders: s.broker.gauges().responders,
        peers,
    }
}

/// Start the heartbeats, once the state exists.
pub(crate) async fn announce(state: &crate::AppState, cluster: &Arc<Cluster>) -> Result<(), crate::ServerError> {
    let st = state.clone();
    let c = cluster.clone();
    nodes::start(cluster, move || node_info(&st, &c.node, false)).await.map_err(|e| {
        crate::ServerError::Config(vec![format!("cluster: cannot listen to the other nodes' heartbeats: {e}")])
    })
}

/// The last heartbeat: this node is gone (the others stop waiting for it).
pub(crate) async fn leave(state: &crate::AppState, cluster: &Cluster) {
    let info = node_info(state, &cluster.node, true);
    if let Err(e) = nodes::publish(cluster, &info).await {
        warn!(error = %e, "Could not tell the cluster that this node leaves.");
    }
    let _ = cluster.client.flush().await;
}
