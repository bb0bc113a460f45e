//! Many replicas in one process: a shared in-memory network with cuts and
//! partitions, for tests and single-process clusters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Transport, TransportEvent};
use crate::protocol::Destination;
use crate::{ReplicaId, ReplicaName};

/// Messages waiting per member before more are dropped.
const QUEUE_LEN: usize = 4096;

/// A network in memory. Each member joins with [`MemoryNetwork::join`] and
/// gets a [`MemoryTransport`]; links between names can be cut (both ways or
/// one way) and healed.
///
/// ```
/// use attendance::transport::MemoryNetwork;
/// use attendance::{Incarnation, ReplicaId, ReplicaName};
///
/// let network = MemoryNetwork::new();
/// let id = |n: &str| ReplicaId::new(ReplicaName::new(n).unwrap(), Incarnation::new(1, 1));
/// let _a = network.join(id("a"));
/// let _b = network.join(id("b"));
/// network.cut("a", "b"); // both report the lost link
/// network.heal(); // and reconnect
/// ```
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    hub: Arc<Mutex<Hub>>,
}

#[derive(Default)]
struct Hub {
    members: BTreeMap<ReplicaId, mpsc::Sender<TransportEvent>>,
    /// Links that carry nothing, by name: `(from, to)`.
    blocked: BTreeSet<(ReplicaName, ReplicaName)>,
}

impl Hub {
    fn open(&self, from: &ReplicaId, to: &ReplicaId) -> bool {
        !self
            .blocked
            .contains(&(from.name().clone(), to.name().clone()))
    }

    /// The member a message for `to` goes to: `to` itself, or the member
    /// of its name (it moved to a newer incarnation of that name, and its
    /// link is still the one it joined with).
    fn resolve<'a>(&'a self, to: &'a ReplicaId) -> Option<&'a ReplicaId> {
        if self.members.contains_key(to) {
            return Some(to);
        }
        self.members.keys().find(|m| m.name() == to.name())
    }

    fn tell(&self, to: &ReplicaId, event: TransportEvent) {
        if let Some(tx) = self.members.get(to) {
            // A member too slow to keep up loses messages, as over a real
            // network; the protocol catches up.
            let _ = tx.try_send(event);
        }
    }
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        // A panic elsewhere while holding the lock leaves the hub usable.
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a member; it and every member it can reach hear of each other.
    pub fn join(&self, id: ReplicaId) -> MemoryTransport {
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        let mut hub = self.hub();
        hub.members.insert(id.clone(), tx);
        let others: Vec<ReplicaId> = hub.members.keys().filter(|o| **o != id).cloned().collect();
        for other in others {
            if hub.open(&id, &other) && hub.open(&other, &id) {
                hub.tell(&other, TransportEvent::Connected(id.clone()));
                hub.tell(&id, TransportEvent::Connected(other));
            }
        }
        MemoryTransport {
            id,
            rx,
            network: self.clone(),
        }
    }

    /// Cuts the link between two names both ways; both ends hear of it.
    pub fn cut(&self, a: &str, b: &str) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
        let hub = self.hub();
        let named = |n: &str| -> Vec<ReplicaId> {
            hub.members
                .keys()
                .filter(|id| id.name().as_str() == n)
                .cloned()
                .collect()
        };
        for x in named(a) {
            for y in named(b) {
                hub.tell(&x, TransportEvent::LinkLost(y.clone()));
                hub.tell(&y, TransportEvent::LinkLost(x.clone()));
            }
        }
    }

    /// Silently drops everything from `a` to `b`.
    pub fn cut_one_way(&self, a: &str, b: &str) {
        let (Ok(a), Ok(b)) = (ReplicaName::new(a), ReplicaName::new(b)) else {
            return;
        };
        self.hub().blocked.insert((a, b));
    }

    /// Splits the members into groups that cannot reach each other.
    pub fn partition(&self, groups: &[&[&str]]) {
        for (i, g) in groups.iter().enumerate() {
            for other in &groups[i + 1..] {
                for a in g.iter() {
                    for b in other.iter() {
                        self.cut(a, b);
                    }
                }
            }
        }
    }

    /// Restores every link; the members that were cut apart reconnect.
    pub fn heal(&self) {
        let mut hub = self.hub();
        let blocked = std::mem::take(&mut hub.blocked);
        for (a, b) in blocked {
            let ids = |n: &ReplicaName| -> Vec<ReplicaId> {
                hub.members
                    .keys()
                    .filter(|id| id.name() == n)
                    .cloned()
                    .collect()
            };
            for x in ids(&a) {
                for y in ids(&b) {
                    hub.tell(&y, TransportEvent::Connected(x.clone()));
                }
            }
        }
    }
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hub = self.hub();
        f.debug_struct("MemoryNetwork")
            .field("members", &hub.members.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// One member's end of a [`MemoryNetwork`].
#[derive(Debug)]
pub struct MemoryTransport {
    id: ReplicaId,
    rx: mpsc::Receiver<TransportEvent>,
    network: MemoryNetwork,
}

impl Transport for MemoryTransport {
    fn send(&mut self, to: &Destination, bytes: Bytes) {
        let hub = self.network.hub();
        let message = || TransportEvent::Message {
            from: self.id.clone(),
            bytes: bytes.clone(),
        };
        match to {
            Destination::All => {
                for other in hub.members.keys() {
                    if *other != self.id && hub.open(&self.id, other) {
                        hub.tell(other, message());
                    }
                }
            }
            Destination::Replica(other) => {
                if let Some(other) = hub.resolve(other)
                    && hub.open(&self.id, other)
                {
                    hub.tell(other, message());
                }
            }
        }
    }

    async fn recv(&mut self) -> Option<TransportEvent> {
        self.rx.recv().await
    }

    async fn close(&mut self) {
        let mut hub = self.network.hub();
        hub.members.remove(&self.id);
        let others: Vec<ReplicaId> = hub.members.keys().cloned().collect();
        for other in others {
            hub.tell(&other, TransportEvent::LinkLost(self.id.clone()));
        }
        self.rx.close();
    }
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        let mut hub = self.network.hub();
        if hub.members.remove(&self.id).is_some() {
            let others: Vec<ReplicaId> = hub.members.keys().cloned().collect();
            for other in others {
                hub.tell(&other, TransportEvent::LinkLost(self.id.clone()));
            }
        }
    }
}
