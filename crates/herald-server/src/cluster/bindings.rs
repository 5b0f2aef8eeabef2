//! Dynamic bindings counted cluster-wide. Every node consumes the same
//! RabbitMQ queue, so a binding must stay while any node's subscriptions
//! need it: each node writes what its subscriptions want to
//! `bind.<peer>.<node>` in the cluster bucket (on every change, and again
//! every third of its TTL), watches the others' keys, and hands their union
//! to the peer ([`DynamicBindings::set_elsewhere`]), which binds the union
//! and unbinds only what nobody has wanted for [`UNBIND_GRACE`].
//!
//! A node's key outlives the node for three times `session.ttl` (its
//! sessions stay resumable elsewhere that long, and their bindings with
//! them); after that it is ignored and NATS drops it.

use super::Cluster;
use futures_util::StreamExt;
use herald_connectors::DynamicBindings;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// How long a binding nobody in the cluster wants stays bound: longer than
/// another node's new want takes to arrive.
pub(crate) const UNBIND_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Wants {
    node: String,
    written_ms: u64,
    bindings: Vec<(String, String)>,
}

fn now_ms() -> u64 {
    herald_core::event::now_us() / 1000
}

/// Share this node's wants of `peer`'s dynamic bindings, and follow the others'.
pub(crate) async fn start(
    cluster: &Arc<Cluster>,
    peer: &str,
    dynamic: Arc<DynamicBindings>,
    ttl: Duration,
) -> Result<(), String> {
    dynamic.set_unbind_grace(UNBIND_GRACE);
    let prefix = format!("bind.{}", super::token(peer));
    let mut watch = cluster.kv.watch_with_history(format!("{prefix}.*")).await.map_err(|e| e.to_string())?;
    let me = cluster.node.clone();
    let follower = dynamic.clone();
    tokio::spawn(async move {
        let mut others: HashMap<String, Wants> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                entry = watch.next() => {
                    let entry = match entry {
                        Some(Ok(entry)) => entry,
                        // A transient failure (NATS failing over): the watch carries on.
                        Some(Err(e)) => {
                            debug!(error = %e, "The watch of the cluster's dynamic bindings stumbled.");
                            continue;
                        }
                        None => break,
                    };
                    let node = entry.key.rsplit('.').next().unwrap_or_default().to_string();
                    if node == me {
                        continue;
                    }
                    match serde_json::from_slice::<Wants>(&entry.value) {
                        Ok(w) if entry.operation == async_nats::jetstream::kv::Operation::Put => {
                            others.insert(node, w);
                        }
                        _ => {
                            others.remove(&node);
                        }
                    }
                }
                _ = tick.tick() => {}
            }
            // A dead node's wants count until its key's TTL would have run out.
            let fresh = now_ms().saturating_sub(ttl.as_millis() as u64);
            others.retain(|_, w| w.written_ms >= fresh);
            let union: BTreeSet<(String, String)> = others.values().flat_map(|w| w.bindings.iter().cloned()).collect();
            follower.set_elsewhere(union);
        }
        warn!("The watch of the cluster's dynamic bindings ended.");
    });
    let writer = cluster.clone();
    let key = format!("{prefix}.{}", cluster.node);
    tokio::spawn(async move {
        loop {
            let wants = Wants {
                node: writer.node.clone(),
                written_ms: now_ms(),
                bindings: dynamic.local().into_iter().collect(),
            };
            let json = serde_json::to_vec(&wants).unwrap_or_default();
            if let Err(e) = writer.put_with_ttl(&key, json.into(), ttl).await {
                warn!(error = %e, "Could not share this node's dynamic bindings with the cluster.");
            }
            tokio::select! {
                _ = dynamic.local_changed() => {
                    // Coalesce a burst of subscriptions into one write.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ = tokio::time::sleep(ttl / 3) => {}
            }
        }
    });
    Ok(())
}
