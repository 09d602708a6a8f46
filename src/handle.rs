//! The handles that cancel a derived context.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use crate::error::{Cause, Error};
use crate::tree::Scope;

/// Cancels the scope it holds when asked, and when dropped unless disarmed.
struct Trigger(Option<Arc<Scope>>);

impl Trigger {
    fn fire(&self, cause: Cause) {
        if let Some(scope) = &self.0 {
            scope.cancel(Error::Canceled, cause);
        }
    }

    fn debug(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("armed", &self.0.is_some())
            .field("err", &self.0.as_deref().and_then(Scope::err))
            .finish()
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        if let Some(scope) = self.0.take() {
            Scope::let_go(scope);
        }
    }
}

/// Cancels the context it came with: on [`cancel`](CancelHandle::cancel), or when dropped.
///
/// Returned by [`Context::with_cancel`](crate::Context::with_cancel),
/// [`with_deadline`](crate::Context::with_deadline) and
/// [`with_timeout`](crate::Context::with_timeout). Go's `CancelFunc`, with the `defer cancel()`
/// built in: when the handle goes out of scope the context is cancelled, and nothing of it
/// stays registered in its parent. Cancelling is idempotent and can be done from any thread;
/// the handle is `Send + Sync`, so it can be shared by reference or in an `Arc`.
///
/// `let (ctx, _) = parent.with_cancel();` cancels at once, because `_` drops the handle
/// immediately. Bind it to a name (`_cancel` is fine), or call [`disarm`](CancelHandle::disarm)
/// to let the context live on without it.
///
/// # Examples
///
/// ```
/// use taskctx::{Context, Error};
///
/// let (ctx, cancel) = Context::background().with_cancel();
/// {
///     let _cancel = cancel; // moved into this block...
/// } // ...and dropped here, which cancels
/// assert_eq!(ctx.err(), Some(Error::Canceled));
/// ```
#[must_use = "dropping a CancelHandle cancels its context at once: bind it to a name, or call `disarm()`"]
pub struct CancelHandle {
    trigger: Trigger,
}

impl CancelHandle {
    pub(crate) fn new(scope: Arc<Scope>) -> Self {
        CancelHandle {
            trigger: Trigger(Some(scope)),
        }
    }

    /// Cancels the context, and before returning every context derived from it, with
    /// [`Error::Canceled`]. Does nothing if the context is already done.
    ///
    /// Either way, when `cancel()` returns, the context and all its descendants report done:
    /// if another cancellation got there first (a deadline, an ancestor, another thread) and is
    /// still walking the descendants, this call waits for the walk, as Go's does for the
    /// parent's lock. Waking `done()` futures, cancelling tokens and running `after_func`
    /// callbacks remain the work of the call that did the cancelling. (One kind of call does
    /// not wait: a `cancel()` run inside a waker that a cancellation is waking on the same
    /// thread, as an executor that polls a task inside its waker would. Waiting there could
    /// wait for the very walk that runs the waker; so such a call returns without waiting for
    /// any other cancellation's walk, and what it releases may run before those descendants
    /// are done. What holds there: when it returns, the context reports done, and once the
    /// cancellation that ran the waker returns, so does every descendant. Tokio's wakers only
    /// schedule the task, so this never happens under Tokio.)
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::Context;
    ///
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// let (child, _cancel_child) = ctx.with_cancel();
    /// cancel.cancel();
    /// cancel.cancel(); // idempotent
    /// assert!(child.is_done());
    /// ```
    pub fn cancel(&self) {
        self.trigger.fire(Cause::from(Error::Canceled));
    }

    /// Gives up the handle without cancelling: the context is then done only when its parent
    /// is or its deadline passes, and is released when its last clone is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::Context;
    ///
    /// let (parent, cancel_parent) = Context::background().with_cancel();
    /// let (ctx, cancel) = parent.with_cancel();
    /// cancel.disarm();
    /// assert!(!ctx.is_done());
    /// cancel_parent.cancel();
    /// assert!(ctx.is_done());
    /// ```
    pub fn disarm(mut self) {
        self.trigger.0 = None;
    }
}

impl fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.trigger.debug("CancelHandle", f)
    }
}

/// Like [`CancelHandle`], but cancels with a cause. Returned by
/// [`Context::with_cancel_cause`](crate::Context::with_cancel_cause).
///
/// Dropping it cancels without a cause (the cause is then [`Error::Canceled`]).
///
/// # Examples
///
/// ```
/// use taskctx::{Context, Error};
///
/// let (ctx, cancel) = Context::background().with_cancel_cause();
/// cancel.cancel(std::io::Error::other("disk full"));
/// assert_eq!(ctx.err(), Some(Error::Canceled));
/// assert!(ctx.cause().unwrap().is::<std::io::Error>());
/// ```
#[must_use = "dropping a CancelCauseHandle cancels its context at once: bind it to a name, or call `disarm()`"]
pub struct CancelCauseHandle {
    trigger: Trigger,
}

impl CancelCauseHandle {
    pub(crate) fn new(scope: Arc<Scope>) -> Self {
        CancelCauseHandle {
            trigger: Trigger(Some(scope)),
        }
    }

    /// Cancels the context with [`Error::Canceled`], recording `cause` as the reason, which the
    /// context and every context cancelled through it report from
    /// [`Context::cause`](crate::Context::cause). Does nothing if the context is already done:
    /// the first cancellation's cause stays. When it returns, every descendant reports done,
    /// as with [`CancelHandle::cancel`].
    ///
    /// `cause` is any error, a `String` or a `&str`. Passing a [`Cause`] (say, another
    /// context's) records that cause itself, not a wrapper around it.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::Context;
    ///
    /// let (ctx, cancel) = Context::background().with_cancel_cause();
    /// cancel.cancel("first");
    /// cancel.cancel("second");
    /// assert_eq!(ctx.cause().unwrap().to_string(), "first");
    /// ```
    pub fn cancel(&self, cause: impl Into<Box<dyn StdError + Send + Sync + 'static>>) {
        self.trigger.fire(Cause::new(cause.into()));
    }

    /// Gives up the handle without cancelling, as [`CancelHandle::disarm`].
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::Context;
    ///
    /// let (ctx, cancel) = Context::background().with_cancel_cause();
    /// cancel.disarm();
    /// assert!(!ctx.is_done());
    /// ```
    pub fn disarm(mut self) {
        self.trigger.0 = None;
    }
}

impl fmt::Debug for CancelCauseHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.trigger.debug("CancelCauseHandle", f)
    }
}
