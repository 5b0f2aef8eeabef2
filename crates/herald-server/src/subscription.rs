//! Bringing a subscription up to date: replaying from the log until it
//! reaches the fan-out head, then switching it to live delivery.
//!
//! The catch-up task reads in chunks (at most [`CHUNK`] events and
//! [`CHUNK_BYTES`] bytes) and waits for space in the client's outbox between
//! frames, so a replay of any size uses bounded memory and never overflows
//! a client that reads. Each chunk is read in a turn of the subscription's
//! [`ReplayPermits`](herald_core::ReplayPermits): per connection, per user
//! and per node, so however many replays are asked for at once they advance
//! in turns, on the blocking pool, and the live path never waits for them.
//! While a chunk is delivered the next one is read, when a turn is free at
//! once (a connection has two by default).
//! It stops when the subscription is paused or removed, or when the
//! connection closes.

use crate::config::LimitsConfig;
use crate::error::ClientError;
use crate::state::AppState;
use herald_core::event::parse_time_us;
use herald_core::{Event, Filter, Frame, GoLive, Pattern, Principal, ReadTurn, Registration, Start, SubEntry, SubSpec};
use herald_log::ReadQuery;
use herald_protocol::{encode, ErrorCode, ServerMessage};
use herald_protocol::{Binding, Since};
use std::sync::Arc;
use std::time::Duration;
use tracing::error;

/// Events read from the log per step.
const CHUNK: usize = 512;

/// Bytes of records read from the log per step, at most (one event more
/// if a single event is larger).
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

/// What a new subscription's client is told before its first event.
#[derive(Debug)]
pub(crate) struct Announcement {
    /// The fan-out head when the subscription went into place.
    pub(crate) head: u64,
    /// False when the requested history is not fully available.
    pub(crate) recovered: bool,
    /// Why, for the `history_truncated` error.
    pub(crate) truncated: Option<String>,
}

/// Check bindings and filters against the limits and the principal's grants.
pub(crate) fn compile_spec(
    limits: &LimitsConfig,
    principal: &Principal,
    bindings: &[Binding],
    filters: &[serde_json::Value],
) -> Result<SubSpec, ClientError> {
    let bad = |msg: String| ClientError::new(ErrorCode::BadRequest, msg);
    if bindings.is_empty() {
        return Err(bad("`bindings` must name at least one {exchange, pattern}".into()));
    }
    if bindings.len() > limits.max_bindings {
        let msg = format!("{} bindings; the limit is {} (limits.max_bindings)", bindings.len(), limits.max_bindings);
        return Err(ClientError::new(ErrorCode::LimitExceeded, msg));
    }
    if filters.len() > limits.max_filters {
        let msg = format!("{} filters; the limit is {} (limits.max_filters)", filters.len(), limits.max_filters);
        return Err(ClientError::new(ErrorCode::LimitExceeded, msg));
    }
    let mut compiled = Vec::with_capacity(bindings.len());
    for (i, b) in bindings.iter().enumerate() {
        if b.exchange.is_empty() || b.exchange.len() > herald_core::event::MAX_NAME_BYTES {
            return Err(bad(format!("binding #{i}: exchange must be 1 to 255 bytes")));
        }
        let pattern = Pattern::parse(&b.pattern).map_err(|e| bad(format!("binding #{i}: {e}")))?;
        if !principal.may_bind(&b.exchange, &pattern) {
            let msg = format!("binding #{i} ({} {}) is outside your subscribe grants", b.exchange, b.pattern);
            return Err(ClientError::new(ErrorCode::Forbidden, msg));
        }
        compiled.push((b.exchange.clone(), pattern));
    }
    let filters = Filter::compile_all(filters).map_err(|e| bad(e.to_string()))?;
    Ok(SubSpec { bindings: compiled, filters })
}

