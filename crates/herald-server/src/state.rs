//! Shared state of a running server.

use crate::auth::Authenticator;
use crate::config::Config;
use crate::connections::Connections;
use herald_core::{FanOut, SessionStore, SessionTable, StoreError, StoreOp};
use herald_log::EventLog;
use herald_protocol::{Limits, ServerInfo};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::Instant;

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

/// The parts of [`AppState`].
pub(crate) struct Inner {
    /// The `error` frame a WebSocket client gets when closed as a slow
    /// consumer: the same bytes for every connection, encoded once.
    pub(crate) ws_slow_consumer: bytes::Bytes,
    pub(crate) config: Config,
    pub(crate) auth: Authenticator,
    pub(crate) admission: Arc<crate::admission::Admission>,
    pub(crate) metrics: crate::metrics::Metrics,
    pub(crate) peers: Arc<crate::peers::Peers>,
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) fanout: Arc<FanOut>,
    pub(crate) sessions: SessionTable,
    /// Where sessions are kept durably.
    pub(crate) store: Arc<dyn SessionStore>,
    /// The connectors' view of the gateway.
    pub(crate) host: Arc<crate::peers::GatewayHost>,
    /// HTTP publish rate per user (`limits.http_publishes_per_second`).
    pub(crate) publish_rate: crate::admission::RateTable,
    /// Turns for reading history (`limits.max_replays_per_*`).
    pub(crate) replays: crate::replays::ReplayGate,
    /// Proxies whose forwarding headers are believed (`server.trusted_proxies`).
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
    /// Idempotency keys of recent publishes (every publish path shares it).
    pub(crate) idempotency: Arc<herald_core::IdempotencyWindow>,
    pub(crate) connections: Connections,
    /// Request/response rendezvous, shared by every transport.
    pub(crate) broker: Arc<herald_core::Broker>,
    /// Cluster mode: the other nodes, and rendezvous across them.
    pub(crate) cluster: Option<ClusterParts>,
    pub(crate) started: Instant,
    /// Flips to true when the server starts draining.
    pub(crate) draining: watch::Receiver<bool>,
}

/// This node's handles on the cluster (cluster mode).
#[derive(Clone)]
pub(crate) struct ClusterParts {
    pub(crate) cluster: Arc<crate::cluster::Cluster>,
    pub(crate) rendezvous: Arc<crate::cluster::rendezvous::ClusterRendezvous>,
}

/// What a server is built from: each part is made on its own (in
/// [`crate::Server::start`], or by a test) and handed in.
pub(crate) struct Parts {
    pub(crate) config: Config,
    pub(crate) auth: Authenticator,
    pub(crate) peers: Arc<crate::peers::Peers>,
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) fanout: Arc<FanOut>,
    pub(crate) broker: Arc<herald_core::Broker>,
    pub(crate) store: Arc<dyn SessionStore>,
    /// What connectors see of the gateway (operators pause peers through it).
    pub(crate) host: Arc<crate::peers::GatewayHost>,
    pub(crate) draining: watch::Receiver<bool>,
    pub(crate) cluster: Option<ClusterParts>,
}

