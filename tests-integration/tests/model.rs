//! A `stateright` model of the replication protocol: every interleaving of
//! a few replicas' mutations, timer firings and deliveries, with a network
//! that reorders and loses up to `k` messages, and at most one crash,
//! checked exhaustively over real [`Node`]s.
//!
//! Only `always` properties: heartbeat timers make the state graph cyclic,
//! and stateright's `eventually` passes vacuously on a cycle. Convergence is
//! stated at quiet states instead:
//!
//! 1. No replica lists a presence once its context covers that presence's
//!    untrack.
//! 2. With at most `k` losses and `k + 2` timer firings per replica: nothing
//!    in flight and timers exhausted ⇒ any two live replicas that consider
//!    the same replicas up (themselves included) list exactly the same
//!    presences. The firings count from the last mutation or crash: every
//!    live replica gets `k + 2` again then, else a change made after the
//!    last firing would never be sent.
//!
//! The world: one clock that moves only when a timer fires; timers fire in
//! time order. The network holds a packet less than one broadcast period
//! (no timer fires past a packet's deadline), delivers packets in any order
//! and loses up to `k` of them. A crashed host loses its memory; what it
//! sent stays on the wire, what was sent to it is dropped, and each live
//! peer's transport reports the link lost, in any order.
//!
//! Property 2 needs that bound on delays. With packets held up to two
//! periods, a replica's first heartbeat can arrive after its first interval,
//! which is dropped (its sender is not known yet), and a lost catch-up
//! answer is retried only after `catchup_timeout` (two periods): `k + 2`
//! firings are not enough
//! (`reordering_past_a_period_needs_more_than_k_plus_2_firings`).
//!
//! A node's state enters a model state through a fingerprint (see
//! [`print`]) that misses some private fields, so two nodes that differ
//! only there count as one state: the checker explores the first one
//! reached. This prunes exploration but never reports a false
//! counterexample.
//!
//! CI runs the default checks (`cargo test --release`), breadth first on
//! one thread each so that every run walks the same states. On the
//! development machine (2 cores, busy), the runs side by side:
//!
//! - two replicas, two mutations each (an untrack on one side, an update on
//!   the other), `k = 1`: 689,248 states in 45 s;
//! - three replicas from a warm start (all up), links in order, `k = 0`; one
//!   replica tracks, untracks and may crash, another tracks: 1,074,149
//!   states in 87 s.
//!
//! ```text
//! cargo test --release --test model -- --nocapture
//! ```
//!
//! The deep run, by hand, depth first on every core (see `deep` for what it
//! covers), minutes on the development machine, too long for CI:
//!
//! ```text
//! ATTENDANCE_MODEL_DEEP=1 cargo test --release --test model deep -- --nocapture
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use attendance::protocol::{Config, Destination, MessageKind, Node, ReplicaStatus};
use attendance::{Incarnation, PresenceId, ReplicaId, ReplicaName, State};
use stateright::report::{ReportData, ReportDiscovery, Reporter};
use stateright::{Checker, Model, Path, Property};

#[path = "model/explore.rs"]
mod explore;
#[path = "model/invariants.rs"]
mod invariants;
#[path = "sim/rows.rs"]
mod rows;
use explore::*;
use invariants::*;
use rows::rows;

/// The meta of modelled presences.
type M = u8;

/// One presence as lists show it: topic, key, id, meta.
type Row = rows::Row<M>;

/// Every presence lives on one topic: what matters is which are listed.
const TOPIC: &str = "room";

const NO_UNTRACKED: &str = "no replica lists a presence its context knows untracked";
const QUIET_CONVERGE: &str = "quiet replicas that agree on who is up list the same";

/// One step of a replica's script of mutations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Tracks a presence under `key`.
    Track { key: &'static str, meta: M },
    /// Untracks the replica's `nth` tracked presence.
    Untrack { nth: usize },
    /// Changes the meta of the replica's `nth` tracked presence.
    Update { nth: usize, meta: M },
}

/// Even replicas run a prefix of the first script, odd ones of the
/// second: two steps already give an untrack on one side and an update on
/// the other.
const SCRIPTS: [[Step; 4]; 2] = [
    [
        Step::Track { key: "a", meta: 1 },
        Step::Untrack { nth: 0 },
        Step::Track { key: "b", meta: 2 },
        Step::Update { nth: 1, meta: 3 },
    ],
    [
        Step::Track { key: "a", meta: 4 },
        Step::Update { nth: 0, meta: 5 },
        Step::Untrack { nth: 0 },
        Step::Track { key: "c", meta: 6 },
    ],
];

