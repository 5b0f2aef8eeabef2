//! [`ReplayGate`]: hands each connection its [`ReplayPermits`], sharing one
//! semaphore per user (anonymous clients: per address) and one per node
//! (`limits.max_replays_per_*`; see `herald_core::replay`).

use crate::config::LimitsConfig;
use herald_core::{ReplayPermits, ReplayStats};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use tokio::sync::Semaphore;

/// The node's replay semaphores.
#[derive(Debug)]
pub(crate) struct ReplayGate {
    node: Arc<Semaphore>,
    /// Reads counted for `/metrics`.
    pub(crate) stats: Arc<ReplayStats>,
    per_user: usize,
    per_connection: usize,
    /// Per-owner semaphores, kept while some connection of the owner holds one.
    owners: Mutex<HashMap<Arc<str>, Weak<Semaphore>>>,
}

impl ReplayGate {
    pub(crate) fn new(l: &LimitsConfig) -> ReplayGate {
        ReplayGate {
            node: Arc::new(Semaphore::new(l.max_replays_per_node)),
            stats: Arc::default(),
            per_user: l.max_replays_per_user,
            per_connection: l.max_replays_per_connection,
            owners: Mutex::new(HashMap::new()),
        }
    }

    /// The permits of a new connection (or SSE stream, or history request) of `owner`.
    pub(crate) fn permits(&self, owner: &Arc<str>) -> Arc<ReplayPermits> {
        let mut owners = self.owners.lock();
        let shared = match owners.get(owner).and_then(Weak::upgrade) {
            Some(s) => s,
            None => {
                // Forget owners whose connections are all gone, now and then
                // (amortised: only when the map has doubled).
                if owners.len() >= 64 && owners.len().is_power_of_two() {
                    owners.retain(|_, w| w.strong_count() > 0);
                }
                let s = Arc::new(Semaphore::new(self.per_user));
                owners.insert(owner.clone(), Arc::downgrade(&s));
                s
            }
        };
        Arc::new(ReplayPermits::new(self.per_connection, shared, self.node.clone(), self.stats.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_share_a_semaphore_while_connected_and_are_forgotten_after() {
        let gate = ReplayGate::new(&LimitsConfig::default());
        let a: Arc<str> = "u:a".into();
        let p1 = gate.permits(&a);
        let p2 = gate.permits(&a);
        assert_eq!(gate.owners.lock().len(), 1);
        drop((p1, p2));
        for i in 0..200 {
            let _ = gate.permits(&format!("u:{i}").into());
        }
        assert!(gate.owners.lock().len() < 200, "dead owners are pruned");
    }
}
