//! The handle of an `after_func` registration.

use crate::sync::{AtomicUsize, Ordering};
use std::fmt;
use std::sync::{Arc, Weak};

use crate::tree::Scope;

/// `slot` value: nothing to stop any more (stopped already, or the callback ran).
const SPENT: usize = 0;
/// `slot` value: the callback was dropped unregistered because the context can never be done;
/// the first `stop()` still reports that it prevented the call, as Go's does.
const NEVER: usize = usize::MAX;

/// Handle returned by [`Context::after_func`](crate::Context::after_func); stops the callback
/// from running.
///
/// Dropping the handle does not stop the callback: it stays registered until the context is
/// done (and then runs) or is released (and then is dropped too). The handle does not keep the
/// context alive.
///
/// # Examples
///
/// ```
/// use taskctx::Context;
///
/// let (ctx, cancel) = Context::background().with_cancel();
/// let registration = ctx.after_func(|| unreachable!("stopped in time"));
/// assert!(registration.stop(), "prevented the call");
/// assert!(!registration.stop(), "only once");
/// cancel.cancel();
/// ```
pub struct AfterFunc {
    /// Weak, so that the handle does not keep the context (and its values) alive.
    scope: Weak<Scope>,
    /// 1 + the callback's index in the scope's registrations, or `SPENT` / `NEVER`.
    slot: AtomicUsize,
}

impl AfterFunc {
    pub(crate) fn registered(scope: Arc<Scope>, slot: usize) -> Self {
        AfterFunc {
            scope: Arc::downgrade(&scope),
            slot: AtomicUsize::new(slot),
        }
    }

    pub(crate) fn ran() -> Self {
        AfterFunc {
            scope: Weak::new(),
            slot: AtomicUsize::new(SPENT),
        }
    }

    pub(crate) fn unregistered() -> Self {
        AfterFunc {
            scope: Weak::new(),
            slot: AtomicUsize::new(NEVER),
        }
    }

    /// Stops the callback from running. Returns true only if this call prevented it: false if
    /// the callback has already started (it may still be running: `stop` does not wait for it),
    /// was already stopped, or was dropped unrun with its context. As in Go, on a context that
    /// can never be done the first call returns true.
    ///
    /// Safe to call from anywhere, including from inside the callback itself (it then returns
    /// false).
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::Context;
    ///
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// let registration = ctx.after_func(|| {});
    /// cancel.cancel(); // runs the callback
    /// assert!(!registration.stop(), "too late");
    /// ```
    pub fn stop(&self) -> bool {
        // The swap makes each registration index used by exactly one `stop`.
        match self.slot.swap(SPENT, Ordering::AcqRel) {
            SPENT => false,
            NEVER => true,
            // A context released before it was done dropped its callbacks unrun.
            slot => self
                .scope
                .upgrade()
                .is_some_and(|scope| scope.remove_callback(slot)),
        }
    }
}

impl fmt::Debug for AfterFunc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfterFunc")
            .field("stop_called", &(self.slot.load(Ordering::Relaxed) == SPENT))
            .finish_non_exhaustive()
    }
}
