use super::*;
use crate::fanout::{FrameFormat, Registration, Start};
use crate::principal::Principal;
use std::sync::atomic::{AtomicUsize, Ordering};

fn outbox() -> Arc<Outbox> {
    Arc::new(Outbox::new(1 << 20, Bytes::new(), (4408, "")))
}

fn table(ttl: Duration) -> (SessionTable, Arc<FanOut>) {
    let fanout = Arc::new(FanOut::new(1000));
    (SessionTable::new(ttl, fanout.clone()), fanout)
}

/// A table in a new process whose wall clock reads `clock` now.
fn restarted(ttl: Duration, clock: &Clock) -> SessionTable {
    SessionTable::with_clock(ttl, Arc::new(FanOut::new(0)), Clock::starting_at(clock.now_ms()))
}

fn create(t: &SessionTable, user: Option<String>, out: Arc<Outbox>) -> (Arc<Session>, Attachment, String) {
    let owner = owner_key(user.as_deref(), None);
    t.create(user, owner, out).expect("within budget")
}

fn binding() -> Vec<Binding> {
    vec![Binding { exchange: "x".into(), pattern: "a.#".into() }]
}

fn spec() -> Arc<SubSpec> {
    Arc::new(compile(&binding(), &[]).expect("compiles"))
}

/// A lease that counts how many are held.
#[derive(Debug)]
struct Counted(Arc<AtomicUsize>);
impl Lease for Counted {}
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn take(held: &Arc<AtomicUsize>) -> Leases {
    held.fetch_add(1, Ordering::SeqCst);
    vec![Box::new(Counted(held.clone()))]
}

fn new_sub(acked: u64, leases: Leases) -> NewSub {
    NewSub { spec: spec(), filters: vec![], acked, leases }
}

fn register(fanout: &FanOut, out: &Arc<Outbox>, sub: &str, spec: &Arc<SubSpec>, start: Start) -> Arc<SubEntry> {
    let reg = Registration {
        sub: Arc::from(sub),
        spec: spec.clone(),
        principal: Arc::new(Principal::anonymous()),
        outbox: out.clone(),
        format: FrameFormat::WebSocket,
        replay: crate::ReplayPermits::unlimited(),
    };
    fanout.register(reg, start, |_| {}).0
}

#[test]
fn resume_checks_secret_and_user() {
    let (t, _) = table(Duration::from_secs(1));
    let (s, _, secret) = create(&t, Some("alice".into()), outbox());
    assert!(t.find(s.id(), &secret, Some("alice")).is_ok());
    assert_eq!(t.find(s.id(), "nope", Some("alice")).err(), Some(ResumeError::Mismatch));
    assert_eq!(t.find(s.id(), &secret, Some("bob")).err(), Some(ResumeError::Mismatch));
    assert_eq!(t.find("x", &secret, Some("alice")).err(), Some(ResumeError::NotFound));
    assert!(!s.stored().secret_sha256.contains(&secret), "only a hash is stored");
    assert_eq!(s.stored().secret_sha256, hash_secret(&secret));
}

