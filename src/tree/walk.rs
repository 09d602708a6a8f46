//! Cancellation: the iterative walk of a subtree, and releasing what it took.
//!
//! Keeps invariants 8 (user code runs with no lock held, flagged when the walk is not over,
//! and its panics are caught: [`run_reported`]), 9 (an explicit stack, no recursion) and 10
//! (`PROPAGATING` is cleared in [`Scope::settle`] only after the scope's subtree;
//! [`Scope::wait_settled`] waits for it). See "Who wakes whom" in `tree/mod.rs`. Pinned by
//! `loom_every_cancel_returns_after_the_subtree_is_done`,
//! `loom_a_leaf_waiter_woken_during_the_walk_and_a_cancel_from_its_thread` and
//! `tests/bad_input.rs::a_panicking_waker_loses_no_wake_and_no_callback`.

use std::mem;
use std::sync::{Arc, PoisonError};
use std::task::Waker;

use tokio_util::sync::CancellationToken;

use crate::error::{Cause, Error};
use crate::sync::{Ordering, parking_lot};

use super::batch::{Batch, Room, kept_room};
use super::{Callback, ERR, Finished, LIVE, LONE, PROPAGATING, Reg, SLEEPER, Scope};

impl Scope {
    /// Cancels this scope and, before returning, every scope below it; emits a debug event.
    #[inline]
    pub(crate) fn cancel(self: &Arc<Self>, err: Error, cause: Cause) {
        // Already done, and no cancellation still walking below (`PROPAGATING` is set with
        // `ERR` and cleared after the walk): nothing to do or to wait for.
        let state = self.state.load(Ordering::Acquire);
        if state & ERR != LIVE && state & PROPAGATING == 0 {
            return;
        }
        self.cancel_slow(err, cause);
    }

    pub(super) fn cancel_slow(self: &Arc<Self>, err: Error, cause: Cause) {
        // A lone scope whose parent is done is already done, for the parent's reason, as its
        // queries say, and was counted in the parent's event (see `lone.rs`).
        if self.state.load(Ordering::Acquire) & LONE != 0
            && let Some(parent) = self.parent.scope()
            && let parents = parent.state.load(Ordering::Acquire)
            && parents & ERR != LIVE
        {
            // Unless it linked meanwhile, and the parent's walk, not over yet, has still to
            // finish it or its subtree: then this cancel goes on, to finish it or wait for that
            // walk, as any other would (pinned by
            // `loom_a_lone_childs_cancel_returns_done_while_it_links_and_its_parent_is_cancelled`).
            let state = self.adopt(parent, parents);
            if state & ERR != LIVE && state & PROPAGATING == 0 {
                return;
            }
        }
        if let Some(descendants) = self.cancel_quietly(err, cause) {
            tracing::debug!(
                target: "taskctx",
                error = %err,
                cause = %self.cause().map_or(String::new(), |cause| cause.to_string()),
                descendants,
                "context done",
            );
        }
    }

    /// [`Scope::cancel`] without the event; returns how many descendants it finished (lone
    /// ones, done with their parent, included), or `None` if this scope was already done (and
    /// then only once that cancellation has reached every descendant).
    pub(super) fn cancel_quietly(self: &Arc<Self>, err: Error, cause: Cause) -> Option<usize> {
        // The walk's batches are set up only if the scope holds something.
        let mut slot = None;
        let finished = match self.finish_lock_free(err, &cause) {
            Some(finished) => finished,
            None => self.finish_locked(err, &cause, || slot.insert(Walk::default())),
        };
        match finished {
            Finished::Already => {
                self.wait_settled();
                return None;
            }
            Finished::Bare => {
                self.unlink();
                if let Some(walk) = &mut slot {
                    walk.released.run(); // a mirror token
                }
                return Some(self.lone_children());
            }
            Finished::Propagating => {}
        }
        let walk = slot.get_or_insert_with(Walk::default); // set up by the finish
        let mut descendants = self.lone_children();
        walk.enter_found();
        while let Some(step) = walk.stack.pop() {
            match step {
                Step::Enter(scope) => {
                    // Where what this scope hands the walk will start among what it holds.
                    let marks = walk.released.marks();
                    match scope.finish(err, &cause, walk) {
                        Finished::Propagating if walk.found.is_empty() => {
                            // Nothing below it to walk: its subtree is done. It leaves the
                            // walk at once, and its token and waiters go now rather than after
                            // the whole walk (see "Who wakes whom").
                            descendants += 1 + scope.lone_children();
                            scope.settle();
                            walk.released.release_early(marks);
                        }
                        Finished::Propagating => {
                            descendants += 1 + scope.lone_children();
                            walk.stack.push(Step::Leave(scope));
                            walk.enter_found(); // pushed above: left after them
                            continue;
                        }
                        Finished::Bare => {
                            descendants += 1 + scope.lone_children();
                            scope.unlink(); // from a merge's other parent, which may be live
                        }
                        // Finished by another cancellation, which may still be below it.
                        Finished::Already => scope.wait_settled(),
                    }
                    walk.released.scopes.push(scope);
                }
                Step::Leave(scope) => {
                    scope.settle();
                    walk.released.scopes.push(scope);
                }
            }
        }
        self.settle();
        walk.released.run();
        walk.give_back_room();
        if walk.owns_nothing() {
            // Every batch is empty and never spilled: their drop glue would only check each
            // slot again (`CancelTree/depth=1/Root=OpenCanceler`).
            mem::forget(slot);
        }
        Some(descendants)
    }

