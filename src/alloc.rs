//! A counting global allocator: the system allocator plus a per-thread count of allocations,
//! so that each pipeline stage can show it allocates nothing per frame once warm.
//!
//! The binary and the test binary install it (`#[global_allocator]`); a library user who does
//! not gets `None` from [`thread_allocs`]. Only Rust allocations are seen: OpenCV's and ONNX
//! Runtime's C++ heaps are not (buffers reused there are checked by pointer in the tests).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Counting;

static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // `const` and without Drop: usable from inside the allocator, at any point of a thread's life.
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

#[inline]
fn count() {
    let _ = COUNT.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

impl Counting {
    /// Call once from `main` (or a test binary) that installs it: [`thread_allocs`] then
    /// reports counts instead of `None`.
    pub fn mark_installed() {
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

/// Allocations (and reallocations) made so far by the calling thread; `None` when the
/// counting allocator is not the global allocator.
pub fn thread_allocs() -> Option<u64> {
    if !INSTALLED.load(Ordering::Relaxed) {
        return None;
    }
    COUNT.try_with(Cell::get).ok()
}

/// Counts one stage thread's allocations from the moment it is warm to its end.
pub struct Meter {
    warm_after: u64,
    seen: u64,
    at_warm: Option<u64>,
}

impl Meter {
    /// Starts counting after `warm_after` items.
    pub fn new(warm_after: u64) -> Meter {
        Meter {
            warm_after,
            seen: 0,
            at_warm: None,
        }
    }

    /// Call once per item the stage handled.
    #[inline]
    pub(crate) fn tick(&mut self, items: u64) {
        self.seen += items;
        if self.at_warm.is_none() && self.seen >= self.warm_after {
            self.at_warm = thread_allocs();
            self.seen = 0;
        }
    }

    /// (allocations, items) since the stage was warm, or `None` if it never was (or the
    /// allocator is not counting).
    pub fn finish(&self) -> Option<(u64, u64)> {
        let start = self.at_warm?;
        Some((thread_allocs()?.saturating_sub(start), self.seen))
    }
}
