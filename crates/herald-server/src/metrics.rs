//! [`Metrics`]: the counters and histograms code paths update as things
//! happen. `GET /metrics` (in `http/metrics.rs`) encodes them together
//! with sizes and counters read at scrape time.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Reason {
    pub(crate) reason: &'static str,
}

/// A `peer` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PeerLabel {
    pub(crate) peer: String,
}

/// A `transport` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Transport {
    pub(crate) transport: &'static str,
}

/// An `on` label: where a fan-out dispatch ran (`writer` or `thread`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DispatchOn {
    pub(crate) on: &'static str,
}

/// An `op` label (session store writes).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StoreOpLabel {
    pub(crate) op: &'static str,
}

/// A `limit` label (budget refusals).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LimitLabel {
    pub(crate) limit: &'static str,
}

/// Metrics updated as things happen.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Where the live metrics are registered (encoded by `GET /metrics`).
    pub(crate) registry: Registry,
    /// Commit to written-to-the-socket time of live events, seconds.
    pub(crate) deliver_latency: LatencyHistogram,
    /// Frames not delivered, by reason.
    pub(crate) drops: Family<Reason, Counter>,
    /// Clients closed as slow consumers.
    pub(crate) slow_consumer_closes: Counter,
    /// Connections refused, by reason.
    pub(crate) refused: Family<Reason, Counter>,
    /// Failed authentications.
    pub(crate) auth_failures: Counter,
    /// Events accepted for publishing, by transport.
    pub(crate) published: Family<Transport, Counter>,
    /// Events sent from the log (replays, catch-up after pause, resume or lag).
    pub(crate) replayed: Counter,
    /// Session changes made durable, by kind (`put`, `acks`, `delete`).
    pub(crate) session_writes: Family<StoreOpLabel, Counter>,
    /// Session store writes that failed.
    pub(crate) session_write_errors: Counter,
    /// Sessions or subscriptions refused by a budget, by limit.
    pub(crate) limit_refusals: Family<LimitLabel, Counter>,
    /// Fan-out dispatches of committed batches, by where they ran.
    pub(crate) dispatches: Family<DispatchOn, Counter>,
}

/// A registry whose every metric carries `node="<name>"` in a cluster.
pub(crate) fn registry(prefix: Option<&str>, node: Option<&str>) -> Registry {
    let labels = node.map(|n| (std::borrow::Cow::Borrowed("node"), std::borrow::Cow::Owned(n.to_string())));
    match prefix {
        Some(p) => Registry::with_prefix_and_labels(p, labels.into_iter()),
        None => Registry::with_labels(labels.into_iter()),
    }
}

impl Metrics {
    /// The metrics, labelled with `node` in a cluster.
    pub(crate) fn new(node: Option<&str>) -> Metrics {
        let mut registry = registry(Some("herald"), node);
        let deliver_latency =
            LatencyHistogram::new(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]);
        registry.register(
            "publish_to_deliver_seconds",
            "Time from an event's commit to its frame being written to a live subscriber's socket",
            deliver_latency.clone(),
        );
        let drops = Family::<Reason, Counter>::default();
        registry.register("drops", "Event frames not delivered, by reason (the client was closed)", drops.clone());
        let slow_consumer_closes = Counter::default();
        registry.register(
            "slow_consumer_closes",
            "Clients closed as slow consumers (4408)",
            slow_consumer_closes.clone(),
        );
        let refused = Family::<Reason, Counter>::default();
        registry.register("connections_refused", "Connections refused, by limit", refused.clone());
        let limit_refusals = Family::<LimitLabel, Counter>::default();
        registry.register(
            "budget_refusals",
            "Sessions and subscriptions refused by a per-user or per-node budget, by limit",
            limit_refusals.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "auth_failures",
            "Requests and connections refused for bad or missing credentials",
            auth_failures.clone(),
        );
        let published = Family::<Transport, Counter>::default();
        registry.register("published_events", "Events accepted for publishing, by transport", published.clone());
        let replayed = Counter::default();
        registry.register("replayed_events", "Events sent from the log rather than live", replayed.clone());
        let session_writes = Family::<StoreOpLabel, Counter>::default();
        registry.register(
            "session_writes",
            "Session changes made durable in the session store, by kind (put, acks, delete)",
            session_writes.clone(),
        );
        let session_write_errors = Counter::default();
        registry.register("session_write_errors", "Session store writes that failed", session_write_errors.clone());
        let dispatches = Family::<DispatchOn, Counter>::default();
        registry.register(
            "fanout_dispatches",
            "Committed batches dispatched to live subscribers, by where: on a writer thread (writers idle) or on the fan-out thread (writers busy)",
            dispatches.clone(),
        );
        Metrics {
            registry,
            dispatches,
            deliver_latency,
            drops,
            slow_consumer_closes,
            refused,
            auth_failures,
            published,
            replayed,
            session_writes,
            session_write_errors,
            limit_refusals,
        }
    }
}

