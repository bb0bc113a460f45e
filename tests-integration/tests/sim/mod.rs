//! A deterministic cluster simulator over the sans-IO protocol.
//!
//! N hosts run one [`Node`] each on a virtual clock. A seeded generator
//! decides everything random: which messages the network drops, duplicates
//! or delays (and so reorders), the mutations, the faults. The same seed
//! gives the same run, event for event: [`Sim::trace`] is a hash of every
//! delivery and every event, compared across two runs in the tests.
//!
//! Next to the nodes the simulator keeps the ground truth (the presences
//! tracked and not untracked on hosts that are running), each host's diffs
//! replayed from empty, and each replica's own sub-state at every counter,
//! so the tests can check lists, diffs and prefix views against them.
//!
//! Its own work per event does not grow with the number of hosts, so that
//! clusters of a thousand can run: each running host's next timer is filed
//! in a sorted set whenever the simulator has given that host an input, and
//! replicas are found by id through a map. A message to all is still one
//! delivery per host.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use attendance::protocol::{Config, Destination, Event, MessageKind, Node, ReplicaStatus};
use attendance::{Diff, Incarnation, PresenceId, ReplicaId, ReplicaName, State};

mod checks;
#[path = "../../../examples/support/rng.rs"]
mod rng;
mod rows;
pub use rng::Rng;
pub use rows::rows;

/// The meta of simulated presences.
pub type M = u32;

/// One presence as lists show it: topic, key, id, meta.
pub type Row = rows::Row<M>;

/// What the network does to each message on each link.
#[derive(Clone, Debug)]
pub struct Network {
    pub drop: f64,
    pub duplicate: f64,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Tell both ends when a link is cut and when a host crashes, as a
    /// transport would, after `report_delay`.
    pub report_losses: bool,
    pub report_delay: Duration,
}

impl Network {
    /// A network that loses nothing, with 1-20 ms of delay.
    pub fn reliable() -> Self {
        Network {
            drop: 0.0,
            duplicate: 0.0,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
            report_losses: true,
            report_delay: Duration::from_millis(50),
        }
    }

    /// Drops, duplicates and reorders.
    pub fn lossy() -> Self {
        Network {
            drop: 0.05,
            duplicate: 0.05,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(300),
            ..Network::reliable()
        }
    }
}

/// Traffic the network carried, per kind, counting every copy delivered
/// to a host.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    pub messages: BTreeMap<MessageKind, u64>,
    pub bytes: BTreeMap<MessageKind, u64>,
}

impl Traffic {
    fn count(&mut self, kind: MessageKind, bytes: usize) {
        *self.messages.entry(kind).or_default() += 1;
        *self.bytes.entry(kind).or_default() += bytes as u64;
    }

    /// Messages of one kind.
    pub fn messages_of(&self, kind: MessageKind) -> u64 {
        self.messages.get(&kind).copied().unwrap_or(0)
    }

    /// Bytes of one kind.
    pub fn bytes_of(&self, kind: MessageKind) -> u64 {
        self.bytes.get(&kind).copied().unwrap_or(0)
    }

    pub fn total_bytes(&self) -> u64 {
        self.bytes.values().sum()
    }

    pub fn total_messages(&self) -> u64 {
        self.messages.values().sum()
    }
}

struct Packet {
    from: usize,
    /// The sending incarnation, as an authenticating transport reports it.
    sender: ReplicaId,
    to: usize,
    bytes: Arc<Vec<u8>>,
    kind: MessageKind,
}

enum Due {
    Deliver(Packet),
    LinkLost { at: usize, peer: ReplicaId },
}

pub struct Host {
    pub name: String,
    /// Read it, do not drive it: the simulator files the node's next timer
    /// and its id after each input it gives, and would miss any other.
    pub node: Option<Node<M>>,
    /// The diffs this host published, replayed from empty.
    pub replay: BTreeMap<(String, PresenceId), (String, M)>,
    /// Its own live presences (to untrack or update).
    own: Vec<PresenceId>,
    pub crashed_at: Option<Duration>,
    pub incarnations: u32,
    /// What was delivered to this host, counted as [`Sim::traffic`] is.
    pub received: Traffic,
    /// Its entry in [`Sim::timers`], while it runs.
    timer: Option<Duration>,
    /// Its entry in [`Sim::running`]: the id it was last seen with.
    listed_as: Option<ReplicaId>,
}

