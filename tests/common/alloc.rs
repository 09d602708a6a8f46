//! A counting global allocator over `System`. A binary that wants the counts declares it:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: common::alloc::CountingAlloc = common::alloc::CountingAlloc;
//! ```
//!
//! It counts twice, for two kinds of question:
//!
//! - per thread ([`this_thread`]): what one thread allocated, undisturbed by tests that run in
//!   parallel on other threads (`tests/allocations.rs`);
//! - per process ([`Counts::now`]): what every thread allocated and freed, in per-thread
//!   stripes so that threads allocating at once do not fight over one cache line (the
//!   benchmarks' `B/op`, the stress harness's live heap).
//!
//! A `realloc` counts as a free of the old block and an allocation of the new one. The counts
//! are relaxed: totals are exact once the threads that allocated have synchronised with the
//! reader (joined, met at a barrier, or sent it a message).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

pub struct CountingAlloc;

thread_local! {
    // `const`, with no destructor: usable from inside the allocator, even while a thread exits.
    static THREAD_ALLOCS: Cell<usize> = const { Cell::new(0) };
    static THREAD_LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
    static MY_STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

const STRIPES: usize = 64;

#[repr(align(128))] // two cache lines: no false sharing, even with adjacent-line prefetch
struct Stripe {
    allocs: AtomicU64,
    bytes: AtomicU64,
    frees: AtomicU64,
    freed: AtomicU64,
}

static STRIPE: [Stripe; STRIPES] = [const {
    Stripe {
        allocs: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        frees: AtomicU64::new(0),
        freed: AtomicU64::new(0),
    }
}; STRIPES];

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

/// This thread's stripe: threads take them in turn. A thread whose locals are gone (it is
/// exiting) counts in the first.
fn my_stripe() -> &'static Stripe {
    let index = MY_STRIPE
        .try_with(|slot| {
            if slot.get() == usize::MAX {
                slot.set(NEXT_STRIPE.fetch_add(1, Relaxed) % STRIPES);
            }
            slot.get()
        })
        .unwrap_or(0);
    &STRIPE[index]
}

fn count_alloc(size: usize) {
    // `try_with`: a thread that is tearing down its locals may still allocate.
    let _ = THREAD_ALLOCS.try_with(|n| n.set(n.get() + 1));
    let _ = THREAD_LIVE_BYTES.try_with(|n| n.set(n.get() + size as isize));
    let stripe = my_stripe();
    stripe.allocs.fetch_add(1, Relaxed);
    stripe.bytes.fetch_add(size as u64, Relaxed);
}

fn count_free(size: usize) {
    let _ = THREAD_LIVE_BYTES.try_with(|n| n.set(n.get() - size as isize));
    let stripe = my_stripe();
    stripe.frees.fetch_add(1, Relaxed);
    stripe.freed.fetch_add(size as u64, Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments and hands its result
// back unchanged; the counting touches only atomics and const thread-locals without
// destructors, none of which allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System::alloc`'s.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count_alloc(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count_alloc(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count_free(layout.size());
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count_free(layout.size());
            count_alloc(new_size);
        }
        new
    }
}

/// What the calling thread has allocated since it started: `(allocations, live bytes)`, the
/// bytes being those it allocated minus those it freed (a block freed on another thread than
/// allocated it counts there).
pub fn this_thread() -> (usize, isize) {
    (
        THREAD_ALLOCS.with(Cell::get),
        THREAD_LIVE_BYTES.with(Cell::get),
    )
}

/// What every thread of the process has allocated and freed since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Allocations (a `realloc` is one).
    pub allocs: u64,
    /// Bytes allocated.
    pub bytes: u64,
    /// Blocks freed (a `realloc` is one).
    pub frees: u64,
    /// Bytes freed.
    pub freed: u64,
}

impl Counts {
    /// The totals over every thread's stripe.
    pub fn now() -> Counts {
        STRIPE.iter().fold(Counts::default(), |sum, stripe| Counts {
            allocs: sum.allocs + stripe.allocs.load(Relaxed),
            bytes: sum.bytes + stripe.bytes.load(Relaxed),
            frees: sum.frees + stripe.frees.load(Relaxed),
            freed: sum.freed + stripe.freed.load(Relaxed),
        })
    }

    /// Bytes allocated and not yet freed.
    pub fn live_bytes(&self) -> i64 {
        self.bytes as i64 - self.freed as i64
    }

    /// Blocks allocated and not yet freed.
    pub fn live_blocks(&self) -> i64 {
        self.allocs as i64 - self.frees as i64
    }
}
