//! Admission: connection limits in total, per IP and per user.
//!
//! A [`Slot`] is taken before a WebSocket or SSE connection is accepted and
//! released when it drops, so the counts cannot leak whatever way a
//! connection ends.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `limits.max_connections` reached.
    Capacity,
    /// `limits.max_connections_per_ip` reached.
    PerIp,
    /// `limits.max_connections_per_user` reached.
    PerUser,
}

impl Refusal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Capacity => "capacity",
            Refusal::PerIp => "per_ip",
            Refusal::PerUser => "per_user",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
    by_user: HashMap<String, usize>,
}

/// Connection counts and their limits (0 means no limit for per-IP and per-user).
#[derive(Debug)]
pub(crate) struct Admission {
    counts: Mutex<Counts>,
    max_total: usize,
    max_per_ip: usize,
    max_per_user: usize,
}

/// One admitted connection; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
    user: Option<String>,
}

impl Admission {
    pub(crate) fn new(max_total: usize, max_per_ip: usize, max_per_user: usize) -> Admission {
        Admission { counts: Mutex::new(Counts::default()), max_total, max_per_ip, max_per_user }
    }

    /// Take a place for a connection from `ip`.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let mut c = self.counts.lock();
        if c.total >= self.max_total {
            return Err(Refusal::Capacity);
        }
        let n = c.by_ip.entry(ip).or_insert(0);
        if self.max_per_ip != 0 && *n >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        *n += 1;
        c.total += 1;
        Ok(Slot { admission: self.clone(), ip, user: None })
    }

    pub(crate) fn total(&self) -> usize {
        self.counts.lock().total
    }
}

impl Slot {
    /// Count this connection against `user` once it has authenticated.
    pub(crate) fn claim_user(&mut self, user: &str) -> Result<(), Refusal> {
        if self.user.is_some() {
            return Ok(());
        }
        let a = &self.admission;
        let mut c = a.counts.lock();
        let n = c.by_user.entry(user.to_string()).or_insert(0);
        if a.max_per_user != 0 && *n >= a.max_per_user {
            if *n == 0 {
                c.by_user.remove(user);
            }
            return Err(Refusal::PerUser);
        }
        *n += 1;
        self.user = Some(user.to_string());
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.admission.counts.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.by_ip.remove(&self.ip);
            }
        }
        if let Some(user) = &self.user {
            if let Some(n) = c.by_user.get_mut(user) {
                *n -= 1;
                if *n == 0 {
                    c.by_user.remove(user);
                }
            }
        }
    }
}

/// One token bucket per key (a user, or an address for anonymous clients),
/// for requests that have no connection to hold a bucket (HTTP publish).
/// Buckets idle for a minute are dropped when the table grows, so it stays
/// bounded by the keys active in that minute.
#[derive(Debug)]
pub(crate) struct RateTable {
    rate: u32,
    buckets: Mutex<HashMap<String, RateLimit>>,
}

impl RateTable {
    /// `rate` requests per second per key (bursts of twice that); 0 disables it.
    pub(crate) fn new(rate: u32) -> RateTable {
        RateTable { rate, buckets: Mutex::new(HashMap::new()) }
    }

    /// Whether `key` may make one more request now.
    pub(crate) fn allow(&self, key: &str) -> bool {
        if self.rate == 0 {
            return true;
        }
        let mut buckets = self.buckets.lock();
        if buckets.len() >= 10_000 && !buckets.contains_key(key) {
            let now = std::time::Instant::now();
            buckets.retain(|_, b| now.duration_since(b.last) < std::time::Duration::from_secs(60));
        }
        buckets.entry(key.to_string()).or_insert_with(|| RateLimit::new(self.rate)).allow()
    }
}

/// A token bucket for commands per second, refilled on use (no timer).
#[derive(Debug)]
pub(crate) struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: std::time::Instant,
    /// Commands refused in a row.
    pub(crate) refused_in_a_row: u32,
}

impl RateLimit {
    /// `rate` commands per second with bursts of twice that; 0 disables it.
    pub(crate) fn new(rate: u32) -> RateLimit {
        let rate = f64::from(rate);
        RateLimit { rate, burst: rate * 2.0, tokens: rate * 2.0, last: std::time::Instant::now(), refused_in_a_row: 0 }
    }

    /// Whether one more command may run now.
    pub(crate) fn allow(&mut self) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = std::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            true
        } else {
            self.refused_in_a_row += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_and_release() {
        let a = Arc::new(Admission::new(3, 2, 1));
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        let mut s1 = a.admit(ip).expect("first");
        let s2 = a.admit(ip).expect("second");
        assert_eq!(a.admit(ip).err(), Some(Refusal::PerIp));
        let mut s3 = a.admit(other).expect("other ip");
        assert_eq!(a.admit(other).err(), Some(Refusal::Capacity));
        s1.claim_user("u").expect("user");
        assert_eq!(s3.claim_user("u"), Err(Refusal::PerUser));
        drop(s1);
        s3.claim_user("u").expect("released");
        drop((s2, s3));
        assert_eq!(a.total(), 0);
    }

    #[test]
    fn rate_limit_allows_bursts_then_refuses() {
        let mut r = RateLimit::new(5);
        assert!((0..10).all(|_| r.allow()));
        assert!(!r.allow());
        assert_eq!(r.refused_in_a_row, 1);
        assert!(RateLimit::new(0).allow());
    }
}
