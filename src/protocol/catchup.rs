//! Catch-ups: answering requests, applying replies, and asking holders that
//! are ahead.

use std::collections::BTreeMap;
use std::time::Duration;

use super::message::{Message, ReplyChunk};
use super::remote::{Assembly, Request};
use super::{
    Destination, ENVELOPE_MARGIN, Event, MIN_ENTRY_BYTES, Node, ProtocolError, ReplicaStatus,
    Served,
};
use crate::state::{Delta, Meta, ReplicaId};
use crate::wire;

impl<M: Meta> Node<M> {
    // --- receiving ---------------------------------------------------------

    /// Answers a catch-up request from `requester`, the authenticated
    /// peer that sent it, and to no one else.
    pub(super) fn on_request(
        &mut self,
        now: Duration,
        requester: &ReplicaId,
        replica: &ReplicaId,
        since: u64,
    ) {
        let held = self.held(replica);
        let showable = replica == self.id()
            || self
                .remotes
                .get(replica)
                .is_some_and(|r| !matches!(r.status, ReplicaStatus::Purged(_)));
        if !showable || held <= since {
            return;
        }
        // One answer per requester and replica until it could have been
        // applied: a request repeated sooner than an honest requester
        // retries (a timeout after its own send, so about a timeout after
        // our answer; half of it leaves room for uneven delays) buys
        // nothing twice.
        let key = (requester.clone(), replica.clone());
        if let Some(last) = self.served.get(&key)
            && since < last.to
            && now.saturating_sub(last.at) < self.config.catchup_timeout / 2
        {
            self.metrics.catchups_declined += 1;
            return;
        }
        // An answer already found too large is not encoded again.
        if self
            .oversized
            .get(replica)
            .is_some_and(|&(from, at)| at == held && since <= from)
        {
            self.metrics.catchups_declined += 1;
            return;
        }
        let (delta, full) = match self.state.changes_since(replica, since) {
            Some(d) => (d, false),
            None => {
                // Nor is a whole sub-state whose smallest possible
                // encoding is too large.
                let least = self
                    .state
                    .presences_of(replica)
                    .saturating_mul(MIN_ENTRY_BYTES);
                if least > self.config.max_catchup_bytes {
                    self.metrics.catchups_declined += 1;
                    return;
                }
                match self.state.snapshot_of(replica) {
                    Some(d) => (d, true),
                    None => return,
                }
            }
        };
        let Ok(bytes) = wire::encode(&delta) else {
            return;
        };
        if bytes.len() > self.config.max_catchup_bytes {
            self.oversized.insert(replica.clone(), (since, held));
            self.metrics.catchups_too_large += 1;
            return;
        }
        if full {
            self.metrics.full_transfers_served += 1;
        }
        self.served.insert(key, Served { to: held, at: now });
        self.metrics.catchups_served += 1;
        let piece = self.config.max_message_bytes - ENVELOPE_MARGIN;
        let total = bytes.len() as u64;
        for (i, part) in bytes.chunks(piece).enumerate() {
            let chunk = ReplyChunk {
                replica: replica.clone(),
                since,
                to: held,
                total,
                offset: (i * piece) as u64,
                bytes: part.to_vec(),
            };
            self.send(
                Destination::Replica(requester.clone()),
                &Message::CatchUpReply(chunk),
            );
        }
    }

    /// A piece of a catch-up answer from `sender`. Pieces are kept only
    /// for the request outstanding, from the holder it was sent to, and go
    /// with it when it times out.
    pub(super) fn on_reply(
        &mut self,
        now: Duration,
        sender: &ReplicaId,
        chunk: ReplyChunk,
    ) -> Result<(), ProtocolError> {
        let ReplyChunk {
            replica,
            since,
            to,
            total,
            offset,
            bytes,
        } = chunk;
        let end = offset.checked_add(bytes.len() as u64);
        if total > self.config.max_catchup_bytes as u64 || end.is_none_or(|e| e > total) {
            return Err(ProtocolError::Invalid(
                "a catch-up piece lies outside its answer",
            ));
        }
        if since >= to {
            return Err(ProtocolError::Invalid(
                "a catch-up answer must not be empty",
            ));
        }
        let Some(r) = self.remotes.get_mut(&replica) else {
            return Ok(());
        };
        // Only the answer asked for, and from a third party no further
        // than it said it holds (the owner may have changed more since its
        // last heartbeat).
        let asked = r.request.as_ref().is_some_and(|q| {
            &q.holder == sender && q.since == since && (to <= q.claimed || sender == &replica)
        });
        if !asked {
            self.metrics.unrequested_pieces += 1;
            return Ok(());
        }
        let same = r
            .assembly
            .as_ref()
            .is_some_and(|a| a.since == since && a.to == to && a.total == total);
        if !same {
            r.assembly = Some(Assembly {
                since,
                to,
                total,
                pieces: BTreeMap::new(),
            });
        }
        let assembly = r.assembly.as_mut().expect("set above");
        let stored: u64 = assembly.pieces.values().map(|p| p.len() as u64).sum();
        if stored + bytes.len() as u64 > total.saturating_mul(2) {
            r.assembly = None;
            return Err(ProtocolError::Invalid("catch-up pieces overlap too much"));
        }
        let Some(whole) = assembly.add(offset, bytes) else {
            return Ok(());
        };
        r.assembly = None;
        let result = self.apply_answer(now, &replica, (since, to), &whole);
        if result.is_err() {
            // Asking the same holder again at once would get the same
            // answer: back off, and try another holder first.
            self.metrics.catchups_refused += 1;
            if let Some(r) = self.remotes.get_mut(&replica) {
                r.request = None;
                r.tried.insert(sender.clone());
                r.backoff_until = Some(now + self.config.catchup_timeout);
            }
        }
        result
    }

