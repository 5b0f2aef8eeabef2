//! Turns for reading history ([`ReplayPermits`]).
//!
//! Replays and catch-ups read the log in chunks. Each chunk is read in a
//! *turn*: one permit of the connection's, one of its owner's and one of
//! the node's semaphores, taken in that order (so no two tasks can wait on
//! each other) and handed out first come, first served. The owner's and the
//! node's permits are given back as soon as the chunk is read; the
//! connection's is kept while the chunk is delivered, so a client that does
//! not read holds at most its own connection's turns, and memory for at
//! most that many chunks. However many subscriptions ask for history at
//! once, they advance in turns instead of all at once, and the live path
//! (fan-out, `hello`, publishes) never waits for them. A catch-up reads its
//! next chunk while it delivers the current one only with a turn that is
//! free at once ([`ReplayPermits::try_turn`]), so reading ahead never makes
//! anyone wait and still holds no more chunks than turns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Counters of the node's reads (for `/metrics`).
#[derive(Debug, Default)]
pub struct ReplayStats {
    /// Chunks read since start.
    pub reads: AtomicU64,
    /// Chunks being read now.
    pub in_flight: AtomicU64,
}

/// The semaphores one connection's catch-ups take turns from.
#[derive(Debug, Clone)]
pub struct ReplayPermits {
    conn: Arc<Semaphore>,
    owner: Arc<Semaphore>,
    node: Arc<Semaphore>,
    stats: Arc<ReplayStats>,
}

/// A turn to read one chunk: [`ReadTurn::read_done`] gives back the owner's
/// and node's permits; dropping it gives back the rest.
#[derive(Debug)]
pub struct ReadTurn {
    _conn: Option<OwnedSemaphorePermit>,
    shared: Option<(Option<OwnedSemaphorePermit>, Option<OwnedSemaphorePermit>)>,
    stats: Arc<ReplayStats>,
}

impl ReadTurn {
    /// The chunk is read: let other owners' replays read theirs while this
    /// one is delivered.
    pub fn read_done(&mut self) {
        if self.shared.take().is_some() {
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for ReadTurn {
    fn drop(&mut self) {
        self.read_done();
    }
}

impl ReplayPermits {
    /// Permits of one connection (`conn` turns at once), sharing an owner's
    /// and the node's semaphores.
    pub fn new(conn: usize, owner: Arc<Semaphore>, node: Arc<Semaphore>, stats: Arc<ReplayStats>) -> ReplayPermits {
        ReplayPermits { conn: Arc::new(Semaphore::new(conn.max(1))), owner, node, stats }
    }

    /// Permits with no limit that counts (for tests and tools).
    pub fn unlimited() -> Arc<ReplayPermits> {
        let many = || Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
        Arc::new(ReplayPermits { conn: many(), owner: many(), node: many(), stats: Arc::default() })
    }

    /// A turn if all three permits are free now, else `None`, without
    /// waiting: for reading the next chunk ahead while this one is
    /// delivered. A task that holds a turn must never wait for another (two
    /// subscriptions of one connection could then wait on each other), so
    /// reading ahead only ever tries.
    pub fn try_turn(&self) -> Option<ReadTurn> {
        let conn = self.conn.clone().try_acquire_owned().ok()?;
        let owner = self.owner.clone().try_acquire_owned().ok()?;
        let node = self.node.clone().try_acquire_owned().ok()?;
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(ReadTurn { _conn: Some(conn), shared: Some((Some(owner), Some(node))), stats: self.stats.clone() })
    }

    /// Wait for a turn to read one chunk.
    pub async fn turn(&self) -> ReadTurn {
        // The semaphores are never closed, so acquiring cannot fail; if it
        // did, reading without the permit is the lesser harm.
        let conn = self.conn.clone().acquire_owned().await.ok();
        let owner = self.owner.clone().acquire_owned().await.ok();
        let node = self.node.clone().acquire_owned().await.ok();
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        ReadTurn { _conn: conn, shared: Some((owner, node)), stats: self.stats.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn turns_are_bounded_per_connection_owner_and_node() {
        let owner = Arc::new(Semaphore::new(2));
        let node = Arc::new(Semaphore::new(3));
        let stats = Arc::new(ReplayStats::default());
        let new = |conn, owner: &Arc<Semaphore>| ReplayPermits::new(conn, owner.clone(), node.clone(), stats.clone());
        let a = new(1, &owner);
        let b = new(1, &owner);
        let c = new(5, &Arc::new(Semaphore::new(5)));
        let mut ta = a.turn().await;
        let tb = b.turn().await;
        // The owner's two are taken: a third connection of that owner waits,
        // another owner's does not.
        let a2 = new(1, &owner);
        assert!(tokio::time::timeout(Duration::from_millis(20), a2.turn()).await.is_err());
        let tc = c.turn().await;
        assert_eq!(stats.in_flight.load(Ordering::Relaxed), 3);
        // The node's three are taken now.
        assert!(tokio::time::timeout(Duration::from_millis(20), c.turn()).await.is_err());
        // Reading done gives back owner and node, not the connection's.
        ta.read_done();
        let _tc2 = tokio::time::timeout(Duration::from_millis(20), c.turn()).await.expect("node permit back");
        assert!(tokio::time::timeout(Duration::from_millis(20), a.turn()).await.is_err(), "connection still busy");
        drop(ta);
        drop((tb, tc));
        let _ta2 = tokio::time::timeout(Duration::from_millis(20), a.turn()).await.expect("all back");
        assert_eq!(stats.in_flight.load(Ordering::Relaxed), 2, "c's second turn and a's new one");
        assert_eq!(stats.reads.load(Ordering::Relaxed), 5);
    }

    #[tokio::test]
    async fn trying_for_a_turn_never_waits_and_takes_all_three_permits_or_none() {
        let owner = Arc::new(Semaphore::new(1));
        let node = Arc::new(Semaphore::new(8));
        let stats = Arc::new(ReplayStats::default());
        let a = ReplayPermits::new(2, owner.clone(), node.clone(), stats.clone());
        let mut first = a.try_turn().expect("all free");
        // The owner's only permit is taken: no turn, and the connection's
        // permit it took on the way is given back.
        assert!(a.try_turn().is_none());
        assert_eq!(a.conn.available_permits(), 1);
        first.read_done();
        let second = a.try_turn().expect("owner free again");
        // Both of the connection's permits are held now.
        assert_eq!(a.conn.available_permits(), 0);
        assert!(a.try_turn().is_none());
        drop((first, second));
        assert_eq!((a.conn.available_permits(), owner.available_permits(), node.available_permits()), (2, 1, 8));
        assert_eq!(stats.reads.load(Ordering::Relaxed), 2);
        assert_eq!(stats.in_flight.load(Ordering::Relaxed), 0);
    }
}