impl AppState {
    pub(crate) fn new(parts: Parts) -> AppState {
        let Parts { config, auth, peers, log, fanout, broker, store, host, draining, cluster } = parts;
        let l = &config.limits;
        // A user allowed any number of connections (max_connections_per_user
        // = 0) may hold a session and subscriptions on each: per-user budgets
        // below that would refuse what the connection limit admits. The
        // per-node budget still holds.
        let per_user = |budget: usize| if l.max_connections_per_user == 0 { 0 } else { budget };
        let budgets = herald_core::Budgets {
            sessions_per_owner: per_user(l.max_sessions_per_user),
            subscriptions_per_owner: per_user(l.max_subscriptions_per_user),
            bindings_per_owner: per_user(l.max_bindings_per_user),
            subscription_bytes: l.max_subscription_bytes_per_node,
            // As many anonymous sessions behind one address as connections
            // the per-address limit admits, and the other budgets alike; no
            // per-address limit, no per-address budget.
            anonymous_factor: match (l.max_connections_per_ip, l.max_connections_per_user) {
                (0, _) => 0,
                (_, 0) => 1,
                (ip, user) => ip.div_ceil(user).max(1),
            },
        };
        let sessions =
            SessionTable::with_budgets(config.session.ttl, fanout.clone(), herald_core::session::Clock::new(), budgets);
        let replays = crate::replays::ReplayGate::new(l);
        let admission = Arc::new(crate::admission::Admission::new(
            l.max_connections,
            l.max_connections_per_ip,
            l.max_connections_per_user,
        ));
        let trusted_proxies = crate::client_addr::parse_trusted(&config.server.trusted_proxies);
        let publish_rate = crate::admission::RateTable::new(config.limits.http_publishes_per_second);
        let metrics = crate::metrics::Metrics::new(config.cluster.as_ref().map(|c| c.node.as_str()));
        let ws_slow_consumer = herald_protocol::encode(&herald_protocol::ServerMessage::Error {
            reference: None,
            sub: None,
            code: herald_protocol::ErrorCode::SlowConsumer,
            message: format!(
                "more than {} bytes were waiting to be sent (limits.max_outbound_bytes); closing",
                config.limits.max_outbound_bytes
            ),
        })
        .into();
        AppState {
            inner: Arc::new(Inner {
                ws_slow_consumer,
                config,
                auth,
                admission,
                metrics,
                peers,
                log,
                fanout,
                sessions,
                store,
                idempotency: host.idempotency.clone(),
                trusted_proxies,
                publish_rate,
                replays,
                host,
                connections: Connections::default(),
                broker,
                cluster,
                started: Instant::now(),
                draining,
            }),
        }
    }

    pub(crate) fn get(&self) -> &Inner {
        &self.inner
    }
}

impl Inner {
    /// The limits advertised in `welcome`.
    pub(crate) fn limits(&self) -> Limits {
        let l = &self.config.limits;
        Limits {
            max_frame_bytes: l.max_frame_bytes,
            max_subscriptions: l.max_subscriptions,
            max_bindings: l.max_bindings,
            max_filters: l.max_filters,
            max_outbound_bytes: l.max_outbound_bytes,
            slow_consumer_timeout_ms: l.slow_consumer_timeout.as_millis() as u64,
            max_replay: l.max_replay,
            max_payload_bytes: l.max_payload_bytes,
            max_connections_per_user: l.max_connections_per_user,
            commands_per_second: l.commands_per_second,
            http_publishes_per_second: l.http_publishes_per_second,
            session_ttl_s: self.config.session.ttl.as_secs(),
            max_sessions_per_user: l.max_sessions_per_user,
            max_subscriptions_per_user: l.max_subscriptions_per_user,
            max_bindings_per_user: l.max_bindings_per_user,
            max_subscription_bytes_per_node: l.max_subscription_bytes_per_node,
            max_replays_per_connection: l.max_replays_per_connection,
            max_replays_per_user: l.max_replays_per_user,
            max_replays_per_node: l.max_replays_per_node,
        }
    }

    /// Write session changes durably, counting them.
    pub(crate) async fn write_sessions(&self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        let mut counts = [0u64; 3];
        for op in &ops {
            counts[match op {
                StoreOp::Put(_) => 0,
                StoreOp::Acks { .. } => 1,
                StoreOp::Delete(_) => 2,
            }] += 1;
        }
        let result = self.store.write(ops).await;
        match &result {
            Ok(()) => {
                for (op, n) in ["put", "acks", "delete"].into_iter().zip(counts) {
                    if n > 0 {
                        self.metrics.session_writes.get_or_create(&crate::metrics::StoreOpLabel { op }).inc_by(n);
                    }
                }
            }
            Err(_) => {
                self.metrics.session_write_errors.inc();
            }
        }
        result
    }

    /// Milliseconds since the server started (a cheap monotonic clock for activity stamps).
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(crate) fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Whether a browser `Origin` may connect (`None`: not a browser, allowed).
    pub(crate) fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let allowed = &self.config.auth.allowed_origins;
        match origin {
            Some(o) if !allowed.is_empty() => allowed.iter().any(|a| a == o || a == "*"),
            _ => true,
        }
    }
}

/// Server identification sent in `welcome`.
pub(crate) const SERVER_INFO: ServerInfo = ServerInfo {
    name: std::borrow::Cow::Borrowed("herald"),
    version: std::borrow::Cow::Borrowed(env!("CARGO_PKG_VERSION")),
};
