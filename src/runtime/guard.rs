//! A tracked presence's lifetime as a value: dropping it untracks.

use std::sync::Arc;

use super::TrackerError;
use super::shard::Shard;
use crate::{Meta, PresenceId};

/// A presence tracked by [`Tracker::track`](super::Tracker::track). It is
/// untracked when the guard is dropped (a closed connection leaves on its
/// own) or by [`PresenceGuard::untrack`].
#[must_use = "dropping the guard untracks the presence at once"]
pub struct PresenceGuard<M: Meta> {
    /// The topic shard the presence is in.
    shard: Arc<Shard<M>>,
    id: PresenceId,
}

impl<M: Meta> std::fmt::Debug for PresenceGuard<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceGuard")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<M: Meta> PresenceGuard<M> {
    pub(crate) fn new(shard: Arc<Shard<M>>, id: PresenceId) -> Self {
        Self { shard, id }
    }

    /// The presence's id (its current one, should this replica have
    /// re-incarnated since it was tracked).
    pub fn id(&self) -> PresenceId {
        self.shard.common.current_id(&self.id)
    }

    /// Replaces the presence's meta.
    ///
    /// # Errors
    ///
    /// [`TrackerError::State`] for a meta over the size limit (the
    /// presence keeps its meta); [`TrackerError::Stopped`] after the
    /// tracker's shutdown.
    pub fn update(&self, meta: M) -> Result<(), TrackerError> {
        self.shard.update(&self.id, meta)
    }

    /// Untracks the presence now.
    pub fn untrack(self) {
        // `Drop` does it.
    }
}

impl<M: Meta> Drop for PresenceGuard<M> {
    fn drop(&mut self) {
        self.shard.untrack(&self.id);
    }
}
