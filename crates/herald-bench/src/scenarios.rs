//! The measurements.

use crate::client::{
    self, connect, connect_batched, event_id, feed, flush, next_json, next_text, raw, replay_from_start, send, Rx, Tx,
};
use crate::gateway::rss_bytes;
use crate::{BenchArgs, Report};
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

const PUBLISH_EXCHANGE: &str = "bench.publish";
const FANOUT_EXCHANGE: &str = "bench.fanout";

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn payload(pad: &str) -> Value {
    json!({"t": now_us(), "pad": pad})
}

pub(crate) async fn run_all(args: &BenchArgs, base: &str, pid: Option<u32>) -> anyhow::Result<Report> {
    let pad = "x".repeat(args.payload_bytes.saturating_sub(30));
    let mut r = Report { fanout_subscribers: args.subscribers, fanout_events: args.fanout_events, ..Report::default() };
    let mut bases = vec![base.to_string()];
    bases.extend(args.also_targets.iter().map(|b| b.trim_end_matches('/').to_string()));
    r.nodes = bases.len();
    let pids: Vec<u32> = pid.into_iter().chain(args.also_target_pids.iter().copied()).collect();

    eprintln!("bench: publish over WebSocket ({} events, {} connections)", args.publish_events, args.publishers);
    r.publish_ws_events_per_s = publish_ws(&bases, args.publish_events, args.publishers, &pad).await?;
    eprintln!("bench: publish over HTTP ({} events in batches of 100)", args.publish_events);
    r.publish_http_batch_events_per_s = publish_http(&bases, args.publish_events, &pad).await?;

    eprintln!("bench: fan-out ({} subscribers, {} events)", args.subscribers, args.fanout_events);
    let cpu = || (!pids.is_empty()).then(|| pids.iter().map(|p| cpu_ticks(*p)).sum::<Option<u64>>()).flatten();
    let cpu_before = cpu();
    let (rate, p50, p99) = fanout(&bases, args.subscribers, args.fanout_events, &pad).await?;
    let cpu_after = cpu();
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        let deliveries = (args.fanout_events + LATENCY_EVENTS) as f64 * args.subscribers as f64;
        // Clock ticks are 10 ms on Linux (USER_HZ = 100).
        r.fanout_cpu_us_per_delivery = Some((b.saturating_sub(a) as f64 * 10_000.0) / deliveries);
    }
    r.fanout_deliveries_per_s = rate;
    r.fanout_latency_p50_ms = p50;
    r.fanout_latency_p99_ms = p99;

    eprintln!("bench: replay ({} events)", args.publish_events * 2);
    r.replay_events_per_s = replay(base, args.publish_events * 2).await?;

    if args.rendezvous_requests > 0 {
        eprintln!("bench: rendezvous ({} requests, 8 requesters, 4 responders)", args.rendezvous_requests);
        let (rate, p50, p99) = rendezvous(base, args.rendezvous_requests).await?;
        r.rendezvous_per_s = rate;
        r.rendezvous_p50_ms = p50;
        r.rendezvous_p99_ms = p99;
    }

    if args.idle_connections > 0 {
        eprintln!("bench: {} idle connections", args.idle_connections);
        r.idle_connections = args.idle_connections;
        r.idle_bytes_per_connection = idle_memory(base, args.idle_connections, pid).await?;
    }
    Ok(r)
}

/// User and system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at `)`.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

