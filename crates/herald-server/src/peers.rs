//! Running the configured peers (connectors) and relaying their health.

use herald_connectors::amqp::AmqpSource;
use herald_connectors::postgres::PostgresSource;
use herald_connectors::sqs::SqsRendezvous;
use herald_connectors::{BoxFuture, Connector, Control, DynamicBindings, Host, PeerConfig, PeerKind, PeerStats};
use herald_core::FanOut;
use herald_core::{Frame, Leases, NewEvent};
use herald_log::EventLog;
use herald_protocol::{encode, ServerMessage, StatusState};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

/// What the gateway knows of one running peer.
#[derive(Debug)]
pub(crate) struct PeerRuntime {
    pub(crate) kind: &'static str,
    pub(crate) stats: Arc<PeerStats>,
    /// Exchanges the peer feeds (its subscribers get its `status`).
    pub(crate) exchanges: Vec<String>,
    /// Last state: up, and why not.
    pub(crate) health: Mutex<(bool, String)>,
    /// Bindings clients may add on demand.
    pub(crate) dynamic: Option<Arc<DynamicBindings>>,
    /// A PostgreSQL source's settings (to start it again on a new term as leader).
    pub(crate) postgres: Option<herald_connectors::postgres::PostgresConfig>,
    /// Run, pause or drain.
    pub(crate) control: watch::Sender<Control>,
    /// What this node does with it: `running`, or in a cluster for a peer
    /// that runs on one node at a time, `leader` or `standby`.
    pub(crate) role: Mutex<&'static str>,
}

impl PeerRuntime {
    /// Whether the peer runs on one node of a cluster at a time (it reads
    /// one position upstream: a PostgreSQL table).
    pub(crate) fn single_leader(&self) -> bool {
        self.kind == "postgres"
    }
}

/// Take dynamic upstream bindings for a subscription's bindings that no
/// peer feeds statically but some peer may bind on demand. Returns the
/// leases (each released when dropped), or why not (every lease taken so
/// far is given back).
pub(crate) fn lease(peers: &Peers, bindings: &[herald_protocol::Binding]) -> Result<Leases, String> {
    let mut leases: Leases = Vec::new();
    for b in bindings {
        if peers.values().any(|rt| rt.exchanges.contains(&b.exchange)) {
            continue;
        }
        let Some((id, dynamic)) =
            peers.iter().find_map(|(id, rt)| rt.dynamic.as_ref().filter(|d| d.allows(&b.exchange)).map(|d| (id, d)))
        else {
            continue;
        };
        match dynamic.lease(&b.exchange, &b.pattern) {
            Ok(lease) => leases.push(Box::new(lease)),
            Err(e) => return Err(format!("peer {id}: {e}")),
        }
    }
    Ok(leases)
}

/// Peers by id.
pub(crate) type Peers = BTreeMap<String, Arc<PeerRuntime>>;

/// Check every `[[peer]]` table (each already parsed for its type);
/// returns all problems.
pub(crate) fn validate(peers: &[PeerConfig]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, p) in peers.iter().enumerate() {
        let at = format!("peer #{i} ({})", p.id);
        if p.id.is_empty() || !seen.insert(p.id.clone()) {
            problems.push(format!("{at}: id must be non-empty and unique"));
        }
        problems.extend(p.kind.validate().into_iter().map(|e| format!("{at}: config.{e}")));
    }
    problems
}

/// Build the connectors (configuration already validated).
pub(crate) fn build(
    peers: &[PeerConfig],
    broker: &Arc<herald_core::Broker>,
) -> Vec<(String, Box<dyn Connector>, Arc<PeerRuntime>)> {
    let mut out = Vec::new();
    for p in peers {
        let stats = Arc::new(PeerStats::default());
        let (connector, exchanges, dynamic): (Box<dyn Connector>, Vec<String>, _) = match &p.kind {
            PeerKind::Amqp(cfg) => {
                let exchanges = cfg.bindings.iter().map(|b| b.exchange.clone()).collect();
                let source = AmqpSource::new(p.id.clone(), cfg.clone(), p.codec, p.interceptors.clone(), stats.clone());
                let dynamic = Some(source.dynamic());
                (Box::new(source), exchanges, dynamic)
            }
            PeerKind::Postgres(cfg) => {
                let exchanges = vec![cfg.exchange.clone()];
                (Box::new(PostgresSource::new(p.id.clone(), cfg.clone(), stats.clone())), exchanges, None)
            }
            PeerKind::Sqs(cfg) => {
                let peer = SqsRendezvous::new(p.id.clone(), cfg.clone(), p.codec, broker.clone(), stats.clone());
                (Box::new(peer), Vec::new(), None)
            }
        };
        let rt = PeerRuntime {
            kind: p.kind.name(),
            stats,
            exchanges,
            health: Mutex::new((false, "starting".into())),
            dynamic,
            postgres: match &p.kind {
                PeerKind::Postgres(cfg) => Some(cfg.clone()),
                _ => None,
            },
            control: watch::channel(Control::Run).0,
            role: Mutex::new("running"),
        };
        out.push((p.id.clone(), connector, Arc::new(rt)));
    }
    out
}

