//! Dynamic upstream bindings: a client may subscribe to an exchange that a
//! peer's allow-list names but its configuration does not bind; the peer
//! binds it on demand. Bindings are reference-counted (unbound when the last
//! subscription using them ends) and capped in number, so clients cannot
//! make Herald create unbounded state in the broker.
//!
//! In a cluster every node consumes the same queue, so a binding is in
//! place while any node wants it: each node's wants are shared (the gateway
//! keeps [`DynamicBindings::set_elsewhere`] current), the peer binds the
//! union, and unbinds a binding only once nobody has wanted it for the
//! [`DynamicBindings::unbind_grace`] (long enough for another node's new
//! want to reach this one).

use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use tokio::sync::Notify;

/// Why a dynamic binding was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DynamicError {
    /// The cap on distinct dynamic bindings is reached.
    #[error("the peer already holds its maximum of {0} dynamic bindings")]
    TooMany(usize),
}

/// The dynamic bindings of one peer: what clients want, with reference counts.
#[derive(Debug)]
pub struct DynamicBindings {
    allow: Vec<String>,
    max: usize,
    refs: Mutex<HashMap<(String, String), usize>>,
    /// Wanted by other nodes of the cluster.
    elsewhere: Mutex<BTreeSet<(String, String)>>,
    /// How long a binding nobody wants stays bound (0 on one node).
    grace: Mutex<std::time::Duration>,
    changed: Notify,
    local_changed: Notify,
}

impl DynamicBindings {
    /// Exchanges named exactly or by a prefix ending in `*`; at most `max` bindings.
    pub fn new(allow: Vec<String>, max: usize) -> DynamicBindings {
        DynamicBindings {
            allow,
            max,
            refs: Mutex::new(HashMap::new()),
            elsewhere: Mutex::new(BTreeSet::new()),
            grace: Mutex::new(std::time::Duration::ZERO),
            changed: Notify::new(),
            local_changed: Notify::new(),
        }
    }

    /// What other nodes want (cluster mode); the peer binds these too.
    pub fn set_elsewhere(&self, wanted: BTreeSet<(String, String)>) {
        let mut e = self.elsewhere.lock();
        if *e != wanted {
            *e = wanted;
            drop(e);
            self.changed.notify_one();
        }
    }

    /// Keep unwanted bindings this long before unbinding (cluster mode).
    pub fn set_unbind_grace(&self, grace: std::time::Duration) {
        *self.grace.lock() = grace;
    }

    /// How long a binding nobody wants stays bound.
    pub fn unbind_grace(&self) -> std::time::Duration {
        *self.grace.lock()
    }

    /// The bindings this node's subscriptions want.
    pub fn local(&self) -> BTreeSet<(String, String)> {
        self.refs.lock().keys().cloned().collect()
    }

    /// Resolves when this node's own wants may have changed.
    pub async fn local_changed(&self) {
        self.local_changed.notified().await;
    }

    fn notify(&self) {
        self.changed.notify_one();
        self.local_changed.notify_one();
    }

