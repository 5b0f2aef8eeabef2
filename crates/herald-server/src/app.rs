//! Building the router and running the server.

use crate::config::Config;
use crate::config::SessionStoreKind;
use crate::http;
use crate::state::AppState;
use crate::ws;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use herald_core::FanOut;
use herald_core::{MemoryStore, SessionStore, StoreOp, StoredSession};
use herald_log::{CommittedBatch, DiskSessionStore, EmbeddedLog, EventLog, JetStreamLog, RETENTION_INTERVAL};
use herald_protocol::{encode, CloseCode, ServerMessage};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

/// The router, with every endpoint.
pub fn app(state: AppState) -> Router {
    let body_limit = state.get().config.limits.max_request_bytes;
    Router::new()
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/publish", post(http::publish::publish))
        .route("/v1/sse", get(http::sse::sse))
        .route("/v1/history", get(http::history::history))
        .route("/v1/rendezvous/answer/{request}", post(http::rendezvous::answer))
        .route("/v1/rendezvous/{service}", post(http::rendezvous::request))
        .route("/v1/rendezvous/{service}/poll", post(http::rendezvous::poll))
        .route("/v1/admin/revoke", post(http::revoke::revoke))
        .route("/v1/peers", get(http::peers::list))
        .route("/v1/cluster", get(http::cluster::cluster))
        .route("/v1/peers/{id}/pause", post(http::peers::pause))
        .route("/v1/peers/{id}/resume", post(http::peers::resume))
        .route("/v1/openapi.json", get(http::openapi::openapi_json))
        .route("/healthz", get(http::health::healthz))
        .route("/readyz", get(http::health::readyz))
        .route("/metrics", get(http::metrics::metrics))
        .route("/inspector", get(http::inspector::index))
        .route("/inspector/", get(http::inspector::index))
        .route("/inspector/{file}", get(http::inspector::file))
        .layer(DefaultBodyLimit::max(body_limit))
        // Outermost, so the router's own 404/405 get the error shape too.
        .layer(axum::middleware::map_response(http::openapi::json_errors))
        .with_state(state)
}

/// A started server: log open, background tasks running, listener bound.
pub struct Server {
    state: AppState,
    listener: TcpListener,
    log: Arc<dyn EventLog>,
    drain_tx: watch::Sender<bool>,
    tls: Option<RustlsConfig>,
}