/// Something on the wire, or a loss report a transport would make.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Packet {
    Message {
        sent: Duration,
        from: usize,
        to: usize,
        kind: MessageKind,
        bytes: Arc<[u8]>,
    },
    /// The transport at `at` reports its link to `peer` lost (after
    /// `peer` crashed). It is never lost itself.
    LinkLost {
        sent: Duration,
        at: usize,
        peer: usize,
    },
}

impl Packet {
    /// The sender and receiver, or the reporting host and the lost peer.
    fn link(&self) -> (bool, usize, usize) {
        match self {
            Packet::Message { from, to, .. } => (true, *from, *to),
            Packet::LinkLost { at, peer, .. } => (false, *at, *peer),
        }
    }

    fn sent(&self) -> Duration {
        match self {
            Packet::Message { sent, .. } | Packet::LinkLost { sent, .. } => *sent,
        }
    }
}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Packet::Message {
                sent,
                from,
                to,
                kind,
                bytes,
            } => write!(f, "r{from}->r{to} {kind:?} of {sent:?} ({} B)", bytes.len()),
            Packet::LinkLost { sent, at, peer } => {
                write!(f, "r{at} hears link to r{peer} lost ({sent:?})")
            }
        }
    }
}

/// One replica's host: its node while running, and the model's
/// bookkeeping.
#[derive(Clone)]
struct Slot {
    id: ReplicaId,
    /// Shared between states until an input changes it.
    node: Option<Arc<Node<M>>>,
    /// What identifies the node's state (see [`print`]); empty once
    /// crashed.
    print: Arc<[u8]>,
    /// Script steps done.
    done: usize,
    /// Its own presences, in the order tracked.
    own: Vec<PresenceId>,
    /// Timer firings left before this replica's timers count as exhausted.
    fires_left: u8,
}

impl Slot {
    /// What two slots must share to be the same state. The node enters
    /// through its fingerprint only.
    fn key(&self) -> (&ReplicaId, bool, &[u8], usize, &[PresenceId], u8) {
        (
            &self.id,
            self.node.is_some(),
            &self.print,
            self.done,
            &self.own,
            self.fires_left,
        )
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Slot {}

impl Hash for Slot {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

/// A state of the whole system.
#[derive(Clone, PartialEq, Eq, Hash)]
struct World {
    /// The one clock: it moves only when a timer fires.
    now: Duration,
    slots: Vec<Slot>,
    /// In flight, in a canonical order (see [`Protocol::canonical`]) so
    /// that the same packets make the same state.
    net: Vec<Packet>,
    losses_left: u8,
    crashes_left: u8,
    /// Every presence untracked, with the owner's counter of the untrack.
    untracked: Vec<(PresenceId, u64)>,
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "at {:?}, {} losses and {} crashes left",
            self.now, self.losses_left, self.crashes_left
        )?;
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(node) = &slot.node else {
                writeln!(f, "  r{i} {:?}: crashed", slot.id)?;
                continue;
            };
            let statuses: Vec<String> = node
                .replicas()
                .map(|(id, s)| format!("{id:?}: {s:?}"))
                .collect();
            let listed: Vec<String> = rows(node.state())
                .into_iter()
                .map(|(_, key, id, meta)| format!("{key}/{id:?}={meta}"))
                .collect();
            writeln!(
                f,
                "  r{i} {:?}: counter {}, {} firings left, next timer {:?}, sees {statuses:?}, lists {listed:?}",
                slot.id,
                node.state().counter(),
                slot.fires_left,
                node.poll_timeout(),
            )?;
        }
        writeln!(f, "  in flight: {:?}", self.net)?;
        write!(f, "  untracked: {:?}", self.untracked)
    }
}

/// What may happen next. Packets are named as well as indexed so that a
/// counterexample reads as a story.
#[derive(Clone, Debug, PartialEq)]
enum Action {
    Deliver(usize, Packet),
    Lose(usize, Packet),
    Timer { replica: usize },
    Mutate { replica: usize, step: Step },
    Crash { replica: usize },
}

/// How often a property's premise held, so a run cannot pass vacuously.
#[derive(Default)]
struct Coverage {
    /// Quiet states' pairs of live replicas agreeing on who is up.
    quiet_pairs: AtomicU64,
    /// Replicas checked whose context covers another replica's untrack.
    untracks_known: AtomicU64,
}

