//! Rendezvous: a request for a named service goes to exactly one responder,
//! and its answer goes back to the requester (Snowflake's broker,
//! generalised).
//!
//! The [`Broker`] knows nothing of transports. A responder registers a
//! [`Sink`]: a *stream* (a WebSocket connection: many requests over time,
//! up to its concurrency at once) or a *once* sink (an HTTP long-poll: one
//! request, then it is gone). A requester calls [`Broker::request`] and
//! awaits the [`Pending`] it gets. Responders are taken in rotation among
//! those with a free slot, so work spreads evenly. A request that finds no
//! free responder waits, in order, up to the match timeout (then
//! `unavailable`); once handed over, the responder has until the answer
//! deadline (then `timeout`). Deadlines are enforced by [`Broker::sweep`],
//! which the server calls on a short timer.

use herald_protocol::ErrorCode;
use parking_lot::Mutex;
use rand::Rng;
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// An opaque request or answer body: any JSON value.
pub type Body = Box<RawValue>;

/// Identifies a registered responder.
pub type ResponderId = u64;

/// A request handed to a responder.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The request id, quoted in the answer.
    pub request: String,
    /// The service asked for.
    pub service: Arc<str>,
    /// The requester's body.
    pub body: Body,
    /// When the requester stops waiting for the answer.
    pub deadline: Instant,
}

/// Hands an [`Incoming`] to a stream responder; gives it back when the
/// responder cannot take it (its connection is closing).
pub type Deliver = Arc<dyn Fn(Incoming) -> Result<(), Incoming> + Send + Sync>;

/// Where a responder receives requests.
pub enum Sink {
    /// A connection: requests keep coming, up to `concurrency` at once.
    Stream(Deliver),
    /// A long-poll: one request, then the responder is gone.
    Once(oneshot::Sender<Incoming>),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sink::Stream(_) => "Sink::Stream",
            Sink::Once(_) => "Sink::Once",
        })
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RendezvousError {
    /// No responder took the request in time, or the one that had it went away.
    #[error("{0}")]
    Unavailable(String),
    /// The responder did not answer before the deadline.
    #[error("{0}")]
    Timeout(String),
    /// Too many requests are waiting for this service.
    #[error("{0}")]
    LimitExceeded(String),
}

impl RendezvousError {
    /// The protocol error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            RendezvousError::Unavailable(_) => ErrorCode::Unavailable,
            RendezvousError::Timeout(_) => ErrorCode::Timeout,
            RendezvousError::LimitExceeded(_) => ErrorCode::LimitExceeded,
        }
    }
}

/// Why an answer was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// No request with this id is waiting for an answer.
    #[error("no request `{0}` is waiting for an answer (answered already, timed out, or never made)")]
    Unknown(String),
    /// The request belongs to another service than the answerer may serve.
    #[error("request `{0}` is not for a service you may serve")]
    WrongService(String),
    /// The requester went away before the answer came ("client gone").
    #[error("the requester of `{0}` is gone")]
    RequesterGone(String),
}

impl AnswerError {
    /// The protocol error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            AnswerError::Unknown(_) | AnswerError::RequesterGone(_) => ErrorCode::NotFound,
            AnswerError::WrongService(_) => ErrorCode::Forbidden,
        }
    }
}

/// The broker's timing and size limits.
#[derive(Debug, Clone)]
pub struct BrokerLimits {
    /// How long a request waits for a free responder before `unavailable`.
    pub match_timeout: Duration,
    /// How long a responder has to answer before `timeout` (the default
    /// and the cap for a request's own `timeout_ms`).
    pub answer_timeout: Duration,
    /// Most requests waiting for a responder, per service.
    pub max_waiting: usize,
    /// Most requests one stream responder takes at once.
    pub max_concurrency: u32,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        BrokerLimits {
            match_timeout: Duration::from_secs(2),
            answer_timeout: Duration::from_secs(10),
            max_waiting: 10_000,
            max_concurrency: 64,
        }
    }
}

