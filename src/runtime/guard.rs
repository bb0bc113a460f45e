//! A tracked presence's lifetime as a value: dropping it untracks.

use std::sync::Arc;

use super::{Shared, TrackerError};
use crate::{Meta, PresenceId};

/// A presence tracked by [`Tracker::track`](super::Tracker::track). It is
/// untracked when the guard is dropped (a closed connection leaves on its
/// own) or by [`PresenceGuard::untrack`].
#[must_use = "dropping the guard untracks the presence at once"]
pub struct PresenceGuard<M: Meta> {
    shared: Arc<Shared<M>>,
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
    pub(crate) fn new(shared: Arc<Shared<M>>, id: PresenceId) -> Self {
        Self { shared, id }
    }

    /// The presence's id (its current one, should this replica have
    /// re-incarnated since it was tracked).
    pub fn id(&self) -> PresenceId {
        self.shared.lock().current_id(&self.id)
    }

    /// Replaces the presence's meta.
    ///
    /// # Errors
    ///
    /// [`TrackerError::State`] for a meta over the size limit (the
    /// presence keeps its meta); [`TrackerError::Stopped`] after the
    /// tracker's shutdown.
    pub fn update(&self, meta: M) -> Result<(), TrackerError> {
        let mut inner = self.shared.lock();
        if inner.stopped {
            return Err(TrackerError::Stopped);
        }
        let id = inner.current_id(&self.id);
        inner.node.update(&id, meta)?;
        inner.dispatch();
        Ok(())
    }

    /// Untracks the presence now.
    pub fn untrack(self) {
        // `Drop` does it.
    }
}

impl<M: Meta> Drop for PresenceGuard<M> {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        let id = inner.current_id(&self.id);
        inner.forget(&self.id);
        if inner.node.untrack(&id).is_ok() {
            inner.dispatch();
        }
    }
}
