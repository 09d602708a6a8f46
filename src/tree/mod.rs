//! The cancellation tree: the state machine behind every context that can become done.
//!
//! A [`Scope`] is one node that can be cancelled: made by `with_cancel`, `with_deadline`,
//! `merge` and `with_token`. Value and `without_cancel` contexts are not scopes; they point at
//! the scope that governs them (or at none, and are never done).
//!
//! # State machine
//!
//! One atomic byte, `state`, holds everything a lock-free reader needs:
//!
//! - `ERR` (two bits): `LIVE`, then `CANCELED` or `DEADLINE_EXCEEDED`. Set once, never cleared.
//! - `CUSTOM_CAUSE`: the cause is not the error itself and is stored in `inner` (its `extra`). Without
//!   it, the cause *is* the error, so the common cancellation publishes error and cause in one
//!   store.
//! - `BUSY`: `inner` may hold something that finishing must take (children, waiters,
//!   callbacks, a timer or token watch, a mirror token). Set under the lock before anything is
//!   added; never cleared while live.
//! - `PROPAGATING`: set together with `ERR` by a finish that took registrations, cleared once
//!   that cancellation has finished every scope below this one (see "Who wakes whom").
//! - `SLEEPER`: a thread sleeps until `PROPAGATING` clears and must be notified.
//! - `SHARDED`: children may be registered in the scope's shards (see "Shards"). Set, with
//!   `BUSY`, by a registration into a shard, under that shard's lock.
//! - `LONE`: the scope is not registered in its parent, only counted there, and its queries
//!   look at the parent too (see "Lone leaves"). Set at birth, cleared once it is registered.
//!
//! [`Scope::finish`] is the only way `ERR` is set. If `BUSY` is clear and the cause is plain,
//! it is a single compare-and-swap from a value without `BUSY`; otherwise it takes the lock,
//! sets `BUSY` (from then on no lock-free finish can win), stores a custom cause, sets `ERR` and
//! takes everything out of `inner`. Hence:
//!
//! 1. A custom cause is written under the lock before `CUSTOM_CAUSE` is published; a reader
//!    that sees `CUSTOM_CAUSE` takes the lock to read it. `err()` and `cause()` never disagree.
//! 2. Registration ([`Scope::claim`], under the lock) sets `BUSY` by a read-modify-write of
//!    `state` and looks at the value it replaced: if `ERR` was already set, it refuses; if not,
//!    any later finish sees `BUSY`, fails the lock-free swap and waits for the lock. So either
//!    the registration is taken by the finish, or it is refused. Once done, `inner` stays
//!    empty forever, a registration index is never reused, and removing one is a no-op.
//! 3. A child is attached under its parent's lock through that same check, so either the child
//!    is in the parent's registrations when the parent finishes, or the child is born done with
//!    the parent's error and cause. No cancellation is lost.
//!
//! # Lone leaves
//!
//! Most derived contexts are leaves that nothing ever waits on: a request's child that is
//! checked, or only passed on, and then dropped. Registering each in its parent and removing it
//! again took most of what a derive cost beyond `child_token` (6-8 of about 10 ns, see
//! BENCHMARKS.md), and on a parent shared by many threads it was two trips of the parent's
//! lock between the cores. So a scope with one parent scope and no timer of its own is born
//! *lone*: `LONE` set, its link `LONE_LINK`, and one added to its parent's `lone` count,
//! registered nowhere. Nor does it take its own lock, which is made on first use
//! ([`OnceInner`]): a lone leaf is one 128-byte chunk, as the bare token's node (unless it was
//! born with a custom cause, which the lock holds, or reuses a scope that had made its lock,
//! see "Reuse"). The parent's cancellation does not reach it; its queries look instead:
//!
//! 4. A lone scope's parent scope is never lone. Anything that would register in a scope
//!    first links it ([`Scope::link_first`]): a callback, a timer or token watch, a mirror
//!    token, a child (derived, or merged with it), which makes a chain of lone scopes
//!    impossible, and a second waiter (the first waits in the parent: see below). Linking
//!    ([`Scope::link_now`]) holds the scope's lock and claims `BUSY` (so no lock-free finish
//!    bypasses that lock), registers it in the parent as a new child is, and only then clears
//!    `LONE` and leaves the count, still under the parent's lock; if the parent refuses (it is
//!    done), the scope finishes with the parent's error and cause. So a lone scope holds
//!    nothing to hand a walk, and a scope that is no longer lone is in its parent's
//!    registrations.
//! 5. A query of a live lone scope loads the parent's state too. If the parent is done, it
//!    loads the scope's own again: if still lone, it was lone while the parent was done and
//!    stays lone (the parent refuses every link from then on), so the query finishes the scope
//!    with the parent's error and cause ([`Scope::adopt`]) and reports what the scope then
//!    holds, its own cancellation's if that won. If it is no longer lone, it reports the
//!    scope's own state, which the parent's walk, not over yet, will finish. Either way a
//!    scope is seen done only once its own state is, so every later query agrees, and a lone
//!    scope's own `cancel()` that finds the parent done takes the parent's reason too. The
//!    parent's cancellation is complete for it as soon as the parent is finished: **when
//!    `cancel()` returns, every descendant reports done** still holds.
//!
//! The common waiter, a task awaiting `done()` on its own child, does not link it either: the
//! future waits in the parent ([`Scope::wait_lone`]), registered there as the parent's own
//! waiters are, and the child's link records where (a [`WAITER_LINK`]). Linking the child
//! made its lock, a second allocation, and touched both in the parent's walk and both again
//! when they were freed: 100,000 tasks each awaiting its own child of one root all exited
//! 1.21x sooner once their futures waited in the root (0.86x-0.93x the token's time, from
//! 1.03x-1.23x; BENCHMARKS.md). The protocol keeps who wakes whom simple: **whoever swaps a
//! waiter's registration out of the child's link owns it**, and takes it out of the parent's
//! slab under that slab's lock.
//!
//! 6. The future registers under the parent's lock (or its shard's) through the parent's
//!    claim, as a child would, then opens the link by a compare-and-swap from [`LONE_LINK`]
//!    under that lock; if the swap fails (the child is linking, linked, finished, or has a
//!    waiter already), it takes its registration back out and registers in the child as any
//!    waiter of a linked scope does, linking it first. The child's own finish swaps its link
//!    after it publishes `ERR` ([`Scope::unlink`]); both are read-modify-writes of the link,
//!    so either the finish finds the registration and wakes it, or the future's swap fails on
//!    a closed link and the future sees the child done. The parent's finish takes the
//!    registration with its own and wakes it at the end of its walk, when everything below
//!    the parent is done; the child's later swap then finds the parent done and leaves the
//!    registration to that walk (invariant 2: a done scope's slab never takes a registration
//!    again, so an index there is never reused).
//! 7. Linking swaps the link to [`LINKING_LINK`] before it registers the child, which closes
//!    it to a new waiter, and takes the registration it swapped out, if any, out of the parent
//!    and wakes it (after the locks): the future, polled again, finds the link no longer names
//!    it and registers in the child. A dropped future swaps its registration back to
//!    [`LONE_LINK`] before it takes it out; a future polled with a new waker replaces it in
//!    place under the slab's lock, if the link still names the registration there (whoever
//!    swapped it out needs that lock to take it). A waiter link is never a child's link: its
//!    [`WAITER_LINK`] bit sets it apart, so no swap mistakes one for the other.
//!
//! A lone scope leaves its parent's count when it is finished or dropped (the swap of its link
//! in [`Scope::unlink`], as for a registration), so the census counts live lone children from
//! the count, and the cancellation's event counts the lone children of every scope it finished.
//! The count is summed when read: the parent's own `lone`, and, once the parent has had
//! [`AWAY_LIMIT`] lone children made on other threads than the one that made it (its
//! `home`), each of its shards' for the other threads of that shard, so that threads deriving
//! from one shared parent do not all write one line (see [`Scope::count_lone`]).
//! Queries of a scope that is not lone test one more bit (`ErrOK` 1.3-1.4 -> 2.3-2.6 ns/op on a
//! machine in a slow state, where Go's took 5.2); a live lone one also calls out of line and
//! loads its parent's state. Chains pay too: each link is made when its child is derived, with
//! the lock and claim of its own on top of the registration an eager child made
//! (`CancelTree/depth=10/Root=Background` 937-1,086 -> 1,174 ns/op), which the chains won
//! back elsewhere since: a walk's spilled room kept per thread, and a link whose child has
//! gone let go unfinished by its last handle ([`Scope::let_go`]); the same row now 7,181
//! instructions per op against the token's 7,668. BENCHMARKS.md has the figures.
//!
//! # Shards
//!
//! A parent shared by many threads (a server's root, a request that fans out) sees one
//! child registered and removed per derived context, from every core, and its one lock and
//! slab then move between the cores' caches twice per child. So the first registration that
//! finds the lock held ([`Scope::attach`] tries it) gives the scope eight shards, each a lock
//! and a slab on a cache line of its own; from then on children register in their thread's
//! shard (threads take shards in turn), and leave it through their link, which names the slab.
//! Waiters, callbacks, timers and the mirror token stay in `inner`. (Lone children joining
//! or leaving the count on other threads than the parent's home count in their thread's
//! shard, made for that on first use; `SHARDED` is not set for a count.) The protocol keeps invariants 2 and 3:
//!
//! - A registration into a shard holds the shard's lock while it sets `BUSY | SHARDED` by a
//!   read-modify-write (or, once both are set, loads `state`: every finish that swaps from then
//!   on holds this shard's lock across its swap), refuses if that saw `ERR`, and inserts.
//! - The locked finish publishes `ERR` with a compare-and-swap. If the value it swaps from has
//!   `SHARDED`, it holds every shard's lock across the swap and takes their slabs. If not, the
//!   swap fails when a registration set `SHARDED` in between, and it tries again, now locking
//!   the shards. So a registration is either in a shard the finish drains, or sees `ERR`.
//!
//! `PROPAGATING` is still set in the same swap as `ERR`, when `inner` or a shard held
//! children.
//!
//! # Who wakes whom
//!
//! [`Scope::cancel`] finishes the scope, then walks its subtree depth first with an explicit
//! stack (no recursion, so a chain of any length is safe), finishing every live descendant with
//! the same error and cause, and dropping their timers and token watches as it goes. A scope
//! with nothing below it to walk (a leaf, which is what a task usually awaits) leaves the walk
//! as soon as it is finished, and then, with no lock held, its token (the one handed out by
//! `Context::token`) is cancelled and its `done()` futures are woken. Only after the whole
//! subtree is done does the walk, with no lock held: cancel the other scopes' tokens, wake
//! their waiters, then run `after_func` callbacks (a panic in one is caught and reported; the
//! rest still run). So when a waiter runs, its context's token is cancelled and every
//! descendant of its context reports done (Go promises less: it closes a context's channel
//! before it cancels the children), and when a callback runs, every descendant of the
//! cancelled scope does.
//!
//! Waking the leaves as it goes lets their tasks run on other threads while the walk goes on,
//! as the token's cancellation does: 100,000 tasks each awaiting its own child of one root all
//! exited 34.1 ms after the cancel, against 51.9 when every wake waited for the end of the
//! walk (the token's 40.8-44.2; medians of 7 alternating runs). But a waker (and a token's
//! cancellation, which wakes the token's waiters) is code the walk does not control, and it
//! runs while this thread holds the `PROPAGATING` bits of the scopes above (see below). So it
//! runs flagged ([`Released::release_early`]): a cancellation it starts on this thread never
//! waits for a bit ([`Scope::wait_settled`] returns at once), whichever thread holds it, so
//! that no cycle of waits can form through user code; such a `cancel()` may return, and
//! release its own waiters and callbacks, before the descendants another walk is finishing
//! are done. A panic in it, as in every waker, token and callback a cancellation runs, is
//! caught and reported ([`run_reported`]), never propagated, so that the walk still finishes
//! every scope, clears every bit, wakes every waiter and runs every callback.
//!
//! One drop skips all this: the last handle of a live scope that nothing else holds, and
//! whose debug event nobody listens for, releases it unfinished when it holds nothing a
//! cancellation would release ([`Scope::let_go`]): when nothing was ever registered in it
//! (`BUSY` clear), or, for a scope that had registrations (a link of a chain, whose child has
//! gone), once it is proven unique and unlinked as for reuse and found empty. No one can tell
//! the difference; a parent's walk that reaches a never-registered scope through its `Weak`
//! registration before it is unlinked finishes it harmlessly.
//!
//! Another cancellation may have finished a scope first and still be walking below it: a
//! second `cancel()` of that scope, a deadline firing, or a walk from an ancestor that reaches
//! it. Go's answer is to walk the children under the parent's lock, so the late comer blocks;
//! here the walk holds no lock, and `PROPAGATING` says instead that it is not over. A
//! cancellation that finds a scope done and `PROPAGATING` waits (in [`Scope::wait_settled`])
//! until it clears. Hence, whoever calls it: **when `cancel()` returns, every descendant
//! reports done.** The walker clears a scope's bit when the walk leaves that scope, after its
//! subtree, waits included; only then does the scope leave its parents' registrations, so a
//! cancellation of a parent still finds it and waits. These waits cannot deadlock: a thread waits only with no lock
//! held, for a scope strictly below the one it is walking, and the only bits it holds belong
//! to the scopes on its current path, which are above that one; following who waits for whom
//! always leads further down an acyclic tree, so it ends at a thread that is not waiting.
//! No user code runs during a walk but wakers (the scopes a walk touches are dropped after
//! it), and a waker run by a walk never waits, so none can re-enter a wait on a bit its own
//! thread holds.
//!
//! # Reuse
//!
//! A scope's allocation can outlive it. When the last reference to a scope is let go by a cancel
//! handle ([`Scope::recycle`]: a chain released leaf first, a context nobody cloned dropped before
//! its handle) or by a context derived from it as that child goes ([`Scope::try_recycle`]: a root
//! whose handle and context went before its children), the allocation goes to the thread, which
//! keeps up to 1,024, and the next scope created on that thread takes it instead of calling the
//! allocator: what Go's per-thread allocation caches do for its contexts. (A `Context` the program
//! drops itself frees its scope: a `Drop` on `Context` to recycle there too cost
//! `CancelTree/depth=1/Root=Background` 25 -> 32 ns/op.) A scope is kept only if nothing can reach
//! it. The releaser must hold the only strong reference, and the only `Weak`s must be its
//! registrations in its parents (a timer or token watch holds one more, so a live scope with a
//! deadline is freed as before); it then leaves its parents (a cancellation that upgrades one of
//! those registrations meanwhile only finishes a scope no one else holds), and `Arc::get_mut`
//! confirms that nothing holds it, not even a `Weak` (a cancellation that took the registration
//! before it left still holds one); if not, it is freed as usual. So no stale registration, timer
//! or `AfterFunc` can reach a kept scope's next life. What it still holds (a custom cause, the
//! callbacks and mirror token of a scope released live, which a freed scope would drop unrun and
//! uncancelled too) is dropped before it is kept, with no lock held. A finish empties a scope's
//! registrations in place ([`Scope::finish`]), so every scope a cancellation reaches keeps their
//! room (up to 16 entries) and its next life registers without allocating. The lock goes with
//! them: a scope that made its lock ([`OnceInner`]) keeps it, and its out-of-line fields'
//! allocation, across all its lives, while a scope that never made one starts its next life
//! without it and makes it on first use, as a fresh one does.
//!
//! Recycling where a child lets go of its parent as well as in the handle was first measured
//! before the shards existed, and made `CommonParentCancel` 18% slower (502 against 428
//! ns/op): the two cores' quicker turns met more often on the shared parent's lock. With the
//! shards it is no slower (118.4 against 118.8 ns/op, medians of 7 alternating runs), and
//! roots released by their last child are reused: `CancelTree/depth=1/Root=ClosedCanceler`
//! 105.8 -> 73.0 ns/op, `OpenCanceler` 220 -> 178, `depth=10/Root=ClosedCanceler` 383 ->
//! 347; `depth=10/Root=Background` pays the extra look at each parent's count, 591 -> 604.
//!
//! # Deadlock safety
//!
//! - No lock is held while calling out: wakers, callbacks, timer and token drops, and drops of
//!   anything taken out of a registration slab (a waker or closure may own a `Context` whose drop
//!   takes a lock) all happen after the lock is released. Under it, a finish only moves what it
//!   takes and upgrades children's `Weak`s; one that no longer upgrades is dropped there, which
//!   at most frees memory whose value is gone.
//! - At most two scope locks are ever held at once, in two places: while a new merge is linked
//!   into its two parents ([`Scope::new`]) it holds its own lock (and is born `BUSY`, so that no
//!   lock-free finish can bypass that lock), then takes each parent's in turn; and while a lone
//!   scope links ([`Scope::link_now`]) it holds its own lock, then takes its parent's. Parents
//!   are linked before either begins, so neither takes a third. Nobody ever locks a child while
//!   holding its parent (propagation takes the registrations out and unlocks first), so the
//!   order child → parent cannot form a cycle. A concurrent
//!   cancellation of one parent therefore waits until both links are complete and sees them.
//!   A scope with one parent needs no such lock: its one link is written under the parent's
//!   lock, which the parent's own finish takes afterwards.
//! - Shard locks come after their scope's lock: the locked finish (and the census) take the
//!   scope's lock, then every shard's in index order; a registration or an unlink holds one
//!   shard's lock and takes no other while holding it.
//! - The slot a scope occupies in a parent (its `link`s) is written once during [`Scope::new`] and
//!   cleared by [`Scope::unlink`], which runs only after [`Scope::finish`] won, in `Drop`, or
//!   in [`Scope::recycle`] and [`Scope::try_recycle`] once nothing but a cancellation can
//!   reach the scope (see "Reuse"). Clearing is a swap, so of two that race only one removes.
//!
//! # Memory orderings
//!
//! Every change to `state` is a read-modify-write with `AcqRel` (or `Acquire` on failure), but
//! one: the `Release` store that clears `LONE`, made while no other change can be (see
//! [`Scope::unlone`]). So all changes to it form one total order that also orders the critical
//! sections around them;
//! lock-free readers (`is_done`, `err`, `cause`) load it with `Acquire`, which is all invariant
//! 1 needs. Every other field is read and written under a lock, but the `lone` and `tasks`
//! counts, relaxed counters that only the census and the cancellation's event read. Links are atomics only so
//! that they can be cleared through `&self`; they are read and written under the lock of the
//! parent's slab that holds them (or with exclusive access in `Drop`). The lock itself is
//! published once, by a compare-and-swap of its pointer from null, and read with `Acquire`
//! ([`OnceInner`]); where the scope is not yet shared (born with a cause) or is held alone
//! (a reused scope), the pointer is stored plainly.

