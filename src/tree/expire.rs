//! Where the timers reach the tree: a scope's deadline and token watch.
//!
//! A timer or token watch ([`Source`], in `source.rs` and `wheel.rs`) holds an [`Expiry`],
//! a weak reference to the scope it may cancel that can do nothing else, and is held by the
//! scope (in `Inner`), so that dropping the scope disarms it. Keeps invariant 13: a source
//! installed in a done scope is dropped at once, refused by the claim under the scope's lock
//! (invariant 2), so no timer outlives the cancellation that made it useless. Pinned by
//! `loom_a_source_installed_during_a_cancel_is_dropped` and
//! `loom_a_token_watch_set_while_the_parent_is_cancelled_is_dropped`.

use std::sync::{Arc, Weak};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Cause, Error};
use crate::source::{self, Source};

use super::{Kind, Scope};

/// A timer's or token watch's handle on the scope it may cancel: all that the timers see of
/// the tree. Weak, so that an armed timer keeps no scope alive; the same size as the pointer,
/// so that a wheel's entries do not grow.
#[derive(Clone, Default)]
pub(crate) struct Expiry(Weak<Scope>);

impl Expiry {
    pub(crate) fn of(scope: &Arc<Scope>) -> Expiry {
        Expiry(Arc::downgrade(scope))
    }

    /// Whether this is the empty `Expiry` (its `Default`), which reaches no scope: what a timer
    /// leaves behind once it has handed its `Expiry` on.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.ptr_eq(&Weak::new())
    }

    /// The deadline timer has fired: cancels the scope with `DeadlineExceeded` (and its
    /// deadline cause) if the deadline has passed, or moves it to the fallback timer thread if
    /// the timer fired early (Tokio fires every timer when its runtime shuts down). Nothing if
    /// the scope is gone or done.
    pub(crate) fn fire_deadline(&self) {
        if let Some(scope) = self.0.upgrade() {
            scope.deadline_fired();
        }
    }

    /// The watched `token` woke its watcher: cancels the scope if the token is cancelled, or
    /// watches it again. Nothing if the scope is gone.
    pub(crate) fn token_woke(&self, token: &CancellationToken) {
        if let Some(scope) = self.0.upgrade() {
            scope.watch_token(token.clone());
        }
    }
}

impl Scope {
    /// Arms this scope's own deadline.
    pub(super) fn arm(self: &Arc<Self>, at: Instant, now: Option<Instant>) {
        if at <= now.unwrap_or_else(Instant::now) {
            return self.deadline_fired();
        }
        match source::arm_timer(&Expiry::of(self), at) {
            Some(timer) => self.set_source(timer),
            None => self.deadline_fired(),
        }
    }

    /// Watches `token`: cancels this scope if it is cancelled already, or installs a watch
    /// that will.
    pub(super) fn watch_token(self: &Arc<Self>, token: CancellationToken) {
        match source::watch_token(Expiry::of(self), token) {
            Some(watch) => self.set_source(watch),
            None => self.token_fired(),
        }
    }

    /// The watched token is cancelled: cancels this scope with `Canceled` and its fire cause,
    /// if it has one (pinned by `with_token_cause_reports_the_cause_when_the_token_fires`).
    fn token_fired(self: &Arc<Self>) {
        let cause = self.lock().fire_cause().cloned();
        self.cancel(
            Error::Canceled,
            cause.unwrap_or(Cause::from(Error::Canceled)),
        );
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
    fn deadline_fired(self: &Arc<Self>) {
        let Kind::Deadline { at } = &self.kind else {
            return;
        };
        if self.is_done() {
            return;
        }
        if Instant::now() < *at {
            // Tokio fires every timer early when its runtime shuts down. The deadline has not
            // passed: keep it on the crate's own timer thread instead.
            self.set_source(source::fallback_timer(Expiry::of(self), *at));
            return;
        }
        let cause = self.lock().fire_cause().cloned();
        let cause = cause.unwrap_or(Cause::from(Error::DeadlineExceeded));
        self.cancel(Error::DeadlineExceeded, cause);
    }
}
