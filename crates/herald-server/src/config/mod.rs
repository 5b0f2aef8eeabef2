//! The one configuration struct, loaded in layers (defaults, the TOML
//! file, `HERALD_<SECTION>__<KEY>` variables, the command line) and
//! validated at start-up.
//!
//! Every field is documented in `docs/configuration.md`; defaults live here
//! and only here.

mod load;
mod schema;
mod template;

pub use load::{LoadError, Overrides, ENV_PREFIX};
pub use schema::config_schema;
pub use template::{default_toml, effective_toml};

use herald_log::{duration, LogConfig};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Herald's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on, `host:port` (port 0 picks a free port).
    pub listen: String,
    /// Data directory (the log lives in `<data>/log`).
    pub data: PathBuf,
    /// The embedded log (and the retention of the cluster log).
    pub log: LogConfig,
    /// Cluster mode: the log on NATS JetStream (`[cluster]`). Absent, the
    /// log is embedded in the data directory.
    pub cluster: Option<herald_log::ClusterConfig>,
    /// Per-connection and per-request limits.
    pub limits: LimitsConfig,
    /// Sessions.
    pub session: SessionConfig,
    /// Publishing (`[publish]`).
    pub publish: PublishConfig,
    /// The `/metrics` endpoint (`[metrics]`).
    pub metrics: MetricsConfig,
    /// The listener's view of its clients (`[server]`).
    pub server: ServerConfig,
    /// Authentication.
    pub auth: AuthConfig,
    /// TLS on the listener (absent: plain HTTP, e.g. behind a proxy that terminates TLS).
    pub tls: Option<TlsConfig>,
    /// Publish stream lifecycle events (`start`/`end` of every WebSocket and
    /// SSE connection) on the `herald.streams` exchange.
    pub stream_events: bool,
    /// Connectors (`[[peer]]` tables).
    pub peer: Vec<herald_connectors::PeerConfig>,
    /// Request/response rendezvous.
    pub rendezvous: RendezvousConfig,
    /// Idle connections are pinged after this long and closed after three times as long.
    #[serde(with = "duration")]
    #[schemars(with = "String")]
    pub heartbeat: Duration,
    /// On shutdown, how long to wait for connections to drain before exiting.
    #[serde(with = "duration")]
    #[schemars(with = "String")]
    pub shutdown_grace: Duration,
}

/// Limits (all advertised to clients in `welcome.limits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest WebSocket text frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Most subscriptions on one connection (session).
    pub max_subscriptions: usize,
    /// Most bindings in one subscription.
    pub max_bindings: usize,
    /// Most filters in one subscription.
    pub max_filters: usize,
    /// Most bytes of events queued for one client; past it the client's
    /// subscriptions continue from the log at its pace (replies may use as
    /// much again before the client is closed as a slow consumer).
    pub max_outbound_bytes: usize,
    /// A client with bytes waiting and nothing written for this long is
    /// closed as a slow consumer (4408).
    #[serde(with = "duration")]
    #[schemars(with = "String")]
    pub slow_consumer_timeout: Duration,
    /// Most WebSocket and SSE connections in total; more are refused with HTTP 503.
    pub max_connections: usize,
    /// Most connections from one IP address (0: no limit); more get HTTP 429.
    pub max_connections_per_ip: usize,
    /// Most connections of one user (0: no limit); more are closed with 4429.
    pub max_connections_per_user: usize,
    /// Commands a WebSocket client may send per second, with bursts of twice
    /// that (0: no limit).
    pub commands_per_second: u32,
    /// HTTP `POST /v1/publish` requests per second per user (per address for
    /// anonymous clients), with bursts of twice that; 0: unlimited. Past it:
    /// `429 limit_exceeded` with `Retry-After`.
    pub http_publishes_per_second: u32,
    /// Most events one `since` request may ask to replay (`since.last`).
    pub max_replay: u64,
    /// Largest event payload (JSON text), in bytes.
    pub max_payload_bytes: usize,
    /// Most events in one `POST /v1/publish` array.
    pub max_publish_batch: usize,
    /// Largest HTTP request body, in bytes.
    pub max_request_bytes: usize,
    /// Most sessions of one user (anonymous clients: of one address),
    /// attached and detached together (0: no limit). A new session past it
    /// ends the user's longest-detached session; if none is detached the
    /// `hello` is refused with `limit_exceeded` (close 4429).
    pub max_sessions_per_user: usize,
    /// Most subscriptions of one user across all its sessions (0: no limit).
    pub max_subscriptions_per_user: usize,
    /// Most bindings of one user across all its sessions (0: no limit).
    pub max_bindings_per_user: usize,
    /// Most bytes of binding and filter text all sessions on this node hold
    /// together (0: no limit); past it `subscribe` answers `unavailable`.
    pub max_subscription_bytes_per_node: usize,
    /// Chunks of history one connection's replays and catch-ups read at
    /// once; more wait their turn.
    pub max_replays_per_connection: usize,
    /// Chunks of history one user's replays read at once, across connections.
    pub max_replays_per_user: usize,
    /// Chunks of history read at once on this node.
    pub max_replays_per_node: usize,
}

