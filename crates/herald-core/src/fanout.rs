//! [`FanOut`]: moves committed events to the subscriptions that want them.
//!
//! The log hands over each committed batch in id order. For each event the
//! pattern index yields the candidate subscriptions; those that are *live*
//! and whose filters and principal admit the event get a frame pushed into
//! their connection's [`Outbox`]. The frame is encoded once per event and
//! shared (`Bytes`) by every subscription with the same subscription id.
//!
//! A subscription that is not live — replaying history, catching up after a
//! resume, or paused — is skipped here; the session layer reads what it
//! missed from the log and then calls [`FanOut::try_go_live`], which makes it
//! live only when its cursor has reached the fan-out head. Because both the
//! head and the live flag change under one lock, no event is delivered twice
//! or missed across that switch, and nothing is buffered without bound.

use crate::event::Event;
use crate::filter::Filter;
use crate::index::PatternIndex;
use crate::outbox::{Frame, Outbox, Overflow};
use crate::pattern::Pattern;
use crate::principal::Principal;
use crate::replay::ReplayPermits;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// What a subscription asks for: bindings and filters.
#[derive(Debug, Clone)]
pub struct SubSpec {
    /// `(exchange, pattern)` bindings.
    pub bindings: Vec<(String, Pattern)>,
    /// Filters, all of which must hold.
    pub filters: Vec<Filter>,
}

impl SubSpec {
    /// Whether an event matches a binding and every filter.
    pub fn matches(&self, event: &Event) -> bool {
        self.bindings.iter().any(|(x, p)| *x == event.exchange && event.routing_keys().any(|k| p.matches(k)))
            && self.filters.iter().all(|f| f.accepts(event))
    }

    /// The bindings as the protocol spells them.
    pub fn protocol_bindings(&self) -> Vec<herald_protocol::Binding> {
        self.bindings
            .iter()
            .map(|(x, p)| herald_protocol::Binding { exchange: x.clone(), pattern: p.as_str().to_string() })
            .collect()
    }

    /// The distinct exchanges named by the bindings.
    pub fn exchanges(&self) -> Vec<String> {
        let mut v: Vec<String> = self.bindings.iter().map(|(x, _)| x.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Delivery mode of a registered subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Receiving events from the fan-out.
    Live,
    /// Reading missed events from the log.
    CatchingUp,
    /// Paused by the client; `cursor` is where it stopped.
    Paused,
    /// Unregistered.
    Removed,
}

#[derive(Debug)]
struct EntryState {
    mode: Mode,
    pause_requested: bool,
}

/// One registered subscription of one connection.
#[derive(Debug)]
pub struct SubEntry {
    key: u64,
    /// The client's subscription id.
    pub sub: Arc<str>,
    /// Bindings and filters.
    pub spec: Arc<SubSpec>,
    /// Who is subscribed.
    pub principal: Arc<Principal>,
    /// Where frames go.
    pub outbox: Arc<Outbox>,
    /// How events are framed.
    pub format: FrameFormat,
    /// The start of its `event` frames (`{"type":"event","sub":"…",`),
    /// encoded once at registration.
    prefix: Box<[u8]>,
    /// Where its catch-ups take turns to read the log.
    pub replay: Arc<ReplayPermits>,
    live: AtomicBool,
    /// Whether events need a grant check (some binding is not wholly inside one grant).
    check_grants: bool,
    /// Whether the spec has filters (read here, beside `live`, so that the
    /// fan-out touches the spec only when it must).
    has_filters: bool,
    /// The highest id this subscription has been brought up to (delivered or
    /// skipped as not matching). Meaningful while not live.
    cursor: AtomicU64,
    state: Mutex<EntryState>,
}

impl SubEntry {
    /// Whether the event is for this subscription: bindings, filters,
    /// grants and ACL.
    pub fn wants(&self, event: &Event) -> bool {
        self.spec.matches(event) && self.admits(event)
    }

    /// Grants (when not implied by the bindings) and ACL.
    fn admits(&self, event: &Event) -> bool {
        (!self.check_grants || self.principal.granted(event)) && self.principal.admitted_by_acl(event)
    }

    /// The catch-up cursor.
    pub fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::Acquire)
    }

