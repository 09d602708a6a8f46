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
use std::sync::Weak;
use std::task::Waker;

use tokio::time::Instant;

use crate::error::Error;
use crate::sync::{AtomicU8, AtomicU32, AtomicUsize, MutexGuard};

mod batch;
pub(crate) mod census;
mod expire;
mod inner;
mod link;
mod lone;
pub(crate) mod node;
mod recycle;
mod scope;
mod shards;
mod state;
#[cfg(all(test, not(loom)))]
pub(crate) mod tests;
mod waiters;
mod walk;

#[cfg(loom)]
pub(crate) use inner::lock_check;
use inner::{Inner, OnceInner, lock_inner};
use node::{Node, release};
use shards::OnceShards;
pub(crate) use walk::run_callback;

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
    pub(crate) other: Node,
    /// Link 1: this scope's place in `other`'s registrations (see `Scope::link`).
    slot: AtomicUsize,
}

impl Kind {
    pub(crate) fn merge(other: Node) -> Kind {
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
    parent: Node,
    /// The earliest of this scope's own deadline and those of everything it follows.
    deadline: Option<Instant>,
    /// `ERR`, `CUSTOM_CAUSE`, `BUSY`, `PROPAGATING` and `SLEEPER` bits (see "State machine").
    state: AtomicU8,
}

impl Scope {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock_inner(self.inner.get_or_init())
    }

    #[inline]
    pub(crate) fn parent(&self) -> &Node {
        &self.parent
    }

    pub(crate) fn kind(&self) -> &Kind {
        &self.kind
    }

    #[inline]
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
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
