//! Catch-ups: asking holders that are ahead (one request for all the
//! replicas a holder covers), answering requests, and applying answers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use smallvec::smallvec;

use super::message::{Message, ReplyChunk};
use super::remote::{Assembly, Batch, Request};
use super::{
    Destination, ENVELOPE_MARGIN, Event, MAX_ANSWERS, MAX_BATCHES, MIN_ENTRY_BYTES, MessageKind,
    Node, ProtocolError, ReplicaStatus, ReplicaStore, Served, Work, codec,
};
use crate::state::{Delta, Meta, ReplicaId};
use crate::wire;

/// A replica to catch up, from which counter, and who may be asked.
struct Need {
    replica: ReplicaId,
    since: u64,
    /// Holders and how far each said it holds.
    holders: Vec<(ReplicaId, u64)>,
    /// Every holder was tried: a new round.
    new_round: bool,
}

/// A catch-up request left to the driver: build the parts asked for
/// (with [`build_part`] or the store's own way), then
/// [`ServeWork::encode`] them, outside the node's lock.
#[derive(Clone)]
pub(crate) struct ServeWork {
    pub(crate) requester: ReplicaId,
    pub(crate) batch: u64,
    /// The replicas asked for that may be answered, from which counter,
    /// and how far this replica held each when asked.
    pub(crate) items: Vec<(ReplicaId, u64, u64)>,
    /// The sender the messages name (see `Node::named_sender`).
    pub(crate) sender: Option<ReplicaId>,
    pub(crate) max_catchup_bytes: usize,
    pub(crate) piece: usize,
}

/// What a part of an answer is.
pub(crate) enum Built<M> {
    /// The changes since the counter asked for (false), or the whole
    /// sub-state (true).
    Part(Delta<M>, bool),
    /// Too large to send whatever is done: declined.
    Declined,
    /// Nothing to send.
    Nothing,
}

/// A part of a catch-up answer, built from `store`: the changes of
/// `replica` since `since`, or its whole sub-state when the removal log
/// does not reach back that far, unless even the smallest encoding of
/// that is over `max_catchup_bytes`.
pub(crate) fn build_part<M: Meta, S: ReplicaStore<M>>(
    store: &S,
    replica: &ReplicaId,
    since: u64,
    max_catchup_bytes: usize,
) -> Built<M> {
    if let Some(d) = store.changes_since(replica, since) {
        return Built::Part(d, false);
    }
    // Nor is a whole sub-state whose smallest possible encoding is too
    // large.
    let least = store.presences_of(replica).saturating_mul(MIN_ENTRY_BYTES);
    if least > max_catchup_bytes {
        return Built::Declined;
    }
    match store.snapshot_of(replica) {
        Some(d) => Built::Part(d, true),
        None => Built::Nothing,
    }
}

/// A catch-up answer encoded outside the node, for [`Node::finish_serve`].
pub(crate) struct ServedAnswer {
    requester: ReplicaId,
    /// The replicas answered: how far each was held when asked, and
    /// whether the whole sub-state went.
    kept: Vec<(ReplicaId, u64, bool)>,
    /// The only replica asked for, whose answer is over the limit: from
    /// which counter, at which counter held.
    too_large: Option<(ReplicaId, u64, u64)>,
    declined: u64,
    messages: Vec<Vec<u8>>,
}

