//! The framework side of the connector lifecycle: reconnects with
//! exponential backoff and jitter, forever, without flooding the logs, and
//! `up`/`down` status for subscribers and `/readyz`.

use crate::peer::PeerStats;
use crate::{Connector, Control, Host};
use rand::Rng;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Exponential backoff with full jitter between `min` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Start at `min`, double up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, current: min }
    }

    /// The next wait: uniformly random in [current/2, current], then double.
    pub fn next_delay(&mut self) -> Duration {
        let cur = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = cur / 2;
        half + Duration::from_micros(rand::rng().random_range(0..=half.as_micros().max(1) as u64))
    }

    /// Back to `min` after a success.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

/// Run a connector until `control` says drain: connect, run, and on any
/// failure report `down`, close, wait, and connect again.
pub async fn supervise(
    peer: String,
    mut connector: Box<dyn Connector>,
    host: Arc<dyn Host>,
    stats: Arc<PeerStats>,
    mut control: watch::Receiver<Control>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut attempt = 0u32;
    let mut reported_down = false;
    loop {
        let draining = *control.borrow() == Control::Drain;
        if draining {
            connector.close().await;
            return;
        }
        attempt += 1;
        match connector.connect(attempt).await {
            Ok(()) => {
                info!(%peer, attempt, "Peer connected.");
                attempt = 0;
                backoff.reset();
                stats.up.store(true, Ordering::Relaxed);
                host.status(&peer, true, "connected");
                let result = connector.run(host.as_ref(), control.clone()).await;
                connector.close().await;
                stats.up.store(false, Ordering::Relaxed);
                match result {
                    Ok(()) => return,
                    Err(e) => {
                        warn!(%peer, error = %format!("{e:#}"), "Peer lost its upstream; reconnecting.");
                        host.status(&peer, false, &format!("{e:#}"));
                        reported_down = true;
                    }
                }
            }
            Err(e) => {
                // The first failure and every tenth after it are worth a warning.
                if attempt == 1 || attempt.is_multiple_of(10) {
                    warn!(%peer, attempt, error = %format!("{e:#}"), "Peer cannot connect; retrying with backoff.");
                } else {
                    debug!(%peer, attempt, error = %format!("{e:#}"), "Peer cannot connect.");
                }
                if !reported_down {
                    host.status(&peer, false, &format!("{e:#}"));
                    reported_down = true;
                }
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = drained(&mut control) => {
                connector.close().await;
                return;
            }
        }
    }
}

/// Resolves when the control says drain (or its sender is gone).
async fn drained(control: &mut watch::Receiver<Control>) {
    // Map the guard away so that no lock guard is held across an await.
    let _ = control.wait_for(|c| *c == Control::Drain).await.map(|_| ());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d1 = b.next_delay();
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100), "{d1:?}");
        for _ in 0..10 {
            b.next_delay();
        }
        let d = b.next_delay();
        assert!(d >= Duration::from_millis(500) && d <= Duration::from_secs(1), "capped: {d:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
