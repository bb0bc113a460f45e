//! Liveness of remote replicas (learning, suspecting, showing, marking down,
//! purging) and incarnations of this replica's name.

use std::time::Duration;

use super::remote::{Remote, id_hash};
use super::{Event, Heard, Node, ReplicaStatus, ReplicaStore, millis};
use crate::state::{Incarnation, Meta, PurgeReason, ReplicaId};

impl<M: Meta, S: ReplicaStore<M>> Node<M, S> {
    // --- liveness ----------------------------------------------------------

    /// Starts tracking a replica heard of for the first time, hidden.
    /// Older incarnations of its name are purged. False when it is stale
    /// or cannot be held.
    pub(super) fn learn(&mut self, now: Duration, id: &ReplicaId) -> bool {
        if self.remotes.contains_key(id) {
            return true;
        }
        if self.is_stale(id) {
            return false;
        }
        let older: Vec<ReplicaId> = self
            .remotes
            .iter()
            .filter(|(other, r)| other.name() == id.name() && *other < id && !r.status.is_dead())
            .map(|(other, _)| other.clone())
            .collect();
        for old in older {
            self.purge(now, &old, PurgeReason::Superseded);
        }
        if self.state.hide(id).is_err() {
            self.metrics.rejected += 1;
            return false;
        }
        let hash = id_hash(id);
        self.hashes
            .entry(hash)
            .and_modify(|slot| *slot = None)
            .or_insert_with(|| Some(id.clone()));
        let mut remote = Remote::new(hash, now);
        remote.lost_at = self.links.get_mut(id).and_then(|l| l.lost_unknown.take());
        if let Some(lost) = remote.lost_at {
            self.wake_at(lost + self.config.broadcast_period * 3);
        }
        self.remotes.insert(id.clone(), remote);
        true
    }

    /// An older incarnation of `id`'s name showed a sign of life within
    /// `down_period`. A newer one heard of only through a third party is
    /// not taken up then: it would replace the older one on hearsay (and
    /// hearsay of a death hides a replica after two quiet periods, so that
    /// alone must not open the way). A real successor speaks for itself, or
    /// the older one falls silent for good.
    pub(super) fn has_live_predecessor(&self, now: Duration, id: &ReplicaId) -> bool {
        let quiet = self.config.down_period;
        self.remotes
            .range(..id.clone())
            .rev()
            .take_while(|(other, _)| other.name() == id.name())
            .any(|(_, r)| {
                matches!(
                    r.status,
                    ReplicaStatus::Up | ReplicaStatus::Joining | ReplicaStatus::Down
                ) && now.saturating_sub(r.last_alive()) < quiet
            })
    }

    /// Data about `id` is to be ignored: it left, was replaced, or a newer
    /// incarnation of its name is known. Map lookups only: it runs for
    /// every entry of every heartbeat.
    pub(super) fn is_stale(&self, id: &ReplicaId) -> bool {
        if self.remotes.get(id).is_some_and(|r| r.status.is_dead()) {
            return true;
        }
        let newer = self
            .remotes
            .range(id.clone()..)
            .skip(1)
            .take_while(|(other, _)| other.name() == id.name())
            .next()
            .is_some();
        newer
            || self
                .state
                .purge_record(id)
                .is_some_and(|rec| rec.reason != PurgeReason::Permdown)
    }

    /// A heartbeat number of `id`. From `id` itself it is a sign of life
    /// whatever its value (a peer cannot lie about itself to others'
    /// harm). Relayed, only a fresh number above the one known counts, and
    /// only a plausible one (see `Remote::anchor`), so a lying relayer
    /// cannot push it out of reach.
    pub(super) fn observe_beat(
        &mut self,
        now: Duration,
        id: &ReplicaId,
        beat: u64,
        heard: Heard,
        advertised: Option<u64>,
    ) {
        let period = self.config.broadcast_period;
        let fresh_limit = millis(period * 2);
        let held = self.held(id);
        let Some(r) = self.remotes.get_mut(id) else {
            return;
        };
        let age_ms = match heard {
            Heard::Directly => {
                r.anchor = Some((beat, now));
                0
            }
            Heard::Relayed(age_ms) => {
                // A stale relay changes nothing: only fresh news moves what
                // is known, so a relayer cannot move the anchor below.
                if age_ms >= fresh_limit || beat <= r.beat {
                    return;
                }
                // Numbers grow one a period: from the last number heard
                // from the replica itself (or the first one relayed), a
                // relayed one may be ahead by the periods since, plus two.
                let (base, at) = *r.anchor.get_or_insert((beat, now));
                let periods = now.saturating_sub(at).as_nanos() / period.as_nanos().max(1);
                let plausible = base
                    .saturating_add(u64::try_from(periods).unwrap_or(u64::MAX))
                    .saturating_add(2);
                if beat > plausible {
                    self.metrics.implausible_beats += 1;
                    return;
                }
                age_ms
            }
        };
        let produced = now.saturating_sub(Duration::from_millis(age_ms));
        r.beat = match heard {
            Heard::Directly => beat,
            Heard::Relayed(_) => beat.max(r.beat),
        };
        r.beat_at = Some(produced);
        if age_ms >= fresh_limit {
            return;
        }
        r.alive_at = Some(r.alive_at.map_or(produced, |a| a.max(produced)));
        if r.lost_at.is_some_and(|lost| produced > lost) {
            r.lost_at = None;
        }
        let target = advertised.unwrap_or(0).max(held);
        match r.status {
            ReplicaStatus::Down => {
                r.target = target;
                r.set_status(ReplicaStatus::Joining, now);
            }
            ReplicaStatus::Purged(PurgeReason::Permdown) if !r.readmit => {
                let purged_at = self.state.purge_record(id).map_or(0, |rec| rec.counter);
                r.target = target.max(purged_at);
                r.readmit = true;
                r.set_status(ReplicaStatus::Joining, now);
                self.behind.insert(id.clone());
            }
            _ => {}
        }
        self.try_show(now, id);
    }

