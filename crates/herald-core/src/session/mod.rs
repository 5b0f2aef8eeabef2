//! Sessions: a client's subscriptions and acknowledged positions, kept
//! across disconnects (for `session.ttl`) and, through a [`SessionStore`],
//! across restarts and crashes.
//!
//! [`SessionTable`] holds the live sessions of this node. A [`Session`]'s
//! state is private: connections change it only through methods, and every
//! method that changes it takes the [`Attachment`] the connection got when
//! it attached. A take-over (a `hello` with the session's credentials on
//! another connection) makes every older attachment stale, so a connection
//! that awaited something (a history lookup, a store write) and comes back
//! finds out that the session is no longer its own instead of registering
//! a subscription against a closed outbox.
//!
//! Dynamic upstream bindings a subscription needs are [`Lease`]s: guards
//! owned by the subscription's record, released when it is dropped (removed,
//! ended with its session, or expired), and taken again when a session is
//! restored after a restart.
//!
//! Expiry costs no timer per session: detached sessions go into one heap by
//! deadline, and one task sleeps until the earliest ([`SessionTable::next_expiry`]).

mod store;

pub use store::{apply, merge_acks, MemoryStore, SessionStore, StoreError, StoreOp, StoredSession, StoredSub};

use crate::fanout::{FanOut, SubEntry, SubSpec};
use crate::filter::Filter;
use crate::outbox::Outbox;
use crate::pattern::Pattern;
use bytes::Bytes;
use herald_protocol::{Binding, CloseCode};
use parking_lot::Mutex;
use rand::Rng;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

/// A resource held upstream for a subscription (a dynamic broker binding).
/// Implementors release it in `Drop`.
pub trait Lease: Send + Sync + fmt::Debug {}

/// The leases of one subscription.
pub type Leases = Vec<Box<dyn Lease>>;

/// Proof that a connection attached a session. Every change a connection
/// makes presents it; after a take-over it is stale and changes are refused
/// with [`SubError::NotAttached`].
#[derive(Debug, PartialEq, Eq)]
pub struct Attachment {
    epoch: u64,
}

/// Why a change to a session was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubError {
    /// Another connection took the session over (or it ended).
    #[error("the session is no longer held by this connection")]
    NotAttached,
    /// No subscription with this id.
    #[error("no subscription with this `sub`")]
    NotFound,
    /// A subscription with this id exists.
    #[error("a subscription with this `sub` already exists")]
    Exists,
    /// The session has the most subscriptions it may have.
    #[error("the limit is {0} subscriptions (limits.max_subscriptions)")]
    TooMany(usize),
    /// The owner's sessions together hold the most subscriptions allowed.
    #[error("your sessions hold {0} subscriptions, the most allowed (limits.max_subscriptions_per_user); unsubscribe some or end unused sessions")]
    OwnerSubscriptions(usize),
    /// The owner's sessions together would hold more bindings than allowed.
    #[error("your sessions would hold more than {0} bindings (limits.max_bindings_per_user); unsubscribe some or end unused sessions")]
    OwnerBindings(usize),
    /// The node holds the most bytes of bindings and filters it may.
    #[error("the gateway holds the most subscription state it may ({0} bytes of bindings and filters, limits.max_subscription_bytes_per_node); try again later")]
    NodeBytes(usize),
}

/// Why no session could be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    /// The owner has the most sessions allowed and none of them is detached.
    #[error("you have {0} sessions, the most allowed (limits.max_sessions_per_user), and none is detached; close some connections")]
    TooManySessions(usize),
}

/// Budgets on what sessions hold, per owner (a user, or for anonymous
/// clients their address) and per node. Zero means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budgets {
    /// Sessions of one owner, attached or detached. At the limit, a new
    /// session ends the owner's longest-detached one; if none is detached
    /// it is refused.
    pub sessions_per_owner: usize,
    /// Subscriptions of one owner across its sessions.
    pub subscriptions_per_owner: usize,
    /// Bindings of one owner across its sessions.
    pub bindings_per_owner: usize,
    /// Bytes of binding and filter text on the node.
    pub subscription_bytes: usize,
    /// Anonymous clients share one owner per address (many browsers behind
    /// one NAT): their per-owner budgets are this many times the others'
    /// (0: no per-owner budget for them).
    pub anonymous_factor: usize,
}

impl Budgets {
    /// A per-owner limit for `owner` (0 stays "no limit").
    fn scaled(&self, limit: usize, owner: &str) -> usize {
        if owner.starts_with("a:") {
            // 0 times a limit is 0: no limit.
            limit.saturating_mul(self.anonymous_factor)
        } else {
            limit
        }
    }
}

/// The key budgets are counted under: the user, or for an anonymous
/// client its address (`None` when not known, as for sessions restored
/// after a restart).
pub fn owner_key(user: Option<&str>, addr: Option<std::net::IpAddr>) -> Arc<str> {
    match (user, addr) {
        (Some(u), _) => format!("u:{u}").into(),
        (None, Some(ip)) => format!("a:{ip}").into(),
        (None, None) => "a:?".into(),
    }
}

