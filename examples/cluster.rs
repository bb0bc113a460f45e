//! Three replicas of one presence set, replicating through a lossy-looking
//! but lossless network: every delta is encoded to bytes, and the bytes are
//! shuffled, duplicated and delayed before each peer decodes and merges them.
//! However they arrive, all replicas end with the same lists.
//!
//! ```text
//! cargo run --release --example cluster            # the default seed
//! cargo run --release --example cluster -- 42      # another delivery order
//! ```
//!
//! For now the three replicas share one process; the network is a seeded
//! shuffle, so every run with the same seed prints the same lines.

use std::collections::HashSet;
use std::error::Error;

use attendance::{Change, Diff, Incarnation, PresenceId, ReplicaId, ReplicaName, State, wire};
use serde::{Deserialize, Serialize};

/// The seed used when none is given on the command line.
const DEFAULT_SEED: u64 = 1;

/// What the application attaches to each presence.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
struct Meta {
    device: String,
    online_at: u64,
}

fn meta(device: &str, online_at: u64) -> Meta {
    Meta {
        device: device.to_string(),
        online_at,
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let seed = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse::<u64>()
            .map_err(|_| format!("usage: cluster [SEED], SEED a u64, not {arg}"))?,
        None => DEFAULT_SEED,
    };
    println!("3 replicas; the network shuffles, duplicates and delays (seed {seed})");

    let mut nodes = Vec::new();
    for name in ["node-1", "node-2", "node-3"] {
        nodes.push(Node::new(nodes.len(), name)?);
    }
    let mut net = Network::new(seed, nodes.len());

    println!("-- round 1");
    let alice_web = nodes[0].track(&mut net, "room:lobby", "alice", meta("web", 1000))?;
    let carol = nodes[0].track(&mut net, "room:ops", "carol", meta("web", 1001))?;
    nodes[1].track(&mut net, "room:lobby", "bob", meta("desktop", 1002))?;
    nodes[2].track(&mut net, "room:lobby", "alice", meta("tablet", 1003))?;
    net.deliver_some(&mut nodes)?;

    println!("-- round 2");
    let dave = nodes[1].track(&mut net, "room:lobby", "dave", meta("phone", 1010))?;
    nodes[2].track(&mut net, "room:lobby", "erin", meta("web", 1011))?;
    nodes[0].update(&mut net, &alice_web, meta("mobile", 1012))?;
    net.deliver_some(&mut nodes)?;

    println!("-- round 3");
    nodes[1].untrack(&mut net, &dave)?;
    nodes[0].untrack(&mut net, &carol)?;
    net.deliver_some(&mut nodes)?;

    println!("-- the network drains");
    net.deliver_all(&mut nodes)?;
    println!(
        "{} messages sent ({} duplicated), {} bytes in all",
        net.sent, net.duplicated, net.bytes
    );

    println!();
    for node in &nodes {
        println!("room:lobby seen from {}:", node.name);
        for group in node.state.list("room:lobby") {
            let presences: Vec<String> = group
                .presences
                .iter()
                .map(|p| format!("{} {}@{}", short_id(&p.id), p.meta.device, p.meta.online_at))
                .collect();
            println!("  {:<6} {}", group.key.as_str(), presences.join(", "));
        }
    }

    // Every topic used, and any other a replica lists, must be listed
    // identically everywhere.
    let mut topics: Vec<String> = vec!["room:lobby".into(), "room:ops".into()];
    topics.extend(
        nodes
            .iter()
            .flat_map(|n| n.state.topics())
            .map(|(topic, _)| topic.to_string()),
    );
    topics.sort();
    topics.dedup();
    let first = &nodes[0].state;
    let converged = topics.iter().all(|topic| {
        nodes[1..]
            .iter()
            .all(|n| n.state.list(topic) == first.list(topic))
    });
    println!(
        "converged: {} (lists of {} compared on all 3 replicas)",
        if converged { "yes" } else { "NO" },
        topics.join(", ")
    );
    if !converged {
        return Err("the replicas' lists differ".into());
    }
    Ok(())
}

/// One replica: its name and its state. Later, one process of the cluster.
struct Node {
    /// Its address on the network.
    index: usize,
    name: String,
    state: State<Meta>,
    /// The messages merged so far, to tell duplicates apart in the output.
    received: HashSet<usize>,
}

impl Node {
    fn new(index: usize, name: &str) -> Result<Self, Box<dyn Error>> {
        // A real node takes its start time and a random nonce; fixed values
        // keep the demo's output the same on every run.
        let incarnation = Incarnation::new(1_764_000_000_000, 0x5eed);
        let id = ReplicaId::new(ReplicaName::new(name)?, incarnation);
        Ok(Self {
            index,
            name: name.to_string(),
            state: State::new(id),
            received: HashSet::new(),
        })
    }

    fn track(
        &mut self,
        net: &mut Network,
        topic: &str,
        key: &str,
        meta: Meta,
    ) -> Result<PresenceId, Box<dyn Error>> {
        let (id, change) = self.state.track(topic, key, meta)?;
        self.publish(net, change)?;
        Ok(id)
    }

    fn update(
        &mut self,
        net: &mut Network,
        id: &PresenceId,
        meta: Meta,
    ) -> Result<(), Box<dyn Error>> {
        let change = self.state.update(id, meta)?;
        self.publish(net, change)
    }

    fn untrack(&mut self, net: &mut Network, id: &PresenceId) -> Result<(), Box<dyn Error>> {
        let change = self.state.untrack(id)?;
        self.publish(net, change)
    }

