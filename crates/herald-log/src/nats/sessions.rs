//! [`KvSessionStore`]: sessions in a JetStream key-value bucket, shared by
//! every node of a cluster, so that a client resumes on any node.
//!
//! The bucket is `<stream>_SESSIONS` (file storage, the cluster's
//! replicas, one revision per key). Keys:
//!
//! - `s.<id>`: the session ([`StoredSession`] as JSON), with the node that
//!   wrote it;
//! - `a.<id>`: its acknowledged ids (`{sub: id}`), written coalesced.
//!
//! Every write carries a per-message TTL (`Nats-TTL`), so that NATS forgets
//! a session cluster-wide whatever happens to the node holding it: a
//! detached session lives for what is left of `session.ttl`; an attached
//! one for three times `session.ttl`, and its node writes it again every
//! `session.ttl` ([`KvSessionStore::touch`]). If that node dies, its
//! attached sessions stay resumable (on any node) until their TTL runs out.
//!
//! Take-over across nodes: a node resuming a session writes it with its own
//! name; every node watches the bucket ([`KvSessionStore::watch_takeovers`])
//! and closes its own connection of a session another node wrote (4409).

use super::ClusterConfig;
use crate::error::LogError;
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use herald_core::session::{merge_acks, SessionStore, StoreError, StoreOp, StoredSession};
use std::collections::BTreeMap;
use std::time::Duration;

/// Sessions in a JetStream key-value bucket.
pub struct KvSessionStore {
    js: jetstream::Context,
    kv: kv::Store,
    bucket: String,
    node: String,
    ttl: Duration,
}

impl std::fmt::Debug for KvSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvSessionStore").field("bucket", &self.bucket).finish_non_exhaustive()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl KvSessionStore {
    /// Open (or create) the bucket; `ttl` is `session.ttl`.
    pub async fn open(c: &ClusterConfig, ttl: Duration) -> Result<KvSessionStore, LogError> {
        let client = super::connect(c, |_| {}).await?;
        let js = jetstream::new(client);
        let bucket = format!("{}_SESSIONS", c.stream);
        let kv = super::open_bucket(&js, &bucket, c.replicas, "the sessions").await?;
        Ok(KvSessionStore { js, kv, bucket, node: c.node.clone(), ttl })
    }

    /// How long NATS keeps a write of this session.
    fn ttl_of(&self, s: &StoredSession) -> Duration {
        match s.detached_at_ms {
            Some(at) => {
                let now = herald_core::event::now_us() / 1000;
                let left = (at + self.ttl.as_millis() as u64).saturating_sub(now);
                // Whole seconds, rounded up, and never 0 (which means "forever").
                Duration::from_secs(left.div_ceil(1000).max(1) + 1)
            }
            None => self.ttl * 3,
        }
    }

    async fn put(&self, key: String, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        let value: bytes::Bytes = value.into();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let msg = jetstream::message::PublishMessage::build()
                .payload(value.clone())
                .header("Nats-TTL", ttl.as_secs().max(1).to_string().as_str());
            let acked = self.js.send_publish(format!("$KV.{}.{key}", self.bucket), msg).await.map_err(backend)?.await;
            match acked {
                Ok(_) => return Ok(()),
                // No stream answered (a bucket just created, a leader being
                // elected): nothing was stored, so trying again is safe.
                Err(e)
                    if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(backend(e)),
            }
        }
    }

    /// Write these attached sessions again, so that their TTL in the bucket
    /// does not run out while they are held (call every `session.ttl`).
    pub async fn touch(&self, sessions: Vec<StoredSession>) -> Result<(), StoreError> {
        self.write_ops(sessions.into_iter().map(StoreOp::Put).collect()).await
    }

    async fn write_ops(&self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        for op in ops {
            match op {
                StoreOp::Put(mut s) => {
                    s.node = Some(self.node.clone());
                    let ttl = self.ttl_of(&s);
                    let json = serde_json::to_vec(&s).map_err(backend)?;
                    self.put(format!("s.{}", s.id), json, ttl).await?;
                }
                StoreOp::Acks { id, acks } => {
                    let json = serde_json::to_vec(&acks).map_err(backend)?;
                    self.put(format!("a.{id}"), json, self.ttl * 3).await?;
                }
                StoreOp::Delete(id) => {
                    self.kv.purge(format!("s.{id}")).await.map_err(backend)?;
                    self.kv.purge(format!("a.{id}")).await.map_err(backend)?;
                }
            }
        }
        Ok(())
    }

    /// Ids of sessions another node wrote (took over) or removed, as they
    /// happen; this node closes its own connection of each.
    ///
    /// Starting the watch is retried for a few seconds (a cluster still
    /// electing its leaders, or a loaded one, can time the first request
    /// out), as opening the log is, before the node gives up starting.
    pub async fn watch_takeovers(&self, seen: impl Fn(String) + Send + 'static) -> Result<(), StoreError> {
        let mut delay = Duration::from_millis(250);
        let mut watch = loop {
            match self.kv.watch("s.>").await {
                Ok(watch) => break watch,
                Err(e) if delay <= Duration::from_secs(4) => {
                    tracing::warn!(error = %e, "Cannot watch the cluster's sessions yet; retrying.");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(backend(e)),
            }
        };
        let me = self.node.clone();
        tokio::spawn(async move {
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { continue };
                let Some(id) = entry.key.strip_prefix("s.") else { continue };
                let other = match entry.operation {
                    kv::Operation::Put => serde_json::from_slice::<StoredSession>(&entry.value)
                        .map(|s| s.node.as_deref() != Some(me.as_str()))
                        .unwrap_or(false),
                    // Removed (ended, expired) by another node, or by NATS.
                    kv::Operation::Delete | kv::Operation::Purge => true,
                };
                if other {
                    seen(id.to_string());
                }
            }
        });
        Ok(())
    }
}

impl SessionStore for KvSessionStore {
    /// Nothing at start: in a cluster a session is loaded where its client
    /// resumes ([`SessionStore::get`]).
    fn load(&self) -> futures_util::future::BoxFuture<'_, Result<Vec<StoredSession>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn write(&self, ops: Vec<StoreOp>) -> futures_util::future::BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.write_ops(ops))
    }

    fn get(&self, id: &str) -> futures_util::future::BoxFuture<'_, Result<Option<StoredSession>, StoreError>> {
        let id = id.to_string();
        Box::pin(async move {
            // Session ids are hex; anything else cannot be a key of ours.
            if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Ok(None);
            }
            let Some(value) = self.kv.get(format!("s.{id}")).await.map_err(backend)? else {
                return Ok(None);
            };
            let mut s: StoredSession = serde_json::from_slice(&value)
                .map_err(|e| StoreError::Corrupt { key: format!("s.{id}"), message: e.to_string() })?;
            if let Some(a) = self.kv.get(format!("a.{id}")).await.map_err(backend)? {
                if let Ok(acks) = serde_json::from_slice::<BTreeMap<String, u64>>(&a) {
                    merge_acks(&mut s, &acks);
                }
            }
            Ok(Some(s))
        })
    }
}