    /// Advance the catch-up cursor (only the catch-up task does this).
    pub fn set_cursor(&self, id: u64) {
        self.cursor.store(id, Ordering::Release);
    }

    /// Current mode.
    pub fn mode(&self) -> Mode {
        self.state.lock().mode
    }

    /// The catch-up task checks this between chunks: if a pause was
    /// requested it parks the entry as paused and returns true.
    pub fn park_if_pause_requested(&self) -> bool {
        let mut st = self.state.lock();
        if st.mode == Mode::Removed {
            return true;
        }
        if st.pause_requested {
            st.pause_requested = false;
            st.mode = Mode::Paused;
            return true;
        }
        false
    }

    /// Whether a pause was requested while catching up (checked per event).
    pub fn pause_pending(&self) -> bool {
        let st = self.state.lock();
        st.pause_requested || st.mode == Mode::Removed
    }

    /// Encode the `event` frame for this subscription.
    pub fn frame(&self, event: &Event) -> Bytes {
        encode_frame(&self.prefix, self.format, event)
    }
}

/// How a subscription's events are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFormat {
    /// A protocol `event` message (WebSocket).
    WebSocket,
    /// A Server-Sent Events record: `id: <id>` and `data: <event JSON>`.
    Sse,
}

/// One allocation per frame: the subscription's prefix and the event's
/// shared tail, copied once into the frame's bytes.
fn encode_frame(prefix: &[u8], format: FrameFormat, event: &Event) -> Bytes {
    let tail = event.frame_tail();
    let mut out = Vec::with_capacity(prefix.len() + tail.len() + 32);
    match format {
        FrameFormat::WebSocket => {
            out.extend_from_slice(prefix);
            out.extend_from_slice(tail);
        }
        FrameFormat::Sse => {
            use std::io::Write;
            // Writing into a Vec cannot fail.
            let _ = write!(out, "id: {}\ndata: {{", event.id);
            out.extend_from_slice(tail);
            out.extend_from_slice(b"\n\n");
        }
    }
    Bytes::from(out)
}

/// The start of a subscription's frames: the `event` message up to its
/// `sub` for WebSocket; nothing for SSE (its record starts with the id).
fn frame_prefix(sub: &str, format: FrameFormat) -> Box<[u8]> {
    match format {
        FrameFormat::WebSocket => herald_protocol::event_frame_prefix(sub).into_bytes().into_boxed_slice(),
        FrameFormat::Sse => Box::default(),
    }
}

/// How a subscription starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// Live from the current head.
    Live,
    /// Catch up from this cursor (the last id the client has), then go live.
    CatchUp(u64),
    /// Paused at this cursor.
    Paused(u64),
    /// Not live, cursor at the head: the caller sets the cursor (for example
    /// after searching for the last N events) and then starts catching up.
    Hold,
}

/// Outcome of [`FanOut::try_go_live`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoLive {
    /// The subscription is live.
    Live,
    /// The head moved past the cursor: read up to this id, then try again.
    Behind(u64),
    /// A pause was requested (or the subscription removed): stop catching up.
    Stopped,
    /// The cursor is past the fan-out head (events committed but not yet
    /// dispatched): wait briefly and try again.
    Ahead,
}

/// Counters kept by the fan-out.
#[derive(Debug, Default)]
pub struct FanOutStats {
    /// Events dispatched.
    pub events: AtomicU64,
    /// Frames pushed to outboxes.
    pub deliveries: AtomicU64,
    /// Times a live subscription fell behind and switched to reading from the log.
    pub lagged: AtomicU64,
    /// Frames not queued because the connection was closing.
    pub dropped_closed: AtomicU64,
}

