//! A tracked presence's lifetime as a value: dropping it untracks.

use std::sync::Arc;

use super::TrackerError;
use super::shard::Shard;
use crate::{Meta, PresenceId, StateError};

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
        self.shard.update(&self.id, meta, None).map(drop)
    }

    /// Replaces the presence's meta with `change` of the current one, as
    /// one atomic step: if another update of this presence lands between
    /// reading the meta and writing the new one, `change` runs again on
    /// the newer meta. `change` runs without any of the tracker's locks
    /// held, so it may take its time and call the tracker.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use attendance::Tracker;
    /// use attendance::transport::MemoryNetwork;
    /// let network = MemoryNetwork::new();
    /// let tracker: Tracker<u32> = Tracker::builder("a").start_with(|id| network.join(id))?;
    /// let guard = tracker.track("room:lobby", "alice", 1)?;
    /// guard.update_with(|clicks| clicks + 1)?;
    /// assert_eq!(*tracker.get("room:lobby", "alice")[0].meta(), 2);
    /// # tracker.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`PresenceGuard::update`], including
    /// [`StateError::UnknownPresence`] when the presence is no longer
    /// tracked (its key was untracked with
    /// [`Tracker::untrack_key`](super::Tracker::untrack_key)).
    pub fn update_with(&self, mut change: impl FnMut(&M) -> M) -> Result<(), TrackerError> {
        loop {
            let (version, meta) = self
                .shard
                .own_version(&self.id)
                .ok_or_else(|| StateError::UnknownPresence(self.id()))?;
            if self.shard.update(&self.id, change(&meta), Some(version))? {
                return Ok(());
            }
        }
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
