//! Lone leaves: scopes counted in their parent, not registered there.
//!
//! Most derived contexts are leaves that nothing ever waits on: a request's child that is
//! checked, or only passed on, and then dropped. Registering each in its parent and removing
//! it again would take the parent's lock twice per child, from every core that derives from
//! it. So a scope with one parent scope and no timer of its own is born *lone*: `LONE` set,
//! its link [`LONE_LINK`], and one added to its parent's `lone` count, registered nowhere.
//! Nor does it take its own lock, which is made on first use (`OnceInner`). The parent's
//! cancellation does not reach it; its queries look instead.
//!
//! Keeps invariants 4 to 7, and 16 (see `tree/mod.rs`):
//!
//! - 4: anything that would register in a scope first links it ([`Scope::link_first`]): a
//!   callback, a timer or token watch, a mirror token, a child (derived, or merged with it),
//!   which makes a chain of lone scopes impossible, and a second waiter. Linking
//!   ([`Scope::link_now`]) holds the scope's lock and claims `BUSY` (so no lock-free finish
//!   bypasses that lock), registers it in the parent as a new child is, and only then clears
//!   `LONE` and leaves the count, still under the parent's lock; if the parent refuses (it is
//!   done), the scope finishes with the parent's error and cause.
//! - 5: a query of a live lone scope loads the parent's state too. If the parent is done, it
//!   loads the scope's own again: if still lone, it was lone while the parent was done and
//!   stays lone (the parent refuses every link from then on), so the query finishes the scope
//!   with the parent's error and cause ([`Scope::adopt`]) and reports what the scope then
//!   holds, its own cancellation's if that won. If it is no longer lone, it reports the
//!   scope's own state, which the parent's walk, not over yet, will finish. So the parent's
//!   cancellation is complete for a lone child as soon as the parent is finished, and
//!   invariant 10 holds. A custom cause is not copied: the scope publishes `CUSTOM_CAUSE`
//!   and its queries read the parent's (invariant 16). Pinned by the `loom_a_lone_child*`
//!   models.
//! - 6: the common waiter, a task awaiting `done()` on its own child, does not link it: the
//!   future waits in the parent ([`Scope::wait_lone`]), registered there as the parent's own
//!   waiters are, and the child's link records where (a [`WAITER_LINK`]). The future
//!   registers through the parent's claim, then opens the link by a compare-and-swap from
//!   [`LONE_LINK`] under that slab's lock; if the swap fails (the child is linking, linked,
//!   finished, or has a waiter already), it takes its registration back out and registers in
//!   the child, linking it first. The child's own finish swaps its link after it publishes
//!   `ERR` ([`Scope::unlink`]); both are read-modify-writes of the link, so either the finish
//!   finds the registration and wakes it, or the future's swap fails on a closed link and the
//!   future sees the child done. The parent's finish takes the registration with its own and
//!   wakes it at the end of its walk; the child's later swap then finds the parent done and
//!   leaves it to that walk (invariant 2).
//! - 7: linking swaps the link to [`LINKING_LINK`] before it registers the child, which
//!   closes it to a new waiter, and takes the registration it swapped out, if any, out of the
//!   parent and wakes it (after the locks): the future, polled again, finds the link no longer
//!   names it and registers in the child. A dropped future swaps its registration back to
//!   [`LONE_LINK`] before it takes it out; a future polled with a new waker replaces it in
//!   place under the slab's lock, if the link still names the registration there. The
//!   [`WAITER_LINK`] bit sets a waiter's link value apart from every child's.
//!
//! A lone scope leaves its parent's count when it is finished or dropped (the swap of its
//! link in [`Scope::unlink`]), so the census counts live lone children from the count, and a
//! cancellation's event counts the lone children of every scope it finished. The count is
//! summed when read: the parent's own `lone`, and, once the parent has had [`AWAY_LIMIT`]
//! lone children made on other threads than its `home`, each of its shards' count for the
//! threads of that shard, so that threads deriving from one shared parent do not all write
//! one cache line ([`Scope::count_lone`]; pinned by
//! `lone_children_made_elsewhere_give_their_parent_shards_only_when_many`).

use std::mem;
use std::sync::Arc;
use std::task::{self, Poll, Waker};

use crate::error::{Cause, Error};
use crate::slab::Slab;
use crate::sync::Ordering;

use super::link::Link;
use super::shards::{SHARDS, this_thread};
use super::walk::{Walk, wake};
use super::{BUSY, CUSTOM_CAUSE, ERR, Finished, LIVE, LONE, Reg, Scope};