impl ServeWork {
    /// Joins and encodes the parts (each with the replica and the counter
    /// it was asked from) into reply messages, leaving out the last half
    /// until they fit; `declined` parts were too large to build.
    pub(crate) fn encode<M: Meta>(
        self,
        mut parts: Vec<(ReplicaId, u64, Delta<M>, bool)>,
        declined: u64,
    ) -> ServedAnswer {
        let mut answer = ServedAnswer {
            requester: self.requester,
            kept: Vec::new(),
            too_large: None,
            declined,
            messages: Vec::new(),
        };
        let held = |replica: &ReplicaId| {
            self.items
                .iter()
                .find(|(r, ..)| r == replica)
                .map_or(0, |(.., held)| *held)
        };
        // Too large as a whole: the first half of it, until it fits; the
        // rest is asked again.
        let bytes = loop {
            if parts.is_empty() {
                return answer;
            }
            let mut whole = Delta::default();
            for (_, _, delta, _) in &parts {
                whole.join(delta.clone());
            }
            let Ok(bytes) = wire::encode(&whole) else {
                return answer;
            };
            if bytes.len() <= self.max_catchup_bytes {
                break bytes;
            }
            if parts.len() == 1 {
                let (replica, since, ..) = &parts[0];
                answer.too_large = Some((replica.clone(), *since, held(replica)));
                return answer;
            }
            parts.truncate(parts.len() / 2);
        };
        answer.kept = parts
            .iter()
            .map(|(replica, _, _, full)| (replica.clone(), held(replica), *full))
            .collect();
        let total = bytes.len() as u64;
        for (i, part) in bytes.chunks(self.piece.max(1)).enumerate() {
            let chunk = ReplyChunk {
                batch: self.batch,
                total,
                offset: (i * self.piece) as u64,
                bytes: part.to_vec(),
            };
            let message: Message<M> = Message::CatchUpReply(chunk);
            if let Ok(bytes) = codec::encode(self.sender.as_ref(), &message) {
                answer.messages.push(bytes);
            }
        }
        answer
    }
}

/// A whole catch-up answer left to the driver to decode outside the
/// node's lock, then hand to [`Node::finish_answer`].
#[derive(Clone)]
#[cfg_attr(not(feature = "runtime"), allow(dead_code))]
pub(crate) struct AnswerWork {
    pub(crate) holder: ReplicaId,
    pub(crate) batch: u64,
    assembly: Assembly,
    max_catchup_bytes: usize,
}

impl AnswerWork {
    /// The answer's delta.
    ///
    /// # Errors
    ///
    /// When its bytes are not a valid delta.
    pub(crate) fn decode<M: Meta>(&self) -> Result<Delta<M>, ProtocolError> {
        let whole = self.assembly.whole();
        Ok(wire::decode_with_limit(&whole, self.max_catchup_bytes)?)
    }
}

impl<M: Meta, S: ReplicaStore<M>> Node<M, S> {
    // --- answering ---------------------------------------------------------

    /// Answers a catch-up request from `requester`, the authenticated
    /// peer that sent it, and to no one else: one delta for every replica
    /// asked for that this replica holds more of.
    pub(super) fn on_request(
        &mut self,
        now: Duration,
        requester: &ReplicaId,
        batch: u64,
        items: Vec<(ReplicaId, u64)>,
    ) {
        let mut asked = BTreeSet::new();
        let mut wanted = Vec::new();
        for (replica, since) in items {
            if !asked.insert(replica.clone()) {
                continue;
            }
            if self.may_answer(now, requester, &replica, since) {
                let held = self.held(&replica);
                wanted.push((replica, since, held));
            }
        }
        if wanted.is_empty() {
            return;
        }
        let work = ServeWork {
            requester: requester.clone(),
            batch,
            items: wanted,
            sender: self.named_sender(),
            max_catchup_bytes: self.config.max_catchup_bytes,
            piece: self.config.max_message_bytes - ENVELOPE_MARGIN,
        };
        if self.defer {
            self.work.push_back(Work::Serve(work));
            return;
        }
        let mut declined = 0;
        let mut parts = Vec::new();
        for (replica, since, _) in &work.items {
            match build_part(&self.state, replica, *since, work.max_catchup_bytes) {
                Built::Part(delta, full) => parts.push((replica.clone(), *since, delta, full)),
                Built::Declined => declined += 1,
                Built::Nothing => {}
            }
        }
        let answer = work.encode(parts, declined);
        self.finish_serve(now, answer);
    }