impl Host {
    fn new(name: String) -> Self {
        Host {
            name,
            node: None,
            replay: BTreeMap::new(),
            own: Vec::new(),
            crashed_at: None,
            incarnations: 0,
            received: Traffic::default(),
            timer: None,
            listed_as: None,
        }
    }
}

pub struct Sim {
    pub now: Duration,
    pub rng: Rng,
    pub config: Config,
    pub network: Network,
    pub hosts: Vec<Host>,
    due: BTreeMap<(Duration, u64), Due>,
    seq: u64,
    /// Each running host's next timer, `(poll_timeout, host)`: the first
    /// is the next to fire, the lowest host first on a tie.
    timers: BTreeSet<(Duration, usize)>,
    /// The running hosts by their replica's current id, to deliver
    /// messages sent to one replica.
    running: HashMap<ReplicaId, usize>,
    /// Directed links that carry nothing: `(from, to)`.
    blocked: BTreeSet<(usize, usize)>,
    /// Presences tracked and not untracked on running hosts.
    pub truth: BTreeMap<PresenceId, (String, String, M)>,
    /// Each replica's own presences at each of its counters.
    history: BTreeMap<ReplicaId, BTreeMap<u64, Arc<BTreeSet<Row>>>>,
    /// The greatest counter of R each host has shown while R was visible.
    shown: BTreeMap<(usize, ReplicaId), u64>,
    pub traffic: Traffic,
    /// `ReplicaDown` events naming a replica that is in fact running (cut
    /// off, or wrongly suspected).
    pub downs_of_running: u64,
    /// When the last crash was reported to the others.
    pub last_report: Option<Duration>,
    /// Check prefix views after every step (on by default; it keeps every
    /// replica's sub-state at every counter, so large runs turn it off
    /// before any mutation).
    pub check_prefixes: bool,
    /// Every join each host published, while `record_joins` is set.
    pub joined: Vec<(usize, PresenceId)>,
    pub record_joins: bool,
    /// Print every event (`ATTENDANCE_SIM_LOG=1`).
    pub log: bool,
    trace: u64,
    pub topics: Vec<String>,
    pub keys: u64,
    /// A host whose catch-up requests kill the host they reach, once: the
    /// holder it asks crashes instead of answering.
    pub fatal_requests_from: Option<usize>,
    /// The host [`Sim::fatal_requests_from`] killed.
    pub killed_by_request: Option<usize>,
}

/// The incarnation start time of the first hosts; restarts add the
/// virtual time, so a restart is always newer.
const EPOCH_MS: u64 = 1_700_000_000_000;

impl Sim {
    pub fn new(seed: u64, hosts: usize, config: Config, network: Network) -> Self {
        let mut sim = Sim {
            now: Duration::ZERO,
            rng: Rng::new(seed),
            config,
            network,
            hosts: Vec::new(),
            due: BTreeMap::new(),
            seq: 0,
            timers: BTreeSet::new(),
            running: HashMap::new(),
            blocked: BTreeSet::new(),
            truth: BTreeMap::new(),
            history: BTreeMap::new(),
            shown: BTreeMap::new(),
            traffic: Traffic::default(),
            downs_of_running: 0,
            last_report: None,
            check_prefixes: true,
            joined: Vec::new(),
            record_joins: false,
            log: std::env::var_os("ATTENDANCE_SIM_LOG").is_some(),
            trace: 0xcbf2_9ce4_8422_2325,
            topics: (0..3).map(|t| format!("room:{t}")).collect(),
            keys: 8,
            fatal_requests_from: None,
            killed_by_request: None,
        };
        for _ in 0..hosts {
            sim.add_host();
        }
        sim
    }