async fn publish_ws(bases: &[String], total: u64, publishers: usize, pad: &str) -> anyhow::Result<f64> {
    let per = total / publishers as u64;
    let mut conns = Vec::new();
    for i in 0..publishers {
        conns.push(connect_batched(&bases[i % bases.len()]).await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut tx, mut rx) in conns {
        let pad = pad.to_string();
        let sender = tokio::spawn(async move {
            for i in 0..per {
                // Written as text, not built as a JSON value, and queued
                // without a flush each (the socket is written as its buffer
                // fills): the generator shares the cores with the gateway.
                let payload = raw(format!(r#"{{"t":{},"pad":"{pad}"}}"#, now_us()))?;
                feed(&mut tx, &client::publish(i, PUBLISH_EXCHANGE, "a.b", payload)).await?;
            }
            flush(&mut tx).await?;
            anyhow::Ok(tx)
        });
        tasks.push(tokio::spawn(async move {
            let mut acked = 0;
            while acked < per {
                // Answers (batched, one per line) are counted by their type, not parsed.
                for line in next_text(&mut rx).await?.split('\n') {
                    if !line.starts_with(r#"{"type":"published""#) {
                        bail!("unexpected reply while publishing: {line}");
                    }
                    acked += 1;
                }
            }
            let _tx = sender.await??;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((per * publishers as u64) as f64 / start.elapsed().as_secs_f64())
}

async fn publish_http(bases: &[String], total: u64, pad: &str) -> anyhow::Result<f64> {
    let client = reqwest::Client::new();
    let urls: Vec<String> = bases.iter().map(|b| format!("{b}/v1/publish")).collect();
    let batches = total / 100;
    let sem = Arc::new(Semaphore::new(4));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for b in 0..batches {
        let permit = sem.clone().acquire_owned().await?;
        // The batch as text (see `publish_ws`).
        let events: Vec<String> = (0..100)
            .map(|_| {
                let t = now_us();
                format!(
                    r#"{{"exchange":"{PUBLISH_EXCHANGE}","routing_key":"a.c","payload":{{"t":{t},"pad":"{pad}"}}}}"#
                )
            })
            .collect();
        let body = format!("[{}]", events.join(","));
        let (client, url) = (client.clone(), urls[b as usize % urls.len()].clone());
        tasks.push(tokio::spawn(async move {
            let resp =
                client.post(&url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body).send().await?;
            if !resp.status().is_success() {
                bail!("HTTP publish failed: {}", resp.status());
            }
            drop(permit);
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((batches * 100) as f64 / start.elapsed().as_secs_f64())
}

/// Request/response through the broker: 4 WebSocket responders (16 at a
/// time each) echo the body; 8 requester connections keep 32 requests in
/// flight each. Returns (round trips/s, p50 ms, p99 ms).
async fn rendezvous(base: &str, total: u64) -> anyhow::Result<(f64, f64, f64)> {
    const SERVICE: &str = "bench.echo";
    const REQUESTERS: u64 = 8;
    const WINDOW: usize = 32;
    let mut responders = Vec::new();
    for _ in 0..4 {
        let (mut tx, mut rx) = connect(base).await?;
        send(&mut tx, &client::serve(SERVICE, 16)).await?;
        let v = next_json(&mut rx).await?;
        if v["type"] != "serving" {
            bail!("expected serving, got {v}");
        }
        responders.push(tokio::spawn(async move {
            while let Ok(v) = next_json(&mut rx).await {
                if v["type"] == "incoming" {
                    let (Some(request), Ok(body)) = (v["request"].as_str(), raw(v["body"].to_string())) else {
                        return;
                    };
                    if send(&mut tx, &client::answer(request.to_string(), body)).await.is_err() {
                        return;
                    }
                }
            }
        }));
    }
    let per = total / REQUESTERS;
    let mut conns = Vec::new();
    for _ in 0..REQUESTERS {
        conns.push(connect(base).await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut tx, mut rx) in conns {
        let window = Arc::new(Semaphore::new(WINDOW));
        let w = window.clone();
        let sender = tokio::spawn(async move {
            for i in 0..per {
                w.acquire().await?.forget();
                let body = raw(format!(r#"{{"t":{}}}"#, now_us()))?;
                send(&mut tx, &client::request(i, SERVICE, body)).await?;
            }
            anyhow::Ok(tx)
        });
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            let mut answered = 0;
            while answered < per {
                let v = next_json(&mut rx).await?;
                match v["type"].as_str() {
                    Some("response") => {
                        answered += 1;
                        window.add_permits(1);
                        let sent = v["body"]["t"].as_u64().context("echoed time")?;
                        hist.record(now_us().saturating_sub(sent).max(1))?;
                    }
                    _ => bail!("unexpected reply to a request: {v}"),
                }
            }
            let _tx = sender.await??;
            anyhow::Ok(hist)
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    let rate = (per * REQUESTERS) as f64 / start.elapsed().as_secs_f64();
    for r in responders {
        r.abort();
    }
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    Ok((rate, ms(0.5), ms(0.99)))
}

async fn subscribe(
    tx: &mut Tx,
    rx: &mut Rx,
    exchange: &str,
    since: Option<herald_protocol::Since>,
) -> anyhow::Result<()> {
    send(tx, &client::subscribe(exchange, since)).await?;
    let v = next_json(rx).await?;
    if v["type"] != "subscribed" {
        bail!("subscribe failed: {v}");
    }
    Ok(())
}

/// Events in the paced latency phase of the fan-out test, and their rate.
const LATENCY_EVENTS: u64 = 1000;
const LATENCY_RATE_PER_S: u64 = 500;

/// Fan-out in two phases: flat out (deliveries per second), then paced at
/// a moderate rate (publish-to-receive latency without self-inflicted queueing).
async fn fanout(bases: &[String], subscribers: usize, events: u64, pad: &str) -> anyhow::Result<(f64, f64, f64)> {
    let total = events + LATENCY_EVENTS;
    let mut receivers = Vec::new();
    for i in 0..subscribers {
        let (mut tx, mut rx) = connect_batched(&bases[i % bases.len()]).await?;
        subscribe(&mut tx, &mut rx, FANOUT_EXCHANGE, None).await?;
        receivers.push(tokio::spawn(async move {
            let _keep = tx;
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut got, mut last) = (0, 0);
            let mut throughput_done = Instant::now();
            while got < total {
                // Batched frames, counted without parsing each event; only
                // the latency phase's events are parsed for their stamp.
                for line in next_text(&mut rx).await?.split('\n') {
                    let Some(id) = event_id(line) else { continue };
                    if id <= last {
                        bail!("fan-out out of order: {id} after {last}");
                    }
                    last = id;
                    got += 1;
                    if got == events {
                        throughput_done = Instant::now();
                    }
                    if line.contains("\"lat\":true") {
                        let v: Value = serde_json::from_str(line)?;
                        let sent = v["payload"]["t"].as_u64().unwrap_or(0);
                        hist.saturating_record(now_us().saturating_sub(sent).max(1));
                    }
                }
            }
            anyhow::Ok((hist, throughput_done))
        }));
    }
    let (mut tx, mut rx) = connect(&bases[0]).await?;
    let start = Instant::now();
    // Phase 1: at most `window` publishes in flight.
    let window = 64u64;
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < events {
        while sent < events && sent - acked < window {
            let msg = client::publish(sent, FANOUT_EXCHANGE, "x.y", raw(payload(pad).to_string())?);
            send(&mut tx, &msg).await?;
            sent += 1;
        }
        let v = next_json(&mut rx).await?;
        if v["type"] == "published" {
            acked += 1;
        }
    }
    // Phase 2: paced publishing, each event stamped with its send time.
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / LATENCY_RATE_PER_S));
    let (tx2, rx2) = (&mut tx, &mut rx);
    let reader = async move {
        let mut n = 0;
        while n < LATENCY_EVENTS {
            if next_json(rx2).await?["type"] == "published" {
                n += 1;
            }
        }
        anyhow::Ok(())
    };
    let writer = async move {
        for i in 0..LATENCY_EVENTS {
            tick.tick().await;
            let payload = raw(json!({"t": now_us(), "lat": true, "pad": pad}).to_string())?;
            send(tx2, &client::publish(i, FANOUT_EXCHANGE, "x.y", payload)).await?;
        }
        anyhow::Ok(())
    };
    let (r, w) = tokio::join!(reader, writer);
    r?;
    w?;
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut end = start;
    for r in receivers {
        let (h, t) =
            tokio::time::timeout(Duration::from_secs(120), r).await.context("fan-out receivers timed out")???;
        all.add(h)?;
        end = end.max(t);
    }
    let rate = (events * subscribers as u64) as f64 / end.duration_since(start).as_secs_f64();
    Ok((rate, all.value_at_quantile(0.5) as f64 / 1000.0, all.value_at_quantile(0.99) as f64 / 1000.0))
}

/// One subscriber replays everything with batched frames.
async fn replay(base: &str, expected: u64) -> anyhow::Result<f64> {
    replay_from_start(base, PUBLISH_EXCHANGE, expected).await
}

async fn idle_memory(base: &str, n: usize, pid: Option<u32>) -> anyhow::Result<Option<f64>> {
    let Some(pid) = pid else { return Ok(None) };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes(pid).context("cannot read the gateway's memory")?;
    let sem = Arc::new(Semaphore::new(200));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let base = base.to_string();
        tasks.push(tokio::spawn(async move {
            let c = connect(&base).await;
            drop(permit);
            c
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        conns.push(t.await??);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_bytes(pid).context("cannot read the gateway's memory")?;
    drop(conns);
    Ok(Some(after.saturating_sub(before) as f64 / n as f64))
}