impl Server {
    /// Open the log, start the fan-out and sweepers, bind the listener.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        Server::start_with_store(config, None).await
    }

    /// [`Server::start`] with a session store of the caller's (`None`: the
    /// one `session.store` names).
    pub async fn start_with_store(
        mut config: Config,
        store: Option<Arc<dyn SessionStore>>,
    ) -> Result<Server, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        config.log.dir = config.data.join("log");
        // Cluster mode puts the log on NATS JetStream; without `[cluster]`
        // it is the embedded log in the data directory.
        let (log, committed): (Arc<dyn EventLog>, tokio::sync::mpsc::Receiver<CommittedBatch>) = match &config.cluster {
            Some(c) => {
                let (log, rx) = JetStreamLog::open(c, &config.log).await?;
                (log, rx)
            }
            None => {
                let (log, rx) = EmbeddedLog::open(config.log.clone())?;
                (log, rx)
            }
        };
        let fanout = Arc::new(FanOut::new(log.bounds().head));
        let (drain_tx, drain_rx) = watch::channel(false);
        let revoked =
            Arc::new(crate::revocation::Revocations::open(&config.data).map_err(|e| ServerError::Config(vec![e]))?);
        let auth = crate::auth::Authenticator::new(&config.auth, revoked).map_err(|e| ServerError::Config(vec![e]))?;
        if auth.is_open() {
            warn!("No [auth] configured: the gateway is open, every client may subscribe to and publish anything.");
        }
        let dyn_log: Arc<dyn EventLog> = log.clone();
        let broker = Arc::new(herald_core::Broker::new(config.rendezvous.broker_limits()));
        let mut connectors = Vec::new();
        let mut peers = crate::peers::Peers::new();
        for (id, connector, runtime) in crate::peers::build(&config.peer, &broker) {
            peers.insert(id.clone(), runtime);
            connectors.push((id, connector));
        }
        // In a cluster, sessions live in a JetStream bucket every node shares.
        let mut kv_sessions = None;
        let store: Arc<dyn SessionStore> = match (store, config.session.store, &config.cluster) {
            (Some(store), _, _) => store,
            (None, _, Some(c)) => {
                let kv = Arc::new(herald_log::KvSessionStore::open(c, config.session.ttl).await?);
                kv_sessions = Some(kv.clone());
                kv
            }
            (None, SessionStoreKind::Disk, None) => Arc::new(DiskSessionStore::open(&config.data)?),
            (None, SessionStoreKind::Memory, None) => Arc::new(MemoryStore::new()),
        };
        let peers = Arc::new(peers);
        let idempotency = Arc::new(herald_core::IdempotencyWindow::new(
            config.publish.idempotency_window,
            config.publish.max_idempotency_keys,
        ));
        let keys = crate::publishing::rebuild_window(&*dyn_log, &idempotency).await?;
        info!(keys, window = ?config.publish.idempotency_window, "Idempotency window rebuilt from the log.");
        let host = Arc::new(crate::peers::GatewayHost {
            log: dyn_log.clone(),
            fanout: fanout.clone(),
            peers: peers.clone(),
            idempotency,
            node: config.cluster.as_ref().map(|c| c.node.clone()),
            relay: std::sync::OnceLock::new(),
        });
        // Cluster mode: the other nodes, rendezvous across them, peers'
        // status and dynamic bindings shared, single-leader peers on a lease.
        let cluster = match &config.cluster {
            Some(c) => Some(crate::cluster::start(c, &broker, &host, &peers, config.session.ttl).await?),
            None => None,
        };
        crate::peers::start(host.clone(), connectors, drain_rx.clone(), cluster.as_ref().map(|c| c.cluster.clone()));
        let state = AppState::new(crate::state::Parts {
            config: config.clone(),
            auth,
            peers,
            log: dyn_log,
            fanout: fanout.clone(),
            broker: broker.clone(),
            store,
            host,
            draining: drain_rx,
            cluster: cluster.clone(),
        });
        if let Some(c) = &cluster {
            crate::cluster::announce(&state, &c.cluster).await?;
        }
        restore_sessions(&state).await?;
        spawn_session_tasks(&state);
        if let Some(kv) = kv_sessions {
            spawn_cluster_session_tasks(&state, kv).await?;
        }

        // Log -> fan-out: committed batches in id order (see `dispatch` for
        // where that runs). Subscriptions whose client is behind continue
        // from the log.
        crate::dispatch::start(state.clone(), fanout, committed).map_err(ServerError::Thread)?;

        // The log's reachability (cluster mode: NATS), told to every client
        // as `status {source: "log"}` when it changes.
        if config.cluster.is_some() {
            spawn_log_watch(state.clone());
        }

        // Rendezvous deadlines: one timer for every request.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                broker.sweep(tokio::time::Instant::now());
            }
        });

        // Heartbeats and time-based retention: one task, no per-connection timers.
        let sweeper = state.clone();
        tokio::spawn(async move {
            let s = sweeper.get();
            let heartbeat_ms = s.config.heartbeat.as_millis() as u64;
            let mut tick = tokio::time::interval(Duration::from_millis((heartbeat_ms / 3).clamp(50, 1000)));
            let mut last_retention = Instant::now();
            loop {
                tick.tick().await;
                s.connections.sweep(s.now_ms(), heartbeat_ms, s.config.limits.slow_consumer_timeout, &s.metrics);
                if last_retention.elapsed() >= RETENTION_INTERVAL {
                    s.log.enforce_retention();
                    last_retention = Instant::now();
                }
            }
        });

        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|source| ServerError::Bind { addr: config.listen.clone(), source })?;
        let tls = match &config.tls {
            Some(t) => {
                // One process-wide crypto provider; installing it twice is harmless.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let loaded = RustlsConfig::from_pem_file(&t.cert_file, &t.key_file).await.map_err(|e| {
                    ServerError::Config(vec![format!(
                        "tls: cannot load {} / {}: {e}",
                        t.cert_file.display(),
                        t.key_file.display()
                    )])
                })?;
                Some(loaded)
            }
            None => None,
        };
        Ok(Server { state, listener, log, drain_tx, tls })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The shared state (for tests and the CLI).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serve until `shutdown` resolves, then drain: tell every client to
    /// reconnect (`closing` and close code 1001), wait up to the grace period
    /// for connections to finish, and close the log.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
        let Server { state, listener, log, drain_tx, tls } = self;
        let grace = state.get().config.shutdown_grace;
        let router = app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let handle = axum_server::Handle::new();
        let drain_state = state.clone();
        let drain_handle = handle.clone();
        tokio::spawn(async move {
            shutdown.await;
            info!("Shutting down: draining connections.");
            let _ = drain_tx.send(true);
            let s = drain_state.get();
            let closing =
                encode(&ServerMessage::Closing { reason: "server shutting down".into(), retry_after_ms: 1000 });
            for c in s.connections.all() {
                c.outbox.close_with(Some(closing.clone().into()), CloseCode::Draining.code(), "server shutting down");
            }
            // Stop accepting; connections get the grace period to finish.
            drain_handle.graceful_shutdown(Some(grace));
        });
        let listener = listener.into_std().map_err(ServerError::Serve)?;
        let server = axum_server::from_tcp(listener).map_err(ServerError::Serve)?.handle(handle);
        let result = match tls {
            Some(config) => server.acceptor(RustlsAcceptor::new(config).acceptor(tcp_acceptor())).serve(router).await,
            None => server.acceptor(tcp_acceptor()).serve(router).await,
        };
        let remaining = state.get().connections.len();
        if remaining > 0 {
            warn!(remaining, "Grace period over; closed the remaining connections.");
        }
        save_sessions(&state).await;
        if let Some(c) = &state.get().cluster {
            crate::cluster::leave(&state, &c.cluster).await;
        }
        log.close().await;
        info!("Event log closed.");
        result.map_err(ServerError::Serve)
    }

    /// Whether the listener speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// Cluster sessions: close this node's connection of a session another