/// A subscription as the pattern index holds it: the entry itself, with
/// its key beside it (the fan-out dedups what the index yields by key, and
/// reading the key there costs no trip to the entry).
#[derive(Debug, Clone)]
struct Indexed {
    key: u64,
    /// The subscription has more than one binding, so the index may yield
    /// it more than once for one event (see `dispatch`).
    multi: bool,
    entry: Arc<SubEntry>,
}

impl Indexed {
    fn new(entry: Arc<SubEntry>) -> Indexed {
        Indexed { key: entry.key, multi: entry.spec.bindings.len() > 1, entry }
    }
}

impl PartialEq for Indexed {
    fn eq(&self, other: &Indexed) -> bool {
        self.key == other.key
    }
}

impl Eq for Indexed {}

impl std::hash::Hash for Indexed {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

#[derive(Debug)]
struct Inner {
    head: u64,
    index: PatternIndex<Indexed>,
    entries: HashMap<u64, Arc<SubEntry>>,
    next_key: u64,
    /// Subscription ids interned, with how many entries use each: entries
    /// with equal ids hold the same `Arc`, so the fan-out finds the frame
    /// it already encoded for an id by pointer, without reading the text.
    subs: HashMap<Arc<str>, usize>,
}

impl Inner {
    /// The shared copy of a subscription id (see `subs`).
    fn intern(&mut self, sub: Arc<str>) -> Arc<str> {
        let (shared, count) = self.subs.remove_entry(&sub).unwrap_or((sub, 0));
        self.subs.insert(shared.clone(), count + 1);
        shared
    }

    /// An entry with this id is gone.
    fn release(&mut self, sub: &Arc<str>) {
        if let Some(count) = self.subs.get_mut(sub) {
            *count -= 1;
            if *count == 0 {
                self.subs.remove(sub);
            }
        }
    }
}

/// The fan-out: registered subscriptions and the dispatch of committed events.
#[derive(Debug)]
pub struct FanOut {
    inner: Mutex<Inner>,
    /// Counters.
    pub stats: FanOutStats,
}

/// What [`FanOut::register`] needs to know about a new subscription.
#[derive(Debug)]
pub struct Registration {
    /// The client's subscription id.
    pub sub: Arc<str>,
    /// Bindings and filters.
    pub spec: Arc<SubSpec>,
    /// Who subscribes.
    pub principal: Arc<Principal>,
    /// The connection's outbox.
    pub outbox: Arc<Outbox>,
    /// How events are framed.
    pub format: FrameFormat,
    /// Where its catch-ups take turns to read the log.
    pub replay: Arc<ReplayPermits>,
}

impl FanOut {
    /// A fan-out whose head is the log's head.
    pub fn new(head: u64) -> FanOut {
        FanOut {
            inner: Mutex::new(Inner {
                head,
                index: PatternIndex::new(),
                entries: HashMap::new(),
                next_key: 1,
                subs: HashMap::new(),
            }),
            stats: FanOutStats::default(),
        }
    }

    /// The id of the last event dispatched.
    pub fn head(&self) -> u64 {
        self.inner.lock().head
    }

    /// Number of registered subscriptions.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// Whether no subscription is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Register a subscription. `announce` runs under the fan-out lock with
    /// the head at registration, so a frame it queues (`subscribed`) precedes
    /// every live event. Returns the entry and that head.
    pub fn register(&self, reg: Registration, start: Start, announce: impl FnOnce(u64)) -> (Arc<SubEntry>, u64) {
        let mut inner = self.inner.lock();
        let head = inner.head;
        let (mode, cursor) = match start {
            Start::Live => (Mode::Live, head),
            Start::CatchUp(c) => (Mode::CatchingUp, c),
            Start::Paused(c) => (Mode::Paused, c),
            Start::Hold => (Mode::CatchingUp, head),
        };
        let key = inner.next_key;
        inner.next_key += 1;
        let sub = inner.intern(reg.sub);
        let check_grants = !reg.principal.contains_all(&reg.spec.bindings);
        let entry = Arc::new(SubEntry {
            key,
            check_grants,
            has_filters: !reg.spec.filters.is_empty(),
            prefix: frame_prefix(&sub, reg.format),
            sub,
            spec: reg.spec,
            principal: reg.principal,
            outbox: reg.outbox,
            format: reg.format,
            replay: reg.replay,
            live: AtomicBool::new(mode == Mode::Live),
            cursor: AtomicU64::new(cursor),
            state: Mutex::new(EntryState { mode, pause_requested: false }),
        });
        for (exchange, pattern) in &entry.spec.bindings {
            inner.index.insert(exchange, pattern, Indexed::new(entry.clone()));
        }
        inner.entries.insert(key, entry.clone());
        announce(head);
        (entry, head)
    }

