//! The log on NATS JetStream, for cluster mode: several Herald nodes share
//! one stream, and so one sequence of ids.
//!
//! - [`ClusterConfig`]: the `[cluster]` section (NATS addresses, this
//!   node's name, stream, replicas, credentials, TLS).
//! - [`connect`]: a client, refusing a server older than [`MIN_SERVER`].
//! - [`JetStreamLog`]: the [`EventLog`](crate::EventLog) on one stream.
//! - [`subject`]: how exchange and routing key become a subject.

mod log;
mod sessions;
pub mod subject;

pub use log::JetStreamLog;
pub use sessions::KvSessionStore;

use crate::error::LogError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The oldest nats-server Herald runs on: batched direct gets (`batch`,
/// `up_to_seq`) and several filter subjects per consumer.
pub const MIN_SERVER: (u64, u64, u64) = (2, 11, 0);

/// The `[cluster]` section: present, Herald runs on NATS JetStream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers, `nats://host:port` (any one is enough to join).
    pub nats_urls: Vec<String>,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// The stream holding the log; its subjects are `<stream>.>`.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Copies of the stream JetStream keeps (1, 3 or 5).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How long JetStream remembers `Nats-Msg-Id`s (idempotency keys) to
    /// drop a repeated publish cluster-wide.
    #[serde(default = "default_duplicate_window", with = "crate::config::duration")]
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub duplicate_window: Duration,
    /// How long a node may go unheard (no heartbeat) before the others
    /// count it lost: its responders' requests fail, its requesters'
    /// answers are refused. Nodes send a heartbeat every third of this.
    #[serde(default = "default_node_timeout", with = "crate::config::duration")]
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub node_timeout: Duration,
    /// How long a connector's leadership lasts without renewal (PostgreSQL
    /// sources run on one node at a time): the longest a source pauses when
    /// its node dies. Whole seconds, at least 2.
    #[serde(default = "default_lease_ttl", with = "crate::config::duration")]
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub lease_ttl: Duration,
    /// A NATS credentials file (JWT and seed).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// User name (with `password`).
    #[serde(default)]
    pub user: Option<String>,
    /// Password (with `user`).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("x-secret" = true)))]
    pub password: Option<String>,
    /// An authentication token.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("x-secret" = true)))]
    pub token: Option<String>,
    /// PEM file of the CA that signed the NATS servers' certificates (TLS).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate for TLS (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// Client key for TLS (with `tls_cert_file`).
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

fn default_stream() -> String {
    "HERALD".into()
}

fn default_replicas() -> usize {
    3
}

fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}

fn default_node_timeout() -> Duration {
    Duration::from_secs(3)
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(5)
}

impl ClusterConfig {
    /// Every problem with the section.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.nats_urls.is_empty() {
            p.push("cluster.nats_urls must name at least one NATS server (nats://host:port)".into());
        }
        for u in &self.nats_urls {
            if !(u.starts_with("nats://") || u.starts_with("tls://")) {
                p.push(format!("cluster.nats_urls: `{u}` is not a nats://host:port address"));
            }
        }
        let token_ok =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !token_ok(&self.node) {
            p.push("cluster.node must be a name of letters, digits, `-` and `_`, unique in the cluster".into());
        }
        if !token_ok(&self.stream) {
            p.push("cluster.stream must be letters, digits, `-` and `_`".into());
        }
        if ![1, 3, 5].contains(&self.replicas) {
            p.push("cluster.replicas must be 1, 3 or 5".into());
        }
        if self.node_timeout < Duration::from_millis(300) {
            p.push("cluster.node_timeout must be at least 300ms".into());
        }
        if self.lease_ttl < Duration::from_secs(2) || self.lease_ttl.subsec_nanos() != 0 {
            p.push("cluster.lease_ttl must be whole seconds, at least 2s".into());
        }
        if self.user.is_some() != self.password.is_some() {
            p.push("cluster.user and cluster.password go together".into());
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            p.push("cluster.tls_cert_file and cluster.tls_key_file go together".into());
        }
        p
    }
}

/// Parse `x.y.z` (with any suffix such as `-beta`).
fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim_start_matches('v').split(['-', '+']).next()?;
    let mut it = core.split('.').map(|n| n.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// Connect to NATS with the section's credentials and TLS; refuse a server
/// older than [`MIN_SERVER`], naming the version needed. `connected` is
/// told at once whenever the connection is lost or back.
pub async fn connect(
    c: &ClusterConfig,
    connected: impl Fn(bool) + Send + Sync + 'static,
) -> Result<async_nats::Client, LogError> {
    let unavailable = |why: String| LogError::Unavailable(why);
    let connected = std::sync::Arc::new(connected);
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("herald-{}", c.node))
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let connected = connected.clone();
            async move {
                match event {
                    async_nats::Event::Connected => connected(true),
                    async_nats::Event::Disconnected | async_nats::Event::Closed => connected(false),
                    other => tracing::info!(event = %other, "NATS connection event."),
                }
            }
        });
    if let Some(path) = &c.credentials_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| unavailable(format!("cannot read {}: {e}", path.display())))?;
    }
    if let (Some(u), Some(pw)) = (&c.user, &c.password) {
        opts = opts.user_and_password(u.clone(), pw.clone());
    }
    if let Some(t) = &c.token {
        opts = opts.token(t.clone());
    }
    if let Some(ca) = &c.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&c.tls_cert_file, &c.tls_key_file) {
        opts = opts.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
    }
    // NATS may start a moment after Herald: try for a while (the first
    // connection must succeed here, so that the server's version is known).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let client = loop {
        match opts.clone().connect(c.nats_urls.clone()).await {
            Ok(client) => break client,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "NATS is not reachable yet; retrying.");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(unavailable(format!("cannot connect to NATS at {}: {e}", c.nats_urls.join(", ")))),
        }
    };
    let version = client.server_info().version;
    let (a, b, cc) = MIN_SERVER;
    match parse_version(&version) {
        Some(v) if v >= MIN_SERVER => Ok(client),
        _ => Err(LogError::Config(format!(
            "nats-server {version} is too old: Herald needs nats-server {a}.{b}.{cc} or newer \
             (batched direct get, several filter subjects per consumer)"
        ))),
    }
}

/// Open the key-value bucket `bucket`, creating it (file storage, one
/// value per key, `replicas` copies, per-message TTLs allowed) if missing;
/// retried for up to 30 s while JetStream is not ready. `what` names its
/// contents in logs and errors.
pub async fn open_bucket(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    replicas: usize,
    what: &str,
) -> Result<async_nats::jetstream::kv::Store, LogError> {
    use async_nats::jetstream::{self, kv};
    let config = kv::Config {
        bucket: bucket.to_string(),
        history: 1,
        num_replicas: replicas,
        storage: jetstream::stream::StorageType::File,
        // Allows per-message TTLs (and says how long the markers of
        // expired keys are kept).
        limit_markers: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let made = match js.get_key_value(bucket).await {
            Ok(kv) => Ok(kv),
            Err(_) => js.create_key_value(config.clone()).await.map_err(|e| e.to_string()),
        };
        match made {
            Ok(kv) => return Ok(kv),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, %bucket, "JetStream is not ready to hold {what} yet; retrying.");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(LogError::Unavailable(format!("cannot create the bucket {bucket} for {what}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("v2.11.0-beta.1"), Some((2, 11, 0)));
        assert!(parse_version("2.9.10").is_some_and(|v| v < MIN_SERVER));
        assert!(parse_version("2.11.0").is_some_and(|v| v >= MIN_SERVER));
        assert_eq!(parse_version("x"), None);
    }
}
