//! The scale measurements: what a big log and many subscriptions cost.
//!
//! - **Isolation** (in this process, on `herald_core`'s fan-out): the cost
//!   of dispatching one event to 100 matching subscribers, beside none and
//!   beside 100,000 subscriptions on distinct patterns that cannot match
//!   it. The pattern index should make the second cost what the first does.
//! - **A big log** (`--log-events N`, real processes): a data directory is
//!   filled with N events over `--log-exchanges` exchanges in turn, through
//!   the embedded log itself; then a gateway is started on it (time until it
//!   listens, against a gateway on an empty log), its resident memory is
//!   compared with the empty one's (the log's index, per retained event),
//!   and one client replays one exchange from the start (`since: {id: 0}`).

use crate::client::replay_from_start;
use crate::gateway::{rss_bytes, Gateway};
use anyhow::Context;
use bytes::Bytes;
use herald_core::{Event, FanOut, FrameFormat, NewEvent, Outbox, Pattern, Principal, Registration, Start, SubSpec};
use herald_log::{EmbeddedLog, EventLog, LogConfig};
use serde::Serialize;
use serde_json::value::RawValue;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Exchange names of the big log: `scale.0`, `scale.1`, …
const EXCHANGE_PREFIX: &str = "scale.";

/// What the scale measurements found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScaleReport {
    /// Nanoseconds to dispatch one event to 100 matching subscribers, alone.
    pub dispatch_ns_alone: f64,
    /// The same beside 100,000 subscriptions on non-matching patterns.
    pub dispatch_ns_beside_100k: f64,
    /// Events in the big log (0: not measured).
    pub log_events: u64,
    /// Exchanges they were spread over, in turn.
    pub log_exchanges: u64,
    /// Seconds from starting the gateway on the big log to its listening.
    pub startup_s: f64,
    /// The same on an empty log.
    pub startup_empty_s: f64,
    /// Resident memory added by the big log, per retained event (bytes).
    pub index_bytes_per_event: f64,
    /// Events of one exchange replayed with `since: {id: 0}`.
    pub exchange_replay_events: u64,
    /// Their rate, events per second.
    pub exchange_replay_events_per_s: f64,
}

/// A live subscriber of `pattern` on exchange `x`, with an outbox of its own.
fn register(fan: &FanOut, pattern: &str) -> Arc<Outbox> {
    let outbox = Arc::new(Outbox::new(1 << 30, Bytes::new(), (4408, "")));
    let spec = SubSpec {
        bindings: vec![("x".into(), Pattern::parse(pattern).expect("the bench's patterns are valid"))],
        filters: vec![],
    };
    let reg = Registration {
        sub: "s".into(),
        spec: Arc::new(spec),
        principal: Arc::new(Principal::open()),
        outbox: outbox.clone(),
        format: FrameFormat::WebSocket,
        replay: herald_core::ReplayPermits::unlimited(),
    };
    fan.register(reg, Start::Live, |_| {});
    outbox
}

