//! Faults injected between the log and the filesystem ([`FaultyIo`]): what
//! failed is never acknowledged, a failed fsync is never retried (writes are
//! refused until the log is opened again), and a full disk is reported and
//! recovered from by itself.

use herald_core::NewEvent;
use herald_log::{EmbeddedLog, EventLog, FaultyIo, LogConfig, LogError, ReadQuery, WriteHealth};
use serde_json::value::RawValue;
use std::path::Path;
use std::sync::Arc;

fn ev(n: u64) -> NewEvent {
    NewEvent {
        exchange: "x".into(),
        routing_key: "k".into(),
        payload: RawValue::from_string(format!("{{\"n\":{n}}}")).expect("raw"),
        acl: None,
        headers: None,
        origin: None,
        idempotency_key: None,
    }
}

fn config(dir: &Path) -> LogConfig {
    LogConfig { dir: dir.to_path_buf(), fsync: true, ..LogConfig::default() }
}

async fn ns(log: &EmbeddedLog) -> Vec<u64> {
    let events = log.read(ReadQuery::default()).await.expect("reads keep working");
    events.iter().map(|e| e.payload_value()["n"].as_u64().expect("n")).collect()
}

#[tokio::test]
async fn a_failed_write_is_not_acknowledged_and_leaves_no_trace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = Arc::new(FaultyIo::default());
    let (log, _rx) = EmbeddedLog::open_with_io(config(dir.path()), io.clone()).expect("open");
    assert_eq!(log.append(vec![ev(1)]).await.expect("first")[0].id, 1);
    io.fail_next_writes(1);
    let err = log.append(vec![ev(2), ev(3)]).await.expect_err("a failed write is refused");
    assert!(matches!(err, LogError::Io { .. }), "{err}");
    assert_eq!(log.write_health(), WriteHealth::Ok, "one failed write does not stop the log");
    assert_eq!(log.append(vec![ev(4)]).await.expect("next write works")[0].id, 2);
    assert_eq!(ns(&log).await, vec![1, 4]);
    log.close().await;
    drop(log);
    // The half-written records were cut: a fresh open finds exactly what was acknowledged.
    let (log, _rx) = EmbeddedLog::open(config(dir.path())).expect("reopen");
    assert_eq!(ns(&log).await, vec![1, 4]);
}

#[tokio::test]
async fn after_a_failed_fsync_writes_are_refused_until_reopened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = Arc::new(FaultyIo::default());
    let (log, _rx) = EmbeddedLog::open_with_io(config(dir.path()), io.clone()).expect("open");
    log.append(vec![ev(1)]).await.expect("first");
    io.fail_next_syncs(1);
    let err = log.append(vec![ev(2)]).await.expect_err("not durable, not acknowledged");
    assert!(matches!(err, LogError::Failed(_)), "{err}");
    // The fault is gone, but the log does not retry and pretend: it refuses.
    let err = log.append(vec![ev(3)]).await.expect_err("refused until reopened");
    assert!(err.to_string().contains("fsync failed"), "{err}");
    assert!(matches!(log.write_health(), WriteHealth::Failed(_)));
    assert_eq!(ns(&log).await, vec![1], "reads keep working");
    log.close().await;
    drop(log);
    let (log, _rx) = EmbeddedLog::open(config(dir.path())).expect("a fresh open");
    assert_eq!(ns(&log).await, vec![1], "only what was acknowledged");
    assert_eq!(log.append(vec![ev(4)]).await.expect("writes again")[0].id, 2);
    assert_eq!(log.write_health(), WriteHealth::Ok);
}

#[tokio::test]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers_by_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = Arc::new(FaultyIo::default());
    let (log, _rx) = EmbeddedLog::open_with_io(config(dir.path()), io.clone()).expect("open");
    log.append(vec![ev(1)]).await.expect("first");
    io.set_disk_full(true);
    for n in 2..5 {
        let err = log.append(vec![ev(n)]).await.expect_err("no space");
        assert!(matches!(err, LogError::Full(_)), "{err}");
        assert!(err.to_string().contains("disk holding the log is full"), "{err}");
    }
    assert!(matches!(log.write_health(), WriteHealth::Full(_)));
    assert_eq!(ns(&log).await, vec![1], "reads keep working");
    io.set_disk_full(false);
    assert_eq!(log.append(vec![ev(5)]).await.expect("space is back")[0].id, 2);
    assert_eq!(log.write_health(), WriteHealth::Ok);
    assert_eq!(ns(&log).await, vec![1, 5]);
}

#[tokio::test]
async fn a_slow_fsync_is_counted_and_its_events_still_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = Arc::new(FaultyIo::default());
    let (log, _rx) = EmbeddedLog::open_with_io(config(dir.path()), io.clone()).expect("open");
    log.append(vec![ev(1)]).await.expect("first");
    assert_eq!(log.stats().slow_commits, 0, "a healthy commit is not slow");
    io.slow_next_syncs(2);
    log.append(vec![ev(2)]).await.expect("a slow disk is still a working disk");
    log.append(vec![ev(3)]).await.expect("second slow commit");
    let stats = log.stats();
    assert_eq!(stats.slow_commits, 2, "{stats:?}");
    assert!(stats.commit_micros >= 300_000, "the stalls are in the commit time: {stats:?}");
    assert_eq!(log.write_health(), WriteHealth::Ok);
    assert_eq!(ns(&log).await, vec![1, 2, 3]);
}
