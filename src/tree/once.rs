//! The lazily made lock of a scope: one pointer, published once.
//!
//! Keeps invariant 15 (see `tree/mod.rs`) by privacy: the pointer is this module's alone,
//! written only by [`OnceInner::holding`] (not yet shared), the compare-and-swap in
//! [`OnceInner::init`] and [`OnceInner::get_mut_or_init`] (exclusive access), and freed only by
//! `drop`. The `unsafe` here is what a 16-byte `OnceLock` would otherwise cost: the scope's
//! allocation would leave its 128-byte size class (pinned by
//! `a_scope_allocation_stays_at_120_bytes`). Checked under loom by
//! `loom_two_first_registrations_race_to_make_the_lock` ([`lock_check`]) and under Miri by the
//! unit tests.
#![allow(unsafe_code)] // the pointer's publication and frees, each with its SAFETY argument

use std::sync::PoisonError;

use crate::sync::{AtomicPtr, Mutex, MutexGuard, Ordering};

use super::inner::{Extra, Inner, Outside};

/// A scope's lock and what it guards, in an allocation of their own made on first use: most
/// scopes are leaves that never take their lock (see `lone.rs`), and so never carry it
/// (see the layout note on `Scope`). Made once and kept for the scope's lifetime, across its
/// reuse; freed with it.
///
/// The pointer is null until the first [`OnceInner::get_or_init`] publishes the allocation by
/// a compare-and-swap from null (of two threads that race, one frees its own and takes the
/// other's); it is never changed again while shared, and freed only by `drop`, with exclusive
/// access. (std's `OnceLock` would take 16 bytes; loom models this one, as every scope's.)
pub(super) struct OnceInner(AtomicPtr<Mutex<Inner>>);

// `AtomicPtr` is `Send` and `Sync` whatever it points to, so a scope would stay both with a
// field in `Inner` that is neither: check what it points to.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Mutex<Inner>>();
};

impl OnceInner {
    /// None yet, or, for a scope born with a cause, one holding `extra`.
    #[inline(always)]
    pub(super) fn holding(extra: Option<Box<Extra>>) -> Self {
        let inner = match extra {
            None => std::ptr::null_mut(),
            Some(extra) => OnceInner::make(Inner {
                outside: Outside::Extra(extra),
                ..Inner::default()
            }),
        };
        OnceInner(AtomicPtr::new(inner))
    }

    #[cold]
    #[inline(never)]
    pub(super) fn make(inner: Inner) -> *mut Mutex<Inner> {
        #[cfg(loom)]
        {
            inner.mark.written();
            lock_check::made();
        }
        Box::into_raw(Box::new(Mutex::new(inner)))
    }

    /// Frees a lock made by `make`.
    ///
    /// # Safety
    ///
    /// `inner` came from `make`, and nothing refers to it or will.
    pub(super) unsafe fn free(inner: *mut Mutex<Inner>) {
        #[cfg(loom)]
        lock_check::freed();
        // SAFETY: the caller's contract: `Box::into_raw` made it, and this is its only owner.
        drop(unsafe { Box::from_raw(inner) });
    }

    #[inline(always)]
    pub(super) fn get(&self) -> Option<&Mutex<Inner>> {
        let inner = self.0.load(Ordering::Acquire);
        // SAFETY: the pointer is null, or came from `Box::into_raw` in `make` and was
        // published by the compare-and-swap in `init` (whose `Release` half this `Acquire`
        // load pairs with, so the `Mutex` it points to is fully written) or stored with
        // exclusive access. It is never replaced once set, and freed only in `drop`, which
        // cannot run while `&self` is borrowed: the reference lives no longer than `self`.
        unsafe { inner.as_ref() }
    }

    #[inline(always)]
    pub(super) fn get_or_init(&self) -> &Mutex<Inner> {
        match self.get() {
            Some(inner) => inner,
            None => self.init(),
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn init(&self) -> &Mutex<Inner> {
        let made = OnceInner::make(Inner::default());
        let null = std::ptr::null_mut();
        // The strong compare-and-swap: a weak one may fail spuriously, with `first` null.
        match self
            .0
            .compare_exchange(null, made, Ordering::AcqRel, Ordering::Acquire)
        {
            // SAFETY: `made` is published and valid until `drop`, as `get` says.
            Ok(_) => unsafe { &*made },
            Err(first) => {
                // SAFETY: `made` came from `make` and was never published: nothing else
                // refers to it.
                unsafe { OnceInner::free(made) };
                // SAFETY: `first` was published by the winner of the swap, as `get` says, and
                // is not null: only a strong compare-and-swap fails only on another value.
                unsafe { &*first }
            }
        }
    }

    /// What the lock guards, with exclusive access, if it was ever made.
    pub(super) fn get_mut(&mut self) -> Option<&mut Inner> {
        let inner = self.0.load(Ordering::Relaxed);
        // SAFETY: as in `get`; `&mut self` rules out every other reference to it.
        let inner = unsafe { inner.as_mut() }?;
        Some(inner.get_mut().unwrap_or_else(PoisonError::into_inner))
    }

    /// [`OnceInner::get_mut`], made now if it was not.
    pub(super) fn get_mut_or_init(&mut self) -> &mut Inner {
        if self.0.load(Ordering::Relaxed).is_null() {
            self.0
                .store(OnceInner::make(Inner::default()), Ordering::Relaxed);
        }
        self.get_mut().expect("made just above")
    }
}

impl Drop for OnceInner {
    fn drop(&mut self) {
        let inner = self.0.load(Ordering::Relaxed);
        if !inner.is_null() {
            // SAFETY: made by `make`, and with `&mut self` nothing else refers to it; the
            // pointer is not used again.
            unsafe { OnceInner::free(inner) };
        }
    }
}

/// Takes a scope's lock.
pub(super) fn lock_inner(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // No code that can panic runs under this lock, but if it ever did, the state it guards is
    // still consistent: every update is a single assignment.
    let inner = inner.lock().unwrap_or_else(PoisonError::into_inner);
    #[cfg(loom)]
    inner.mark.read();
    inner
}

/// Under loom, what checks [`OnceInner`]'s publication and its frees: loom's `Mutex` keeps its
/// data in memory loom does not track, and loom reports leaks of its own allocations only.
#[cfg(loom)]
pub(crate) mod lock_check {
    use std::cell::Cell;

    /// Written when a lock is made, read each time it is taken: a read that the write does not
    /// happen before (a publication that lost its `Release`/`Acquire` pairing) fails the model
    /// as a causality violation.
    pub(in crate::tree) struct Mark(loom::cell::UnsafeCell<()>);

    impl Default for Mark {
        fn default() -> Self {
            Mark(loom::cell::UnsafeCell::new(()))
        }
    }

    impl Mark {
        pub(in crate::tree) fn written(&self) {
            self.0.with_mut(|_| ());
        }

        pub(in crate::tree) fn read(&self) {
            self.0.with(|_| ());
        }
    }

    std::thread_local! {
        /// Locks made less locks freed. Loom runs all of a model's threads on the thread that
        /// runs the model, so this counts that model's alone.
        static LIVE: Cell<isize> = const { Cell::new(0) };
    }

    pub(super) fn made() {
        LIVE.with(|live| live.set(live.get() + 1));
    }

    pub(super) fn freed() {
        LIVE.with(|live| live.set(live.get() - 1));
    }

    /// How many locks are made and not yet freed.
    pub(crate) fn live() -> isize {
        LIVE.with(Cell::get)
    }
}
