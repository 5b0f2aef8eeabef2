//! [`Metrics`]: the counters and histograms code paths update as things
//! happen. `GET /metrics` (in `http/metrics.rs`) encodes them together
//! with sizes and counters read at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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
    pub(crate) deliver_latency: Histogram,
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
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]);
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
        Metrics {
            registry,
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

/// Record the commit-to-socket latency of the live events among `frames`,
/// just written.
pub(crate) fn observe_written(latency: &Histogram, frames: &[herald_core::Frame]) {
    let now = herald_core::event::now_us();
    for f in frames {
        if let herald_core::Frame::Event(_, t) = f {
            latency.observe(now.saturating_sub(*t) as f64 / 1e6);
        }
    }
}
