//! Future types.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{self, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::error::Error;
use crate::tree::Scope;

/// The `slot` of a [`Done`] or [`DoneOwned`] that has returned `Ready`: what `is_terminated`
/// reads, so that knowing it costs these futures no field and their ready path one store
/// (their size is pinned by `done_futures_are_two_words`).
///
/// No registration is numbered so (slots are a slab index + 1, or a waiter link, which is
/// below `usize::MAX - 1`). The scope never reads the slot of a future polled again after
/// `Ready`: `Scope::poll_done` answers from the scope's error first, and once set the error
/// never changes (pinned by `done_polled_again_after_ready_is_ready_again`). Their drops skip
/// `Scope::forget_waiter` for it all the same: were that ever to read the slot, it would take
/// `usize::MAX` for a waiter link in the parent, and remove someone else's registration.
const TERMINATED: usize = usize::MAX;

/// One poll of a done future: `Scope::poll_done`, and the slot marked [`TERMINATED`] on `Ready`.
#[inline]
fn poll_scope(scope: &Arc<Scope>, slot: &mut usize, cx: &mut task::Context<'_>) -> Poll<Error> {
    let poll = scope.poll_done(slot, cx);
    if poll.is_ready() {
        *slot = TERMINATED;
    }
    poll
}

/// Whether a done future with this slot holds a registration, for `Debug`.
fn registered(slot: usize) -> bool {
    slot != 0 && slot != TERMINATED
}

/// Future returned by [`Context::done`](crate::Context::done): completes with the context's
/// error once it is done.
///
/// Polled again after it has completed, it is ready again with the same error. With the
/// `futures` feature it is a `FusedFuture`, terminated once it has returned `Ready`.
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
    /// 1 + the index of this future's waker in the scope's registrations (or a waiter link,
    /// see `Scope::poll_done`); 0 when none; [`TERMINATED`] once it has returned `Ready`.
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
            Some(scope) => poll_scope(scope, &mut this.slot, cx),
            None => Poll::Pending, // never done, so never woken
        }
    }
}

#[cfg(feature = "futures")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
impl futures_core::future::FusedFuture for Done<'_> {
    /// Whether it has returned `Ready`. A `Done` of a context that is already done is not
    /// terminated until it is polled, so that `futures::select!` still sees it complete.
    fn is_terminated(&self) -> bool {
        self.slot == TERMINATED
    }
}

impl Drop for Done<'_> {
    fn drop(&mut self) {
        if let Some(scope) = self.scope
            && self.slot != TERMINATED
        {
            scope.forget_waiter(self.slot);
        }
    }
}

impl fmt::Debug for Done<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Done")
            .field("err", &self.scope.and_then(|scope| scope.err()))
            .field("registered", &registered(self.slot))
            .finish()
    }
}

/// Future returned by [`Context::done_owned`](crate::Context::done_owned): a `'static`
/// [`Done`].
///
/// Polled again after it has completed, it is ready again with the same error; a
/// `FusedFuture` with the `futures` feature, as [`Done`].
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
    /// As [`Done`]'s.
    slot: usize,
}

impl DoneOwned {
    pub(crate) fn new(scope: Option<Arc<Scope>>) -> Self {
        DoneOwned { scope, slot: 0 }
    }

    /// The context's error, if it is done: one atomic load, and nothing registered.
    #[cfg(feature = "futures")]
    #[inline]
    pub(crate) fn err(&self) -> Option<Error> {
        self.scope.as_deref().and_then(Scope::err)
    }
}

impl Future for DoneOwned {
    type Output = Error;

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Error> {
        let this = self.get_mut();
        match &this.scope {
            Some(scope) => poll_scope(scope, &mut this.slot, cx),
            None => Poll::Pending,
        }
    }
}

#[cfg(feature = "futures")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
impl futures_core::future::FusedFuture for DoneOwned {
    /// Whether it has returned `Ready`, as [`Done`]'s.
    fn is_terminated(&self) -> bool {
        self.slot == TERMINATED
    }
}

impl Drop for DoneOwned {
    fn drop(&mut self) {
        if let Some(scope) = &self.scope
            && self.slot != TERMINATED
        {
            scope.forget_waiter(self.slot);
        }
    }
}

impl fmt::Debug for DoneOwned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DoneOwned")
            .field("err", &self.scope.as_deref().and_then(Scope::err))
            .field("registered", &registered(self.slot))
            .finish()
    }
}

/// Future returned by [`Context::cancelled_owned`](crate::Context::cancelled_owned): a
/// [`DoneOwned`] whose output is `()`, for APIs that take a `Future<Output = ()>`.
///
/// Polled again after it has completed, it is ready again; a `FusedFuture` with the `futures`
/// feature, as [`Done`].
///
/// # Examples
///
/// ```
/// use taskctx::{CancelledOwned, Context};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (ctx, cancel) = Context::background().with_cancel();
/// let cancelled: CancelledOwned = ctx.cancelled_owned();
/// drop(ctx); // the future keeps what it needs
/// cancel.cancel();
/// let () = cancelled.await;
/// # }
/// ```
///
/// # Cancel safety
///
/// Cancel safe: dropping it loses nothing.
#[must_use = "futures do nothing unless polled"]
pub struct CancelledOwned {
    done: DoneOwned,
}

impl CancelledOwned {
    pub(crate) fn new(done: DoneOwned) -> Self {
        CancelledOwned { done }
    }
}