    /// Starts a host under a name never used before, connected to every
    /// running host; returns its index.
    pub fn add_host(&mut self) -> usize {
        let host = self.hosts.len();
        self.hosts.push(Host::new(format!("n{host}")));
        self.boot(host);
        host
    }

    /// A cluster on a reliable network with the default configuration,
    /// `per_host` presences tracked on each host (keys drawn from a large
    /// space, so no two collide), settled: every host lists them all.
    /// Prefix checks are off, for speed.
    pub fn settled(seed: u64, hosts: usize, per_host: usize) -> Result<Self, String> {
        let mut sim = Sim::new(seed, hosts, Config::default(), Network::reliable());
        sim.check_prefixes = false;
        sim.keys = 1 << 40;
        sim.run_for(sim.periods(2));
        for h in 0..hosts {
            for _ in 0..per_host {
                sim.track(h);
            }
        }
        sim.run_for(sim.periods(4));
        sim.converged()?;
        Ok(sim)
    }

    pub fn id(&self, host: usize) -> Option<ReplicaId> {
        self.hosts[host].node.as_ref().map(|n| n.id().clone())
    }

    pub fn node(&self, host: usize) -> &Node<M> {
        self.hosts[host].node.as_ref().expect("host is running")
    }

    pub fn is_up(&self, host: usize) -> bool {
        self.hosts[host].node.is_some()
    }

    pub fn trace(&self) -> u64 {
        self.trace
    }