/// The gateway as seen by connectors: the log they append to, and the
/// fan-out and peer table their `status` goes through.
pub(crate) struct GatewayHost {
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) fanout: Arc<FanOut>,
    pub(crate) peers: Arc<Peers>,
    /// Shared with the other publish paths.
    pub(crate) idempotency: Arc<herald_core::IdempotencyWindow>,
    /// In a cluster: this node's name, said in `status` messages.
    pub(crate) node: Option<String>,
    /// In a cluster: tells the other nodes of a peer's change of state.
    pub(crate) relay: std::sync::OnceLock<StatusRelay>,
}

/// Passes a peer's change of state (peer, up, detail, exchanges) to the other nodes.
pub(crate) type StatusRelay = Box<dyn Fn(&str, bool, &str, &[String]) + Send + Sync>;

impl GatewayHost {
    /// Send `status` to this node's subscribers of `exchanges`.
    pub(crate) fn deliver_status(&self, peer: &str, up: bool, detail: &str, node: Option<&str>, exchanges: &[String]) {
        let msg = ServerMessage::Status {
            source: peer.to_string(),
            state: if up { StatusState::Up } else { StatusState::Down },
            detail: detail.to_string(),
            node: node.map(str::to_string),
        };
        let frame: bytes::Bytes = encode(&msg).into();
        for outbox in self.fanout.outboxes_for(exchanges) {
            let _ = outbox.push(Frame::Text(frame.clone()));
        }
    }
}

impl Host for GatewayHost {
    fn append(&self, events: Vec<NewEvent>) -> BoxFuture<'_, anyhow::Result<Vec<u64>>> {
        Box::pin(async move { Ok(crate::publishing::append(&*self.log, &self.idempotency, events).await?) })
    }

    fn last_origin_seq<'a>(
        &'a self,
        peer: &'a str,
        exchanges: &'a [String],
    ) -> BoxFuture<'a, anyhow::Result<Option<u64>>> {
        Box::pin(async move {
            let log = &self.log;
            let mut before = log.bounds().head;
            while before > 0 {
                let query = herald_log::ReadQuery {
                    exchanges: Some(exchanges.to_vec()),
                    after: 0,
                    upto: before,
                    limit: 1000,
                    newest_first: true,
                    max_bytes: usize::MAX,
                };
                let events = log.read(query).await?;
                let Some(oldest) = events.last() else { break };
                before = oldest.id - 1;
                if let Some(o) = events.iter().filter_map(|e| e.origin.as_ref()).find(|o| o.peer == peer) {
                    return Ok(Some(o.seq));
                }
            }
            Ok(None)
        })
    }

    fn status(&self, peer: &str, up: bool, detail: &str) {
        let Some(rt) = self.peers.get(peer) else { return };
        *rt.health.lock() = (up, detail.to_string());
        self.deliver_status(peer, up, detail, self.node.as_deref(), &rt.exchanges);
        if let Some(relay) = self.relay.get() {
            relay(peer, up, detail, &rt.exchanges);
        }
    }
}

