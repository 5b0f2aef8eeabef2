//! [`DiskSessionStore`]: sessions kept in the data directory, so that they
//! survive a crash (`kill -9`) as well as an orderly restart.
//!
//! # On-disk format
//!
//! One [redb](https://docs.rs/redb) database, `sessions.redb`, owner-only
//! (mode 0600), with two tables keyed by session id:
//!
//! - `sessions`: the JSON of a [`StoredSession`] (id, SHA-256 of the secret,
//!   user, detached time, subscriptions with bindings, filters, paused flag
//!   and acknowledged id), rewritten whole when the session changes;
//! - `acks`: a JSON object `{sub: acked}` written by the coalesced ack
//!   flush, so that frequent acks do not rewrite large subscription sets.
//!   A whole-session write removes it (it holds the same ids or newer).
//!
//! At load an `acks` entry raises the acknowledged ids of its session (never
//! lowers them). redb commits are crash-safe (copy-on-write B-trees, a
//! checksummed commit slot, fsync before `commit` returns).
//!
//! # Group commit
//!
//! One writer thread owns the write transactions: every batch of operations
//! queued while the previous commit was running goes into one transaction
//! and one fsync, so a storm of reconnects does not cost a disk sync each.

use futures_util::future::BoxFuture;
use herald_core::session::{merge_acks, SessionStore, StoreError, StoreOp, StoredSession};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;
use tracing::error;

const SESSIONS: TableDefinition<&str, &str> = TableDefinition::new("sessions");
const ACKS: TableDefinition<&str, &str> = TableDefinition::new("acks");

/// The file name inside the data directory.
pub const SESSIONS_FILE: &str = "sessions.redb";

type Job = (Vec<StoreOp>, oneshot::Sender<Result<(), StoreError>>);

/// Sessions in `sessions.redb` in the data directory.
#[derive(Debug)]
pub struct DiskSessionStore {
    db: Arc<Database>,
    /// `None` only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for DiskSessionStore {
    /// Finish queued writes and close the database, so that the file can be
    /// opened again at once (redb holds a lock on it).
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The session store's page cache (see [`DiskSessionStore::open`]).
const SESSIONS_CACHE_BYTES: usize = 2 << 20;

impl DiskSessionStore {
    /// Open (or create) `dir/sessions.redb` and start its writer thread.
    pub fn open(dir: &Path) -> Result<DiskSessionStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let path = dir.join(SESSIONS_FILE);
        // A small page cache: sessions are read once, at start-up, and the
        // writes are small. redb's default (1 GiB) let the cache and the
        // write buffers of a burst of new sessions grow to several KB per
        // session, which the allocator keeps after they are freed.
        let db = redb::Builder::new().set_cache_size(SESSIONS_CACHE_BYTES).create(&path).map_err(backend)?;
        // It holds secret hashes and users' subscriptions: owner only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(backend)?;
        }
        let db = Arc::new(db);
        // Create both tables, so a read before the first write finds them.
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(SESSIONS).map_err(backend)?;
        txn.open_table(ACKS).map_err(backend)?;
        txn.commit().map_err(backend)?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let writer = db.clone();
        let writer = std::thread::Builder::new()
            .name("herald-sessions".into())
            .spawn(move || write_loop(&writer, &rx))
            .map_err(backend)?;
        Ok(DiskSessionStore { db, jobs: Some(jobs), writer: Some(writer) })
    }

    fn load_sync(db: &Database) -> Result<Vec<StoredSession>, StoreError> {
        let txn = db.begin_read().map_err(backend)?;
        let sessions = txn.open_table(SESSIONS).map_err(backend)?;
        let acks = txn.open_table(ACKS).map_err(backend)?;
        let mut out = Vec::new();
        for row in sessions.iter().map_err(backend)? {
            let (key, value) = row.map_err(backend)?;
            let corrupt =
                |e: serde_json::Error| StoreError::Corrupt { key: key.value().to_string(), message: e.to_string() };
            let mut session: StoredSession = serde_json::from_str(value.value()).map_err(corrupt)?;
            if let Some(a) = acks.get(key.value()).map_err(backend)? {
                let a: BTreeMap<String, u64> = serde_json::from_str(a.value()).map_err(corrupt)?;
                merge_acks(&mut session, &a);
            }
            out.push(session);
        }
        Ok(out)
    }
}

/// Apply each batch queued since the last commit in one transaction.
fn write_loop(db: &Database, rx: &mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let ops: Vec<StoreOp> = batch.iter_mut().flat_map(|(ops, _)| std::mem::take(ops)).collect();
        let result = commit(db, ops);
        if let Err(e) = &result {
            error!(error = %e, "Could not write sessions; clients may not resume them after a restart.");
        }
        for (_, reply) in batch {
            let _ = reply.send(result.as_ref().map(|_| ()).map_err(|e| StoreError::Backend(e.to_string())));
        }
    }
}

