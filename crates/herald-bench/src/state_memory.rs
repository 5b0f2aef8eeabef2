//! What session and subscription state costs in memory, measured in this
//! process on Herald's own structures (`herald_core`): resident memory
//! before and after building many of them, divided by how many.
//!
//! Two figures: a binding of a connected client (its text in the session,
//! its compiled pattern, its place in the fan-out's pattern index), and an
//! idle session (detached, waiting to be resumed, with one subscription of
//! one binding). Figures over sockets (a connection's buffers and tasks)
//! are the idle-connection measurement's.

use bytes::Bytes;
use herald_core::fanout::Registration;
use herald_core::{owner_key, Filter, FrameFormat, NewSub, Outbox, Pattern, Principal, ReplayPermits, SessionTable};
use herald_core::{FanOut, Start, SubSpec};
use std::sync::Arc;
use std::time::Duration;

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

fn spec(patterns: impl Iterator<Item = String>) -> Arc<SubSpec> {
    let bindings = patterns.filter_map(|p| Pattern::parse(&p).ok().map(|p| ("orders".to_string(), p))).collect();
    let filters: Vec<Filter> = Vec::new();
    Arc::new(SubSpec { bindings, filters })
}

/// Bytes per binding of connected clients and per idle session.
pub(crate) fn measure(live_subs: usize, idle_sessions: usize) -> (f64, f64) {
    let fanout = Arc::new(FanOut::new(0));
    let table = SessionTable::new(Duration::from_secs(3600), fanout.clone());
    let outbox = Arc::new(Outbox::new(1 << 20, Bytes::new(), (4408, "")));
    let principal = Arc::new(Principal::open());

    // Idle sessions first, while the heap is fresh.
    let before = rss();
    let mut keep = Vec::with_capacity(idle_sessions);
    for i in 0..idle_sessions {
        let Ok((session, att, _)) = table.create(Some(format!("user-{i}")), owner_key(None, None), outbox.clone())
        else {
            continue;
        };
        let new =
            NewSub { spec: spec([format!("eu.shop-{i}.*")].into_iter()), filters: vec![], acked: 0, leases: vec![] };
        let _ = session.insert_sub(&att, "orders", new, 100);
        session.detach(&att);
        keep.push(session);
    }
    let per_session = (rss().saturating_sub(before)) as f64 / idle_sessions.max(1) as f64;

    // Connected: subscriptions of 32 distinct 40-byte patterns, in a session and in the fan-out.
    let before = rss();
    let (session, att, _) = match table.create(Some("live".into()), owner_key(Some("live"), None), outbox.clone()) {
        Ok(created) => created,
        Err(_) => return (0.0, per_session),
    };
    for i in 0..live_subs {
        let sub = format!("s{i}");
        let spec = spec((0..32).map(|b| format!("eu.shop-{i:06}.order-{b:02}.status.*.created")));
        let new = NewSub { spec: spec.clone(), filters: vec![], acked: 0, leases: vec![] };
        if session.insert_sub(&att, &sub, new, usize::MAX).is_err() {
            continue;
        }
        let reg = Registration {
            sub: Arc::from(sub.as_str()),
            spec,
            principal: principal.clone(),
            outbox: outbox.clone(),
            format: FrameFormat::WebSocket,
            replay: ReplayPermits::unlimited(),
        };
        let (entry, head) = fanout.register(reg, Start::Live, |_| {});
        let _ = session.set_entry(&att, &sub, entry, head);
    }
    let per_binding = (rss().saturating_sub(before)) as f64 / (live_subs * 32).max(1) as f64;
    drop(keep);
    (per_binding, per_session)
}
