//! A scope's lock and what it guards, made on first use.
//!
//! Most scopes are leaves that never take their lock (see `lone.rs`), and so never carry it:
//! [`OnceInner`] is one pointer, null until the first [`OnceInner::get_or_init`]. Keeps
//! invariant 15: the lock is published once, by a compare-and-swap from null (of two threads
//! that race, one frees its own and takes the other's), never changed again while shared, and
//! freed only by `drop`, with exclusive access. Pinned by
//! `loom_two_first_registrations_race_to_make_the_lock`, whose `lock_check` fails the model
//! on an unordered publication or a leak.

use std::mem;
use std::sync::PoisonError;

use tokio_util::sync::CancellationToken;

use crate::error::Cause;
use crate::slab::Slab;
use crate::source::Source;
use crate::sync::{AtomicPtr, Mutex, MutexGuard, Ordering};

use super::Reg;
use super::walk::Walk;

/// The fields guarded by a scope's lock, in an allocation of their own (see [`OnceInner`]).
/// 88 bytes with the lock, a 96-byte glibc chunk (see the scope's size test).
#[derive(Default)]
pub(super) struct Inner {
    pub(super) regs: Slab<Reg>,
    /// What some scopes hold besides registrations.
    pub(super) outside: Outside,
    #[cfg(loom)]
    mark: lock_check::Mark,
}

/// What a scope holds besides its registrations. A plain deadline's timer (or a token watch)
/// sits here inline, so that a `with_timeout` context is two allocations, the scope and its
/// lock, rather than three; anything more goes to an [`Extra`], which then holds the source
/// too. The `Extra`, once made, is kept across reuse (see "Reuse").
///
/// 24 bytes: `Source`'s tag leaves room for the other two variants' encoding.
#[derive(Default)]
pub(super) enum Outside {
    #[default]
    Nothing,
    Source(Source),
    Extra(Box<Extra>),
}

/// What a plain `with_cancel` or `with_timeout` scope never holds: out of line, so that it
/// costs such a scope nothing beyond the 24 bytes of [`Outside`].
#[derive(Default)]
pub(super) struct Extra {
    /// The cause, when it is not the error itself (`CUSTOM_CAUSE`).
    pub(super) cause: Option<Cause>,
    /// What a deadline reports when it fires, if not the error itself.
    deadline_cause: Option<Cause>,
    /// What can cancel this scope from outside the tree (its deadline timer or a token
    /// watch), once the scope has an `Extra`; [`Outside::Source`] before.
    source: Option<Source>,
    /// The token behind `Context::token`, made on first use and cancelled with the scope.
    pub(super) mirror: Option<CancellationToken>,
}

impl Extra {
    /// An `Extra` for a scope born with a custom cause or given a deadline cause, if any.
    #[cold]
    #[inline(never)]
    pub(super) fn with_causes(
        cause: Option<Cause>,
        deadline_cause: Option<Cause>,
    ) -> Option<Box<Extra>> {
        (cause.is_some() || deadline_cause.is_some()).then(|| {
            Box::new(Extra {
                cause,
                deadline_cause,
                ..Extra::default()
            })
        })
    }

    #[cold]
    #[inline(never)]
    pub(super) fn with_deadline_cause(cause: Cause) -> Option<Box<Extra>> {
        Extra::with_causes(None, Some(cause))
    }

    /// Hands a finishing scope's mirror token to the walk, and returns its timer or token
    /// watch, to be dropped once the lock is released.
    #[cold]
    #[inline(never)]
    pub(super) fn take_outside(&mut self, walk: &mut Walk) -> Option<Source> {
        walk.released.mirrors.extend(self.mirror.take());
        self.source.take()
    }
}

impl Inner {
    /// The [`Extra`], made now if it was not, with the source moved into it.
    pub(super) fn extra(&mut self) -> &mut Extra {
        if !matches!(self.outside, Outside::Extra(_)) {
            self.make_extra();
        }
        match &mut self.outside {
            Outside::Extra(extra) => extra,
            _ => unreachable!("made just above"),
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn make_extra(&mut self) {
        let source = match mem::take(&mut self.outside) {
            Outside::Source(source) => Some(source),
            _ => None,
        };
        self.outside = Outside::Extra(Box::new(Extra {
            source,
            ..Extra::default()
        }));
    }

    #[inline]
    pub(super) fn extra_ref(&self) -> Option<&Extra> {
        match &self.outside {
            Outside::Extra(extra) => Some(extra),
            _ => None,
        }
    }

    #[inline]
    pub(super) fn cause(&self) -> Option<&Cause> {
        self.extra_ref()?.cause.as_ref()
    }

    #[inline]
    pub(super) fn deadline_cause(&self) -> Option<&Cause> {
        self.extra_ref()?.deadline_cause.as_ref()
    }

    #[inline]
    pub(super) fn mirror(&self) -> Option<&CancellationToken> {
        self.extra_ref()?.mirror.as_ref()
    }

    #[inline]
    pub(super) fn source(&self) -> Option<&Source> {
        match &self.outside {
            Outside::Nothing => None,
            Outside::Source(source) => Some(source),
            Outside::Extra(extra) => extra.source.as_ref(),
        }
    }

    /// Installs `source`, handing back the one it replaces.
    pub(super) fn replace_source(&mut self, source: Source) -> Option<Source> {
        match &mut self.outside {
            Outside::Extra(extra) => extra.source.replace(source),
            outside => match mem::replace(outside, Outside::Source(source)) {
                Outside::Source(old) => Some(old),
                _ => None,
            },
        }
    }

    /// Whether a finish has more to release than registrations: a source or a mirror token.
    #[inline]
    pub(super) fn holds_outside(&self) -> bool {
        match &self.outside {
            Outside::Nothing => false,
            Outside::Source(_) => true,
            Outside::Extra(extra) => extra.source.is_some() || extra.mirror.is_some(),
        }
    }

    /// Hands a finishing scope's mirror token to the walk, and returns its source, to be
    /// dropped once the lock is released.
    #[inline(never)]
    pub(super) fn take_outside(&mut self, walk: &mut Walk) -> Option<Source> {
        match &mut self.outside {
            Outside::Extra(extra) => extra.take_outside(walk),
            outside => match mem::take(outside) {
                Outside::Source(source) => Some(source),
                _ => None,
            },
        }
    }

    /// Empties what a reused scope carried, keeping an `Extra`'s allocation.
    pub(super) fn clear_outside(&mut self) {
        match &mut self.outside {
            Outside::Nothing => {}
            Outside::Source(_) => self.outside = Outside::Nothing,
            Outside::Extra(extra) => **extra = Extra::default(), // the allocation stays too
        }
    }
}

/// A scope's lock and what it guards, in an allocation of their own made on first use: most
/// scopes are leaves that never take their lock (see "Lone leaves"), and so never carry it
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

#[allow(unsafe_code)]
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

#[allow(unsafe_code)]
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
    pub(super) struct Mark(loom::cell::UnsafeCell<()>);

    impl Default for Mark {
        fn default() -> Self {
            Mark(loom::cell::UnsafeCell::new(()))
        }
    }

    impl Mark {
        pub(super) fn written(&self) {
            self.0.with_mut(|_| ());
        }

        pub(super) fn read(&self) {
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