/// Register a subscription at its starting point and start delivering.
///
/// `persist` is called exactly once, with a lower bound of the starting
/// cursor, before the subscription can deliver anything or be announced:
/// the session stores the subscription there, so it is durable before the
/// client hears `subscribed`. If it fails nothing is registered. `announce`
/// is called exactly once, before any event of the subscription is queued.
/// Returns the entry and its starting cursor: the position acks start from
/// (everything after it is delivered).
pub(crate) async fn open<P>(
    state: &AppState,
    reg: Registration,
    since: Option<Since>,
    persist: impl FnOnce(u64) -> P,
    announce: impl FnOnce(Announcement),
) -> Result<(Arc<SubEntry>, u64), ClientError>
where
    P: std::future::Future<Output = Result<(), ClientError>>,
{
    let s = state.get();
    let bounds = s.log.bounds();
    let (entry, cursor) = match since {
        None => {
            // Live starts at the fan-out head at registration, which is at
            // least this: after a crash, a resume replays from here.
            persist(s.fanout.head()).await?;
            let (entry, head) = s.fanout.register(reg, Start::Live, |head| {
                announce(Announcement { head, recovered: true, truncated: None });
            });
            return Ok((entry, head));
        }
        Some(Since::Id { id }) => {
            let ahead = id > bounds.head;
            let truncated = if ahead {
                Some(format!("since.id {id} is beyond the newest event ({}); delivering from there", bounds.head))
            } else if id + 1 < bounds.first {
                Some(truncated_message(id, bounds.first))
            } else {
                None
            };
            let cursor = if ahead { bounds.head } else { id };
            persist(cursor).await?;
            let (entry, _) = s.fanout.register(reg, Start::CatchUp(cursor), |head| {
                announce(Announcement { head, recovered: truncated.is_none(), truncated });
            });
            (entry, cursor)
        }
        Some(Since::Time { time }) => {
            let t = parse_time_us(&time).ok_or_else(|| {
                ClientError::new(
                    ErrorCode::BadRequest,
                    "since.time must be an RFC 3339 UTC time such as 2026-01-02T03:04:05Z",
                )
            })?;
            let first = s
                .log
                .first_at_or_after(t)
                .await
                .map_err(|e| ClientError::new(ErrorCode::Internal, format!("history lookup failed: {e}")))?;
            let truncated = (bounds.first > 1 && first <= bounds.first).then(|| {
                format!(
                    "events before id {} are no longer kept; some events at or after since.time may be missing",
                    bounds.first
                )
            });
            let cursor = first - 1;
            persist(cursor).await?;
            let (entry, _) = s.fanout.register(reg, Start::CatchUp(cursor), |head| {
                announce(Announcement { head, recovered: truncated.is_none(), truncated });
            });
            (entry, cursor)
        }
        Some(Since::Last { last }) => {
            if last > s.config.limits.max_replay {
                let msg = format!("since.last {last} exceeds limits.max_replay ({})", s.config.limits.max_replay);
                return Err(ClientError::new(ErrorCode::LimitExceeded, msg));
            }
            let (entry, head) = s.fanout.register(reg, Start::Hold, |_| {});
            // The last N of what is durable, not of what the fan-out has
            // dispatched so far: a publish is answered once committed, and
            // its dispatch may still be on the way. (A cursor past the
            // fan-out's head is fine: the catch-up waits for it to arrive.)
            let upto = s.log.bounds().head.max(head);
            let found = match find_last(state, &entry, upto, last).await {
                Ok(found) => Ok(found),
                Err(e) => Err(ClientError::new(ErrorCode::Internal, format!("history lookup failed: {e}"))),
            };
            let persisted = match found {
                Ok((cursor, found)) => persist(cursor).await.map(|()| (cursor, found)),
                Err(e) => Err(e),
            };
            let (cursor, found) = match persisted {
                Ok(v) => v,
                Err(e) => {
                    s.fanout.unregister(&entry);
                    return Err(e);
                }
            };
            let truncated = (found < last && bounds.first > 1)
                .then(|| format!("only {found} matching events are still kept (oldest kept id {})", bounds.first));
            entry.set_cursor(cursor);
            // Not live yet, so no event can precede this announcement.
            announce(Announcement { head, recovered: truncated.is_none(), truncated });
            (entry, cursor)
        }
    };
    spawn_catch_up(state.clone(), entry.clone());
    Ok((entry, cursor))
}

/// The message of a `history_truncated` error for a start after `after`.
pub(crate) fn truncated_message(after: u64, first: u64) -> String {
    format!(
        "events after id {after} up to id {} are no longer kept; delivering from id {first}",
        first.saturating_sub(1)
    )
}

/// Find where to start so that exactly the last `n` matching events up to
/// `head` are replayed: returns (cursor, how many were found).
async fn find_last(state: &AppState, entry: &SubEntry, head: u64, n: u64) -> Result<(u64, u64), herald_log::LogError> {
    let log = &state.get().log;
    let exchanges = entry.spec.exchanges();
    let (mut found, mut cursor, mut before) = (0u64, head, head);
    while found < n && before > 0 {
        let query = ReadQuery {
            exchanges: Some(exchanges.clone()),
            after: 0,
            upto: before,
            limit: 512,
            newest_first: true,
            max_bytes: usize::MAX,
        };
        let chunk = log.read(query).await?;
        let Some(oldest) = chunk.last() else { break };
        before = oldest.id - 1;
        for e in &chunk {
            if entry.wants(e) {
                found += 1;
                cursor = e.id - 1;
                if found == n {
                    break;
                }
            }
        }
    }
    Ok((cursor, found))
}

/// Start catching up `entry` in the background.
pub(crate) fn spawn_catch_up(state: AppState, entry: Arc<SubEntry>) {
    tokio::spawn(catch_up(state, entry));
}

/// One chunk of a catch-up: what the log holds after `after` (up to its
/// last event, or up to `upto` when it is empty), read in `turn`.
struct Chunk {
    after: u64,
    upto: u64,
    events: Result<Vec<Arc<Event>>, herald_log::LogError>,
    /// The connection's part of the turn is kept while the chunk is delivered.
    turn: ReadTurn,
}

