//! `GET /metrics`: Prometheus (OpenMetrics) text.
//!
//! Counters that the code paths update live in [`Metrics`]; sizes and the
//! counters kept by the fan-out and the log are read at scrape time.

use crate::state::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use herald_connectors::PeerStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;

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

/// Metrics updated as things happen.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
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
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("herald");
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

/// Values read at scrape time.
#[derive(Debug)]
struct Snapshot {
    gauges: Vec<(&'static str, &'static str, i64)>,
    counters: Vec<(&'static str, &'static str, u64)>,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, v) in &self.gauges {
            let g = ConstGauge::new(*v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        for (name, help, v) in &self.counters {
            let c = ConstCounter::new(*v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let s = state.get();
    let log = s.log.stats();
    let bounds = s.log.bounds();
    let fan = &s.fanout.stats;
    let rv = s.broker.gauges();
    let rc = &s.broker.counters;
    let snapshot = Snapshot {
        gauges: vec![
            ("herald_connections", "Open WebSocket and SSE connections", s.admission.total() as i64),
            ("herald_subscriptions", "Registered subscriptions", s.fanout.len() as i64),
            ("herald_sessions", "Sessions, attached or waiting to be resumed", s.sessions.len() as i64),
            ("herald_log_head", "Id of the newest event", bounds.head as i64),
            ("herald_log_first", "Id of the oldest retained event", bounds.first as i64),
            ("herald_log_events", "Retained events", log.events as i64),
            ("herald_log_bytes", "Bytes of the log on disk", log.bytes as i64),
            ("herald_log_segments", "Segment files", log.segments as i64),
            ("herald_rendezvous_responders", "Registered rendezvous responders", rv.responders as i64),
            ("herald_rendezvous_waiting", "Rendezvous requests waiting for a responder", rv.waiting as i64),
            (
                "herald_rendezvous_in_flight",
                "Rendezvous requests handed to a responder, unanswered",
                rv.in_flight as i64,
            ),
        ],
        counters: vec![
            ("herald_events_in", "Events appended to the log since start", log.appended),
            ("herald_log_commits", "Group commits (fsyncs) since start", log.commits),
            ("herald_events_dispatched", "Committed events handed to the fan-out", fan.events.load(Ordering::Relaxed)),
            ("herald_deliveries", "Event frames queued live for subscribers", fan.deliveries.load(Ordering::Relaxed)),
            (
                "herald_subscriptions_lagged",
                "Times a live subscription fell behind and continued from the log",
                fan.lagged.load(Ordering::Relaxed),
            ),
            (
                "herald_frames_dropped_closing",
                "Event frames not queued because their connection was closing",
                fan.dropped_closed.load(Ordering::Relaxed),
            ),
            ("herald_rendezvous_requests", "Rendezvous requests made", rc.requests.load(Ordering::Relaxed)),
            ("herald_rendezvous_answered", "Rendezvous answers delivered", rc.answered.load(Ordering::Relaxed)),
            (
                "herald_rendezvous_unavailable",
                "Rendezvous requests that found no responder or lost it",
                rc.unavailable.load(Ordering::Relaxed),
            ),
            (
                "herald_rendezvous_timeouts",
                "Rendezvous requests not answered in time",
                rc.timeouts.load(Ordering::Relaxed),
            ),
            (
                "herald_rendezvous_requester_gone",
                "Rendezvous answers whose requester had left",
                rc.requester_gone.load(Ordering::Relaxed),
            ),
        ],
    };
    let mut out = String::new();
    let mut scrape = Registry::default();
    scrape.register_collector(Box::new(snapshot));
    let per_peer = |name: &str, help: &str, read: &dyn Fn(&PeerStats) -> u64, scrape: &mut Registry| {
        let family = Family::<PeerLabel, Counter>::default();
        for (id, rt) in &s.peers {
            family.get_or_create(&PeerLabel { peer: id.clone() }).inc_by(read(&rt.stats));
        }
        scrape.register(format!("herald_peer_{name}"), help.to_string(), family);
    };
    per_peer("in", "Messages received from the peer's upstream", &|p| p.r#in.load(Ordering::Relaxed), &mut scrape);
    per_peer("out", "Events the peer appended to the log", &|p| p.out.load(Ordering::Relaxed), &mut scrape);
    per_peer("err", "Messages the peer rejected", &|p| p.err.load(Ordering::Relaxed), &mut scrape);
    per_peer("send", "Upstream operations sent (acks, declarations)", &|p| p.send.load(Ordering::Relaxed), &mut scrape);
    per_peer("recv", "Upstream deliveries received", &|p| p.recv.load(Ordering::Relaxed), &mut scrape);
    let up = Family::<PeerLabel, prometheus_client::metrics::gauge::Gauge>::default();
    for (id, rt) in &s.peers {
        up.get_or_create(&PeerLabel { peer: id.clone() }).set(i64::from(rt.stats.up.load(Ordering::Relaxed)));
    }
    scrape.register("herald_peer_up", "1 while the peer is connected to its upstream", up);
    let encoded = prometheus_client::encoding::text::encode_registry(&mut out, &scrape)
        .and_then(|_| prometheus_client::encoding::text::encode_registry(&mut out, &s.metrics.registry))
        .and_then(|_| prometheus_client::encoding::text::encode_eof(&mut out));
    if encoded.is_err() {
        out = "# metrics encoding failed\n# EOF\n".into();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out)
}