impl Future for CancelledOwned {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<()> {
        Pin::new(&mut self.done).poll(cx).map(drop)
    }
}

#[cfg(feature = "futures")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
impl futures_core::future::FusedFuture for CancelledOwned {
    /// Whether it has returned `Ready`, as [`Done`]'s.
    fn is_terminated(&self) -> bool {
        self.done.slot == TERMINATED
    }
}

impl fmt::Debug for CancelledOwned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelledOwned")
            .field("err", &self.done.scope.as_deref().and_then(Scope::err))
            .field("registered", &registered(self.done.slot))
            .finish()
    }
}

pin_project! {
    /// Future returned by [`Context::run_until_cancelled`](crate::Context::run_until_cancelled):
    /// the inner future's output, or the context's error if the context is done first.
    ///
    /// Once it has returned `Ready` it stays pending, and polls neither the context nor the
    /// inner future again; with the `futures` feature it is a `FusedFuture`, terminated from
    /// then on.
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
        // Whether it has returned `Ready`.
        finished: bool,
    }
}

impl<'a, F> RunUntilCancelled<'a, F> {
    pub(crate) fn new(done: Done<'a>, future: F) -> Self {
        RunUntilCancelled {
            done,
            future,
            finished: false,
        }
    }
}

impl<F: Future> Future for RunUntilCancelled<'_, F> {
    type Output = Result<F::Output, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if *this.finished {
            // The inner future may panic if polled after its output (an `async` block does).
            return Poll::Pending;
        }
        let output = ready!(race(this.done, this.future, cx));
        *this.finished = true;
        Poll::Ready(output)
    }
}

#[cfg(feature = "futures")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
impl<F: Future> futures_core::future::FusedFuture for RunUntilCancelled<'_, F> {
    /// Whether it has returned `Ready`.
    fn is_terminated(&self) -> bool {
        self.finished
    }
}

impl<F> fmt::Debug for RunUntilCancelled<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunUntilCancelled")
            .field("done", &self.done)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// Future returned by [`Context::run_with_grace`](crate::Context::run_with_grace): the
    /// inner future's output, or the context's error if the context is done and the inner
    /// future has not completed within the grace that follows.
    ///
    /// Once it has returned `Ready` it stays pending, and polls neither the context, the grace
    /// nor the inner future again; with the `futures` feature it is a `FusedFuture`,
    /// terminated from then on.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::{Context, Error};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// cancel.cancel();
    /// let ignores_ctx = ctx.run_with_grace(Duration::from_secs(1), std::future::pending::<()>());
    /// assert_eq!(ignores_ctx.await, Err(Error::Canceled), "dropped once the grace ran out");
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As cancel safe as the inner future: dropping this drops it.
    #[must_use = "futures do nothing unless polled"]
    pub struct RunWithGrace<'a, F> {
        done: Done<'a>,
        #[pin]
        future: F,
        grace: Duration,
        // The context's error, once this has seen the context done: the grace has begun.
        err: Option<Error>,
        // The end of the grace, once it has begun; `None` before, and for a grace with no end.
        #[pin]
        grace_end: Option<Sleep>,
        // Whether it has returned `Ready`.
        finished: bool,
    }
}

impl<'a, F> RunWithGrace<'a, F> {
    pub(crate) fn new(done: Done<'a>, grace: Duration, future: F) -> Self {
        RunWithGrace {
            done,
            future,
            grace,
            err: None,
            grace_end: None,
            finished: false,
        }
    }
}

impl<F: Future> Future for RunWithGrace<'_, F> {
    type Output = Result<F::Output, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if *this.finished {
            // The inner future may panic if polled after its output (an `async` block does).
            return Poll::Pending;
        }
        if this.err.is_none()
            && let Poll::Ready(err) = Pin::new(&mut *this.done).poll(cx)
        {
            // The grace begins at this poll, the first to see the context done. A zero grace
            // ends before the future is polled again, as in `run_until_cancelled` (pinned by
            // `spawn_graceful_with_zero_grace_behaves_as_spawn`); an end past what an
            // `Instant` holds never comes.
            *this.err = Some(err);
            if this.grace.is_zero() {
                *this.finished = true;
                return Poll::Ready(Err(err));
            }
            if let Some(end) = Instant::now().checked_add(*this.grace) {
                this.grace_end.set(Some(tokio::time::sleep_until(end)));
            }
        }
        // The end of the grace is checked before the future: once it has passed, the future is
        // not polled again (pinned by
        // `spawn_graceful_drops_a_task_that_ignores_cancellation_when_the_grace_runs_out`).
        if let (Some(err), Some(end)) = (*this.err, this.grace_end.as_pin_mut())
            && end.poll(cx).is_ready()
        {
            *this.finished = true;
            return Poll::Ready(Err(err));
        }
        let output = ready!(this.future.poll(cx));
        *this.finished = true;
        Poll::Ready(Ok(output))
    }
}

#[cfg(feature = "futures")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
impl<F: Future> futures_core::future::FusedFuture for RunWithGrace<'_, F> {
    /// Whether it has returned `Ready`.
    fn is_terminated(&self) -> bool {
        self.finished
    }
}

impl<F> fmt::Debug for RunWithGrace<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunWithGrace")
            .field("done", &self.done)
            .field("grace", &self.grace)
            .field("in_grace", &self.err.is_some())
            .field("finished", &self.finished)
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
