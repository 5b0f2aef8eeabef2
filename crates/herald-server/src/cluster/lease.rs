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
use std::time::Duration;
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

/// Hold or wait for the lease of `peer` until `stop` says this node no
/// longer runs it (its source has stopped, at shutdown); `role` says where
/// it stands. At stop, a lease held is given up.
pub(crate) async fn run(
    cluster: Arc<Cluster>,
    peer: String,
    role: watch::Sender<Leadership>,
    mut stop: watch::Receiver<bool>,
) {
    let key = format!("lease.{}", super::token(&peer));
    let ttl = cluster.lease_ttl;
    let every = ttl / 3;
    let me = bytes::Bytes::from(cluster.node.clone());
    // Leading: the revision written, and when its write was sent (the
    // leader's deadlines count from then: the revision was committed later,
    // and a standby counts from when it saw it). Standby: the revision seen
    // and since when.
    let mut held: Option<(u64, Instant)> = None;
    let mut seen: Option<(u64, Instant)> = None;
    loop {
        if *stop.borrow() {
            if let Some((rev, _)) = held {
                let _ = role.send(Leadership::Unknown);
                // Give it up so that a standby takes over at once.
                let _ = cluster.kv.delete_expect_revision(&key, Some(rev)).await;
                info!(%peer, "Gave up the lead of this peer (shutting down).");
            }
            return;
        }
        let mut next_check = every;
        match held {
            Some((rev, sent_at)) => {
                // Stop leading before any standby can take over: two thirds
                // of the TTL after the last write that counted, whatever
                // happens to this one.
                let deadline = sent_at + ttl * 2 / 3;
                let sent = Instant::now();
                let lost = match tokio::time::timeout(
                    deadline.saturating_duration_since(sent),
                    cluster.kv.update(&key, me.clone(), rev),
                )
                .await
                {
                    Ok(Ok(next)) => {
                        held = Some((next, sent));
                        None
                    }
                    Ok(Err(e)) if matches!(e.kind(), async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision) => {
                        Some(e.to_string())
                    }
                    Ok(Err(e)) if Instant::now() >= deadline => Some(e.to_string()),
                    Ok(Err(e)) => {
                        // Try again soon, within the deadline.
                        warn!(%peer, error = %e, "Could not renew the lead of this peer; retrying.");
                        next_check = Duration::from_millis(200).min(every);
                        None
                    }
                    Err(_) => Some("the renewal did not complete in time".to_string()),
                };
                if let Some(why) = lost {
                    warn!(%peer, error = %why, "Lost the lead of this peer; stopping it here.");
                    held = None;
                    seen = None;
                    let _ = role.send(Leadership::Standby(String::new()));
                }
            }
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
                        let sent = Instant::now();
                        if let Ok(Ok(next)) =
                            tokio::time::timeout(every, cluster.kv.update(&key, me.clone(), rev)).await
                        {
                            info!(%peer, previous = ?leader, "This node leads the peer now.");
                            held = Some((next, sent));
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
            _ = tokio::time::sleep(next_check) => {}
            _ = stop.changed() => {}
        }
    }
}
