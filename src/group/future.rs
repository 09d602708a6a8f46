//! Future types.
//!
//! Each wraps a boxed `async` block: their states (waiting, the grace timer, the aborts) are
//! those of an `async fn`, and a group is waited for once, so the one allocation is not worth
//! a hand-written state machine.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{self, Poll};

use super::report::Report;

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Future returned by [`TaskGroup::wait`](crate::TaskGroup::wait): resolves to the
/// [`Report`] once every task has stopped.
///
/// # Examples
///
/// ```
/// use taskctx::{Context, TaskGroup, Wait};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let waiting: Wait = TaskGroup::new(&Context::background()).wait();
/// assert!(waiting.await.tasks().is_empty());
/// # }
/// ```
///
/// # Cancel safety
///
/// Dropping it drops the group: its context is cancelled and its tasks are aborted.
#[must_use = "futures do nothing unless polled"]
pub struct Wait(Boxed<Report>);

impl Wait {
    pub(super) fn new(future: impl Future<Output = Report> + Send + 'static) -> Self {
        Wait(Box::pin(future))
    }
}

impl Future for Wait {
    type Output = Report;

    fn poll(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Report> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wait").finish_non_exhaustive()
    }
}

/// Future returned by [`TaskGroup::shutdown`](crate::TaskGroup::shutdown): resolves to the
/// [`Report`] once every task has stopped or been aborted.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use taskctx::{Context, Shutdown, TaskGroup};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let group = TaskGroup::new(&Context::background());
/// let stopping: Shutdown = group.shutdown("done for the day", Duration::from_secs(1));
/// assert!(stopping.await.tasks().is_empty());
/// # }
/// ```
///
/// # Cancel safety
///
/// Dropping it drops the group: its context is cancelled and its tasks are aborted.
#[must_use = "futures do nothing unless polled"]
pub struct Shutdown(Boxed<Report>);

impl Shutdown {
    pub(super) fn new(future: impl Future<Output = Report> + Send + 'static) -> Self {
        Shutdown(Box::pin(future))
    }
}

impl Future for Shutdown {
    type Output = Report;

    fn poll(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Report> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown").finish_non_exhaustive()
    }
}

/// Future returned by [`GroupHandle::shutdown`](crate::GroupHandle::shutdown): resolves once
/// every task of the group (other than the caller's own) has stopped or been aborted.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use taskctx::{AllStopped, Context, TaskGroup};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let group = TaskGroup::new(&Context::background());
/// let stopping: AllStopped = group.handle().shutdown("bye", Duration::from_secs(1));
/// stopping.await;
/// assert!(group.is_empty());
/// # }
/// ```
///
/// # Cancel safety
///
/// Dropping it stops waiting; the group stays cancelled, and tasks not yet aborted are aborted
/// only by another shutdown's deadline or the owner's drop.
#[must_use = "futures do nothing unless polled"]
pub struct AllStopped(Boxed<()>);

impl AllStopped {
    pub(super) fn new(future: impl Future<Output = ()> + Send + 'static) -> Self {
        AllStopped(Box::pin(future))
    }
}

impl Future for AllStopped {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for AllStopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllStopped").finish_non_exhaustive()
    }
}