/// Counters, for metrics.
#[derive(Debug, Default)]
pub struct BrokerCounters {
    /// Requests made.
    pub requests: AtomicU64,
    /// Requests answered (the answer reached the requester).
    pub answered: AtomicU64,
    /// Requests that found no responder, or lost it.
    pub unavailable: AtomicU64,
    /// Requests whose responder did not answer in time.
    pub timeouts: AtomicU64,
    /// Answers whose requester was gone.
    pub requester_gone: AtomicU64,
}

/// A snapshot of the broker's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerGauges {
    /// Registered responders.
    pub responders: usize,
    /// Requests waiting for a responder.
    pub waiting: usize,
    /// Requests handed over and not answered yet.
    pub in_flight: usize,
}

/// Where the answer to a request goes: the requester's [`Pending`].
pub type Reply = oneshot::Sender<Result<Body, RendezvousError>>;

/// A request the broker hands on instead of matching it with its own
/// responders: in cluster mode every request goes to the cluster, where a
/// free responder on any node (this one included) takes it.
#[derive(Debug)]
pub struct Forwarded {
    /// The service asked for.
    pub service: String,
    /// The requester's body.
    pub body: Body,
    /// The requester's own bound on the whole wait, if it set one.
    pub timeout: Option<Duration>,
    /// Where the answer, or why there is none, goes.
    pub reply: Reply,
}

/// Told the service's name when one of its responders gets a free slot
/// (see [`Broker::on_slot_freed`]).
pub type SlotFreed = Arc<dyn Fn(&str) + Send + Sync>;

/// Takes requests the broker forwards (see [`Broker::set_forwarder`]).
pub trait Forwarder: Send + Sync + 'static {
    /// Carry `request` to a responder; every request must end, by an answer
    /// or an error sent through `request.reply`.
    fn forward(&self, request: Forwarded);
}

/// One service's responders on this broker, for routing across nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCapacity {
    /// The service.
    pub service: Arc<str>,
    /// Responders registered for it.
    pub responders: usize,
    /// Requests they could take right now (free slots).
    pub free: u32,
}

struct Responder {
    service: Arc<str>,
    concurrency: u32,
    busy: u32,
    sink: Option<Sink>,
}

struct Waiting {
    id: String,
    body: Body,
    reply: Reply,
    match_deadline: Instant,
    /// The requester's own overall deadline (`timeout_ms`), if it set one.
    overall: Option<Instant>,
}

struct InFlight {
    service: Arc<str>,
    responder: ResponderId,
    reply: Reply,
    deadline: Instant,
}

#[derive(Default)]
struct Service {
    rotation: VecDeque<ResponderId>,
    waiting: VecDeque<Waiting>,
}

#[derive(Default)]
struct State {
    next_responder: ResponderId,
    responders: HashMap<ResponderId, Responder>,
    services: HashMap<Arc<str>, Service>,
    in_flight: HashMap<String, InFlight>,
    /// No deadline is earlier than this, so a sweep before it has nothing to do.
    earliest: Option<Instant>,
}

impl State {
    /// The service's name, shared with its entry when it has one.
    fn service_key(&self, service: &str) -> Arc<str> {
        match self.services.get_key_value(service) {
            Some((k, _)) => k.clone(),
            None => Arc::from(service),
        }
    }

    fn note_deadline(&mut self, t: Instant) {
        self.earliest = Some(self.earliest.map_or(t, |e| e.min(t)));
    }
}

/// The rendezvous broker. One per gateway, shared by every transport.
#[derive(Default)]
pub struct Broker {
    state: Mutex<State>,
    limits: BrokerLimits,
    /// Set in cluster mode: requests go to the cluster.
    forwarder: std::sync::OnceLock<Arc<dyn Forwarder>>,
    /// Set in cluster mode: told when a responder gets a free slot.
    slot_freed: std::sync::OnceLock<SlotFreed>,
    /// Counters, for metrics.
    pub counters: BrokerCounters,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("limits", &self.limits).field("gauges", &self.gauges()).finish()
    }
}

/// A request on its way; await [`Pending::answer`].
#[derive(Debug)]
pub struct Pending {
    /// The request id.
    pub id: String,
    rx: oneshot::Receiver<Result<Body, RendezvousError>>,
}

impl Pending {
    /// A request whose answer comes through the returned [`Reply`] (for a
    /// [`Forwarder`] and tests).
    pub fn channel(id: String) -> (Reply, Pending) {
        let (tx, rx) = oneshot::channel();
        (tx, Pending { id, rx })
    }

