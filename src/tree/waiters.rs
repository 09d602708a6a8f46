//! What the public layer registers in a scope: `done()` waiters, `after_func` callbacks and
//! the mirror token behind `Context::token`.
//!
//! Keeps invariant 2 for each: every registration links the scope first if it is lone
//! (invariant 4), then claims under the lock, and a refused one answers as a done scope does.
//! A lone scope's first waiter waits in the parent (`lone.rs`, invariant 6). Pinned by
//! `loom_cancel_races_a_waiting_done_future`, `loom_after_func_stop_races_the_callback`,
//! `loom_a_token_taken_during_a_cancel_is_cancelled` and
//! `loom_a_done_future_dropped_during_a_cancel_leaves_nothing`.

use std::mem;
use std::sync::Arc;
use std::task::{self, Poll};

use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::sync::Ordering;

use super::lone::WAITER_LINK;
use super::once::lock_inner;
use super::{Callback, LONE, Reg, Scope, decode};

impl Scope {
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

    pub(super) fn register_waiter(
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

    pub(super) fn remove_waiter(&self, slot: usize) {
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

    pub(super) fn existing_mirror(&self) -> Option<CancellationToken> {
        // A scope that never made its lock has no mirror: asking makes none.
        let mirror = (self.inner.get()).and_then(|inner| lock_inner(inner).mirror().cloned());
        if mirror.is_none() && self.is_done() {
            let cancelled = CancellationToken::new();
            cancelled.cancel();
            return Some(cancelled);
        }
        mirror
    }

    pub(super) fn install_mirror(self: &Arc<Self>, token: CancellationToken) -> CancellationToken {
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
}