/// node took over (4409), and write attached sessions again every
/// `session.ttl` so that their TTL in the bucket does not run out.
async fn spawn_cluster_session_tasks(state: &AppState, kv: Arc<herald_log::KvSessionStore>) -> Result<(), ServerError> {
    let watcher = state.clone();
    kv.watch_takeovers(move |id| {
        let closing =
            encode(&ServerMessage::Closing { reason: "session resumed on another node".into(), retry_after_ms: 0 });
        if watcher.get().sessions.forget_taken_over(&id, closing.into()) {
            info!(session = %id, "Session taken over by another node.");
        }
    })
    .await?;
    let toucher = state.clone();
    tokio::spawn(async move {
        let s = toucher.get();
        loop {
            tokio::time::sleep(s.config.session.ttl).await;
            let held: Vec<StoredSession> = s
                .sessions
                .all()
                .into_iter()
                .filter(|session| session.is_attached() && session.is_stored())
                .map(|session| session.stored())
                .collect();
            if let Err(e) = kv.touch(held).await {
                warn!(error = %e, "Could not refresh this node's sessions in the cluster.");
            }
        }
    });
    Ok(())
}

/// Watch whether the log can be written, and tell every connected client
/// when that changes (`status` with `source: "log"`).
fn spawn_log_watch(state: AppState) {
    use herald_log::WriteHealth;
    use herald_protocol::StatusState;
    tokio::spawn(async move {
        let s = state.get();
        let mut was_up = true;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let health = s.log.write_health();
            let up = !matches!(health, WriteHealth::Disconnected(_));
            if up == was_up {
                continue;
            }
            was_up = up;
            let detail = match health {
                WriteHealth::Disconnected(why) => {
                    format!("{why}; publishing is refused and live events wait until it is back")
                }
                _ => "the log is reachable again".to_string(),
            };
            let msg = ServerMessage::Status {
                source: "log".into(),
                state: if up { StatusState::Up } else { StatusState::Down },
                detail,
                node: None,
            };
            let frame: bytes::Bytes = encode(&msg).into();
            for c in s.connections.all() {
                let _ = c.outbox.push(herald_core::Frame::Text(frame.clone()));
            }
        }
    });
}

/// Write every session once more at shutdown (connections that did not
/// finish within the grace period count as detached at the next start).
async fn save_sessions(state: &AppState) {
    let s = state.get();
    let mut ops = s.sessions.take_dirty_acks();
    let keep = s.sessions.all().into_iter().filter(|session| session.is_stored() || session.sub_count() > 0);
    ops.extend(keep.map(|session| StoreOp::Put(session.stored())));
    let n = ops.len();
    match s.write_sessions(ops).await {
        Ok(()) => info!(writes = n, "Sessions stored for resumption after restart."),
        Err(e) => warn!(error = %e, "Could not store sessions at shutdown; the last coalesced acks may be replayed."),
    }
}

