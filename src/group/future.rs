//! Future types.
//!
//! Each wraps a boxed `async` block: their states (waiting, the grace timer, the aborts) are
//! those of an `async fn`, and a group is waited for once, so the one allocation is not worth
//! a hand-written state machine. The block is dropped as soon as it returns `Ready` (it holds
//! the group), which is also what `FusedFuture::is_terminated` reports.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{self, Poll};

use super::report::Report;

/// A boxed `async` block, dropped once it has delivered its output.
struct Block<T>(Option<Pin<Box<dyn Future<Output = T> + Send + 'static>>>);

impl<T> Block<T> {
    fn new(future: impl Future<Output = T> + Send + 'static) -> Self {
        Block(Some(Box::pin(future)))
    }

    /// Polls the block; `None` once it has delivered its output.
    fn poll(&mut self, cx: &mut task::Context<'_>) -> Option<Poll<T>> {
        let Poll::Ready(output) = self.0.as_mut()?.as_mut().poll(cx) else {
            return Some(Poll::Pending);
        };
        self.0 = None;
        Some(Poll::Ready(output))
    }

    #[cfg(feature = "futures")]
    fn delivered(&self) -> bool {
        self.0.is_none()
    }
}

/// Future returned by [`TaskGroup::wait`](crate::TaskGroup::wait): resolves to the
/// [`Report`] once every task has stopped.
///
/// The report is delivered once: polled again after that, it stays pending. With the `futures`
/// feature it is a `FusedFuture`, terminated once it has returned the report.
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
pub struct Wait(Block<Report>);

impl Wait {
    pub(super) fn new(future: impl Future<Output = Report> + Send + 'static) -> Self {
        Wait(Block::new(future))
    }
}

impl Future for Wait {
    type Output = Report;

    fn poll(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Report> {
        // Once the report was delivered, pending: see the type's docs.
        self.0.poll(cx).unwrap_or(Poll::Pending)
    }
}

#[cfg(feature = "futures")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
impl futures_core::future::FusedFuture for Wait {
    /// Whether it has returned the report.
    fn is_terminated(&self) -> bool {
        self.0.delivered()
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
/// The report is delivered once: polled again after that, it stays pending. With the `futures`
/// feature it is a `FusedFuture`, terminated once it has returned the report.
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
pub struct Shutdown(Block<Report>);

impl Shutdown {
    pub(super) fn new(future: impl Future<Output = Report> + Send + 'static) -> Self {
        Shutdown(Block::new(future))
    }
}

impl Future for Shutdown {
    type Output = Report;

    fn poll(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Report> {
        // Once the report was delivered, pending: see the type's docs.
        self.0.poll(cx).unwrap_or(Poll::Pending)
    }
}

#[cfg(feature = "futures")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
impl futures_core::future::FusedFuture for Shutdown {
    /// Whether it has returned the report.
    fn is_terminated(&self) -> bool {
        self.0.delivered()
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
/// Polled again after it has completed, it is ready again. With the `futures` feature it is a
/// `FusedFuture`, terminated once it has returned `Ready`.
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
pub struct AllStopped(Block<()>);

impl AllStopped {
    pub(super) fn new(future: impl Future<Output = ()> + Send + 'static) -> Self {
        AllStopped(Block::new(future))
    }
}

impl Future for AllStopped {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<()> {
        // Once it has completed, ready again: see the type's docs.
        self.0.poll(cx).unwrap_or(Poll::Ready(()))
    }
}

#[cfg(feature = "futures")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
impl futures_core::future::FusedFuture for AllStopped {
    /// Whether it has returned `Ready`.
    fn is_terminated(&self) -> bool {
        self.0.delivered()
    }
}

impl fmt::Debug for AllStopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllStopped").finish_non_exhaustive()
    }
}
