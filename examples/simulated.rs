//! Three replicas running the replication protocol over a simulated
//! network in one process, on a virtual clock: they track users, converge,
//! lose one replica to a crash (its users leave everywhere), and see it
//! come back as a new incarnation.
//!
//! ```text
//! cargo run --release --example simulated            # the default seed
//! cargo run --release --example simulated -- 42      # another network
//! ```
//!
//! The network delays messages by 5-80 ms, duplicates 5% and drops 5% of
//! them; the seed decides which, so one seed always prints the same lines.

use std::collections::BTreeMap;
use std::error::Error;
use std::time::Duration;

use attendance::protocol::{Config, Destination, Event, Node};
use attendance::{Incarnation, ReplicaId, ReplicaName, State};
use serde::{Deserialize, Serialize};

/// What the application attaches to each presence.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
struct Meta {
    device: String,
}

const TOPIC: &str = "room:lobby";

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

/// Three hosts, a virtual clock and the messages in flight.
struct Cluster {
    now: Duration,
    config: Config,
    hosts: Vec<Option<Node<Meta>>>,
    names: Vec<&'static str>,
    /// `(arrival, sequence) -> (from, to, bytes)`.
    in_flight: BTreeMap<(Duration, u64), (usize, usize, Vec<u8>)>,
    sequence: u64,
    rng: Rng,
    sent_bytes: u64,
}

impl Cluster {
    fn new(seed: u64) -> Result<Self, Box<dyn Error>> {
        let config = Config::with_broadcast_period(Duration::from_millis(500));
        let mut cluster = Cluster {
            now: Duration::ZERO,
            config,
            hosts: Vec::new(),
            names: vec!["node-1", "node-2", "node-3"],
            in_flight: BTreeMap::new(),
            sequence: 0,
            rng: Rng::new(seed),
            sent_bytes: 0,
        };
        for host in 0..3 {
            cluster.hosts.push(None);
            cluster.start(host)?;
        }
        Ok(cluster)
    }

    /// Starts a host as a new incarnation and connects it to the others.
    fn start(&mut self, host: usize) -> Result<(), Box<dyn Error>> {
        let incarnation =
            Incarnation::new(self.now.as_millis() as u64 + 1, self.rng.next_u64() as u32);
        let id = ReplicaId::new(ReplicaName::new(self.names[host])?, incarnation);
        self.hosts[host] = Some(Node::new(State::new(id.clone()), self.config.clone())?);
        for other in 0..self.hosts.len() {
            let Some(other_id) = self.id(other) else {
                continue;
            };
            if other == host {
                continue;
            }
            let now = self.now;
            if let Some(node) = self.hosts[host].as_mut() {
                node.peer_connected(now, other_id);
            }
            if let Some(node) = self.hosts[other].as_mut() {
                node.peer_connected(now, id.clone());
            }
        }
        Ok(())
    }

    fn id(&self, host: usize) -> Option<ReplicaId> {
        self.hosts[host].as_ref().map(|n| n.id().clone())
    }

    fn node(&mut self, host: usize) -> Result<&mut Node<Meta>, Box<dyn Error>> {
        Ok(self.hosts[host].as_mut().ok_or("that host is down")?)
    }

    /// Kills a host; the others' transports notice the lost link (after
    /// what was already on its way, as TCP would).
    fn crash(&mut self, host: usize) -> Result<(), Box<dyn Error>> {
        let id = self.id(host).ok_or("that host is down")?;
        self.hosts[host] = None;
        self.in_flight
            .retain(|_, (from, to, _)| *from != host && *to != host);
        let now = self.now;
        for node in self.hosts.iter_mut().flatten() {
            node.link_lost(now, &id);
        }
        Ok(())
    }

    /// Runs the cluster for `span` of virtual time, printing what each host
    /// publishes.
    fn run_for(&mut self, span: Duration) {
        let until = self.now + span;
        loop {
            self.flush();
            let timer = (0..self.hosts.len())
                .filter_map(|h| self.hosts[h].as_ref().map(|n| (n.poll_timeout(), h)))
                .min();
            let message = self.in_flight.keys().next().map(|k| k.0);
            let next = match (timer, message) {
                (Some((t, _)), Some(m)) => t.min(m),
                (Some((t, _)), None) => t,
                (None, Some(m)) => m,
                (None, None) => break,
            };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            if message == Some(next) {
                if let Some((_, (from, to, bytes))) = self.in_flight.pop_first()
                    && let Some(sender) = self.id(from)
                    && let Some(node) = self.hosts[to].as_mut()
                {
                    // A refused message is counted by the node; the demo
                    // network only ever carries valid ones.
                    let _ = node.handle_message(now, &sender, &bytes);
                }
            } else if let Some((_, host)) = timer
                && let Some(node) = self.hosts[host].as_mut()
            {
                node.handle_timeout(now);
            }
        }
        self.now = until;
    }

