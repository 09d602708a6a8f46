//! The cancellation tree: the state machine behind every context that can become done.
//!
//! A [`Scope`] is one node that can be cancelled, made by `with_cancel`, `with_deadline`,
//! `merge` and `with_token` ([`Scope::with_cancel`] and its siblings). Value and
//! `without_cancel` layers are not scopes: they point at the scope that governs them, or at
//! none and are never done ([`node`]). The public layer (`Context`, the handles, the futures,
//! `after_func`, tasks, `testing`) is built on the entry points below and is never imported
//! here; the timers (`source.rs`, `wheel.rs`) reach a scope only through an `Expiry`
//! ([`expire`]).
//!
//! # Modules
//!
//! | module | what it owns | invariants |
//! |---|---|---|
//! | `mod.rs` (this file) | the contract, [`Scope`]'s fields, [`Kind`], [`Reg`] | |
//! | [`state`] | the state byte: queries, `claim`, `finish` | 1, 2, 16 |
//! | [`scope`] | construction: per-kind constructors, `alloc`, `fresh` | 3 |
//! | [`link`] | registering in a parent and leaving it; the link codec | 2, 3, 11 |
//! | [`lone`] | lone leaves: counted in the parent, not registered; their waiters | 4, 5, 6, 7, 16 |
//! | [`shards`] | per-thread registration slabs of a contended scope | 12 |
//! | [`walk`] | `cancel`: the iterative walk, `PROPAGATING`, releasing what it took | 8, 9, 10 |
//! | [`batch`] | the walk's inline-first lists and the room they keep per thread | |
//! | [`waiters`] | `done()` waiters, `after_func` callbacks, the mirror token | 2 |
//! | [`expire`] | deadlines and token watches: arming, firing, the timers' handle | 13 |
//! | [`recycle`] | releasing a scope unfinished, the lock-free cancel of a held scope nothing registered in, and per-thread reuse of its allocation | 14 |
//! | [`kept`] | a scope proven unreachable, written without a second check (`unsafe`) | 14 |
//! | [`inner`] | what a scope's lock guards: registrations, a source, rarer fields | 1 |
//! | [`once`] | the lock, made on first use and published once (`unsafe`) | 15 |
//! | [`census`] | counting what lives below a scope | |
//! | [`node`] | the chain a context is a handle to, and its iterative release | 9 |
//!
//! # State
//!
//! One atomic byte, `state`, holds everything a lock-free reader needs. All its bits:
//!
//! - `ERR` (two bits): [`LIVE`], then [`CANCELED`] or [`DEADLINE_EXCEEDED`]. Set once, never
//!   cleared (but by a reset for reuse, with exclusive access).
//! - [`CUSTOM_CAUSE`]: the cause is not the error itself. It is stored in the scope's lock
//!   (`Extra::cause`), or, if none is stored there, it is the parent scope's (invariant 16).
//!   Without the bit, the cause *is* the error, so a plain cancellation publishes error and
//!   cause in one store.
//! - [`BUSY`]: the lock may guard something a finish must take (registrations, a source, a
//!   mirror token). Set by [`Scope::claim`] before anything is added; never cleared while live.
//! - [`PROPAGATING`]: set with `ERR` by a finish that took registrations, cleared once that
//!   cancellation has finished every scope below this one.
//! - [`SLEEPER`]: a thread sleeps until `PROPAGATING` clears and must be notified.
//! - [`SHARDED`]: children may be registered in the scope's shards. Set, with `BUSY`, by a
//!   registration into a shard, under that shard's lock.
//! - [`LONE`]: the scope is counted in its parent, not registered there, and its queries look
//!   at the parent too. Set at birth, cleared once it is registered.
//!
//! [`Scope::finish`] is the only way `ERR` is set. If `BUSY` is clear and the cause is plain,
//! it is one compare-and-swap from a value without `BUSY`; otherwise it takes the lock, claims
//! `BUSY` (from then on no lock-free finish can win), stores a custom cause, sets `ERR` and
//! takes everything the scope holds.
//!
//! # Invariants
//!
//! 1. A custom cause is written under the lock before `CUSTOM_CAUSE` is published; a reader
//!    that sees `CUSTOM_CAUSE` takes the lock to read it (or, finding none, reads the parent's,
//!    invariant 16). `err()` and `cause()` never disagree.
//! 2. Whatever registers in a scope (a child, a waiter, a callback, a source, a mirror token)
//!    does so under the lock of the slab that will hold it, after a claim: a read-modify-write
//!    that sets `BUSY` (and `SHARDED` for a shard) and looks at the value it replaced. If `ERR`
//!    was set, the registration is refused; if not, any later finish sees `BUSY`, fails its
//!    lock-free swap and waits for the lock. So a registration is either taken by the finish
//!    or refused. Once done, a scope's slabs stay empty forever: an index is never reused, and
//!    removing one is a no-op.
//! 3. A child is attached under its parent's lock through that same claim, so either the child
//!    is in the parent's registrations when the parent finishes, or it is born done with the
//!    parent's error and cause. No cancellation is lost.
//! 4. A lone scope's parent scope is never lone: anything that would register in a scope
//!    links it first ([`Scope::link_first`]), and linking registers it in its parent and only
//!    then clears `LONE`, under the parent's lock. So a lone scope holds nothing a walk would
//!    take, and a scope that is not lone is in its parent's registrations (or done).
//! 5. A query of a live lone scope loads its parent's state too; a lone scope whose parent is
//!    done takes the parent's error and cause ([`Scope::adopt`]) before it reports done. A
//!    scope is seen done only once its own state is, so every later query agrees.
//! 6. A `done()` future of a lone scope waits in the parent, its registration named by the
//!    scope's link: whoever swaps that registration out of the link owns it and takes it out
//!    of the parent's slab, under that slab's lock.
//! 7. Linking closes the link to new waiters ([`lone::LINKING_LINK`]) before it registers the
//!    scope, and evicts the waiter it swapped out; a waiter's link value is never a child's.
//! 8. No lock is held while user code runs (see "Which thread runs user code"), and a panic in
//!    user code a cancellation runs is caught and reported, never propagated
//!    ([`run_reported`](walk::run_reported)).
//! 9. Nothing recurses along the tree: a cancellation walks its subtree with an explicit
//!    stack, and a chain of contexts is released in a loop ([`node::release`]), at any depth.
//! 10. **When `cancel()` returns, every descendant reports done**, whoever calls it: a walk
//!     clears a scope's `PROPAGATING` only after its subtree, and a cancellation that finds a
//!     scope done and `PROPAGATING` waits for it ([`Scope::wait_settled`]), except on a thread
//!     that is running a waker for a walk (see "Who wakes whom").
//! 11. A scope's place in a parent (its links) is written once, under the lock of the parent's
//!     slab that holds it, and cleared by a swap ([`Scope::unlink`]) after the finish won, in
//!     `Drop`, or for reuse: of two that race, only one removes.
//! 12. A registration into a shard holds the shard's lock across its claim; a finish that
//!     swaps from a state with `SHARDED` holds every shard's lock across the swap, and one
//!     without it fails if a registration set it meanwhile, and retries with the shards locked.
//! 13. A source (timer or token watch) installed in a done scope is dropped at once: a done
//!     scope holds nothing armed.
//! 14. A scope's allocation is reused only once nothing else can reach it: no other `Arc`, no
//!     `Weak` (a registration, a timer), confirmed by `Arc::get_mut` after it left its parents.
//! 15. A scope's lock is published once, by a compare-and-swap from null, and freed only with
//!     the scope.
//! 16. A done scope with `CUSTOM_CAUSE` and no cause stored in its lock (or no lock) has its
//!     parent scope's cause. Only a lone scope adopting its done parent's error gets there
//!     ([`Scope::adopt`]): from a state without `BUSY`, one compare-and-swap publishes the
//!     parent's `ERR` and `CUSTOM_CAUSE` bits, and nothing is stored. The parent's cause is
//!     final (it is done, invariant 1), its parent is never lone (invariant 4) so never
//!     follows in turn, and it lives as long as the child, whose `parent` holds it. A finish
//!     that stores a cause does so before it publishes `CUSTOM_CAUSE` and never after, and a
//!     reset for reuse empties the stored cause, so "none stored" is never stale. A
//!     registration refused by such a scope reads the parent's cause after it lets go of the
//!     scope's lock ([`Refused`](state::Refused)), so no third lock is taken.
//!
//! # Lock order
//!
//! - No lock is held while calling out: wakers, callbacks, timer and token drops, and drops of
//!   anything taken out of a slab (a waker or closure may own a `Context` whose drop takes a
//!   lock) all happen after the lock is released. Under it, a finish only moves what it takes
//!   and upgrades children's `Weak`s; one that no longer upgrades is dropped there, which at
//!   most frees memory whose value is gone.
//! - At most two scope locks are held at once, child before parent, in two places: a new merge
//!   holds its own lock (it is born `BUSY`, so no lock-free finish bypasses it) while it links
//!   into each parent in turn; a lone scope that links holds its own lock while it registers
//!   in its parent. Parents are linked before either begins, so neither takes a third. Nobody
//!   locks a child while holding its parent (a finish takes the registrations out and unlocks
//!   first), so the order child → parent cannot form a cycle.
//! - Shard locks come after their scope's lock: a finish (and the census) take the scope's
//!   lock, then every shard's in index order; a registration or an unlink holds one shard's
//!   lock and takes no other while holding it.
//! - The process-wide parking lot ([`crate::sync::parking_lot`]) is taken with no scope lock
//!   held, by a thread about to sleep in [`Scope::wait_settled`] and by [`Scope::settle`].
//!
//! # Memory orderings
//!
//! Every change to `state` is a read-modify-write with `AcqRel` (`Acquire` on failure), but
//! the `Release` store that clears `LONE`, made while no other change can be (see
//! [`Scope::unlone`]), and the plain stores of a reset for reuse, made with exclusive access. So all changes to it form one total order that also orders the
//! critical sections around them; lock-free readers (`is_done`, `err`, `cause`) load it with
//! `Acquire`, which is all invariant 1 needs. Every other field is read and written under a
//! lock, but the `lone`, `home` and `tasks` counts, relaxed counters that only decide where a
//! count goes or are read by the census and the cancellation's event. Links are atomics only so
//! that they can be cleared through `&self`; they are read and written under the lock of the
//! parent's slab that holds them (or with exclusive access), but for a lone scope's link,
//! whose swaps are read-modify-writes (invariants 6 and 7). The lock itself is published by a
//! compare-and-swap of its pointer (`Release`) and read with `Acquire` ([`inner::OnceInner`]).
//!
//! # Who wakes whom
//!
//! [`Scope::cancel`] finishes the scope, then walks its subtree depth first, finishing every
//! live descendant with the same error and cause. A scope with nothing below it to walk (a
//! leaf, what a task usually awaits) leaves the walk as soon as it is finished, and then, with
//! no lock held, its mirror token is cancelled and its `done()` futures are woken. Only after
//! the whole subtree is done does the walk, with no lock held, cancel the other scopes' mirror
//! tokens, wake their waiters, then run `after_func` callbacks. So when a waiter runs, its
//! context's token is cancelled and every descendant of its context reports done, and when a
//! callback runs, every descendant of the cancelled scope does.
//!
//! A waker run during the walk runs flagged ([`walk::Released::release_early`]): a
//! cancellation it starts on this thread never waits for a `PROPAGATING` bit, so that no cycle
//! of waits can form through user code; such a `cancel()` may return before descendants that
//! another walk is finishing are done. Otherwise waits cannot deadlock: a thread waits only
//! with no lock held, for a scope strictly below the one it is walking, and the only bits it
//! holds belong to scopes on its current path, above that one; following who waits for whom
//! always leads further down an acyclic tree.
//!
//! # Which thread runs user code
//!
//! User code is a waker, a token's waker (through a mirror token), an `after_func` callback,
//! or the `Drop` of a value, cause or closure a released scope held. A cancellation runs the
//! wakers, mirror tokens and callbacks of what it finished on the thread that called
//! `cancel()` (a handle's `cancel` or drop, a deadline's timer task or thread, a token watch's
//! waker), after every lock is released. Drops run on the thread that lets go of the last
//! reference: the walk drops the scopes it reached once its whole subtree is settled (no
//! `PROPAGATING` bit of its own left), before the waiters and callbacks it deferred.
//!
//! # Entry points
//!
//! - Make: [`Scope::with_cancel`], [`Scope::with_deadline`], [`Scope::merge`],
//!   [`Scope::with_token`].
//! - Ask: [`Scope::is_done`], [`Scope::err`], [`Scope::cause`], [`Scope::deadline`],
//!   [`Scope::parent`], [`Scope::kind`].
//! - Cancel: [`Scope::cancel`]; let go: [`Scope::let_go`] (a cancel handle's drop),
//!   [`Scope::recycle`] (also a context's drop, through [`node::Node::let_go`]),
//!   [`node::release`].
//! - Register: [`Scope::poll_done`] / [`Scope::forget_waiter`] (`done()`),
//!   [`Scope::add_callback`] / [`Scope::remove_callback`] (`after_func`), [`Scope::token`].
//! - Count: [`Scope::task_started`], [`Scope::task_ended`], [`Scope::census`].

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
mod kept;
mod link;
mod lone;
pub(crate) mod node;
mod once;
mod recycle;
mod scope;
mod shards;
mod state;
#[cfg(all(test, not(loom)))]
pub(crate) mod tests;
mod waiters;
mod walk;