    /// Sends an answer encoded by [`ServeWork::encode`] and remembers what
    /// it answered.
    pub(crate) fn finish_serve(&mut self, now: Duration, answer: ServedAnswer) {
        let ServedAnswer {
            requester,
            kept,
            too_large,
            declined,
            messages,
        } = answer;
        self.metrics.catchups_declined += declined;
        if let Some((replica, since, held)) = too_large {
            self.oversized.insert(replica, (since, held));
            self.metrics.catchups_too_large += 1;
            return;
        }
        if kept.is_empty() {
            return;
        }
        for (replica, to, full) in kept {
            if full {
                self.metrics.full_transfers_served += 1;
            }
            self.served
                .insert((requester.clone(), replica), Served { to, at: now });
        }
        self.metrics.catchups_served += 1;
        for bytes in messages {
            self.send_encoded(
                Destination::Replica(requester.clone()),
                MessageKind::CatchUpReply,
                bytes,
            );
        }
    }

    /// Whether `requester` may be answered about `replica` since `since`:
    /// this replica holds more of it, may show it, and has not answered
    /// the same lately or found the answer too large.
    fn may_answer(
        &mut self,
        now: Duration,
        requester: &ReplicaId,
        replica: &ReplicaId,
        since: u64,
    ) -> bool {
        let held = self.held(replica);
        let showable = replica == self.id()
            || self
                .remotes
                .get(replica)
                .is_some_and(|r| !matches!(r.status, ReplicaStatus::Purged(_)));
        if !showable || held <= since {
            return false;
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
            return false;
        }
        // An answer already found too large is not encoded again.
        if self
            .oversized
            .get(replica)
            .is_some_and(|&(from, at)| at == held && since <= from)
        {
            self.metrics.catchups_declined += 1;
            return false;
        }
        true
    }

    // --- receiving ---------------------------------------------------------

