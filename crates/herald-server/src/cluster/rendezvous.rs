//! Rendezvous across nodes, over core NATS.
//!
//! Every request goes to the cluster (the broker's [`Forwarder`]), even
//! when the requester's own node has responders: a node subscribes, in the
//! queue group `rdv`, to `<prefix>.rdv.free.<service>` while one of its
//! responders of that service has a free slot, and NATS hands each request
//! to one such node at random. A node that took it answers `taken` (and
//! flushes that) *before* it hands the request to its broker, which picks
//! the next free responder in rotation, so that the requester's node
//! always knows the holder of a request a responder has seen; a node
//! whose slot went in the meantime answers `busy`. While no node has a free
//! responder, the request waits on the requester's node, and tries again
//! when any node says a slot came free (`<prefix>.rdv.freed.<service>`,
//! published as responders register or answer), and otherwise every
//! quarter second, until the match timeout.
//!
//! The node that takes a request gives it an id of its own, `<id>.<node>`,
//! and hands it to its broker like a local one: rotation among its
//! responders, the answer deadline, a responder going away. The outcome
//! (answer or error) goes to `<prefix>.rdv.res.<requester node>`. An answer
//! given on another node than the one holding the request is carried there
//! (`rdv.peek.<node>`, `rdv.answer.<node>`). A node that is lost (see
//! [`super::nodes`]) fails the requests its responders held (`unavailable`
//! at the requester), and the requests its requesters made are dropped
//! where they are held (a late answer gets `not_found`).

use super::nodes::Registry;
use super::token;
use async_nats::{HeaderMap, Message, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use herald_core::rendezvous::{new_request_id, AnswerError, Body, Forwarded, Forwarder, RendezvousError, Reply};
use herald_core::{Broker, BrokerLimits, Pending};
use parking_lot::Mutex;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

const H_NODE: &str = "Herald-Node";
const H_REQUEST: &str = "Herald-Request";
const H_TIMEOUT_MS: &str = "Herald-Timeout-Ms";
const H_OUTCOME: &str = "Herald-Outcome";

/// The queue group every node's request subscriptions join.
const QUEUE: &str = "rdv";

/// How long an offer waits for the taking node's answer.
const OFFER_TIMEOUT: Duration = Duration::from_secs(1);

/// The holder of a request whose offer went unanswered in time: maybe
/// taken, by a node not known.
const UNKNOWN_HOLDER: &str = "?";

/// A request made on this node, until its outcome comes back.
struct Asked {
    service: String,
    reply: Reply,
    /// The node that took it (once one did).
    holder: Option<String>,
    /// When it was taken (or asked).
    since: Instant,
}

/// A request of another node's requester that this node's responders hold.
struct Held {
    requester: String,
    since: Instant,
    task: AbortHandle,
}

/// This node's part of rendezvous across the cluster.
pub(crate) struct ClusterRendezvous {
    client: async_nats::Client,
    me: String,
    prefix: String,
    nodes: Arc<Registry>,
    broker: Arc<Broker>,
    limits: BrokerLimits,
    asked: Mutex<HashMap<String, Asked>>,
    held: Mutex<HashMap<String, Held>>,
    /// Requests waiting here for a free slot, by service: woken one at a
    /// time when a node says a slot came free.
    waiting: Mutex<HashMap<String, (Arc<tokio::sync::Notify>, usize)>>,
}

/// Counts a request waiting for a free slot of its service, while it waits.
struct WaiterGuard<'a> {
    rdv: &'a ClusterRendezvous,
    service: &'a str,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        let mut waiting = self.rdv.waiting.lock();
        if let Some(entry) = waiting.get_mut(self.service) {
            entry.1 -= 1;
            if entry.1 == 0 {
                waiting.remove(self.service);
            }
        }
    }
}

/// The broker's forwarder: each request is asked of the cluster by a task.
struct Forward(Arc<ClusterRendezvous>);