    /// Returns once no cancellation is walking below this done scope (see "Who wakes whom").
    pub(super) fn wait_settled(&self) {
        if waking::in_walk() {
            return; // a waker run by a walk on this thread: it must not wait (see "Who wakes whom")
        }
        // Most walks are a few scopes long: spin briefly before sleeping.
        for _ in 0..=SPINS {
            if self.state.load(Ordering::Acquire) & PROPAGATING == 0 {
                return;
            }
            std::hint::spin_loop();
        }
        let lot = parking_lot();
        let mut guard = lot.mutex.lock().unwrap_or_else(PoisonError::into_inner);
        // One read-modify-write on `state` each, here and in `settle`, so the two are ordered:
        // either this sees the bit clear, or `settle` sees `SLEEPER` and notifies under the
        // lot's lock, which this thread holds until it sleeps.
        let mut state = self.state.fetch_or(SLEEPER, Ordering::AcqRel);
        while state & PROPAGATING != 0 {
            guard = lot
                .condvar
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
            state = self.state.load(Ordering::Acquire);
        }
    }

    /// Ends this scope's walk: leaves its parents (not before, or a cancellation of a parent
    /// would not find it and wait), clears `PROPAGATING` and wakes whoever waits for it.
    pub(super) fn settle(&self) {
        self.unlink();
        if self.state.fetch_and(!PROPAGATING, Ordering::AcqRel) & SLEEPER != 0 {
            let lot = parking_lot();
            drop(lot.mutex.lock().unwrap_or_else(PoisonError::into_inner));
            lot.condvar.notify_all();
        }
    }
}

/// One step of a cancellation's depth-first walk.
pub(super) enum Step {
    /// Finish this scope and push its children.
    Enter(Arc<Scope>),
    /// This scope's subtree is done: clear its `PROPAGATING`.
    Leave(Arc<Scope>),
}

/// How many times [`Scope::wait_settled`] polls before it sleeps.
pub(super) const SPINS: usize = if cfg!(loom) { 0 } else { 100 };

/// A cancellation's walk: the scopes still to visit, and what it has taken.
#[derive(Default)]
pub(super) struct Walk {
    pub(super) stack: Batch<Step>,
    /// The children of the scope just finished, to be pushed above its `Leave`.
    pub(super) found: Batch<Arc<Scope>>,
    pub(super) released: Released,
}

impl Walk {
    /// Takes in one registration of a scope being finished (a move, or a `Weak` upgraded:
    /// nothing here runs user code, as it runs under the scope's lock).
    #[inline]
    pub(super) fn take(&mut self, reg: Reg) {
        match reg {
            Reg::Child(child) => self.found.extend(child.upgrade()),
            Reg::Waiter(waker) => self.released.wakers.push(waker),
            Reg::Callback(f) => self.released.callbacks.push(f),
        }
    }

    /// Whether every batch is empty and has never spilled, so that the walk holds nothing to
    /// drop.
    pub(super) fn owns_nothing(&self) -> bool {
        let Walk {
            stack,
            found,
            released,
        } = self;
        let Released {
            scopes,
            mirrors,
            wakers,
            callbacks,
        } = released;
        stack.owns_nothing()
            && found.owns_nothing()
            && scopes.owns_nothing()
            && mirrors.owns_nothing()
            && wakers.owns_nothing()
            && callbacks.owns_nothing()
    }

    /// Gives the room its batches spilled into back to the thread, once the walk is over and
    /// they are empty (see `Room`).
    pub(super) fn give_back_room(&mut self) {
        self.stack.give_back_room();
        self.found.give_back_room();
        self.released.scopes.give_back_room();
    }

    /// Schedules the children just found for a visit.
    pub(super) fn enter_found(&mut self) {
        let Walk { stack, found, .. } = self;
        found.drain(|child| stack.push(Step::Enter(child)));
    }
}

