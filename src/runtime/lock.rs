//! Mutexes that measure how long they are held: a tracker's callers wait
//! at most that long for any of its locks.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The longest hold of any lock of one tracker, in nanoseconds.
#[derive(Debug)]
pub(crate) struct LockStats {
    longest: AtomicU64,
    /// Which lock it was.
    longest_lock: Mutex<&'static str>,
    /// Holds longer than a millisecond.
    long: AtomicU64,
}

impl Default for LockStats {
    fn default() -> Self {
        Self {
            longest: AtomicU64::new(0),
            longest_lock: Mutex::new("none"),
            long: AtomicU64::new(0),
        }
    }
}

impl LockStats {
    /// The longest hold since the start or the last reset.
    pub(crate) fn longest(&self) -> Duration {
        Duration::from_nanos(self.longest.load(Ordering::Relaxed))
    }

    /// How many holds lasted longer than a millisecond.
    pub(crate) fn long_holds(&self) -> u64 {
        self.long.load(Ordering::Relaxed)
    }

    /// Which lock was held longest: `node`, `shard`, `feed` or `renamed`.
    pub(crate) fn longest_lock(&self) -> &'static str {
        *self.longest_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn reset(&self) {
        self.longest.store(0, Ordering::Relaxed);
        self.long.store(0, Ordering::Relaxed);
    }

    fn record(&self, held: Duration, lock: &'static str) {
        let nanos = u64::try_from(held.as_nanos()).unwrap_or(u64::MAX);
        // Read first: most holds are shorter, and a write would bounce the
        // line between the cores that take different locks.
        if nanos > self.longest.load(Ordering::Relaxed)
            && self.longest.fetch_max(nanos, Ordering::Relaxed) < nanos
        {
            *self.longest_lock.lock().unwrap_or_else(|e| e.into_inner()) = lock;
        }
        if nanos > 1_000_000 {
            self.long.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A mutex whose holds count in its tracker's [`LockStats`].
#[derive(Debug)]
pub(crate) struct TimedMutex<T> {
    inner: Mutex<T>,
    stats: Arc<LockStats>,
    name: &'static str,
}

impl<T> TimedMutex<T> {
    pub(crate) fn new(value: T, stats: Arc<LockStats>, name: &'static str) -> Self {
        Self {
            inner: Mutex::new(value),
            stats,
            name,
        }
    }

    pub(crate) fn lock(&self) -> TimedGuard<'_, T> {
        // Nothing under these locks panics on input; should a bug panic
        // there, what is held is still consistent (every change is checked
        // before it is made).
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        TimedGuard {
            guard,
            since: Instant::now(),
            stats: &self.stats,
            name: self.name,
        }
    }
}

/// A held [`TimedMutex`]; the hold is measured when it is dropped.
pub(crate) struct TimedGuard<'a, T> {
    guard: MutexGuard<'a, T>,
    since: Instant,
    stats: &'a LockStats,
    name: &'static str,
}

impl<T> Deref for TimedGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for TimedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for TimedGuard<'_, T> {
    fn drop(&mut self) {
        self.stats.record(self.since.elapsed(), self.name);
    }
}
