//! [`SessionStore`]: where sessions are kept so that they outlive the process.
//!
//! The [`SessionTable`](super::SessionTable) is the live copy every
//! connection works on; a store is its durable shadow. Two kinds of write
//! reach it:
//!
//! - a whole session ([`StoreOp::Put`]): when it is created with its first
//!   subscription, when its set of subscriptions or a paused flag changes
//!   (durable before the client hears the answer), and at attach and detach;
//! - acknowledged ids only ([`StoreOp::Acks`]): coalesced, at most every
//!   `session.ack_flush`, because acks are frequent and a lost ack costs
//!   only a repeat that the client drops by id.
//!
//! What is stored is exactly [`StoredSession`]: the id, a SHA-256 hash of the
//! secret (never the secret), the user, when it was detached (Unix
//! milliseconds; `None` while attached) and each subscription's bindings,
//! filters, paused flag and acknowledged id.

use futures_util::future::BoxFuture;
use herald_protocol::Binding;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// One session as a store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSession {
    /// Session id.
    pub id: String,
    /// Lower-case hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// Owner (`None` for anonymous).
    pub user: Option<String>,
    /// Unix milliseconds when it was detached; `None` while a connection
    /// holds it (after a crash such a session counts as detached at the
    /// restart).
    pub detached_at_ms: Option<u64>,
    /// Subscriptions by id.
    pub subs: BTreeMap<String, StoredSub>,
    /// The cluster node that wrote it (cluster mode; `None` otherwise): a
    /// node that sees another node write a session it holds was taken over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One subscription of a [`StoredSession`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSub {
    /// Bindings as the client sent them.
    pub bindings: Vec<Binding>,
    /// Filters as the client sent them.
    #[serde(default)]
    pub filters: Vec<Value>,
    /// Paused by the client.
    #[serde(default)]
    pub paused: bool,
    /// The acknowledged position: everything after it is still owed.
    pub acked: u64,
}

/// One change written to a store.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    /// Write the whole session (replacing any earlier acks).
    Put(StoredSession),
    /// Raise acknowledged ids of an existing session (ignored if the session
    /// is not stored: it ended meanwhile).
    Acks {
        /// Session id.
        id: String,
        /// Acknowledged id per subscription.
        acks: BTreeMap<String, u64>,
    },
    /// Forget a session (ended or expired).
    Delete(String),
}

/// Why a store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage itself failed (disk, database, network).
    #[error("session store: {0}")]
    Backend(String),
    /// A stored record could not be decoded.
    #[error("session store: record {key} is unreadable: {message}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What was wrong.
        message: String,
    },
}

/// A place that keeps sessions durably. Writes in one call are applied
/// together (one transaction); a call returns once they are durable.
pub trait SessionStore: Send + Sync + std::fmt::Debug {
    /// Every stored session, with its acks merged in.
    fn load(&self) -> BoxFuture<'_, Result<Vec<StoredSession>, StoreError>>;
    /// Apply these changes durably, in order.
    fn write(&self, ops: Vec<StoreOp>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// One stored session by id, with its acks merged in, for a store that
    /// several nodes share (a session created on another node is loaded
    /// when its client resumes here). Stores of one node need not look.
    fn get(&self, id: &str) -> BoxFuture<'_, Result<Option<StoredSession>, StoreError>> {
        let _ = id;
        Box::pin(async { Ok(None) })
    }
}

/// Apply `ops` to a map of sessions: the semantics every store shares.
pub fn apply(sessions: &mut HashMap<String, StoredSession>, ops: Vec<StoreOp>) {
    for op in ops {
        match op {
            StoreOp::Put(s) => {
                sessions.insert(s.id.clone(), s);
            }
            StoreOp::Acks { id, acks } => {
                if let Some(s) = sessions.get_mut(&id) {
                    merge_acks(s, &acks);
                }
            }
            StoreOp::Delete(id) => {
                sessions.remove(&id);
            }
        }
    }
}

/// Raise each subscription's acknowledged id to the one in `acks` (never
/// lower it: writes may land out of order).
pub fn merge_acks(session: &mut StoredSession, acks: &BTreeMap<String, u64>) {
    for (sub, id) in acks {
        if let Some(s) = session.subs.get_mut(sub) {
            s.acked = s.acked.max(*id);
        }
    }
}

/// A store in memory: for tests, and for deployments that accept losing
/// sessions with the process (`session.store = "memory"`).
#[derive(Debug, Default)]
pub struct MemoryStore {
    sessions: Mutex<HashMap<String, StoredSession>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A copy of one stored session (for tests).
    pub fn get(&self, id: &str) -> Option<StoredSession> {
        self.sessions.lock().get(id).cloned()
    }
}

impl SessionStore for MemoryStore {
    fn load(&self) -> BoxFuture<'_, Result<Vec<StoredSession>, StoreError>> {
        let all = self.sessions.lock().values().cloned().collect();
        Box::pin(async move { Ok(all) })
    }

    fn write(&self, ops: Vec<StoreOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        apply(&mut self.sessions.lock(), ops);
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, acked: u64) -> StoredSession {
        let sub = StoredSub {
            bindings: vec![Binding { exchange: "x".into(), pattern: "#".into() }],
            filters: vec![],
            paused: false,
            acked,
        };
        StoredSession {
            id: id.into(),
            secret_sha256: "00".into(),
            user: None,
            detached_at_ms: None,
            subs: BTreeMap::from([("a".to_string(), sub)]),
            node: None,
        }
    }

    #[tokio::test]
    async fn acks_only_raise_and_only_for_stored_sessions() {
        let store = MemoryStore::new();
        store.write(vec![StoreOp::Put(session("s", 5))]).await.expect("put");
        let acks = |n| StoreOp::Acks { id: "s".into(), acks: BTreeMap::from([("a".to_string(), n)]) };
        store.write(vec![acks(9), acks(7)]).await.expect("acks");
        assert_eq!(store.get("s").map(|s| s.subs["a"].acked), Some(9), "a late, lower ack does not win");
        store.write(vec![StoreOp::Delete("s".into()), acks(12)]).await.expect("delete");
        assert!(store.load().await.expect("load").is_empty(), "acks do not bring a deleted session back");
    }
}