/// Session settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// How long a session outlives an abrupt disconnect (and a crash or
    /// restart: the time the gateway is down counts).
    #[serde(with = "duration")]
    #[schemars(with = "String")]
    pub ttl: Duration,
    /// How often acknowledged ids are written to the session store, at most
    /// (they are also written when a connection detaches). After a crash a
    /// resumed session replays at most what was acknowledged in this window.
    #[serde(with = "duration")]
    #[schemars(with = "String")]
    pub ack_flush: Duration,
    /// Where sessions are kept: `disk` (the data directory, survives crashes)
    /// or `memory` (lost with the process).
    pub store: SessionStoreKind,
}

/// Where sessions are kept (`session.store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStoreKind {
    /// `sessions.redb` in the data directory.
    Disk,
    /// In memory only.
    Memory,
}

/// Rendezvous settings (`[rendezvous]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RendezvousConfig {
    /// How long a request waits for a free responder before `unavailable`.
    #[serde(with = "duration")]
    #[schemars(with = "String")]
    pub match_timeout: Duration,
    /// How long a responder has to answer before `timeout`; also the
    /// longest `timeout_ms` a request may ask for.
    #[serde(with = "duration")]
    #[schemars(with = "String")]
    pub answer_timeout: Duration,
    /// How long `POST /v1/rendezvous/{service}/poll` waits for a request
    /// before answering 204 (a `timeout` query parameter may shorten it).
    #[serde(with = "duration")]
    #[schemars(with = "String")]
    pub poll_timeout: Duration,
    /// Largest request or answer body, as JSON text.
    pub max_body_bytes: usize,
    /// Most requests waiting for a responder, per service.
    pub max_waiting: usize,
    /// Most requests one WebSocket responder may take at once (`serve.concurrency`).
    pub max_concurrency: u32,
    /// Most unanswered requests one WebSocket connection may have open.
    pub max_requests_per_connection: usize,
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        RendezvousConfig {
            match_timeout: Duration::from_secs(2),
            answer_timeout: Duration::from_secs(10),
            poll_timeout: Duration::from_secs(30),
            max_body_bytes: 65536,
            max_waiting: 10_000,
            max_concurrency: 64,
            max_requests_per_connection: 100,
        }
    }
}

impl RendezvousConfig {
    /// The broker's limits.
    pub fn broker_limits(&self) -> herald_core::BrokerLimits {
        herald_core::BrokerLimits {
            match_timeout: self.match_timeout,
            answer_timeout: self.answer_timeout,
            max_waiting: self.max_waiting,
            max_concurrency: self.max_concurrency,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7070".to_string(),
            data: PathBuf::from("herald-data"),
            log: LogConfig::default(),
            cluster: None,
            limits: LimitsConfig::default(),
            session: SessionConfig::default(),
            publish: PublishConfig::default(),
            metrics: MetricsConfig::default(),
            server: ServerConfig::default(),
            auth: AuthConfig::default(),
            tls: None,
            peer: Vec::new(),
            rendezvous: RendezvousConfig::default(),
            stream_events: false,
            heartbeat: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// `/metrics` settings (`[metrics]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// When set, `GET /metrics` needs `Authorization: Bearer <token>` (or
    /// `?token=`); without it the endpoint is open (keep it off the
    /// internet then).
    #[schemars(extend("x-secret" = true))]
    pub token: Option<String>,
}

/// Listener settings (`[server]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Proxies (CIDRs such as `10.0.0.0/8` or single addresses) whose
    /// `X-Forwarded-For` / `Forwarded` headers are believed: a connection
    /// from one of them counts against the per-address limits, and is
    /// logged, as the client address the proxy names. From anywhere else
    /// those headers are ignored.
    pub trusted_proxies: Vec<String>,
    /// Where committed events are dispatched to live subscribers (see
    /// docs/operations.md, "Where the fan-out runs"): `auto` (on a writer
    /// thread while the writers are idle, on the fan-out thread while they
    /// are busy), `writer` or `thread` (always there).
    pub fanout_dispatch: FanoutDispatch,
}

/// `server.fanout_dispatch`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FanoutDispatch {
    /// On a writer thread while every writer thread is parked; otherwise
    /// on the `herald-fanout` thread.
    #[default]
    Auto,
    /// Always on a writer thread (lowest latency on an idle gateway).
    Writer,
    /// Always on the `herald-fanout` thread (the order of wakes under load).
    Thread,
}