use std::fmt;
use std::mem;
use std::sync::{Arc, PoisonError, TryLockError, Weak};
use std::task::{self, Poll, Waker};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::context::{Context, release};
use crate::error::{Cause, Error};
use crate::slab::Slab;
use crate::source::{self, Source};
use crate::sync::{
    AtomicPtr, AtomicU8, AtomicU32, AtomicUsize, Mutex, MutexGuard, Ordering, parking_lot,
};
use crate::testing::Census;

const LIVE: u8 = 0;
const CANCELED: u8 = 1;
const DEADLINE_EXCEEDED: u8 = 2;
const ERR: u8 = 0b0011;
const CUSTOM_CAUSE: u8 = 0b0100;
const BUSY: u8 = 0b1000;
const PROPAGATING: u8 = 0b1_0000;
const SLEEPER: u8 = 0b10_0000;
const SHARDED: u8 = 0b100_0000;
const LONE: u8 = 0b1000_0000;

/// The link of a lone scope (see "Lone leaves"): counted in its parent (see
/// [`Scope::count_lone`]), registered nowhere. No [`Link`] encodes to it.
const LONE_LINK: usize = usize::MAX;

/// The link of a lone scope that is linking ([`Scope::link_now`]): still counted in its
/// parent, and closed to a waiter waiting there (see "Lone leaves").
const LINKING_LINK: usize = usize::MAX - 1;

/// Marks the link of a lone scope whose `done()` future waits in its parent: the rest is the
/// [`Link`] of that waiter's registration there (see "Lone leaves"). Above every encoded
/// [`Link`] (their indices are within 32 bits), and below the two values above.
const WAITER_LINK: usize = 1 << (usize::BITS - 2);

/// Whether `link` is a lone scope's waiter in its parent ([`WAITER_LINK`]).
#[inline]
fn is_waiter_link(link: usize) -> bool {
    link & WAITER_LINK != 0 && link < LINKING_LINK
}

/// A scope's `home`: the low bits name the thread that made it, the high bits count the lone
/// children made on other threads, up to [`AWAY_LIMIT`] (see [`Scope::count_lone`]).
const HOME_THREAD_BITS: u32 = 24;
const HOME_THREAD: u32 = (1 << HOME_THREAD_BITS) - 1;

/// How many lone children made on other threads than a scope's home give it shards.
const AWAY_LIMIT: u32 = 64;

/// What made a scope, and what it needs beyond the common fields.
pub(crate) enum Kind {
    /// `with_cancel`, `with_cancel_cause`, or a timeout that did not fit in an `Instant`.
    Cancel,
    /// `with_deadline` and `with_timeout`: `at` is the requested deadline (what to report
    /// when it fires, if not the error, is in [`Extra`]).
    Deadline { at: Instant },
    /// `merge`: done when the parent or the other context is. Out of line, as merges are
    /// rare: every other scope's kind is 16 bytes.
    Merge(Box<Merge>),
    /// `with_token`: done when the parent is, or when a foreign token is cancelled.
    Token,
}

/// A merge's second parent.
pub(crate) struct Merge {
    pub(crate) other: Context,
    /// Link 1: this scope's place in `other`'s registrations (see `Scope::link`).
    slot: AtomicUsize,
}

impl Kind {
    pub(crate) fn merge(other: Context) -> Kind {
        Kind::Merge(Box::new(Merge {
            other,
            slot: AtomicUsize::new(0),
        }))
    }
}

pub(crate) type Callback = Box<dyn FnOnce() + Send + 'static>;

/// One registration in a scope's slab.
enum Reg {
    Child(Weak<Scope>),
    Waiter(Waker),
    Callback(Callback),
}

/// The fields guarded by a scope's lock, in an allocation of their own (see [`OnceInner`]).
/// 88 bytes with the lock, a 96-byte glibc chunk (see the scope's size test).
#[derive(Default)]
struct Inner {
    regs: Slab<Reg>,
    /// What some scopes hold besides registrations.
    outside: Outside,
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
enum Outside {
    #[default]
    Nothing,
    Source(Source),
    Extra(Box<Extra>),
}

/// What a plain `with_cancel` or `with_timeout` scope never holds: out of line, so that it
/// costs such a scope nothing beyond the 24 bytes of [`Outside`].
#[derive(Default)]
struct Extra {
    /// The cause, when it is not the error itself (`CUSTOM_CAUSE`).
    cause: Option<Cause>,
    /// What a deadline reports when it fires, if not the error itself.
    deadline_cause: Option<Cause>,
    /// What can cancel this scope from outside the tree (its deadline timer or a token
    /// watch), once the scope has an `Extra`; [`Outside::Source`] before.
    source: Option<Source>,
    /// The token behind `Context::token`, made on first use and cancelled with the scope.
    mirror: Option<CancellationToken>,
}

impl Extra {
    /// An `Extra` for a scope born with a custom cause or given a deadline cause, if any.
    #[cold]
    #[inline(never)]
    fn with_causes(cause: Option<Cause>, deadline_cause: Option<Cause>) -> Option<Box<Extra>> {
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
    fn with_deadline_cause(cause: Cause) -> Option<Box<Extra>> {
        Extra::with_causes(None, Some(cause))
    }

    /// Hands a finishing scope's mirror token to the walk, and returns its timer or token
    /// watch, to be dropped once the lock is released.
    #[cold]
    #[inline(never)]
    fn take_outside(&mut self, walk: &mut Walk) -> Option<Source> {
        walk.released.mirrors.extend(self.mirror.take());
        self.source.take()
    }
}

impl Inner {
    /// The [`Extra`], made now if it was not, with the source moved into it.
    fn extra(&mut self) -> &mut Extra {
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
    fn make_extra(&mut self) {
        let source = match mem::take(&mut self.outside) {
            Outside::Source(source) => Some(source),
            _ => None,
        };
        self.outside = Outside::Extra(Box::new(Extra {
            source,
            ..Extra::default()
        }));
    }

    fn extra_ref(&self) -> Option<&Extra> {
        match &self.outside {
            Outside::Extra(extra) => Some(extra),
            _ => None,
        }
    }

    fn cause(&self) -> Option<&Cause> {
        self.extra_ref()?.cause.as_ref()
    }

    fn deadline_cause(&self) -> Option<&Cause> {
        self.extra_ref()?.deadline_cause.as_ref()
    }

    fn mirror(&self) -> Option<&CancellationToken> {
        self.extra_ref()?.mirror.as_ref()
    }

    fn source(&self) -> Option<&Source> {
        match &self.outside {
            Outside::Nothing => None,
            Outside::Source(source) => Some(source),
            Outside::Extra(extra) => extra.source.as_ref(),
        }
    }

    /// Installs `source`, handing back the one it replaces.
    fn replace_source(&mut self, source: Source) -> Option<Source> {
        match &mut self.outside {
            Outside::Extra(extra) => extra.source.replace(source),
            outside => match mem::replace(outside, Outside::Source(source)) {
                Outside::Source(old) => Some(old),
                _ => None,
            },
        }
    }

    /// Whether a finish has more to release than registrations: a source or a mirror token.
    fn holds_outside(&self) -> bool {
        match &self.outside {
            Outside::Nothing => false,
            Outside::Source(_) => true,
            Outside::Extra(extra) => extra.source.is_some() || extra.mirror.is_some(),
        }
    }

    /// Hands a finishing scope's mirror token to the walk, and returns its source, to be
    /// dropped once the lock is released.
    #[inline(never)]
    fn take_outside(&mut self, walk: &mut Walk) -> Option<Source> {
        match &mut self.outside {
            Outside::Extra(extra) => extra.take_outside(walk),
            outside => match mem::take(outside) {
                Outside::Source(source) => Some(source),
                _ => None,
            },
        }
    }

    /// Empties what a reused scope carried, keeping an `Extra`'s allocation.
    fn clear_outside(&mut self) {
        match &mut self.outside {
            Outside::Nothing => {}
            Outside::Source(_) => self.outside = Outside::Nothing,
            Outside::Extra(extra) => **extra = Extra::default(), // the allocation stays too
        }
    }
}

/// What [`Scope::finish`] did.
enum Finished {
    /// Another cancellation finished the scope first.
    Already,
    /// Finished, and held no registrations: by the lock-free swap, or under the lock with
    /// whatever else it held (a timer, a mirror token) handed to the walk.
    Bare,
    /// Finished under the lock, with registrations: they are in the walk now, and the scope
    /// is `PROPAGATING` until the walk leaves it.
    Propagating,
}

// Layout. A scope is 104 bytes (120 with the `Arc`'s counts, which glibc serves from the
// 128-byte chunk it gives the bare token's 112-byte node); its lock and registrations are one
// pointer away, made on first use ([`OnceInner`]), with a timer or token watch inline in it
// (`Inner::outside`), and so is what few scopes use (a merge's second parent in `Kind::Merge`;
// causes and a mirror token in an `Extra`). A lone leaf (see "Lone leaves"), which never
// takes its lock, is these 120 bytes alone: `ScaleMemoryPerContext/derive=with_cancel` wrote
// a 192-byte chunk per derive with the lock and slab inline (184 bytes), and was bound by
// those writes (BENCHMARKS.md).
// The order keeps the fields every child reads from its parent (`parent`, `deadline`,
// `state`) at least 64 bytes past the reference counts and the `lone` count, which every child
// derived or dropped writes: on no 64-byte line together, whatever the allocation's 16-byte
// alignment (a unit test checks it). `shards` and `inner` are read by a child only right
// after it wrote the counts' line (registering in its parent), so they may share it. Two
// workers deriving from one parent (`CommonParentCancel`) took 322-359 ns/op with `shards`
// next to the counts and 185-228 with the old 232-byte layout, which also kept the lock and
// the registrations on lines of their own; with the read fields apart 111-199 (the spread is
// the machine's, run to run: the layouts were measured alternately). `repr(C)` keeps the
// order.
#[repr(C)]
pub(crate) struct Scope {
    /// How many lone children (see "Lone leaves") this scope has: written by each as it is
    /// made and as it goes, next to the reference counts each also writes.
    lone: AtomicU32,
    /// The thread that made this scope, and how many lone children other threads made (see
    /// [`HOME_THREAD_BITS`]). Read and written with the counts, on their line.
    home: AtomicU32,
    kind: Kind,
    /// Where this scope is registered in its parent scope (link 0; a merge keeps its link 1,
    /// in `other`'s scope, in its `Kind`): a [`Link`] encoded, 0 when not registered there.
    link: AtomicUsize,
    /// The lock, and the registrations and rarer fields it guards: made on first use.
    inner: OnceInner,
    /// Where children register once the lock is contended (see "Shards").
    shards: OnceShards,
    /// Tasks started with `Context::spawn` or `spawn_graceful` on a context this scope or a
    /// descendant governs, and not yet ended.
    tasks: AtomicU32,
    /// Keeps what follows 64 bytes past the counts (see the layout note above).
    _apart: [u8; 4],
    /// The context this scope was derived from: link 0 of the tree, and the chain that value
    /// lookups and `Display` walk.
    parent: Context,
    /// The earliest of this scope's own deadline and those of everything it follows.
    deadline: Option<Instant>,
    /// `ERR`, `CUSTOM_CAUSE`, `BUSY`, `PROPAGATING` and `SLEEPER` bits (see "State machine").
    state: AtomicU8,
}

impl Scope {
    /// Creates a scope under `parent` and links it into the tree. The scope is born done if a
    /// parent already is, or if its own deadline has passed. `make_kind` builds the kind that
    /// `other` (a merge's second parent) and `own` (its own deadline) describe; `fire_cause` is
    /// what the deadline reports when it fires, if not the error; `now`, if the caller has just
    /// read the clock, saves reading it again.
    // The kind is built only where it is stored, and the whole is inlined into each caller:
    // a kind passed in and held across the calls below lived in a stack slot, written with
    // narrower stores than the copy that read it back, which stalled (5-10% of a derive).
    #[inline(always)]
    pub(crate) fn new(
        parent: &Context,
        make_kind: impl FnOnce() -> Kind,
        other: Option<&Context>,
        own: Option<Instant>,
        fire_cause: Option<Cause>,
        now: Option<Instant>,
    ) -> Arc<Scope> {
        let inherited = earliest(parent.deadline(), other.and_then(Context::deadline));
        // A deadline no earlier than an inherited one would only fire after the ancestor's
        // timer has already cancelled this scope: no timer of its own is needed. Unless it has
        // passed: the ancestor's timer may not have run yet, and a deadline in the past means
        // done at once.
        let mut now = now;
        let arm_at = own.filter(|&at| {
            inherited.is_none_or(|inherited| at < inherited)
                || at <= *now.get_or_insert_with(Instant::now)
        });
        let is_merge = other.is_some();
        // Looked up once: a context's scope is a match on its node.
        let parent_scope = parent.scope();
        let other_scope = other.and_then(Context::scope);
        // A parent links into its own parent before it has children (see "Lone leaves"), and
        // a parent seen done stays done: the scope is born done with its reason, without
        // taking the parent's lock or linking (a parent being cancelled right now is seen live
        // here and refuses the link below instead).
        let born_done = parent_scope
            .and_then(Scope::link_and_inherit)
            .or_else(|| other_scope.and_then(Scope::link_and_inherit));
        let is_born_done = born_done.is_some();
        // The causes go into an `Extra` here, out of the way: an empty cause carried further
        // was written as a tag and read back by a wider copy, which stalled (20% of a derive).
        // A scope with one parent and no timer is born lone, unless that parent cannot be
        // cancelled (nothing to follow) or is done.
        let lone_in = parent_scope.filter(|_| !is_merge && arm_at.is_none());
        let (state, extra) = match born_done {
            Some((state, None)) => (state, fire_cause.and_then(Extra::with_deadline_cause)),
            Some((state, cause)) => (state, Extra::with_causes(cause, fire_cause)),
            None => {
                let extra = fire_cause.and_then(Extra::with_deadline_cause);
                let state = match (is_merge, lone_in) {
                    (true, _) => BUSY,
                    (false, Some(_)) => LONE,
                    (false, None) => LIVE,
                };
                (state, extra)
            }
        };
        let link = if state & LONE != 0 { LONE_LINK } else { 0 };
        let deadline = earliest(inherited, own);
        // One read of this thread's number: the new scope's home, and the count a lone one
        // joins in its parent.
        let me = this_thread();
        let scope = Scope::alloc(parent, make_kind, deadline, state, link, extra, me);
        // `other` and `own` describe the kind built: a second parent only for a merge, an own
        // deadline (which arms a timer) only for a deadline.
        debug_assert_eq!(scope.link_parent(1).is_some(), other_scope.is_some());
        debug_assert!(own.is_none() || matches!(scope.kind, Kind::Deadline { .. }));
        if is_born_done {
            return scope;
        }
        if let (Some(parent), LONE) = (lone_in, state) {
            // Counted, not registered: a parent cancelled from here on is seen by the child's
            // own queries, which look at it (see "Lone leaves").
            parent.count_lone_on(me, 1);
            return scope;
        }

        let refused = {
            // A merge links into two parents while holding its own lock (see "Deadlock safety").
            let _linking = is_merge.then(|| scope.lock());
            (0..2).find_map(|link| scope.link_parent(link)?.attach(&scope, link, false).err())
        };
        if let Some((err, cause)) = refused {
            scope.cancel_quietly(err, cause);
        } else if let Some(at) = arm_at {
            scope.arm(at, now);
        }
        scope
    }