pub(crate) use expire::Expiry;
use inner::Inner;
use node::{Node, release};
#[cfg(loom)]
pub(crate) use once::lock_check;
use once::{OnceInner, lock_inner};
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
    /// when it fires, if not the error, is in [`Extra`](inner::Extra)).
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

// Layout. A scope is 104 bytes, 120 with the `Arc`'s counts: the 128-byte chunk glibc gives
// the bare token's node (pinned by `a_scope_allocation_stays_at_120_bytes`). Its lock and
// registrations are one pointer away, made on first use ([`OnceInner`]), with a timer or
// token watch inline in it (`Inner::outside`), and so is what few scopes use (a merge's
// second parent in `Kind::Merge`; causes and a mirror token in an `Extra`). A lone leaf
// (`lone.rs`), which never takes its lock, is these 120 bytes alone
// (`ScaleMemoryPerContext/derive=with_cancel` is bound by the bytes each derive writes).
// The order keeps the fields every child reads from its parent (`parent`, `deadline`,
// `state`) at least 64 bytes past the reference counts and the `lone` count, which every child
// derived or dropped writes: on no 64-byte line together, whatever the allocation's 16-byte
// alignment (pinned by `what_children_read_never_shares_a_line_with_the_counts`; two threads
// deriving from one parent, `CommonParentCancel`, pay for every line they share). `shards`
// and `inner` are read by a child only right after it wrote the counts' line (registering in
// its parent), so they may share it. `repr(C)` keeps the order.
#[repr(C)]
pub(crate) struct Scope {
    /// How many lone children (see `lone.rs`) this scope has: written by each as it is
    /// made and as it goes, next to the reference counts each also writes.
    lone: AtomicU32,
    /// The thread that made this scope, and how many lone children other threads made (see
    /// [`HOME_THREAD_BITS`](lone::HOME_THREAD_BITS)). Read and written with the counts, on their line.
    home: AtomicU32,
    kind: Kind,
    /// Where this scope is registered in its parent scope (link 0; a merge keeps its link 1,
    /// in `other`'s scope, in its `Kind`): a [`Link`](link::Link) encoded, 0 when not registered there.
    link: AtomicUsize,
    /// The lock, and the registrations and rarer fields it guards: made on first use.
    inner: OnceInner,
    /// Where children register once the lock is contended (see `shards.rs`).
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
    /// `ERR` (two bits), `CUSTOM_CAUSE`, `BUSY`, `PROPAGATING`, `SLEEPER`, `SHARDED` and
    /// `LONE`: every bit a lock-free reader needs (see "State" above).
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

#[inline]
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
