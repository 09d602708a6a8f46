//! Letting go of a scope: unfinished when nothing could tell, and reuse of its allocation.
//!
//! The last handle of a live scope that nothing else holds, and whose debug event nobody
//! listens for, releases it unfinished when it holds nothing a cancellation would release
//! ([`Scope::let_go`]): when nothing was ever registered in it (`BUSY` clear), or, for a link
//! of a chain whose child has gone, once it is proven unique and unlinked as for reuse and
//! found empty. No one can tell the difference; a parent's walk that reaches a
//! never-registered scope through its `Weak` registration before it is unlinked finishes it
//! harmlessly. Pinned by `a_links_last_handle_cancels_it_only_when_something_could_tell`.
//!
//! A scope's allocation can outlive it. When the last reference to a scope is let go by a
//! cancel handle or by its own context ([`Scope::recycle`], the context's through
//! [`Node::let_go`]), or by a context derived from it as that child goes
//! ([`Scope::try_recycle`], from [`release`]), the allocation goes to the thread, which keeps
//! up to [`spare::CAP`], and the next scope made on that thread takes it instead of calling
//! the allocator. So a pair dropped in either order leaves its scope to the thread: the end of
//! a scope drops the handle first, which cancels the context it leaves behind, and the
//! context's drop then keeps it, done (pinned by `tests/drop_order.rs`).
//!
//! Keeps invariant 14: a scope is kept only if nothing can reach it. The releaser must hold the
//! only strong reference, and the only `Weak`s must be its registrations in its parents (a timer or
//! token watch holds one more: a live scope's is dropped first if it is all the scope holds,
//! [`Scope::disarm`]); it then leaves its parents (a cancellation that upgrades one of those
//! registrations meanwhile only finishes a scope no one else holds), and `Arc::get_mut` confirms
//! that nothing holds it, not even a `Weak` ([`Kept::new`]). So no stale registration, timer or
//! `AfterFunc` can reach a kept scope's next life. What it still holds (a custom cause or deadline
//! cause, the callbacks and mirror token of a scope released live, which a freed scope would drop
//! unrun and uncancelled too) is dropped before it is kept, with no lock held, and its state is
//! reset to live, whatever error it was done with: a done scope has left its parents (whoever
//! finished it unlinked it before letting go of it), and nothing remains that a query of the next
//! life could find ([`Scope::reset`]). A finish empties a scope's registrations in place, so a
//! reused scope keeps their room (up to 16 entries), and a scope that made its lock keeps it across
//! its lives. Pinned by `a_released_scope_is_reused_clean_whatever_it_held`,
//! `a_scope_is_kept_only_while_nothing_else_can_reach_it` and
//! `loom_releasing_a_childs_last_handles_races_the_parents_cancel`.

use std::mem::ManuallyDrop;
use std::sync::Arc;

use crate::error::{Cause, Error};
use crate::sync::Ordering;

use super::kept::Kept;
use super::lone::LONE_LINK;
use super::shards::OnceShards;
use super::walk::debug_events;
use super::{BUSY, ERR, Finished, Kind, LIVE, LONE, Node, Scope, release};