#[derive(Debug, Default)]
struct OwnerUsage {
    /// Ids of the owner's sessions (at most the budget, so scanned linearly).
    sessions: Vec<String>,
    subs: usize,
    bindings: usize,
}

/// What every session holds, counted against [`Budgets`].
#[derive(Debug, Default)]
struct Usage {
    by_owner: HashMap<Arc<str>, OwnerUsage>,
    bytes: usize,
}

impl Usage {
    fn owner(&mut self, owner: &Arc<str>) -> &mut OwnerUsage {
        self.by_owner.entry(owner.clone()).or_default()
    }

    fn tidy(&mut self, owner: &str) {
        if self.by_owner.get(owner).is_some_and(|o| o.sessions.is_empty() && o.subs == 0 && o.bindings == 0) {
            self.by_owner.remove(owner);
        }
    }
}

/// One subscription's share of the [`Usage`], given back when its record drops.
struct Charge {
    usage: Arc<Mutex<Usage>>,
    owner: Arc<str>,
    bindings: usize,
    bytes: usize,
}

impl fmt::Debug for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Charge").field("bindings", &self.bindings).field("bytes", &self.bytes).finish()
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let mut u = self.usage.lock();
        u.bytes = u.bytes.saturating_sub(self.bytes);
        if let Some(o) = u.by_owner.get_mut(&self.owner) {
            o.subs = o.subs.saturating_sub(1);
            o.bindings = o.bindings.saturating_sub(self.bindings);
        }
        u.tidy(&self.owner);
    }
}

/// Bytes of binding and filter text a subscription holds.
fn text_bytes(spec: &SubSpec, filters: &[Value]) -> usize {
    let bindings: usize = spec.bindings.iter().map(|(x, p)| x.len() + p.as_str().len()).sum();
    let filters: usize = filters.iter().map(|f| serde_json::to_string(f).map_or(0, |t| t.len())).sum();
    bindings + filters
}

/// Why a resume was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// No such session (never existed, expired or ended).
    #[error("session not found or expired")]
    NotFound,
    /// The secret does not match, or the session belongs to another user.
    #[error("session credentials do not match")]
    Mismatch,
}

/// Wall-clock milliseconds that follow tokio's clock, so that TTLs both
/// persist (they are Unix times) and can be tested with `time::pause()`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    unix_ms_at_start: u64,
    start: tokio::time::Instant,
}

impl Clock {
    /// A clock reading the system time now.
    pub fn new() -> Clock {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Clock { unix_ms_at_start: unix, start: tokio::time::Instant::now() }
    }

    /// A clock that reads `unix_ms` now (for tests that restart a table
    /// under a paused tokio clock).
    pub fn starting_at(unix_ms: u64) -> Clock {
        Clock { unix_ms_at_start: unix_ms, start: tokio::time::Instant::now() }
    }