    /// A third party says `id` left or was replaced. That is hearsay: it
    /// hides `id` only when `id` has shown no sign of life here for two
    /// periods (so a lying member cannot evict a replica others still
    /// hear), it never purges (`Left` comes only from the owner), and it
    /// creates no record of a replica not known here.
    pub(super) fn suspect(&mut self, now: Duration, id: &ReplicaId) {
        let quiet = self.config.broadcast_period * 2;
        let Some(r) = self.remotes.get(id) else {
            return;
        };
        let live = matches!(r.status, ReplicaStatus::Up | ReplicaStatus::Joining);
        if live && now.saturating_sub(r.last_alive()) >= quiet {
            self.mark_down(now, id);
        }
    }

    /// Remembers that `holder` holds `id` up to `counter` (`None`: not
    /// ahead of us). While `id` itself is heard, a third party is believed
    /// only up to the counter `id` advertised: a lying member cannot get
    /// itself asked for data it made up about a replica that is reachable.
    pub(super) fn note_holder(
        &mut self,
        now: Duration,
        id: &ReplicaId,
        holder: &ReplicaId,
        counter: Option<u64>,
    ) {
        let held = self.held(id);
        let fresh = self.config.broadcast_period * 2;
        let Some(r) = self.remotes.get_mut(id) else {
            return;
        };
        let counter = match (counter, r.direct) {
            (Some(c), Some((at, own))) if holder != id && now.saturating_sub(at) < fresh => {
                Some(c.min(own))
            }
            _ => counter,
        };
        match counter {
            Some(c) if c > held => {
                let since = r.holders.get(holder).map_or(now, |(_, s)| *s);
                r.holders.insert(holder.clone(), (c, since));
                self.behind.insert(id.clone());
                // A third party is asked a period after it said so.
                if holder != id {
                    self.wake_at(since + self.config.broadcast_period);
                }
            }
            _ => {
                r.holders.remove(holder);
            }
        }
    }

    /// Shows a joining replica once its sub-state here reached the counter
    /// it advertised when it came back.
    pub(super) fn try_show(&mut self, now: Duration, id: &ReplicaId) {
        let held = self.held(id);
        let Some(r) = self.remotes.get_mut(id) else {
            return;
        };
        if r.status != ReplicaStatus::Joining || r.readmit || held < r.target {
            return;
        }
        r.set_status(ReplicaStatus::Up, now);
        match self.state.unhide(id) {
            Ok(diff) => self.publish(diff),
            Err(_) => self.metrics.rejected += 1,
        }
        self.events.push_back(Event::ReplicaUp(id.clone()));
    }

    pub(super) fn check_liveness(&mut self, now: Duration) {
        let three = self.config.broadcast_period * 3;
        let mut down = Vec::new();
        let mut purge = Vec::new();
        let mut forget = Vec::new();
        // The earliest deadline not reached yet: a sign of life only moves
        // a deadline later, so waking then is never too late.
        let mut next: Option<Duration> = None;
        for (id, r) in &mut self.remotes {
            let silent = now.saturating_sub(r.last_alive());
            let deadline = match r.status {
                ReplicaStatus::Up | ReplicaStatus::Joining => {
                    r.last_alive() + self.config.down_period
                }
                ReplicaStatus::Down => r.last_alive() + self.config.permdown_period,
                ReplicaStatus::Purged(_) => r.since + self.config.tombstone_ttl,
            };
            if deadline > now {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
            }
            match r.status {
                ReplicaStatus::Up | ReplicaStatus::Joining => {
                    let mut lost = false;
                    if let Some(t) = r.lost_at
                        && now >= t + three
                    {
                        // No heartbeat it produced after the report came.
                        lost = r.last_alive() <= t;
                        r.lost_at = None;
                    }
                    if silent >= self.config.down_period || lost {
                        down.push(id.clone());
                    }
                }
                ReplicaStatus::Down => {
                    if silent >= self.config.permdown_period {
                        purge.push(id.clone());
                    }
                }
                ReplicaStatus::Purged(_) => {
                    if now.saturating_sub(r.since) >= self.config.tombstone_ttl {
                        forget.push(id.clone());
                    }
                }
            }
        }
        if let Some(t) = next
            && self.next_tick.is_none_or(|tick| t < tick)
        {
            self.wake_at(t);
        }
        for id in down {
            self.mark_down(now, &id);
        }
        for id in purge {
            self.purge(now, &id, PurgeReason::Permdown);
        }
        for id in forget {
            self.state.forget_purged(&id);
            if let Some(r) = self.remotes.remove(&id)
                && self.hashes.get(&r.hash) == Some(&Some(id.clone()))
            {
                self.hashes.remove(&r.hash);
            }
        }
    }

