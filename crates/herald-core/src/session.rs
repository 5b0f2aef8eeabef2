//! [`SessionTable`]: sessions that outlive an abrupt disconnect.
//!
//! A session holds a client's subscriptions and, per subscription, the
//! highest id the client acknowledged. When a connection drops without an
//! orderly close, its session is *detached* and kept for the session TTL;
//! a `hello` with the session's id and secret re-attaches it and each
//! subscription catches up from its acknowledged id. One sweeper task expires
//! detached sessions, so idle sessions cost no timer each.

use crate::fanout::{SubEntry, SubSpec};
use crate::filter::Filter;
use crate::outbox::Outbox;
use crate::pattern::Pattern;
use herald_protocol::Binding;
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One subscription as the session remembers it.
#[derive(Debug)]
pub struct SubRecord {
    /// Bindings and filters.
    pub spec: Arc<SubSpec>,
    /// The bindings as the client sent them (kept to persist the session).
    pub bindings: Vec<Binding>,
    /// The filters as the client sent them.
    pub filters: Vec<Value>,
    /// The highest id the client acknowledged (or the starting point).
    pub acked: u64,
    /// Whether the client paused it.
    pub paused: bool,
    /// The live registration while a connection is attached.
    pub entry: Option<Arc<SubEntry>>,
    /// Dynamic upstream bindings held for it: (peer, exchange, pattern).
    pub leases: Vec<(String, String, String)>,
}

/// Mutable part of a session.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Subscriptions by client-chosen id.
    pub subs: HashMap<String, SubRecord>,
    /// The outbox of the attached connection, if any.
    pub attached: Option<Arc<Outbox>>,
    /// When it was detached.
    pub detached_at: Option<Instant>,
}

/// One client session.
#[derive(Debug)]
pub struct Session {
    /// Public id.
    pub id: String,
    secret: String,
    /// The user who owns it (`None` for anonymous).
    pub user: Option<String>,
    /// Subscriptions and attachment.
    pub state: Mutex<SessionState>,
}

impl Session {
    /// The secret (sent once, in `welcome`).
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

/// Why a resume was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// No such session (never existed, expired or ended).
    #[error("session not found or expired")]
    NotFound,
    /// The secret does not match, or the session belongs to another user.
    #[error("session credentials do not match")]
    Mismatch,
}

/// All sessions of this node.
#[derive(Debug)]
pub struct SessionTable {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    ttl: Duration,
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes).map(|_| format!("{:02x}", rng.random::<u8>())).collect()
}

/// Compare without leaking, through timing, how long a matching prefix is.
fn constant_time_eq(a: &str, b: &str) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl SessionTable {
    /// A table whose detached sessions live for `ttl`.
    pub fn new(ttl: Duration) -> SessionTable {
        SessionTable { sessions: Mutex::new(HashMap::new()), ttl }
    }

    /// Number of sessions, attached or detached.
    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Whether there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Create and attach a new session.
    pub fn create(&self, user: Option<String>, outbox: Arc<Outbox>) -> Arc<Session> {
        let session = Arc::new(Session {
            id: random_hex(16),
            secret: random_hex(32),
            user,
            state: Mutex::new(SessionState { attached: Some(outbox), ..Default::default() }),
        });
        self.sessions.lock().insert(session.id.clone(), session.clone());
        session
    }

    /// Find a session for resuming: the secret must match and the user must
    /// be the same. The caller detaches any other connection still attached.
    pub fn find(&self, id: &str, secret: &str, user: Option<&str>) -> Result<Arc<Session>, ResumeError> {
        let session = self.sessions.lock().get(id).cloned().ok_or(ResumeError::NotFound)?;
        if !constant_time_eq(&session.secret, secret) || session.user.as_deref() != user {
            return Err(ResumeError::Mismatch);
        }
        Ok(session)
    }

    /// End a session for good.
    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions.lock().remove(id)
    }

    /// Remove detached sessions older than the TTL; returns them.
    pub fn sweep(&self, now: Instant) -> Vec<Arc<Session>> {
        let mut sessions = self.sessions.lock();
        let expired: Vec<String> = sessions
            .iter()
            .filter(|(_, s)| {
                let st = s.state.lock();
                st.attached.is_none() && st.detached_at.is_some_and(|t| now.duration_since(t) >= self.ttl)
            })
            .map(|(id, _)| id.clone())
            .collect();
        expired.iter().filter_map(|id| sessions.remove(id)).collect()
    }
}

