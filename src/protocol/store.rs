//! Where a [`Node`](super::Node) keeps the presences it replicates: a
//! [`State`], or the runtime's store split by topic.
//!
//! The node asks only these questions and makes only these changes; every
//! one means what the [`State`] method of the same name means.

use crate::state::{
    CounterSet, Delta, Diff, Incarnation, Meta, PurgeReason, PurgeRecord, Reincarnation, ReplicaId,
    State, StateError,
};

/// A store's own changes not broadcast yet (see
/// [`ReplicaStore::take_local`]): the last counter they reach, and the
/// changes cut into intervals, each with the counter it starts after.
pub type LocalChanges<M> = (u64, Vec<(u64, Delta<M>)>);

pub(crate) mod sealed {
    /// Only this crate's stores drive a node.
    pub trait Sealed {}
}

/// The presences a [`Node`](super::Node) replicates. Implemented by
/// [`State`] (the default) and by the tokio runtime's own store, which
/// splits the presences by topic so that local calls on different topics
/// do not wait for each other; it cannot be implemented outside this
/// crate.
pub trait ReplicaStore<M>: sealed::Sealed {
    /// This replica.
    fn replica(&self) -> &ReplicaId;
    /// The last counter value this replica used.
    fn counter(&self) -> u64;
    /// Which counters of `replica` are applied here.
    fn context(&self, replica: &ReplicaId) -> Option<&CounterSet>;
    /// How many presences of `replica` are held, shown or hidden.
    fn presences_of(&self, replica: &ReplicaId) -> usize;
    /// A newer incarnation of this replica's name seen in merged data.
    fn superseded_by(&self) -> Option<Incarnation>;
    /// The purge record of `replica`, if one is kept.
    fn purge_record(&self, replica: &ReplicaId) -> Option<&PurgeRecord>;
    /// Merges a peer's delta; see [`State::merge`].
    ///
    /// # Errors
    ///
    /// When the delta breaks a limit; nothing changes then.
    fn merge(&mut self, delta: Delta<M>) -> Result<Diff<M>, StateError>;
    /// Re-admits purged incarnations from whole sub-states; see
    /// [`State::readmit`].
    ///
    /// # Errors
    ///
    /// As [`State::readmit`].
    fn readmit(&mut self, snapshot: Delta<M>) -> Result<Diff<M>, StateError>;
    /// Hides a replica's presences; see [`State::hide`].
    ///
    /// # Errors
    ///
    /// As [`State::hide`].
    fn hide(&mut self, replica: &ReplicaId) -> Result<Diff<M>, StateError>;
    /// Shows a hidden replica's presences again; see [`State::unhide`].
    ///
    /// # Errors
    ///
    /// As [`State::unhide`].
    fn unhide(&mut self, replica: &ReplicaId) -> Result<Diff<M>, StateError>;
    /// Purges a replica incarnation; see [`State::purge`].
    ///
    /// # Errors
    ///
    /// As [`State::purge`].
    fn purge(&mut self, replica: &ReplicaId, reason: PurgeReason) -> Result<Diff<M>, StateError>;
    /// Drops a purge record; see [`State::forget_purged`].
    fn forget_purged(&mut self, replica: &ReplicaId) -> bool;
    /// Moves this replica to a new incarnation; see [`State::reincarnate`].
    ///
    /// # Errors
    ///
    /// As [`State::reincarnate`].
    fn reincarnate(&mut self, incarnation: Incarnation) -> Result<Reincarnation<M>, StateError>;
    /// What `replica` changed after `since`; see [`State::changes_since`].
    fn changes_since(&self, replica: &ReplicaId, since: u64) -> Option<Delta<M>>;
    /// The whole sub-state of `replica`; see [`State::snapshot_of`].
    fn snapshot_of(&self, replica: &ReplicaId) -> Option<Delta<M>>;
    /// This replica's own changes made through the store rather than
    /// through the node, not broadcast yet. A [`State`] has none: its
    /// changes go through the node.
    fn take_local(&mut self) -> Option<LocalChanges<M>> {
        None
    }
}

impl<M> sealed::Sealed for State<M> {}

impl<M: Meta> ReplicaStore<M> for State<M> {
    fn replica(&self) -> &ReplicaId {
        State::replica(self)
    }

    fn counter(&self) -> u64 {
        State::counter(self)
    }

    fn context(&self, replica: &ReplicaId) -> Option<&CounterSet> {
        State::context(self, replica)
    }

    fn presences_of(&self, replica: &ReplicaId) -> usize {
        State::presences_of(self, replica)
    }

    fn superseded_by(&self) -> Option<Incarnation> {
        State::superseded_by(self)
    }

    fn purge_record(&self, replica: &ReplicaId) -> Option<&PurgeRecord> {
        State::purge_record(self, replica)
    }

    fn merge(&mut self, delta: Delta<M>) -> Result<Diff<M>, StateError> {
        State::merge(self, delta)
    }

    fn readmit(&mut self, snapshot: Delta<M>) -> Result<Diff<M>, StateError> {
        State::readmit(self, snapshot)
    }

    fn hide(&mut self, replica: &ReplicaId) -> Result<Diff<M>, StateError> {
        State::hide(self, replica)
    }

    fn unhide(&mut self, replica: &ReplicaId) -> Result<Diff<M>, StateError> {
        State::unhide(self, replica)
    }

    fn purge(&mut self, replica: &ReplicaId, reason: PurgeReason) -> Result<Diff<M>, StateError> {
        State::purge(self, replica, reason)
    }

    fn forget_purged(&mut self, replica: &ReplicaId) -> bool {
        State::forget_purged(self, replica)
    }

    fn reincarnate(&mut self, incarnation: Incarnation) -> Result<Reincarnation<M>, StateError> {
        State::reincarnate(self, incarnation)
    }

    fn changes_since(&self, replica: &ReplicaId, since: u64) -> Option<Delta<M>> {
        State::changes_since(self, replica, since)
    }

    fn snapshot_of(&self, replica: &ReplicaId) -> Option<Delta<M>> {
        State::snapshot_of(self, replica)
    }
}