impl Scope {
    /// Drops a cancel handle's `scope`: cancels it, unless nothing could tell whether it was
    /// cancelled, then recycles it (see the module's header).
    ///
    /// Nothing can tell when the handle holds the only reference and the scope holds nothing a
    /// cancellation would release. Then there is no context, child or task to see it done, no
    /// walk below it to wait for, no waiter to wake, no callback to run, no token handed out
    /// to cancel; and with its registrations in its parents removed, no walk can reach it.
    /// Three kinds are common: a scope already done; a scope never registered in (`BUSY`
    /// clear), released as it is; and the link of a chain released leaf first, whose child
    /// has left it. That one has `BUSY` set; it is proven unique as for reuse, and reused
    /// unfinished (`CancelTree/depth=10/Root=Background`).
    ///
    /// A scope held elsewhere, most often by the context of the pair, which the end of its
    /// scope drops next (`let (ctx, _cancel) = …` drops the handle first), is cancelled; if
    /// nothing was ever registered in it, by one swap ([`Scope::cancel_unregistered`]), and the
    /// context's drop then recycles it (`DropOrder/first=handle` in `benches/go_suite.rs`).
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
        } else if scope.cancel_unregistered() {
            return;
        } else {
            scope
        };
        scope.cancel(Error::Canceled, Cause::from(Error::Canceled));
        Scope::recycle(scope);
    }

    /// Cancels a live scope that nothing was ever registered in (`BUSY` clear), when no one
    /// listens for the debug event: then the cancellation is the lock-free finish, and leaving
    /// the parent (or its count), and nothing else. `false`, having changed nothing, if it
    /// cannot: the scope is done, `BUSY`, a lone scope whose parent is done (it takes the
    /// parent's reason), or another finish won the swap ([`Scope::cancel`] handles all these).
    #[inline(always)]
    pub(super) fn cancel_unregistered(&self) -> bool {
        let state = self.state.load(Ordering::Acquire);
        if state & (ERR | BUSY) != LIVE
            || (state & LONE != 0 && self.parent.scope().is_some_and(|parent| parent.is_done()))
            || debug_events()
        {
            return false;
        }
        // A plain cause owns nothing: not dropped, so that no check of it is left after the
        // swap (the compiler cannot see through the swap that it is still plain).
        let cause = ManuallyDrop::new(Cause::from(Error::Canceled));
        let finished = self.finish_lock_free(Error::Canceled, &cause);
        if !matches!(finished, Some(Finished::Bare)) {
            return false;
        }
        self.unlink();
        true
    }

    /// [`Scope::let_go`] for a live `BUSY` scope: keeps it if nothing can tell, or hands it
    /// back to be cancelled.
    #[inline(never)]
    pub(super) fn let_go_busy(scope: Arc<Scope>) -> Option<Arc<Scope>> {
        // Only a deadline or a token watch holds a source: the links of a chain, the common
        // case here, take no lock for it (`CancelTree/depth=10/Root=OpenCanceler`).
        if matches!(scope.kind, Kind::Deadline { .. } | Kind::Token) && !debug_events() {
            scope.disarm();
        }
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

    /// Drops the timer or token watch of a scope about to be let go of, if that is all it
    /// holds that a cancellation would release: its `Weak` would keep the scope from reuse.
    /// A timer firing meanwhile holds the scope, or its `Weak`, until it is done with it, so
    /// [`Scope::unique_for_reuse`] refuses, and the scope is cancelled as before.
    fn disarm(&self) {
        let source = {
            let mut inner = self.lock();
            if inner.regs.len() != 0 || inner.mirror().is_some() {
                return;
            }
            inner.take_source()
        };
        drop(source); // with no lock held: it takes the wheel's
    }

    /// Whether this scope, which nothing else can reach, holds nothing that its cancellation
    /// would release (see [`Scope::let_go`]).
    pub(super) fn holds_nothing(&mut self) -> bool {
        let Some(inner) = self.inner.get_mut() else {
            return true; // never locked: nothing was ever registered
        };
        inner.regs.len() == 0 && !inner.holds_outside()
    }

    /// Lets go of a cancel handle's `scope`. If it held the last reference and nothing else
    /// can reach the scope, the scope leaves its parents and its allocation is kept for reuse
    /// on this thread (see the module's header); otherwise this is a plain drop.
    #[inline(never)] // one copy, for cancel handles and contexts (`Node::let_go`)
    pub(crate) fn recycle(scope: Arc<Scope>) {
        if let Ok(kept) = Scope::unique_for_reuse(scope) {
            Scope::keep(kept);
        }
    }

    /// [`Scope::recycle`] once `kept` is proven unique and unlinked.
    #[inline]
    pub(super) fn keep(mut kept: Kept) {
        let unique = kept.get();
        // The parents go last, once this scope is kept: what their drops run finds it out of
        // the way. Released here rather than returned as `try_recycle` does: a pair of nodes
        // returned through memory is read back by wider loads than wrote it, a
        // store-forwarding stall (`CancelTree/depth=1/Root=Background`).
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
    // through memory, they would be read back by wider loads than wrote them, a
    // store-forwarding stall (`CancelTree/depth=1/Root=OpenCanceler`).
    #[inline(always)]
    pub(crate) fn try_recycle(scope: Arc<Scope>) -> Result<(Node, Option<Node>), Arc<Scope>> {
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
    pub(super) fn unique_for_reuse(scope: Arc<Scope>) -> Result<Kept, Arc<Scope>> {
        // Only we hold the scope, and the only `Weak`s are its registrations in its parents:
        // whoever upgrades one of those is a cancellation, which finishes the scope and to
        // which it makes no difference whether it is still linked.
        if Arc::strong_count(&scope) != 1 {
            return Err(scope);
        }
        if scope.state.load(Ordering::Relaxed) & ERR != LIVE {
            // Done: whoever finished it left its parents before letting go of it, so no `Weak`
            // but a timer's can be left (pinned by the `link` check of `Scope::reset`).
            if Arc::weak_count(&scope) != 0 || spare::full() {
                return Err(scope);
            }
            return Kept::new(scope);
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
    pub(super) fn reset(&mut self) {
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
}

/// Spare scope allocations, kept per thread for reuse (see the module's header).
#[cfg(not(loom))]
pub(super) mod spare {
    use std::cell::RefCell;

    use super::super::kept::Kept;

    /// How many spare scopes a thread keeps at most: enough for a chain of 1,000 released leaf
    /// first (`CancelTree/depth=1000`). At most 1,024 × 128-byte chunks (128 KiB) per thread,
    /// plus the lock and registrations (96 bytes, and the room of at most 16 more, 384 bytes)
    /// and the out-of-line fields (80 bytes) of a spare that had them, which it keeps.
    pub(in crate::tree) const CAP: usize = 1024;

    thread_local! {
        static SPARE: RefCell<Vec<Kept>> = const { RefCell::new(Vec::new()) };
    }

    #[inline]
    pub(in crate::tree) fn take() -> Option<Kept> {
        SPARE
            .try_with(|spare| spare.borrow_mut().pop())
            .ok()
            .flatten()
    }

    /// Whether [`keep`] would hand a scope back: it is then cheaper to free it as it is.
    #[inline]
    pub(in crate::tree) fn full() -> bool {
        SPARE
            .try_with(|spare| spare.borrow().len() == CAP)
            .unwrap_or(true)
    }

    /// How many scopes this thread keeps.
    #[cfg(test)]
    pub(in crate::tree) fn len() -> usize {
        SPARE.with(|spare| spare.borrow().len())
    }

    /// Keeps `scope`, or hands it back if this thread already keeps enough (or is exiting).
    #[inline]
    pub(in crate::tree) fn keep(scope: Kept) -> Option<Kept> {
        // Nothing runs user code while the list is borrowed: a scope handed back is dropped by
        // the caller, after the borrow (and a reset scope drops trivially anyway).
        SPARE
            .try_with(|spare| {
                let mut spare = spare.borrow_mut();
                if spare.len() == CAP {
                    return Some(scope);
                }
                if spare.capacity() == 0 {
                    make_room(&mut spare);
                }
                spare.push(scope);
                None
            })
            .unwrap_or(None)
    }

    /// The room for every scope a thread keeps, made once per thread: no growth later.
    #[cold]
    #[inline(never)]
    fn make_room(spare: &mut Vec<Kept>) {
        spare.reserve_exact(CAP);
    }
}

/// Under loom, scopes are not kept: every drop frees.
#[cfg(loom)]
pub(super) mod spare {
    use super::super::kept::Kept;

    pub(in crate::tree) fn take() -> Option<Kept> {
        None
    }

    pub(in crate::tree) fn full() -> bool {
        false // still exercise `Scope::recycle` up to `keep`
    }

    pub(in crate::tree) fn keep(scope: Kept) -> Option<Kept> {
        Some(scope)
    }
}