    /// The answer, or why there is none. Every request ends: the broker
    /// answers, or its sweep fails the request at a deadline.
    pub async fn answer(self) -> Result<Body, RendezvousError> {
        self.rx.await.unwrap_or_else(|_| Err(RendezvousError::Unavailable("the gateway is shutting down".into())))
    }
}

impl Broker {
    /// A broker with these limits.
    pub fn new(limits: BrokerLimits) -> Broker {
        Broker {
            state: Mutex::default(),
            limits,
            forwarder: std::sync::OnceLock::new(),
            slot_freed: std::sync::OnceLock::new(),
            counters: BrokerCounters::default(),
        }
    }

    /// From now on, hand every request to `forwarder` rather than to this
    /// broker's own responders (which the forwarder reaches through
    /// [`Broker::offer`], like those of any other node). Set once.
    pub fn set_forwarder(&self, forwarder: Arc<dyn Forwarder>) {
        let _ = self.forwarder.set(forwarder);
    }

    /// The limits in force.
    pub fn limits(&self) -> &BrokerLimits {
        &self.limits
    }

    /// Register a responder for `service`. Waiting requests go to it at once.
    pub fn serve(&self, service: &str, concurrency: u32, sink: Sink) -> ResponderId {
        let concurrency = concurrency.clamp(1, self.limits.max_concurrency.max(1));
        let concurrency = if matches!(sink, Sink::Once(_)) { 1 } else { concurrency };
        let mut st = self.state.lock();
        st.next_responder += 1;
        let id = st.next_responder;
        let service = st.service_key(service);
        st.responders.insert(id, Responder { service: service.clone(), concurrency, busy: 0, sink: Some(sink) });
        st.services.entry(service.clone()).or_default().rotation.push_back(id);
        self.dispatch(&mut st, &service);
        drop(st);
        self.slot_freed(&service);
        id
    }

    /// Stop sending new requests to a responder. Requests it holds stay
    /// answerable until their deadline.
    pub fn unserve(&self, responder: ResponderId) {
        let mut st = self.state.lock();
        Self::remove_responder(&mut st, responder);
    }

    /// The responder's connection ended: unregister it and fail, at once,
    /// the requests it held (`unavailable`), so their requesters need not
    /// wait for the deadline.
    pub fn responder_gone(&self, responder: ResponderId) {
        let mut st = self.state.lock();
        Self::remove_responder(&mut st, responder);
        let held: Vec<String> =
            st.in_flight.iter().filter(|(_, f)| f.responder == responder).map(|(id, _)| id.clone()).collect();
        for id in held {
            if let Some(f) = st.in_flight.remove(&id) {
                self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                let _ = f.reply.send(Err(RendezvousError::Unavailable(format!(
                    "the responder of `{}` went away before answering; retry",
                    f.service
                ))));
            }
        }
    }

    fn remove_responder(st: &mut State, responder: ResponderId) {
        if let Some(r) = st.responders.remove(&responder) {
            if let Some(svc) = st.services.get_mut(&r.service) {
                svc.rotation.retain(|id| *id != responder);
                if svc.rotation.is_empty() && svc.waiting.is_empty() {
                    st.services.remove(&r.service);
                }
            }
        }
    }

    /// Ask one responder of `service`. `timeout`, when given, bounds the
    /// whole wait (finding a responder and its answer); the broker's own
    /// timeouts still apply within it.
    pub fn request(&self, service: &str, body: Body, timeout: Option<Duration>) -> Pending {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let (tx, pending) = Pending::channel(new_request_id());
        if let Some(f) = self.forwarder.get() {
            f.forward(Forwarded { service: service.to_string(), body, timeout, reply: tx });
            return pending;
        }
        let now = Instant::now();
        let match_deadline = now + self.limits.match_timeout;
        let overall = timeout.map(|t| now + t);
        let mut st = self.state.lock();
        self.enqueue(&mut st, service, pending.id.clone(), body, tx, match_deadline, overall);
        pending
    }