    fn mix(&mut self, words: &[u64]) {
        for w in words {
            for b in w.to_le_bytes() {
                self.trace ^= u64::from(b);
                self.trace = self.trace.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }

    // --- hosts ---------------------------------------------------------

    fn boot(&mut self, host: usize) {
        let h = &mut self.hosts[host];
        h.incarnations += 1;
        let started = EPOCH_MS + self.now.as_millis() as u64;
        let nonce = self.rng.next_u64() as u32;
        let id = ReplicaId::new(
            ReplicaName::new(&h.name).expect("valid name"),
            Incarnation::new(started, nonce),
        );
        let node = Node::new(State::new(id.clone()), self.config.clone()).expect("valid config");
        h.node = Some(node);
        h.listed_as = Some(id.clone());
        self.running.insert(id.clone(), host);
        let h = &mut self.hosts[host];
        h.replay.clear();
        h.own.clear();
        h.crashed_at = None;
        self.shown.retain(|(h, _), _| *h != host);
        self.history
            .entry(id.clone())
            .or_default()
            .insert(0, Arc::new(BTreeSet::new()));
        // Transports connect both ways.
        for other in 0..self.hosts.len() {
            if other == host || !self.is_up(other) {
                continue;
            }
            let other_id = self.id(other).expect("running");
            let now = self.now;
            if let Some(n) = self.hosts[host].node.as_mut() {
                n.peer_connected(now, other_id);
            }
            if let Some(n) = self.hosts[other].node.as_mut() {
                n.peer_connected(now, id.clone());
            }
            self.drain(other);
        }
        self.drain(host);
    }

    /// Takes a host's node out of the run, with its timer and its id.
    fn stop(&mut self, host: usize) -> Option<Node<M>> {
        let h = &mut self.hosts[host];
        let node = h.node.take()?;
        if let Some(t) = h.timer.take() {
            self.timers.remove(&(t, host));
        }
        if let Some(id) = h.listed_as.take() {
            self.running.remove(&id);
        }
        Some(node)
    }

    /// Kills a host: its memory is lost. Peers hear of the lost links.
    pub fn crash(&mut self, host: usize) {
        let Some(node) = self.stop(host) else {
            return;
        };
        if self.log {
            eprintln!("{:?} host {host} crashes", self.now);
        }
        let id = node.id().clone();
        self.hosts[host].crashed_at = Some(self.now);
        self.truth.retain(|pid, _| pid.replica() != &id);
        self.mix(&[1, host as u64]);
        if self.network.report_losses {
            // As over TCP, the loss is noticed after what was already on
            // its way from the host has arrived.
            let last = self
                .due
                .iter()
                .filter_map(|(k, d)| match d {
                    Due::Deliver(p) if p.from == host => Some(k.0),
                    _ => None,
                })
                .max()
                .unwrap_or(self.now);
            let at = last.max(self.now) + self.network.report_delay;
            self.last_report = Some(at);
            for other in 0..self.hosts.len() {
                if other != host && self.is_up(other) {
                    self.schedule(
                        at,
                        Due::LinkLost {
                            at: other,
                            peer: id.clone(),
                        },
                    );
                }
            }
        }
    }

    /// Starts a crashed host again, as a new incarnation.
    pub fn restart(&mut self, host: usize) {
        if self.is_up(host) {
            return;
        }
        self.mix(&[2, host as u64]);
        self.boot(host);
    }

    /// A graceful shutdown: the host tells its peers and stops.
    pub fn shut_down(&mut self, host: usize) {
        let now = self.now;
        if let Some(n) = self.hosts[host].node.as_mut() {
            n.leave(now);
        }
        self.drain(host);
        let id = self.id(host).expect("running");
        self.stop(host);
        self.hosts[host].crashed_at = Some(now);
        self.truth.retain(|pid, _| pid.replica() != &id);
    }

    // --- the network -----------------------------------------------------

    /// Cuts the link from `a` to `b` (one way).
    pub fn cut_one_way(&mut self, a: usize, b: usize) {
        self.blocked.insert((a, b));
    }

    /// Cuts `a`–`b` both ways; both ends hear of it when losses are
    /// reported.
    pub fn cut(&mut self, a: usize, b: usize) {
        self.blocked.insert((a, b));
        self.blocked.insert((b, a));
        if self.network.report_losses {
            let at = self.now + self.network.report_delay;
            for (x, y) in [(a, b), (b, a)] {
                if let Some(peer) = self.id(y) {
                    self.schedule(at, Due::LinkLost { at: x, peer });
                }
            }
        }
    }

    /// Splits the hosts into groups that cannot talk to each other.
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        for (i, g) in groups.iter().enumerate() {
            for other in &groups[i + 1..] {
                for &a in g {
                    for &b in other {
                        self.cut(a, b);
                    }
                }
            }
        }
    }

    /// Restores every link; the transports reconnect.
    pub fn heal(&mut self) {
        let cut: Vec<(usize, usize)> = std::mem::take(&mut self.blocked).into_iter().collect();
        let now = self.now;
        for (a, b) in cut {
            let Some(b_id) = self.id(b) else { continue };
            if let Some(n) = self.hosts[a].node.as_mut() {
                n.peer_connected(now, b_id);
            }
            self.drain(a);
        }
    }

    fn schedule(&mut self, at: Duration, due: Due) {
        self.seq += 1;
        self.due.insert((at, self.seq), due);
    }

    fn send(&mut self, from: usize, to: usize, bytes: Arc<Vec<u8>>, kind: MessageKind) {
        if self.rng.chance(self.network.drop) {
            return;
        }
        let Some(sender) = self.id(from) else {
            return;
        };
        let copies = if self.rng.chance(self.network.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self
                .rng
                .between(self.network.min_delay, self.network.max_delay);
            let at = self.now + delay;
            let packet = Packet {
                from,
                sender: sender.clone(),
                to,
                bytes: bytes.clone(),
                kind,
            };
            self.schedule(at, Due::Deliver(packet));
        }
    }

    /// Takes a host's outputs (messages onto the network, events into the
    /// replay) and files its next timer. Every input the simulator gives a
    /// node is followed by this.
    fn drain(&mut self, host: usize) {
        self.relist(host);
        self.take_outputs(host);
        self.refile_timer(host);
    }

    /// Keeps [`Sim::running`] on the host's current id: a node moves to a
    /// new id when it re-incarnates.
    fn relist(&mut self, host: usize) {
        let h = &mut self.hosts[host];
        let Some(node) = h.node.as_ref() else {
            return;
        };
        if h.listed_as.as_ref() == Some(node.id()) {
            return;
        }
        let id = node.id().clone();
        if let Some(old) = h.listed_as.replace(id.clone()) {
            self.running.remove(&old);
        }
        self.running.insert(id, host);
    }

    /// Files the host's next timer in [`Sim::timers`] anew.
    fn refile_timer(&mut self, host: usize) {
        let h = &mut self.hosts[host];
        let next = h.node.as_ref().map(|n| n.poll_timeout());
        if h.timer == next {
            return;
        }
        if let Some(t) = h.timer {
            self.timers.remove(&(t, host));
        }
        if let Some(t) = next {
            self.timers.insert((t, host));
        }
        h.timer = next;
    }

    fn take_outputs(&mut self, host: usize) {
        loop {
            let Some(node) = self.hosts[host].node.as_mut() else {
                return;
            };
            let Some(t) = node.poll_transmit() else { break };
            let bytes = Arc::new(t.bytes);
            match t.destination {
                Destination::All => {
                    for to in 0..self.hosts.len() {
                        if to != host {
                            self.send(host, to, bytes.clone(), t.kind);
                        }
                    }
                }
                Destination::Replica(id) => {
                    if let Some(&to) = self.running.get(&id) {
                        self.send(host, to, bytes, t.kind);
                    }
                }
            }
        }
        loop {
            let Some(node) = self.hosts[host].node.as_mut() else {
                return;
            };
            let Some(event) = node.poll_event() else {
                break;
            };
            let code = match &event {
                Event::Diff(d) => {
                    replay(&mut self.hosts[host].replay, d);
                    if self.record_joins {
                        for (_, p) in d.joins() {
                            self.joined.push((host, p.id().clone()));
                        }
                    }
                    3
                }
                Event::ReplicaUp(_) => 4,
                Event::ReplicaDown(id) => {
                    if self.running.contains_key(id) {
                        self.downs_of_running += 1;
                    }
                    5
                }
                Event::ReplicaPurged(..) => 6,
                _ => 7,
            };
            let now = self.now.as_micros() as u64;
            if self.log {
                eprintln!("{:?} host {host}: {event:?}", self.now);
            }
            self.mix(&[code, host as u64, now]);
        }
        if self.check_prefixes {
            self.check_prefix_views(host);
        }
    }

    // --- time ----------------------------------------------------------

    /// Runs everything due up to `until`.
    pub fn run_until(&mut self, until: Duration) {
        loop {
            let next_due = self.due.first_key_value().map(|(k, _)| k.0);
            let next_timer = self.timers.first().copied();
            let timer_first = match (next_timer, next_due) {
                (Some((t, _)), Some(d)) => t <= d,
                (Some(_), None) => true,
                _ => false,
            };
            let at = if timer_first {
                next_timer.map(|(t, _)| t)
            } else {
                next_due
            };
            let Some(at) = at.filter(|&t| t <= until) else {
                break;
            };
            self.now = self.now.max(at);
            if timer_first {
                let (_, host) = next_timer.expect("checked");
                let now = self.now;
                if let Some(n) = self.hosts[host].node.as_mut() {
                    n.handle_timeout(now);
                }
                self.drain(host);
            } else {
                let (_, due) = self.due.pop_first().expect("checked");
                self.fire(due);
            }
        }
        self.now = self.now.max(until);
    }

    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    pub fn periods(&self, n: u32) -> Duration {
        self.config.broadcast_period * n
    }

    fn fire(&mut self, due: Due) {
        let now = self.now;
        match due {
            Due::Deliver(p) => {
                if self.blocked.contains(&(p.from, p.to)) {
                    return;
                }
                if p.kind == MessageKind::CatchUpRequest
                    && self.fatal_requests_from == Some(p.from)
                    && self.is_up(p.to)
                {
                    self.fatal_requests_from = None;
                    self.killed_by_request = Some(p.to);
                    self.crash(p.to);
                    return;
                }
                let to = &mut self.hosts[p.to];
                let Some(node) = to.node.as_mut() else {
                    return;
                };
                to.received.count(p.kind, p.bytes.len());
                self.traffic.count(p.kind, p.bytes.len());
                let ok = node.handle_message(now, &p.sender, &p.bytes).is_ok();
                self.mix(&[
                    8,
                    p.from as u64,
                    p.to as u64,
                    p.bytes.len() as u64,
                    u64::from(ok),
                ]);
                self.drain(p.to);
            }
            Due::LinkLost { at, peer } => {
                if let Some(n) = self.hosts[at].node.as_mut() {
                    n.link_lost(now, &peer);
                }
                self.drain(at);
            }
        }
    }

    // --- mutations -----------------------------------------------------

    pub fn track(&mut self, host: usize) -> Option<PresenceId> {
        let topic = self.topics[self.rng.below(self.topics.len() as u64) as usize].clone();
        let key = format!("user:{}", self.rng.below(self.keys));
        let meta = self.rng.below(4) as M;
        let node = self.hosts[host].node.as_mut()?;
        let id = node.track(&topic, &key, meta).expect("within limits");
        self.hosts[host].own.push(id.clone());
        self.truth.insert(id.clone(), (topic, key, meta));
        self.after_local(host);
        Some(id)
    }

    pub fn untrack(&mut self, host: usize) -> Option<PresenceId> {
        let own = self.hosts[host].own.len() as u64;
        if own == 0 || !self.is_up(host) {
            return None;
        }
        let i = self.rng.below(own) as usize;
        let id = self.hosts[host].own.swap_remove(i);
        let node = self.hosts[host].node.as_mut().expect("running");
        node.untrack(&id).expect("own presence");
        self.truth.remove(&id);
        self.after_local(host);
        Some(id)
    }

    pub fn update(&mut self, host: usize) {
        let own = self.hosts[host].own.len() as u64;
        if own == 0 || !self.is_up(host) {
            return;
        }
        let id = self.hosts[host].own[self.rng.below(own) as usize].clone();
        let meta = self.rng.below(4) as M + 10;
        let node = self.hosts[host].node.as_mut().expect("running");
        node.update(&id, meta).expect("own presence");
        if let Some(t) = self.truth.get_mut(&id) {
            t.2 = meta;
        }
        self.after_local(host);
    }

    /// A random mutation on a random running host.
    pub fn random_mutation(&mut self) {
        let running: Vec<usize> = (0..self.hosts.len()).filter(|&h| self.is_up(h)).collect();
        if running.is_empty() {
            return;
        }
        let host = running[self.rng.below(running.len() as u64) as usize];
        match self.rng.below(10) {
            0..=4 => {
                self.track(host);
            }
            5..=7 => {
                self.untrack(host);
            }
            _ => self.update(host),
        }
    }

    fn after_local(&mut self, host: usize) {
        let node = self.node(host);
        let id = node.id().clone();
        let counter = node.state().counter();
        if self.check_prefixes {
            let own: BTreeSet<Row> = rows(node.state())
                .into_iter()
                .filter(|r| r.2.replica() == &id)
                .collect();
            self.history
                .entry(id)
                .or_default()
                .insert(counter, Arc::new(own));
        }
        self.mix(&[9, host as u64, counter]);
        self.drain(host);
    }
}

/// Applies a diff to a replayed list, refusing phantom changes.
fn replay(list: &mut BTreeMap<(String, PresenceId), (String, M)>, diff: &Diff<M>) {
    for (topic, p) in diff.leaves() {
        let gone = list.remove(&(topic.as_str().to_string(), p.id().clone()));
        assert!(gone.is_some(), "leave of {:?} that was not listed", p.id());
    }
    for (topic, u) in diff.updates() {
        let slot = list.get_mut(&(topic.as_str().to_string(), u.id().clone()));
        let slot = slot.unwrap_or_else(|| panic!("update of {:?} that was not listed", u.id()));
        assert_eq!(slot.1, *u.old_meta(), "update names another old version");
        slot.1 = *u.meta();
    }
    for (topic, p) in diff.joins() {
        let fresh = list.insert(
            (topic.as_str().to_string(), p.id().clone()),
            (p.key().as_str().to_string(), *p.meta()),
        );
        assert!(fresh.is_none(), "join of {:?} already listed", p.id());
    }
}
