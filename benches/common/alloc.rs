//! A global allocator that counts what is live, for the memory benchmarks
//! (`footprint` and `tracker_footprint`).
//!
//! A bench includes this file as a module of its own (not through
//! `common`, which the timing benches share) and installs the allocator:
//!
//! ```ignore
//! #[path = "common/alloc.rs"]
//! mod alloc;
//!
//! #[global_allocator]
//! static ALLOCATOR: alloc::Counting = alloc::Counting;
//! ```
//!
//! Requested bytes sum the sizes of the live allocations; block bytes count
//! each as `max(32, round_up_16(size + 8))`, what glibc malloc spends on it;
//! allocs count the live allocations.

// Each bench binary uses only part of it.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Wraps the system allocator and counts what is live.
pub struct Counting;

static REQUESTED: AtomicUsize = AtomicUsize::new(0);
static BLOCKS: AtomicUsize = AtomicUsize::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// What glibc malloc spends on an allocation of `size` bytes: an 8-byte
/// header, rounded up to 16, at least 32.
fn block(size: usize) -> usize {
    ((size + 8 + 15) & !15).max(32)
}

fn counted(size: usize) {
    let requested = REQUESTED.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(requested, Ordering::Relaxed);
    BLOCKS.fetch_add(block(size), Ordering::Relaxed);
    COUNT.fetch_add(1, Ordering::Relaxed);
}

fn released(size: usize) {
    REQUESTED.fetch_sub(size, Ordering::Relaxed);
    BLOCKS.fetch_sub(block(size), Ordering::Relaxed);
    COUNT.fetch_sub(1, Ordering::Relaxed);
}

// `unsafe` is confined to the memory bench binaries (the library forbids
// it): measuring memory requires observing every allocation, and the only
// way to do that is a global allocator, whose trait is unsafe to implement.
// Every method forwards to `System` with the caller's arguments unchanged,
// so it upholds exactly the contract `System` does; the counting touches
// only atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            counted(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s
        // contract.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            counted(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from this allocator, that
        // is from `System`, with this layout.
        unsafe { System.dealloc(ptr, layout) };
        released(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; `ptr` came from `System` with
        // `layout`, and the caller upholds `realloc`'s contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // The old block is gone and the new one live; on failure the old
            // one stays live and nothing changes.
            counted(new_size);
            released(layout.size());
        }
        new
    }
}

/// The live totals: requested bytes, block bytes, allocations.
#[derive(Clone, Copy, Debug)]
pub struct Live {
    pub requested: usize,
    pub blocks: usize,
    pub count: usize,
}

/// The most requested bytes live at once since the last call (or the
/// start); the count starts again from what is live now.
pub fn take_peak() -> usize {
    PEAK.swap(REQUESTED.load(Ordering::Relaxed), Ordering::Relaxed)
}

/// The live totals now.
pub fn live() -> Live {
    Live {
        requested: REQUESTED.load(Ordering::Relaxed),
        blocks: BLOCKS.load(Ordering::Relaxed),
        count: COUNT.load(Ordering::Relaxed),
    }
}