/// The link of a lone scope (see `lone.rs`): counted in its parent (see
/// [`Scope::count_lone`]), registered nowhere. No [`Link`] encodes to it.
pub(super) const LONE_LINK: usize = usize::MAX;

/// The link of a lone scope that is linking ([`Scope::link_now`]): still counted in its
/// parent, and closed to a waiter waiting there (see `lone.rs`).
pub(super) const LINKING_LINK: usize = usize::MAX - 1;

/// Marks the link of a lone scope whose `done()` future waits in its parent: the rest is the
/// [`Link`] of that waiter's registration there (see `lone.rs`). Above every encoded
/// [`Link`] (their indices are within 32 bits), and below the two values above.
pub(super) const WAITER_LINK: usize = 1 << (usize::BITS - 2);

/// Whether `link` is a lone scope's waiter in its parent ([`WAITER_LINK`]).
#[inline]
pub(super) fn is_waiter_link(link: usize) -> bool {
    link & WAITER_LINK != 0 && link < LINKING_LINK
}

/// A scope's `home`: the low bits name the thread that made it, the high bits count the lone
/// children made on other threads, up to [`AWAY_LIMIT`] (see [`Scope::count_lone`]).
pub(super) const HOME_THREAD_BITS: u32 = 24;
pub(super) const HOME_THREAD: u32 = (1 << HOME_THREAD_BITS) - 1;

/// How many lone children made on other threads than a scope's home give it shards.
pub(super) const AWAY_LIMIT: u32 = 64;

impl Scope {
    /// [`Scope::observed`] for a lone scope: if it is live, one more load, of the parent's
    /// state. Out of line: inlined, its code made the loops around a query of a scope that is
    /// not lone take more branches (below).
    #[cold]
    #[inline(never)]
    pub(super) fn observed_lone(&self, state: u8) -> u8 {
        if state & ERR != LIVE {
            return state;
        }
        let Some(parent) = self.parent.scope() else {
            return state;
        };
        let parents = parent.state.load(Ordering::Acquire);
        if parents & ERR == LIVE {
            return state;
        }
        self.adopt(parent, parents)
    }

