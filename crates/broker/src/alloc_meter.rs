//! For tests: a global allocator that measures the peak of the bytes a
//! thread allocates while it is being metered.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub(crate) struct Meter;

thread_local! {
    static METERING: Cell<bool> = const { Cell::new(false) };
    static CURRENT: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// bookkeeping only touches const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if METERING.with(Cell::get) {
            let now = CURRENT.with(|c| {
                c.set(c.get() + layout.size());
                c.get()
            });
            PEAK.with(|p| p.set(p.get().max(now)));
        }
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if METERING.with(Cell::get) {
            CURRENT.with(|c| c.set(c.get().saturating_sub(layout.size())));
        }
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static METER: Meter = Meter;

/// Runs `f` and returns its result with the peak of the bytes it held
/// allocated at once (on this thread).
pub(crate) fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    CURRENT.with(|c| c.set(0));
    PEAK.with(|p| p.set(0));
    METERING.with(|m| m.set(true));
    let out = f();
    METERING.with(|m| m.set(false));
    (out, PEAK.with(Cell::get))
}