/// What one run explores.
#[derive(Clone, Debug)]
struct Setup {
    /// Script steps each replica performs; its length is the number of
    /// replicas.
    mutations: Vec<usize>,
    /// `k`: messages the network may lose in all.
    losses: u8,
    /// Timer firings each live replica has after the last mutation or
    /// crash (the claim: `k + 2`).
    firings: u8,
    /// Which replica may crash (`Some(None)`: any), if one may.
    crash: Option<Option<usize>>,
    /// A packet is handled before this many broadcast periods pass.
    max_delay_periods: u32,
    /// Each link delivers in the order sent (a loss may still strike any
    /// packet); otherwise any packet in flight may arrive next.
    fifo: bool,
    /// Start after one round of heartbeats delivered in order, every
    /// replica showing every other, rather than before anyone spoke.
    warm: bool,
}

impl Setup {
    fn new(mutations: &[usize], losses: u8) -> Self {
        Setup {
            mutations: mutations.to_vec(),
            losses,
            firings: losses + 2,
            crash: None,
            max_delay_periods: 1,
            fifo: false,
            warm: false,
        }
    }
}

/// The model over a [`Setup`].
struct Protocol {
    setup: Setup,
    config: Config,
    coverage: Arc<Coverage>,
}

impl Protocol {
    fn new(setup: Setup) -> Self {
        Protocol {
            setup,
            config: Config::with_broadcast_period(Duration::from_millis(100)),
            coverage: Arc::default(),
        }
    }

    fn max_delay(&self) -> Duration {
        self.config.broadcast_period * self.setup.max_delay_periods
    }

    /// Puts the packets in flight in a canonical order: as a sorted
    /// multiset, or per link in the order sent when links are FIFO.
    fn canonical(&self, net: &mut [Packet]) {
        if self.setup.fifo {
            net.sort_by_key(Packet::link);
        } else {
            net.sort();
        }
    }

    /// Grants every live replica its firings again: the convergence claim
    /// counts them from the last change.
    fn restart_firings(&self, w: &mut World) {
        for slot in &mut w.slots {
            if slot.node.is_some() {
                slot.fires_left = self.setup.firings;
            }
        }
    }

    /// After an input to `replica`: its messages go on the wire, its events
    /// are dropped (lists are read from the state) and its fingerprint is
    /// taken again.
    fn settle(&self, w: &mut World, replica: usize) {
        let now = w.now;
        let Some(node) = w.slots[replica].node.as_mut().map(Arc::make_mut) else {
            return;
        };
        let mut sent = Vec::new();
        while let Some(t) = node.poll_transmit() {
            sent.push(t);
        }
        while node.poll_event().is_some() {}
        w.slots[replica].print = print(node, now);
        for t in sent {
            let bytes: Arc<[u8]> = t.bytes.into();
            for to in 0..w.slots.len() {
                let addressed = match &t.destination {
                    Destination::All => to != replica,
                    Destination::Replica(id) => &w.slots[to].id == id,
                };
                // Nothing reaches a crashed host.
                if addressed && w.slots[to].node.is_some() {
                    w.net.push(Packet::Message {
                        sent: now,
                        from: replica,
                        to,
                        kind: t.kind,
                        bytes: bytes.clone(),
                    });
                }
            }
        }
        self.canonical(&mut w.net);
    }
}

impl Model for Protocol {
    type State = World;
    type Action = Action;

    fn init_states(&self) -> Vec<World> {
        let ids: Vec<ReplicaId> = (0..self.setup.mutations.len())
            .map(|i| {
                ReplicaId::new(
                    ReplicaName::new(&format!("r{i}")).expect("valid name"),
                    Incarnation::new(1_000, 7),
                )
            })
            .collect();
        let slots = ids
            .iter()
            .map(|id| {
                let mut node =
                    Node::new(State::new(id.clone()), self.config.clone()).expect("valid config");
                // Transports connect every pair before anything happens.
                for peer in &ids {
                    node.peer_connected(Duration::ZERO, peer.clone());
                }
                assert!(
                    node.poll_transmit().is_none(),
                    "nothing is sent before the first timer"
                );
                Slot {
                    id: id.clone(),
                    print: print(&node, Duration::ZERO),
                    node: Some(Arc::new(node)),
                    done: 0,
                    own: Vec::new(),
                    fires_left: self.setup.firings,
                }
            })
            .collect();
        let mut w = World {
            now: Duration::ZERO,
            slots,
            net: Vec::new(),
            losses_left: self.setup.losses,
            crashes_left: u8::from(self.setup.crash.is_some()),
            untracked: Vec::new(),
        };
        if self.setup.warm {
            for replica in 0..w.slots.len() {
                w = self
                    .next_state(&w, Action::Timer { replica })
                    .expect("a timer fires");
            }
            while let Some(p) = w.net.first().cloned() {
                w = self
                    .next_state(&w, Action::Deliver(0, p))
                    .expect("a packet arrives");
            }
            for slot in &w.slots {
                let node = slot.node.as_ref().expect("no crash yet");
                assert!(
                    node.replicas().all(|(_, s)| s == ReplicaStatus::Up),
                    "a warm start shows every replica"
                );
            }
            self.restart_firings(&mut w);
        }
        vec![w]
    }

