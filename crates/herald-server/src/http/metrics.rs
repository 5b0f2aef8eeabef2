//! `GET /metrics`: Prometheus (OpenMetrics) text.
//!
//! Counters that the code paths update live in [`crate::metrics::Metrics`];
//! sizes and the counters kept by the fan-out, the log, the broker and the
//! peers are read here, at scrape time.

use crate::metrics::PeerLabel;
use crate::state::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use herald_connectors::PeerStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;

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

/// Prometheus metrics (with `metrics.token` configured: that token, or an admin token, as bearer).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    params(super::TokenQuery),
    responses(
        (status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String),
        (status = 401, description = "`unauthorized`: the metrics token is missing or wrong", body = super::api::ErrorBody)
    ),
    security((), ("bearer" = []), ("token" = []))
)]
pub(crate) async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<super::TokenQuery>,
) -> axum::response::Response {
    let s = state.get();
    if let Some(want) = &s.config.metrics.token {
        use subtle::ConstantTimeEq;
        let given = crate::auth::bearer(&headers, q.token.as_deref()).unwrap_or_default();
        // The metrics token (for scrapers), or an admin token (the inspector).
        // (Only with token verification on: in open mode anything is "admin".)
        let admin = || s.config.auth.has_key() && s.auth.authenticate(Some(&given)).is_ok_and(|p| p.grants.admin);
        if !bool::from(given.as_bytes().ct_eq(want.as_bytes())) && (given.is_empty() || !admin()) {
            s.metrics.auth_failures.inc();
            let e = crate::error::ClientError::new(
                herald_protocol::ErrorCode::Unauthorized,
                "/metrics needs the metrics token (metrics.token) or an admin token as a bearer token",
            );
            return e.into_response();
        }
    }
    let log = s.log.stats();
    let bounds = s.log.bounds();
    let fan = &s.fanout.stats;
    let rv = s.broker.gauges();
    let rc = &s.broker.counters;
    let mut snapshot = Snapshot {
        gauges: vec![
            ("herald_connections", "Open WebSocket and SSE connections", s.admission.total() as i64),
            ("herald_subscriptions", "Registered subscriptions", s.fanout.len() as i64),
            ("herald_sessions", "Sessions, attached or waiting to be resumed", s.sessions.len() as i64),
            (
                "herald_subscription_bytes",
                "Bytes of binding and filter text all sessions hold (limits.max_subscription_bytes_per_node)",
                s.sessions.subscription_bytes() as i64,
            ),
            (
                "herald_replay_reads_in_flight",
                "Chunks of history being read now (limits.max_replays_per_node)",
                s.replays.stats.in_flight.load(Ordering::Relaxed) as i64,
            ),
            ("herald_idempotency_keys", "Idempotency keys remembered in the window", s.idempotency.len() as i64),
            ("herald_revocations", "Token revocations in force", s.auth.revoked.len() as i64),
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
            (
                "herald_publish_duplicates",
                "Publishes answered with the id of an earlier one (same idempotency key and exchange)",
                s.idempotency.duplicates.load(Ordering::Relaxed),
            ),
            (
                "herald_idempotency_forgotten_early",
                "Idempotency keys forgotten before their window ended (publish.max_idempotency_keys)",
                s.idempotency.forgotten_early.load(Ordering::Relaxed),
            ),
            ("herald_log_commits", "Group commits (fsyncs) since start", log.commits),
            (
                "herald_log_commit_microseconds",
                "Time spent writing and fsyncing group commits since start (embedded log)",
                log.commit_micros,
            ),
            (
                "herald_log_slow_commits",
                "Group commits that took 100 ms or more (embedded log); each delays its events' deliveries",
                log.slow_commits,
            ),
            (
                "herald_replay_reads",
                "Chunks of history read for replays, catch-ups and history pages",
                s.replays.stats.reads.load(Ordering::Relaxed),
            ),
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
    if let Some(c) = &s.cluster {
        let (asked, held) = c.rendezvous.counts();
        let nodes = c.cluster.nodes.list();
        let up = nodes.iter().filter(|(_, _, lost)| !lost).count();
        snapshot.gauges.extend([
            (
                "herald_cluster_nodes_up",
                "Cluster nodes heard from within cluster.node_timeout (this one included)",
                up as i64,
            ),
            (
                "herald_cluster_rendezvous_asked",
                "Rendezvous requests made on this node, waiting for an outcome from the cluster",
                asked as i64,
            ),
            (
                "herald_cluster_rendezvous_held",
                "Rendezvous requests of other nodes' requesters held by this node's responders",
                held as i64,
            ),
        ]);
    }
    let mut out = String::new();
    let node = s.config.cluster.as_ref().map(|c| c.node.as_str());
    let mut scrape = crate::metrics::registry(None, node);
    scrape.register_collector(Box::new(snapshot));
    let per_peer = |name: &str, help: &str, read: &dyn Fn(&PeerStats) -> u64, scrape: &mut Registry| {
        let family = Family::<PeerLabel, Counter>::default();
        for (id, rt) in s.peers.iter() {
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
    for (id, rt) in s.peers.iter() {
        up.get_or_create(&PeerLabel { peer: id.clone() }).set(i64::from(rt.stats.up.load(Ordering::Relaxed)));
    }
    scrape.register("herald_peer_up", "1 while the peer is connected to its upstream", up);
    let encoded = prometheus_client::encoding::text::encode_registry(&mut out, &scrape)
        .and_then(|_| prometheus_client::encoding::text::encode_registry(&mut out, &s.metrics.registry))
        .and_then(|_| prometheus_client::encoding::text::encode_eof(&mut out));
    if encoded.is_err() {
        out = "# metrics encoding failed\n# EOF\n".into();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}