/// Defect: a subscription whose `subscribe` awaited (history lookup, store
/// write) while another connection took the session over was registered
/// against the old, closed outbox. Now both steps after the await refuse.
#[test]
fn a_take_over_during_subscribe_refuses_the_old_connection() {
    let (t, fanout) = table(Duration::from_secs(60));
    let held = Arc::new(AtomicUsize::new(0));
    let old_out = outbox();
    let (s, old, _) = create(&t, None, old_out.clone());
    s.check_new_sub(&old, "a", 1, 10).expect("may subscribe");
    // ... the old connection awaits; meanwhile a resume takes the session over.
    let new = s.attach(outbox(), Bytes::from_static(b"closing")).expect("attached");
    assert!(old_out.is_closed(), "the old connection is closed (4409)");
    assert_eq!(s.insert_sub(&old, "a", new_sub(0, take(&held)), 10), Err(SubError::NotAttached));
    assert_eq!(held.load(Ordering::SeqCst), 0, "the refused subscription's lease is released");
    assert_eq!(s.sub_count(), 0);

    // Inserted before the take-over, registered after it: the entry is refused and unregistered.
    s.insert_sub(&new, "b", new_sub(0, take(&held)), 10).expect("insert");
    let newer = s.attach(outbox(), Bytes::new()).expect("attached");
    let entry = register(&fanout, &old_out, "b", &spec(), Start::Live);
    assert_eq!(fanout.len(), 1);
    assert_eq!(s.set_entry(&new, "b", entry, 3), Err(SubError::NotAttached));
    assert_eq!(fanout.len(), 0, "nothing stays registered against a stale connection");
    // The current holder registers the subscription from its record.
    let out = outbox();
    let caught = s
        .register_all(&newer, |sub, spec, acked, _| register(&fanout, &out, sub, spec, Start::CatchUp(acked)))
        .expect("holder");
    assert_eq!(caught.len(), 1);
    assert!(Arc::ptr_eq(&caught[0].outbox, &out));
    assert_eq!(held.load(Ordering::SeqCst), 1);
    for m in [s.pause(&new, "b"), s.ack(&new, "b", 9), s.remove_sub(&new, "b")] {
        assert_eq!(m, Err(SubError::NotAttached));
    }
    assert!(!s.detach(&new) && !t.end(&s, &new), "a stale attachment neither detaches nor ends");
    assert!(t.end(&s, &newer));
    assert_eq!(held.load(Ordering::SeqCst), 0, "ending releases the lease");
    assert_eq!(fanout.len(), 0);
}

/// Defect: a restored session's subscriptions had no leases, so the dynamic
/// binding they needed was never released. Now restore takes them again.
#[test]
fn restored_subscriptions_hold_leases_and_release_them() {
    let (t, _) = table(Duration::from_secs(60));
    let held = Arc::new(AtomicUsize::new(0));
    let (s, att, secret) = create(&t, Some("u".into()), outbox());
    s.insert_sub(&att, "a", new_sub(4, take(&held)), 10).expect("insert");
    s.insert_sub(&att, "b", new_sub(2, take(&held)), 10).expect("insert");
    let stored = s.stored();
    assert!(t.end(&s, &att));
    assert_eq!(held.load(Ordering::SeqCst), 0);

    // A new process loads the stored session.
    let (t, _) = table(Duration::from_secs(60));
    let restored = t.restore(vec![stored], |_| Ok(take(&held)));
    assert_eq!(restored.sessions, 1);
    assert_eq!(held.load(Ordering::SeqCst), 2, "each restored subscription holds its binding again");
    let s = t.find(&s.stored().id, &secret, Some("u")).expect("resumable");
    assert_eq!(s.acked("a"), Some(4));
    let att = s.attach(outbox(), Bytes::new()).expect("attached");
    s.remove_sub(&att, "a").expect("unsubscribe");
    assert_eq!(held.load(Ordering::SeqCst), 1, "unsubscribing releases its binding");
    assert!(s.detach(&att));
    drop(t.expire_due());
    assert_eq!(held.load(Ordering::SeqCst), 1, "not expired yet");
    drop(t);
    drop(s);
    assert_eq!(held.load(Ordering::SeqCst), 0);
}

