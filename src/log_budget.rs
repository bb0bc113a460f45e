//! Logs that a peer can cause, at most a few a second: a flood of bad
//! connections or messages must not flood the logs too. What is not logged
//! is counted and reported once the second is over.

use std::time::{Duration, Instant};

/// Lines logged per second; the rest are counted.
const LOGGED_PER_SECOND: u32 = 10;

/// How many lines may still be logged in the current second.
#[derive(Debug, Default)]
pub(crate) struct LogBudget {
    second: Option<Instant>,
    logged: u32,
    unlogged: u64,
}

impl LogBudget {
    /// Whether one more line may be logged now; when a new second starts,
    /// how many were not logged in the last.
    pub(crate) fn take(&mut self) -> (bool, u64) {
        let now = Instant::now();
        let mut dropped = 0;
        if self
            .second
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
        {
            self.second = Some(now);
            self.logged = 0;
            dropped = std::mem::take(&mut self.unlogged);
        }
        if self.logged < LOGGED_PER_SECOND {
            self.logged += 1;
            (true, dropped)
        } else {
            self.unlogged += 1;
            (false, dropped)
        }
    }
}