    /// Whether the allow-list names this exchange.
    pub fn allows(&self, exchange: &str) -> bool {
        self.allow.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => exchange.starts_with(prefix),
            None => a == exchange,
        })
    }

    /// Take a reference on `(exchange, pattern)`; the first one asks the peer to bind.
    pub fn acquire(&self, exchange: &str, pattern: &str) -> Result<(), DynamicError> {
        let mut refs = self.refs.lock();
        let key = (exchange.to_string(), pattern.to_string());
        if let Some(n) = refs.get_mut(&key) {
            *n += 1;
            return Ok(());
        }
        // The cap counts the cluster's distinct bindings (on one node, this
        // node's): they all live on the one queue.
        let elsewhere = self.elsewhere.lock();
        let distinct = refs.len() + elsewhere.iter().filter(|k| !refs.contains_key(*k)).count();
        if distinct >= self.max && !elsewhere.contains(&key) {
            return Err(DynamicError::TooMany(self.max));
        }
        drop(elsewhere);
        refs.insert(key, 1);
        drop(refs);
        self.notify();
        Ok(())
    }

    /// Take a reference held by the returned guard: dropping the guard gives
    /// it back (see [`DynamicBindings::release`]).
    pub fn lease(self: &Arc<Self>, exchange: &str, pattern: &str) -> Result<DynamicLease, DynamicError> {
        self.acquire(exchange, pattern)?;
        Ok(DynamicLease { bindings: self.clone(), exchange: exchange.to_string(), pattern: pattern.to_string() })
    }

    /// Drop a reference; the last one asks the peer to unbind.
    pub fn release(&self, exchange: &str, pattern: &str) {
        let mut refs = self.refs.lock();
        let key = (exchange.to_string(), pattern.to_string());
        if let Some(n) = refs.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                refs.remove(&key);
                drop(refs);
                self.notify();
            }
        }
    }

    /// Forget a binding the broker refused (for example, no such exchange).
    pub fn forget(&self, exchange: &str, pattern: &str) {
        self.refs.lock().remove(&(exchange.to_string(), pattern.to_string()));
    }

    /// The bindings wanted now, here or (cluster mode) on another node.
    pub fn wanted(&self) -> BTreeSet<(String, String)> {
        let mut w = self.local();
        w.extend(self.elsewhere.lock().iter().cloned());
        w
    }

    /// Number of distinct bindings this node wants.
    pub fn len(&self) -> usize {
        self.refs.lock().len()
    }

    /// Whether none is wanted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when the wanted set may have changed.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// One reference on a dynamic binding, released when dropped. Sessions hold
/// these for their subscriptions, so every way a subscription ends
/// (unsubscribe, orderly close, expiry, refusal after a restart) gives the
/// binding back.
#[derive(Debug)]
pub struct DynamicLease {
    bindings: Arc<DynamicBindings>,
    exchange: String,
    pattern: String,
}

impl herald_core::Lease for DynamicLease {}

impl Drop for DynamicLease {
    fn drop(&mut self) {
        self.bindings.release(&self.exchange, &self.pattern);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_caps() {
        let d = DynamicBindings::new(vec!["dyn/*".into(), "exact".into()], 2);
        assert!(d.allows("dyn/a") && d.allows("exact") && !d.allows("exactly") && !d.allows("other"));
        d.acquire("dyn/a", "#").expect("first");
        d.acquire("dyn/a", "#").expect("same again");
        d.acquire("dyn/b", "#").expect("second");
        assert_eq!(d.acquire("dyn/c", "#"), Err(DynamicError::TooMany(2)));
        d.release("dyn/a", "#");
        assert_eq!(d.len(), 2, "one reference left");
        d.release("dyn/a", "#");
        assert_eq!(d.wanted().into_iter().collect::<Vec<_>>(), vec![("dyn/b".to_string(), "#".to_string())]);
    }

    #[test]
    fn other_nodes_wants_are_bound_too_and_count_against_the_cap() {
        let d = DynamicBindings::new(vec!["dyn/*".into()], 2);
        let pair = |x: &str| (x.to_string(), "#".to_string());
        d.set_elsewhere([pair("dyn/a"), pair("dyn/b")].into_iter().collect());
        assert_eq!(d.wanted().len(), 2, "bound for the other nodes");
        assert!(d.local().is_empty());
        assert_eq!(d.acquire("dyn/c", "#"), Err(DynamicError::TooMany(2)), "the cap is cluster-wide");
        d.acquire("dyn/a", "#").expect("one the cluster has already");
        assert_eq!(d.local().into_iter().collect::<Vec<_>>(), vec![pair("dyn/a")]);
        d.set_elsewhere(BTreeSet::new());
        assert_eq!(d.wanted().into_iter().collect::<Vec<_>>(), vec![pair("dyn/a")]);
    }

    #[test]
    fn a_lease_releases_when_dropped() {
        let d = Arc::new(DynamicBindings::new(vec!["dyn/*".into()], 4));
        let a = d.lease("dyn/a", "#").expect("lease");
        let b = d.lease("dyn/a", "#").expect("lease");
        drop(a);
        assert_eq!(d.len(), 1, "still held by the second lease");
        drop(b);
        assert!(d.is_empty());
    }
}