    /// Finishes this lone scope with its done parent's error and cause, unless it has linked
    /// in the meantime (then the parent's walk reaches it), and returns its state after.
    /// `parents` is the parent's state, done.
    ///
    /// Invariant 16: unless its lock may guard something (`BUSY`), the scope takes the parent's
    /// `ERR` and `CUSTOM_CAUSE` bits in one swap and stores no cause: a custom one is read from
    /// the parent, final now that the parent is done, and kept alive by this scope's `parent`.
    /// So adopting makes neither the lock nor an `Extra` (pinned by
    /// `a_lone_child_adopting_its_parents_custom_cause_allocates_nothing`).
    #[cold]
    #[inline(never)]
    pub(super) fn adopt(&self, parent: &Scope, parents: u8) -> u8 {
        // Loaded again after the parent's: if it is still lone now, it was lone while the
        // parent was done, and stays lone (a link is made only under a live parent's lock).
        let mut state = self.state.load(Ordering::Acquire);
        let adopted = parents & (ERR | CUSTOM_CAUSE);
        while state & BUSY == 0 {
            if state & (ERR | LONE) != LONE {
                return state;
            }
            match self.state.compare_exchange_weak(
                state,
                state | adopted,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.unlink(); // leaves the parent's count
                    return state | adopted;
                }
                Err(actual) => state = actual,
            }
        }
        // `BUSY`: the scope is linking (and its parent refusing it), so a finish takes its lock
        // anyway, and stores the cause there as any other finish does.
        if state & (ERR | LONE) != LONE {
            return state;
        }
        let (err, cause) = parent.reason();
        // Nothing is registered in a lone scope, so the finish hands nothing to a walk.
        let mut slot = None;
        let finished = match self.finish_lock_free(err, &cause) {
            Some(finished) => finished,
            None => self.finish_locked(err, &cause, || slot.insert(Walk::default())),
        };
        debug_assert!(slot.is_none() && !matches!(finished, Finished::Propagating));
        if let Finished::Bare = finished {
            self.unlink(); // leaves the parent's count
        }
        self.state.load(Ordering::Acquire)
    }

    /// Ends `child`'s lone life under this scope, now that it is registered here (not before:
    /// a query that finds the child not lone leaves it to this scope's walk, invariant 5).
    ///
    /// A plain store: the child is linking ([`Scope::link_now`]), so it holds its own lock with
    /// `BUSY` set, and nothing else changes its state meanwhile (a finish, a claim or a
    /// registration of its own takes that lock; its children link it before they register).
    pub(super) fn unlone(&self, child: &Scope) {
        let state = child.state.load(Ordering::Relaxed);
        child.state.store(state & !LONE, Ordering::Release);
        self.count_lone(-1);
    }

    /// Adds `by` to this scope's count of lone children: its own `lone`, or, on a thread other
    /// than its home (the thread that made it) once the scope has shards, the `lone` of that
    /// thread's shard. A child may leave its count on another thread than it joined it (its
    /// release, or its link, happens there), so one count may wrap below zero; their sum,
    /// which is all anyone reads ([`Scope::lone_children`]), is exact. Every change is a
    /// read-modify-write: which count a thread takes is only a matter of speed.
    ///
    /// A parent shared by threads (a server's root) would see every child's count go up and
    /// down from every core, on the line of its reference counts (`CommonParentCancel`). So a
    /// scope that has had [`AWAY_LIMIT`] lone children made on other threads gets shards, and
    /// the other threads count there, each on its shard's line. Not at the first: shards take 8
    /// cache lines, and in a work-stealing runtime most scopes have a child made elsewhere (the
    /// stress harness's peak resident memory shows it). Pinned by
    /// `lone_children_made_elsewhere_give_their_parent_shards_only_when_many`.
    #[inline(always)]
    pub(super) fn count_lone(&self, by: i32) {
        self.count_lone_on(this_thread(), by);
    }

    /// [`Scope::count_lone`] for a caller that has read its thread's number, `me`.
    #[inline(always)]
    pub(super) fn count_lone_on(&self, me: u32, by: i32) {
        let me = me & HOME_THREAD;
        let home = self.home.load(Ordering::Relaxed);
        if me != home & HOME_THREAD {
            if let Some(shards) = self.shards.get() {
                let count = &shards.0[me as usize % SHARDS].1;
                count.fetch_add(by as u32, Ordering::Relaxed);
                return;
            }
            if by > 0 {
                self.count_away_birth(home);
            }
        }
        self.lone.fetch_add(by as u32, Ordering::Relaxed);
    }

    /// Counts a lone child made on another thread than this scope's home, in the high bits of
    /// `home`; at the [`AWAY_LIMIT`]th, gives the scope its shards (see [`Scope::count_lone`]).
    #[cold]
    #[inline(never)]
    pub(super) fn count_away_birth(&self, home: u32) {
        if home >> HOME_THREAD_BITS >= AWAY_LIMIT {
            let _ = self.shards.get_or_init();
        } else {
            // Two threads may both add past the limit: the bits count up to 255, and a wrap
            // would only delay the shards.
            self.home
                .fetch_add(1 << HOME_THREAD_BITS, Ordering::Relaxed);
        }
    }

    /// Links this scope into its parent if it is lone: called before anything registers in it
    /// (see `lone.rs`).
    #[inline(always)]
    pub(crate) fn link_first(self: &Arc<Self>) {
        if self.state.load(Ordering::Acquire) & LONE != 0 {
            self.link_now();
        }
    }

    /// [`Scope::link_first`] for a lone scope: under its own lock, so that of two threads only
    /// one links it, and with `BUSY` claimed, so that no lock-free finish slips past the lock.
    #[cold]
    #[inline(never)]
    pub(super) fn link_now(self: &Arc<Self>) {
        let inner = self.lock();
        if self.state.load(Ordering::Acquire) & LONE == 0 || self.claim().is_some() {
            return; // linked by another thread meanwhile, or done: it registers nothing more
        }
        let Some(parent) = self.parent.scope() else {
            return; // unreachable: a lone scope's parent can be cancelled
        };
        debug_assert_eq!(parent.state.load(Ordering::Relaxed) & LONE, 0);
        // Closes the link to a waiter waiting in the parent from now on, and takes the one
        // waiting there, if any: woken below, its future registers here instead.
        let waiting = self.link.swap(LINKING_LINK, Ordering::AcqRel);
        let evicted = is_waiter_link(waiting)
            .then(|| parent.take_lone_waiter(waiting))
            .flatten();
        let refused = parent.attach(self, 0, true).err();
        drop(inner);
        if let Some(waker) = evicted {
            wake(waker);
        }
        if let Some((err, cause)) = refused {
            // The parent is done: so is this scope, as its queries already report.
            self.cancel_quietly(err, cause);
        }
    }

    /// Takes out of this scope's registrations the waiter a lone child registered here as
    /// `link` ([`WAITER_LINK`]), if this scope's finish has not taken it already. The caller
    /// owns that registration: it swapped `link` out of the child's link.
    #[cold]
    #[inline(never)]
    pub(super) fn take_lone_waiter(&self, link: usize) -> Option<Waker> {
        if self.state.load(Ordering::Acquire) & ERR != LIVE {
            return None; // invariant 2: its registrations are already gone, to its walk
        }
        let taken = self.in_slab(Link::decode(link & !WAITER_LINK), |slab, index| {
            slab.remove_if(index, |reg| matches!(reg, Reg::Waiter(_)))
        });
        match taken.flatten() {
            Some(Reg::Waiter(waker)) => Some(waker),
            _ => None,
        }
    }

    /// [`Scope::register_waiter`] for a lone scope, whose `done()` future waits in its parent
    /// (see `lone.rs`), or for a future that waited there (`slot` a [`WAITER_LINK`]):
    /// `None` if the scope is linked or linking, and the future must register in it.
    #[inline(never)]
    pub(super) fn wait_lone(
        &self,
        slot: &mut usize,
        cx: &mut task::Context<'_>,
    ) -> Option<Poll<Error>> {
        let parent = self.parent.scope()?;
        if *slot & WAITER_LINK != 0 {
            // Still ours if the link still names it: whoever takes it swaps the link first,
            // then needs the lock held here to take it out of the slab.
            if let Some(stale) = parent.rewake_lone_waiter(self, *slot, cx.waker()) {
                drop(stale);
                return Some(Poll::Pending);
            }
            // Taken: by this scope's finish or its parent's (then it is done), or by a link
            // (then the future registers in this scope, which can never be lone again).
            return match self.err() {
                Some(err) => {
                    *slot = 0;
                    Some(Poll::Ready(err))
                }
                None => None,
            };
        }
        match parent.register_lone_waiter(self, cx.waker().clone()) {
            Ok(Some(link)) => {
                *slot = link;
                Some(Poll::Pending)
            }
            // The link was not open: this scope is linking, linked or done.
            Ok(None) => match self.err() {
                Some(err) => {
                    *slot = 0;
                    Some(Poll::Ready(err))
                }
                None => None,
            },
            Err(_) => {
                // The parent is done, and so is this lone scope (its queries adopt that).
                *slot = 0;
                Some(Poll::Ready(self.err().unwrap_or(Error::Canceled)))
            }
        }
    }

    /// Registers `waker` here for the lone child `child`, and records it in the child's link
    /// if that is still open ([`LONE_LINK`]), all under the lock that holds the registration:
    /// the link value (a [`WAITER_LINK`]) if so, `None` if not (nothing stays registered).
    pub(super) fn register_lone_waiter(
        &self,
        child: &Scope,
        waker: Waker,
    ) -> Result<Option<usize>, (Error, Cause)> {
        let mut refused = None;
        let link = self.register(
            || Reg::Waiter(waker),
            |slab, index, link| {
                let link = WAITER_LINK | link.encode();
                let opened = child.link.compare_exchange(
                    LONE_LINK,
                    link,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                match opened {
                    Ok(_) => Some(link),
                    Err(_) => {
                        refused = slab.remove_if(index, |_| true); // dropped after the lock
                        None
                    }
                }
            },
        );
        drop(refused);
        link
    }

    /// Puts `waker` in the registration `link` of the lone child `child`, if the child's link
    /// still names it; hands back the waker it replaces (to drop after the lock), or `None`
    /// if the registration is no longer the child's.
    pub(super) fn rewake_lone_waiter(
        &self,
        child: &Scope,
        link: usize,
        waker: &Waker,
    ) -> Option<Option<Waker>> {
        let update = |slab: &mut Slab<Reg>, index: usize| {
            if child.link.load(Ordering::Acquire) != link {
                return None;
            }
            match slab.get_mut(index) {
                Some(Reg::Waiter(old)) if old.will_wake(waker) => Some(None),
                Some(Reg::Waiter(old)) => Some(Some(mem::replace(old, waker.clone()))),
                _ => None, // taken by this scope's finish
            }
        };
        self.in_slab(Link::decode(link & !WAITER_LINK), update)?
    }

    /// [`Scope::forget_waiter`] for a future that waits in the parent: the registration is
    /// taken out by whoever swaps it out of the link, this future or the scope's finish.
    #[cold]
    #[inline(never)]
    pub(super) fn forget_lone_waiter(&self, slot: usize) {
        let closed =
            self.link
                .compare_exchange(slot, LONE_LINK, Ordering::AcqRel, Ordering::Relaxed);
        if closed.is_ok()
            && let Some(parent) = self.parent.scope()
        {
            drop(parent.take_lone_waiter(slot));
        }
    }
}
