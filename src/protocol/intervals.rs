//! Receiving intervals of changes, and what follows a merge of any data of a
//! replica.

use std::time::Duration;

use super::{Node, ProtocolError, ReplicaStatus, ReplicaStore};
use crate::state::{Delta, Meta, ReplicaId};

impl<M: Meta, S: ReplicaStore<M>> Node<M, S> {
    pub(super) fn on_interval(
        &mut self,
        now: Duration,
        sender: &ReplicaId,
        (from, to): (u64, u64),
        delta: Delta<M>,
        size: usize,
    ) -> Result<(), ProtocolError> {
        if from >= to {
            return Err(ProtocolError::Invalid("an interval must not be empty"));
        }
        if to - from > self.config.max_interval_span {
            return Err(ProtocolError::Invalid(
                "an interval spans more than max_interval_span counters",
            ));
        }
        let within = delta.parts.iter().all(|p| {
            &p.replica == sender
                && p.context.min().is_none_or(|lo| lo > from)
                && p.context.max() <= to
        });
        if !within {
            return Err(ProtocolError::Invalid(
                "an interval holds only its sender's counters within it",
            ));
        }
        let Some(r) = self.remotes.get_mut(sender) else {
            // Not heard of yet: its heartbeat comes next, and a catch-up.
            return Ok(());
        };
        if r.status.is_dead() || r.readmit || matches!(r.status, ReplicaStatus::Purged(_)) {
            return Ok(());
        }
        let held = self.held(sender);
        if to <= held {
            return Ok(());
        }
        if from > held {
            let reach = (self.config.max_interval_span)
                .saturating_mul(self.config.max_buffered_intervals as u64);
            let total: usize = self.remotes.values().map(|r| r.buffered_bytes).sum();
            let budget = self.config.max_buffered_bytes;
            let Some(r) = self.remotes.get_mut(sender) else {
                return Ok(());
            };
            // One replica may hold at most a quarter of the budget, so a
            // member that never fills its own gap cannot starve the others.
            if from - held <= reach
                && r.buffer.len() < self.config.max_buffered_intervals
                && total.saturating_add(size) <= budget
                && r.buffered_bytes.saturating_add(size) <= budget / 4
            {
                r.buffer_insert(from, to, delta, size);
            } else {
                self.metrics.intervals_dropped += 1;
            }
            return Ok(());
        }
        let diff = self.state.merge(delta)?;
        self.publish(diff);
        self.after_merge(now, sender);
        Ok(())
    }

    /// After merging data of `replica`: apply the intervals it unblocked,
    /// show it if it caught up, and handle a newer incarnation of our name.
    pub(super) fn after_merge(&mut self, now: Duration, replica: &ReplicaId) {
        loop {
            let held = self.held(replica);
            let Some(r) = self.remotes.get_mut(replica) else {
                break;
            };
            let Some((to, delta)) = r.buffer_take(held) else {
                break;
            };
            if to > held {
                match self.state.merge(delta) {
                    Ok(diff) => self.publish(diff),
                    Err(_) => self.metrics.rejected += 1,
                }
            }
        }
        let held = self.held(replica);
        if let Some(r) = self.remotes.get_mut(replica) {
            r.holders.retain(|_, (c, _)| *c > held);
        }
        self.try_show(now, replica);
        if let Some(newer) = self.state.superseded_by() {
            self.superseded(now, newer);
        }
    }
}
