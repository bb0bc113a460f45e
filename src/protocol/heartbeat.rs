//! Broadcasting intervals, sending heartbeats and taking in those of peers.
//!
//! A heartbeat is a dozen bytes: the sender's heartbeat number and counter
//! and a hash of its view. Entries about other replicas go only where they
//! are needed: relays of the replicas a peer asked to hear of, a digest of
//! the whole view when this replica's differs from most peers' (or it just
//! started), and the answer to a peer's digest.

use std::collections::BTreeMap;
use std::time::Duration;

use super::message::{DigestEntry, EntryId, EntryState, Heartbeat, Message};
use super::remote::{id_hash, view_term};
use super::{
    Beat, Destination, ENVELOPE_MARGIN, Heard, MAX_INTRODUCTIONS, MAX_WANTS, MessageKind, Node,
    ReplicaStatus, ReplicaStore, Work, codec, millis,
};
use crate::state::{Delta, Meta, PurgeReason, ReplicaId};

/// Changes this replica made through its store, left to the driver to
/// encode as intervals outside the node's lock, then hand to
/// [`Node::finish_broadcast`].
#[derive(Clone)]
pub(crate) struct BroadcastWork<M> {
    from: u64,
    to: u64,
    /// The changes, each with the counter its interval starts after.
    chunks: Vec<(u64, Delta<M>)>,
    sender: Option<ReplicaId>,
    /// No peer is linked: nothing is encoded (peers that come catch up).
    unheard: bool,
}

impl<M: Meta> BroadcastWork<M> {
    /// The interval messages, one per counter range, and the last counter
    /// they reach.
    pub(crate) fn encode(self) -> (u64, Vec<Vec<u8>>) {
        if self.unheard {
            return (self.to, Vec::new());
        }
        let mut chunks = self.chunks;
        chunks.sort_by_key(|(after, _)| *after);
        let mut groups: Vec<(u64, Delta<M>)> = Vec::new();
        for (after, delta) in chunks {
            match groups.last_mut() {
                Some((last, joined)) if *last == after => joined.join(delta),
                _ => groups.push((after, delta)),
            }
        }
        let starts: Vec<u64> = groups.iter().map(|(after, _)| *after).collect();
        let mut messages = Vec::with_capacity(groups.len());
        for (i, (after, delta)) in groups.into_iter().enumerate() {
            let from = if i == 0 {
                self.from
            } else {
                after.max(self.from)
            };
            let to = starts.get(i + 1).copied().unwrap_or(self.to);
            if from >= to {
                continue;
            }
            let message = Message::Interval { from, to, delta };
            if let Ok(bytes) = codec::encode(self.sender.as_ref(), &message) {
                messages.push(bytes);
            }
        }
        (self.to, messages)
    }
}

impl<M: Meta, S: ReplicaStore<M>> Node<M, S> {
    // --- broadcast and heartbeats -----------------------------------------

    /// Broadcasts this replica's changes not sent yet. A node that defers
    /// work leaves the encoding to its driver unless `now` says otherwise
    /// (a leaving replica sends everything before its last heartbeat).
    pub(super) fn flush(&mut self, now: bool) {
        for chunk in std::mem::take(&mut self.pending) {
            let message = Message::Interval {
                from: chunk.from,
                to: chunk.to,
                delta: chunk.delta,
            };
            self.send(Destination::All, &message);
            self.broadcast = chunk.to;
        }
        if let Some((to, chunks)) = self.state.take_local() {
            let work = BroadcastWork {
                from: self.broadcast,
                to,
                chunks,
                sender: self.named_sender(),
                unheard: self.links.is_empty(),
            };
            if self.defer && !now {
                self.work.push_back(Work::Broadcast(work));
            } else {
                let (to, messages) = work.encode();
                self.finish_broadcast(to, messages);
            }
        }
    }

    /// Sends intervals encoded by [`BroadcastWork::encode`], which reach
    /// counter `to`.
    pub(crate) fn finish_broadcast(&mut self, to: u64, messages: Vec<Vec<u8>>) {
        for bytes in messages {
            self.send_encoded(Destination::All, MessageKind::Interval, bytes);
        }
        self.broadcast = self.broadcast.max(to);
    }