/// Nanoseconds per dispatch of one event to 100 subscribers of `primary.#`,
/// beside `others` subscriptions of `secondary.{i}.*.#`.
fn dispatch_cost(others: u32) -> f64 {
    let fan = FanOut::new(0);
    let matching: Vec<Arc<Outbox>> = (0..100).map(|_| register(&fan, "primary.#")).collect();
    let _idle: Vec<Arc<Outbox>> = (0..others).map(|i| register(&fan, &format!("secondary.{i}.*.#"))).collect();
    let payload = RawValue::from_string(r#"{"status":"completed","run":0}"#.into()).ok();
    let mut drained = Vec::new();
    let mut run = |id: u64| {
        let event = Event::commit(
            id,
            id,
            NewEvent {
                exchange: "x".into(),
                routing_key: "primary.a.b".into(),
                payload: payload.clone().unwrap_or_else(|| RawValue::NULL.to_owned()),
                acl: None,
                headers: None,
                origin: None,
                idempotency_key: None,
            },
        );
        fan.dispatch(&[Arc::new(event)]);
        for o in &matching {
            drained.clear();
            o.take(&mut drained);
            o.written(&drained);
        }
    };
    for id in 1..=2_000 {
        run(id);
    }
    let rounds = 20_000u64;
    let start = Instant::now();
    for id in 2_001..2_001 + rounds {
        run(id);
    }
    start.elapsed().as_nanos() as f64 / rounds as f64
}

/// Fill `dir` (a gateway's `--data`) with `events` events over `exchanges`
/// exchanges in turn, through the embedded log (no fsync: it is a fixture).
async fn fill(dir: &Path, events: u64, exchanges: u64) -> anyhow::Result<()> {
    let config =
        LogConfig { dir: dir.join("log"), fsync: false, max_age: None, max_bytes: None, ..LogConfig::default() };
    let (log, mut committed) = EmbeddedLog::open(config).context("cannot open the fixture log")?;
    // Nothing dispatches here: drain what the log hands to the fan-out.
    let drain = tokio::spawn(async move { while committed.recv().await.is_some() {} });
    let pad = "x".repeat(70);
    let mut written = 0u64;
    while written < events {
        let n = (events - written).min(10_000);
        let batch: Vec<NewEvent> = (written..written + n)
            .map(|i| NewEvent {
                exchange: format!("{EXCHANGE_PREFIX}{}", i % exchanges),
                routing_key: format!("orders.eu.{}", i % 97),
                payload: RawValue::from_string(format!(r#"{{"n":{i},"pad":"{pad}"}}"#))
                    .unwrap_or_else(|_| RawValue::NULL.to_owned()),
                acl: None,
                headers: None,
                origin: None,
                idempotency_key: None,
            })
            .collect();
        log.append(batch).await.context("fixture append failed")?;
        written += n;
    }
    log.close().await;
    drop(log);
    let _ = drain.await;
    Ok(())
}

/// Start a gateway on `data`; returns it and the seconds until it listened.
async fn timed_start(data: &Path) -> anyhow::Result<(Gateway, f64)> {
    let start = Instant::now();
    let g = Gateway::start_on(data).await?;
    Ok((g, start.elapsed().as_secs_f64()))
}

/// The gateway's newest id, from `/readyz`.
async fn log_head(base: &str) -> anyhow::Result<u64> {
    let ready: serde_json::Value = reqwest::get(format!("{base}/readyz")).await?.json().await?;
    ready["log_head"].as_u64().context("no log_head in /readyz")
}

/// Run the scale measurements (`log_events == 0`: the in-process ones only).
pub(crate) async fn run(args: &crate::BenchArgs) -> anyhow::Result<ScaleReport> {
    let (log_events, log_exchanges) = (args.log_events, args.log_exchanges);
    eprintln!("bench: dispatch beside 0 and 100,000 non-matching subscriptions (in-process)");
    let (alone, beside) =
        tokio::task::spawn_blocking(|| (dispatch_cost(0), dispatch_cost(100_000))).await.context("dispatch bench")?;
    let mut r = ScaleReport { dispatch_ns_alone: alone, dispatch_ns_beside_100k: beside, ..ScaleReport::default() };
    if log_events == 0 {
        return Ok(r);
    }
    let exchanges = log_exchanges.max(1);
    let temporary = tempfile::tempdir().context("cannot create a data directory")?;
    let data = args.log_dir.as_deref().unwrap_or(temporary.path());
    if data.join("log").exists() {
        eprintln!("bench: using the log in {} as it is", data.display());
    } else {
        eprintln!("bench: filling a log with {log_events} events over {exchanges} exchanges");
        let filling = Instant::now();
        fill(data, log_events, exchanges).await?;
        eprintln!("bench: filled in {:.1} s", filling.elapsed().as_secs_f64());
    }

    let empty = tempfile::tempdir().context("cannot create a data directory")?;
    let (g, startup_empty) = timed_start(empty.path()).await?;
    let rss_empty = g.pid().and_then(rss_bytes);
    g.stop().await;

    eprintln!("bench: starting a gateway on the big log");
    let (g, startup) = timed_start(data).await?;
    let rss_big = g.pid().and_then(rss_bytes);
    // What the log holds (a reused `--log-dir` may hold another count).
    let log_events = log_head(&g.base_url).await.unwrap_or(log_events);
    let per_exchange = log_events / exchanges + u64::from(log_events % exchanges > 0);
    eprintln!("bench: replaying one exchange ({per_exchange} events) from the start");
    let replayed = replay_from_start(&g.base_url, &format!("{EXCHANGE_PREFIX}0"), per_exchange).await;
    g.stop().await;
    let (events, rate) = (per_exchange, replayed?);
    r.log_events = log_events;
    r.log_exchanges = exchanges;
    r.startup_s = startup;
    r.startup_empty_s = startup_empty;
    if let (Some(big), Some(small)) = (rss_big, rss_empty) {
        r.index_bytes_per_event = big.saturating_sub(small) as f64 / log_events as f64;
    }
    r.exchange_replay_events = events;
    r.exchange_replay_events_per_s = rate;
    Ok(r)
}