    fn mark_down(&mut self, now: Duration, id: &ReplicaId) {
        let Some(r) = self.remotes.get_mut(id) else {
            return;
        };
        r.lost_at = None;
        if r.readmit {
            // It came back from a purge and went silent again before its
            // sub-state arrived: still purged.
            r.readmit = false;
            r.clear_transit();
            r.set_status(ReplicaStatus::Purged(PurgeReason::Permdown), now);
            self.holder_lost(now, id);
            return;
        }
        r.set_status(ReplicaStatus::Down, now);
        match self.state.hide(id) {
            Ok(diff) => self.publish(diff),
            Err(_) => self.metrics.rejected += 1,
        }
        self.events.push_back(Event::ReplicaDown(id.clone()));
        // A replica gone silent is asked for nothing more.
        self.holder_lost(now, id);
    }

    pub(super) fn purge(&mut self, now: Duration, id: &ReplicaId, reason: PurgeReason) {
        if !self.learn_dead(now, id) {
            return;
        }
        let r = self.remotes.get_mut(id).expect("learnt above");
        if r.status == ReplicaStatus::Purged(reason) || r.status.is_dead() {
            return;
        }
        r.clear_transit();
        r.readmit = false;
        r.lost_at = None;
        r.set_status(ReplicaStatus::Purged(reason), now);
        if let Ok(diff) = self.state.purge(id, reason) {
            self.publish(diff);
        }
        // A replica that left is gone; a replaced one may still be running
        // and has to hear of its successor to move above it.
        if reason == PurgeReason::Left {
            self.links.remove(id);
        }
        for other in self.remotes.values_mut() {
            other.holders.remove(id);
        }
        self.events
            .push_back(Event::ReplicaPurged(id.clone(), reason));
    }

    /// Makes sure a record exists for `id` so its death can be kept, even
    /// when it was never known here.
    fn learn_dead(&mut self, now: Duration, id: &ReplicaId) -> bool {
        if self.remotes.contains_key(id) {
            return true;
        }
        if id.name() == self.id().name() {
            return false;
        }
        let hash = id_hash(id);
        self.hashes.entry(hash).or_insert_with(|| Some(id.clone()));
        self.remotes.insert(id.clone(), Remote::new(hash, now));
        true
    }

    // --- incarnations ------------------------------------------------------

    /// A newer incarnation of this replica's name exists: move above it,
    /// unless that keeps happening (two processes share the name).
    pub(super) fn superseded(&mut self, now: Duration, newer: Incarnation) {
        // Moving above a start time at the bound would leave this replica
        // where no peer accepts its messages.
        if self.conflict
            || newer <= self.id().incarnation()
            || newer.started_ms() >= crate::state::MAX_COUNTER
        {
            return;
        }
        while self
            .reincarnations
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > self.config.down_period)
        {
            self.reincarnations.pop_front();
        }
        if self.reincarnations.len() >= 3 {
            self.conflict = true;
            self.events
                .push_back(Event::NameConflict(self.id().clone()));
            return;
        }
        let current = self.id().incarnation();
        let nonce = current.nonce().wrapping_mul(0x9e37_79b9).wrapping_add(1);
        let started = newer
            .started_ms()
            .max(current.started_ms())
            .saturating_add(1);
        let Ok(moved) = self.state.reincarnate(Incarnation::new(started, nonce)) else {
            return;
        };
        self.reincarnations.push_back(now);
        self.pending.clear();
        // Peers catch up on the new incarnation from its heartbeats.
        self.broadcast = self.state.counter();
        let id = self.id().clone();
        self.hashes.insert(id_hash(&id), Some(id.clone()));
        self.events.push_back(Event::Reincarnated {
            replica: id,
            renamed: moved.renamed,
        });
    }

    /// The counter up to which `id`'s sub-state is held here.
    pub(super) fn held(&self, id: &ReplicaId) -> u64 {
        if id == self.id() {
            return self.state.counter();
        }
        self.state.context(id).map_or(0, |c| c.contiguous_prefix())
    }
}
