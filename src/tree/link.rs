//! A scope's places in its parents: registering there, leaving, and the link codec.
//!
//! Keeps invariant 11: a link is written once, under the lock of the parent's slab that takes
//! the registration ([`Scope::register`]), and cleared by a swap ([`Scope::unlink`]), so that
//! of two that race only one removes. A link names the slab and the index
//! ([`Link::encode`]); a lone scope's link holds one of the values of `lone.rs` instead.
//! Pinned by `a_link_names_its_slab_and_index` and
//! `loom_parent_cancel_races_a_child_cancel_and_drop`.

use std::mem;
use std::sync::{Arc, TryLockError};

use crate::error::{Cause, Error};
use crate::slab::Slab;
use crate::sync::{AtomicUsize, Ordering};

use super::lone::{LINKING_LINK, LONE_LINK, is_waiter_link};
use super::shards::{SHARDS, lock_slab};
use super::walk::wake;
use super::{ERR, Kind, LIVE, Node, Reg, SHARDED, Scope};

impl Scope {
    /// Registers `child` as this scope's child on the child's link `link`, or reports why this
    /// scope is already done. `lone`: the child is a lone child of this scope, which leaves
    /// `LONE` and the count here under the lock that registers it (see `lone.rs`).
    pub(super) fn attach(
        &self,
        child: &Arc<Scope>,
        link: usize,
        lone: bool,
    ) -> Result<(), (Error, Cause)> {
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
    /// thread's shard once the lock has been found contended (see `shards.rs`).
    #[inline(always)]
    pub(super) fn register<T>(
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
            let refused = self.done_reason(state, &inner);
            drop(inner);
            return Err(refused.resolve());
        }
        let index = inner.regs.insert_with(make);
        Ok(placed(&mut inner.regs, index, Link::Inner(index)))
    }

    /// Removes this scope from the registrations of every parent it is linked into.
    #[inline]
    pub(super) fn unlink(&self) {
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
    pub(super) fn unlink_slow(&self) {
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
    pub(super) fn in_slab<T>(
        &self,
        link: Link,
        f: impl FnOnce(&mut Slab<Reg>, usize) -> T,
    ) -> Option<T> {
        match link {
            Link::Inner(index) => Some(f(&mut self.lock().regs, index)),
            Link::Shard(number, index) => {
                let shards = self.shards.get()?;
                Some(f(&mut lock_slab(&shards.0[number].0), index))
            }
        }
    }

    /// The slot of link `link` (0: in the parent, 1: in a merge's `other`), if it has one.
    #[inline]
    pub(super) fn link(&self, link: usize) -> Option<&AtomicUsize> {
        match (link, &self.kind) {
            (0, _) => Some(&self.link),
            (1, Kind::Merge(merge)) => Some(&merge.slot),
            _ => None,
        }
    }

    #[inline]
    pub(super) fn link_parent(&self, link: usize) -> Option<&Arc<Scope>> {
        match (link, &self.kind) {
            (0, _) => self.parent.scope(),
            (1, Kind::Merge(merge)) => merge.other.scope(),
            _ => None,
        }
    }

    /// Removes this scope from its parents and hands its parent contexts to the caller, so that
    /// a long chain can be released iteratively rather than by recursive drops.
    pub(crate) fn detach_parents(&mut self) -> (Node, Option<Node>) {
        self.unlink();
        self.take_parents()
    }

    /// [`Scope::detach_parents`] for a scope already unlinked.
    pub(super) fn take_parents(&mut self) -> (Node, Option<Node>) {
        let other = match &mut self.kind {
            Kind::Merge(merge) => Some(mem::take(&mut merge.other)),
            _ => None,
        };
        (mem::take(&mut self.parent), other)
    }
}

/// The low bits of a link that say which slab holds it: 0 for `inner`, 1 + shard number.
pub(super) const LINK_BITS: u32 = 4;
const _: () = assert!(SHARDS < 1 << LINK_BITS);

/// Where a child is registered in a parent: the value of one of its `links`, 0 for none.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Link {
    Inner(usize),
    Shard(usize, usize),
}

impl Link {
    #[inline]
    pub(super) fn encode(self) -> usize {
        let (which, index) = match self {
            Link::Inner(index) => (0, index),
            Link::Shard(number, index) => (number + 1, index),
        };
        1 + (index << LINK_BITS | which)
    }

    #[inline]
    pub(super) fn decode(link: usize) -> Link {
        let (index, which) = ((link - 1) >> LINK_BITS, (link - 1) & ((1 << LINK_BITS) - 1));
        match which {
            0 => Link::Inner(index),
            number => Link::Shard(number - 1, index),
        }
    }
}