/// Publish settings (`[publish]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// How long an `idempotency_key` is remembered: a second publish with
    /// the same key and exchange within it is answered with the first id
    /// and not stored again. Rebuilt from the log at start.
    #[serde(with = "duration")]
    #[schemars(with = "String")]
    pub idempotency_window: Duration,
    /// Most keys remembered at once; past that the oldest are forgotten
    /// early (counted in `herald_idempotency_forgotten_early_total`).
    pub max_idempotency_keys: usize,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig { idempotency_window: Duration::from_secs(120), max_idempotency_keys: 1_000_000 }
    }
}

/// TLS settings (`[tls]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Authentication settings (`[auth]`).
///
/// With neither `jwt_secret` nor `jwt_public_key_file` the gateway runs
/// *open*: clients need no token and may do everything (unless
/// `[auth.anonymous]` says otherwise). Open mode is logged as a warning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Shared secret for HS256 tokens (or the `HERALD_JWT_SECRET` environment variable).
    #[schemars(extend("x-secret" = true))]
    pub jwt_secret: Option<String>,
    /// PEM public key file for RS256 or ES256 tokens.
    pub jwt_public_key_file: Option<PathBuf>,
    /// `RS256` or `ES256`, the algorithm of `jwt_public_key_file`.
    pub jwt_algorithm: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "duration")]
    #[schemars(with = "String")]
    pub leeway: Duration,
    /// How long a revocation by user (or by `jti` without the token's `exp`)
    /// is kept; tokens should live shorter than this.
    #[serde(with = "duration")]
    #[schemars(with = "String")]
    pub revocation_ttl: Duration,
    /// Browser origins allowed to open WebSockets and SSE streams; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Grants of clients that present no token. Absent: none when tokens are
    /// configured, everything in open mode.
    pub anonymous: Option<herald_core::GrantsSpec>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_algorithm: None,
            leeway: Duration::from_secs(30),
            revocation_ttl: Duration::from_secs(24 * 3600),
            allowed_origins: Vec::new(),
            anonymous: None,
        }
    }
}

impl AuthConfig {
    /// Whether tokens are verified.
    pub fn has_key(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key_file.is_some()
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_frame_bytes: 1 << 20,
            max_subscriptions: 100,
            max_bindings: 32,
            max_filters: 32,
            max_outbound_bytes: 8 << 20,
            slow_consumer_timeout: Duration::from_secs(30),
            max_connections: 100_000,
            max_connections_per_ip: 1_000,
            max_connections_per_user: 100,
            commands_per_second: 200,
            http_publishes_per_second: 200,
            max_replay: 100_000,
            max_payload_bytes: 512 << 10,
            max_publish_batch: 1000,
            max_request_bytes: 16 << 20,
            max_sessions_per_user: 200,
            max_subscriptions_per_user: 1_000,
            max_bindings_per_user: 10_000,
            max_subscription_bytes_per_node: 64 << 20,
            max_replays_per_connection: 2,
            max_replays_per_user: 4,
            max_replays_per_node: 8,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ttl: Duration::from_secs(120),
            ack_flush: Duration::from_secs(1),
            store: SessionStoreKind::Disk,
        }
    }
}