/// Start every peer; they drain when the gateway starts draining. In a
/// cluster, a peer that runs on one node at a time runs only while this
/// node holds its lease.
pub(crate) fn start(
    host: Arc<GatewayHost>,
    connectors: Vec<(String, Box<dyn Connector>)>,
    mut draining: watch::Receiver<bool>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
) {
    let peers = host.peers.clone();
    let host: Arc<dyn Host> = host;
    for (id, connector) in connectors {
        let Some(rt) = peers.get(&id) else { continue };
        match &cluster {
            Some(c) if rt.single_leader() => {
                tokio::spawn(lead_and_run(c.clone(), id, connector, host.clone(), rt.clone(), draining.clone()));
            }
            _ => {
                let control = rt.control.subscribe();
                tokio::spawn(herald_connectors::supervise(id, connector, host.clone(), rt.stats.clone(), control));
            }
        }
    }
    tokio::spawn(async move {
        let _ = draining.wait_for(|d| *d).await;
        for rt in peers.values() {
            let _ = rt.control.send(Control::Drain);
        }
    });
}

/// Pause or resume a peer (an operator's action); subscribers it feeds are told.
pub(crate) fn set_paused(host: &GatewayHost, id: &str, paused: bool) -> bool {
    let Some(rt) = host.peers.get(id) else { return false };
    let next = if paused { Control::Pause } else { Control::Run };
    if *rt.control.borrow() == Control::Drain {
        return true;
    }
    let _ = rt.control.send(next);
    let (up, _) = rt.health.lock().clone();
    if paused {
        host.status(id, false, "paused by an operator; events are held upstream");
    } else if up {
        host.status(id, true, "resumed");
    }
    true
}

/// Run a single-leader peer whenever this node holds its lease: standby
/// until then; when the lease is lost, drain the connector and wait again.
/// Each term starts with a fresh connector, which reads its position from
/// the log (where the previous leader left it).
async fn lead_and_run(
    cluster: Arc<crate::cluster::Cluster>,
    id: String,
    first: Box<dyn Connector>,
    host: Arc<dyn Host>,
    rt: Arc<PeerRuntime>,
    mut draining: watch::Receiver<bool>,
) {
    use crate::cluster::lease::Leadership;
    let (role_tx, mut role) = watch::channel(Leadership::Unknown);
    // Set once this node no longer runs the peer (its source stopped, at
    // shutdown): only then is the lease given up, so that no standby starts
    // while this source still finishes its batch.
    let (stop, stopped) = watch::channel(false);
    let lease = tokio::spawn(crate::cluster::lease::run(cluster, id.clone(), role_tx, stopped));
    let mut next = Some(first);
    loop {
        *rt.role.lock() = "standby";
        let who = match &*role.borrow() {
            Leadership::Standby(n) if !n.is_empty() => format!("node {n}"),
            _ => "another node".to_string(),
        };
        *rt.health.lock() = (true, format!("standby: {who} runs this peer"));
        let leads = tokio::select! {
            r = role.wait_for(|r| *r == Leadership::Leader) => r.is_ok(),
            _ = draining.wait_for(|d| *d) => false,
        };
        if !leads || *rt.control.borrow() == Control::Drain {
            break;
        }
        *rt.role.lock() = "leader";
        let connector = match next.take() {
            Some(c) => c,
            None => match rebuild(&id, &rt) {
                Some(c) => c,
                None => break,
            },
        };
        let (tx, rx) = watch::channel(*rt.control.borrow());
        let mut outer = rt.control.subscribe();
        let run = herald_connectors::supervise(id.clone(), connector, host.clone(), rt.stats.clone(), rx);
        tokio::pin!(run);
        // Once the lease is lost, the source drains whatever an operator
        // does meanwhile (a pause or resume must not undo the drain).
        let mut lost = false;
        loop {
            tokio::select! {
                _ = &mut run => break,
                changed = outer.changed() => {
                    let c = if changed.is_err() || lost { Control::Drain } else { *outer.borrow() };
                    let _ = tx.send(c);
                }
                changed = role.changed(), if !lost => {
                    if changed.is_err() || *role.borrow() != Leadership::Leader {
                        lost = true;
                        let _ = tx.send(Control::Drain);
                    }
                }
            }
        }
        if *rt.control.borrow() == Control::Drain {
            break;
        }
    }
    let _ = stop.send(true);
    let _ = lease.await;
}

/// A fresh connector for a new term of a single-leader peer.
fn rebuild(id: &str, rt: &Arc<PeerRuntime>) -> Option<Box<dyn Connector>> {
    let config = rt.postgres.as_ref()?;
    Some(Box::new(PostgresSource::new(id.to_string(), config.clone(), rt.stats.clone())))
}