    /// The periodic broadcast: pending changes, then a heartbeat to every
    /// peer, a digest instead to one peer when this view keeps differing
    /// from most peers'.
    pub(super) fn tick(&mut self, now: Duration) {
        self.flush(false);
        self.beat += 1;
        self.wants = self.wanted(now);
        // Once a period, not once a heartbeat: it walks every replica.
        self.own_view = self.view();
        let probe = self.probe_due(now);
        let peers: Vec<ReplicaId> = self.links.keys().cloned().collect();
        for peer in peers {
            if probe.as_ref() == Some(&peer) {
                self.send_probe(now, &peer, false);
            } else {
                self.send_heartbeat(now, &peer, Beat::Plain);
            }
        }
    }

    /// A hash of this replica's view: itself at the counter broadcast, and
    /// every replica shown or being caught up at the counter held. Two
    /// replicas that hold the same data of the same live replicas have the
    /// same view.
    pub(super) fn view(&self) -> u32 {
        let mut sum = view_term(id_hash(self.id()), self.broadcast);
        for (id, r) in &self.remotes {
            if matches!(r.status, ReplicaStatus::Up | ReplicaStatus::Joining) {
                sum = sum.wrapping_add(view_term(r.hash, self.held(id)));
            }
        }
        (sum >> 32) as u32
    }

    /// The replicas shown or being caught up that have not been heard from
    /// directly for two periods, or whose link was reported lost: peers
    /// relay their heartbeats.
    fn wanted(&self, now: Duration) -> Vec<u32> {
        let fresh = self.config.broadcast_period * 2;
        let mut wants = Vec::new();
        for r in self.remotes.values() {
            if !matches!(r.status, ReplicaStatus::Up | ReplicaStatus::Joining) {
                continue;
            }
            let heard = r
                .direct
                .is_some_and(|(at, _)| now.saturating_sub(at) < fresh);
            if (!heard || r.lost_at.is_some()) && wants.len() < MAX_WANTS {
                wants.push(r.hash);
            }
        }
        wants
    }

    /// How many peers' recent views agree with this one, and per view
    /// that differs, how many peers hold it and the first of them.
    fn view_tally(&self, now: Duration) -> (usize, BTreeMap<u32, (usize, &ReplicaId)>) {
        let fresh = self.config.broadcast_period * 2;
        let mine = self.own_view;
        let mut agree = 0;
        let mut others: BTreeMap<u32, (usize, &ReplicaId)> = BTreeMap::new();
        for (peer, link) in &self.links {
            if let Some((v, at)) = link.view
                && now.saturating_sub(at) < fresh
            {
                if v == mine {
                    agree += 1;
                } else {
                    others.entry(v).or_insert((0, peer)).0 += 1;
                }
            }
        }
        (agree, others)
    }

    /// The peer to ask for its view: one holding the most common view that
    /// differs from this one, else any peer.
    pub(super) fn probe_peer(&self, now: Duration) -> Option<ReplicaId> {
        let (_, others) = self.view_tally(now);
        others
            .values()
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
            .map(|(_, peer)| (*peer).clone())
            .or_else(|| self.links.keys().next().cloned())
    }

    /// The peer to ask in place of `lost`: one that was heard from and
    /// whose link is not lost, first one whose view equals the last view
    /// `lost` sent (it holds the same data of the same replicas), then one
    /// holding the most common view, then the one heard from last.
    pub(super) fn fallback_peer(&self, now: Duration, lost: &ReplicaId) -> Option<ReplicaId> {
        let fresh = self.config.broadcast_period * 2;
        let lost_view = self.links.get(lost).and_then(|l| l.view).map(|(v, _)| v);
        let usable = |peer: &ReplicaId, link: &super::Link| {
            peer != lost
                && link.lost_unknown.is_none()
                && self.remotes.get(peer).is_some_and(|r| {
                    r.lost_at.is_none()
                        && matches!(r.status, ReplicaStatus::Up | ReplicaStatus::Joining)
                })
        };
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for (peer, link) in &self.links {
            if let Some((v, at)) = link.view
                && now.saturating_sub(at) < fresh
                && usable(peer, link)
            {
                *counts.entry(v).or_default() += 1;
            }
        }
        self.links
            .iter()
            .filter(|(peer, link)| usable(peer, link))
            .filter_map(|(peer, link)| link.view.map(|(v, at)| (peer, v, at)))
            .max_by_key(|&(peer, v, at)| {
                let same = lost_view == Some(v);
                let common = counts.get(&v).copied().unwrap_or(0);
                (same, common, at, std::cmp::Reverse(peer))
            })
            .map(|(peer, ..)| peer.clone())
    }