/// Read the chunk after `after` up to `upto` in `turn`.
async fn read_chunk(state: &AppState, exchanges: &[String], after: u64, upto: u64, mut turn: ReadTurn) -> Chunk {
    let query = ReadQuery {
        exchanges: Some(exchanges.to_vec()),
        after,
        upto,
        limit: CHUNK,
        newest_first: false,
        max_bytes: CHUNK_BYTES,
    };
    let events = state.get().log.read(query).await;
    turn.read_done();
    Chunk { after, upto, events, turn }
}

/// How delivering a chunk ended.
enum Delivered {
    /// Every frame is queued.
    All,
    /// A pause stopped it: the cursor to keep (the last id queued).
    PausedAt(u64),
    /// The connection is closed.
    Closed,
}

async fn catch_up(state: AppState, entry: Arc<SubEntry>) {
    let s = state.get();
    let exchanges: Arc<[String]> = entry.spec.exchanges().into();
    // The next chunk, being read while this one is delivered: the read (on
    // the blocking pool, or a round trip to the cluster) and the framing and
    // writing of the chunk before it overlap instead of taking turns, which
    // was most of a replay's time on an idle core (see docs/operations.md).
    let mut ahead: Option<tokio::task::JoinHandle<Chunk>> = None;
    loop {
        if entry.park_if_pause_requested() {
            return;
        }
        let target = match s.fanout.try_go_live(&entry) {
            GoLive::Live | GoLive::Stopped => return,
            GoLive::Ahead => {
                // Committed but not yet dispatched: the fan-out is a moment behind the log.
                ahead = None;
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            GoLive::Behind(head) => head,
        };
        let cursor = entry.cursor();
        let read_ahead = match ahead.take() {
            Some(handle) => handle.await.ok().filter(|c| c.after == cursor),
            None => None,
        };
        let chunk = match read_ahead {
            Some(chunk) => chunk,
            // Wait for a turn; the connection's part of it is kept while this
            // chunk is delivered (see `herald_core::replay`).
            None => read_chunk(&state, &exchanges, cursor, target, entry.replay.turn().await).await,
        };
        let Chunk { upto: read_upto, events, turn, .. } = chunk;
        let events = match events {
            Ok(events) => events,
            Err(e) => {
                error!(error = %e, sub = %entry.sub, "Replay failed: the log could not be read.");
                let msg = encode(&ServerMessage::Error {
                    reference: None,
                    sub: Some(entry.sub.to_string()),
                    code: ErrorCode::Internal,
                    message: "history could not be read; reconnect to resume".into(),
                });
                entry.outbox.close_with(
                    Some(msg.into()),
                    herald_protocol::CloseCode::InternalError.code(),
                    "internal error",
                );
                return;
            }
        };
        // A chunk may be cut short by its byte budget: read on from its last
        // event; only an empty read proves nothing is left up to the target.
        let upto = events.last().map_or(read_upto, |last| last.id);
        // Read the next chunk meanwhile, with a turn that is free now (never
        // wait for a second turn while holding one).
        if upto < target {
            if let Some(next) = entry.replay.try_turn() {
                let (state, exchanges) = (state.clone(), exchanges.clone());
                ahead = Some(tokio::spawn(async move { read_chunk(&state, &exchanges, upto, target, next).await }));
            }
        }
        let delivered = deliver(&state, &entry, &events).await;
        drop(turn);
        match delivered {
            Delivered::All => entry.set_cursor(upto),
            Delivered::PausedAt(cursor) => {
                entry.set_cursor(cursor);
                ahead = None;
            }
            Delivered::Closed => return,
        }
    }
}

/// Queue the frames of the chunk's events the subscription wants, waiting
/// for space in the outbox, many at a time (one lock and one writer
/// wake-up per batch instead of per event).
async fn deliver(state: &AppState, entry: &SubEntry, events: &[Arc<Event>]) -> Delivered {
    let mut ids = Vec::with_capacity(events.len());
    let mut frames = Vec::with_capacity(events.len());
    for event in events {
        if !entry.wants(event) {
            continue;
        }
        ids.push(event.id);
        frames.push(Frame::Text(entry.frame(event)));
    }
    let mut next = 0;
    while next < frames.len() {
        let need = match &frames[next] {
            Frame::Text(b) => b.len(),
            _ => 0,
        };
        if !entry.outbox.wait_for_space(need).await {
            return Delivered::Closed;
        }
        // A pause stops the chunk right after what was queued (checked
        // after the wait, which may be long for a slow client).
        if entry.pause_pending() {
            return Delivered::PausedAt(ids[next] - 1);
        }
        match entry.outbox.offer_many(&frames[next..]) {
            Ok(n) => {
                state.get().metrics.replayed.inc_by(n as u64);
                next += n;
            }
            Err(_) => return Delivered::Closed,
        }
    }
    Delivered::All
}
