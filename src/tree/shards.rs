//! Shards: where the children of a contended scope register.
//!
//! A parent shared by many threads (a server's root, a request that fans out) sees children
//! registered and removed from every core, and its one lock and slab would move between the
//! cores' caches twice per child. So the first registration that finds the lock held
//! ([`Scope::register`] tries it) gives the scope eight shards, each a lock and a slab on a
//! cache line of its own; from then on children register in their thread's shard (threads
//! take shards in turn), and leave it through their link, which names the slab
//! ([`Link::Shard`](super::link::Link)). Waiters, callbacks, sources and the mirror token stay
//! in `inner`. Lone children counted on other threads than the parent's home count in their
//! thread's shard too (see `lone.rs`); `SHARDED` is not set for a count.
//!
//! Keeps invariant 12 (and so 2 and 3 for sharded registrations):
//!
//! - A registration into a shard holds the shard's lock while it sets `BUSY | SHARDED` by a
//!   read-modify-write (or, once both are set, loads `state`: every finish that swaps from
//!   then on holds this shard's lock across its swap), refuses if that saw `ERR`, and inserts.
//! - The locked finish publishes `ERR` with a compare-and-swap. If the value it swaps from has
//!   `SHARDED`, it holds every shard's lock across the swap and takes their slabs
//!   ([`Scope::finish_sharded`]). If not, the swap fails when a registration set `SHARDED` in
//!   between, and it tries again, now locking the shards. `PROPAGATING` is set in the same
//!   swap when `inner` or a shard held children.
//!
//! Pinned by `loom_a_child_registered_in_a_shard_races_the_parents_cancel`,
//! `loom_a_registration_that_only_loads_the_state_races_the_parents_cancel` and
//! `sharded_children_are_counted_unlinked_and_cancelled`.

use std::mem;
use std::sync::PoisonError;

use crate::error::{Cause, Error};
use crate::slab::Slab;
use crate::sync::{AtomicU32, Mutex, MutexGuard, Ordering};

use super::link::Link;
use super::{BUSY, ERR, LIVE, PROPAGATING, Reg, SHARDED, Scope};

impl Scope {
    /// [`Scope::register`] into the shard of the calling thread (see `shards.rs`).
    #[cold]
    #[inline(never)]
    pub(super) fn register_sharded<T>(
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
        // A read-modify-write by every child would move the line between the cores deriving
        // from a shared parent once more per child (`CommonParentCancel`). Pinned by
        // `loom_a_registration_that_only_loads_the_state_races_the_parents_cancel`.
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
            let refused = self.done_reason(state, &inner);
            drop(inner);
            return Err(refused.resolve());
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
    pub(super) fn forced_shards(&self) -> bool {
        self.shards.get().is_some()
    }

    #[cfg(not(any(test, loom)))]
    #[inline(always)]
    pub(super) fn forced_shards(&self) -> bool {
        false
    }

    /// The swap of [`Scope::finish`] for a `SHARDED` scope, made while every shard is locked;
    /// hands out what the shards held, or the state that made the swap fail.
    #[cold]
    #[inline(never)]
    pub(super) fn finish_sharded(
        &self,
        state: u8,
        done: u8,
        inner_regs: bool,
    ) -> Result<Vec<Slab<Reg>>, u8> {
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
}

/// How many shards a contended scope spreads its children over.
pub(super) const SHARDS: usize = 8;

/// The children of a scope whose lock was found contended, spread over per-thread shards.
pub(super) struct Shards(pub(super) [Shard; SHARDS]);

/// One shard, on a cache line of its own: the children registered there, and how many lone
/// children threads of this shard made (see [`Scope::count_lone`]).
#[repr(align(64))]
pub(super) struct Shard(pub(super) Mutex<Slab<Reg>>, pub(super) AtomicU32);

impl Shards {
    pub(super) fn new() -> Shards {
        Shards(std::array::from_fn(|_| {
            Shard(Mutex::new(Slab::new()), AtomicU32::new(0))
        }))
    }

    /// Every shard's lock, taken in index order (see "Lock order" in `tree/mod.rs`).
    pub(super) fn lock_all(&self) -> Vec<MutexGuard<'_, Slab<Reg>>> {
        self.0.iter().map(|shard| lock_slab(&shard.0)).collect()
    }
}

#[inline]
pub(super) fn lock_slab(slab: &Mutex<Slab<Reg>>) -> MutexGuard<'_, Slab<Reg>> {
    // As `Scope::lock`: every update under it is a single assignment.
    slab.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A scope's shards, made on first contention.
#[cfg(not(loom))]
pub(super) struct OnceShards(std::sync::OnceLock<Box<Shards>>);

#[cfg(not(loom))]
impl OnceShards {
    pub(super) const fn new() -> Self {
        OnceShards(std::sync::OnceLock::new())
    }

    pub(super) fn get(&self) -> Option<&Shards> {
        self.0.get().map(|shards| &**shards)
    }

    pub(super) fn get_or_init(&self) -> &Shards {
        self.0.get_or_init(|| Box::new(Shards::new()))
    }
}

/// Under loom, a lock stands in for std's `OnceLock`, which loom cannot see.
#[cfg(loom)]
pub(super) struct OnceShards(Mutex<Option<std::sync::Arc<Shards>>>);

#[cfg(loom)]
impl OnceShards {
    pub(super) fn new() -> Self {
        OnceShards(Mutex::new(None))
    }

    pub(super) fn get(&self) -> Option<std::sync::Arc<Shards>> {
        self.0.lock().unwrap().clone()
    }

    pub(super) fn get_or_init(&self) -> std::sync::Arc<Shards> {
        self.0
            .lock()
            .unwrap()
            .get_or_insert_with(|| std::sync::Arc::new(Shards::new()))
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
pub(super) fn this_thread() -> u32 {
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
pub(super) fn this_thread() -> u32 {
    0
}

/// The shard this thread registers children in: threads take shards in turn.
#[cfg(not(loom))]
#[inline(always)]
pub(super) fn shard_of_this_thread() -> usize {
    this_thread() as usize % SHARDS
}

/// Under loom, one shard: loom's executions must be the same from run to run.
#[cfg(loom)]
pub(super) fn shard_of_this_thread() -> usize {
    0
}