    fn actions(&self, w: &World, actions: &mut Vec<Action>) {
        for (i, p) in w.net.iter().enumerate() {
            // Two equal packets lead to the same state: try one.
            if i > 0 && w.net[i - 1] == *p {
                continue;
            }
            let first_on_link = i == 0 || w.net[i - 1].link() != p.link();
            if !self.setup.fifo || first_on_link {
                actions.push(Action::Deliver(i, p.clone()));
            }
            if w.losses_left > 0 && matches!(p, Packet::Message { .. }) {
                actions.push(Action::Lose(i, p.clone()));
            }
        }
        // Timers fire in time order, never past a packet's deadline. A
        // replica whose firings are used up is left out so that it cannot
        // hold the others back.
        let due = |s: &Slot| match &s.node {
            Some(node) if s.fires_left > 0 => Some(node.poll_timeout()),
            _ => None,
        };
        let deadline = w.net.iter().map(|p| p.sent() + self.max_delay()).min();
        let first = w.slots.iter().filter_map(due).min();
        if let Some(first) = first.filter(|t| deadline.is_none_or(|d| w.now.max(*t) < d)) {
            for (replica, slot) in w.slots.iter().enumerate() {
                if due(slot) == Some(first) {
                    actions.push(Action::Timer { replica });
                }
            }
        }
        let live = w.slots.iter().filter(|s| s.node.is_some()).count();
        for (replica, slot) in w.slots.iter().enumerate() {
            if slot.node.is_none() {
                continue;
            }
            if slot.done < self.setup.mutations[replica] {
                actions.push(Action::Mutate {
                    replica,
                    step: SCRIPTS[replica % 2][slot.done],
                });
            }
            let victim = self
                .setup
                .crash
                .is_some_and(|v| v.is_none_or(|v| v == replica));
            if w.crashes_left > 0 && live > 1 && victim {
                actions.push(Action::Crash { replica });
            }
        }
    }