/// Most buckets a [`LatencyHistogram`] has (its `+Inf` one included).
const MAX_BUCKETS: usize = 16;

/// A histogram of latencies that every connection's writer adds to after
/// each write (`herald_publish_to_deliver_seconds`).
///
/// Why not prometheus-client's `Histogram`: it takes one mutex, shared by
/// every connection, per observation, so the writers on both cores took
/// turns on one lock for every event delivered. Here a writer counts the
/// events of one write into buckets of its own and adds them with one
/// atomic addition per bucket it used; encoded as a Prometheus histogram
/// like the crate's.
#[derive(Debug, Clone)]
pub(crate) struct LatencyHistogram {
    inner: Arc<LatencyInner>,
}

#[derive(Debug)]
struct LatencyInner {
    /// Upper bounds, microseconds, ascending; the last bucket is `+Inf`.
    bounds_us: Vec<u64>,
    /// Per bucket (not cumulative), `bounds_us.len() + 1` of them.
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    /// A histogram with these upper bounds in seconds (ascending; at most
    /// 15 of them), and `+Inf`.
    pub(crate) fn new(bounds_seconds: &[f64]) -> LatencyHistogram {
        let mut bounds_us: Vec<u64> = bounds_seconds.iter().map(|s| (s * 1e6).round() as u64).collect();
        bounds_us.truncate(MAX_BUCKETS - 1);
        let counts = (0..=bounds_us.len()).map(|_| AtomicU64::new(0)).collect();
        LatencyHistogram { inner: Arc::new(LatencyInner { bounds_us, counts, sum_us: AtomicU64::new(0) }) }
    }

    /// Add these latencies (microseconds).
    pub(crate) fn observe_us(&self, latencies: impl IntoIterator<Item = u64>) {
        let inner = &*self.inner;
        let mut local = [0u64; MAX_BUCKETS];
        let mut sum = 0u64;
        let mut any = false;
        for us in latencies {
            let bucket = inner.bounds_us.iter().position(|b| us <= *b).unwrap_or(inner.bounds_us.len());
            local[bucket] += 1;
            sum = sum.saturating_add(us);
            any = true;
        }
        if !any {
            return;
        }
        for (count, add) in inner.counts.iter().zip(local) {
            if add > 0 {
                count.fetch_add(add, Ordering::Relaxed);
            }
        }
        inner.sum_us.fetch_add(sum, Ordering::Relaxed);
    }

    /// `(count, sum in seconds, per-bucket counts)` as encoded.
    fn snapshot(&self) -> (u64, f64, Vec<(f64, u64)>) {
        let inner = &*self.inner;
        let buckets: Vec<(f64, u64)> = inner
            .bounds_us
            .iter()
            .map(|b| *b as f64 / 1e6)
            .chain(std::iter::once(f64::INFINITY))
            .zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        (count, inner.sum_us.load(Ordering::Relaxed) as f64 / 1e6, buckets)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (count, sum, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Record the commit-to-socket latency of the live events among `frames`,
/// just written.
pub(crate) fn observe_written<'a>(
    latency: &LatencyHistogram,
    frames: impl IntoIterator<Item = &'a herald_core::Frame>,
) {
    let now = herald_core::event::now_us();
    latency.observe_us(frames.into_iter().filter_map(|f| match f {
        herald_core::Frame::Event(_, t) => Some(now.saturating_sub(*t)),
        _ => None,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_their_buckets_and_encode_as_a_prometheus_histogram() {
        let h = LatencyHistogram::new(&[0.001, 0.01]);
        h.observe_us([500, 1_000, 1_001, 20_000]);
        h.observe_us([]);
        let (count, sum, buckets) = h.snapshot();
        assert_eq!(count, 4);
        assert!((sum - 0.022501).abs() < 1e-9, "{sum}");
        assert_eq!(buckets, vec![(0.001, 2), (0.01, 1), (f64::INFINITY, 1)]);
        let mut registry = Registry::default();
        registry.register("lat_seconds", "test", h);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encoded");
        assert!(text.contains("# TYPE lat_seconds histogram"), "{text}");
        assert!(text.contains("lat_seconds_bucket{le=\"0.001\"} 2"), "{text}");
        assert!(text.contains("lat_seconds_bucket{le=\"0.01\"} 3"), "{text}");
        assert!(text.contains("lat_seconds_bucket{le=\"+Inf\"} 4"), "{text}");
        assert!(text.contains("lat_seconds_count 4"), "{text}");
    }
}