    /// A piece of a catch-up answer from `sender`. Pieces are kept only
    /// from a holder with a request outstanding, for at most
    /// [`MAX_ANSWERS`] answers at once.
    pub(super) fn on_reply(
        &mut self,
        now: Duration,
        sender: &ReplicaId,
        chunk: ReplyChunk,
    ) -> Result<(), ProtocolError> {
        let ReplyChunk {
            batch,
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
        let key = (sender.clone(), batch);
        let asked = self.batches.values().any(|b| &b.holder == sender);
        let room = self.answers.contains_key(&key) || self.answers.len() < MAX_ANSWERS;
        if !asked || !room {
            self.metrics.unrequested_pieces += 1;
            return Ok(());
        }
        let assembly = self.answers.entry(key.clone()).or_insert_with(|| Assembly {
            total,
            pieces: BTreeMap::new(),
        });
        if assembly.total != total {
            *assembly = Assembly {
                total,
                pieces: BTreeMap::new(),
            };
        }
        let stored: u64 = assembly.pieces.values().map(|p| p.len() as u64).sum();
        if stored + bytes.len() as u64 > total.saturating_mul(2) {
            self.answers.remove(&key);
            return Err(ProtocolError::Invalid("catch-up pieces overlap too much"));
        }
        if !assembly.add(offset, bytes) {
            return Ok(());
        }
        let Some(assembly) = self.answers.remove(&key) else {
            return Ok(());
        };
        let work = AnswerWork {
            holder: sender.clone(),
            batch,
            assembly,
            max_catchup_bytes: self.config.max_catchup_bytes,
        };
        if self.defer {
            self.work.push_back(Work::Answer(work));
            return Ok(());
        }
        let decoded = work.decode();
        self.finish_answer(now, sender, batch, decoded)
    }

    /// [`Node::finish_answer`] as the driver calls it, with what follows
    /// every message: refusals counted, catch-ups asked for.
    ///
    /// # Errors
    ///
    /// As [`Node::finish_answer`].
    #[cfg(feature = "runtime")]
    pub(crate) fn complete_answer(
        &mut self,
        now: Duration,
        holder: &ReplicaId,
        batch: u64,
        decoded: Result<Delta<M>, ProtocolError>,
    ) -> Result<(), ProtocolError> {
        self.now = self.now.max(now);
        let result = self.finish_answer(now, holder, batch, decoded);
        if result.is_err() {
            self.metrics.rejected += 1;
        }
        self.request_catchups(now);
        result
    }

    /// Applies a whole catch-up answer from `holder` to request `batch`,
    /// decoded by [`AnswerWork::decode`]: the part of each replica asked
    /// of it.
    ///
    /// # Errors
    ///
    /// When the answer does not decode, says something impossible or
    /// breaks a limit.
    pub(crate) fn finish_answer(
        &mut self,
        now: Duration,
        sender: &ReplicaId,
        batch: u64,
        decoded: Result<Delta<M>, ProtocolError>,
    ) -> Result<(), ProtocolError> {
        let asked: Vec<ReplicaId> = self
            .batches
            .remove(&batch)
            .filter(|b| &b.holder == sender)
            .map(|b| b.replicas.into_iter().collect())
            .unwrap_or_default();
        let result = decoded.and_then(|delta| self.apply_answer(now, sender, delta));
        // What the answer to this request left out, the holder does not
        // hold or would not send: ask another.
        for replica in &asked {
            if let Some(r) = self.remotes.get_mut(replica)
                && r.request.as_ref().is_some_and(|q| q.batch == batch)
            {
                r.request = None;
                r.tried.insert(sender.clone());
                if result.is_err() {
                    // Asking the same holder again at once would get the
                    // same answer: back off, and try another holder first.
                    r.backoff_until = Some(now + self.config.catchup_timeout);
                }
            }
        }
        if result.is_err() {
            self.metrics.catchups_refused += 1;
            self.wake_at(now + self.config.catchup_timeout);
        }
        result
    }

    /// Applies the part of each replica asked of `holder` in its answer.
    fn apply_answer(
        &mut self,
        now: Duration,
        holder: &ReplicaId,
        delta: Delta<M>,
    ) -> Result<(), ProtocolError> {
        // Each part: its counters one range, from a third party no further
        // than it may go (see `send_requests`). Parts of replicas not asked
        // of this holder (any more) are left out.
        let mut checked = Vec::with_capacity(delta.parts.len());
        for p in &delta.parts {
            let request = self
                .remotes
                .get(&p.replica)
                .and_then(|r| r.request.as_ref())
                .filter(|q| &q.holder == holder);
            let Some(q) = request else {
                checked.push(None);
                continue;
            };
            let to = p.context.max();
            if p.context.ranges().len() != 1 || (to > q.claimed && holder != &p.replica) {
                return Err(ProtocolError::Invalid(
                    "a catch-up answer holds each replica's counters, one range up to what the holder may hold",
                ));
            }
            checked.push(Some((to, p.context.min().unwrap_or(1))));
        }
        let Delta { topics, parts } = delta;
        let mut first_error = None;
        for (part, check) in parts.into_iter().zip(checked) {
            let Some((to, lowest)) = check else {
                continue;
            };
            let replica = part.replica.clone();
            let one = Delta {
                topics: topics.clone(),
                parts: smallvec![part],
            };
            if let Err(e) = self.apply_catchup(now, &replica, to, lowest, one) {
                if let Some(r) = self.remotes.get_mut(&replica) {
                    r.tried.insert(holder.clone());
                    r.backoff_until = Some(now + self.config.catchup_timeout);
                }
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn apply_catchup(
        &mut self,
        now: Duration,
        replica: &ReplicaId,
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
            // Only a whole sub-state readmits it.
            if lowest != 1 || to < r.target {
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

    // --- asking ------------------------------------------------------------

    /// Asks holders that are ahead for the replicas this one is behind on:
    /// one request per replica at a time, one message per holder for all
    /// the replicas it is asked for. While a replica that just started
    /// waits for the answer to its digest, replicas not shown yet wait too,
    /// so that the peer that answers is asked for all of them at once.
    pub(super) fn request_catchups(&mut self, now: Duration) {
        let period = self.config.broadcast_period;
        if self.gather_until.is_some_and(|t| now >= t) {
            self.gather_until = None;
        }
        // Nothing can be asked until a request is answered or times out:
        // this runs after every message, so it must cost nothing then.
        if self.batches.len() >= MAX_BATCHES {
            return;
        }
        let gathering = self.gather_until.is_some();
        let mut needs = Vec::new();
        let mut settled = Vec::new();
        for id in &self.behind {
            let Some(r) = self.remotes.get(id) else {
                settled.push(id.clone());
                continue;
            };
            let purged = matches!(r.status, ReplicaStatus::Purged(_)) && !r.readmit;
            if r.status.is_dead() || purged {
                settled.push(id.clone());
                continue;
            }
            if r.request.is_some() || r.backoff_until.is_some_and(|t| now < t) {
                continue;
            }
            if r.holders.is_empty() && !r.readmit {
                settled.push(id.clone());
                continue;
            }
            let held = if r.readmit { 0 } else { self.held(id) };
            let needed = if r.readmit {
                r.target.max(1)
            } else {
                held.saturating_add(1)
            };
            let shown = r.status == ReplicaStatus::Up;
            // The owner's word is acted on at once; a third party's about a
            // shown replica after a period, when the owner's own interval
            // had time to arrive.
            let ready = |holder: &ReplicaId, c: u64, seen: Duration| {
                c >= needed && (holder == id || !shown || now.saturating_sub(seen) >= period)
            };
            let mut holders: Vec<(ReplicaId, u64)> = r
                .holders
                .iter()
                .filter(|(h, (c, seen))| ready(h, *c, *seen))
                .map(|(h, (c, _))| (h.clone(), *c))
                .collect();
            if holders.is_empty() || (!shown && gathering) {
                continue;
            }
            // Holders not tried yet; when every one was, a new round.
            let fresh = holders.iter().any(|(h, _)| !r.tried.contains(h));
            if fresh {
                holders.retain(|(h, _)| !r.tried.contains(h));
            }
            needs.push(Need {
                replica: id.clone(),
                since: held,
                holders,
                new_round: !fresh,
            });
        }
        for id in settled {
            self.behind.remove(&id);
        }
        // The holder that covers the most, then the next.
        while !needs.is_empty() && self.batches.len() < MAX_BATCHES {
            let mut cover: BTreeMap<&ReplicaId, usize> = BTreeMap::new();
            for n in &needs {
                for (h, _) in &n.holders {
                    *cover.entry(h).or_default() += 1;
                }
            }
            let Some(holder) = cover
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                .map(|(h, _)| (*h).clone())
            else {
                break;
            };
            let (mine, rest): (Vec<Need>, Vec<Need>) = needs
                .into_iter()
                .partition(|n| n.holders.iter().any(|(h, _)| *h == holder));
            needs = rest;
            self.send_requests(now, &holder, mine);
        }
    }

    /// Asks `holder` for `needs`, in as few messages as the size limit
    /// allows.
    fn send_requests(&mut self, now: Duration, holder: &ReplicaId, needs: Vec<Need>) {
        let budget = self.config.max_message_bytes - ENVELOPE_MARGIN;
        let mut groups: Vec<Vec<Need>> = vec![Vec::new()];
        let mut size = 0;
        for n in needs {
            let bytes = n.replica.name().as_str().len() + 30;
            if size + bytes > budget && groups.last().is_some_and(|g| !g.is_empty()) {
                groups.push(Vec::new());
                size = 0;
            }
            size += bytes;
            if let Some(g) = groups.last_mut() {
                g.push(n);
            }
        }
        for group in groups {
            if group.is_empty() || self.batches.len() >= MAX_BATCHES {
                continue;
            }
            let batch = self.next_batch;
            self.next_batch += 1;
            let items = group.iter().map(|n| (n.replica.clone(), n.since)).collect();
            self.send(
                Destination::Replica(holder.clone()),
                &Message::CatchUpRequest { batch, items },
            );
            self.metrics.catchups_requested += 1;
            let mut replicas = BTreeSet::new();
            let fresh = self.config.broadcast_period * 2;
            for n in group {
                if let Some(r) = self.remotes.get_mut(&n.replica) {
                    // A third party may answer up to what the replica itself
                    // last advertised, while it is heard; its own claim may
                    // be older than what it holds now.
                    let claimed = match r.direct {
                        Some((at, own)) if now.saturating_sub(at) < fresh => n
                            .holders
                            .iter()
                            .find(|(h, _)| h == holder)
                            .map_or(own, |(_, c)| own.max(*c)),
                        _ => crate::state::MAX_COUNTER,
                    };
                    if n.new_round {
                        r.tried.clear();
                    }
                    r.request = Some(Request {
                        holder: holder.clone(),
                        batch,
                        claimed,
                        sent_at: now,
                    });
                }
                replicas.insert(n.replica);
            }
            self.batches.insert(
                batch,
                Batch {
                    holder: holder.clone(),
                    replicas,
                    sent_at: now,
                },
            );
            self.wake_at(now + self.config.catchup_timeout);
        }
    }

    /// `peer` cannot be asked any more: its link was lost, or it went
    /// down. Its requests are given up and it holds nothing any more. The
    /// replicas that only it was known to hold, and the answer to a digest
    /// sent to it, are asked of another peer at once: a digest to the peer
    /// most likely to hold the same (see [`Node::fallback_peer`]), whose
    /// answer says what it holds, so the next requests go to it. Holders of
    /// third parties are otherwise learned only from digests and relays,
    /// which would leave those replicas waiting periods.
    pub(super) fn holder_lost(&mut self, now: Duration, peer: &ReplicaId) {
        let mut orphaned = false;
        for (id, r) in &mut self.remotes {
            let held_there = r.holders.remove(peer).is_some();
            if r.request.as_ref().is_some_and(|q| &q.holder == peer) {
                r.request = None;
                r.tried.insert(peer.clone());
            }
            let live = matches!(r.status, ReplicaStatus::Up | ReplicaStatus::Joining);
            // Only the peer itself held its data: nobody else is asked about
            // it (its relayers, if it lives on, are holders already).
            if held_there && id != peer && live && r.holders.is_empty() {
                orphaned = true;
            }
        }
        self.batches.retain(|_, b| &b.holder != peer);
        self.answers.retain(|(holder, _), _| holder != peer);
        let unanswered = self.probe.as_ref().is_some_and(|(p, _)| p == peer);
        if unanswered {
            // Its answer will not come: nothing waits for it.
            self.probe = None;
            self.gather_until = None;
        }
        // One digest on its way at a time: its answer covers these too.
        if !(orphaned || unanswered) || self.probed_lately(now) {
            return;
        }
        if let Some(other) = self.fallback_peer(now, peer) {
            self.send_probe(now, &other, false);
        }
    }

    pub(super) fn probed_lately(&self, now: Duration) -> bool {
        self.probe
            .as_ref()
            .is_some_and(|(_, at)| now.saturating_sub(*at) < self.config.catchup_timeout)
    }

    /// Gives up on requests unanswered for `catchup_timeout`; the next
    /// holder is asked.
    pub(super) fn check_requests(&mut self, now: Duration) {
        let timeout = self.config.catchup_timeout;
        for id in &self.behind {
            if let Some(r) = self.remotes.get_mut(id)
                && let Some(req) = &r.request
                && now.saturating_sub(req.sent_at) >= timeout
            {
                r.tried.insert(req.holder.clone());
                r.request = None;
            }
        }
        self.batches
            .retain(|_, b| now.saturating_sub(b.sent_at) < timeout);
        let holders: BTreeSet<&ReplicaId> = self.batches.values().map(|b| &b.holder).collect();
        self.answers
            .retain(|(holder, _), _| holders.contains(holder));
    }
}
