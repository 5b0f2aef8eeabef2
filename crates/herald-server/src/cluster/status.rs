//! Peer `status` for every node's clients: a node whose peer goes up or
//! down tells its own subscribers and publishes the change on
//! `<prefix>.status`; every other node passes it to its subscribers of the
//! peer's exchanges, with `node` naming where it happened.

use super::Cluster;
use crate::peers::GatewayHost;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tracing::warn;

/// A peer's change of state, as it travels between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StatusNote {
    pub(crate) node: String,
    pub(crate) peer: String,
    pub(crate) up: bool,
    pub(crate) detail: String,
    pub(crate) exchanges: Vec<String>,
}

/// Relay this node's peer changes to the others, and theirs to this node's clients.
pub(crate) async fn start(cluster: &Arc<Cluster>, host: &Arc<GatewayHost>) -> Result<(), async_nats::SubscribeError> {
    let mut sub = cluster.client.subscribe(cluster.subject("status")).await?;
    let me = cluster.node.clone();
    let receiver = host.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let Ok(note) = serde_json::from_slice::<StatusNote>(&m.payload) else { continue };
            if note.node != me {
                receiver.deliver_status(&note.peer, note.up, &note.detail, Some(&note.node), &note.exchanges);
            }
        }
    });
    let sender = cluster.clone();
    let relay = move |peer: &str, up: bool, detail: &str, exchanges: &[String]| {
        let note = StatusNote {
            node: sender.node.clone(),
            peer: peer.to_string(),
            up,
            detail: detail.to_string(),
            exchanges: exchanges.to_vec(),
        };
        let c = sender.clone();
        tokio::spawn(async move {
            let json = serde_json::to_vec(&note).unwrap_or_default();
            if let Err(e) = c.client.publish(c.subject("status"), json.into()).await {
                warn!(error = %e, peer = %note.peer, "Could not tell the other nodes of a peer's status.");
            }
        });
    };
    let _ = host.relay.set(Box::new(relay));
    Ok(())
}