    /// Shows a local change and sends its delta, as bytes, to every peer.
    fn publish(&mut self, net: &mut Network, change: Change<Meta>) -> Result<(), Box<dyn Error>> {
        let bytes = wire::encode(change.delta())?;
        for (kind, line) in describe(change.diff()) {
            let verb = match kind {
                Kind::Join => "track  ",
                Kind::Update => "update ",
                Kind::Leave => "untrack",
            };
            println!("{} {verb} {line}  [delta {} B]", self.name, bytes.len());
        }
        let label = format!("{}#{}", self.name, self.state.counter());
        net.send(self.index, label, bytes);
        Ok(())
    }

    /// Decodes and merges a message from a peer, and shows what changed.
    fn receive(&mut self, message: &Message) -> Result<(), Box<dyn Error>> {
        let delta = wire::decode::<Meta>(&message.bytes)?;
        let carries_entries = delta.entry_count() > 0;
        let diff = self.state.merge(delta)?;
        let again = !self.received.insert(message.id);
        let lines = describe(&diff);
        if lines.is_empty() {
            let label = &message.label;
            let why = if again {
                format!("delta {label} again (duplicate)")
            } else if carries_entries {
                format!("delta {label} arrives after its removal")
            } else {
                format!("delta {label} arrives before what it removes")
            };
            println!("{} sees nothing: {why}", self.name);
        }
        for (kind, line) in lines {
            let verb = match kind {
                Kind::Join => "join  ",
                Kind::Update => "update",
                Kind::Leave => "leave ",
            };
            println!("{} sees {verb} {line}", self.name);
        }
        Ok(())
    }
}

/// The kinds of line a diff is shown as.
enum Kind {
    Join,
    Update,
    Leave,
}

/// A diff as readable lines, one per join, update or leave.
fn describe(diff: &Diff<Meta>) -> Vec<(Kind, String)> {
    let mut lines = Vec::new();
    for (topic, changes) in diff.iter() {
        for p in changes.joins() {
            let (key, id, device) = (p.key(), short_id(p.id()), &p.meta().device);
            lines.push((Kind::Join, format!("{topic} {key} ({id}) device={device}")));
        }
        for u in changes.updates() {
            let (key, id) = (u.key(), short_id(u.id()));
            let (old, new) = (&u.old_meta().device, &u.meta().device);
            let line = format!("{topic} {key} ({id}) device={old} -> {new}");
            lines.push((Kind::Update, line));
        }
        for p in changes.leaves() {
            let (key, id) = (p.key(), short_id(p.id()));
            lines.push((Kind::Leave, format!("{topic} {key} ({id})")));
        }
    }
    lines
}

/// `node-1#3`: the replica's name and the counter of the presence's track.
fn short_id(id: &PresenceId) -> String {
    format!("{}#{}", id.replica().name(), id.as_dot().counter())
}

/// Bytes on their way from one replica to another.
struct Message {
    /// Shared by a message and its duplicate.
    id: usize,
    /// The sender and the counter of the change, such as `node-1#3`.
    label: String,
    to: usize,
    bytes: Vec<u8>,
}

/// A deterministic network: it delivers every message at least once, in a
/// seeded random order, some of them twice, some rounds late.
struct Network {
    rng: XorShift,
    in_flight: Vec<Message>,
    replicas: usize,
    next_id: usize,
    sent: usize,
    duplicated: usize,
    bytes: usize,
}

impl Network {
    fn new(seed: u64, replicas: usize) -> Self {
        Self {
            rng: XorShift::new(seed),
            in_flight: Vec::new(),
            replicas,
            next_id: 0,
            sent: 0,
            duplicated: 0,
            bytes: 0,
        }
    }

    /// Queues `bytes` for every replica but the sender; one in four copies
    /// is queued twice.
    fn send(&mut self, from: usize, label: String, bytes: Vec<u8>) {
        for to in (0..self.replicas).filter(|&to| to != from) {
            let copies = if self.rng.below(4) == 0 { 2 } else { 1 };
            for _ in 0..copies {
                self.in_flight.push(Message {
                    id: self.next_id,
                    label: label.clone(),
                    to,
                    bytes: bytes.clone(),
                });
                self.sent += 1;
                self.bytes += bytes.len();
            }
            self.duplicated += copies - 1;
            self.next_id += 1;
        }
    }

    /// Delivers about half of what is in flight, in random order; the rest
    /// waits for a later round.
    fn deliver_some(&mut self, nodes: &mut [Node]) -> Result<(), Box<dyn Error>> {
        self.shuffle();
        let mut delayed = Vec::new();
        let mut delivered = 0;
        for message in std::mem::take(&mut self.in_flight) {
            if self.rng.below(2) == 0 {
                nodes[message.to].receive(&message)?;
                delivered += 1;
            } else {
                delayed.push(message);
            }
        }
        println!("   ({delivered} delivered, {} delayed)", delayed.len());
        self.in_flight = delayed;
        Ok(())
    }

    /// Delivers everything still in flight, in random order.
    fn deliver_all(&mut self, nodes: &mut [Node]) -> Result<(), Box<dyn Error>> {
        self.shuffle();
        for message in std::mem::take(&mut self.in_flight) {
            nodes[message.to].receive(&message)?;
        }
        Ok(())
    }

    /// Fisher–Yates over the messages in flight.
    fn shuffle(&mut self) {
        for i in (1..self.in_flight.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            self.in_flight.swap(i, j);
        }
    }
}

/// xorshift64: tiny, seeded, and the same on every platform.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // Spread small seeds over the bits; the state must not be zero.
        let state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xd1b5_4a32_d192_ed03;
        Self(if state == 0 { 1 } else { state })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (n > 0; the slight bias does not matter here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