    /// A request from another node (cluster mode), with the id its
    /// responder will quote: taken only if a responder has a free slot now
    /// (it never waits here; the body comes back otherwise). It then runs
    /// like a local request: answer deadline, responder gone.
    pub fn offer(&self, id: String, service: &str, body: Body, overall: Option<Instant>) -> Result<Pending, Body> {
        let mut st = self.state.lock();
        if !Self::takes(&st, &id, service) {
            return Err(body);
        }
        let (tx, pending) = Pending::channel(id.clone());
        let now = Instant::now();
        self.enqueue(&mut st, service, id.clone(), body, tx, now + self.limits.match_timeout, overall);
        if st.in_flight.contains_key(&id) {
            return Ok(pending);
        }
        // The free responder's sink failed (its connection is closing): the
        // request must not wait in this node's line; it goes back.
        let waiting = st.services.get_mut(service).map(|svc| &mut svc.waiting);
        match waiting.and_then(|w| w.iter().position(|x| x.id == id).and_then(|i| w.remove(i))) {
            Some(w) => Err(w.body),
            None => Ok(pending), // refused (the line is full): `pending` says so
        }
    }

    /// Whether [`offer`](Self::offer) would take a request with this id
    /// now: a responder of `service` has a free slot, and the id was not
    /// handed over already. The node taking a request from another one
    /// tells that node so before it hands the request over, so that a
    /// responder never holds a request its requester's node does not know
    /// the holder of.
    pub fn can_take(&self, id: &str, service: &str) -> bool {
        Self::takes(&self.state.lock(), id, service)
    }

    fn takes(st: &State, id: &str, service: &str) -> bool {
        let free = st.services.get(service).is_some_and(|svc| {
            svc.rotation.iter().any(|r| st.responders.get(r).is_some_and(|r| r.busy < r.concurrency))
        });
        // An id already handed over is an offer made twice (its first
        // answer was late): the request runs once.
        free && !st.in_flight.contains_key(id)
    }

    /// Call `hook` with the service's name whenever one of its responders
    /// here gets a free slot (it registers, answers, or times out), so that
    /// requests waiting on other nodes can try again at once. Set once.
    pub fn on_slot_freed(&self, hook: SlotFreed) {
        let _ = self.slot_freed.set(hook);
    }

    fn slot_freed(&self, service: &str) {
        if let Some(hook) = self.slot_freed.get() {
            hook(service);
        }
    }