    /// Unix milliseconds now.
    pub fn now_ms(&self) -> u64 {
        self.unix_ms_at_start + self.start.elapsed().as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// One subscription as the session remembers it.
#[derive(Debug)]
struct SubRecord {
    /// Bindings (their text is kept once, in the spec) and filters.
    spec: Arc<SubSpec>,
    /// Filters as the client sent them, for the store.
    filters: Vec<Value>,
    acked: u64,
    paused: bool,
    /// The live registration while a connection is attached.
    entry: Option<Arc<SubEntry>>,
    leases: Leases,
    /// False when the leases it needs could not be taken at restore.
    leased: bool,
    /// Its share of the budgets, given back when the record drops.
    _charge: Charge,
}

/// A subscription to add with [`Session::insert_sub`].
#[derive(Debug)]
pub struct NewSub {
    /// Compiled bindings and filters.
    pub spec: Arc<SubSpec>,
    /// Filters as the client sent them.
    pub filters: Vec<Value>,
    /// Starting position (a lower bound of where delivery starts).
    pub acked: u64,
    /// Dynamic upstream bindings it holds.
    pub leases: Leases,
}

#[derive(Debug, Default)]
struct State {
    /// Boxed: the map's buckets stay small (a session usually has one or
    /// two subscriptions, and a map of one holds four buckets).
    subs: HashMap<String, Box<SubRecord>>,
    attached: Option<(u64, Arc<Outbox>)>,
    /// Bumped at every attach and detach.
    epoch: u64,
    detached_at_ms: Option<u64>,
    acks_dirty: bool,
    /// A store write failed: the next flush writes the whole session.
    unsaved: bool,
    /// Removed from the table: no change is accepted any more.
    ended: bool,
}

impl State {
    fn check(&self, att: &Attachment) -> Result<(), SubError> {
        match &self.attached {
            Some((epoch, _)) if *epoch == att.epoch && !self.ended => Ok(()),
            _ => Err(SubError::NotAttached),
        }
    }

    fn unregister_all(&mut self, fanout: &FanOut) {
        for rec in self.subs.values_mut() {
            if let Some(e) = rec.entry.take() {
                fanout.unregister(&e);
            }
        }
    }
}

/// What every session of a table shares.
struct Shared {
    fanout: Arc<FanOut>,
    ttl: Duration,
    clock: Clock,
    /// Sessions with acks not yet written.
    dirty: Mutex<Vec<Arc<Session>>>,
    acks_waiting: Notify,
    /// Detached sessions by deadline: (deadline ms, id, epoch at detach).
    /// Entries go stale when a session is resumed; they are skipped then.
    expiries: Mutex<BinaryHeap<Reverse<(u64, String, u64)>>>,
    expiry_changed: Notify,
    budgets: Budgets,
    usage: Arc<Mutex<Usage>>,
    /// Sessions ended to make room for newer ones, to delete from the store
    /// (handed out by [`SessionTable::expire_due`]).
    evicted: Mutex<Vec<Arc<Session>>>,
}

impl Shared {
    /// Charge a new subscription of `owner` against the budgets.
    fn charge(&self, owner: &Arc<str>, spec: &SubSpec, filters: &[Value]) -> Result<Charge, SubError> {
        let b = &self.budgets;
        let (bindings, bytes) = (spec.bindings.len(), text_bytes(spec, filters));
        let mut u = self.usage.lock();
        if b.subscription_bytes != 0 && u.bytes + bytes > b.subscription_bytes {
            return Err(SubError::NodeBytes(b.subscription_bytes));
        }
        let (max_subs, max_bindings) =
            (b.scaled(b.subscriptions_per_owner, owner), b.scaled(b.bindings_per_owner, owner));
        let o = u.owner(owner);
        if max_subs != 0 && o.subs >= max_subs {
            return Err(SubError::OwnerSubscriptions(max_subs));
        }
        if max_bindings != 0 && o.bindings + bindings > max_bindings {
            return Err(SubError::OwnerBindings(max_bindings));
        }
        o.subs += 1;
        o.bindings += bindings;
        u.bytes += bytes;
        Ok(Charge { usage: self.usage.clone(), owner: owner.clone(), bindings, bytes })
    }

    /// Charge a restored subscription: it was admitted before, so it is
    /// counted even past a budget lowered since (new ones are refused).
    fn charge_restored(&self, owner: &Arc<str>, spec: &SubSpec, filters: &[Value]) -> Charge {
        let (bindings, bytes) = (spec.bindings.len(), text_bytes(spec, filters));
        let mut u = self.usage.lock();
        u.bytes += bytes;
        let o = u.owner(owner);
        o.subs += 1;
        o.bindings += bindings;
        Charge { usage: self.usage.clone(), owner: owner.clone(), bindings, bytes }
    }

    /// Whether `owner` could add a subscription like this (checked again,
    /// atomically, when it is inserted).
    fn may_charge(&self, owner: &Arc<str>, bindings: usize) -> Result<(), SubError> {
        let b = &self.budgets;
        let u = self.usage.lock();
        if b.subscription_bytes != 0 && u.bytes >= b.subscription_bytes {
            return Err(SubError::NodeBytes(b.subscription_bytes));
        }
        if let Some(o) = u.by_owner.get(owner) {
            let (max_subs, max_bindings) =
                (b.scaled(b.subscriptions_per_owner, owner), b.scaled(b.bindings_per_owner, owner));
            if max_subs != 0 && o.subs >= max_subs {
                return Err(SubError::OwnerSubscriptions(max_subs));
            }
            if max_bindings != 0 && o.bindings + bindings > max_bindings {
                return Err(SubError::OwnerBindings(max_bindings));
            }
        }
        Ok(())
    }

    fn forget_session(&self, owner: &Arc<str>, id: &str) {
        let mut u = self.usage.lock();
        if let Some(o) = u.by_owner.get_mut(owner) {
            o.sessions.retain(|s| s != id);
        }
        u.tidy(owner);
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

/// One client session.
pub struct Session {
    id: String,
    secret_sha256: String,
    user: Option<String>,
    /// Whose budgets it counts against.
    owner: Arc<str>,
    state: Mutex<State>,
    shared: Arc<Shared>,
    /// Whether a store holds it (set after a successful write, and at restore).
    stored: AtomicBool,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("id", &self.id).field("user", &self.user).finish_non_exhaustive()
    }
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes).map(|_| format!("{:02x}", rng.random::<u8>())).collect()
}

/// Lower-case hex SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Session {
    /// Public id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The user who owns it (`None` for anonymous).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Whether `secret` is this session's, compared in constant time.
    fn verify(&self, secret: &str) -> bool {
        hash_secret(secret).as_bytes().ct_eq(self.secret_sha256.as_bytes()).into()
    }

    /// Attach a connection's outbox. Any other connection that held the
    /// session is taken over: its subscriptions are unregistered and it is
    /// closed with 4409 after the `takeover` frame. Subscriptions are left
    /// unregistered for [`Session::register_all`].
    ///
    /// Refused (`None`) when the session ended or expired since it was
    /// found: attaching it would bring it back to life, and the next store
    /// write would put it back in the store.
    pub fn attach(&self, outbox: Arc<Outbox>, takeover: Bytes) -> Option<Attachment> {
        let mut st = self.state.lock();
        if st.ended {
            return None;
        }
        st.unregister_all(&self.shared.fanout);
        if let Some((_, old)) = st.attached.take() {
            old.close_with(Some(takeover), CloseCode::SessionTakenOver.code(), "session taken over");
        }
        st.epoch += 1;
        st.attached = Some((st.epoch, outbox));
        st.detached_at_ms = None;
        Some(Attachment { epoch: st.epoch })
    }

    /// A write of this session to the store failed: write it whole with the
    /// next coalesced flush (see [`SessionTable::take_dirty_acks`]), so that
    /// the store does not keep disagreeing with memory.
    pub fn mark_unsaved(self: &Arc<Self>) {
        let mut st = self.state.lock();
        st.unsaved = true;
        self.mark_dirty(&mut st);
    }

    /// Record that a store now holds this session.
    pub fn mark_stored(&self) {
        self.stored.store(true, Ordering::Release);
    }

    /// Whether a store holds this session: one that was never written needs
    /// no delete, and one without subscriptions no write at detach.
    pub fn is_stored(&self) -> bool {
        self.stored.load(Ordering::Acquire)
    }

    /// Whether a connection holds the session now.
    pub fn is_attached(&self) -> bool {
        self.state.lock().attached.is_some()
    }

    /// Whether `att` still holds the session.
    pub fn holds(&self, att: &Attachment) -> bool {
        self.state.lock().check(att).is_ok()
    }

    /// Remove the subscriptions that `keep` refuses (for example, the new
    /// token no longer grants them); returns their ids.
    pub fn retain_subs(
        &self,
        att: &Attachment,
        mut keep: impl FnMut(&SubSpec) -> bool,
    ) -> Result<Vec<String>, SubError> {
        let mut st = self.state.lock();
        st.check(att)?;
        let refused: Vec<String> = st.subs.iter().filter(|(_, r)| !keep(&r.spec)).map(|(s, _)| s.clone()).collect();
        for sub in &refused {
            if let Some(mut rec) = st.subs.remove(sub) {
                if let Some(e) = rec.entry.take() {
                    self.shared.fanout.unregister(&e);
                }
            }
        }
        Ok(refused)
    }

    /// Take again the leases of subscriptions that lack them (restored while
    /// a peer refused). Those still refused are removed: returns their ids
    /// with the reason.
    pub fn retake_leases(
        &self,
        att: &Attachment,
        mut lease: impl FnMut(&[Binding]) -> Result<Leases, String>,
    ) -> Result<Vec<(String, String)>, SubError> {
        let mut st = self.state.lock();
        st.check(att)?;
        let mut refused = Vec::new();
        for (sub, rec) in st.subs.iter_mut().filter(|(_, r)| !r.leased) {
            match lease(&rec.spec.protocol_bindings()) {
                Ok(leases) => {
                    rec.leases = leases;
                    rec.leased = true;
                }
                Err(why) => refused.push((sub.clone(), why)),
            }
        }
        for (sub, _) in &refused {
            st.subs.remove(sub);
        }
        Ok(refused)
    }

    /// Register every subscription: `register(sub, spec, acked, paused)`
    /// makes the fan-out entry. Returns the entries of those not paused
    /// (they need catching up from their acked ids).
    pub fn register_all(
        &self,
        att: &Attachment,
        mut register: impl FnMut(&str, &Arc<SubSpec>, u64, bool) -> Arc<SubEntry>,
    ) -> Result<Vec<Arc<SubEntry>>, SubError> {
        let mut st = self.state.lock();
        st.check(att)?;
        let mut catch_up = Vec::new();
        for (sub, rec) in st.subs.iter_mut() {
            if let Some(old) = rec.entry.take() {
                self.shared.fanout.unregister(&old);
            }
            let entry = register(sub, &rec.spec, rec.acked, rec.paused);
            if !rec.paused {
                catch_up.push(entry.clone());
            }
            rec.entry = Some(entry);
        }
        Ok(catch_up)
    }

    /// Whether a subscription `sub` with `bindings` bindings could be added now.
    pub fn check_new_sub(&self, att: &Attachment, sub: &str, bindings: usize, max: usize) -> Result<(), SubError> {
        let st = self.state.lock();
        st.check(att)?;
        if st.subs.contains_key(sub) {
            return Err(SubError::Exists);
        }
        if st.subs.len() >= max {
            return Err(SubError::TooMany(max));
        }
        self.shared.may_charge(&self.owner, bindings)
    }

    /// Add a subscription (not yet registered: see [`Session::set_entry`]).
    /// On refusal the [`NewSub`] is dropped, and its leases with it.
    pub fn insert_sub(&self, att: &Attachment, sub: &str, new: NewSub, max: usize) -> Result<(), SubError> {
        let mut st = self.state.lock();
        st.check(att)?;
        if st.subs.contains_key(sub) {
            return Err(SubError::Exists);
        }
        if st.subs.len() >= max {
            return Err(SubError::TooMany(max));
        }
        let charge = self.shared.charge(&self.owner, &new.spec, &new.filters)?;
        let record = SubRecord {
            _charge: charge,
            spec: new.spec,
            filters: new.filters,
            acked: new.acked,
            paused: false,
            entry: None,
            leases: new.leases,
            leased: true,
        };
        st.subs.insert(sub.to_string(), Box::new(record));
        Ok(())
    }

    /// Attach the fan-out entry of a subscription added with
    /// [`Session::insert_sub`], starting at `cursor`. If the connection no
    /// longer holds the session the entry is unregistered and the error
    /// returned (the new holder registered the subscription itself).
    pub fn set_entry(
        self: &Arc<Self>,
        att: &Attachment,
        sub: &str,
        entry: Arc<SubEntry>,
        cursor: u64,
    ) -> Result<(), SubError> {
        let mut st = self.state.lock();
        let refused = st.check(att).err().or_else(|| (!st.subs.contains_key(sub)).then_some(SubError::NotFound));
        if let Some(e) = refused {
            self.shared.fanout.unregister(&entry);
            return Err(e);
        }
        let raised = match st.subs.get_mut(sub) {
            Some(rec) => {
                rec.entry = Some(entry);
                let raised = cursor > rec.acked;
                rec.acked = rec.acked.max(cursor);
                raised
            }
            None => false,
        };
        if raised {
            self.mark_dirty(&mut st);
        }
        Ok(())
    }

    /// Remove a subscription; its leases are released.
    pub fn remove_sub(&self, att: &Attachment, sub: &str) -> Result<(), SubError> {
        let mut st = self.state.lock();
        st.check(att)?;
        let mut rec = st.subs.remove(sub).ok_or(SubError::NotFound)?;
        if let Some(e) = rec.entry.take() {
            self.shared.fanout.unregister(&e);
        }
        Ok(())
    }

    /// Pause a subscription.
    pub fn pause(&self, att: &Attachment, sub: &str) -> Result<(), SubError> {
        let mut st = self.state.lock();
        st.check(att)?;
        let rec = st.subs.get_mut(sub).ok_or(SubError::NotFound)?;
        if let Some(e) = &rec.entry {
            self.shared.fanout.pause(e);
        }
        rec.paused = true;
        Ok(())
    }

    /// Resume a paused subscription; returns its entry when it must catch
    /// up from the log.
    pub fn resume(&self, att: &Attachment, sub: &str) -> Result<Option<Arc<SubEntry>>, SubError> {
        let mut st = self.state.lock();
        st.check(att)?;
        let rec = st.subs.get_mut(sub).ok_or(SubError::NotFound)?;
        rec.paused = false;
        Ok(rec.entry.as_ref().filter(|e| self.shared.fanout.resume(e)).cloned())
    }

    /// The client has everything of `sub` up to `id`. Written to the store
    /// coalesced (see [`SessionTable::take_dirty_acks`]).
    pub fn ack(self: &Arc<Self>, att: &Attachment, sub: &str, id: u64) -> Result<(), SubError> {
        let mut st = self.state.lock();
        st.check(att)?;
        let rec = st.subs.get_mut(sub).ok_or(SubError::NotFound)?;
        // Nobody can have received past the fan-out head: an ack beyond it
        // (a bug or an attack) would park the subscription ahead of the log.
        let id = id.min(self.shared.fanout.head());
        if id > rec.acked {
            rec.acked = id;
            self.mark_dirty(&mut st);
        }
        Ok(())
    }

    fn mark_dirty(self: &Arc<Self>, st: &mut State) {
        if !st.acks_dirty {
            st.acks_dirty = true;
            self.shared.dirty.lock().push(self.clone());
            self.shared.acks_waiting.notify_one();
        }
    }

    /// The connection went away without ending the session: unregister its
    /// subscriptions and start the TTL. Returns false (and does nothing) if
    /// `att` no longer holds the session.
    pub fn detach(&self, att: &Attachment) -> bool {
        let mut st = self.state.lock();
        if st.check(att).is_err() {
            return false;
        }
        st.unregister_all(&self.shared.fanout);
        st.attached = None;
        st.epoch += 1;
        let now = self.shared.clock.now_ms();
        st.detached_at_ms = Some(now);
        let deadline = now + self.shared.ttl.as_millis() as u64;
        self.shared.expiries.lock().push(Reverse((deadline, self.id.clone(), st.epoch)));
        drop(st);
        self.shared.expiry_changed.notify_one();
        true
    }

    /// Number of subscriptions.
    pub fn sub_count(&self) -> usize {
        self.state.lock().subs.len()
    }

    /// The acknowledged id of a subscription.
    pub fn acked(&self, sub: &str) -> Option<u64> {
        self.state.lock().subs.get(sub).map(|r| r.acked)
    }

    /// The session as a store keeps it.
    pub fn stored(&self) -> StoredSession {
        let st = self.state.lock();
        StoredSession {
            id: self.id.clone(),
            secret_sha256: self.secret_sha256.clone(),
            user: self.user.clone(),
            detached_at_ms: st.detached_at_ms,
            subs: st
                .subs
                .iter()
                .map(|(sub, r)| {
                    let stored = StoredSub {
                        bindings: r.spec.protocol_bindings(),
                        filters: r.filters.clone(),
                        paused: r.paused,
                        acked: r.acked,
                    };
                    (sub.clone(), stored)
                })
                .collect(),
            node: None,
        }
    }
}

/// What [`SessionTable::restore`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Sessions back in the table, waiting for their clients.
    pub sessions: usize,
    /// Sessions whose TTL ran out while the gateway was down: delete them.
    pub expired: Vec<String>,
    /// Subscriptions left out because they no longer compile.
    pub dropped_subs: usize,
    /// Subscriptions whose leases a peer refused (retried at resume).
    pub unleased_subs: usize,
}