    /// The peer to send this period's digest to, if any: after two periods
    /// in which most peers' views differed from this one, the peer whose
    /// view is the most common among them. A replica whose view agrees with most stays
    /// quiet, so one that lags asks once rather than all of its peers
    /// asking it.
    fn probe_due(&mut self, now: Duration) -> Option<ReplicaId> {
        let (agree, others) = self.view_tally(now);
        let differ: usize = others.values().map(|(n, _)| n).sum();
        self.minority = if differ > agree { self.minority + 1 } else { 0 };
        // With a single peer there is no majority to tell who lags, and
        // its own heartbeats say what it holds.
        if self.minority < 2 || self.links.len() < 2 || self.probed_lately(now) {
            return None;
        }
        self.probe_peer(now)
    }

    /// Sends `peer` this replica's whole view, asking for what it holds
    /// beyond it. With `gather`, catch-ups of replicas not shown yet wait
    /// for the answer, to ask one holder for all of them.
    pub(super) fn send_probe(&mut self, now: Duration, peer: &ReplicaId, gather: bool) {
        self.own_view = self.view();
        self.probed = true;
        self.probe = Some((peer.clone(), now));
        if gather {
            let until = now + self.config.catchup_timeout;
            self.gather_until = Some(until);
            self.wake_at(until);
        }
        self.send_heartbeat(now, peer, Beat::Digest);
    }

    pub(super) fn send_heartbeat(&mut self, now: Duration, peer: &ReplicaId, beat: Beat) {
        let mut entries = match beat {
            Beat::Digest => self.digest_entries(now, peer),
            Beat::Plain | Beat::Leaving => self.relays(now, peer),
        };
        entries.extend(self.successors(now, peer));
        self.send_entries(peer, beat, false, entries);
    }