/// Everything a cancellation took out of the tree, handled once no lock is held. Small batches
/// stay on the stack, so waking a few waiters allocates nothing.
#[derive(Default)]
pub(super) struct Released {
    /// The scopes the walk reached: dropping the last handle to one may run user code (a
    /// value's `Drop`), which must not run while the walk holds `PROPAGATING` bits.
    pub(super) scopes: Batch<Arc<Scope>>,
    pub(super) mirrors: Batch<CancellationToken>,
    pub(super) wakers: Batch<Waker>,
    pub(super) callbacks: Batch<Callback>,
}

impl Released {
    /// How many mirror tokens and wakers it holds: where the next scope's will start.
    pub(super) fn marks(&self) -> (usize, usize) {
        (self.mirrors.len(), self.wakers.len())
    }

    /// Cancels the mirror tokens and wakes the waiters taken since `marks`, during the walk
    /// (see "Who wakes whom"): flagged, so that whatever they run on this thread never waits
    /// for a walk.
    pub(super) fn release_early(&mut self, (mirrors, wakers): (usize, usize)) {
        if (self.mirrors.len(), self.wakers.len()) == (mirrors, wakers) {
            return; // a leaf held only callbacks, which wait for the end of the walk
        }
        let _flag = waking::Flag::raise();
        self.mirrors.drain_from(mirrors, cancel_mirror);
        self.wakers.drain_from(wakers, wake);
    }

    /// Runs what was deferred, in place (moving the batches out would copy them, 400 bytes).
    /// Each item runs on its own: a panic in one is reported and the rest still run.
    pub(super) fn run(&mut self) {
        self.scopes
            .drain(|scope| run_reported("dropping a context", || drop(scope)));
        self.mirrors.drain(cancel_mirror);
        self.wakers.drain(wake);
        self.callbacks.drain(run_callback);
    }
}

/// Whether someone listens for the cancellation's debug event: then every cancellation is
/// seen, and none may be skipped.
#[inline]
pub(super) fn debug_events() -> bool {
    tracing::enabled!(target: "taskctx", tracing::Level::DEBUG)
}

/// Whether this thread is inside [`Released::release_early`].
pub(super) mod waking {
    use std::cell::Cell;

    #[cfg(not(loom))]
    std::thread_local! {
        static IN_WALK: Cell<bool> = const { Cell::new(false) };
    }
    #[cfg(loom)]
    loom::thread_local! {
        static IN_WALK: Cell<bool> = Cell::new(false);
    }

    pub(super) fn in_walk() -> bool {
        IN_WALK.try_with(Cell::get).unwrap_or(false)
    }

    /// Raised for as long as it lives; restores what it found (walks nest, through a waker
    /// that cancels).
    pub(super) struct Flag(bool);

    impl Flag {
        pub(super) fn raise() -> Flag {
            Flag(IN_WALK.try_with(|flag| flag.replace(true)).unwrap_or(false))
        }
    }

    impl Drop for Flag {
        fn drop(&mut self) {
            let _ = IN_WALK.try_with(|flag| flag.set(self.0));
        }
    }
}

/// Runs an `after_func` callback (see [`run_reported`]).
#[inline]
pub(crate) fn run_callback(f: Callback) {
    run_reported("an after_func callback", f);
}

/// Wakes a waiter (see [`run_reported`]).
#[inline]
pub(crate) fn wake(waker: Waker) {
    run_reported("a waker", || waker.wake());
}

/// Cancels a token handed out by `Context::token`, which wakes its waiters (see
/// [`run_reported`]).
#[inline]
pub(super) fn cancel_mirror(token: CancellationToken) {
    run_reported("a token's waker", || token.cancel());
}

/// Runs user code on behalf of a cancellation: a panic is caught and reported as a `tracing`
/// error event naming `what`, never propagated, so that whatever the cancellation still has
/// to finish, wake or run is not lost, and a canceller that has nothing to do with the
/// panicking code (a timer, another task) does not unwind. Pinned by
/// `tests/bad_input.rs::a_panicking_waker_loses_no_wake_and_no_callback`.
#[inline]
pub(crate) fn run_reported(what: &'static str, f: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let message = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("a non-string panic payload");
        tracing::error!(target: "taskctx", panic = message, "{what} panicked");
    }
}

// Where each kind of the walk's batches finds room when it spills (see `batch.rs`): the kinds
// a long chain's walk spills keep it per thread.
kept_room!(Step, KEPT_STEPS);
kept_room!(Arc<Scope>, KEPT_SCOPES);
impl Room for CancellationToken {}
impl Room for Waker {}
impl Room for Callback {}
