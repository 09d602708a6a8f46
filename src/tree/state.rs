//! The state byte: queries, the claim that guards registration, and the finish.
//!
//! Keeps invariant 1 (a custom cause is stored under the lock before `CUSTOM_CAUSE` is
//! published, in [`Scope::finish_locked`]; [`Scope::cause`] reads it under that lock) and
//! invariant 2 ([`Scope::claim`] is the read-modify-write every registration makes under the
//! lock; [`Scope::finish_lock_free`] only wins from a state without `BUSY`). Queries of a lone
//! scope go to `lone.rs` (invariant 5); a cause adopted from the parent is read there
//! ([`Scope::cause`], invariant 16). Pinned by `loom_cause_is_never_seen_before_the_error_or_torn`,
//! `loom_two_cancellations_agree_on_one_cause` and
//! `loom_lock_free_cancel_races_a_custom_cause_cancel` and
//! `loom_a_lone_child_adopts_its_parents_custom_cause_while_read`.

use std::mem;

use crate::error::{Cause, Error};
use crate::sync::Ordering;

use super::inner::Inner;
use super::once::lock_inner;
use super::walk::Walk;
use super::{
    BUSY, CUSTOM_CAUSE, ERR, Finished, LIVE, LONE, PROPAGATING, SHARDED, Scope, decode, encode,
};

impl Scope {
    #[inline]
    pub(crate) fn err(&self) -> Option<Error> {
        // The lone case apart, after the error is decoded, and `observed_lone` out of line, so
        // that a query of a scope that is not lone takes two branches (`ErrOK`, `ErrCanceled`
        // and `CheckCanceled` in `benches/go_suite.rs`). `is_done` alike.
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
    /// error if the parent is done (see `lone.rs`).
    #[inline(always)]
    pub(super) fn observed(&self) -> u8 {
        let state = self.state.load(Ordering::Acquire);
        if state & LONE != 0 {
            return self.observed_lone(state);
        }
        state
    }

    /// The error and cause of a done scope (the plain error if it is live).
    pub(super) fn reason(&self) -> (Error, Cause) {
        let err = decode(self.state.load(Ordering::Acquire)).unwrap_or(Error::Canceled);
        (err, self.cause().unwrap_or(Cause::from(err)))
    }

    pub(crate) fn cause(&self) -> Option<Cause> {
        let mut scope = self;
        let mut state = self.observed();
        let err = decode(state)?;
        // A loop, not a call: a scope follows its parent's cause at most once in a row
        // (invariant 16), but nothing here relies on it.
        loop {
            if state & CUSTOM_CAUSE == 0 {
                return Some(Cause::from(decode(state).unwrap_or(err)));
            }
            // Invariant 1: written under this lock before `CUSTOM_CAUSE` was published.
            if let Some(cause) = scope.own_cause() {
                return Some(cause);
            }
            // Invariant 16: none of its own, so it adopted its parent's, which is final.
            let Some(parent) = scope.parent.scope() else {
                return Some(Cause::from(err)); // unreachable: only a lone scope adopts
            };
            scope = parent;
            state = parent.state.load(Ordering::Acquire);
        }
    }

    /// The custom cause stored in this scope, if any: none if it never made its lock.
    fn own_cause(&self) -> Option<Cause> {
        let inner = self.inner.get()?;
        lock_inner(inner).cause().cloned()
    }

    /// Called with `inner` locked, before adding anything to it: marks the scope `BUSY` and
    /// returns `Some(state)` if it is already done (invariant 2).
    #[inline]
    pub(super) fn claim(&self) -> Option<u8> {
        let state = self.state.load(Ordering::Acquire);
        let state = if state & BUSY == 0 {
            self.state.fetch_or(BUSY, Ordering::AcqRel)
        } else {
            state // with `BUSY` set, `ERR` only changes under the lock we hold
        };
        (state & ERR != LIVE).then_some(state)
    }

    /// The error and cause of a done scope, given its state and its `inner`, which the caller
    /// has locked and lets go of before it calls the [`Refused`] this returns.
    #[inline]
    pub(super) fn done_reason(&self, state: u8, inner: &Inner) -> Refused<'_> {
        let err = decode(state).unwrap_or(Error::Canceled);
        match inner.cause() {
            Some(cause) if state & CUSTOM_CAUSE != 0 => Refused::Known(err, cause.clone()),
            // Invariant 16: the parent's cause, read once this lock is let go of.
            None if state & CUSTOM_CAUSE != 0 => Refused::Adopted(self),
            _ => Refused::Known(err, Cause::from(err)),
        }
    }

    /// Moves a live scope to done and hands what it holds to `walk`, emptying its registrations
    /// in place, so that nothing large is returned through memory and the room is not given
    /// back under a second lock (`CancelTree/depth=1/Root=OpenCanceler`). Under the lock only
    /// moves happen, and the children's `Weak`s are upgraded; the timer or token watch is
    /// dropped after it.
    pub(super) fn finish(&self, err: Error, cause: &Cause, walk: &mut Walk) -> Finished {
        match self.finish_lock_free(err, cause) {
            Some(finished) => finished,
            None => self.finish_locked(err, cause, move || walk),
        }
    }

    /// The lock-free part of [`Scope::finish`]: `None` if the scope must be locked.
    #[inline(always)]
    pub(super) fn finish_lock_free(&self, err: Error, cause: &Cause) -> Option<Finished> {
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
    /// released leaf first) needs no walk set up (`CancelTree/depth=10/Root=Background`).
    pub(super) fn finish_locked<'w>(
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
            // With `SHARDED` set, hold every shard's lock across the swap (see `shards.rs`).
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
        if !propagating && inner.mirror().is_none() {
            // A timer or token watch is all it holds, and it needs no walk: dropped now, with
            // no lock held (`WithTimeout` rows of `benches/go_suite.rs`).
            let source = inner.take_source();
            drop(inner);
            drop(source);
            return Finished::Bare;
        }
        let walk = walk();
        // The emptied slab keeps its room for the scope's next life (see `recycle.rs`), unless it
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
            // Apart, not a `None` source carried to one drop after the branch: that would be
            // written as a tag and read back by a wider copy, a store-forwarding stall.
            drop(inner);
        }
        drop(surplus);
        if propagating {
            Finished::Propagating
        } else {
            Finished::Bare
        }
    }
}

/// Why a done scope refused a registration ([`Scope::done_reason`]), to be resolved once its
/// lock is let go of: a scope whose cause is its parent's (invariant 16) reads it under the
/// parent's lock, and the lock order allows no third.
pub(super) enum Refused<'a> {
    Known(Error, Cause),
    Adopted(&'a Scope),
}

impl Refused<'_> {
    /// The error and cause: call with no lock of the refusing scope held.
    pub(super) fn resolve(self) -> (Error, Cause) {
        match self {
            Refused::Known(err, cause) => (err, cause),
            Refused::Adopted(scope) => scope.reason(),
        }
    }
}
