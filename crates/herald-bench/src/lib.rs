//! `herald bench`: one command that measures a whole gateway.
//!
//! It starts a gateway (this same executable, `serve` on a free port and a
//! temporary data directory) or targets a running one, then measures in
//! order: publish throughput into the log (WebSocket, pipelined, and HTTP
//! batches), fan-out (one publisher, N subscribers: deliveries per second
//! and publish-to-receive latency), replay throughput, and resident memory
//! per idle connection. Every figure comes from real sockets on loopback.

mod client;
mod gateway;
mod scale;
mod scenarios;
mod state_memory;

pub use scale::ScaleReport;

use clap::Args;
use serde::Serialize;

/// Options of `herald bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Bench a running gateway at this URL instead of starting one
    /// (memory per connection is then measured only with --target-pid).
    #[arg(long)]
    pub target: Option<String>,
    /// PID of the target gateway, to read its resident memory and CPU time.
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// Other nodes of the target's cluster (repeatable): publishing
    /// connections and fan-out subscribers are spread over the target and
    /// these, the fan-out publisher stays on the target, so most deliveries
    /// cross nodes.
    #[arg(long = "also-target")]
    pub also_targets: Vec<String>,
    /// PIDs of the other nodes (repeatable), for CPU per delivery.
    #[arg(long = "also-target-pid")]
    pub also_target_pids: Vec<u32>,
    /// Subscribers in the fan-out test.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Events published in the fan-out test.
    #[arg(long, default_value_t = 5_000)]
    pub fanout_events: u64,
    /// Events published in the publish-throughput test (and then replayed).
    #[arg(long, default_value_t = 50_000)]
    pub publish_events: u64,
    /// Concurrent publishing connections in the publish-throughput test.
    #[arg(long, default_value_t = 8)]
    pub publishers: usize,
    /// Payload size in bytes (approximate).
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Rendezvous round trips in the request/response test (0 to skip).
    #[arg(long, default_value_t = 20_000)]
    pub rendezvous_requests: u64,
    /// Idle connections for the memory measurement (0 to skip).
    #[arg(long, default_value_t = 10_000)]
    pub idle_connections: usize,
    /// Events in the big-log scale test (0 to skip; the docs' figures use
    /// 10,000,000): start-up time, index memory per event and a one-exchange
    /// replay, each on a gateway of its own.
    #[arg(long, default_value_t = 0)]
    pub log_events: u64,
    /// Exchanges the big log's events are spread over, in turn (one is replayed).
    #[arg(long, default_value_t = 10)]
    pub log_exchanges: u64,
    /// Keep the big log in this directory (a gateway's `--data`): filled
    /// if it holds no log yet, reused as it is otherwise, never removed.
    #[arg(long)]
    pub log_dir: Option<std::path::PathBuf>,
    /// Run only the scale tests (no gateway is started for the rest).
    #[arg(long)]
    pub scale_only: bool,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The figures one run produces.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Events per second published over WebSocket (pipelined, acknowledged once durable).
    pub publish_ws_events_per_s: f64,
    /// Events per second published over HTTP in batches of 100.
    pub publish_http_batch_events_per_s: f64,
    /// Subscribers in the fan-out test.
    pub fanout_subscribers: usize,
    /// Events published in the fan-out test.
    pub fanout_events: u64,
    /// Deliveries per second in the fan-out test (events x subscribers / time).
    pub fanout_deliveries_per_s: f64,
    /// Publish-to-receive latency at 500 events/s, median, milliseconds
    /// (includes the fsync before delivery).
    pub fanout_latency_p50_ms: f64,
    /// Publish-to-receive latency, 99th percentile, milliseconds.
    pub fanout_latency_p99_ms: f64,
    /// Events per second replayed to one subscriber (`since: {id: 0}`).
    pub replay_events_per_s: f64,
    /// Gateway nodes the load was spread over.
    pub nodes: usize,
    /// Server CPU time (all nodes given with PIDs) per delivery in the
    /// fan-out test, microseconds.
    pub fanout_cpu_us_per_delivery: Option<f64>,
    /// Rendezvous round trips per second (8 requesters, 4 responders).
    pub rendezvous_per_s: f64,
    /// Rendezvous round-trip latency, median, milliseconds.
    pub rendezvous_p50_ms: f64,
    /// Rendezvous round-trip latency, 99th percentile, milliseconds.
    pub rendezvous_p99_ms: f64,
    /// Idle connections opened.
    pub idle_connections: usize,
    /// Resident memory added per idle connection (session included), bytes.
    pub idle_bytes_per_connection: Option<f64>,
    /// Memory per binding of a connected client (session text, compiled
    /// pattern, pattern index), measured in-process on Herald's structures.
    pub state_bytes_per_binding: f64,
    /// Memory per idle (detached) session with one subscription of one binding.
    pub state_bytes_per_idle_session: f64,
    /// The scale measurements.
    pub scale: ScaleReport,
}