    /// Moves every host's output onto the network and prints its events.
    fn flush(&mut self) {
        for host in 0..self.hosts.len() {
            let mut outgoing = Vec::new();
            let mut events = Vec::new();
            if let Some(node) = self.hosts[host].as_mut() {
                while let Some(t) = node.poll_transmit() {
                    outgoing.push(t);
                }
                while let Some(e) = node.poll_event() {
                    events.push(e);
                }
            }
            for t in outgoing {
                let targets: Vec<usize> = match &t.destination {
                    Destination::All => (0..self.hosts.len()).filter(|&h| h != host).collect(),
                    Destination::Replica(id) => (0..self.hosts.len())
                        .filter(|&h| self.id(h).as_ref() == Some(id))
                        .collect(),
                };
                for to in targets {
                    self.send(host, to, t.bytes.clone());
                }
            }
            for event in events {
                self.print(host, event);
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        if self.rng.below(100) < 5 {
            return;
        }
        let copies = if self.rng.below(100) < 5 { 2 } else { 1 };
        for _ in 0..copies {
            let delay = Duration::from_millis(5 + self.rng.below(76));
            self.sequence += 1;
            self.sent_bytes += bytes.len() as u64;
            self.in_flight
                .insert((self.now + delay, self.sequence), (from, to, bytes.clone()));
        }
    }

    fn print(&self, host: usize, event: Event<Meta>) {
        let at = format!("{:>6.2}s {}", self.now.as_secs_f64(), self.names[host]);
        match event {
            Event::Diff(diff) => {
                for (topic, p) in diff.joins() {
                    println!("{at}: + {} on {topic} ({})", p.key(), p.meta().device);
                }
                for (topic, p) in diff.leaves() {
                    println!("{at}: - {} on {topic} ({})", p.key(), p.meta().device);
                }
                for (topic, u) in diff.updates() {
                    println!(
                        "{at}: ~ {} on {topic} ({} -> {})",
                        u.key(),
                        u.old_meta().device,
                        u.meta().device
                    );
                }
            }
            Event::ReplicaDown(id) => println!("{at}: {} is down", id.name()),
            Event::ReplicaUp(id) => println!("{at}: {} is up", id.name()),
            Event::ReplicaPurged(id, reason) => {
                println!("{at}: {} is gone ({reason:?})", id.name())
            }
            other => println!("{at}: {other:?}"),
        }
    }

    /// The list of `TOPIC` as each running host sees it.
    fn lists(&self) -> Vec<(usize, Vec<String>)> {
        let mut out = Vec::new();
        for (host, node) in self.hosts.iter().enumerate() {
            let Some(node) = node else { continue };
            let mut rows = Vec::new();
            for group in node.state().list(TOPIC) {
                for p in group.presences {
                    rows.push(format!("{} ({})", group.key, p.meta.device));
                }
            }
            out.push((host, rows));
        }
        out
    }

    fn show(&self) -> bool {
        let lists = self.lists();
        for (host, rows) in &lists {
            println!("  {} lists: {}", self.names[*host], rows.join(", "));
        }
        let same = lists.windows(2).all(|w| w[0].1 == w[1].1);
        println!("  converged: {}", if same { "yes" } else { "no" });
        same
    }
}

fn device(name: &str) -> Meta {
    Meta {
        device: name.to_string(),
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let seed = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse::<u64>()
            .map_err(|_| format!("usage: simulated [SEED], SEED a u64, not {arg}"))?,
        None => 1,
    };
    let mut cluster = Cluster::new(seed)?;
    let period = cluster.config.broadcast_period;
    println!(
        "3 replicas, broadcast every {:?}, down after {:?} without a sign of life; seed {seed}",
        period, cluster.config.down_period
    );

    println!("\n-- users arrive");
    cluster.run_for(period * 2);
    cluster.node(0)?.track(TOPIC, "alice", device("web"))?;
    cluster.node(1)?.track(TOPIC, "bob", device("desktop"))?;
    let carol = cluster.node(2)?.track(TOPIC, "carol", device("phone"))?;
    cluster.node(2)?.track(TOPIC, "alice", device("tablet"))?;
    cluster.run_for(period * 3);
    let mut converged = cluster.show();

    println!("\n-- carol switches device, bob leaves");
    cluster.node(2)?.update(&carol, device("laptop"))?;
    let bob: Vec<_> = cluster
        .node(1)?
        .state()
        .get(TOPIC, "bob")
        .iter()
        .map(|p| p.id.clone())
        .collect();
    cluster.node(1)?.untrack_many(&bob)?;
    cluster.run_for(period * 3);
    converged &= cluster.show();

    println!("\n-- node-3 crashes");
    let crashed_at = cluster.now;
    cluster.crash(2)?;
    cluster.run_for(period * 4);
    println!(
        "  (the lost link was reported at {:.2}s; its users must leave within 3 periods)",
        crashed_at.as_secs_f64()
    );
    converged &= cluster.show();

    println!("\n-- node-3 restarts as a new incarnation; its users come back");
    cluster.start(2)?;
    cluster.node(2)?.track(TOPIC, "carol", device("laptop"))?;
    cluster.run_for(period * 4);
    converged &= cluster.show();

    println!(
        "\n{} bytes sent over {:.1}s of virtual time",
        cluster.sent_bytes,
        cluster.now.as_secs_f64()
    );
    if converged {
        println!("converged: yes");
        Ok(())
    } else {
        Err("the replicas did not converge".into())
    }
}