/// All sessions of this node.
#[derive(Debug)]
pub struct SessionTable {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    shared: Arc<Shared>,
}

impl SessionTable {
    /// A table whose detached sessions live for `ttl`; subscriptions are
    /// registered with `fanout`.
    pub fn new(ttl: Duration, fanout: Arc<FanOut>) -> SessionTable {
        SessionTable::with_clock(ttl, fanout, Clock::new())
    }

    /// [`SessionTable::new`] with the given clock.
    pub fn with_clock(ttl: Duration, fanout: Arc<FanOut>, clock: Clock) -> SessionTable {
        SessionTable::with_budgets(ttl, fanout, clock, Budgets::default())
    }

    /// [`SessionTable::with_clock`] with budgets on what sessions hold.
    pub fn with_budgets(ttl: Duration, fanout: Arc<FanOut>, clock: Clock, budgets: Budgets) -> SessionTable {
        let shared = Arc::new(Shared {
            fanout,
            ttl,
            clock,
            dirty: Mutex::new(Vec::new()),
            acks_waiting: Notify::new(),
            expiries: Mutex::new(BinaryHeap::new()),
            expiry_changed: Notify::new(),
            budgets,
            usage: Arc::new(Mutex::new(Usage::default())),
            evicted: Mutex::new(Vec::new()),
        });
        SessionTable { sessions: Mutex::new(HashMap::new()), shared }
    }