    /// Decodes a whole catch-up answer and applies it.
    fn apply_answer(
        &mut self,
        now: Duration,
        replica: &ReplicaId,
        (since, to): (u64, u64),
        whole: &[u8],
    ) -> Result<(), ProtocolError> {
        let delta: Delta<M> = wire::decode_with_limit(whole, self.config.max_catchup_bytes)?;
        let exact = delta.parts.iter().all(|p| {
            &p.replica == replica && p.context.ranges().len() == 1 && p.context.max() == to
        });
        if !exact || delta.parts.len() != 1 {
            return Err(ProtocolError::Invalid(
                "a catch-up answer holds one replica's counters up to its end",
            ));
        }
        let lowest = delta.parts[0].context.min().unwrap_or(1);
        self.apply_catchup(now, replica, since, to, lowest, delta)
    }

    fn apply_catchup(
        &mut self,
        now: Duration,
        replica: &ReplicaId,
        since: u64,
        to: u64,
        lowest: u64,
        delta: Delta<M>,
    ) -> Result<(), ProtocolError> {
        let held = self.held(replica);
        let Some(r) = self.remotes.get_mut(replica) else {
            return Ok(());
        };
        r.request = None;
        if r.readmit {
            if since != 0 || lowest != 1 || to < r.target {
                return Ok(());
            }
            let diff = self.state.readmit(delta)?;
            let Some(r) = self.remotes.get_mut(replica) else {
                return Ok(());
            };
            r.readmit = false;
            r.tried.clear();
            r.set_status(ReplicaStatus::Up, now);
            self.publish(diff);
            self.events.push_back(Event::ReplicaUp(replica.clone()));
            self.after_merge(now, replica);
            return Ok(());
        }
        if r.status.is_dead() || matches!(r.status, ReplicaStatus::Purged(_)) {
            return Ok(());
        }
        // Only an answer that extends what is held keeps the view a prefix.
        if to <= held || lowest > held.saturating_add(1) {
            return Ok(());
        }
        r.tried.clear();
        let diff = self.state.merge(delta)?;
        self.publish(diff);
        self.after_merge(now, replica);
        Ok(())
    }

    // --- catch-ups ---------------------------------------------------------

    /// Asks one holder that is ahead for each replica this one is behind
    /// on, one request per replica at a time.
    pub(super) fn request_catchups(&mut self, now: Duration) {
        let period = self.config.broadcast_period;
        let mut requests = Vec::new();
        for (id, r) in &self.remotes {
            if r.request.is_some() || r.status.is_dead() {
                continue;
            }
            if r.backoff_until.is_some_and(|t| now < t) {
                continue;
            }
            if matches!(r.status, ReplicaStatus::Purged(_)) && !r.readmit {
                continue;
            }
            let held = if r.readmit { 0 } else { self.held(id) };
            let needed = if r.readmit {
                r.target.max(1)
            } else {
                held.saturating_add(1)
            };
            // The owner's word is acted on at once; a third party's after a
            // period, when the owner's own interval had time to arrive.
            let ready = |holder: &ReplicaId, c: u64, seen: Duration| {
                c >= needed && (holder == id || now.saturating_sub(seen) >= period)
            };
            let mut candidates: Vec<(&ReplicaId, u64)> = r
                .holders
                .iter()
                .filter(|(h, (c, seen))| ready(h, *c, *seen))
                .map(|(h, (c, _))| (h, *c))
                .collect();
            if candidates.is_empty() {
                continue;
            }
            // Holders not tried yet; when every one was, a new round.
            let fresh = candidates.iter().any(|(h, _)| !r.tried.contains(*h));
            if fresh {
                candidates.retain(|(h, _)| !r.tried.contains(*h));
            }
            // The most advanced holder; the smallest id among equals.
            candidates.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            if let Some(&(holder, claimed)) = candidates.first() {
                requests.push((id.clone(), holder.clone(), held, claimed, !fresh));
            }
        }
        for (id, holder, since, claimed, new_round) in requests {
            if new_round && let Some(r) = self.remotes.get_mut(&id) {
                r.tried.clear();
            }
            let message = Message::CatchUpRequest {
                replica: id.clone(),
                since,
            };
            self.send(Destination::Replica(holder.clone()), &message);
            self.metrics.catchups_requested += 1;
            if let Some(r) = self.remotes.get_mut(&id) {
                r.request = Some(Request {
                    holder,
                    since,
                    claimed,
                    sent_at: now,
                });
            }
        }
    }

    /// Gives up on requests unanswered for `catchup_timeout`; the next
    /// holder is asked.
    pub(super) fn check_requests(&mut self, now: Duration) {
        for r in self.remotes.values_mut() {
            if let Some(req) = &r.request
                && now.saturating_sub(req.sent_at) >= self.config.catchup_timeout
            {
                r.tried.insert(req.holder.clone());
                r.request = None;
                r.assembly = None;
            }
        }
    }
}