/// Run the benchmark and print its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    if args.scale_only {
        let scale = scale::run(&args).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&scale)?);
        } else {
            print_scale(&scale);
        }
        return Ok(());
    }
    let (gateway, base, pid) = match &args.target {
        Some(url) => (None, url.trim_end_matches('/').to_string(), args.target_pid),
        None => {
            let g = gateway::Gateway::start().await?;
            let base = g.base_url.clone();
            let pid = g.pid();
            (Some(g), base, pid)
        }
    };
    eprintln!("bench: state memory (in-process: 10,000 subscriptions x 32 bindings, 50,000 idle sessions)");
    let (per_binding, per_session) = state_memory::measure(10_000, 50_000);
    eprintln!("bench: gateway at {base}");
    let report = scenarios::run_all(&args, &base, pid).await;
    if let Some(g) = gateway {
        g.stop().await;
    }
    let mut report = report?;
    report.scale = scale::run(&args).await?;
    report.state_bytes_per_binding = per_binding;
    report.state_bytes_per_idle_session = per_session;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!("herald bench ({} node{})", r.nodes, if r.nodes == 1 { "" } else { "s" });
    println!("  publish, WebSocket pipelined:   {:>12.0} events/s", r.publish_ws_events_per_s);
    println!("  publish, HTTP batches of 100:   {:>12.0} events/s", r.publish_http_batch_events_per_s);
    println!(
        "  fan-out, 1 -> {} subscribers:  {:>12.0} deliveries/s ({} events)",
        r.fanout_subscribers, r.fanout_deliveries_per_s, r.fanout_events
    );
    println!(
        "  fan-out latency at 500 ev/s:    {:>8.2} ms p50 / {:.2} ms p99 (publish -> durable -> delivered)",
        r.fanout_latency_p50_ms, r.fanout_latency_p99_ms
    );
    if let Some(cpu) = r.fanout_cpu_us_per_delivery {
        println!("  fan-out server CPU:             {cpu:>12.2} us per delivery");
    }
    println!("  replay to one subscriber:       {:>12.0} events/s", r.replay_events_per_s);
    println!(
        "  rendezvous, 8 -> 4 responders:  {:>12.0} round trips/s ({:.2} ms p50 / {:.2} ms p99)",
        r.rendezvous_per_s, r.rendezvous_p50_ms, r.rendezvous_p99_ms
    );
    println!(
        "  memory per binding (connected): {:>12.0} bytes (32 distinct patterns per subscription)",
        r.state_bytes_per_binding
    );
    println!(
        "  memory per idle session:        {:>12.0} bytes (detached, one subscription)",
        r.state_bytes_per_idle_session
    );
    match r.idle_bytes_per_connection {
        Some(b) => println!("  memory per idle connection:     {:>12.0} bytes ({} connections)", b, r.idle_connections),
        None => println!("  memory per idle connection:     not measured"),
    }
    print_scale(&r.scale);
}

fn print_scale(s: &ScaleReport) {
    println!(
        "  dispatch to 100 subscribers:    {:>12.0} ns alone, {:.0} ns beside 100,000 non-matching ({:.2} x)",
        s.dispatch_ns_alone,
        s.dispatch_ns_beside_100k,
        s.dispatch_ns_beside_100k / s.dispatch_ns_alone.max(1.0)
    );
    if s.log_events == 0 {
        println!("  big log:                        not measured (--log-events)");
        return;
    }
    println!("  start-up, {} events:     {:>8.2} s (empty log: {:.3} s)", s.log_events, s.startup_s, s.startup_empty_s);
    println!("  log index memory:               {:>12.1} bytes per retained event", s.index_bytes_per_event);
    println!(
        "  replay of 1 of {} exchanges:    {:>12.0} events/s ({} events, since id 0)",
        s.log_exchanges, s.exchange_replay_events_per_s, s.exchange_replay_events
    );
}