    /// Put a request in its service's line (refused when the line is full)
    /// and hand out what free responders can take.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &self,
        st: &mut State,
        service: &str,
        id: String,
        body: Body,
        reply: Reply,
        match_deadline: Instant,
        overall: Option<Instant>,
    ) {
        let key = st.service_key(service);
        let svc = st.services.entry(key.clone()).or_default();
        if svc.waiting.len() >= self.limits.max_waiting {
            self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(Err(RendezvousError::LimitExceeded(format!(
                "{} requests already wait for a responder of `{service}`",
                self.limits.max_waiting
            ))));
            return;
        }
        let match_deadline = overall.map_or(match_deadline, |o| match_deadline.min(o));
        svc.waiting.push_back(Waiting { id, body, reply, match_deadline, overall });
        st.note_deadline(match_deadline);
        self.dispatch(st, &key);
    }

    /// Every service with responders here: how many, and their free slots.
    pub fn capacity(&self) -> Vec<ServiceCapacity> {
        let st = self.state.lock();
        st.services
            .iter()
            .filter(|(_, svc)| !svc.rotation.is_empty())
            .map(|(name, svc)| ServiceCapacity {
                service: name.clone(),
                responders: svc.rotation.len(),
                free: svc
                    .rotation
                    .iter()
                    .filter_map(|r| st.responders.get(r))
                    .map(|r| r.concurrency.saturating_sub(r.busy))
                    .sum(),
            })
            .collect()
    }

    /// The service of a request handed over and not answered yet.
    pub fn service_of(&self, request: &str) -> Option<Arc<str>> {
        self.state.lock().in_flight.get(request).map(|f| f.service.clone())
    }

    /// Deliver `body` to the requester of `request`. `may_serve` says
    /// whether the answerer may serve the request's service.
    pub fn answer(&self, request: &str, body: Body, may_serve: impl FnOnce(&str) -> bool) -> Result<(), AnswerError> {
        let mut st = self.state.lock();
        let Some(f) = st.in_flight.get(request) else {
            return Err(AnswerError::Unknown(request.to_string()));
        };
        if !may_serve(&f.service) {
            return Err(AnswerError::WrongService(request.to_string()));
        }
        let Some(f) = st.in_flight.remove(request) else {
            return Err(AnswerError::Unknown(request.to_string()));
        };
        if let Some(r) = st.responders.get_mut(&f.responder) {
            r.busy = r.busy.saturating_sub(1);
        }
        // The freed slot may take a waiting request.
        self.dispatch(&mut st, &f.service);
        drop(st);
        self.slot_freed(&f.service);
        if f.reply.send(Ok(body)).is_err() {
            self.counters.requester_gone.fetch_add(1, Ordering::Relaxed);
            return Err(AnswerError::RequesterGone(request.to_string()));
        }
        self.counters.answered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Fail requests past their deadlines: waiting ones with `unavailable`,
    /// handed-over ones with `timeout` (freeing their responder's slot).
    /// Returns the earliest deadline still pending, for the caller's timer.
    pub fn sweep(&self, now: Instant) -> Option<Instant> {
        let mut st = self.state.lock();
        // The common case, on every tick: nothing is due yet.
        match st.earliest {
            None => return None,
            Some(e) if e > now => return Some(e),
            Some(_) => {}
        }
        let mut next: Option<Instant> = None;
        let mut earliest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        let mut emptied = Vec::new();
        for (name, svc) in st.services.iter_mut() {
            let mut kept = VecDeque::with_capacity(svc.waiting.len());
            for w in svc.waiting.drain(..) {
                if w.match_deadline <= now {
                    self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                    let _ =
                        w.reply.send(Err(RendezvousError::Unavailable(format!("no responder available for `{name}`"))));
                } else if w.reply.is_closed() {
                    // The requester left before a responder was free.
                } else {
                    earliest(w.match_deadline);
                    kept.push_back(w);
                }
            }
            svc.waiting = kept;
            if svc.waiting.is_empty() && svc.rotation.is_empty() {
                emptied.push(name.clone());
            }
        }
        for name in emptied {
            st.services.remove(&name);
        }
        let expired: Vec<String> =
            st.in_flight.iter().filter(|(_, f)| f.deadline <= now).map(|(id, _)| id.clone()).collect();
        let mut freed = Vec::new();
        for id in expired {
            if let Some(f) = st.in_flight.remove(&id) {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                let _ = f.reply.send(Err(RendezvousError::Timeout(format!(
                    "the responder of `{}` did not answer in time",
                    f.service
                ))));
                if let Some(r) = st.responders.get_mut(&f.responder) {
                    r.busy = r.busy.saturating_sub(1);
                }
                freed.push(f.service);
            }
        }
        for service in &freed {
            self.dispatch(&mut st, service);
        }
        for f in st.in_flight.values() {
            earliest(f.deadline);
        }
        st.earliest = next;
        drop(st);
        for service in &freed {
            self.slot_freed(service);
        }
        next
    }

    /// Sizes, for metrics and tests.
    pub fn gauges(&self) -> BrokerGauges {
        let st = self.state.lock();
        BrokerGauges {
            responders: st.responders.len(),
            waiting: st.services.values().map(|s| s.waiting.len()).sum(),
            in_flight: st.in_flight.len(),
        }
    }

    /// Hand waiting requests of `service` to free responders, in rotation.
    fn dispatch(&self, st: &mut State, service: &Arc<str>) {
        loop {
            let Some(svc) = st.services.get_mut(service) else { return };
            if svc.waiting.is_empty() {
                return;
            }
            // The first responder in rotation order with a free slot; it
            // moves to the back, so the next request goes to the next one.
            let mut chosen = None;
            for _ in 0..svc.rotation.len() {
                let Some(id) = svc.rotation.pop_front() else { break };
                svc.rotation.push_back(id);
                if st.responders.get(&id).is_some_and(|r| r.busy < r.concurrency) {
                    chosen = Some(id);
                    break;
                }
            }
            let Some(responder_id) = chosen else { return };
            let Some(w) = svc.waiting.pop_front() else { return };
            if w.reply.is_closed() {
                continue; // the requester left while waiting
            }
            let mut deadline = Instant::now() + self.limits.answer_timeout;
            if let Some(o) = w.overall {
                deadline = deadline.min(o);
            }
            let incoming = Incoming { request: w.id.clone(), service: service.clone(), body: w.body, deadline };
            let Some(r) = st.responders.get_mut(&responder_id) else { return };
            let delivered = match r.sink.take() {
                Some(Sink::Stream(deliver)) => {
                    let result = deliver(incoming);
                    r.sink = Some(Sink::Stream(deliver));
                    result
                }
                Some(Sink::Once(tx)) => tx.send(incoming),
                None => Err(incoming),
            };
            match delivered {
                Ok(()) => {
                    r.busy += 1;
                    let once = r.sink.is_none();
                    st.in_flight.insert(
                        w.id,
                        InFlight { service: service.clone(), responder: responder_id, reply: w.reply, deadline },
                    );
                    st.note_deadline(deadline);
                    if once {
                        Self::remove_responder(st, responder_id);
                    }
                }
                Err(back) => {
                    // That responder is gone; the request goes back to the
                    // front of the line for the next one.
                    Self::remove_responder(st, responder_id);
                    let w = Waiting {
                        id: back.request,
                        body: back.body,
                        reply: w.reply,
                        match_deadline: w.match_deadline,
                        overall: w.overall,
                    };
                    match st.services.get_mut(service) {
                        Some(svc) => svc.waiting.push_front(w),
                        None => st.services.entry(service.clone()).or_default().waiting.push_front(w),
                    }
                }
            }
        }
    }
}

