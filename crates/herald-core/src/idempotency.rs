//! [`IdempotencyWindow`]: publishes that carry an `idempotency_key` are
//! stored once per `(exchange, key)` within a time window; a repeat is
//! answered with the id of the first.
//!
//! A key goes through two states: *in flight* while its first publish is
//! being appended (a concurrent repeat waits for it rather than appending a
//! second copy), then *stored* with its id until the window has passed.
//! Memory is bounded: at most `max_keys` keys are remembered; past that the
//! oldest are forgotten first (the window is then shorter than configured,
//! which `forgotten_early` counts). The window is rebuilt from the log at
//! start ([`IdempotencyWindow::remember`]), so it survives restarts.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

type Key = (String, String);

enum Entry {
    /// Being appended; the sender is dropped when it settles.
    InFlight(watch::Sender<()>),
    /// Stored with this id at this time (Unix ms).
    Stored { id: u64, at_ms: u64 },
}

/// What [`IdempotencyWindow::claim`] found.
#[derive(Debug)]
pub enum Claim {
    /// Not seen: append the event, then [`IdempotencyWindow::settle`] the key.
    Fresh,
    /// Already stored: answer with this id, store nothing.
    Stored(u64),
    /// Another publish of the key is being appended: wait for this to
    /// change (or close), then claim again.
    InFlight(watch::Receiver<()>),
}

#[derive(Default)]
struct Inner {
    keys: HashMap<Key, Entry>,
    /// Stored keys, oldest first, with the time they were stored.
    order: VecDeque<(u64, Key)>,
}

/// The keys seen within the window.
pub struct IdempotencyWindow {
    window_ms: u64,
    max_keys: usize,
    inner: Mutex<Inner>,
    /// Keys forgotten before their window ended, to stay within `max_keys`.
    pub forgotten_early: AtomicU64,
    /// Publishes answered with an earlier id.
    pub duplicates: AtomicU64,
}

impl std::fmt::Debug for IdempotencyWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyWindow")
            .field("window_ms", &self.window_ms)
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

impl IdempotencyWindow {
    /// Keys are remembered for `window`, at most `max_keys` at once.
    pub fn new(window: Duration, max_keys: usize) -> IdempotencyWindow {
        IdempotencyWindow {
            window_ms: window.as_millis() as u64,
            max_keys: max_keys.max(1),
            inner: Mutex::new(Inner::default()),
            forgotten_early: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        }
    }

    /// Keys remembered now (stored or in flight).
    pub fn len(&self) -> usize {
        self.inner.lock().keys.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expire(&self, inner: &mut Inner, now_ms: u64) {
        while let Some((at, _)) = inner.order.front() {
            if at + self.window_ms > now_ms {
                break;
            }
            if let Some((_, key)) = inner.order.pop_front() {
                if matches!(inner.keys.get(&key), Some(Entry::Stored { at_ms, .. }) if at_ms + self.window_ms <= now_ms)
                {
                    inner.keys.remove(&key);
                }
            }
        }
    }

    /// Look `(exchange, key)` up; a fresh key becomes in flight until settled.
    pub fn claim(&self, exchange: &str, key: &str, now_ms: u64) -> Claim {
        let mut inner = self.inner.lock();
        self.expire(&mut inner, now_ms);
        let k = (exchange.to_string(), key.to_string());
        match inner.keys.get(&k) {
            Some(Entry::Stored { id, .. }) => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                Claim::Stored(*id)
            }
            Some(Entry::InFlight(tx)) => Claim::InFlight(tx.subscribe()),
            None => {
                inner.keys.insert(k, Entry::InFlight(watch::channel(()).0));
                Claim::Fresh
            }
        }
    }

    /// The append of a claimed key finished: stored as `id`, or failed
    /// (`None`: the key is free again). Waiters are woken either way.
    pub fn settle(&self, exchange: &str, key: &str, id: Option<u64>, now_ms: u64) {
        let mut inner = self.inner.lock();
        let k = (exchange.to_string(), key.to_string());
        match id {
            Some(id) => self.insert_stored(&mut inner, k, id, now_ms),
            None => {
                inner.keys.remove(&k);
            }
        }
    }

    /// Remember a key stored earlier (rebuilding the window from the log).
    pub fn remember(&self, exchange: &str, key: &str, id: u64, at_ms: u64) {
        let mut inner = self.inner.lock();
        self.insert_stored(&mut inner, (exchange.to_string(), key.to_string()), id, at_ms);
    }

    fn insert_stored(&self, inner: &mut Inner, k: Key, id: u64, at_ms: u64) {
        while inner.keys.len() >= self.max_keys {
            let Some((_, old)) = inner.order.pop_front() else { break };
            if matches!(inner.keys.get(&old), Some(Entry::Stored { .. })) {
                inner.keys.remove(&old);
                self.forgotten_early.fetch_add(1, Ordering::Relaxed);
            }
        }
        inner.order.push_back((at_ms, k.clone()));
        // Replacing an in-flight entry drops its sender: waiters wake up.
        inner.keys.insert(k, Entry::Stored { id, at_ms });
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_within_the_window_gets_the_first_id() {
        let w = IdempotencyWindow::new(Duration::from_secs(120), 100);
        assert!(matches!(w.claim("x", "k", 0), Claim::Fresh));
        w.settle("x", "k", Some(7), 0);
        assert!(matches!(w.claim("x", "k", 119_999), Claim::Stored(7)));
        assert!(matches!(w.claim("other", "k", 1), Claim::Fresh), "keys are per exchange");
        assert!(matches!(w.claim("x", "k", 120_000), Claim::Fresh), "the window is over");
    }

    #[tokio::test]
    async fn a_concurrent_repeat_waits_for_the_first_and_a_failure_frees_the_key() {
        let w = IdempotencyWindow::new(Duration::from_secs(120), 100);
        assert!(matches!(w.claim("x", "k", 0), Claim::Fresh));
        let Claim::InFlight(mut rx) = w.claim("x", "k", 0) else { panic!("in flight") };
        w.settle("x", "k", None, 0);
        assert!(rx.changed().await.is_err(), "woken when the first settles");
        assert!(matches!(w.claim("x", "k", 0), Claim::Fresh), "a failed append frees the key");
        let Claim::InFlight(mut rx) = w.claim("x", "k", 0) else { panic!("in flight") };
        w.settle("x", "k", Some(3), 0);
        assert!(rx.changed().await.is_err());
        assert!(matches!(w.claim("x", "k", 0), Claim::Stored(3)));
    }

    #[test]
    fn memory_is_bounded_by_forgetting_the_oldest() {
        let w = IdempotencyWindow::new(Duration::from_secs(120), 3);
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            w.remember("x", k, i as u64 + 1, i as u64);
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.forgotten_early.load(Ordering::Relaxed), 1);
        assert!(matches!(w.claim("x", "a", 10), Claim::Fresh), "the oldest was forgotten");
        assert!(matches!(w.claim("x", "d", 10), Claim::Stored(4)));
    }
}