/// A session as written to disk at shutdown, to be resumable after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionSnapshot {
    /// Session id.
    pub id: String,
    /// Session secret.
    pub secret: String,
    /// Owner.
    pub user: Option<String>,
    /// Subscriptions.
    pub subs: Vec<SubSnapshot>,
}

/// One subscription of a [`SessionSnapshot`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubSnapshot {
    /// Subscription id.
    pub sub: String,
    /// Bindings as sent by the client.
    pub bindings: Vec<Binding>,
    /// Filters as sent by the client.
    #[serde(default)]
    pub filters: Vec<Value>,
    /// Acknowledged position.
    pub acked: u64,
    /// Paused by the client.
    #[serde(default)]
    pub paused: bool,
}

impl SessionTable {
    /// Every session, for writing to disk.
    pub fn snapshot(&self) -> Vec<SessionSnapshot> {
        let sessions = self.sessions.lock();
        sessions
            .values()
            .map(|s| {
                let st = s.state.lock();
                SessionSnapshot {
                    id: s.id.clone(),
                    secret: s.secret.clone(),
                    user: s.user.clone(),
                    subs: st
                        .subs
                        .iter()
                        .map(|(sub, r)| SubSnapshot {
                            sub: sub.clone(),
                            bindings: r.bindings.clone(),
                            filters: r.filters.clone(),
                            acked: r.acked,
                            paused: r.paused,
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Load sessions written by [`SessionTable::snapshot`], detached as of
    /// `now`; subscriptions that no longer compile are left out. Returns how
    /// many sessions were restored.
    pub fn restore(&self, snapshots: Vec<SessionSnapshot>, now: Instant) -> usize {
        let mut sessions = self.sessions.lock();
        let mut n = 0;
        for snap in snapshots {
            let mut subs = HashMap::new();
            for sub in snap.subs {
                let bindings: Option<Vec<(String, Pattern)>> = sub
                    .bindings
                    .iter()
                    .map(|b| Pattern::parse(&b.pattern).ok().map(|p| (b.exchange.clone(), p)))
                    .collect();
                let (Some(bindings), Ok(filters)) = (bindings, Filter::compile_all(&sub.filters)) else { continue };
                let record = SubRecord {
                    spec: Arc::new(SubSpec { bindings, filters }),
                    bindings: sub.bindings,
                    filters: sub.filters,
                    acked: sub.acked,
                    paused: sub.paused,
                    entry: None,
                    leases: Vec::new(),
                };
                subs.insert(sub.sub, record);
            }
            let session = Session {
                id: snap.id.clone(),
                secret: snap.secret,
                user: snap.user,
                state: Mutex::new(SessionState { subs, attached: None, detached_at: Some(now) }),
            };
            sessions.insert(snap.id, Arc::new(session));
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn resume_checks_secret_and_user() {
        let t = SessionTable::new(Duration::from_secs(1));
        let o = Arc::new(Outbox::new(10, Bytes::new(), (4408, String::new())));
        let s = t.create(Some("alice".into()), o);
        assert!(t.find(&s.id, s.secret(), Some("alice")).is_ok());
        assert_eq!(t.find(&s.id, "nope", Some("alice")).err(), Some(ResumeError::Mismatch));
        assert_eq!(t.find(&s.id, s.secret(), Some("bob")).err(), Some(ResumeError::Mismatch));
        assert_eq!(t.find("x", s.secret(), Some("alice")).err(), Some(ResumeError::NotFound));
        let now = Instant::now();
        assert!(t.sweep(now + Duration::from_secs(5)).is_empty(), "attached sessions never expire");
        {
            let mut st = s.state.lock();
            st.attached = None;
            st.detached_at = Some(now);
        }
        assert!(t.sweep(now).is_empty());
        assert_eq!(t.sweep(now + Duration::from_secs(2)).len(), 1);
        assert!(t.is_empty());
    }
}