#[test]
fn a_refused_lease_is_retried_at_resume_and_the_subscription_dropped_if_still_refused() {
    let (t, _) = table(Duration::from_secs(60));
    let (s, att, secret) = create(&t, None, outbox());
    s.insert_sub(&att, "a", new_sub(0, vec![]), 10).expect("insert");
    let stored = s.stored();
    let (t, _) = table(Duration::from_secs(60));
    let r = t.restore(vec![stored.clone()], |_| Err("cap reached".into()));
    assert_eq!(r.unleased_subs, 1);
    let s = t.find(&stored.id, &secret, None).expect("found");
    let att = s.attach(outbox(), Bytes::new()).expect("attached");
    let refused = s.retake_leases(&att, |_| Err("still full".into())).expect("holder");
    assert_eq!(refused, vec![("a".to_string(), "still full".to_string())]);
    assert_eq!(s.sub_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn detached_sessions_expire_after_the_ttl_and_resumed_ones_do_not() {
    let (t, _) = table(Duration::from_secs(120));
    let held = Arc::new(AtomicUsize::new(0));
    let (s, att, secret) = create(&t, None, outbox());
    s.insert_sub(&att, "a", new_sub(0, take(&held)), 10).expect("insert");
    assert_eq!(t.next_expiry(), None, "attached sessions never expire");
    assert!(s.detach(&att));
    assert_eq!(t.next_expiry(), Some(Duration::from_secs(120)));
    tokio::time::advance(Duration::from_secs(100)).await;
    let att = s.attach(outbox(), Bytes::new()).expect("attached");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(t.expire_due().is_empty(), "resumed: the old deadline is stale");
    assert!(s.detach(&att));
    tokio::time::advance(Duration::from_secs(119)).await;
    assert!(t.expire_due().is_empty());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(t.find(s.id(), "any", None).err(), Some(ResumeError::Mismatch), "credentials are checked first");
    assert!(matches!(t.find(s.id(), &secret, None), Err(ResumeError::NotFound)), "past the TTL before the sweep");
    assert_eq!(t.expire_due().len(), 1);
    assert!(t.is_empty());
    drop(s);
    assert_eq!(held.load(Ordering::SeqCst), 0, "expiry releases the leases");
}

#[tokio::test(start_paused = true)]
async fn a_ttl_runs_across_a_restart() {
    let (t, _) = table(Duration::from_secs(120));
    let (s, att, _) = create(&t, None, outbox());
    s.insert_sub(&att, "a", new_sub(0, vec![]), 10).expect("insert");
    assert!(s.detach(&att));
    tokio::time::advance(Duration::from_secs(100)).await;
    let stored = s.stored(); // the process dies here
    let clock = t.clock();

    let t2 = restarted(Duration::from_secs(120), &clock);
    assert_eq!(t2.restore(vec![stored.clone()], |_| Ok(vec![])).sessions, 1);
    let left = t2.next_expiry().expect("detached");
    assert!(left <= Duration::from_secs(20) && left >= Duration::from_secs(19), "{left:?} left of 120 s");

    // Attached at the crash: a whole TTL from the restart.
    let mut attached = stored.clone();
    attached.id = "other".into();
    attached.detached_at_ms = None;
    let t3 = restarted(Duration::from_secs(120), &clock);
    t3.restore(vec![attached], |_| Ok(vec![]));
    assert_eq!(t3.next_expiry(), Some(Duration::from_secs(120)));

    // Detached longer ago than the TTL: reported for deletion, not restored.
    tokio::time::advance(Duration::from_secs(30)).await;
    let t4 = restarted(Duration::from_secs(120), &clock);
    let r = t4.restore(vec![stored], |_| Ok(vec![]));
    assert_eq!((r.sessions, r.expired.len()), (0, 1));
}

#[test]
fn acks_are_collected_once_per_session_until_they_change_again() {
    let (t, _) = table(Duration::from_secs(60));
    let (s, att, _) = create(&t, None, outbox());
    s.insert_sub(&att, "a", new_sub(0, vec![]), 10).expect("insert");
    s.insert_sub(&att, "b", new_sub(0, vec![]), 10).expect("insert");
    s.ack(&att, "a", 5).expect("ack");
    s.ack(&att, "b", 7).expect("ack");
    s.ack(&att, "a", 3).expect("a lower ack is a no-op");
    s.ack(&att, "b", u64::MAX).expect("an ack past the head is clamped to it");
    assert_eq!(s.acked("b"), Some(1000));
    s.ack(&att, "b", 7).expect("lower again: a no-op");
    assert_eq!(s.ack(&att, "zz", 1), Err(SubError::NotFound));
    let ops = t.take_dirty_acks();
    let want = BTreeMap::from([("a".to_string(), 5), ("b".to_string(), 1000)]);
    assert_eq!(ops, vec![StoreOp::Acks { id: s.id().to_string(), acks: want }]);
    assert!(t.take_dirty_acks().is_empty());
    s.ack(&att, "a", 6).expect("ack");
    assert_eq!(t.take_dirty_acks().len(), 1);
}

#[test]
fn limits_and_conflicts_on_insert() {
    let (t, _) = table(Duration::from_secs(60));
    let (s, att, _) = create(&t, None, outbox());
    s.insert_sub(&att, "a", new_sub(0, vec![]), 1).expect("insert");
    assert_eq!(s.check_new_sub(&att, "a", 1, 5), Err(SubError::Exists));
    assert_eq!(s.check_new_sub(&att, "b", 1, 1), Err(SubError::TooMany(1)));
    assert_eq!(s.insert_sub(&att, "b", new_sub(0, vec![]), 1), Err(SubError::TooMany(1)));
}

fn budget_table(budgets: Budgets) -> SessionTable {
    let budgets = Budgets { anonymous_factor: budgets.anonymous_factor.max(1), ..budgets };
    SessionTable::with_budgets(Duration::from_secs(60), Arc::new(FanOut::new(0)), Clock::new(), budgets)
}

fn sub_with(bindings: usize) -> NewSub {
    let b: Vec<Binding> = (0..bindings).map(|i| Binding { exchange: "x".into(), pattern: format!("p{i}.#") }).collect();
    NewSub { spec: Arc::new(compile(&b, &[]).expect("compiles")), filters: vec![], acked: 0, leases: Vec::new() }
}

#[test]
fn subscriptions_and_bindings_are_budgeted_per_owner_across_sessions() {
    let t = budget_table(Budgets { subscriptions_per_owner: 3, bindings_per_owner: 10, ..Budgets::default() });
    let (a, att_a, _) = create(&t, Some("u".into()), outbox());
    let (b, att_b, _) = create(&t, Some("u".into()), outbox());
    let (c, att_c, _) = create(&t, Some("other".into()), outbox());
    a.insert_sub(&att_a, "1", sub_with(4), 100).expect("first");
    b.insert_sub(&att_b, "1", sub_with(4), 100).expect("second, other session");
    assert_eq!(b.insert_sub(&att_b, "2", sub_with(4), 100), Err(SubError::OwnerBindings(10)));
    assert_eq!(b.check_new_sub(&att_b, "2", 3, 100), Err(SubError::OwnerBindings(10)));
    b.insert_sub(&att_b, "2", sub_with(2), 100).expect("fits exactly");
    assert_eq!(t.owner_usage("u:u"), (2, 3, 10));
    assert_eq!(a.insert_sub(&att_a, "3", sub_with(0), 100), Err(SubError::OwnerSubscriptions(3)));
    c.insert_sub(&att_c, "1", sub_with(4), 100).expect("another user has its own budget");
    // Giving back: unsubscribe and orderly end return the charge.
    b.remove_sub(&att_b, "2").expect("removed");
    assert_eq!(t.owner_usage("u:u"), (2, 2, 8));
    assert!(t.end(&a, &att_a));
    assert_eq!(t.owner_usage("u:u"), (1, 1, 4));
    assert!(t.end(&b, &att_b));
    assert_eq!(t.owner_usage("u:u"), (0, 0, 0));
    assert!(t.subscription_bytes() > 0, "the other user's subscription");
}

#[tokio::test]
async fn expiry_gives_the_budget_back() {
    tokio::time::pause();
    let t = budget_table(Budgets { subscriptions_per_owner: 1, ..Budgets::default() });
    let (a, att, _) = create(&t, Some("u".into()), outbox());
    a.insert_sub(&att, "1", sub_with(3), 100).expect("sub");
    assert!(a.detach(&att));
    assert_eq!(t.owner_usage("u:u"), (1, 1, 3));
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(t.expire_due().len(), 1);
    assert_eq!(t.owner_usage("u:u"), (0, 0, 0));
    assert_eq!(t.subscription_bytes(), 0);
}

#[test]
fn node_bytes_are_budgeted() {
    let one = text_bytes(&sub_with(2).spec, &[]);
    let t = budget_table(Budgets { subscription_bytes: one * 2, ..Budgets::default() });
    let (a, att, _) = create(&t, None, outbox());
    a.insert_sub(&att, "1", sub_with(2), 100).expect("1");
    a.insert_sub(&att, "2", sub_with(2), 100).expect("2");
    assert_eq!(a.insert_sub(&att, "3", sub_with(2), 100), Err(SubError::NodeBytes(one * 2)));
    a.remove_sub(&att, "1").expect("removed");
    assert_eq!(t.subscription_bytes(), one);
    a.insert_sub(&att, "3", sub_with(2), 100).expect("room again");
}

#[tokio::test]
async fn a_new_session_past_the_budget_ends_the_longest_detached_one() {
    tokio::time::pause();
    let t = budget_table(Budgets { sessions_per_owner: 2, ..Budgets::default() });
    let (first, att1, secret1) = create(&t, Some("u".into()), outbox());
    first.insert_sub(&att1, "s", sub_with(1), 10).expect("sub");
    assert!(first.detach(&att1));
    tokio::time::advance(Duration::from_secs(1)).await;
    let (second, att2, _) = create(&t, Some("u".into()), outbox());
    assert!(second.detach(&att2));
    let (_third, _att3, _) = create(&t, Some("u".into()), outbox());
    assert_eq!(t.find(first.id(), &secret1, Some("u")).err(), Some(ResumeError::NotFound), "evicted");
    assert_eq!(t.owner_usage("u:u"), (2, 0, 0), "its subscription was given back");
    let gone = t.expire_due();
    assert_eq!(gone.len(), 1, "handed out for the store to delete");
    assert_eq!(gone[0].id(), first.id());
    // The second (detached) goes next; with both left attached, a new session is refused.
    let (_fourth, _att4, _) = create(&t, Some("u".into()), outbox());
    assert_eq!(t.owner_usage("u:u").0, 2);
    let refused = t.create(Some("u".into()), owner_key(Some("u"), None), outbox()).err();
    assert_eq!(refused, Some(CreateError::TooManySessions(2)));
}

#[tokio::test]
async fn a_session_that_ended_after_it_was_found_is_not_attached() {
    tokio::time::pause();
    let (t, _) = table(Duration::from_secs(10));
    let (s, att, secret) = create(&t, None, outbox());
    assert!(s.detach(&att));
    let found = t.find(s.id(), &secret, None).expect("found");
    // It expires between the lookup and the attach.
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(t.expire_due().len(), 1);
    assert!(found.attach(outbox(), Bytes::new()).is_none(), "an expired session stays gone");
}

#[test]
fn a_failed_store_write_is_retried_whole_with_the_next_flush() {
    let (t, _) = table(Duration::from_secs(10));
    let (s, att, _) = create(&t, None, outbox());
    s.insert_sub(&att, "a", new_sub(0, Vec::new()), 10).expect("sub");
    assert!(t.take_dirty_acks().is_empty());
    t.mark_unsaved([s.id().to_string()]);
    let ops = t.take_dirty_acks();
    assert!(matches!(ops.as_slice(), [StoreOp::Put(p)] if p.subs.contains_key("a")), "{ops:?}");
    assert!(t.take_dirty_acks().is_empty(), "once");
}

#[test]
fn anonymous_clients_of_one_address_get_scaled_budgets() {
    let t = budget_table(Budgets { sessions_per_owner: 1, anonymous_factor: 3, ..Budgets::default() });
    let anon = || owner_key(None, Some("10.0.0.1".parse().expect("ip")));
    for _ in 0..3 {
        t.create(None, anon(), outbox()).expect("three anonymous sessions behind one address");
    }
    assert_eq!(t.create(None, anon(), outbox()).err(), Some(CreateError::TooManySessions(3)));
    t.create(Some("u".into()), owner_key(Some("u"), None), outbox()).expect("a user's first");
    let refused = t.create(Some("u".into()), owner_key(Some("u"), None), outbox()).err();
    assert_eq!(refused, Some(CreateError::TooManySessions(1)), "users are not scaled");
}