fn commit(db: &Database, ops: Vec<StoreOp>) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(backend)?;
    {
        let mut sessions = txn.open_table(SESSIONS).map_err(backend)?;
        let mut acks = txn.open_table(ACKS).map_err(backend)?;
        // Later operations on the same session win; acks only raise.
        let mut pending_acks: HashMap<String, BTreeMap<String, u64>> = HashMap::new();
        for op in ops {
            match op {
                StoreOp::Put(s) => {
                    let json = serde_json::to_string(&s).map_err(backend)?;
                    sessions.insert(s.id.as_str(), json.as_str()).map_err(backend)?;
                    acks.remove(s.id.as_str()).map_err(backend)?;
                    pending_acks.remove(&s.id);
                }
                StoreOp::Acks { id, acks: a } => {
                    if sessions.get(id.as_str()).map_err(backend)?.is_none() {
                        continue; // ended meanwhile
                    }
                    let entry = pending_acks.entry(id.clone()).or_default();
                    if entry.is_empty() {
                        if let Some(old) = acks.get(id.as_str()).map_err(backend)? {
                            *entry = serde_json::from_str(old.value()).unwrap_or_default();
                        }
                    }
                    for (sub, n) in a {
                        let v = entry.entry(sub).or_insert(0);
                        *v = (*v).max(n);
                    }
                }
                StoreOp::Delete(id) => {
                    sessions.remove(id.as_str()).map_err(backend)?;
                    acks.remove(id.as_str()).map_err(backend)?;
                    pending_acks.remove(&id);
                }
            }
        }
        for (id, a) in pending_acks {
            let json = serde_json::to_string(&a).map_err(backend)?;
            acks.insert(id.as_str(), json.as_str()).map_err(backend)?;
        }
    }
    txn.commit().map_err(backend)
}

impl SessionStore for DiskSessionStore {
    fn load(&self) -> BoxFuture<'_, Result<Vec<StoredSession>, StoreError>> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || DiskSessionStore::load_sync(&db)).await.map_err(backend)?
        })
    }

    fn write(&self, ops: Vec<StoreOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.jobs.as_ref().map(|jobs| jobs.send((ops, tx)).is_ok()).unwrap_or(false);
        Box::pin(async move {
            sent.then_some(()).ok_or_else(|| StoreError::Backend("the session writer has stopped".into()))?;
            rx.await.map_err(|_| StoreError::Backend("the session writer has stopped".into()))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::session::StoredSub;
    use herald_protocol::Binding;

    fn session(id: &str, acked: u64) -> StoredSession {
        let sub = StoredSub {
            bindings: vec![Binding { exchange: "x".into(), pattern: "a.*".into() }],
            filters: vec![serde_json::json!({"field": "payload.n", "op": "gt", "value": 1})],
            paused: true,
            acked,
        };
        StoredSession {
            id: id.into(),
            secret_sha256: herald_core::session::hash_secret("s3cret"),
            user: Some("alice".into()),
            detached_at_ms: Some(1_700_000_000_000),
            subs: BTreeMap::from([("a".to_string(), sub)]),
            node: None,
        }
    }

    #[tokio::test]
    async fn sessions_and_acks_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = DiskSessionStore::open(dir.path()).expect("open");
            store.write(vec![StoreOp::Put(session("one", 3)), StoreOp::Put(session("two", 1))]).await.expect("put");
            let acks = |n| StoreOp::Acks { id: "one".into(), acks: BTreeMap::from([("a".to_string(), n)]) };
            store.write(vec![acks(10)]).await.expect("acks");
            store.write(vec![acks(8)]).await.expect("a lower ack");
            store
                .write(vec![StoreOp::Delete("two".into()), StoreOp::Acks { id: "two".into(), acks: BTreeMap::new() }])
                .await
                .expect("delete");
        }
        let store = DiskSessionStore::open(dir.path()).expect("reopen");
        let loaded = store.load().await.expect("load");
        assert_eq!(loaded, vec![session("one", 10)]);
        let text = std::fs::read(dir.path().join(SESSIONS_FILE)).expect("read");
        assert!(!text.windows(6).any(|w| w == b"s3cret"), "the secret itself is never written");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SESSIONS_FILE)).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn concurrent_writes_are_grouped_and_all_answered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(DiskSessionStore::open(dir.path()).expect("open"));
        let mut tasks = Vec::new();
        for i in 0..64 {
            let store = store.clone();
            tasks
                .push(tokio::spawn(async move { store.write(vec![StoreOp::Put(session(&format!("s{i}"), i))]).await }));
        }
        for t in tasks {
            t.await.expect("join").expect("write");
        }
        assert_eq!(store.load().await.expect("load").len(), 64);
    }
}
