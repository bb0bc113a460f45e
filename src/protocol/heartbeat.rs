//! Broadcasting intervals, sending heartbeats and taking in those of peers.

use std::collections::BTreeSet;
use std::time::Duration;

use super::message::{DigestEntry, EntryId, EntryState, Heartbeat, Message};
use super::{
    Destination, ENVELOPE_MARGIN, Heard, Link, MAX_INTRODUCTIONS, Node, ReplicaStatus, millis,
};
use crate::state::{Meta, PurgeReason, ReplicaId};

impl<M: Meta> Node<M> {
    // --- broadcast and heartbeats -----------------------------------------

    pub(super) fn flush(&mut self) {
        for chunk in std::mem::take(&mut self.pending) {
            let message = Message::Interval {
                from: chunk.from,
                to: chunk.to,
                delta: chunk.delta,
            };
            self.send(Destination::All, &message);
            self.broadcast = chunk.to;
        }
    }

    pub(super) fn send_heartbeat(&mut self, now: Duration, peer: &ReplicaId, leaving: bool) {
        let empty = Link::default();
        let link = self.links.get(peer).unwrap_or(&empty);
        let mut entries = Vec::with_capacity(self.remotes.len());
        for (id, r) in &self.remotes {
            if id == peer {
                continue;
            }
            // A peer always hears of newer incarnations of its own name, so
            // that one restarted with a clock behind moves above them.
            let successor = id.name() == peer.name() && id > peer;
            let state = match r.status {
                ReplicaStatus::Purged(_) if r.status.is_dead() => {
                    // Spread for a while; those who miss it find it down.
                    if !successor && now.saturating_sub(r.since) >= self.config.down_period {
                        continue;
                    }
                    EntryState::Dead
                }
                ReplicaStatus::Purged(_) if successor => EntryState::NotAhead,
                ReplicaStatus::Purged(_) => continue,
                _ => {
                    let held = self.held(id);
                    let known = link.counters.get(id).copied();
                    if held > 0 && known.is_none_or(|k| held > k) {
                        EntryState::Counter(held)
                    } else {
                        EntryState::NotAhead
                    }
                }
            };
            let age = r
                .beat_at
                .map_or(u64::from(u32::MAX), |t| millis(now.saturating_sub(t)));
            entries.push(DigestEntry {
                id: if link.mentioned.contains(id) {
                    EntryId::Hash(r.hash)
                } else {
                    EntryId::Full(id.clone())
                },
                beat: r.beat,
                age_ms: age,
                state,
            });
        }
        // Past max_message_bytes (thousands of replicas under a small
        // limit), a different window of the entries goes every period.
        let budget = self.config.max_message_bytes - ENVELOPE_MARGIN;
        let mut size: usize = entries.iter().map(entry_bytes).sum();
        if size > budget {
            let start = usize::try_from(self.beat).unwrap_or(0) % entries.len();
            entries.rotate_left(start);
            while size > budget {
                let Some(last) = entries.pop() else { break };
                size -= entry_bytes(&last);
            }
        }
        let hb = Heartbeat {
            beat: self.beat,
            counter: self.broadcast,
            leaving,
            entries,
        };
        self.send(Destination::Replica(peer.clone()), &Message::Heartbeat(hb));
    }

    // --- receiving ---------------------------------------------------------

    pub(super) fn on_heartbeat(
        &mut self,
        now: Duration,
        link: &ReplicaId,
        sender: ReplicaId,
        hb: Heartbeat,
    ) {
        if hb.leaving {
            self.purge(now, &sender, PurgeReason::Left);
            return;
        }
        if !self.learn(now, &sender) {
            return;
        }
        // What the peer knows is kept per authenticated link, whatever
        // incarnation it speaks as.
        self.links.entry(link.clone()).or_default();
        if let Some(r) = self.remotes.get_mut(&sender) {
            r.direct = Some((now, hb.counter));
        }
        self.observe_beat(now, &sender, hb.beat, Heard::Directly, Some(hb.counter));
        self.note_holder(now, &sender, &sender, Some(hb.counter));
        let mut mentioned = BTreeSet::new();
        // Introductions are budgeted per link and period, so that many
        // heartbeats in a period do not add up.
        let period = self.config.broadcast_period;
        let (window, mut introduced) = match self.links.get(link).and_then(|l| l.introductions) {
            Some((at, n)) if now.saturating_sub(at) < period => (at, n),
            _ => (now, 0),
        };
        for entry in hb.entries {
            let id = match entry.id {
                EntryId::Full(id) => id,
                EntryId::Hash(h) => match self.hashes.get(&h) {
                    Some(Some(id)) => id.clone(),
                    _ => continue,
                },
            };
            if id.name() == self.id().name() {
                if id.incarnation() > self.id().incarnation() {
                    self.superseded(now, id.incarnation());
                }
                continue;
            }
            if self.is_stale(&id) {
                continue;
            }
            if entry.state == EntryState::Dead {
                self.suspect(now, &id);
                continue;
            }
            let fresh = entry.age_ms < millis(self.config.broadcast_period * 2);
            // A replica first heard of through a third party is only taken
            // up on fresh news of it, and only a few new ones a heartbeat,
            // so that made-up ids cost little and fill nothing.
            let known = self.remotes.contains_key(&id)
                || (fresh
                    && introduced < MAX_INTRODUCTIONS
                    && !self.has_live_predecessor(now, &id)
                    && {
                        introduced += 1;
                        self.learn(now, &id)
                    });
            if !known {
                continue;
            }
            let advertised = match entry.state {
                EntryState::Counter(c) => Some(c),
                _ => None,
            };
            if let (Some(c), Some(link)) = (advertised, self.links.get_mut(link)) {
                let known = link.counters.entry(id.clone()).or_insert(c);
                *known = (*known).max(c);
            }
            mentioned.insert(id.clone());
            self.observe_beat(
                now,
                &id,
                entry.beat,
                Heard::Relayed(entry.age_ms),
                advertised,
            );
            self.note_holder(now, &id, &sender, advertised);
        }
        if let Some(link) = self.links.get_mut(link) {
            link.introductions = Some((window, introduced));
            link.counters.retain(|id, _| mentioned.contains(id));
            link.mentioned = mentioned;
        }
    }
}

/// An upper bound of a digest entry's encoded size.
fn entry_bytes(entry: &DigestEntry) -> usize {
    let id = match &entry.id {
        EntryId::Full(id) => 1 + id.name().as_str().len() + 10 + 5,
        EntryId::Hash(_) => 4,
    };
    // The tag, the heartbeat number and the age: varints of at most 10.
    30 + id
}