    /// Links the parent `scope` first if it is lone ([`Scope::link_first`]), then, if it is
    /// done: the state and custom cause a scope born under it starts with. One load of its
    /// state for both when it is not lone.
    #[inline(always)]
    fn link_and_inherit(scope: &Arc<Scope>) -> Option<(u8, Option<Cause>)> {
        let mut state = scope.state.load(Ordering::Acquire);
        if state & LONE != 0 {
            scope.link_now();
            state = scope.state.load(Ordering::Acquire);
        }
        if state & ERR == LIVE {
            return None;
        }
        if state & CUSTOM_CAUSE == 0 {
            return Some((state & ERR, None)); // the cause is the error
        }
        Some((state & (ERR | CUSTOM_CAUSE), scope.cause()))
    }

    /// A new scope: a spare allocation this thread kept (see "Reuse"), or a fresh one.
    #[inline(always)] // as `Scope::new`: the kind stays a constant
    fn alloc(
        parent: &Context,
        make_kind: impl FnOnce() -> Kind,
        deadline: Option<Instant>,
        state: u8,
        link: usize,
        extra: Option<Box<Extra>>,
        home: u32,
    ) -> Arc<Scope> {
        if let Some(mut spare) = spare::take() {
            let scope = spare.get();
            // `reset` left a background parent and a plain kind, which own nothing: no drop
            // glue to run for them.
            debug_assert!(scope.parent.scope().is_none() && matches!(scope.kind, Kind::Cancel));
            mem::forget(mem::replace(&mut scope.parent, parent.clone()));
            mem::forget(mem::replace(&mut scope.kind, make_kind()));
            scope.deadline = deadline;
            scope.state.store(state, Ordering::Relaxed);
            scope.link.store(link, Ordering::Relaxed);
            scope.home.store(home & HOME_THREAD, Ordering::Relaxed);
            if let Some(extra) = extra {
                // Rare: a cause from the start (it replaces an `Extra` the scope kept).
                scope.inner.get_mut_or_init().outside = Outside::Extra(extra);
            }
            return spare.into_arc();
        }
        Scope::fresh(|| Scope {
            parent: parent.clone(),
            kind: make_kind(),
            deadline,
            state: AtomicU8::new(state),
            link: AtomicUsize::new(link),
            lone: AtomicU32::new(0),
            shards: OnceShards::new(),
            tasks: AtomicU32::new(0),
            home: AtomicU32::new(home & HOME_THREAD),
            inner: OnceInner::holding(extra),
            _apart: [0; 4],
        })
    }

    /// What `make` builds (a fresh scope; generic only so that a test can count drops), in an
    /// allocation of its own whose counts are set by plain stores.
    ///
    /// `Arc::new` built the scope on the stack and copied it in with `memcpy`, whose wide
    /// loads stalled on the narrow stores just made; `Arc::new_cyclic` writes it in place, then
    /// makes and forgets a `Weak` and sets the strong count with a locked add; `Arc::get_mut`
    /// on an uninitialized allocation checks uniqueness with a compare-and-swap. This writes it
    /// in place with none of these: `ScaleMemoryPerContext/derive=with_cancel` 37.0 -> 34.6
    /// ns/op against `new_cyclic` (medians of 11 alternating runs; `new_cyclic` had taken it
    /// from 47.8 to 42.4 against `Arc::new`). How much of that the locked add was is not known:
    /// one on a line just written measured 0.3-0.5 ns in another build (BENCHMARKS.md).
    #[allow(unsafe_code)]
    #[inline(always)]
    fn fresh<T>(make: impl FnOnce() -> T) -> Arc<T> {
        // An uninitialized value: nothing to copy, and the allocator called with a constant
        // layout (`Arc::new_uninit` computed it out of line on every call).
        let fresh = Arc::new(mem::MaybeUninit::<T>::uninit());
        // SAFETY: `fresh` was made just above and not shared: no other `Arc` or `Weak` to it
        // exists, no reference to its value has been made, and `make` cannot reach it, so
        // nothing else reads or writes the value. `Arc::as_ptr` derives the pointer from the
        // allocation's own pointer, not through `Deref`, so it may be written through; it is
        // valid and aligned for a `T`. The slot holds no value, so writing it drops nothing; if
        // `make` panics, nothing is written and `fresh` frees the allocation as a
        // `MaybeUninit`, without dropping a value.
        unsafe { Arc::as_ptr(&fresh).cast_mut().cast::<T>().write(make()) };
        // SAFETY: the value was written just above (a panic in `make` unwinds before this).
        unsafe { fresh.assume_init() }
    }

    /// Drops a cancel handle's `scope`: cancels it, unless nothing could tell whether it was
    /// cancelled, then recycles it (see "Reuse").
    ///
    /// Nothing can tell when the handle holds the only reference and the scope holds nothing a
    /// cancellation would release. Then there is no context, child or task to see it done, no
    /// walk below it to wait for, no waiter to wake, no callback to run, no token handed out
    /// to cancel; and with its registrations in its parents removed, no walk can reach it.
    /// Three kinds are common: a scope already done; a scope never registered in (`BUSY`
    /// clear), released as it is; and the link of a chain released leaf first, whose child
    /// has left it. That one has `BUSY` set and was finished under its lock; now it is proven
    /// unique as for reuse, and reused unfinished: `CancelTree/depth=10/Root=Background`
    /// 8,863 -> 7,181 instructions per op (valgrind's counts; the bare token's 7,668).
    #[inline]
    pub(crate) fn let_go(scope: Arc<Scope>) {
        let scope = if Arc::strong_count(&scope) == 1 {
            let state = scope.state.load(Ordering::Acquire);
            if state & ERR != LIVE || (state & BUSY == 0 && !debug_events()) {
                return Scope::recycle(scope);
            }
            match Scope::let_go_busy(scope) {
                Some(scope) => scope,
                None => return,
            }
        } else {
            scope
        };
        scope.cancel(Error::Canceled, Cause::from(Error::Canceled));
        Scope::recycle(scope);
    }

    /// [`Scope::let_go`] for a live `BUSY` scope: keeps it if nothing can tell, or hands it
    /// back to be cancelled.
    #[inline(never)]
    fn let_go_busy(scope: Arc<Scope>) -> Option<Arc<Scope>> {
        let mut kept = match Scope::unique_for_reuse(scope) {
            Ok(kept) => kept,
            Err(scope) => return Some(scope),
        };
        if kept.get().holds_nothing() && !debug_events() {
            Scope::keep(kept);
            return None;
        }
        Some(kept.into_arc()) // unlinked: its own cancellation is all there is
    }

    /// Whether this scope, which nothing else can reach, holds nothing that its cancellation
    /// would release (see [`Scope::let_go`]).
    fn holds_nothing(&mut self) -> bool {
        let Some(inner) = self.inner.get_mut() else {
            return true; // never locked: nothing was ever registered
        };
        inner.regs.len() == 0 && !inner.holds_outside()
    }

    /// Lets go of a cancel handle's `scope`. If it held the last reference and nothing else
    /// can reach the scope, the scope leaves its parents and its allocation is kept for reuse
    /// on this thread (see "Reuse"); otherwise this is a plain drop.
    #[inline]
    pub(crate) fn recycle(scope: Arc<Scope>) {
        if let Ok(kept) = Scope::unique_for_reuse(scope) {
            Scope::keep(kept);
        }
    }

    /// [`Scope::recycle`] once `kept` is proven unique and unlinked.
    #[inline]
    fn keep(mut kept: Kept) {
        let unique = kept.get();
        // The parents go last, once this scope is kept: what their drops run finds it out of
        // the way. (Released here rather than returned as `try_recycle` does: a pair of
        // contexts returned through memory is read back by wider loads than wrote it, and
        // stalled, 25 -> 29 ns per derive and release.)
        let (parent, other) = unique.take_parents();
        unique.reset();
        drop(spare::keep(kept));
        release(parent);
        if let Some(other) = other {
            release(other);
        }
    }

    /// [`Scope::recycle`] for a scope whose last reference a chain's release holds (a child's
    /// link to its parent): hands back the parents to let go of next, or the scope if it
    /// cannot be kept.
    // Inlined into its one caller, whose loop then takes the parents in registers: returned
    // through memory, they were read back by wider loads than wrote them, and stalled (124 ->
    // 121 ns per `OpenCanceler` op).
    #[inline(always)]
    pub(crate) fn try_recycle(scope: Arc<Scope>) -> Result<(Context, Option<Context>), Arc<Scope>> {
        let mut kept = Scope::unique_for_reuse(scope)?;
        let unique = kept.get();
        let parents = unique.take_parents();
        unique.reset();
        drop(spare::keep(kept));
        Ok(parents)
    }

    /// If nothing but `scope` can reach the scope and the thread keeps fewer than it may:
    /// unlinks it and returns it for [`Scope::reset`]; otherwise hands it back.
    #[inline(always)]
    fn unique_for_reuse(scope: Arc<Scope>) -> Result<Kept, Arc<Scope>> {
        // Only we hold the scope, and the only `Weak`s are its registrations in its parents:
        // whoever upgrades one of those is a cancellation, which finishes the scope and to
        // which it makes no difference whether it is still linked.
        if Arc::strong_count(&scope) != 1 {
            return Err(scope);
        }
        let second = match &scope.kind {
            Kind::Merge(merge) => merge.slot.load(Ordering::Relaxed),
            _ => 0,
        };
        let first = scope.link.load(Ordering::Relaxed);
        let linked = usize::from(first != 0 && first != LONE_LINK) + usize::from(second != 0);
        if Arc::weak_count(&scope) != linked || spare::full() {
            return Err(scope);
        }
        scope.unlink();
        // Fails if a cancellation took the registration before `unlink` and still holds it.
        Kept::new(scope)
    }

    /// Empties a scope nobody else can reach, for reuse: what it still holds is dropped here,
    /// and every field is left as [`Scope::alloc`] expects it.
    fn reset(&mut self) {
        debug_assert_eq!(self.link.load(Ordering::Relaxed), 0);
        debug_assert_eq!(self.tasks.load(Ordering::Relaxed), 0);
        debug_assert_eq!(self.lone_children(), 0);
        // The counts sum to zero, but the own one may not be zero alone (see `count_lone`),
        // and the shards' go with them below.
        self.lone.store(0, Ordering::Relaxed);
        if !matches!(self.kind, Kind::Cancel) {
            self.kind = Kind::Cancel;
        }
        self.deadline = None;
        self.state.store(LIVE, Ordering::Relaxed);
        // Shards, and room for more than a few registrations, are for the scope that needed
        // them: not carried into the next life.
        if self.shards.get().is_some() {
            self.shards = OnceShards::new();
        }
        // The lock and what it guards stay, for the next life's use, if it had them.
        let Some(inner) = self.inner.get_mut() else {
            return;
        };
        inner.regs.clear(); // no registrations are left, but their room may be
        inner.clear_outside();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock_inner(self.inner.get_or_init())
    }

    #[inline]
    pub(crate) fn parent(&self) -> &Context {
        &self.parent
    }

    pub(crate) fn kind(&self) -> &Kind {
        &self.kind
    }

    #[inline]
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    #[inline]
    pub(crate) fn err(&self) -> Option<Error> {
        // The lone case apart, after the error is decoded, and `observed_lone` out of line:
        // testing `ERR | LONE` for exactly `LONE` first, with `observed_lone` inlined, made the
        // benchmark loops around a query take three or four branches instead of two, and
        // took `ErrOK` 1.4 -> 3.0 ns/op and `ErrCanceled` 1.1 -> 2.3 on contexts never lone.
        // This order: 2.6 and 2.2 (medians of 5 alternating runs, this machine in its slower
        // state; other orders and inlinings measured 2.1-3.9 and 1.8-3.7). `is_done` alike.
        let state = self.state.load(Ordering::Acquire);
        match decode(state) {
            None if state & LONE != 0 => decode(self.observed_lone(state)),
            err => err,
        }
    }

    /// Whether children register in this scope's shards: it is shared between threads.
    #[inline]
    pub(crate) fn is_sharded(&self) -> bool {
        self.state.load(Ordering::Relaxed) & SHARDED != 0
    }

    #[inline]
    pub(crate) fn is_done(&self) -> bool {
        let state = self.state.load(Ordering::Acquire);
        state & ERR != LIVE || (state & LONE != 0 && self.observed_lone(state) & ERR != LIVE)
    }