    /// Remove a subscription. Returns the cursor to resume from later: the
    /// head if it was live, else its catch-up cursor.
    pub fn unregister(&self, entry: &SubEntry) -> u64 {
        let mut inner = self.inner.lock();
        let mut st = entry.state.lock();
        let cursor = if st.mode == Mode::Live { inner.head } else { entry.cursor() };
        st.mode = Mode::Removed;
        entry.live.store(false, Ordering::Release);
        drop(st);
        if let Some(indexed) = inner.entries.remove(&entry.key).map(Indexed::new) {
            for (exchange, pattern) in &entry.spec.bindings {
                inner.index.remove(exchange, pattern, &indexed);
            }
            inner.release(&entry.sub);
        }
        cursor
    }

    /// Called by the catch-up task when its cursor may have reached the head.
    pub fn try_go_live(&self, entry: &SubEntry) -> GoLive {
        let inner = self.inner.lock();
        let mut st = entry.state.lock();
        if st.mode != Mode::CatchingUp {
            return GoLive::Stopped;
        }
        if st.pause_requested {
            st.pause_requested = false;
            st.mode = Mode::Paused;
            return GoLive::Stopped;
        }
        let cursor = entry.cursor();
        if cursor < inner.head {
            return GoLive::Behind(inner.head);
        }
        if cursor > inner.head {
            return GoLive::Ahead;
        }
        st.mode = Mode::Live;
        entry.live.store(true, Ordering::Release);
        GoLive::Live
    }

    /// Pause a subscription. Events after this point are read from the log on resume.
    pub fn pause(&self, entry: &SubEntry) {
        let inner = self.inner.lock();
        let mut st = entry.state.lock();
        match st.mode {
            Mode::Live => {
                entry.live.store(false, Ordering::Release);
                entry.set_cursor(inner.head);
                st.mode = Mode::Paused;
            }
            Mode::CatchingUp => st.pause_requested = true,
            Mode::Paused | Mode::Removed => {}
        }
    }

    /// Resume a paused subscription. Returns true when the caller must start
    /// a catch-up task for it.
    pub fn resume(&self, entry: &SubEntry) -> bool {
        let _inner = self.inner.lock();
        let mut st = entry.state.lock();
        match st.mode {
            Mode::Paused => {
                st.mode = Mode::CatchingUp;
                true
            }
            Mode::CatchingUp => {
                // The running catch-up task simply carries on.
                st.pause_requested = false;
                false
            }
            Mode::Live | Mode::Removed => false,
        }
    }

    /// The cursor a subscription would resume from if the connection dropped now.
    pub fn position(&self, entry: &SubEntry) -> u64 {
        let inner = self.inner.lock();
        let st = entry.state.lock();
        if st.mode == Mode::Live {
            inner.head
        } else {
            entry.cursor()
        }
    }