    fn send_entries(
        &mut self,
        peer: &ReplicaId,
        beat: Beat,
        answer: bool,
        mut entries: Vec<DigestEntry>,
    ) {
        // Past max_message_bytes (thousands of replicas under a small
        // limit), a different window of the entries goes every period.
        let budget = self.config.max_message_bytes - ENVELOPE_MARGIN - 4 * self.wants.len();
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
            leaving: beat == Beat::Leaving,
            digest: beat == Beat::Digest,
            answer,
            view: self.own_view,
            wants: self.wants.clone(),
            entries,
        };
        self.send(Destination::Replica(peer.clone()), &Message::Heartbeat(hb));
    }

    /// An entry about `id` as this replica knows it.
    fn entry(
        &self,
        now: Duration,
        id: &ReplicaId,
        name: EntryId,
        state: EntryState,
    ) -> Option<DigestEntry> {
        let r = self.remotes.get(id)?;
        let age = r
            .beat_at
            .map_or(u64::from(u32::MAX), |t| millis(now.saturating_sub(t)));
        Some(DigestEntry {
            id: name,
            beat: r.beat,
            age_ms: age,
            state,
        })
    }

    fn held_state(&self, id: &ReplicaId) -> EntryState {
        match self.held(id) {
            0 => EntryState::NotAhead,
            held => EntryState::Counter(held),
        }
    }

    /// Fresh heartbeats of the replicas `peer` asked to hear of.
    fn relays(&self, now: Duration, peer: &ReplicaId) -> Vec<DigestEntry> {
        let fresh = self.config.broadcast_period * 2;
        let Some(link) = self.links.get(peer) else {
            return Vec::new();
        };
        link.wants
            .iter()
            .filter_map(|id| {
                let r = self.remotes.get(id)?;
                let heard = r.beat_at.is_some_and(|t| now.saturating_sub(t) < fresh);
                if !heard || matches!(r.status, ReplicaStatus::Purged(_)) {
                    return None;
                }
                self.entry(now, id, EntryId::Hash(r.hash), self.held_state(id))
            })
            .collect()
    }

    /// A peer always hears of newer incarnations of its own name, so that
    /// one restarted with a clock behind moves above them.
    fn successors(&self, now: Duration, peer: &ReplicaId) -> Vec<DigestEntry> {
        self.remotes
            .range(peer.clone()..)
            .skip(1)
            .take_while(|(id, _)| id.name() == peer.name())
            .filter_map(|(id, _)| {
                self.entry(now, id, EntryId::Full(id.clone()), EntryState::NotAhead)
            })
            .collect()
    }

    /// Every replica known here but `peer`: the counter held, or dead for
    /// one left or replaced within `down_period`.
    fn digest_entries(&self, now: Duration, peer: &ReplicaId) -> Vec<DigestEntry> {
        let mut entries = Vec::with_capacity(self.remotes.len());
        for (id, r) in &self.remotes {
            if id == peer || id.name() == peer.name() {
                continue;
            }
            let state = match r.status {
                ReplicaStatus::Purged(_) if r.status.is_dead() => {
                    if now.saturating_sub(r.since) >= self.config.down_period {
                        continue;
                    }
                    EntryState::Dead
                }
                ReplicaStatus::Purged(_) => continue,
                _ => self.held_state(id),
            };
            entries.extend(self.entry(now, id, EntryId::Full(id.clone()), state));
        }
        entries
    }

    /// Answers `peer`'s digest: what this replica holds beyond it, the
    /// replicas it did not name, and the deaths it missed.
    fn send_answer(
        &mut self,
        now: Duration,
        peer: &ReplicaId,
        claims: &BTreeMap<ReplicaId, EntryState>,
    ) {
        self.own_view = self.view();
        let mut entries = Vec::new();
        for (id, r) in &self.remotes {
            if id == peer || id.name() == peer.name() {
                continue;
            }
            let claim = claims.get(id);
            let name = if claim.is_some() {
                EntryId::Hash(r.hash)
            } else {
                EntryId::Full(id.clone())
            };
            let state = match r.status {
                ReplicaStatus::Purged(_) if r.status.is_dead() => match claim {
                    Some(EntryState::Dead) | None => continue,
                    Some(_) => EntryState::Dead,
                },
                ReplicaStatus::Purged(_) => continue,
                _ => {
                    let held = self.held(id);
                    match claim {
                        Some(EntryState::Counter(c)) if *c >= held => continue,
                        Some(EntryState::NotAhead) if held == 0 => continue,
                        Some(EntryState::Dead) => continue,
                        _ => self.held_state(id),
                    }
                }
            };
            entries.extend(self.entry(now, id, name, state));
        }
        entries.extend(self.successors(now, peer));
        self.send_entries(peer, Beat::Plain, true, entries);
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
        let wants: Vec<ReplicaId> = hb
            .wants
            .iter()
            .take(MAX_WANTS)
            .filter_map(|h| match self.hashes.get(h) {
                Some(Some(id)) if id != link && id != &sender => Some(id.clone()),
                _ => None,
            })
            .collect();
        let known = self.links.entry(link.clone()).or_default();
        known.view = Some((hb.view, now));
        known.wants = wants;
        if let Some(r) = self.remotes.get_mut(&sender) {
            r.direct = Some((now, hb.counter));
        }
        self.observe_beat(now, &sender, hb.beat, Heard::Directly, Some(hb.counter));
        self.note_holder(now, &sender, &sender, Some(hb.counter));
        // The answer to this replica's own digest was asked for: its
        // introductions are not budgeted.
        let solicited = hb.answer && self.probe.as_ref().is_some_and(|(p, _)| p == link);
        // Introductions are budgeted per link and period, so that many
        // heartbeats in a period do not add up.
        let period = self.config.broadcast_period;
        let (window, mut introduced) = match self.links.get(link).and_then(|l| l.introductions) {
            Some((at, n)) if now.saturating_sub(at) < period => (at, n),
            _ => (now, 0),
        };
        let mut claims = BTreeMap::new();
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
            if hb.digest {
                claims.insert(id.clone(), entry.state);
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
            // up on fresh news of it, and only a few new ones a period, so
            // that made-up ids cost little and fill nothing.
            let known = self.remotes.contains_key(&id)
                || (fresh
                    && (solicited || introduced < MAX_INTRODUCTIONS)
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
            self.observe_beat(
                now,
                &id,
                entry.beat,
                Heard::Relayed(entry.age_ms),
                advertised,
            );
            self.note_holder(now, &id, &sender, advertised);
        }
        if let Some(l) = self.links.get_mut(link) {
            l.introductions = Some((window, introduced));
        }
        if hb.digest {
            let answered = self
                .links
                .get(link)
                .and_then(|l| l.answered)
                .is_some_and(|at| now.saturating_sub(at) < period);
            if !answered {
                if let Some(l) = self.links.get_mut(link) {
                    l.answered = Some(now);
                }
                self.send_answer(now, link, &claims);
            }
        }
        if solicited {
            // What the peer holds is known now: ask it for all at once.
            self.probe = None;
            self.gather_until = None;
        } else if !self.probed && self.links.len() > 1 {
            // A replica that just started asks the first peer it hears
            // from for its view, to catch up on all of it from one holder
            // rather than from each owner. A single peer's heartbeat says
            // all it holds.
            self.send_probe(now, link, true);
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