    /// The state a query reports: this scope's own, once a lone scope has taken its parent's
    /// error if the parent is done (see "Lone leaves").
    #[inline(always)]
    fn observed(&self) -> u8 {
        let state = self.state.load(Ordering::Acquire);
        if state & LONE != 0 {
            return self.observed_lone(state);
        }
        state
    }

    /// [`Scope::observed`] for a lone scope: if it is live, one more load, of the parent's
    /// state. Out of line: inlined, its code made the loops around a query of a scope that is
    /// not lone take more branches (below).
    #[cold]
    #[inline(never)]
    fn observed_lone(&self, state: u8) -> u8 {
        if state & ERR != LIVE {
            return state;
        }
        match self.parent.scope() {
            Some(parent) if parent.state.load(Ordering::Acquire) & ERR != LIVE => {
                self.adopt(parent)
            }
            _ => state,
        }
    }

    /// Finishes this lone scope with its done parent's error and cause, unless it has linked
    /// in the meantime (then the parent's walk reaches it), and returns its state after.
    #[cold]
    #[inline(never)]
    fn adopt(&self, parent: &Scope) -> u8 {
        // Loaded again after the parent's: if it is still lone now, it was lone while the
        // parent was done, and stays lone (a link is made only under a live parent's lock).
        let state = self.state.load(Ordering::Acquire);
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

    /// The error and cause of a done scope (the plain error if it is live).
    fn reason(&self) -> (Error, Cause) {
        let err = decode(self.state.load(Ordering::Acquire)).unwrap_or(Error::Canceled);
        (err, self.cause().unwrap_or(Cause::from(err)))
    }

    pub(crate) fn cause(&self) -> Option<Cause> {
        let state = self.observed();
        let err = decode(state)?;
        if state & CUSTOM_CAUSE == 0 {
            return Some(Cause::from(err));
        }
        // Invariant 1: written under this lock before `CUSTOM_CAUSE` was published.
        Some(self.lock().cause().cloned().unwrap_or(Cause::from(err)))
    }

    /// Called with `inner` locked, before adding anything to it: marks the scope `BUSY` and
    /// returns `Some(state)` if it is already done (invariant 2).
    fn claim(&self) -> Option<u8> {
        let state = self.state.load(Ordering::Acquire);
        let state = if state & BUSY == 0 {
            self.state.fetch_or(BUSY, Ordering::AcqRel)
        } else {
            state // with `BUSY` set, `ERR` only changes under the lock we hold
        };
        (state & ERR != LIVE).then_some(state)
    }

    /// The error and cause of a done scope, given its state and its locked `inner`.
    fn done_reason(state: u8, inner: &Inner) -> (Error, Cause) {
        let err = decode(state).unwrap_or(Error::Canceled);
        let cause = match inner.cause() {
            Some(cause) if state & CUSTOM_CAUSE != 0 => cause.clone(),
            _ => Cause::from(err),
        };
        (err, cause)
    }

    /// Registers `child` as this scope's child on the child's link `link`, or reports why this
    /// scope is already done. `lone`: the child is a lone child of this scope, which leaves
    /// `LONE` and the count here under the lock that registers it (see "Lone leaves").
    fn attach(&self, child: &Arc<Scope>, link: usize, lone: bool) -> Result<(), (Error, Cause)> {
        // Made before the lock is taken: the lock of a parent shared by many threads is held
        // as briefly as can be (`Arc::downgrade` is a compare-and-swap loop).
        let weak = Arc::downgrade(child);
        self.register(
            || Reg::Child(weak),
            |_, _, at| {
                if let Some(slot) = child.link(link) {
                    slot.store(at.encode(), Ordering::Relaxed);
                }
                if lone {
                    self.unlone(child);
                }
            },
        )
    }

    /// Registers what `make` builds in this scope, and hands `placed` where it went while the
    /// lock of the slab that holds it is still held; or reports why this scope is already done
    /// (then `make` is dropped unused, after the lock). Into `inner`, or into the calling
    /// thread's shard once the lock has been found contended (see "Shards").
    #[inline(always)]
    fn register<T>(
        &self,
        make: impl FnOnce() -> Reg,
        placed: impl FnOnce(&mut Slab<Reg>, usize, Link) -> T,
    ) -> Result<T, (Error, Cause)> {
        if self.state.load(Ordering::Relaxed) & SHARDED != 0 || Scope::forced_shards(self) {
            return self.register_sharded(make, placed);
        }
        let mut inner = match self.inner.get_or_init().try_lock() {
            Ok(inner) => inner,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            // Another thread holds the lock: from now on children spread over shards.
            Err(TryLockError::WouldBlock) => return self.register_sharded(make, placed),
        };
        if let Some(state) = self.claim() {
            return Err(Scope::done_reason(state, &inner));
        }
        let index = inner.regs.insert_with(make);
        Ok(placed(&mut inner.regs, index, Link::Inner(index)))
    }

    /// Ends `child`'s lone life under this scope, now that it is registered here (not before:
    /// a query that finds the child not lone leaves it to this scope's walk, invariant 5).
    ///
    /// A plain store: the child is linking ([`Scope::link_now`]), so it holds its own lock with
    /// `BUSY` set, and nothing else changes its state meanwhile (a finish, a claim or a
    /// registration of its own takes that lock; its children link it before they register).
    fn unlone(&self, child: &Scope) {
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
    /// A parent shared by threads (a server's root) saw every child's count go up and down
    /// from every core, on the line of its reference counts: two more moves of that line
    /// between the cores per child, `CommonParentCancel` 146 -> 211 ns/op (medians of 8
    /// alternating runs against a build without the counts). So a scope that has had
    /// [`AWAY_LIMIT`] lone children made on other threads gets shards, and the other threads
    /// count there, each on its shard's line. Not at the first: shards take 8 cache lines, and
    /// giving them to every scope with a child made elsewhere (in a work-stealing runtime, most
    /// of them) took the stress test's peak resident memory from 640-730 to 1,040-1,150 MiB.
    #[inline(always)]
    fn count_lone(&self, by: i32) {
        self.count_lone_on(this_thread(), by);
    }

    /// [`Scope::count_lone`] for a caller that has read its thread's number, `me`.
    #[inline(always)]
    fn count_lone_on(&self, me: u32, by: i32) {
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
    fn count_away_birth(&self, home: u32) {
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
    /// (see "Lone leaves").
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
    fn link_now(self: &Arc<Self>) {
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

    /// [`Scope::register`] into the shard of the calling thread (see "Shards").
    #[cold]
    #[inline(never)]
    fn register_sharded<T>(
        &self,
        make: impl FnOnce() -> Reg,
        placed: impl FnOnce(&mut Slab<Reg>, usize, Link) -> T,
    ) -> Result<T, (Error, Cause)> {
        let number = shard_of_this_thread();
        let shards = self.shards.get_or_init();
        let mut shard = lock_slab(&shards.0[number].0);
        // The first registration into a shard sets `BUSY | SHARDED` by a read-modify-write,
        // whose `SHARDED` makes a finish that has not locked the shards fail its swap and lock
        // them. Once both are set, a load under the shard's lock is enough: every finish that
        // swaps afterwards holds this lock across its swap, so this load either sees its `ERR`
        // (the lock orders the two) or the finish drains this shard after the insert below.
        // (Every child of a shared parent did the read-modify-write before: one more move of
        // the line between the cores deriving from it, `CommonParentCancel` 96.9-102.4 ->
        // 75.6-76.7 ns/op, medians of 4 alternating runs. A loom model covers this path.)
        let state = self.state.load(Ordering::Acquire);
        let state = if state & (BUSY | SHARDED) == BUSY | SHARDED {
            state
        } else {
            self.state.fetch_or(BUSY | SHARDED, Ordering::AcqRel)
        };
        if state & ERR != LIVE {
            drop(shard);
            drop(make);
            let inner = self.lock();
            return Err(Scope::done_reason(state, &inner));
        }
        let index = shard.insert_with(make);
        Ok(placed(&mut shard, index, Link::Shard(number, index)))
    }

    /// Test hook: makes this scope register its children in shards from now on, as if its
    /// lock had been found contended (`SHARDED` is then set by the first registration, as in
    /// `register_sharded` after a contended `try_lock`).
    #[cfg(any(test, loom))]
    pub(crate) fn use_shards(&self) {
        let _ = self.shards.get_or_init();
    }

    #[cfg(any(test, loom))]
    fn forced_shards(&self) -> bool {
        self.shards.get().is_some()
    }

    #[cfg(not(any(test, loom)))]
    #[inline(always)]
    fn forced_shards(&self) -> bool {
        false
    }

    /// Removes this scope from the registrations of every parent it is linked into.
    #[inline]
    fn unlink(&self) {
        // Plain loads first: most scopes have one link or none left, and a swap is a
        // read-modify-write even when it finds nothing.
        let second = match &self.kind {
            Kind::Merge(merge) => merge.slot.load(Ordering::Relaxed),
            _ => 0,
        };
        if self.link.load(Ordering::Relaxed) | second != 0 {
            self.unlink_slow();
        }
    }

    #[inline(never)] // keeps the check above small enough to inline
    fn unlink_slow(&self) {
        for (link, slot) in (0..2).filter_map(|link| Some((link, self.link(link)?))) {
            if slot.load(Ordering::Relaxed) == 0 {
                continue; // most scopes have no second link: no swap for it
            }
            let slot = slot.swap(0, Ordering::Relaxed);
            if slot == 0 {
                continue;
            }
            let Some(parent) = self.link_parent(link) else {
                continue;
            };
            if slot == LONE_LINK || slot == LINKING_LINK {
                parent.count_lone(-1);
                continue;
            }
            if is_waiter_link(slot) {
                // A lone scope whose `done()` future waits in the parent: it leaves the count,
                // and the waiter goes with it, woken if this scope is done (its own finish).
                parent.count_lone(-1);
                if let Some(waker) = parent.take_lone_waiter(slot)
                    && self.state.load(Ordering::Acquire) & ERR != LIVE
                {
                    wake(waker);
                }
                continue;
            }
            if parent.state.load(Ordering::Acquire) & ERR != LIVE {
                continue; // invariant 2: its registrations are already gone
            }
            let me: *const Scope = self;
            let mine =
                |reg: &Reg| matches!(reg, Reg::Child(weak) if std::ptr::eq(weak.as_ptr(), me));
            let removed = parent.in_slab(Link::decode(slot), |slab, index| {
                slab.remove_if(index, mine)
            });
            drop(removed);
        }
    }

    /// Runs `f` on the slab that `link` names (this scope's `inner`, or one of its shards) and
    /// the index there, under that slab's lock; `None` if it names a shard that was never
    /// made.
    #[inline]
    fn in_slab<T>(&self, link: Link, f: impl FnOnce(&mut Slab<Reg>, usize) -> T) -> Option<T> {
        match link {
            Link::Inner(index) => Some(f(&mut self.lock().regs, index)),
            Link::Shard(number, index) => {
                let shards = self.shards.get()?;
                Some(f(&mut lock_slab(&shards.0[number].0), index))
            }
        }
    }

    /// Takes out of this scope's registrations the waiter a lone child registered here as
    /// `link` ([`WAITER_LINK`]), if this scope's finish has not taken it already. The caller
    /// owns that registration: it swapped `link` out of the child's link.
    #[cold]
    #[inline(never)]
    fn take_lone_waiter(&self, link: usize) -> Option<Waker> {
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

    /// The slot of link `link` (0: in the parent, 1: in a merge's `other`), if it has one.
    #[inline]
    fn link(&self, link: usize) -> Option<&AtomicUsize> {
        match (link, &self.kind) {
            (0, _) => Some(&self.link),
            (1, Kind::Merge(merge)) => Some(&merge.slot),
            _ => None,
        }
    }

    fn link_parent(&self, link: usize) -> Option<&Arc<Scope>> {
        match (link, &self.kind) {
            (0, _) => self.parent.scope(),
            (1, Kind::Merge(merge)) => merge.other.scope(),
            _ => None,
        }
    }

    /// Moves a live scope to done and hands what it holds to `walk`, emptying its registrations
    /// in place. (A finish that returned registrations, timer and mirror as one 112-byte value
    /// had it copied twice, each copy read back with wider loads than wrote it, a
    /// store-forwarding stall; and the emptied room was then given back under a second lock.
    /// `CancelTree/depth=1/Root=OpenCanceler` in a loop of its own: 155 -> 137 ns/op.) Under
    /// the lock only moves happen, and the children's `Weak`s are upgraded; the timer or token
    /// watch is dropped after it.
    fn finish(&self, err: Error, cause: &Cause, walk: &mut Walk) -> Finished {
        match self.finish_lock_free(err, cause) {
            Some(finished) => finished,
            None => self.finish_locked(err, cause, move || walk),
        }
    }

    /// The lock-free part of [`Scope::finish`]: `None` if the scope must be locked.
    #[inline(always)]
    fn finish_lock_free(&self, err: Error, cause: &Cause) -> Option<Finished> {
        let plain = cause.is_plain(err);
        let mut state = self.state.load(Ordering::Acquire);
        while plain && state & BUSY == 0 {
            if state & ERR != LIVE {
                return Some(Finished::Already);
            }
            // Nothing to take and nothing to store: one swap publishes error and cause.
            match self.state.compare_exchange_weak(
                state,
                state | encode(err),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Finished::Bare),
                Err(actual) => state = actual,
            }
        }
        None
    }

    /// The rest of [`Scope::finish`], under the lock. `walk` is asked for only if the scope
    /// holds something: a scope that held registrations once but none now (a link of a chain
    /// released leaf first) needs no walk set up. (Set up always, it made
    /// `CancelTree/depth=10/Root=Background` 531 -> 827 ns/op.)
    fn finish_locked<'w>(
        &self,
        err: Error,
        cause: &Cause,
        walk: impl FnOnce() -> &'w mut Walk,
    ) -> Finished {
        let plain = cause.is_plain(err);
        let mut inner = self.lock();
        // `claim` sets `BUSY`, so from here on no lock-free finish can win: `ERR` only changes
        // under the lock we hold.
        if self.claim().is_some() {
            return Finished::Already;
        }
        if !plain {
            inner.extra().cause = Some(cause.clone()); // unseen until `CUSTOM_CAUSE` is published
        }
        let done = encode(err) | if plain { 0 } else { CUSTOM_CAUSE };
        let mut state = self.state.load(Ordering::Acquire);
        let sharded = loop {
            if state & SHARDED == 0 {
                // Fails if a registration sets `SHARDED` meanwhile: then lock the shards.
                let children = if inner.regs.len() != 0 {
                    PROPAGATING
                } else {
                    0
                };
                let new = state | done | children; // one swap with `ERR`, as below
                match self
                    .state
                    .compare_exchange(state, new, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => break Vec::new(),
                    Err(actual) => {
                        state = actual;
                        continue;
                    }
                }
            }
            // With `SHARDED` set, hold every shard's lock across the swap (see "Shards").
            match self.finish_sharded(state, done, inner.regs.len() != 0) {
                Ok(sharded) => break sharded,
                Err(actual) => state = actual,
            }
        };
        let propagating = inner.regs.len() != 0 || !sharded.is_empty();
        let holds_more = inner.holds_outside();
        if !propagating && !holds_more {
            return Finished::Bare;
        }
        let walk = walk();
        // The emptied slab keeps its room for the scope's next life (see "Reuse"), unless it
        // is more than a reused scope needs: that goes after the lock.
        inner.regs.drain(|reg| walk.take(reg));
        let surplus = inner
            .regs
            .has_surplus_room()
            .then(|| mem::take(&mut inner.regs));
        for shard in sharded {
            shard.for_each(|reg| walk.take(reg));
        }
        if holds_more {
            let source = inner.take_outside(walk);
            drop(inner);
            // A timer or token watch observes nothing: dropped now, with no lock held.
            drop(source);
        } else {
            // (Apart: a `None` source carried to one drop after this branch was written as a
            // tag and read back in a wider copy, a stall: 129 -> 124 ns per `OpenCanceler` op.)
            drop(inner);
        }
        drop(surplus);
        if propagating {
            Finished::Propagating
        } else {
            Finished::Bare
        }
    }

    /// The swap of [`Scope::finish`] for a `SHARDED` scope, made while every shard is locked;
    /// hands out what the shards held, or the state that made the swap fail.
    #[cold]
    #[inline(never)]
    fn finish_sharded(&self, state: u8, done: u8, inner_regs: bool) -> Result<Vec<Slab<Reg>>, u8> {
        let held = self.shards.get();
        let shards = held
            .as_ref()
            .map_or_else(Vec::new, |shards| shards.lock_all());
        let children = inner_regs || shards.iter().any(|shard| shard.len() != 0);
        // One swap with `ERR`: no one sees the one without the other.
        let new = state | done | if children { PROPAGATING } else { 0 };
        self.state
            .compare_exchange(state, new, Ordering::AcqRel, Ordering::Acquire)?;
        Ok(shards
            .into_iter()
            .filter(|shard| shard.len() != 0)
            .map(|mut shard| mem::take(&mut *shard))
            .collect())
    }

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

    fn cancel_slow(self: &Arc<Self>, err: Error, cause: Cause) {
        // A lone scope whose parent is done is already done, for the parent's reason, as its
        // queries say, and was counted in the parent's event (see "Lone leaves").
        if self.state.load(Ordering::Acquire) & LONE != 0
            && let Some(parent) = self.parent.scope()
            && parent.is_done()
        {
            // Unless it linked meanwhile, and the parent's walk, not over yet, has still to
            // finish it or its subtree: then this cancel goes on, to finish it or wait for that
            // walk, as any other would (a review's loom model found the early return).
            let state = self.adopt(parent);
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
    fn cancel_quietly(self: &Arc<Self>, err: Error, cause: Cause) -> Option<usize> {
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
            // slot again. (`CancelTree/depth=1/Root=OpenCanceler` 1,683 -> 1,459 instructions
            // per operation, 119.7 -> 106.0 ns/op, medians of 5 alternating runs.)
            mem::forget(slot);
        }
        Some(descendants)
    }

    /// How many lone children this scope has: its own count and its shards'.
    fn lone_children(&self) -> usize {
        let shards = self.shards.get();
        let in_shards = shards.iter().flat_map(|shards| shards.0.iter());
        let counts = in_shards.map(|shard| shard.1.load(Ordering::Relaxed));
        counts.fold(self.lone.load(Ordering::Relaxed), u32::wrapping_add) as usize
    }

    /// Returns once no cancellation is walking below this done scope (see "Who wakes whom").
    fn wait_settled(&self) {
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
    fn settle(&self) {
        self.unlink();
        if self.state.fetch_and(!PROPAGATING, Ordering::AcqRel) & SLEEPER != 0 {
            let lot = parking_lot();
            drop(lot.mutex.lock().unwrap_or_else(PoisonError::into_inner));
            lot.condvar.notify_all();
        }
    }

    /// Arms this scope's own deadline.
    fn arm(self: &Arc<Self>, at: Instant, now: Option<Instant>) {
        if at <= now.unwrap_or_else(Instant::now) {
            return self.deadline_fired();
        }
        match source::arm_timer(self, at) {
            Some(timer) => self.set_source(timer),
            None => self.deadline_fired(),
        }
    }

    /// Installs what can cancel this scope from outside. A done scope drops it at once.
    pub(crate) fn set_source(self: &Arc<Self>, source: Source) {
        self.link_first();
        let replaced = {
            let mut inner = self.lock();
            match self.claim() {
                Some(_) => Some(source),
                None => inner.replace_source(source),
            }
        };
        drop(replaced);
    }

    /// Called when the deadline timer says it has fired.
    pub(crate) fn deadline_fired(self: &Arc<Self>) {
        let Kind::Deadline { at } = &self.kind else {
            return;
        };
        if self.is_done() {
            return;
        }
        if Instant::now() < *at {
            // Tokio fires every timer early when its runtime shuts down. The deadline has not
            // passed: keep it on the crate's own timer thread instead.
            self.set_source(source::fallback_timer(self, *at));
            return;
        }
        let cause = self.lock().deadline_cause().cloned();
        let cause = cause.unwrap_or(Cause::from(Error::DeadlineExceeded));
        self.cancel(Error::DeadlineExceeded, cause);
    }

    /// Polls for done on behalf of a `done()` future whose registration is `slot` (0: none).
    #[inline]
    pub(crate) fn poll_done(
        self: &Arc<Self>,
        slot: &mut usize,
        cx: &mut task::Context<'_>,
    ) -> Poll<Error> {
        if let Some(err) = self.err() {
            *slot = 0;
            return Poll::Ready(err);
        }
        self.register_waiter(slot, cx)
    }

    fn register_waiter(
        self: &Arc<Self>,
        slot: &mut usize,
        cx: &mut task::Context<'_>,
    ) -> Poll<Error> {
        if *slot & WAITER_LINK != 0 || self.state.load(Ordering::Acquire) & LONE != 0 {
            match self.wait_lone(slot, cx) {
                Some(poll) => return poll,
                None => *slot = 0, // linked, or linking: it registers here instead
            }
        }
        self.link_first();
        let mut inner = self.lock();
        if let Some(state) = self.claim() {
            drop(inner);
            *slot = 0;
            return Poll::Ready(decode(state).unwrap_or(Error::Canceled));
        }
        let mut stale = None;
        match slot.checked_sub(1).and_then(|i| inner.regs.get_mut(i)) {
            Some(Reg::Waiter(waker)) => {
                if !waker.will_wake(cx.waker()) {
                    stale = Some(mem::replace(waker, cx.waker().clone()));
                }
            }
            _ => *slot = inner.regs.insert_with(|| Reg::Waiter(cx.waker().clone())) + 1,
        }
        drop(inner);
        drop(stale);
        Poll::Pending
    }

    /// [`Scope::register_waiter`] for a lone scope, whose `done()` future waits in its parent
    /// (see "Lone leaves"), or for a future that waited there (`slot` a [`WAITER_LINK`]):
    /// `None` if the scope is linked or linking, and the future must register in it.
    #[inline(never)]
    fn wait_lone(&self, slot: &mut usize, cx: &mut task::Context<'_>) -> Option<Poll<Error>> {
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
    fn register_lone_waiter(
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
    fn rewake_lone_waiter(
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

    /// Drops the registration of a `done()` future that goes away before the scope is done.
    #[inline]
    pub(crate) fn forget_waiter(&self, slot: usize) {
        if slot == 0 || self.is_done() {
            return;
        }
        if slot & WAITER_LINK != 0 {
            return self.forget_lone_waiter(slot);
        }
        self.remove_waiter(slot);
    }

    /// [`Scope::forget_waiter`] for a future that waits in the parent: the registration is
    /// taken out by whoever swaps it out of the link, this future or the scope's finish.
    #[cold]
    #[inline(never)]
    fn forget_lone_waiter(&self, slot: usize) {
        let closed =
            self.link
                .compare_exchange(slot, LONE_LINK, Ordering::AcqRel, Ordering::Relaxed);
        if closed.is_ok()
            && let Some(parent) = self.parent.scope()
        {
            drop(parent.take_lone_waiter(slot));
        }
    }

    fn remove_waiter(&self, slot: usize) {
        let removed = self
            .lock()
            .regs
            .remove_if(slot - 1, |reg| matches!(reg, Reg::Waiter(_)));
        drop(removed);
    }

    /// Registers an `after_func` callback; hands it back if the scope is already done.
    pub(crate) fn add_callback(self: &Arc<Self>, f: Callback) -> Result<usize, Callback> {
        self.link_first();
        let mut inner = self.lock();
        if self.claim().is_some() {
            return Err(f);
        }
        Ok(inner.regs.insert_with(|| Reg::Callback(f)) + 1)
    }

    /// Unregisters an `after_func` callback; false if it was already taken to run.
    pub(crate) fn remove_callback(&self, slot: usize) -> bool {
        if self.is_done() {
            return false;
        }
        let removed = self
            .lock()
            .regs
            .remove_if(slot - 1, |reg| matches!(reg, Reg::Callback(_)));
        removed.is_some()
    }

    /// A token cancelled with this scope. Tokens are made lazily, one per scope, each a child of
    /// its parent scope's (link 0) token, so that a token handed out keeps following the
    /// ancestors even after every handle to this scope is gone and the scope, with its own
    /// timer, token watch and merge link, is released.
    pub(crate) fn token(self: &Arc<Self>) -> CancellationToken {
        let mut path = Vec::new();
        let mut current = Some(self.clone());
        let mut token = None;
        while let Some(scope) = current {
            if let Some(existing) = scope.existing_mirror() {
                token = Some(existing);
                break;
            }
            current = scope.parent.scope().cloned();
            path.push(scope);
        }
        for scope in path.into_iter().rev() {
            let fresh = token.map_or_else(CancellationToken::new, |t| t.child_token());
            token = Some(scope.install_mirror(fresh));
        }
        token.map_or_else(CancellationToken::new, |t| t.child_token())
    }

    fn existing_mirror(&self) -> Option<CancellationToken> {
        // A scope that never made its lock has no mirror: asking makes none.
        let mirror = (self.inner.get()).and_then(|inner| lock_inner(inner).mirror().cloned());
        if mirror.is_none() && self.is_done() {
            let cancelled = CancellationToken::new();
            cancelled.cancel();
            return Some(cancelled);
        }
        mirror
    }

    fn install_mirror(self: &Arc<Self>, token: CancellationToken) -> CancellationToken {
        self.link_first();
        let mut inner = self.lock();
        if let Some(existing) = inner.mirror() {
            return existing.clone();
        }
        if self.claim().is_some() {
            drop(inner);
            token.cancel();
            return token;
        }
        inner.extra().mirror = Some(token.clone());
        token
    }

    /// Removes this scope from its parents and hands its parent contexts to the caller, so that
    /// a long chain can be released iteratively rather than by recursive drops.
    pub(crate) fn detach_parents(&mut self) -> (Context, Option<Context>) {
        self.unlink();
        self.take_parents()
    }

    /// [`Scope::detach_parents`] for a scope already unlinked.
    fn take_parents(&mut self) -> (Context, Option<Context>) {
        let other = match &mut self.kind {
            Kind::Merge(merge) => Some(mem::take(&mut merge.other)),
            _ => None,
        };
        (mem::take(&mut self.parent), other)
    }
}

impl Scope {
    /// Counts a task started on a context this scope governs, in this scope and every scope
    /// above it (along link 0, and across `without_cancel`), so that a census of any ancestor
    /// sees the task until it ends, even after this scope is done and has left its parent.
    pub(crate) fn task_started(self: &Arc<Self>) {
        self.for_each_ancestor(|scope| {
            // A `u32`: four billion live tasks would need far more memory than a machine has.
            scope.tasks.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// Undoes [`Scope::task_started`].
    pub(crate) fn task_ended(self: &Arc<Self>) {
        self.for_each_ancestor(|scope| {
            scope.tasks.fetch_sub(1, Ordering::Relaxed);
        });
    }

    fn for_each_ancestor(self: &Arc<Self>, mut f: impl FnMut(&Scope)) {
        let mut current = Some(&**self);
        while let Some(scope) = current {
            f(scope);
            current = scope.parent.counting_scope().map(|parent| &**parent);
        }
    }

    /// Counts what is alive at and below this scope: registered descendant scopes, their armed
    /// timers and token watches, the waiters and callbacks of all of them, and the tasks
    /// started at or below this scope that have not ended.
    pub(crate) fn census(self: &Arc<Self>) -> Census {
        let mut census = Census::default();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![(self.clone(), true)];
        while let Some((scope, is_root)) = stack.pop() {
            if !seen.insert(Arc::as_ptr(&scope)) {
                continue; // a merge is registered in two parents
            }
            // A scope that never made its lock holds nothing there; counting makes none.
            let inner = scope.inner.get().map(lock_inner);
            let held = scope.shards.get();
            let shards = held
                .as_ref()
                .map_or_else(Vec::new, |shards| shards.lock_all());
            let sharded = shards.iter().flat_map(|shard| shard.iter());
            let regs = inner.iter().flat_map(|inner| inner.regs.iter());
            for reg in regs.chain(sharded) {
                match reg {
                    Reg::Child(child) => stack.extend(child.upgrade().map(|c| (c, false))),
                    Reg::Waiter(_) => census.waiters += 1,
                    Reg::Callback(_) => census.callbacks += 1,
                }
            }
            drop(shards);
            if is_root && is_waiter_link(scope.link.load(Ordering::Acquire)) {
                census.waiters += 1; // a lone scope's, waiting in its parent
            }
            if scope.state.load(Ordering::Acquire) & ERR == LIVE {
                // Lone children are leaves with nothing registered: counted, not visited.
                census.contexts += scope.lone_children();
            }
            if !is_root {
                census.contexts += 1;
                match inner.as_ref().and_then(|inner| inner.source()) {
                    Some(Source::Token { .. }) => census.token_watches += 1,
                    Some(_) => census.timers += 1,
                    None => {}
                }
            }
        }
        census.tasks = self.tasks.load(Ordering::Relaxed) as usize;
        census
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let (parent, other) = self.detach_parents();
        release(parent);
        if let Some(other) = other {
            release(other);
        }
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("err", &self.err())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// One step of a cancellation's depth-first walk.
enum Step {
    /// Finish this scope and push its children.
    Enter(Arc<Scope>),
    /// This scope's subtree is done: clear its `PROPAGATING`.
    Leave(Arc<Scope>),
}

/// How many times [`Scope::wait_settled`] polls before it sleeps.
const SPINS: usize = if cfg!(loom) { 0 } else { 100 };

/// A cancellation's walk: the scopes still to visit, and what it has taken.
#[derive(Default)]
struct Walk {
    stack: Batch<Step>,
    /// The children of the scope just finished, to be pushed above its `Leave`.
    found: Batch<Arc<Scope>>,
    released: Released,
}

impl Walk {
    /// Takes in one registration of a scope being finished (a move, or a `Weak` upgraded:
    /// nothing here runs user code, as it runs under the scope's lock).
    #[inline]
    fn take(&mut self, reg: Reg) {
        match reg {
            Reg::Child(child) => self.found.extend(child.upgrade()),
            Reg::Waiter(waker) => self.released.wakers.push(waker),
            Reg::Callback(f) => self.released.callbacks.push(f),
        }
    }

    /// Whether every batch is empty and has never spilled, so that the walk holds nothing to
    /// drop.
    fn owns_nothing(&self) -> bool {
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
    /// they are empty (see [`Room`]).
    fn give_back_room(&mut self) {
        self.stack.give_back_room();
        self.found.give_back_room();
        self.released.scopes.give_back_room();
    }

    /// Schedules the children just found for a visit.
    fn enter_found(&mut self) {
        let Walk { stack, found, .. } = self;
        found.drain(|child| stack.push(Step::Enter(child)));
    }
}

/// Everything a cancellation took out of the tree, handled once no lock is held. Small batches
/// stay on the stack, so waking a few waiters allocates nothing.
#[derive(Default)]
struct Released {
    /// The scopes the walk reached: dropping the last handle to one may run user code (a
    /// value's `Drop`), which must not run while the walk holds `PROPAGATING` bits.
    scopes: Batch<Arc<Scope>>,
    mirrors: Batch<CancellationToken>,
    wakers: Batch<Waker>,
    callbacks: Batch<Callback>,
}

impl Released {
    /// How many mirror tokens and wakers it holds: where the next scope's will start.
    fn marks(&self) -> (usize, usize) {
        (self.mirrors.len(), self.wakers.len())
    }

    /// Cancels the mirror tokens and wakes the waiters taken since `marks`, during the walk
    /// (see "Who wakes whom"): flagged, so that whatever they run on this thread never waits
    /// for a walk.
    fn release_early(&mut self, (mirrors, wakers): (usize, usize)) {
        if (self.mirrors.len(), self.wakers.len()) == (mirrors, wakers) {
            return; // a leaf held only callbacks, which wait for the end of the walk
        }
        let _flag = waking::Flag::raise();
        self.mirrors.drain_from(mirrors, cancel_mirror);
        self.wakers.drain_from(wakers, wake);
    }

    /// Runs what was deferred, in place (moving the batches out would copy them, 400 bytes).
    /// Each item runs on its own: a panic in one is reported and the rest still run.
    fn run(&mut self) {
        self.scopes
            .drain(|scope| run_reported("dropping a context", || drop(scope)));
        self.mirrors.drain(cancel_mirror);
        self.wakers.drain(wake);
        self.callbacks.drain(run_callback);
    }
}

/// A list that keeps its first few items inline, so that waking a few waiters or walking a few
/// scopes allocates nothing: popped last in first out (the walk), consumed in insertion order
/// (what a cancellation releases). Invariant: `spilled` is empty unless `inline` is full.
struct Batch<T: Room> {
    inline: [Option<T>; 4],
    len: usize,
    spilled: Vec<T>,
}

impl<T: Room> Default for Batch<T> {
    fn default() -> Self {
        Batch {
            inline: [None, None, None, None],
            len: 0,
            spilled: Vec::new(),
        }
    }
}

impl<T: Room> Batch<T> {
    fn push(&mut self, item: T) {
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(item);
                self.len += 1;
            }
            // Room already there (a long walk's, or one kept from the last): no call.
            None if self.spilled.len() < self.spilled.capacity() => self.spilled.push(item),
            None => self.spill(item),
        }
    }

    #[cold]
    #[inline(never)]
    fn spill(&mut self, item: T) {
        if self.spilled.capacity() == 0 {
            self.spilled = T::take_room();
        }
        self.spilled.push(item);
    }

    /// Gives the room the batch spilled into back to the thread, for the next walk's batch of
    /// the same kind (see [`Room`]). The batch must be empty.
    fn give_back_room(&mut self) {
        debug_assert_eq!(self.len(), 0);
        if self.spilled.capacity() != 0 {
            T::keep_room(mem::take(&mut self.spilled));
        }
    }

    fn pop(&mut self) -> Option<T> {
        if let Some(item) = self.spilled.pop() {
            return Some(item);
        }
        self.len = self.len.checked_sub(1)?;
        self.inline[self.len].take()
    }

    /// How many items the batch holds.
    fn len(&self) -> usize {
        self.len + self.spilled.len()
    }

    fn is_empty(&self) -> bool {
        self.len == 0 // nothing spills before the inline slots are full
    }

    /// Hands the items pushed since the batch held `mark` of them to `f`, in insertion order,
    /// and keeps the first `mark`.
    fn drain_from(&mut self, mark: usize, mut f: impl FnMut(T)) {
        if mark >= self.len() {
            return;
        }
        let cut = mark.min(self.len);
        let len = mem::replace(&mut self.len, cut);
        self.inline[cut..len]
            .iter_mut()
            .filter_map(Option::take)
            .for_each(&mut f);
        let from = mark.saturating_sub(self.inline.len());
        if from < self.spilled.len() {
            self.spilled.drain(from..).for_each(f);
        }
    }

    /// Whether the batch is empty and has no spilled room: then it owns nothing, and
    /// forgetting it leaks nothing.
    fn owns_nothing(&self) -> bool {
        let empty = self.len == 0 && self.spilled.capacity() == 0;
        debug_assert!(!empty || self.inline.iter().all(Option::is_none));
        empty
    }

    fn extend(&mut self, items: impl IntoIterator<Item = T>) {
        items.into_iter().for_each(|item| self.push(item));
    }

    /// Hands every item to `f`, in insertion order, and leaves the batch empty. Plain loops
    /// rather than an iterator adapter: most batches are empty or hold one item, and then
    /// this is a check or two.
    fn drain(&mut self, f: impl FnMut(T)) {
        self.drain_from(0, f);
    }
}

/// Where the walk's batches of one kind find room when they spill: a vector another walk on
/// this thread used and gave back, so that a cancellation of a chain allocates nothing once
/// warm. A chain's walk holds a `Leave` step and a reached scope per link, past the four of
/// each a batch holds inline: `CancelTree/depth=10/Root=OpenCanceler` grew two vectors twice
/// per operation, 4 allocations and 12,425 instructions per op, against 0 and 11,450 with the
/// room kept (valgrind's counts; the bare token: 23 allocations, 10,902 instructions).
trait Room: Sized {
    /// Room for a batch that spills: an empty vector, with capacity if one was kept.
    fn take_room() -> Vec<Self> {
        Vec::new()
    }

    /// Keeps `room` (empty) for the next [`Room::take_room`], or frees it.
    fn keep_room(room: Vec<Self>) {
        drop(room);
    }
}

/// The most entries of room a thread keeps per kind: the walk of a chain of a thousand.
#[cfg(not(loom))]
const KEPT_ROOM: usize = 1024;

/// [`Room`] kept in a thread-local, for the batches that spill in the walk of a chain.
macro_rules! kept_room {
    ($t:ty, $kept:ident) => {
        #[cfg(not(loom))]
        std::thread_local! {
            static $kept: std::cell::Cell<Vec<$t>> = const { std::cell::Cell::new(Vec::new()) };
        }

        impl Room for $t {
            #[cfg(not(loom))]
            fn take_room() -> Vec<Self> {
                $kept.try_with(std::cell::Cell::take).unwrap_or_default()
            }

            #[cfg(not(loom))]
            fn keep_room(room: Vec<Self>) {
                debug_assert!(room.is_empty());
                if room.capacity() <= KEPT_ROOM {
                    // Whatever was kept before (another batch's) is freed.
                    let _ = $kept.try_with(|kept| kept.set(room));
                }
            }
        }
    };
}
kept_room!(Step, KEPT_STEPS);
kept_room!(Arc<Scope>, KEPT_SCOPES);
#[cfg(test)]
impl Room for i32 {}
impl Room for CancellationToken {}
impl Room for Waker {}
impl Room for Callback {}

/// Whether someone listens for the cancellation's debug event: then every cancellation is
/// seen, and none may be skipped.
#[inline]
fn debug_events() -> bool {
    tracing::enabled!(target: "taskctx", tracing::Level::DEBUG)
}

/// Whether this thread is inside [`Released::release_early`].
mod waking {
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
pub(crate) fn run_callback(f: Callback) {
    run_reported("an after_func callback", f);
}

/// Wakes a waiter (see [`run_reported`]).
pub(crate) fn wake(waker: Waker) {
    run_reported("a waker", || waker.wake());
}

/// Cancels a token handed out by `Context::token`, which wakes its waiters (see
/// [`run_reported`]).
fn cancel_mirror(token: CancellationToken) {
    run_reported("a token's waker", || token.cancel());
}

/// Runs user code on behalf of a cancellation: a panic is caught and reported as a `tracing`
/// error event naming `what`, never propagated, so that whatever the cancellation still has
/// to finish, wake or run is not lost, and a canceller that has nothing to do with the
/// panicking code (a timer, another task) does not unwind. Pinned by
/// `tests/bad_input.rs::a_panicking_waker_loses_no_wake_and_no_callback`.
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

fn encode(err: Error) -> u8 {
    match err {
        Error::Canceled => CANCELED,
        Error::DeadlineExceeded => DEADLINE_EXCEEDED,
    }
}

#[inline]
fn decode(state: u8) -> Option<Error> {
    match state & ERR {
        LIVE => None,
        CANCELED => Some(Error::Canceled),
        _ => Some(Error::DeadlineExceeded),
    }
}

pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(all(test, not(loom)))]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;

    /// A `with_cancel` scope under `Background`, held by nothing else.
    pub(crate) fn plain_scope() -> Arc<Scope> {
        Scope::new(
            &Context::background(),
            || Kind::Cancel,
            None,
            None,
            None,
            None,
        )
    }

    /// The layout note on [`Scope`]: the fields children read from their parent never share a
    /// 64-byte line with the reference counts (the first 16 bytes of the `Arc` allocation) or
    /// the lone count, at any 16-byte alignment of the allocation.
    #[test]
    fn what_children_read_never_shares_a_line_with_the_counts() {
        let scope = plain_scope();
        let base = Arc::as_ptr(&scope) as usize - 16;
        let at = |field: *const u8| field as usize - base;
        let lone = at((&scope.lone as *const AtomicU32).cast());
        assert_eq!(lone, 16, "the lone count right after the reference counts");
        let home = at((&scope.home as *const AtomicU32).cast());
        let read = [
            at((&scope.state as *const AtomicU8).cast()),
            at((&scope.parent as *const Context).cast()),
            at((&scope.deadline as *const Option<Instant>).cast()),
        ];
        for align in [0, 16, 32, 48] {
            let written_line = (align + home + 3) / 64; // the last byte written
            for start in read {
                assert!(
                    (align + start) / 64 > written_line,
                    "a field at offset {start} shares the counts' line at alignment {align}"
                );
            }
        }
    }

    /// A derived pair whose context is registered in its parent rather than lone, as it is
    /// once anything registers in it (see "Lone leaves").
    fn linked<T>(pair: (Context, T)) -> (Context, T) {
        pair.0.scope().unwrap().link_first();
        assert_eq!(
            pair.0.scope().unwrap().state.load(Ordering::Relaxed) & LONE,
            0
        );
        pair
    }

    /// The last handle of a chain's link whose child has gone lets the link go unfinished only
    /// when nothing could tell (it is then reused), and cancels it when it still holds
    /// something: a callback whose `AfterFunc` was dropped runs, a token handed out is
    /// cancelled.
    #[test]
    fn a_links_last_handle_cancels_it_only_when_something_could_tell() {
        on_fresh_thread(|| {
            let (root, _cancel_root) = Context::background().with_cancel();
            let link = |root: &Context| {
                let (ctx, cancel) = root.with_cancel();
                drop(ctx.with_cancel()); // a child links it (`BUSY`) and goes
                assert_ne!(ctx.scope().unwrap().state.load(Ordering::Relaxed) & BUSY, 0);
                (ctx, cancel)
            };

            let (ctx, cancel) = link(&root);
            let old = address(&ctx);
            drop(ctx);
            drop(cancel); // nothing could tell: kept unfinished, reused next
            let (next, _cancel_next) = root.with_cancel();
            assert_eq!(address(&next), old);
            assert!(!next.is_done());

            let (ctx, cancel) = link(&root);
            let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let seen = Arc::clone(&ran);
            drop(ctx.after_func(move || seen.store(true, Ordering::SeqCst)));
            drop(ctx);
            drop(cancel);
            assert!(ran.load(Ordering::SeqCst), "the callback ran");

            let (ctx, cancel) = link(&root);
            let token = ctx.token();
            drop(ctx);
            drop(cancel);
            assert!(token.is_cancelled(), "the token handed out is cancelled");
        });
    }

    /// The lone counts of `scope`: its own, and its shards' summed (either may have wrapped).
    fn lone_counts(scope: &Scope) -> (u32, u32) {
        let in_shards = scope.shards.get().map(|shards| {
            let counts = shards.0.iter().map(|shard| shard.1.load(Ordering::Relaxed));
            counts.fold(0, u32::wrapping_add)
        });
        (scope.lone.load(Ordering::Relaxed), in_shards.unwrap_or(0))
    }

    /// Lone children are counted in their parent's own count until [`AWAY_LIMIT`] of them were
    /// made on other threads than the parent's home; then the parent has shards, and children
    /// made or released on those threads count in their shard. A child released elsewhere than
    /// it was made leaves the count of the releasing thread, so counts may wrap, but their sum
    /// is what the census and the event read, and it is exact.
    #[test]
    fn lone_children_made_elsewhere_give_their_parent_shards_only_when_many() {
        let (parent, cancel) = Context::background().with_cancel();
        let scope = parent.scope().unwrap().clone();
        let sum = || {
            let (own, shards) = lone_counts(&scope);
            own.wrapping_add(shards)
        };
        let on_another_thread = |f: Box<dyn FnOnce() + Send>| std::thread::spawn(f).join().unwrap();
        let made_away = |n: u32| {
            let parent = parent.clone();
            std::thread::spawn(move || (0..n).map(|_| parent.with_cancel()).collect::<Vec<_>>())
                .join()
                .unwrap()
        };

        let home = parent.with_cancel();
        let few = made_away(3);
        assert_eq!(lone_counts(&scope), (4, 0));
        assert!(
            scope.shards.get().is_none(),
            "a few children made elsewhere: no shards"
        );
        let many = made_away(AWAY_LIMIT - 3 + 2); // the limit's birth makes the shards
        assert!(scope.shards.get().is_some());
        assert_eq!(lone_counts(&scope), (1 + AWAY_LIMIT + 1, 1));
        assert_eq!(
            crate::testing::census(&parent).contexts,
            AWAY_LIMIT as usize + 3
        );

        drop((few, many)); // released here, at home: they leave the parent's own count
        assert_eq!(sum(), 1);
        on_another_thread(Box::new(move || drop(home))); // made at home, released away
        assert_eq!(sum(), 0);
        assert_eq!(crate::testing::census(&parent).contexts, 0);

        // Linked on another thread, and cancelled through the walk.
        let (ctx, _cancel_ctx) = parent.with_cancel();
        let linking = ctx.clone();
        on_another_thread(Box::new(move || linking.scope().unwrap().link_first()));
        assert_eq!(sum(), 0, "left the count as it linked");
        assert_eq!(crate::testing::census(&parent).contexts, 1);
        let lone = parent.with_cancel();
        assert_eq!(sum(), 1);
        cancel.cancel();
        assert!(ctx.is_done() && lone.0.is_done());
        assert_eq!(
            sum(),
            0,
            "a lone child finished by its query leaves the count"
        );
    }

    /// The address of the scope behind `ctx`, to see whether an allocation was reused.
    fn address(ctx: &Context) -> usize {
        Arc::as_ptr(ctx.scope().unwrap()) as usize
    }

    /// Runs `f` on a thread of its own, whose spare scopes no other test touches.
    fn on_fresh_thread(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(f).join().unwrap();
    }

    #[test]
    fn a_released_scope_is_reused_clean_whatever_it_held() {
        on_fresh_thread(|| {
            // A cancellation with a custom cause, under a parent with a value.
            let parent = Context::background().with_value(1u8);
            let (ctx, cancel) = parent.with_cancel_cause();
            let old = address(&ctx);
            cancel.cancel("went away");
            assert_eq!(ctx.cause().unwrap().to_string(), "went away");
            drop((ctx, cancel));

            let (ctx, cancel) = Context::background().with_cancel();
            assert_eq!(address(&ctx), old, "the allocation is reused");
            assert_eq!((ctx.err(), ctx.cause().is_none()), (None, true));
            assert_eq!(ctx.value::<u8>(), None, "the old parent's values are gone");
            assert_eq!(ctx.deadline(), None);
            cancel.cancel();
            assert_eq!(
                ctx.cause().unwrap().to_string(),
                Error::Canceled.to_string()
            );
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_deadline_scope_keeps_nothing_of_its_deadline() {
        let (ctx, cancel) = Context::background().with_timeout(Duration::from_secs(1));
        let old = address(&ctx);
        drop((ctx, cancel));
        let (ctx, _cancel) = Context::background().with_cancel();
        assert_eq!(address(&ctx), old, "the allocation is reused");
        assert_eq!(ctx.deadline(), None);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !ctx.is_done(),
            "the old deadline does not fire on the new context"
        );
    }

    /// The out-of-line fields stay with a kept scope, emptied: the next life's deadline
    /// reports its own cause, or the plain error, never the old one.
    #[tokio::test(start_paused = true)]
    async fn a_reused_scope_keeps_its_extra_fields_but_not_their_contents() {
        let (ctx, cancel) = Context::background()
            .with_deadline_cause(Instant::now() + Duration::from_secs(1), "old deadline");
        let old = address(&ctx);
        drop((ctx, cancel));
        let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(1));
        assert_eq!(address(&ctx), old, "the allocation is reused");
        assert!(
            matches!(ctx.scope().unwrap().lock().outside, Outside::Extra(_)),
            "and its extra fields"
        );
        assert_eq!(ctx.done().await, Error::DeadlineExceeded);
        assert_eq!(
            ctx.cause().unwrap().to_string(),
            Error::DeadlineExceeded.to_string()
        );
        drop((ctx, _cancel));
        let (ctx, _cancel) = Context::background()
            .with_deadline_cause(Instant::now() + Duration::from_secs(1), "new deadline");
        assert_eq!(address(&ctx), old);
        assert_eq!(ctx.done().await, Error::DeadlineExceeded);
        assert_eq!(ctx.cause().unwrap().to_string(), "new deadline");
    }

    /// Reuse in a chain: a reused scope is linked into its new parent and follows it.
    #[test]
    fn a_reused_scope_follows_its_new_parent() {
        on_fresh_thread(|| {
            let (root, cancel_root) = Context::background().with_cancel();
            let (child, cancel_child) = root.with_cancel();
            let (grandchild, cancel_grandchild) = child.with_cancel();
            let old = [address(&child), address(&grandchild)];
            drop((grandchild, cancel_grandchild, child, cancel_child));
            assert!(crate::testing::census(&root).is_clean());

            let (a, _cancel_a) = root.with_cancel();
            let (b, _cancel_b) = a.with_cancel();
            let mut new = [address(&a), address(&b)];
            new.sort_unstable();
            let mut old = old;
            old.sort_unstable();
            assert_eq!(new, old, "both allocations are reused");
            assert_eq!(crate::testing::census(&root).contexts, 2);
            cancel_root.cancel();
            assert_eq!(
                (a.err(), b.err()),
                (Some(Error::Canceled), Some(Error::Canceled))
            );
        });
    }

    /// A reused scope does not carry the room a previous life needed: not 100 children's
    /// registrations, not its shards.
    #[test]
    fn a_reused_scope_keeps_no_room_beyond_a_few_registrations() {
        on_fresh_thread(|| {
            let (parent, cancel) = Context::background().with_cancel();
            let old = address(&parent);
            // Children released while a clone of each is alive are freed, not kept: the
            // thread's spare scopes stay empty for the parent.
            let release = |children: Vec<(Context, crate::CancelHandle)>| {
                let clones: Vec<Context> = children.iter().map(|(c, _)| c.clone()).collect();
                drop(children);
                drop(clones);
            };
            let children: Vec<_> = (0..100).map(|_| linked(parent.with_cancel())).collect();
            assert!(parent.scope().unwrap().lock().regs.capacity() >= 100);
            release(children);
            parent.scope().unwrap().use_shards();
            release((0..10).map(|_| linked(parent.with_cancel())).collect());
            drop((parent, cancel));
            let (ctx, _cancel) = Context::background().with_cancel();
            assert_eq!(address(&ctx), old, "the allocation is reused");
            let scope = ctx.scope().unwrap();
            assert!(scope.lock().regs.capacity() <= 16);
            assert!(scope.shards.get().is_none());
        });
    }

    /// A finish empties the registrations in place: a few entries' room stays for the scope's
    /// next life, a crowd's is let go at once.
    #[test]
    fn a_finish_keeps_a_few_registrations_room_and_lets_a_crowds_go() {
        for (children, kept) in [(3, true), (100, false)] {
            let (parent, cancel) = Context::background().with_cancel();
            let live: Vec<_> = (0..children)
                .map(|_| linked(parent.with_cancel()))
                .collect();
            cancel.cancel();
            let regs = &parent.scope().unwrap().lock().regs;
            assert_eq!(regs.len(), 0);
            if kept {
                assert!(regs.capacity() >= children - 1, "entry 0 is inline");
            } else {
                assert_eq!(regs.capacity(), 0, "{children} children's room is let go");
            }
            assert!(live.iter().all(|(child, _)| child.is_done()));
        }
    }

    /// A live parent whose crowd of registered children has gone gives their room back: to
    /// a little, whether a few of them stay or none does.
    #[test]
    #[cfg_attr(
        miri,
        ignore = "a scale test, too slow under Miri; smaller tests reach the same code"
    )]
    fn a_live_parent_gives_back_the_room_of_children_gone() {
        on_fresh_thread(|| {
            let (parent, _cancel) = Context::background().with_cancel();
            let room = || parent.scope().unwrap().lock().regs.capacity();
            let mut children: Vec<_> = (0..100_000).map(|_| linked(parent.with_cancel())).collect();
            assert!(room() >= 100_000 - 1, "entry 0 is inline");
            let stay: Vec<_> = children.drain(..20).collect();
            drop(children);
            assert!(room() <= 64, "{} entries of room for 20 children", room());
            drop(stay);
            assert!(room() <= 64, "{} entries of room for none", room());
            assert!(!parent.is_done());
        });
    }

    /// A scope whose handle and context went first is released by its last child's link to
    /// it, and reused: as `CancelTree/Root=ClosedCanceler` drops its root.
    #[test]
    fn a_parent_released_by_its_last_child_is_reused_clean() {
        on_fresh_thread(|| {
            let (parent, cancel_parent) = Context::background().with_value(1u8).with_cancel();
            let (child, cancel_child) = parent.with_cancel();
            let old = address(&parent);
            cancel_parent.cancel();
            // The child's link is now the parent scope's only reference.
            drop((parent, cancel_parent));
            drop((child, cancel_child));
            assert_eq!(spare::len(), 2, "the child and the parent are kept");

            let (a, cancel_a) = Context::background().with_cancel();
            let (b, _cancel_b) = Context::background().with_cancel();
            assert!(
                [address(&a), address(&b)].contains(&old),
                "the parent's allocation is reused"
            );
            for ctx in [&a, &b] {
                assert_eq!((ctx.err(), ctx.value::<u8>()), (None, None));
            }
            cancel_a.cancel();
            assert_eq!((a.err(), b.err()), (Some(Error::Canceled), None));
        });
    }

    /// A live merge released through a chain leaves both its parents before it is reused, and
    /// a live scope's pending callback is dropped unrun, as when it is freed.
    #[test]
    fn a_live_scope_released_through_a_chain_is_reused_clean() {
        on_fresh_thread(|| {
            let (a, cancel_a) = Context::background().with_cancel();
            let (b, _cancel_b) = Context::background().with_cancel();
            let merged = a.merge(&b);
            let old = address(&merged);
            let ran = Arc::new(AtomicUsize::new(0));
            let seen = Arc::clone(&ran);
            drop(merged.after_func(move || {
                seen.fetch_add(1, Ordering::Relaxed);
            }));
            let value = merged.with_value(2u8);
            drop(merged); // the value layer holds the merge's only reference
            drop(value);
            assert_eq!(spare::len(), 1, "the merge is kept");
            assert_eq!(Arc::strong_count(&ran), 1, "the callback was dropped");
            assert!(crate::testing::census(&a).is_clean());
            assert!(crate::testing::census(&b).is_clean());

            let (ctx, cancel) = Context::background().with_cancel();
            assert_eq!(address(&ctx), old, "the merge's allocation is reused");
            cancel_a.cancel();
            assert!(!ctx.is_done(), "the old parent does not reach the new life");
            cancel.cancel();
            assert_eq!(
                ran.load(Ordering::Relaxed),
                0,
                "the old callback never runs"
            );
        });
    }

    /// A live scope that handed out a token is reused without it: the old token still follows
    /// the old ancestors, and the new life makes a token of its own.
    #[test]
    fn a_live_scope_with_a_token_is_reused_without_it() {
        on_fresh_thread(|| {
            let (root, cancel_root) = Context::background().with_cancel();
            let (ctx, cancel) = root.with_cancel();
            cancel.disarm();
            let token = ctx.token();
            let value = ctx.with_value(5u8);
            drop(ctx);
            drop(value);
            assert_eq!(spare::len(), 1, "kept");
            let (fresh, _cancel_fresh) = Context::background().with_cancel();
            let fresh_token = fresh.token();
            cancel_root.cancel();
            assert!(token.is_cancelled(), "the old token follows the old root");
            assert!(!fresh_token.is_cancelled() && !fresh.is_done());
        });
    }

    /// A released scope's callbacks are dropped while it is reset; a callback whose drop
    /// derives and releases contexts of its own (filling the thread's spare list) is fine.
    #[test]
    fn a_callback_dropped_by_a_reset_may_derive_and_release_contexts() {
        struct Reenter;
        impl Drop for Reenter {
            fn drop(&mut self) {
                let values: Vec<Context> = (0..spare::CAP + 36)
                    .map(|_| {
                        let (ctx, cancel) = Context::background().with_cancel();
                        cancel.disarm();
                        ctx.with_value(1u32) // the value layer holds the scope alone
                    })
                    .collect();
                drop(values); // more scopes offered for reuse than it keeps: the spare list fills
            }
        }
        on_fresh_thread(|| {
            for _ in 0..6 {
                let (ctx, cancel) = Context::background().with_cancel();
                cancel.disarm();
                let reenter = Reenter;
                drop(ctx.after_func(move || drop(reenter)));
                let value = ctx.with_value(1u8);
                drop(ctx);
                drop(value);
            }
            assert_eq!(spare::len(), spare::CAP, "kept up to the cap");
        });
    }

    /// A live scope with a deadline is not kept when its last context goes (the timer holds a
    /// `Weak` to it), so its timer cannot reach whatever the thread derives next.
    #[tokio::test(start_paused = true)]
    async fn a_live_deadline_scope_released_through_a_chain_is_not_reused() {
        let (ctx, cancel) = Context::background().with_timeout(Duration::from_secs(1));
        cancel.disarm();
        let value = ctx.with_value(3u8);
        drop(ctx);
        let kept = spare::len();
        drop(value);
        assert_eq!(spare::len(), kept, "not kept");
        let (ctx, _cancel) = Context::background().with_cancel();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !ctx.is_done(),
            "the old deadline does not fire on a new context"
        );
    }

    /// A scope a cancellation may still reach is not reused: the walk holds its registration.
    #[test]
    fn a_scope_held_elsewhere_is_not_reused() {
        on_fresh_thread(|| {
            let (ctx, cancel) = Context::background().with_cancel();
            let old = address(&ctx);
            let clone = ctx.clone();
            drop((ctx, cancel));
            let (other, _cancel_other) = Context::background().with_cancel();
            assert_ne!(address(&other), old, "a clone still holds the old scope");
            assert_eq!(clone.err(), Some(Error::Canceled));
        });
    }

    #[test]
    fn a_scope_is_kept_only_while_nothing_else_can_reach_it() {
        let scope = plain_scope();
        let weak = Arc::downgrade(&scope);
        let scope = Kept::new(scope).err().expect("a `Weak` reaches it");
        let other = scope.clone();
        let scope = Kept::new(scope).err().expect("another `Arc` holds it");
        drop((weak, other));
        let mut kept = Kept::new(scope).expect("nothing else reaches it");
        kept.get().deadline = Some(Instant::now());
        let scope = kept.into_arc();
        assert!(scope.deadline().is_some(), "written through the `Kept`");
        assert_eq!((Arc::strong_count(&scope), Arc::weak_count(&scope)), (1, 0));
    }

    /// What `Scope::fresh` returns is counted as `Arc::new` counts: one strong reference, no
    /// `Weak`. A panic while it is built drops what was built, once, and nothing that was not.
    #[test]
    fn a_fresh_allocation_has_one_reference_and_a_panic_drops_only_what_was_built() {
        thread_local! {
            static DROPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        }
        struct Counted;
        impl Drop for Counted {
            fn drop(&mut self) {
                DROPS.with(|drops| drops.set(drops.get() + 1));
            }
        }
        let drops = || DROPS.with(std::cell::Cell::get);
        let built = std::panic::catch_unwind(|| {
            Scope::fresh(|| {
                let first = Counted;
                if drops() == 0 {
                    panic!("the second cannot be built");
                }
                [first, Counted]
            })
        });
        assert!(built.is_err());
        assert_eq!(
            drops(),
            1,
            "the one built is dropped once, and nothing unwritten is"
        );
        let pair = Scope::fresh(|| [Counted, Counted]);
        assert_eq!((Arc::strong_count(&pair), Arc::weak_count(&pair)), (1, 0));
        drop(pair);
        assert_eq!(drops(), 3);

        // And a scope, as `Scope::alloc` builds one: it holds its parent.
        let (parent, _cancel) = Context::background().with_cancel();
        let parent_count = || Arc::strong_count(parent.scope().unwrap());
        let before = parent_count();
        let scope = Scope::fresh(|| Scope {
            parent: parent.clone(),
            kind: Kind::Cancel,
            deadline: None,
            state: AtomicU8::new(LIVE),
            link: AtomicUsize::new(0),
            lone: AtomicU32::new(0),
            shards: OnceShards::new(),
            tasks: AtomicU32::new(0),
            home: AtomicU32::new(0),
            inner: OnceInner::holding(None),
            _apart: [0; 4],
        });
        assert_eq!((Arc::strong_count(&scope), Arc::weak_count(&scope)), (1, 0));
        assert_eq!(parent_count(), before + 1, "the scope holds its parent");
        assert!(!scope.is_done());
        drop(scope);
        assert_eq!(parent_count(), before);
    }

    /// The scope's `Arc` allocation stays at 120 bytes, a 128-byte glibc chunk as the bare
    /// token's node, and its lock's at 88, a 96-byte chunk (80 before it held a timer
    /// inline). The 100,000-task fan-out (`ScaleCancelFanout`) is sensitive to these in ways
    /// the instruction counts do not show:
    /// the scopes, the tasks (which Tokio aligns to 128 bytes, so glibc splits and reuses the
    /// chunks around them) and the registrations share the heap, so the sizes move where the
    /// tasks land, and Tokio's queues and task list then walk the tasks through more or fewer
    /// cache lines (perf: the time goes to `Local::push_back`, `ShardedList::remove` and
    /// `transition_to_notified`). With the registrations out of line, scopes of 152, 160, 176,
    /// 192, 208, 224 and 232 bytes took 58.1, 82.8, 68.9, 56.6, 64.5, 47.1 and 47.2 ms
    /// (medians of 3 alternating runs; the token 39-47); with the first registration inline,
    /// 176 bytes took 53.5 against 60.8 at 152; with the lock and registrations in an
    /// allocation of their own, 120 bytes took 39.2 and 38.6 ms against 55.0 and 45.1 at 184
    /// (the token 38.0-43.5, two alternating runs). Re-measure before changing them.
    #[test]
    fn a_scope_allocation_stays_at_120_bytes() {
        assert_eq!(mem::size_of::<Scope>() + 16, 120);
        assert_eq!(mem::size_of::<Mutex<Inner>>(), 88);
        assert_eq!(
            mem::size_of::<Outside>(),
            24,
            "a source inline, in the tag's room"
        );
    }

    #[test]
    fn a_link_names_its_slab_and_index() {
        for link in [
            Link::Inner(0),
            Link::Inner(7),
            Link::Shard(0, 0),
            Link::Shard(SHARDS - 1, 9),
        ] {
            assert_ne!(link.encode(), 0, "0 means not linked");
            assert_eq!(Link::decode(link.encode()), link);
        }
    }

    /// Children of a sharded parent, derived from several threads (so several shards), are
    /// counted, leave their shard when dropped, and are reached by the parent's cancellation.
    #[test]
    fn sharded_children_are_counted_unlinked_and_cancelled() {
        let (parent, cancel) = Context::background().with_cancel();
        parent.scope().unwrap().use_shards();
        let children: Vec<Vec<(Context, crate::CancelHandle)>> = std::thread::scope(|s| {
            let spawned: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..10).map(|_| parent.with_cancel()).collect::<Vec<_>>()))
                .collect();
            spawned.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(crate::testing::census(&parent).contexts, 40);
        let mut children: Vec<_> = children.into_iter().flatten().collect();
        children.truncate(25); // 15 dropped: they leave their shards
        assert_eq!(crate::testing::census(&parent).contexts, 25);
        let (late, _cancel_late) = parent.with_cancel(); // this thread's shard
        assert_eq!(crate::testing::census(&parent).contexts, 26);
        cancel.cancel();
        assert!(
            children
                .iter()
                .all(|(child, _)| child.err() == Some(Error::Canceled))
        );
        assert_eq!(late.err(), Some(Error::Canceled));
        assert!(crate::testing::census(&parent).is_clean());
        let (after, _cancel_after) = parent.with_cancel();
        assert_eq!(
            after.err(),
            Some(Error::Canceled),
            "born done under a done sharded parent"
        );
    }

    #[test]
    fn walk_stack_is_last_in_first_out_across_the_spill() {
        let mut stack = Batch::default();
        stack.extend(0..6);
        assert_eq!(stack.pop(), Some(5));
        assert_eq!(stack.pop(), Some(4));
        assert_eq!(stack.pop(), Some(3));
        stack.push(10);
        stack.push(11);
        let rest: Vec<_> = std::iter::from_fn(|| stack.pop()).collect();
        assert_eq!(rest, [11, 10, 2, 1, 0]);
        assert_eq!(stack.pop(), None);
    }

    kept_room!(u16, KEPT_TEST_ROOM);

    /// A batch that spilled gives its room back to the thread, and the next batch of its kind
    /// that spills there takes it rather than allocating; room past `KEPT_ROOM` is freed.
    #[test]
    fn the_room_a_batch_spilled_into_is_kept_for_the_next_walk() {
        on_fresh_thread(|| {
            let mut first: Batch<u16> = Batch::default();
            first.extend(0..40);
            let (room, capacity) = (first.spilled.as_ptr(), first.spilled.capacity());
            first.drain(drop);
            first.give_back_room();
            assert!(first.owns_nothing());

            let mut next: Batch<u16> = Batch::default();
            next.extend(0..5);
            assert_eq!(next.spilled.as_ptr(), room);
            assert_eq!(next.spilled.capacity(), capacity);
            assert_eq!(next.len(), 5);

            let mut large: Batch<u16> = Batch::default();
            large.extend(0..(KEPT_ROOM as u16 + 100));
            large.drain(drop);
            large.give_back_room();
            assert_eq!(u16::take_room().capacity(), 0, "too large to keep");
        });
    }
}

/// A scope that nothing else can reach: no other `Arc` to it and no `Weak`. Made only by
/// [`Kept::new`], which checks it, and never cloned or downgraded while it is a `Kept`, so it
/// stays so: what lets a reused scope be written without [`Arc::get_mut`].
pub(crate) struct Kept(Arc<Scope>);

impl Kept {
    /// `scope` as a `Kept`, if nothing else holds it; otherwise `scope` back.
    fn new(mut scope: Arc<Scope>) -> Result<Kept, Arc<Scope>> {
        match Arc::get_mut(&mut scope) {
            Some(_) => Ok(Kept(scope)),
            None => Err(scope),
        }
    }

    /// The scope, to write. `Arc::get_mut` would check again with a compare-and-swap on the
    /// weak count, which every derive that reuses a scope paid: without it,
    /// `CancelTree/depth=1/Root=Background` 24.6 -> 20.1 ns/op, `ClosedCanceler` 63.6 -> 56.3,
    /// the other `CancelTree` rows 2-8% faster (medians of 5 alternating runs).
    #[allow(unsafe_code)]
    #[inline(always)]
    fn get(&mut self) -> &mut Scope {
        // SAFETY: `Kept::new` saw this `Arc` unique: `Arc::get_mut` succeeded, so there was no
        // other `Arc` and no `Weak`, and its acquire ordered every access made through them
        // before this one. A `Kept` lends its `Arc` to nobody, so no `Arc` or `Weak` has been
        // made from it since, and none can be made while this borrow lives: `&mut self` makes
        // it the only access to the scope. The pointer is the allocation's own (as
        // `Arc::get_mut` returns it), valid for as long as `self`.
        unsafe { &mut *Arc::as_ptr(&self.0).cast_mut() }
    }

    fn into_arc(self) -> Arc<Scope> {
        self.0
    }
}

/// Spare scope allocations, kept per thread for reuse (see "Reuse" above).
#[cfg(not(loom))]
mod spare {
    use std::cell::RefCell;

    use super::Kept;

    /// How many spare scopes a thread keeps at most: enough for a chain of 1,000 released leaf
    /// first. 1,024 × 128-byte chunks (128 KiB), plus the lock and registrations (96 bytes, and
    /// the room of at most 16 more, 384 bytes) and the out-of-line fields (80 bytes) of a
    /// spare that had them, which it keeps. With 64,
    /// `CancelTree` at depth 1,000 was 80.3 us for `Background`, 109.0 for `OpenCanceler` and
    /// 50.2 for `ClosedCanceler`; with 1,024, 60.5, 87.8 and 31.1 (the token's 63.9, 84.5,
    /// 37.0), and 5,745 against 6,620 ns at depth 100 `Background`, medians of 3 alternating
    /// runs; the other rows and the 100,000-task fan-out did not move (52.6 against 53.7 ms).
    pub(super) const CAP: usize = 1024;

    thread_local! {
        static SPARE: RefCell<Vec<Kept>> = const { RefCell::new(Vec::new()) };
    }

    #[inline]
    pub(super) fn take() -> Option<Kept> {
        SPARE
            .try_with(|spare| spare.borrow_mut().pop())
            .ok()
            .flatten()
    }

    /// Whether [`keep`] would hand a scope back: it is then cheaper to free it as it is.
    #[inline]
    pub(super) fn full() -> bool {
        SPARE
            .try_with(|spare| spare.borrow().len() == CAP)
            .unwrap_or(true)
    }

    /// How many scopes this thread keeps.
    #[cfg(test)]
    pub(super) fn len() -> usize {
        SPARE.with(|spare| spare.borrow().len())
    }

    /// Keeps `scope`, or hands it back if this thread already keeps enough (or is exiting).
    #[inline]
    pub(super) fn keep(scope: Kept) -> Option<Kept> {
        // Nothing runs user code while the list is borrowed: a scope handed back is dropped by
        // the caller, after the borrow (and a reset scope drops trivially anyway).
        SPARE
            .try_with(|spare| {
                let mut spare = spare.borrow_mut();
                if spare.len() == CAP {
                    return Some(scope);
                }
                if spare.capacity() == 0 {
                    spare.reserve_exact(CAP); // once per thread: no growth later
                }
                spare.push(scope);
                None
            })
            .unwrap_or(None)
    }
}

/// Under loom, scopes are not kept: every drop frees.
#[cfg(loom)]
mod spare {
    use super::Kept;

    pub(super) fn take() -> Option<Kept> {
        None
    }

    pub(super) fn full() -> bool {
        false // still exercise `Scope::recycle` up to `keep`
    }

    pub(super) fn keep(scope: Kept) -> Option<Kept> {
        Some(scope)
    }
}

/// A scope's lock and what it guards, in an allocation of their own made on first use: most
/// scopes are leaves that never take their lock (see "Lone leaves"), and so never carry it
/// (see the layout note on [`Scope`]). Made once and kept for the scope's lifetime, across its
/// reuse; freed with it.
///
/// The pointer is null until the first [`OnceInner::get_or_init`] publishes the allocation by
/// a compare-and-swap from null (of two threads that race, one frees its own and takes the
/// other's); it is never changed again while shared, and freed only by `drop`, with exclusive
/// access. (std's `OnceLock` would take 16 bytes; loom models this one, as every scope's.)
struct OnceInner(AtomicPtr<Mutex<Inner>>);

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
    fn holding(extra: Option<Box<Extra>>) -> Self {
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
    fn make(inner: Inner) -> *mut Mutex<Inner> {
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
    unsafe fn free(inner: *mut Mutex<Inner>) {
        #[cfg(loom)]
        lock_check::freed();
        // SAFETY: the caller's contract: `Box::into_raw` made it, and this is its only owner.
        drop(unsafe { Box::from_raw(inner) });
    }

    #[inline(always)]
    fn get(&self) -> Option<&Mutex<Inner>> {
        let inner = self.0.load(Ordering::Acquire);
        // SAFETY: the pointer is null, or came from `Box::into_raw` in `make` and was
        // published by the compare-and-swap in `init` (whose `Release` half this `Acquire`
        // load pairs with, so the `Mutex` it points to is fully written) or stored with
        // exclusive access. It is never replaced once set, and freed only in `drop`, which
        // cannot run while `&self` is borrowed: the reference lives no longer than `self`.
        unsafe { inner.as_ref() }
    }

    #[inline(always)]
    fn get_or_init(&self) -> &Mutex<Inner> {
        match self.get() {
            Some(inner) => inner,
            None => self.init(),
        }
    }

    #[cold]
    #[inline(never)]
    fn init(&self) -> &Mutex<Inner> {
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
    fn get_mut(&mut self) -> Option<&mut Inner> {
        let inner = self.0.load(Ordering::Relaxed);
        // SAFETY: as in `get`; `&mut self` rules out every other reference to it.
        let inner = unsafe { inner.as_mut() }?;
        Some(inner.get_mut().unwrap_or_else(PoisonError::into_inner))
    }

    /// [`OnceInner::get_mut`], made now if it was not.
    fn get_mut_or_init(&mut self) -> &mut Inner {
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
fn lock_inner(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
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

/// How many shards a contended scope spreads its children over.
const SHARDS: usize = 8;

/// The children of a scope whose lock was found contended, spread over per-thread shards.
struct Shards([Shard; SHARDS]);

/// One shard, on a cache line of its own: the children registered there, and how many lone
/// children threads of this shard made (see [`Scope::count_lone`]).
#[repr(align(64))]
struct Shard(Mutex<Slab<Reg>>, AtomicU32);

impl Shards {
    fn new() -> Shards {
        Shards(std::array::from_fn(|_| {
            Shard(Mutex::new(Slab::new()), AtomicU32::new(0))
        }))
    }

    /// Every shard's lock, taken in index order (see "Deadlock safety").
    fn lock_all(&self) -> Vec<MutexGuard<'_, Slab<Reg>>> {
        self.0.iter().map(|shard| lock_slab(&shard.0)).collect()
    }
}

fn lock_slab(slab: &Mutex<Slab<Reg>>) -> MutexGuard<'_, Slab<Reg>> {
    // As `Scope::lock`: every update under it is a single assignment.
    slab.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A scope's shards, made on first contention.
#[cfg(not(loom))]
struct OnceShards(std::sync::OnceLock<Box<Shards>>);

#[cfg(not(loom))]
impl OnceShards {
    const fn new() -> Self {
        OnceShards(std::sync::OnceLock::new())
    }

    fn get(&self) -> Option<&Shards> {
        self.0.get().map(|shards| &**shards)
    }

    fn get_or_init(&self) -> &Shards {
        self.0.get_or_init(|| Box::new(Shards::new()))
    }
}

/// Under loom, a lock stands in for std's `OnceLock`, which loom cannot see.
#[cfg(loom)]
struct OnceShards(Mutex<Option<Arc<Shards>>>);

#[cfg(loom)]
impl OnceShards {
    fn new() -> Self {
        OnceShards(Mutex::new(None))
    }

    fn get(&self) -> Option<Arc<Shards>> {
        self.0.lock().unwrap().clone()
    }

    fn get_or_init(&self) -> Arc<Shards> {
        self.0
            .lock()
            .unwrap()
            .get_or_insert_with(|| Arc::new(Shards::new()))
            .clone()
    }
}

/// This thread's number: threads take numbers in turn, and never give them back (a process
/// that starts more than 4,294,967,295 threads would see two share one).
///
/// Read on every derive (a scope's home, see [`Scope::count_lone`]): a constant-initialized
/// thread-local is one load, where a lazily initialized one first checks its state.
#[cfg(not(loom))]
#[inline(always)]
fn this_thread() -> u32 {
    const UNSET: u32 = u32::MAX;
    thread_local! {
        static NUMBER: std::cell::Cell<u32> = const { std::cell::Cell::new(UNSET) };
    }
    #[cold]
    #[inline(never)]
    fn first(number: &std::cell::Cell<u32>) -> u32 {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let taken = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % UNSET;
        number.set(taken);
        taken
    }
    NUMBER.with(|number| match number.get() {
        UNSET => first(number),
        taken => taken,
    })
}

/// Under loom, every thread is thread 0 (loom's executions must be the same from run to run).
#[cfg(loom)]
fn this_thread() -> u32 {
    0
}

/// The shard this thread registers children in: threads take shards in turn.
#[cfg(not(loom))]
#[inline(always)]
fn shard_of_this_thread() -> usize {
    this_thread() as usize % SHARDS
}

/// Under loom, one shard: loom's executions must be the same from run to run.
#[cfg(loom)]
fn shard_of_this_thread() -> usize {
    0
}

/// The low bits of a link that say which slab holds it: 0 for `inner`, 1 + shard number.
const LINK_BITS: u32 = 4;
const _: () = assert!(SHARDS < 1 << LINK_BITS);

/// Where a child is registered in a parent: the value of one of its `links`, 0 for none.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Link {
    Inner(usize),
    Shard(usize, usize),
}

impl Link {
    fn encode(self) -> usize {
        let (which, index) = match self {
            Link::Inner(index) => (0, index),
            Link::Shard(number, index) => (number + 1, index),
        };
        1 + (index << LINK_BITS | which)
    }

    fn decode(link: usize) -> Link {
        let (index, which) = ((link - 1) >> LINK_BITS, (link - 1) & ((1 << LINK_BITS) - 1));
        match which {
            0 => Link::Inner(index),
            number => Link::Shard(number - 1, index),
        }
    }
}