    /// The distinct outboxes of subscriptions bound to any of `exchanges`
    /// (for `status` messages about the sources feeding them).
    pub fn outboxes_for(&self, exchanges: &[String]) -> Vec<Arc<Outbox>> {
        let inner = self.inner.lock();
        let mut out: Vec<Arc<Outbox>> = Vec::new();
        for e in inner.entries.values() {
            if e.spec.bindings.iter().any(|(x, _)| exchanges.contains(x))
                && !out.iter().any(|o| Arc::ptr_eq(o, &e.outbox))
            {
                out.push(e.outbox.clone());
            }
        }
        out
    }

    /// Dispatch a committed batch (ids ascending, all above the head).
    ///
    /// Returns the subscriptions that fell behind: an event did not fit in
    /// their client's outbox, so they were switched to catching up from the
    /// log just before that event. The caller starts a catch-up task for each.
    pub fn dispatch(&self, batch: &[Arc<Event>]) -> Vec<Arc<SubEntry>> {
        let mut lagging = Vec::new();
        let mut guard = self.inner.lock();
        let Inner { head, index, .. } = &mut *guard;
        // The index holds the entries themselves: no lookup by key per delivery.
        let mut matched: Vec<&Indexed> = Vec::new();
        // Frames already encoded for this event, by subscription id: most
        // clients use few distinct ids, so they share one allocation.
        let mut shared: Vec<(Arc<str>, FrameFormat, Bytes)> = Vec::new();
        let mut delivered = 0u64;
        // Writers to wake once the whole batch is queued (see
        // `Outbox::offer_deferred`).
        let mut wake: Vec<Arc<Outbox>> = Vec::new();
        // One clock read for the batch (when an outbox's stall would start).
        let now = tokio::time::Instant::now();
        let last_id = batch.last().map_or(0, |e| e.id);
        for event in batch {
            // A writer woken for the batch's last event has nothing more to
            // wait for: it is woken at once, so the first writes start
            // while the fan-out still queues for the others (on a commit of
            // one event, the common case when not saturated, that is every
            // writer).
            let last = event.id == last_id;
            if event.id <= *head {
                continue;
            }
            matched.clear();
            shared.clear();
            // Every matching binding, repeats included: deduplicating
            // costs a sort, paid only when a repeat is possible.
            let mut repeats = false;
            for (n, rk) in event.routing_keys().enumerate() {
                repeats |= n > 0;
                index.for_each_binding_match(&event.exchange, rk, |e| {
                    repeats |= e.multi;
                    matched.push(e)
                });
            }
            if repeats {
                // Several bindings of one subscription, or CC keys, may
                // reach the same subscription twice.
                matched.sort_unstable_by_key(|e| e.key);
                matched.dedup_by_key(|e| e.key);
            }
            for Indexed { entry, .. } in matched.iter().copied() {
                if !entry.live.load(Ordering::Acquire) {
                    continue;
                }
                if entry.has_filters && !entry.spec.filters.iter().all(|f| f.accepts(event)) {
                    continue;
                }
                if !entry.admits(event) {
                    continue;
                }
                // Interned ids: equal ids are the same pointer.
                let frame = match shared.iter().find(|(s, f, _)| Arc::ptr_eq(s, &entry.sub) && *f == entry.format) {
                    Some((_, _, b)) => b.clone(),
                    None => {
                        let b = encode_frame(&entry.prefix, entry.format, event);
                        shared.push((entry.sub.clone(), entry.format, b.clone()));
                        b
                    }
                };
                match entry.outbox.offer_deferred(Frame::Event(frame, event.time_us), now) {
                    Ok(owed) => {
                        if owed && last {
                            entry.outbox.wake();
                        } else if owed {
                            wake.push(entry.outbox.clone());
                        }
                        delivered += 1;
                    }
                    Err(Overflow::Full) => {
                        // The client is behind: it continues from the log at
                        // its own pace, from just before this event.
                        let mut st = entry.state.lock();
                        if st.mode == Mode::Live {
                            entry.live.store(false, Ordering::Release);
                            entry.set_cursor(event.id - 1);
                            st.mode = Mode::CatchingUp;
                            drop(st);
                            self.stats.lagged.fetch_add(1, Ordering::Relaxed);
                            lagging.push(Arc::clone(entry));
                        }
                    }
                    Err(Overflow::SlowConsumer | Overflow::Closed) => {
                        self.stats.dropped_closed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            *head = event.id;
        }
        drop(matched);
        drop(guard);
        for outbox in &wake {
            outbox.wake();
        }
        self.stats.events.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.stats.deliveries.fetch_add(delivered, Ordering::Relaxed);
        lagging
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::NewEvent;
    use serde_json::value::RawValue;

    fn event(id: u64, rk: &str) -> Arc<Event> {
        Arc::new(Event::commit(
            id,
            id,
            NewEvent {
                exchange: "x".into(),
                routing_key: rk.into(),
                payload: RawValue::from_string("{}".into()).expect("raw"),
                acl: None,
                headers: None,
                origin: None,
                idempotency_key: None,
            },
        ))
    }

    fn reg(outbox: &Arc<Outbox>, pattern: &str) -> Registration {
        Registration {
            sub: "s".into(),
            spec: Arc::new(SubSpec {
                bindings: vec![("x".into(), Pattern::parse(pattern).expect("pattern"))],
                filters: vec![],
            }),
            principal: Arc::new(Principal::open()),
            outbox: outbox.clone(),
            format: FrameFormat::WebSocket,
            replay: ReplayPermits::unlimited(),
        }
    }

    fn count(o: &Outbox) -> usize {
        let mut v = Vec::new();
        o.take(&mut v);
        v.len()
    }

    #[tokio::test]
    async fn every_writer_a_batch_reaches_is_woken_whichever_event_reached_it() {
        let fan = FanOut::new(0);
        let outbox = || Arc::new(Outbox::new(1 << 20, Bytes::new(), (4408, "")));
        // `first` matches only the batch's first event (woken after the
        // batch), `last` only its last (woken at once), `both` both (woken
        // once, after the batch, and then takes both frames together).
        let (first, last, both) = (outbox(), outbox(), outbox());
        fan.register(reg(&first, "a"), Start::Live, |_| {});
        fan.register(reg(&last, "b"), Start::Live, |_| {});
        fan.register(reg(&both, "#"), Start::Live, |_| {});
        let waiting: Vec<_> = [&first, &last, &both]
            .into_iter()
            .map(|o| {
                let o = o.clone();
                tokio::spawn(async move {
                    o.ready().await;
                    count(&o)
                })
            })
            .collect();
        tokio::task::yield_now().await;
        fan.dispatch(&[event(1, "a"), event(2, "b")]);
        let mut taken = Vec::new();
        for w in waiting {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), w).await.expect("woken").expect("ran");
            taken.push(n);
        }
        assert_eq!(taken, [1, 1, 2]);
    }

    #[test]
    fn catch_up_switch_is_gapless() {
        let fan = FanOut::new(0);
        let o = Arc::new(Outbox::new(1 << 20, Bytes::new(), (4408, "")));
        let (e, head) = fan.register(reg(&o, "a.*"), Start::CatchUp(0), |_| {});
        assert_eq!(head, 0);
        fan.dispatch(&[event(1, "a.b"), event(2, "a.c")]);
        assert_eq!(count(&o), 0, "not live yet");
        assert_eq!(fan.try_go_live(&e), GoLive::Behind(2));
        e.set_cursor(2);
        assert_eq!(fan.try_go_live(&e), GoLive::Live);
        fan.dispatch(&[event(3, "a.b"), event(4, "b.b")]);
        assert_eq!(count(&o), 1);
        fan.pause(&e);
        fan.dispatch(&[event(5, "a.b")]);
        assert_eq!(count(&o), 0);
        assert_eq!(e.cursor(), 4);
        assert!(fan.resume(&e));
        assert_eq!(fan.unregister(&e), 4);
        assert!(fan.is_empty());
    }

    fn frames(o: &Outbox) -> Vec<Bytes> {
        let mut v = Vec::new();
        o.take(&mut v);
        v.into_iter().filter_map(|f| if let Frame::Event(b, _) = f { Some(b) } else { None }).collect()
    }

    #[test]
    fn equal_subscription_ids_share_one_frame_and_distinct_ids_get_their_own() {
        let fan = FanOut::new(0);
        let outbox = || Arc::new(Outbox::new(1 << 20, Bytes::new(), (4408, "")));
        let (a, b, c) = (outbox(), outbox(), outbox());
        let (ea, _) = fan.register(reg(&a, "#"), Start::Live, |_| {});
        // Equal text in a different allocation, as every client sends its own.
        let mut rb = reg(&b, "#");
        rb.sub = String::from("s").into();
        fan.register(rb, Start::Live, |_| {});
        let mut rc = reg(&c, "#");
        rc.sub = "t".into();
        fan.register(rc, Start::Live, |_| {});
        fan.dispatch(&[event(1, "k")]);
        let (fa, fb, fc) = (frames(&a), frames(&b), frames(&c));
        assert_eq!(fa[0].as_ptr(), fb[0].as_ptr(), "one encoding for the id \"s\"");
        assert!(std::str::from_utf8(&fc[0]).expect("utf-8").contains("\"sub\":\"t\""), "{:?}", fc[0]);
        assert!(std::str::from_utf8(&fa[0]).expect("utf-8").contains("\"sub\":\"s\""), "{:?}", fa[0]);
        // The last holder of an id gone, the id is forgotten and comes back fresh.
        fan.unregister(&ea);
        fan.dispatch(&[event(2, "k")]);
        assert_eq!(frames(&b).len(), 1);
        assert!(frames(&a).is_empty(), "unregistered");
        assert_eq!(fan.inner.lock().subs.len(), 2);
    }

    #[test]
    fn a_full_outbox_switches_the_subscription_to_the_log() {
        let fan = FanOut::new(0);
        let o = Arc::new(Outbox::new(200, Bytes::new(), (4408, "")));
        let (e, _) = fan.register(reg(&o, "#"), Start::Live, |_| {});
        let batch: Vec<_> = (1..=10).map(|i| event(i, "k")).collect();
        let lagging = fan.dispatch(&batch);
        assert_eq!(lagging.len(), 1);
        let queued = count(&o) as u64;
        assert!((1..10).contains(&queued), "{queued}");
        assert_eq!(e.mode(), Mode::CatchingUp);
        assert_eq!(e.cursor(), queued, "catch-up resumes right after the last queued event");
        assert_eq!(fan.stats.lagged.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn overlapping_bindings_and_repeated_ones_deliver_each_event_once() {
        let fan = FanOut::new(0);
        let outbox = || Arc::new(Outbox::new(1 << 20, Bytes::new(), (4408, "")));
        let (a, b) = (outbox(), outbox());
        let mut ra = reg(&a, "#");
        let spec = |patterns: &[&str]| {
            Arc::new(SubSpec {
                bindings: patterns.iter().map(|p| ("x".into(), Pattern::parse(p).expect("pattern"))).collect(),
                filters: vec![],
            })
        };
        ra.spec = spec(&["a.#", "#.b", "a.b"]);
        fan.register(ra, Start::Live, |_| {});
        let mut rb = reg(&b, "#");
        rb.spec = spec(&["a.b", "a.b"]);
        fan.register(rb, Start::Live, |_| {});
        fan.dispatch(&[event(1, "a.b"), event(2, "a.c"), event(3, "c.b")]);
        let ids = |o: &Outbox| -> Vec<String> {
            frames(o)
                .iter()
                .map(|f| {
                    let v: serde_json::Value = serde_json::from_slice(f).expect("json");
                    v["id"].to_string()
                })
                .collect()
        };
        assert_eq!(ids(&a), ["1", "2", "3"], "three matching bindings, one delivery");
        assert_eq!(ids(&b), ["1"], "the same binding twice, one delivery");
    }
}