/// Load the stored sessions: they wait for their clients for what is left
/// of their TTL, holding their upstream bindings again.
async fn restore_sessions(state: &AppState) -> Result<(), ServerError> {
    let s = state.get();
    // An earlier version kept sessions (with secrets) in this file at shutdown.
    let legacy = s.config.data.join("sessions.json");
    if legacy.exists() {
        warn!(path = %legacy.display(), "Removing sessions.json from an earlier version; those clients start new sessions.");
        let _ = std::fs::remove_file(&legacy);
    }
    let stored = s.store.load().await?;
    let restored = s.sessions.restore(stored, |bindings| crate::peers::lease(&s.peers, bindings));
    if !restored.expired.is_empty() {
        s.write_sessions(restored.expired.iter().cloned().map(StoreOp::Delete).collect()).await?;
    }
    if restored.dropped_subs > 0 || restored.unleased_subs > 0 {
        warn!(
            dropped = restored.dropped_subs,
            unleased = restored.unleased_subs,
            "Some stored subscriptions no longer compile (dropped) or could not take their upstream bindings (retried at resume)."
        );
    }
    info!(sessions = restored.sessions, expired = restored.expired.len(), "Sessions restored.");
    Ok(())
}

/// Session expiry and the coalesced ack flush: each task sleeps until its
/// next deadline, not on a fixed tick.
fn spawn_session_tasks(state: &AppState) {
    let expiry = state.clone();
    tokio::spawn(async move {
        let s = expiry.get();
        loop {
            match s.sessions.next_expiry() {
                Some(wait) if !wait.is_zero() => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = s.sessions.expiry_changed() => continue,
                    }
                }
                Some(_) => {}
                None => {
                    s.sessions.expiry_changed().await;
                    continue;
                }
            }
            let expired = s.sessions.expire_due();
            if expired.is_empty() {
                continue;
            }
            for session in &expired {
                info!(session = %session.id(), "Session expired.");
            }
            let ops: Vec<StoreOp> = expired
                .iter()
                .filter(|session| session.is_stored())
                .map(|session| StoreOp::Delete(session.id().to_string()))
                .collect();
            if ops.is_empty() {
                continue;
            }
            if let Err(e) = s.write_sessions(ops).await {
                warn!(error = %e, "Could not remove expired sessions from the store; they are dropped at the next start.");
            }
        }
    });
    let flusher = state.clone();
    tokio::spawn(async move {
        let s = flusher.get();
        loop {
            s.sessions.acks_waiting().await;
            // Coalesce: everything acked in this window goes in one write.
            tokio::time::sleep(s.config.session.ack_flush).await;
            let ops = s.sessions.take_dirty_acks();
            if ops.is_empty() {
                continue;
            }
            let ids: Vec<String> = ops
                .iter()
                .filter_map(|op| match op {
                    StoreOp::Put(p) => Some(p.id.clone()),
                    StoreOp::Acks { id, .. } => Some(id.clone()),
                    StoreOp::Delete(_) => None,
                })
                .collect();
            if let Err(e) = s.write_sessions(ops).await {
                warn!(error = %e, "Could not store acknowledged ids; retrying with the next flush.");
                s.sessions.mark_unsaved(ids);
            }
        }
    });
}

/// Why the server could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid; every problem is listed.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
    /// The log could not be opened.
    #[error(transparent)]
    Log(#[from] herald_log::LogError),
    /// The session store could not be opened or read.
    #[error(transparent)]
    Sessions(#[from] herald_core::StoreError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving failed: {0}")]
    Serve(std::io::Error),
    /// The fan-out's thread could not be started.
    #[error("cannot start the fan-out thread: {0}")]
    Thread(std::io::Error),
}

/// What every accepted TCP connection goes through first, before TLS and
/// HTTP: `TCP_NODELAY`. An event is written the moment it is committed;
/// Nagle's algorithm would hold a small write while the previous one is
/// unacknowledged, and a client's delayed ACK stretches that to tens of
/// milliseconds (docs/operations.md, "Nagle's algorithm").
fn tcp_acceptor() -> NoDelayAcceptor {
    NoDelayAcceptor::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum_server::accept::Accept;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() -> std::io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let _client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
        let (stream, _) = listener.accept().await?;
        // The kernel's default is Nagle on: the acceptor is what turns it off.
        assert!(!stream.nodelay()?);
        let (stream, ()) = tcp_acceptor().accept(stream, ()).await?;
        assert!(stream.nodelay()?);
        Ok(())
    }
}