/// 128 random bits, hex: request ids are capabilities for `answer`.
pub fn new_request_id() -> String {
    let mut rng = rand::rng();
    let n: u128 = rng.random();
    format!("{n:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(s: &str) -> Body {
        RawValue::from_string(s.to_string()).expect("valid JSON")
    }

    fn limits(match_ms: u64, answer_ms: u64) -> BrokerLimits {
        BrokerLimits {
            match_timeout: Duration::from_millis(match_ms),
            answer_timeout: Duration::from_millis(answer_ms),
            max_waiting: 3,
            max_concurrency: 8,
        }
    }

    /// A stream responder collecting what it is handed.
    fn collector() -> (Sink, Arc<Mutex<Vec<Incoming>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        (
            Sink::Stream(Arc::new(move |i| {
                g.lock().push(i);
                Ok(())
            })),
            got,
        )
    }

    #[tokio::test]
    async fn a_request_reaches_one_responder_and_the_answer_comes_back() {
        let b = Broker::new(limits(100, 1000));
        let (sink, got) = collector();
        b.serve("echo", 1, sink);
        let p = b.request("echo", body(r#"{"q":1}"#), None);
        let incoming = got.lock().pop().expect("delivered");
        assert_eq!(incoming.body.get(), r#"{"q":1}"#);
        assert_eq!(&*incoming.service, "echo");
        b.answer(&incoming.request, body(r#""a""#), |_| true).expect("answered");
        assert_eq!(p.answer().await.expect("answer").get(), r#""a""#);
        assert_eq!(b.gauges(), BrokerGauges { responders: 1, waiting: 0, in_flight: 0 });
    }

    #[tokio::test]
    async fn rotation_is_fair_and_one_at_a_time() {
        let b = Broker::new(limits(10_000, 10_000));
        let (s1, g1) = collector();
        let (s2, g2) = collector();
        b.serve("s", 1, s1);
        b.serve("s", 1, s2);
        let pending: Vec<Pending> = (0..4).map(|i| b.request("s", body(&i.to_string()), None)).collect();
        // One each; the other two wait for a free slot.
        assert_eq!((g1.lock().len(), g2.lock().len()), (1, 1));
        assert_eq!(b.gauges().waiting, 2);
        let first = g1.lock()[0].request.clone();
        b.answer(&first, body("10"), |_| true).expect("answer");
        assert_eq!(g1.lock().len(), 2, "the freed responder takes the next request");
        assert_eq!(g1.lock()[1].body.get(), "2", "waiting requests are served in order");
        drop(pending);
    }

    #[tokio::test]
    async fn concurrency_lets_a_responder_take_several() {
        let b = Broker::new(limits(10_000, 10_000));
        let (s, g) = collector();
        b.serve("s", 3, s);
        let _p: Vec<Pending> = (0..4).map(|_| b.request("s", body("1"), None)).collect();
        assert_eq!(g.lock().len(), 3);
        assert_eq!(b.gauges().waiting, 1);
    }

    #[tokio::test]
    async fn no_responder_means_unavailable_after_the_match_timeout() {
        let b = Broker::new(limits(20, 1000));
        let p = b.request("nobody", body("1"), None);
        assert!(b.sweep(Instant::now()).is_some(), "still waiting");
        let later = Instant::now() + Duration::from_millis(25);
        b.sweep(later);
        assert!(matches!(p.answer().await, Err(RendezvousError::Unavailable(_))));
        assert_eq!(b.gauges(), BrokerGauges::default(), "nothing left behind");
    }

    #[tokio::test]
    async fn a_silent_responder_means_timeout_and_frees_its_slot() {
        let b = Broker::new(limits(10_000, 30));
        let (s, g) = collector();
        b.serve("s", 1, s);
        let p1 = b.request("s", body("1"), None);
        let p2 = b.request("s", body("2"), None);
        b.sweep(Instant::now() + Duration::from_millis(35));
        assert!(matches!(p1.answer().await, Err(RendezvousError::Timeout(_))));
        assert_eq!(g.lock().len(), 2, "the slot went to the waiting request");
        let late = g.lock()[0].request.clone();
        assert!(matches!(b.answer(&late, body("0"), |_| true), Err(AnswerError::Unknown(_))));
        drop(p2);
    }

    #[tokio::test]
    async fn a_request_timeout_shortens_the_deadline() {
        let b = Broker::new(limits(10_000, 10_000));
        let (s, _g) = collector();
        b.serve("s", 1, s);
        let p = b.request("s", body("1"), Some(Duration::from_millis(5)));
        b.sweep(Instant::now() + Duration::from_millis(10));
        assert!(matches!(p.answer().await, Err(RendezvousError::Timeout(_))));
    }

    #[tokio::test]
    async fn a_responder_that_goes_away_fails_its_requests_at_once() {
        let b = Broker::new(limits(10_000, 10_000));
        let (s, _g) = collector();
        let r = b.serve("s", 2, s);
        let p = b.request("s", body("1"), None);
        b.responder_gone(r);
        assert!(matches!(p.answer().await, Err(RendezvousError::Unavailable(m)) if m.contains("went away")));
        assert_eq!(b.gauges(), BrokerGauges::default());
    }

    #[tokio::test]
    async fn an_answer_for_a_requester_that_left_says_so() {
        let b = Broker::new(limits(10_000, 10_000));
        let (s, g) = collector();
        b.serve("s", 1, s);
        drop(b.request("s", body("1"), None));
        let id = g.lock()[0].request.clone();
        assert!(matches!(b.answer(&id, body("1"), |_| true), Err(AnswerError::RequesterGone(_))));
        assert_eq!(b.counters.requester_gone.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn answers_are_checked_against_the_service() {
        let b = Broker::new(limits(10_000, 10_000));
        let (s, g) = collector();
        b.serve("s", 1, s);
        let _p = b.request("s", body("1"), None);
        let id = g.lock()[0].request.clone();
        assert!(matches!(b.answer(&id, body("1"), |svc| svc == "other"), Err(AnswerError::WrongService(_))));
        assert!(b.answer(&id, body("1"), |svc| svc == "s").is_ok(), "still answerable by a rightful responder");
    }

    #[tokio::test]
    async fn once_sinks_take_one_request_and_a_closed_one_is_skipped() {
        let b = Broker::new(limits(10_000, 10_000));
        let (closed_tx, closed_rx) = oneshot::channel();
        drop(closed_rx);
        b.serve("s", 1, Sink::Once(closed_tx));
        let (tx, rx) = oneshot::channel();
        b.serve("s", 1, Sink::Once(tx));
        let _p = b.request("s", body("7"), None);
        let got = rx.await.expect("the live poller got it");
        assert_eq!(got.body.get(), "7");
        assert_eq!(b.gauges(), BrokerGauges { responders: 0, waiting: 0, in_flight: 1 });
    }

    #[tokio::test]
    async fn offers_from_other_nodes_are_taken_only_by_a_free_slot_and_capacity_says_so() {
        let b = Broker::new(limits(10_000, 10_000));
        let freed = Arc::new(Mutex::new(Vec::<String>::new()));
        let f = freed.clone();
        b.on_slot_freed(Arc::new(move |s: &str| f.lock().push(s.to_string())));
        assert!(!b.can_take("x.n1", "s"));
        assert!(b.offer("x.n1".into(), "s", body("1"), None).is_err(), "no responder: refused, not queued");
        let (sink, got) = collector();
        b.serve("s", 1, sink);
        assert_eq!(b.capacity(), vec![ServiceCapacity { service: "s".into(), responders: 1, free: 1 }]);
        assert!(b.can_take("r1.n1", "s"));
        assert!(got.lock().is_empty(), "asking hands nothing over");
        let p = b.offer("r1.n1".into(), "s", body("2"), None).expect("taken");
        assert_eq!(got.lock()[0].request, "r1.n1", "the responder quotes the offered id");
        assert_eq!(b.capacity()[0].free, 0);
        assert!(!b.can_take("r2.n1", "s"), "no free slot");
        assert!(b.offer("r2.n1".into(), "s", body("3"), None).is_err(), "busy: the body comes back");
        assert_eq!(b.service_of("r1.n1").as_deref(), Some("s"));
        b.answer("r1.n1", body("4"), |_| true).expect("answered");
        assert_eq!(p.answer().await.expect("answer").get(), "4");
        assert_eq!(*freed.lock(), vec!["s".to_string(), "s".to_string()], "registered, then answered");
    }

    #[tokio::test]
    async fn an_offer_made_twice_runs_once_and_a_failing_sink_gives_it_back() {
        let b = Broker::new(limits(10_000, 10_000));
        let (sink, got) = collector();
        b.serve("s", 2, sink);
        let _p = b.offer("r1.n1".into(), "s", body("1"), None).expect("taken");
        assert!(!b.can_take("r1.n1", "s"), "a free slot, but this id is handed over already");
        assert!(b.offer("r1.n1".into(), "s", body("1"), None).is_err(), "the same id again is not run twice");
        assert_eq!(got.lock().len(), 1);
        let b = Broker::new(limits(10_000, 10_000));
        b.serve("t", 1, Sink::Stream(Arc::new(Err)));
        let back = b.offer("r2.n1".into(), "t", body("2"), None).expect_err("the sink refused it");
        assert_eq!(back.get(), "2");
        assert_eq!(b.gauges().waiting, 0, "it does not wait in this node's line");
    }

    #[tokio::test]
    async fn a_forwarder_takes_every_request() {
        struct Keep(Mutex<Vec<Forwarded>>);
        impl Forwarder for Keep {
            fn forward(&self, request: Forwarded) {
                self.0.lock().push(request);
            }
        }
        let b = Broker::new(limits(10_000, 10_000));
        let keep = Arc::new(Keep(Mutex::new(Vec::new())));
        b.set_forwarder(keep.clone());
        let (sink, got) = collector();
        b.serve("s", 1, sink);
        let p = b.request("s", body("1"), Some(Duration::from_secs(1)));
        assert!(got.lock().is_empty(), "not matched here: forwarded");
        let f = keep.0.lock().pop().expect("forwarded");
        assert_eq!((f.service.as_str(), f.timeout), ("s", Some(Duration::from_secs(1))));
        let _ = f.reply.send(Ok(body("9")));
        assert_eq!(p.answer().await.expect("answer").get(), "9");
    }

    #[tokio::test]
    async fn the_waiting_line_is_bounded() {
        let b = Broker::new(limits(10_000, 10_000));
        let _held: Vec<Pending> = (0..3).map(|_| b.request("s", body("1"), None)).collect();
        let p = b.request("s", body("1"), None);
        assert!(matches!(p.answer().await, Err(RendezvousError::LimitExceeded(_))));
    }
}