impl Forwarder for Forward {
    fn forward(&self, request: Forwarded) {
        tokio::spawn(self.0.clone().ask(request));
    }
}

fn header<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.headers.as_ref()?.get(name).map(|v| v.as_str())
}

fn ms(d: Duration) -> String {
    (d.as_millis() as u64).max(1).to_string()
}

impl ClusterRendezvous {
    /// Start: the broker forwards to the cluster from now on.
    pub(crate) async fn start(
        client: async_nats::Client,
        me: String,
        prefix: String,
        nodes: Arc<Registry>,
        broker: Arc<Broker>,
    ) -> Result<Arc<ClusterRendezvous>, async_nats::SubscribeError> {
        let limits = broker.limits().clone();
        let rdv = Arc::new(ClusterRendezvous {
            client,
            me,
            prefix,
            nodes,
            broker,
            limits,
            asked: Mutex::default(),
            held: Mutex::default(),
            waiting: Mutex::default(),
        });
        for kind in ["res", "cancel", "peek", "answer"] {
            let mut sub = rdv.client.subscribe(rdv.subject(&format!("rdv.{kind}.{}", rdv.me))).await?;
            let r = rdv.clone();
            tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    match kind {
                        "res" => r.on_result(m),
                        "cancel" => r.on_cancel(m),
                        "peek" => r.on_peek(m).await,
                        _ => r.on_answer(m).await,
                    }
                }
            });
        }
        let mut freed = rdv.client.subscribe(rdv.subject("rdv.freed.*")).await?;
        let r = rdv.clone();
        tokio::spawn(async move {
            while let Some(m) = freed.next().await {
                let Some(service) = m.subject.rsplit('.').next().and_then(herald_log::subject::decode_token) else {
                    continue;
                };
                if let Some((notify, _)) = r.waiting.lock().get(&service) {
                    notify.notify_one();
                }
            }
        });
        // Slots coming free here are announced (by a task, off the broker's
        // lock). Only a hint to wake waiting requests, which also retry on
        // their own: when the channel is full, the hint is not needed.
        let (tx, rx) = tokio::sync::mpsc::channel::<String>(1024);
        rdv.broker.on_slot_freed(Arc::new(move |service: &str| {
            let _ = tx.try_send(service.to_string());
        }));
        rdv.broker.set_forwarder(Arc::new(Forward(rdv.clone())));
        tokio::spawn(rdv.clone().advertise(rx));
        tokio::spawn(rdv.clone().sweep());
        Ok(rdv)
    }

    fn subject(&self, rest: &str) -> String {
        format!("{}.{rest}", self.prefix)
    }

    /// The node holding `request` when it is another one (ids of requests
    /// taken in the cluster end in `.<node>`).
    pub(crate) fn holder_elsewhere<'a>(&self, request: &'a str) -> Option<&'a str> {
        let (_, node) = request.rsplit_once('.')?;
        (node != self.me && !node.is_empty()).then_some(node)
    }

    /// Requests asked from this node and not answered yet, and requests of
    /// other nodes held here (for metrics and `/v1/cluster`).
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.asked.lock().len(), self.held.lock().len())
    }

    /// Carry a request to a responder somewhere in the cluster.
    async fn ask(self: Arc<Self>, f: Forwarded) {
        let Forwarded { service, body, timeout, reply } = f;
        let id = new_request_id();
        let start = Instant::now();
        let overall = timeout.map(|t| start + t);
        let match_deadline =
            overall.map_or(start + self.limits.match_timeout, |o| o.min(start + self.limits.match_timeout));
        self.asked.lock().insert(id.clone(), Asked { service: service.clone(), reply, holder: None, since: start });
        let payload = Bytes::from(body.get().to_string());
        drop(body);
        let subject = self.subject(&format!("rdv.free.{}", token(&service)));
        let notify = {
            let mut waiting = self.waiting.lock();
            let entry = waiting.entry(service.clone()).or_insert_with(|| (Arc::new(tokio::sync::Notify::new()), 0));
            if entry.1 >= self.limits.max_waiting {
                drop(waiting);
                if let Some(a) = self.asked.lock().remove(&id) {
                    self.broker.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                    let _ = a.reply.send(Err(RendezvousError::LimitExceeded(format!(
                        "{} requests already wait for a responder of `{service}` on this node",
                        self.limits.max_waiting
                    ))));
                }
                return;
            }
            entry.1 += 1;
            entry.0.clone()
        };
        let _waiter = WaiterGuard { rdv: &self, service: &service };
        let mut pause = Duration::from_millis(50);
        // An offer that got no answer in time may have been taken all the
        // same (its answer late): then the outcome may still come.
        let mut uncertain = false;
        loop {
            {
                let mut asked = self.asked.lock();
                match asked.get(&id) {
                    None => return, // an outcome came already
                    Some(a) if a.reply.is_closed() => {
                        asked.remove(&id);
                        return; // the requester left
                    }
                    Some(_) => {}
                }
            }
            let now = Instant::now();
            let left = match_deadline.saturating_duration_since(now);
            if left.is_zero() {
                let mut asked = self.asked.lock();
                if uncertain {
                    // Left to its outcome, or to the sweep after its slack.
                    if let Some(a) = asked.get_mut(&id) {
                        a.holder = Some(UNKNOWN_HOLDER.to_string());
                    }
                } else if let Some(a) = asked.remove(&id) {
                    self.broker.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                    let _ = a
                        .reply
                        .send(Err(RendezvousError::Unavailable(format!("no responder available for `{service}`"))));
                }
                return;
            }
            let mut h = HeaderMap::new();
            h.insert(H_NODE, self.me.as_str());
            h.insert(H_REQUEST, id.as_str());
            if let Some(o) = overall {
                h.insert(H_TIMEOUT_MS, ms(o.saturating_duration_since(now)).as_str());
            }
            // A fixed bound, not what is left of the match timeout: a node
            // that takes a request answers in a round trip, and one that
            // answers late must not find the request already failed.
            let req = async_nats::Request::new().headers(h).payload(payload.clone()).timeout(Some(OFFER_TIMEOUT));
            match self.client.send_request(subject.clone(), req).await {
                Ok(m) if header(&m, H_OUTCOME) == Some("taken") => {
                    let holder = header(&m, H_NODE).unwrap_or_default().to_string();
                    if let Some(a) = self.asked.lock().get_mut(&id) {
                        a.holder = Some(holder);
                        a.since = Instant::now();
                    }
                    return;
                }
                // `busy` (the free slot went in the meantime) or no node with
                // a free slot: wait for a slot.
                Ok(_) => {}
                Err(e) => {
                    if e.kind() == async_nats::client::RequestErrorKind::TimedOut {
                        uncertain = true;
                    }
                    debug!(error = %e, %service, "No node took the request yet.");
                }
            }
            let left = match_deadline.saturating_duration_since(Instant::now());
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(pause.min(left)) => {}
            }
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// An outcome for a request made here.
    fn on_result(&self, m: Message) {
        let (Some(id), Some(outcome)) = (header(&m, H_REQUEST), header(&m, H_OUTCOME)) else { return };
        let Some(a) = self.asked.lock().remove(id) else { return };
        let text = String::from_utf8_lossy(&m.payload).into_owned();
        let result = match outcome {
            "ok" => RawValue::from_string(text)
                .map_err(|_| RendezvousError::Unavailable("the responder's node sent an unreadable answer".into())),
            "timeout" => Err(RendezvousError::Timeout(text)),
            "limit_exceeded" => Err(RendezvousError::LimitExceeded(text)),
            _ => Err(RendezvousError::Unavailable(text)),
        };
        // (Answers are counted by the holding node's broker.)
        if a.reply.send(result).is_err() {
            debug!(request = id, service = %a.service, "The requester left before its answer came.");
        }
    }

    /// A requester elsewhere left: drop the request here, so that its
    /// responder's answer gets `not_found`.
    fn on_cancel(&self, m: Message) {
        let local = String::from_utf8_lossy(&m.payload);
        if let Some(h) = self.held.lock().remove(local.as_ref()) {
            h.task.abort();
        }
    }

    /// Another node asks which service a request held here is for (before
    /// it checks its answerer's grant).
    async fn on_peek(&self, m: Message) {
        let Some(reply) = m.reply else { return };
        let request = String::from_utf8_lossy(&m.payload);
        let service = self.broker.service_of(&request).map(|s| s.to_string()).unwrap_or_default();
        let _ = self.client.publish(reply, service.into()).await;
    }

    /// An answer given on another node for a request held here.
    async fn on_answer(&self, m: Message) {
        let Some(reply) = m.reply.clone() else { return };
        let Some(request) = header(&m, H_REQUEST) else { return };
        let outcome = match std::str::from_utf8(&m.payload).ok().and_then(|s| RawValue::from_string(s.to_string()).ok())
        {
            // The answerer's node checked its grant against `peek`.
            Some(body) => match self.broker.answer(request, body, |_| true) {
                Ok(()) => "ok",
                Err(AnswerError::RequesterGone(_)) => "gone",
                Err(_) => "not_found",
            },
            None => "not_found",
        };
        let mut h = HeaderMap::new();
        h.insert(H_OUTCOME, outcome);
        let _ = self.client.publish_with_headers(reply, h, Bytes::new()).await;
    }

    /// Deliver an answer to a request held by another node.
    pub(crate) async fn answer_elsewhere(
        &self,
        node: &str,
        request: &str,
        body: Body,
        may_serve: impl FnOnce(&str) -> bool,
    ) -> Result<(), AnswerError> {
        let unknown = || AnswerError::Unknown(request.to_string());
        let peek = tokio::time::timeout(
            Duration::from_secs(2),
            self.client.request(self.subject(&format!("rdv.peek.{node}")), Bytes::from(request.to_string())),
        )
        .await;
        let service = match peek {
            Ok(Ok(m)) if !m.payload.is_empty() => String::from_utf8_lossy(&m.payload).into_owned(),
            _ => return Err(unknown()),
        };
        if !may_serve(&service) {
            return Err(AnswerError::WrongService(request.to_string()));
        }
        let mut h = HeaderMap::new();
        h.insert(H_REQUEST, request);
        let sent = tokio::time::timeout(
            Duration::from_secs(2),
            self.client.request_with_headers(
                self.subject(&format!("rdv.answer.{node}")),
                h,
                Bytes::from(body.get().to_string()),
            ),
        )
        .await;
        match sent {
            Ok(Ok(m)) => match header(&m, H_OUTCOME) {
                Some("ok") => Ok(()),
                Some("gone") => Err(AnswerError::RequesterGone(request.to_string())),
                _ => Err(unknown()),
            },
            _ => Err(unknown()),
        }
    }

    /// Take a request another node (or this one) offers.
    async fn take(self: &Arc<Self>, m: Message, service: &str) {
        let Some(reply) = m.reply.clone() else { return };
        let (Some(requester), Some(rid)) = (header(&m, H_NODE), header(&m, H_REQUEST)) else { return };
        let now = Instant::now();
        let overall =
            header(&m, H_TIMEOUT_MS).and_then(|v| v.parse::<u64>().ok()).map(|t| now + Duration::from_millis(t));
        let body = std::str::from_utf8(&m.payload).ok().and_then(|s| RawValue::from_string(s.to_string()).ok());
        let local = format!("{rid}.{}", self.me);
        // The same offer again (our first answer came too late): it is ours.
        let again = self.held.lock().contains_key(&local);
        let body = match body {
            _ if again => return self.answer_offer(reply, "taken").await,
            Some(body) if self.broker.can_take(&local, service) => body,
            _ => return self.answer_offer(reply, "busy").await,
        };
        // "taken" leaves this node before the responder can see the
        // request: were this node killed between the two, the requester's
        // node would otherwise not know who held the request, and would
        // wait out the sweep's slack (answer timeout and more) instead of
        // failing it as `unavailable` one node timeout after the loss.
        self.answer_offer(reply, "taken").await;
        if let Err(e) = self.client.flush().await {
            warn!(error = %e, "Could not flush the answer to a rendezvous offer.");
        }
        match self.broker.offer(local.clone(), service, body, overall) {
            Ok(pending) => self.hold(local, requester.to_string(), rid.to_string(), pending),
            // The same offer made again meanwhile (the requester's node
            // heard nothing for a second) and taken by that second call:
            // it runs there, once.
            Err(_) if self.held.lock().contains_key(&local) => {}
            // The free slot went in the meantime (a request of this node's
            // own, or the responder's connection closing): the requester's
            // node was told "taken", so it gets an outcome, one it retries.
            Err(_) => {
                self.broker.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                let why = format!("the responder of `{service}` went busy or away as it was handed the request; retry");
                self.send_outcome(requester, rid, "unavailable", why.into()).await;
            }
        }
    }

    /// Answer a node's offer of a request: `taken` or `busy`.
    async fn answer_offer(&self, reply: async_nats::Subject, outcome: &str) {
        let mut h = HeaderMap::new();
        h.insert(H_OUTCOME, outcome);
        h.insert(H_NODE, self.me.as_str());
        if let Err(e) = self.client.publish_with_headers(reply, h, Bytes::new()).await {
            warn!(error = %e, "Could not answer a requester's node's offer.");
        }
    }

    /// Send the outcome of a request taken here to its requester's node.
    async fn send_outcome(&self, to: &str, rid: &str, outcome: &str, payload: Bytes) {
        let mut h = HeaderMap::new();
        h.insert(H_REQUEST, rid);
        h.insert(H_OUTCOME, outcome);
        let subject = self.subject(&format!("rdv.res.{to}"));
        if let Err(e) = self.client.publish_with_headers(subject, h, payload).await {
            warn!(error = %e, node = %to, "Could not send a rendezvous outcome to the requester's node.");
        }
    }

    /// Wait for the outcome of a request taken here, and send it back.
    fn hold(self: &Arc<Self>, local: String, requester: String, rid: String, pending: Pending) {
        let me = self.clone();
        let mut held = self.held.lock();
        let key = local.clone();
        let to = requester.clone();
        let task = tokio::spawn(async move {
            let result = pending.answer().await;
            me.held.lock().remove(&key);
            let (outcome, payload) = match result {
                Ok(body) => ("ok", body.get().to_string()),
                Err(e @ RendezvousError::Timeout(_)) => ("timeout", e.to_string()),
                Err(e @ RendezvousError::LimitExceeded(_)) => ("limit_exceeded", e.to_string()),
                Err(e @ RendezvousError::Unavailable(_)) => ("unavailable", e.to_string()),
            };
            me.send_outcome(&to, &rid, outcome, payload.into()).await;
        });
        held.insert(local, Held { requester, since: Instant::now(), task: task.abort_handle() });
    }

    /// Subscribe to the services this node has a free responder of, and
    /// only those: at once when a slot comes free (then say so on
    /// `rdv.freed`, after the subscription, so that a waiting request finds
    /// it), and every 20 ms for slots taken (a request that comes after its
    /// slot went is answered `busy`).
    async fn advertise(self: Arc<Self>, mut freed: tokio::sync::mpsc::Receiver<String>) {
        // Dropping a service's sender tells its task to unsubscribe.
        let mut subscribed: HashMap<Arc<str>, tokio::sync::oneshot::Sender<()>> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut announce = std::collections::BTreeSet::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                service = freed.recv() => {
                    let Some(service) = service else { return };
                    announce.insert(service);
                    while let Ok(more) = freed.try_recv() {
                        announce.insert(more);
                    }
                }
            }
            let wanted: std::collections::HashSet<Arc<str>> =
                self.broker.capacity().into_iter().filter(|c| c.free > 0).map(|c| c.service).collect();
            subscribed.retain(|service, _| wanted.contains(service));
            for service in wanted {
                if subscribed.contains_key(&service) {
                    continue;
                }
                let subject = self.subject(&format!("rdv.free.{}", token(&service)));
                match self.client.queue_subscribe(subject, QUEUE.to_string()).await {
                    Ok(sub) => {
                        let (stop, stopped) = tokio::sync::oneshot::channel();
                        tokio::spawn(self.clone().serve(sub, service.clone(), stopped));
                        subscribed.insert(service, stop);
                    }
                    Err(e) => warn!(error = %e, %service, "Could not offer this node's responders to the cluster."),
                }
            }
            for service in std::mem::take(&mut announce) {
                let _ =
                    self.client.publish(self.subject(&format!("rdv.freed.{}", token(&service))), Bytes::new()).await;
            }
        }
    }

    /// Take the offers of one subscription until told to stop; then
    /// unsubscribe and answer what was already on its way here (never
    /// dropped unanswered, which would leave its requester waiting).
    async fn serve(
        self: Arc<Self>,
        mut sub: Subscriber,
        service: Arc<str>,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        loop {
            tokio::select! {
                m = sub.next() => match m {
                    Some(m) => self.take(m, &service).await,
                    None => return,
                },
                _ = &mut stop => break,
            }
        }
        let _ = sub.unsubscribe().await;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
            self.take(m, &service).await;
        }
    }

    /// Every 100 ms: requests whose requester left are cancelled where they
    /// are held; requests held by a lost node fail (`unavailable`);
    /// requests of a lost node's requesters are dropped here.
    async fn sweep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The holder reports a timeout itself; this is for a holder that
        // went silent without being lost.
        let slack = self.limits.match_timeout + self.limits.answer_timeout + Duration::from_secs(5);
        loop {
            tick.tick().await;
            let mut cancels = Vec::new();
            let mut failed = Vec::new();
            {
                let mut asked = self.asked.lock();
                let due: Vec<String> = asked
                    .iter()
                    .filter(|(_, a)| {
                        a.holder.as_ref().is_some_and(|h| {
                            a.reply.is_closed()
                                || (h != UNKNOWN_HOLDER && self.nodes.lost(h, a.since))
                                || a.since.elapsed() > slack
                        })
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in due {
                    let Some(a) = asked.remove(&id) else { continue };
                    let holder = a.holder.clone().unwrap_or_default();
                    if a.reply.is_closed() {
                        if holder != UNKNOWN_HOLDER {
                            cancels.push((holder.clone(), format!("{id}.{holder}")));
                        }
                    } else {
                        failed.push((a, holder));
                    }
                }
            }
            for (a, holder) in failed {
                let e = if holder == UNKNOWN_HOLDER {
                    self.broker.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                    RendezvousError::Unavailable(format!("no node confirmed taking the request for `{}`", a.service))
                } else if self.nodes.lost(&holder, a.since) {
                    self.broker.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                    RendezvousError::Unavailable(format!(
                        "node `{holder}`, where the responder of `{}` was, is gone; retry",
                        a.service
                    ))
                } else {
                    self.broker.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    RendezvousError::Timeout(format!("the responder of `{}` did not answer in time", a.service))
                };
                let _ = a.reply.send(Err(e));
            }
            for (holder, local) in cancels {
                let _ = self.client.publish(self.subject(&format!("rdv.cancel.{holder}")), local.into()).await;
            }
            let mut held = self.held.lock();
            held.retain(|_, h| {
                if self.nodes.lost(&h.requester, h.since) {
                    h.task.abort();
                    return false;
                }
                true
            });
        }
    }
}