    fn next_state(&self, last: &World, action: Action) -> Option<World> {
        let mut w = last.clone();
        let now = w.now;
        match action {
            Action::Deliver(i, _) => match w.net.remove(i) {
                Packet::Message {
                    from, to, bytes, ..
                } => {
                    let sender = w.slots[from].id.clone();
                    if let Some(node) = w.slots[to].node.as_mut().map(Arc::make_mut) {
                        // A refusal is counted in the node's metrics, which
                        // its fingerprint includes.
                        let _ = node.handle_message(now, &sender, &bytes);
                    }
                    self.settle(&mut w, to);
                }
                Packet::LinkLost { at, peer, .. } => {
                    let peer = w.slots[peer].id.clone();
                    if let Some(node) = w.slots[at].node.as_mut().map(Arc::make_mut) {
                        node.link_lost(now, &peer);
                    }
                    self.settle(&mut w, at);
                }
            },
            Action::Lose(i, _) => {
                w.net.remove(i);
                w.losses_left -= 1;
            }
            Action::Timer { replica } => {
                let slot = &mut w.slots[replica];
                let node = slot
                    .node
                    .as_mut()
                    .map(Arc::make_mut)
                    .expect("only live replicas' timers fire");
                w.now = now.max(node.poll_timeout());
                node.handle_timeout(w.now);
                slot.fires_left -= 1;
                self.settle(&mut w, replica);
            }
            Action::Mutate { replica, step } => {
                let slot = &mut w.slots[replica];
                let node = slot
                    .node
                    .as_mut()
                    .map(Arc::make_mut)
                    .expect("only live replicas mutate");
                match step {
                    Step::Track { key, meta } => {
                        let id = node.track(TOPIC, key, meta).expect("within limits");
                        slot.own.push(id);
                    }
                    Step::Untrack { nth } => {
                        let id = slot.own[nth].clone();
                        node.untrack(&id).expect("an own presence");
                        w.untracked.push((id, node.state().counter()));
                        w.untracked.sort();
                    }
                    Step::Update { nth, meta } => {
                        node.update(&slot.own[nth], meta).expect("an own presence");
                    }
                }
                slot.done += 1;
                self.restart_firings(&mut w);
                self.settle(&mut w, replica);
            }
            Action::Crash { replica } => {
                // Its memory is lost; what it sent stays on the wire, what
                // was sent to it is dropped, and peers hear of the lost
                // links, in some order.
                w.slots[replica].node = None;
                w.slots[replica].print = Arc::from([]);
                w.crashes_left -= 1;
                w.net
                    .retain(|p| !matches!(p, Packet::Message { to, .. } if *to == replica));
                for at in 0..w.slots.len() {
                    if w.slots[at].node.is_some() {
                        w.net.push(Packet::LinkLost {
                            sent: now,
                            at,
                            peer: replica,
                        });
                    }
                }
                self.canonical(&mut w.net);
                self.restart_firings(&mut w);
            }
        }
        Some(w)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(NO_UNTRACKED, no_untracked_listed),
            Property::always(QUIET_CONVERGE, quiet_agreeing_replicas_converge),
        ]
    }
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "minutes without optimisations: use --release"
)]
fn two_replicas_converge_despite_a_loss_and_reordering() {
    let states = check(Setup::new(&[2, 2], 1), Search::Bfs);
    assert!(states > 100_000, "only {states} states explored");
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "minutes without optimisations: use --release"
)]
fn three_replicas_converge_after_a_crash() {
    // Within reach of CI only with a warm start, links in order, and two
    // replicas that mutate, one of which may crash.
    let setup = Setup {
        crash: Some(Some(0)),
        fifo: true,
        warm: true,
        ..Setup::new(&[2, 1, 0], 0)
    };
    let states = check(setup, Search::Bfs);
    assert!(states > 100_000, "only {states} states explored");
}

/// With packets held up to two periods, property 2 fails at `k + 2`
/// firings. The shortest counterexample (r0 tracks, `k = 1`):
///
/// 1. r0 and r1 fire at 0 ms; r0 tracks and fires at 100 ms.
/// 2. r0's interval of 100 ms overtakes its heartbeat of 0 ms: r1 has not
///    heard of r0 yet and drops it.
/// 3. r0's heartbeats show r0 at counter 0, then 1: r1 asks r0 at 200 ms;
///    r0 answers at 300 ms and the answer is lost.
/// 4. r1 would ask again when the request times out (`catchup_timeout`, two
///    periods), but its firings are used up: r1 shows r0 up without its
///    presence.
///
/// Five firings are enough for this setup. This test pins the behaviour so
/// that a change to it is noticed: if the protocol comes to meet the claim
/// here, update the module docs and turn this into a check.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "minutes without optimisations: use --release"
)]
fn reordering_past_a_period_needs_more_than_k_plus_2_firings() {
    let setup = Setup {
        max_delay_periods: 2,
        ..Setup::new(&[1, 0], 1)
    };
    let explored = explore(setup.clone(), Search::Bfs);
    assert!(!explored.found.contains_key(NO_UNTRACKED));
    let path = explored
        .found
        .get(QUIET_CONVERGE)
        .expect("k + 2 firings fall short when packets cross a period");
    eprintln!("{path}last state: {:?}", path.last_state());
    let enough = Setup {
        firings: setup.firings + 2,
        ..setup
    };
    assert!(explore(enough, Search::Bfs).found.is_empty());
}

/// The deep run, by hand: `ATTENDANCE_MODEL_DEEP=1`. Three replicas from
/// a warm start, two of them mutating (three steps in all) and any one
/// liable to crash, links in order, `k = 0`; then two replicas with three
/// and two mutations and `k = 2`, in any order.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "hours without optimisations: use --release"
)]
fn deep() {
    if std::env::var_os("ATTENDANCE_MODEL_DEEP").is_none() {
        eprintln!("deep model run skipped: set ATTENDANCE_MODEL_DEEP=1");
        return;
    }
    let crash = Setup {
        crash: Some(None),
        fifo: true,
        warm: true,
        ..Setup::new(&[2, 1, 0], 0)
    };
    check(crash, Search::Dfs);
    check(Setup::new(&[3, 2], 2), Search::Dfs);
}
