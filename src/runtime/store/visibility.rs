//! Showing, hiding and dropping another replica's presences in the shards.
//!
//! Each change is published with a diff of every presence the replica has
//! in the shard (joins or leaves), under the shard's lock together with
//! the change, so that lists and diffs agree. That diff is O(its
//! presences there): 1,000,000 leaves take some 40 ms to build. For a
//! replica with more than [`BUILD_APART`] presences in a shard, the change
//! is deferred: the driver runs it ([`Deferred::run`]) on a blocking
//! thread as soon as it lets go of the node's lock, and waits for it
//! before it does anything else. Only the driver changes peers, so the
//! peer is still as it was when the change was decided; the diff is built
//! outside every lock, and the shard's lock is taken only to make the
//! change and publish it. A later change of peers within the same call of
//! the node makes the deferred ones first, in order
//! ([`Store::flush_deferred`]).

use std::sync::Arc;

use super::{Garbage, Store};
use crate::runtime::feed::Wake;
use crate::runtime::shard::Shard;
use crate::{Diff, Meta, ReplicaId, State};

/// A replica with more presences than this in a shard is shown, hidden
/// or dropped there after the node's lock is let go.
const BUILD_APART: usize = 2048;

/// A change of one peer in one shard, made once the node's lock is let go.
pub(crate) struct Deferred<M> {
    shard: Arc<Shard<M>>,
    replica: ReplicaId,
    /// The peer's state when the change was decided.
    data: Arc<State<M>>,
    change: Change<M>,
}

enum Change<M> {
    /// Show it, with its presences as joins if they were made already.
    Show(Option<Diff<M>>),
    /// Hide it; the joins made for showing it are not needed.
    Hide(Option<Diff<M>>),
    /// Drop it from the shard (it was shown).
    Drop,
}

impl<M: Meta> Store<M> {
    /// Makes the changes deferred so far, here and now: a later change of
    /// a peer within the same call of the node must find them made.
    pub(super) fn flush_deferred(&mut self) {
        for change in std::mem::take(&mut self.deferred) {
            self.make(change);
        }
    }

    /// Makes a change now.
    fn make(&mut self, change: Deferred<M>) {
        let (wake, freed) = change.run();
        self.garbage.extend(freed);
        self.after_unlock(wake);
    }

    /// Makes a change now if its diff is small, or once the node's lock
    /// is let go.
    fn make_or_defer(&mut self, change: Deferred<M>) {
        if change.data.len() > BUILD_APART {
            self.deferred.push(change);
        } else {
            self.make(change);
        }
    }

    /// Shows or hides a replica's presences in every shard.
    pub(super) fn set_shown(&mut self, replica: &ReplicaId, shown: bool) {
        self.flush_deferred();
        if !self.held.contains(replica) {
            return;
        }
        for shard in self.shards.clone().iter() {
            let change = {
                let mut s = shard.lock();
                let Some(peer) = s.peers.get_mut(replica) else {
                    continue;
                };
                if peer.shown == shown {
                    continue;
                }
                let joins = peer.joins.take();
                Deferred {
                    shard: Arc::clone(shard),
                    replica: replica.clone(),
                    data: Arc::clone(&peer.data),
                    change: if shown {
                        Change::Show(joins)
                    } else {
                        Change::Hide(joins)
                    },
                }
            };
            self.make_or_defer(change);
        }
    }

    /// Drops a replica's peer state from every shard, with leaves where
    /// it was shown.
    pub(super) fn drop_peer(&mut self, replica: &ReplicaId) {
        self.flush_deferred();
        for shard in self.shards.clone().iter() {
            let change = {
                let mut s = shard.lock();
                let data = match s.peers.get(replica) {
                    None => continue,
                    Some(peer) if peer.shown => Arc::clone(&peer.data),
                    Some(_) => {
                        // Hidden: nothing listed leaves.
                        let old = s.peers.remove(replica);
                        drop(s);
                        self.garbage.extend(old.map(|old| Garbage::State(old.data)));
                        continue;
                    }
                };
                Deferred {
                    shard: Arc::clone(shard),
                    replica: replica.clone(),
                    data,
                    change: Change::Drop,
                }
            };
            self.make_or_defer(change);
        }
    }

    /// The changes to run once the node's lock is let go, in order.
    pub(crate) fn take_deferred(&mut self) -> Vec<Deferred<M>> {
        std::mem::take(&mut self.deferred)
    }
}

impl<M: Meta> Deferred<M> {
    /// Builds the diff outside the locks, then makes the change and
    /// publishes it under the shard's lock; returns whom it woke and what
    /// to free.
    pub(crate) fn run(self) -> (Wake<M>, Vec<Garbage<M>>) {
        let Self {
            shard,
            replica,
            data,
            change,
        } = self;
        let mut garbage = Vec::new();
        let (diff, shown) = match change {
            Change::Show(Some(joins)) => (joins, Some(true)),
            Change::Show(None) => (data.everything_as(false), Some(true)),
            Change::Hide(joins) => {
                garbage.extend(joins.map(Garbage::Diff));
                (data.everything_as(true), Some(false))
            }
            Change::Drop => (data.everything_as(true), None),
        };
        // No copy stays out: a later merge in place must not copy it.
        drop(data);
        let mut wake = Wake::new();
        {
            let mut s = shard.lock();
            let changed = match (shown, s.peers.get_mut(&replica)) {
                (Some(shown), Some(peer)) => {
                    peer.shown = shown;
                    true
                }
                (None, Some(_)) => {
                    garbage.extend(s.peers.remove(&replica).map(|old| Garbage::State(old.data)));
                    true
                }
                (_, None) => false,
            };
            if changed {
                s.publish(diff, &mut wake);
            } else {
                garbage.push(Garbage::Diff(diff));
            }
        }
        let unwanted = std::mem::take(&mut wake.unwanted);
        garbage.extend(unwanted.into_iter().map(Garbage::Topic));
        (wake, garbage)
    }
}
