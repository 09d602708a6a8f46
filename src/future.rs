//! Future types.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{self, Poll};

use pin_project_lite::pin_project;

use crate::error::Error;
use crate::tree::Scope;

/// Future returned by [`Context::done`](crate::Context::done): completes with the context's
/// error once it is done.
///
/// # Examples
///
/// ```
/// use taskctx::{Context, Error};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (ctx, cancel) = Context::background().with_cancel();
/// cancel.cancel();
/// let done: taskctx::Done<'_> = ctx.done();
/// assert_eq!(done.await, Error::Canceled);
/// # }
/// ```
///
/// # Cancel safety
///
/// Cancel safe: dropping it loses nothing.
#[must_use = "futures do nothing unless polled"]
pub struct Done<'a> {
    scope: Option<&'a Arc<Scope>>,
    /// 1 + the index of this future's waker in the scope's registrations; 0 when none.
    slot: usize,
}

impl<'a> Done<'a> {
    #[inline]
    pub(crate) fn new(scope: Option<&'a Arc<Scope>>) -> Self {
        Done { scope, slot: 0 }
    }
}

impl Future for Done<'_> {
    type Output = Error;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Error> {
        let this = self.get_mut();
        match this.scope {
            Some(scope) => scope.poll_done(&mut this.slot, cx),
            None => Poll::Pending, // never done, so never woken
        }
    }
}

impl Drop for Done<'_> {
    fn drop(&mut self) {
        if let Some(scope) = self.scope {
            scope.forget_waiter(self.slot);
        }
    }
}

impl fmt::Debug for Done<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Done")
            .field("err", &self.scope.and_then(|scope| scope.err()))
            .field("registered", &(self.slot != 0))
            .finish()
    }
}

/// Future returned by [`Context::done_owned`](crate::Context::done_owned): a `'static`
/// [`Done`].
///
/// # Examples
///
/// ```
/// use taskctx::{Context, DoneOwned, Error};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (ctx, cancel) = Context::background().with_cancel();
/// let done: DoneOwned = ctx.done_owned();
/// drop(ctx); // the future keeps what it needs
/// cancel.cancel();
/// assert_eq!(done.await, Error::Canceled);
/// # }
/// ```
///
/// # Cancel safety
///
/// Cancel safe: dropping it loses nothing.
#[must_use = "futures do nothing unless polled"]
pub struct DoneOwned {
    scope: Option<Arc<Scope>>,
    slot: usize,
}

impl DoneOwned {
    pub(crate) fn new(scope: Option<Arc<Scope>>) -> Self {
        DoneOwned { scope, slot: 0 }
    }
}

impl Future for DoneOwned {
    type Output = Error;

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Error> {
        let this = self.get_mut();
        match &this.scope {
            Some(scope) => scope.poll_done(&mut this.slot, cx),
            None => Poll::Pending,
        }
    }
}

impl Drop for DoneOwned {
    fn drop(&mut self) {
        if let Some(scope) = &self.scope {
            scope.forget_waiter(self.slot);
        }
    }
}

impl fmt::Debug for DoneOwned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DoneOwned")
            .field("err", &self.scope.as_deref().and_then(Scope::err))
            .field("registered", &(self.slot != 0))
            .finish()
    }
}

pin_project! {
    /// Future returned by [`Context::run_until_cancelled`](crate::Context::run_until_cancelled):
    /// the inner future's output, or the context's error if the context is done first.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, Error};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// cancel.cancel();
    /// let never_polled = ctx.run_until_cancelled(async { unreachable!() });
    /// assert_eq!(never_polled.await, Err::<(), _>(Error::Canceled));
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As cancel safe as the inner future: dropping this drops it.
    #[must_use = "futures do nothing unless polled"]
    pub struct RunUntilCancelled<'a, F> {
        done: Done<'a>,
        #[pin]
        future: F,
    }
}

impl<'a, F> RunUntilCancelled<'a, F> {
    pub(crate) fn new(done: Done<'a>, future: F) -> Self {
        RunUntilCancelled { done, future }
    }
}

impl<F: Future> Future for RunUntilCancelled<'_, F> {
    type Output = Result<F::Output, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        race(this.done, this.future, cx)
    }
}

impl<F> fmt::Debug for RunUntilCancelled<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunUntilCancelled")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// One poll of "the future, unless the context is done": the context is checked first.
pub(crate) fn race<D, F>(
    done: &mut D,
    future: Pin<&mut F>,
    cx: &mut task::Context<'_>,
) -> Poll<Result<F::Output, Error>>
where
    D: Future<Output = Error> + Unpin,
    F: Future,
{
    if let Poll::Ready(err) = Pin::new(done).poll(cx) {
        return Poll::Ready(Err(err));
    }
    future.poll(cx).map(Ok)
}
