//! Leadership of a connector that must run on one node at a time (a
//! PostgreSQL source reads one table position): the key `lease.<peer>` in
//! the cluster bucket names the leader, and the leader writes it again
//! every third of `cluster.lease_ttl`, each write a compare-and-set on the
//! revision it last wrote.
//!
//! Expiry needs no clocks to agree: a standby node remembers the revision
//! it last saw and when it first saw it (its own monotonic clock); a
//! revision unchanged for a whole TTL means the leader is gone, and the
//! standby takes the key with a compare-and-set on that revision (of
//! several standbys, one wins). A leader whose write fails stops at once
//! on a conflict (someone else leads), and within two thirds of the TTL when
//! NATS is unreachable, before any standby can take over. A leader that
//! shuts down deletes the key, and a standby takes it at its next check.

use super::Cluster;
use async_nats::jetstream::kv::Operation;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

/// Who leads a peer, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Leadership {
    /// Not known yet (starting).
    Unknown,
    /// This node leads.
    Leader,
    /// Another node leads (its name, when known).
    Standby(String),
}

/// Hold or wait for the lease of `peer` for as long as `draining` is
/// false; `role` says where it stands. At drain the lease is given up.
pub(crate) async fn run(
    cluster: Arc<Cluster>,
    peer: String,
    role: watch::Sender<Leadership>,
    mut draining: watch::Receiver<bool>,
) {
    let key = format!("lease.{}", super::token(&peer));
    let ttl = cluster.lease_ttl;
    let every = ttl / 3;
    let me = bytes::Bytes::from(cluster.node.clone());
    // Leading: the revision written and when. Standby: the revision seen and since when.
    let mut held: Option<(u64, Instant)> = None;
    let mut seen: Option<(u64, Instant)> = None;
    loop {
        if *draining.borrow() {
            if let Some((rev, _)) = held {
                let _ = role.send(Leadership::Unknown);
                // Give it up so that a standby takes over at once.
                let _ = cluster.kv.delete_expect_revision(&key, Some(rev)).await;
                info!(%peer, "Gave up the lead of this peer (shutting down).");
            }
            return;
        }
        match held {
            Some((rev, at)) => match cluster.kv.update(&key, me.clone(), rev).await {
                Ok(next) => held = Some((next, Instant::now())),
                Err(e) => {
                    let conflict = matches!(e.kind(), async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision);
                    if conflict || at.elapsed() >= ttl * 2 / 3 {
                        warn!(%peer, error = %e, "Lost the lead of this peer; stopping it here.");
                        held = None;
                        seen = None;
                        let _ = role.send(Leadership::Standby(String::new()));
                    }
                }
            },
            None => match cluster.kv.entry(&key).await {
                Ok(entry) => {
                    let (rev, leader) = match &entry {
                        Some(e) if e.operation == Operation::Put => {
                            (e.revision, Some(String::from_utf8_lossy(&e.value).into_owned()))
                        }
                        Some(e) => (e.revision, None),
                        None => (0, None),
                    };
                    let expired = match (&leader, seen) {
                        (None, _) => true,
                        (Some(_), Some((r, since))) if r == rev => since.elapsed() >= ttl,
                        _ => false,
                    };
                    if seen.is_none_or(|(r, _)| r != rev) {
                        seen = Some((rev, Instant::now()));
                    }
                    if expired {
                        if let Ok(next) = cluster.kv.update(&key, me.clone(), rev).await {
                            info!(%peer, previous = ?leader, "This node leads the peer now.");
                            held = Some((next, Instant::now()));
                            let _ = role.send(Leadership::Leader);
                        }
                    } else if let Some(l) = leader {
                        // Our own name from before a restart is waited out
                        // like anyone's: we cannot know what that process did.
                        role.send_if_modified(|r| {
                            let next = Leadership::Standby(l.clone());
                            let changed = *r != next;
                            *r = next;
                            changed
                        });
                    }
                }
                Err(e) => warn!(%peer, error = %e, "Could not read the lease of this peer."),
            },
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = draining.changed() => {}
        }
    }
}
