//! A timeout guard that cancels everything the guarded work started.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{self, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;

use crate::context::Context;
use crate::error::Error;
use crate::future::{DoneOwned, race};
use crate::handle::CancelHandle;

/// Runs `f(child)` under a child of `ctx` that times out after `timeout`; resolves to the
/// output, or to the child's error if it is done first.
///
/// The child is `ctx.with_timeout(timeout)`. On expiry the child, every context derived from it
/// and every task spawned with it are cancelled, and the guard resolves to
/// `Err(Error::DeadlineExceeded)`; if `ctx` itself is cancelled first, to that error. When the
/// guard resolves or is dropped, the child is cancelled as well, so nothing the work started
/// outlives it (Go's `defer cancel()`).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use taskctx::{Context, Error};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let ctx = Context::background();
/// let slow = taskctx::with_timeout(&ctx, Duration::from_millis(100), |ctx| async move {
///     let helper = ctx.spawn(|_ctx| std::future::pending::<()>());
///     tokio::time::sleep(Duration::from_secs(1)).await;
///     helper
/// });
/// assert_eq!(slow.await.err(), Some(Error::DeadlineExceeded));
///
/// let fast = taskctx::with_timeout(&ctx, Duration::from_millis(100), |_ctx| async { "ok" });
/// assert_eq!(fast.await, Ok("ok"));
/// # }
/// ```
///
/// # Which side wins
///
/// As in [`Context::run_until_cancelled`]: the child context is checked first on every poll, so
/// work that would complete at the very poll where the deadline is seen is reported as
/// `DeadlineExceeded`. (`tokio::time::timeout` polls the work first.)
///
/// # Cancel safety
///
/// The returned [`Timeout`] is as cancel safe as the work: dropping it drops the work and
/// cancels the child context (see [`Timeout`]).
///
/// # Panics
///
/// As [`Context::with_deadline`].
pub fn with_timeout<F, Fut>(ctx: &Context, timeout: Duration, f: F) -> Timeout<Fut>
where
    F: FnOnce(Context) -> Fut,
    Fut: Future,
{
    let (child, handle) = ctx.with_timeout(timeout);
    let done = child.done_owned();
    Timeout {
        future: f(child),
        done,
        handle,
        finished: false,
    }
}

pin_project! {
    /// Future returned by [`with_timeout`]: the guarded work's output, or the error of the
    /// context it ran under.
    ///
    /// Once it has returned `Ready` it stays pending, and polls neither the context nor the
    /// work again; with the `futures` feature it is a `FusedFuture`, terminated from then on.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::{Context, Timeout};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let guarded: Timeout<_> =
    ///     taskctx::with_timeout(&Context::background(), Duration::from_secs(1), |_| async { 7 });
    /// assert_eq!(guarded.await, Ok(7));
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping it drops the work and cancels the context the work ran under.
    #[must_use = "futures do nothing unless polled"]
    pub struct Timeout<F> {
        #[pin]
        future: F,
        done: DoneOwned,
        handle: CancelHandle,
        // Whether it has returned `Ready`.
        finished: bool,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if *this.finished {
            // The work may panic if polled after its output (an `async` block does).
            return Poll::Pending;
        }
        let result = ready!(race(this.done, this.future, cx));
        // Go's `defer cancel()`: nothing the work started outlives the guard's answer.
        this.handle.cancel();
        *this.finished = true;
        Poll::Ready(result)
    }
}

#[cfg(feature = "futures")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
impl<F: Future> futures_core::future::FusedFuture for Timeout<F> {
    /// Whether it has returned `Ready`.
    fn is_terminated(&self) -> bool {
        self.finished
    }
}

impl<F> fmt::Debug for Timeout<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("done", &self.done)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}