impl Config {
    /// Check every setting; returns all problems at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut p = self.log.validate();
        if let Some(c) = &self.cluster {
            p.extend(c.validate());
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!("listen: `{}` is not an address such as 127.0.0.1:7070", self.listen));
        }
        let l = &self.limits;
        for (name, v) in [
            ("limits.max_frame_bytes", l.max_frame_bytes),
            ("limits.max_subscriptions", l.max_subscriptions),
            ("limits.max_connections", l.max_connections),
            ("limits.max_bindings", l.max_bindings),
            ("limits.max_outbound_bytes", l.max_outbound_bytes),
            ("limits.max_payload_bytes", l.max_payload_bytes),
            ("limits.max_publish_batch", l.max_publish_batch),
            ("limits.max_request_bytes", l.max_request_bytes),
            ("limits.max_replays_per_connection", l.max_replays_per_connection),
            ("limits.max_replays_per_user", l.max_replays_per_user),
            ("limits.max_replays_per_node", l.max_replays_per_node),
        ] {
            if v == 0 {
                p.push(format!("{name} must be at least 1"));
            }
        }
        if l.max_frame_bytes < 1024 {
            p.push("limits.max_frame_bytes must be at least 1024".into());
        }
        if l.max_outbound_bytes < l.max_frame_bytes {
            p.push("limits.max_outbound_bytes must be at least limits.max_frame_bytes".into());
        }
        if l.max_payload_bytes > l.max_request_bytes {
            p.push("limits.max_payload_bytes must not exceed limits.max_request_bytes".into());
        }
        if l.max_bindings_per_user != 0 && l.max_bindings_per_user < l.max_bindings {
            p.push("limits.max_bindings_per_user must be 0 (no limit) or at least limits.max_bindings".into());
        }
        if l.slow_consumer_timeout < Duration::from_millis(100) {
            p.push("limits.slow_consumer_timeout must be at least 100ms".into());
        }
        if self.heartbeat < Duration::from_millis(100) {
            p.push("heartbeat must be at least 100ms".into());
        }
        let a = &self.auth;
        if a.jwt_secret.is_some() && a.jwt_public_key_file.is_some() {
            p.push("auth: set jwt_secret or jwt_public_key_file, not both".into());
        }
        if a.jwt_secret.as_deref().is_some_and(|s| s.len() < 16) {
            p.push("auth.jwt_secret must be at least 16 bytes".into());
        }
        match (&a.jwt_public_key_file, a.jwt_algorithm.as_deref()) {
            (Some(_), Some("RS256" | "ES256")) | (None, None) => {}
            (Some(_), _) => p.push("auth.jwt_algorithm must be RS256 or ES256 with jwt_public_key_file".into()),
            (None, Some(_)) => p.push("auth.jwt_algorithm needs auth.jwt_public_key_file".into()),
        }
        if let Some(anon) = &a.anonymous {
            if let Err(e) = herald_core::Grants::compile(anon) {
                p.push(format!("auth.anonymous: {e}"));
            }
        }
        p.extend(crate::peers::validate(&self.peer));
        let r = &self.rendezvous;
        for (name, d) in [
            ("rendezvous.match_timeout", r.match_timeout),
            ("rendezvous.answer_timeout", r.answer_timeout),
            ("rendezvous.poll_timeout", r.poll_timeout),
        ] {
            if d < Duration::from_millis(10) {
                p.push(format!("{name} must be at least 10ms"));
            }
        }
        for (name, v) in [
            ("rendezvous.max_body_bytes", r.max_body_bytes),
            ("rendezvous.max_waiting", r.max_waiting),
            ("rendezvous.max_concurrency", r.max_concurrency as usize),
            ("rendezvous.max_requests_per_connection", r.max_requests_per_connection),
        ] {
            if v == 0 {
                p.push(format!("{name} must be at least 1"));
            }
        }
        if self.session.ack_flush.is_zero() || self.session.ack_flush > self.session.ttl {
            p.push("session.ack_flush must be positive and at most session.ttl".into());
        }
        for cidr in &self.server.trusted_proxies {
            if cidr.parse::<ipnet::IpNet>().is_err() && cidr.parse::<std::net::IpAddr>().is_err() {
                p.push(format!("server.trusted_proxies: `{cidr}` is not an address or CIDR (such as 10.0.0.0/8)"));
            }
        }
        if self.metrics.token.as_ref().is_some_and(|t| t.len() < 16) {
            p.push("metrics.token must be at least 16 characters".into());
        }
        if self.publish.max_idempotency_keys == 0 {
            p.push("publish.max_idempotency_keys must be at least 1".into());
        }
        if self.session.ttl.is_zero() {
            p.push("session.ttl must be positive".into());
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(p)
        }
    }
}