    /// Bytes of binding and filter text held by every session (counted
    /// against `Budgets::subscription_bytes`).
    pub fn subscription_bytes(&self) -> usize {
        self.shared.usage.lock().bytes
    }

    /// What `owner`'s sessions hold: (sessions, subscriptions, bindings).
    pub fn owner_usage(&self, owner: &str) -> (usize, usize, usize) {
        let u = self.shared.usage.lock();
        u.by_owner.get(owner).map_or((0, 0, 0), |o| (o.sessions.len(), o.subs, o.bindings))
    }

    /// The clock TTLs are measured with.
    pub fn clock(&self) -> Clock {
        self.shared.clock
    }

    /// Number of sessions, attached or detached.
    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Whether there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every session (for the final write at shutdown).
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.sessions.lock().values().cloned().collect()
    }

    /// Create a session of `user`, counted against `owner`'s budget (see
    /// [`owner_key`]), attached to `outbox`; returns it, the attachment and
    /// the secret (which only the client keeps from now on).
    ///
    /// When the owner has the most sessions allowed, its longest-detached
    /// session is ended to make room (handed out by
    /// [`SessionTable::expire_due`] for the store to delete); when none of
    /// them is detached the new one is refused.
    pub fn create(
        &self,
        user: Option<String>,
        owner: Arc<str>,
        outbox: Arc<Outbox>,
    ) -> Result<(Arc<Session>, Attachment, String), CreateError> {
        let mut sessions = self.sessions.lock();
        let budgets = &self.shared.budgets;
        let max = budgets.scaled(budgets.sessions_per_owner, &owner);
        let ids = {
            let u = self.shared.usage.lock();
            u.by_owner.get(&owner).map(|o| o.sessions.clone()).unwrap_or_default()
        };
        if max != 0 && ids.len() >= max {
            let oldest = ids
                .iter()
                .filter_map(|id| sessions.get(id))
                .filter_map(|s| s.state.lock().detached_at_ms.map(|at| (at, s.clone())))
                .min_by_key(|(at, _)| *at);
            let Some((_, victim)) = oldest else {
                return Err(CreateError::TooManySessions(max));
            };
            let subs = {
                let mut st = victim.state.lock();
                st.ended = true;
                std::mem::take(&mut st.subs)
            };
            drop(subs); // releases leases and budget
            sessions.remove(&victim.id);
            self.shared.forget_session(&victim.owner, &victim.id);
            self.shared.evicted.lock().push(victim);
            self.shared.expiry_changed.notify_one();
        }
        let secret = random_hex(32);
        let state = State { attached: Some((1, outbox)), epoch: 1, ..Default::default() };
        let session = Arc::new(Session {
            id: random_hex(16),
            secret_sha256: hash_secret(&secret),
            user,
            owner: owner.clone(),
            state: Mutex::new(state),
            shared: self.shared.clone(),
            stored: AtomicBool::new(false),
        });
        self.shared.usage.lock().owner(&owner).sessions.push(session.id.clone());
        sessions.insert(session.id.clone(), session.clone());
        Ok((session, Attachment { epoch: 1 }, secret))
    }

    /// Find a session for resuming: the secret must match and the user must
    /// be the same. Attach it with [`Session::attach`].
    pub fn find(&self, id: &str, secret: &str, user: Option<&str>) -> Result<Arc<Session>, ResumeError> {
        let session = self.sessions.lock().get(id).cloned().ok_or(ResumeError::NotFound)?;
        if !session.verify(secret) || session.user.as_deref() != user {
            return Err(ResumeError::Mismatch);
        }
        // Past its TTL counts as gone even before the expiry task removes it.
        let now = self.shared.clock.now_ms();
        let expired = {
            let st = session.state.lock();
            st.ended || st.detached_at_ms.is_some_and(|at| at + self.shared.ttl.as_millis() as u64 <= now)
        };
        if expired {
            return Err(ResumeError::NotFound);
        }
        Ok(session)
    }

    /// End a session for good (an orderly close by its holder): its
    /// subscriptions are unregistered and their leases released. Returns
    /// false if `att` no longer holds it.
    pub fn end(&self, session: &Session, att: &Attachment) -> bool {
        let mut sessions = self.sessions.lock();
        let mut st = session.state.lock();
        if st.check(att).is_err() {
            return false;
        }
        st.unregister_all(&self.shared.fanout);
        st.attached = None;
        st.ended = true;
        let subs = std::mem::take(&mut st.subs);
        drop(st);
        sessions.remove(&session.id);
        drop(sessions);
        drop(subs); // releases the leases
        self.shared.forget_session(&session.owner, &session.id);
        true
    }

    /// Another node took this session over (or ended it): close the
    /// connection holding it here, if any, with `takeover` and 4409, and
    /// forget it without writing to the store (the other node owns it now).
    /// Returns whether it was here.
    pub fn forget_taken_over(&self, id: &str, takeover: Bytes) -> bool {
        let Some(session) = self.sessions.lock().remove(id) else {
            return false;
        };
        let subs = {
            let mut st = session.state.lock();
            st.unregister_all(&self.shared.fanout);
            if let Some((_, old)) = st.attached.take() {
                old.close_with(Some(takeover), CloseCode::SessionTakenOver.code(), "session taken over");
            }
            st.ended = true;
            st.epoch += 1;
            std::mem::take(&mut st.subs)
        };
        drop(subs); // releases leases and budget
        self.shared.forget_session(&session.owner, &session.id);
        true
    }

    /// Time until the earliest detached session expires (`None`: none is detached).
    pub fn next_expiry(&self) -> Option<Duration> {
        let now = self.shared.clock.now_ms();
        self.shared.expiries.lock().peek().map(|Reverse((at, _, _))| Duration::from_millis(at.saturating_sub(now)))
    }

    /// Resolves when a session was detached (the earliest expiry may be sooner).
    pub async fn expiry_changed(&self) {
        self.shared.expiry_changed.notified().await;
    }

    /// Remove the detached sessions whose TTL is over; returns them, and
    /// those ended to make room for newer ones, for the store to delete.
    pub fn expire_due(&self) -> Vec<Arc<Session>> {
        let now = self.shared.clock.now_ms();
        let mut due = Vec::new();
        {
            let mut heap = self.shared.expiries.lock();
            while heap.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
                if let Some(Reverse((_, id, epoch))) = heap.pop() {
                    due.push((id, epoch));
                }
            }
        }
        let mut expired = Vec::new();
        let mut sessions = self.sessions.lock();
        for (id, epoch) in due {
            let Some(session) = sessions.get(&id).cloned() else { continue };
            let mut st = session.state.lock();
            if st.attached.is_some() || st.epoch != epoch {
                continue; // resumed since; a later detach has its own entry
            }
            st.ended = true;
            let subs = std::mem::take(&mut st.subs);
            drop(st);
            drop(subs);
            sessions.remove(&id);
            self.shared.forget_session(&session.owner, &id);
            expired.push(session);
        }
        drop(sessions);
        expired.append(&mut self.shared.evicted.lock());
        expired
    }

    /// Acknowledged ids changed since the last call, one [`StoreOp::Acks`]
    /// per session; a session whose last store write failed is written
    /// whole instead ([`StoreOp::Put`]).
    pub fn take_dirty_acks(&self) -> Vec<StoreOp> {
        let dirty = std::mem::take(&mut *self.shared.dirty.lock());
        dirty
            .into_iter()
            .filter_map(|session| {
                let unsaved = {
                    let mut st = session.state.lock();
                    st.acks_dirty = false;
                    if st.ended {
                        return None;
                    }
                    std::mem::take(&mut st.unsaved)
                };
                if unsaved {
                    return Some(StoreOp::Put(session.stored()));
                }
                let st = session.state.lock();
                let acks: BTreeMap<String, u64> = st.subs.iter().map(|(sub, r)| (sub.clone(), r.acked)).collect();
                Some(StoreOp::Acks { id: session.id.clone(), acks })
            })
            .collect()
    }

    /// The store did not take a write of these sessions: write them whole
    /// with the next flush.
    pub fn mark_unsaved(&self, ids: impl IntoIterator<Item = String>) {
        let sessions: Vec<Arc<Session>> = {
            let table = self.sessions.lock();
            ids.into_iter().filter_map(|id| table.get(&id).cloned()).collect()
        };
        for session in sessions {
            session.mark_unsaved();
        }
    }

    /// Resolves when some acknowledged id is waiting to be written.
    pub async fn acks_waiting(&self) {
        self.shared.acks_waiting.notified().await;
    }

    /// Load sessions from a store. Each is detached: as of its stored time,
    /// or as of now if it was attached when the gateway stopped, so a TTL
    /// runs across restarts. `lease` takes a subscription's upstream
    /// bindings again; subscriptions that no longer compile are left out.
    pub fn restore(
        &self,
        stored: Vec<StoredSession>,
        mut lease: impl FnMut(&[Binding]) -> Result<Leases, String>,
    ) -> Restored {
        let now = self.shared.clock.now_ms();
        let ttl = self.shared.ttl.as_millis() as u64;
        let mut out = Restored::default();
        let mut sessions = self.sessions.lock();
        for s in stored {
            let detached_at = s.detached_at_ms.unwrap_or(now).min(now);
            if detached_at + ttl <= now {
                out.expired.push(s.id);
                continue;
            }
            let owner = owner_key(s.user.as_deref(), None);
            let mut subs = HashMap::new();
            for (sub, stored) in s.subs {
                let Some(spec) = compile(&stored.bindings, &stored.filters) else {
                    out.dropped_subs += 1;
                    continue;
                };
                let (leases, leased) = match lease(&stored.bindings) {
                    Ok(l) => (l, true),
                    Err(_) => {
                        out.unleased_subs += 1;
                        (Vec::new(), false)
                    }
                };
                let record = SubRecord {
                    _charge: self.shared.charge_restored(&owner, &spec, &stored.filters),
                    spec: Arc::new(spec),
                    filters: stored.filters,
                    acked: stored.acked,
                    paused: stored.paused,
                    entry: None,
                    leases,
                    leased,
                };
                subs.insert(sub, Box::new(record));
            }
            let state = State { subs, epoch: 1, detached_at_ms: Some(detached_at), ..Default::default() };
            let session = Arc::new(Session {
                id: s.id.clone(),
                secret_sha256: s.secret_sha256,
                user: s.user,
                owner: owner.clone(),
                state: Mutex::new(state),
                shared: self.shared.clone(),
                stored: AtomicBool::new(true),
            });
            self.shared.usage.lock().owner(&owner).sessions.push(s.id.clone());
            self.shared.expiries.lock().push(Reverse((detached_at + ttl, s.id.clone(), 1)));
            sessions.insert(s.id, session);
            out.sessions += 1;
        }
        drop(sessions);
        self.shared.expiry_changed.notify_one();
        out
    }
}

/// Compile stored bindings and filters (they were valid when stored; a
/// newer version may refuse them).
fn compile(bindings: &[Binding], filters: &[Value]) -> Option<SubSpec> {
    let bindings: Option<Vec<(String, Pattern)>> =
        bindings.iter().map(|b| Pattern::parse(&b.pattern).ok().map(|p| (b.exchange.clone(), p))).collect();
    Some(SubSpec { bindings: bindings?, filters: Filter::compile_all(filters).ok()? })
}

#[cfg(test)]
mod tests;
