//! Tasks that stop with their context.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{self, Poll, ready};
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::context::Context;
use crate::error::Error;
use crate::tree::Scope;

/// Handle of a task started by [`Context::spawn`](crate::Context::spawn) or
/// [`Context::spawn_graceful`](crate::Context::spawn_graceful); resolves once the task has
/// stopped.
///
/// Resolves to `Ok(output)` if the task's future completed, or `Err` with the context's error
/// if the future was dropped because the context was done: at once under `spawn`, once the
/// grace ran out under `spawn_graceful`. A task aborted through [`TaskHandle::abort`], or
/// dropped by a runtime shutting down, resolves to `Err(Error::Canceled)`. Dropping the handle
/// detaches the task; it still stops as it would have, when its context is done (and, under
/// `spawn_graceful`, its grace has run out).
///
/// # Examples
///
/// ```
/// use taskctx::{Context, TaskHandle};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let ctx = Context::background();
/// let task: TaskHandle<u32> = ctx.spawn(|_ctx| async { 6 * 7 });
/// assert_eq!(task.await, Ok(42));
/// # }
/// ```
///
/// # Cancel safety
///
/// Cancel safe: dropping the handle while awaiting it detaches the task and loses nothing else.
/// An await given up before the task stopped (say, `tokio::time::timeout(d, &mut handle)` that
/// elapsed) leaves the handle as it was, to be awaited again.
///
/// # Panics
///
/// Awaiting the handle resumes a panic that happened inside the task, on the awaiting task, as
/// joining a thread does. Nothing else panics: the task's output, or its panic, is delivered
/// once, and a handle polled again after that stays pending forever instead of panicking
/// inside Tokio. So after `tokio::time::timeout(d, &mut handle)` has completed, a second await
/// of `handle` never completes; with the `futures` feature, `FusedFuture::is_terminated` says
/// so, and `futures::select!` skips the handle.
#[must_use = "dropping a TaskHandle detaches the task; await it to confirm the task stopped"]
pub struct TaskHandle<T> {
    /// `None` once the handle has returned `Ready`: Tokio's `JoinHandle` panics if polled after
    /// that, and this handle stays pending instead (pinned by
    /// `task_handle_awaited_again_after_a_completed_timeout_stays_pending`).
    join: Option<JoinHandle<Result<T, Error>>>,
}

impl<T: Send + 'static> TaskHandle<T> {
    pub(crate) fn spawn<F>(ctx: &Context, future: F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        let ctx = ctx.clone();
        let counted = TaskCount::new(&ctx);
        TaskHandle::start(async move {
            let _counted = counted;
            ctx.run_until_cancelled(future).await
        })
    }

    pub(crate) fn spawn_graceful<F>(ctx: &Context, grace: Duration, future: F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        let ctx = ctx.clone();
        let counted = TaskCount::new(&ctx);
        TaskHandle::start(async move {
            let _counted = counted;
            ctx.run_with_grace(grace, future).await
        })
    }

    /// Runs `task` in the caller's `tracing` span. The task's future must hold its
    /// [`TaskCount`], so that the count ends when the future is dropped, however it ends.
    fn start(task: impl Future<Output = Result<T, Error>> + Send + 'static) -> Self {
        TaskHandle {
            join: Some(tokio::spawn(task.instrument(tracing::Span::current()))),
        }
    }
}

impl<T> TaskHandle<T> {
    /// Aborts the task at its next `.await`, whatever its context and grace; awaiting the
    /// handle then gives `Err(Error::Canceled)` (unless the task had already finished).
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, Error};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let task = Context::background().spawn(|_ctx| std::future::pending::<()>());
    /// task.abort();
    /// assert_eq!(task.await, Err(Error::Canceled));
    /// # }
    /// ```
    pub fn abort(&self) {
        if let Some(join) = &self.join {
            join.abort();
        }
    }

    /// Whether the task has stopped.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::Context;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// let task = ctx.spawn(|_ctx| std::future::pending::<()>());
    /// assert!(!task.is_finished());
    /// cancel.cancel();
    /// tokio::task::yield_now().await; // let the task see it
    /// assert!(task.is_finished());
    /// # }
    /// ```
    pub fn is_finished(&self) -> bool {
        self.join.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl<T> Future for TaskHandle<T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        let Some(join) = &mut self.join else {
            return Poll::Pending; // delivered already: see `# Panics`
        };
        let joined = ready!(Pin::new(join).poll(cx));
        // Before the panic is resumed, so that it too is delivered once (pinned by
        // `task_handle_resumes_a_panic_once_then_stays_pending`).
        self.join = None;
        match joined {
            Ok(result) => Poll::Ready(result),
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => Poll::Ready(Err(Error::Canceled)),
        }
    }
}

#[cfg(feature = "futures")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
impl<T> futures_core::future::FusedFuture for TaskHandle<T> {
    /// Whether the handle has returned `Ready` (or resumed the task's panic).
    fn is_terminated(&self) -> bool {
        self.join.is_none()
    }
}

/// Counts a spawned task for the leak check in the nearest scope above its context (across
/// `without_cancel`, so detached work shows in the census of the request it came from), for as
/// long as the task's future exists (until it completes, or is dropped by an abort or a
/// runtime shutdown).
pub(crate) struct TaskCount(Option<Arc<Scope>>);

impl TaskCount {
    pub(crate) fn new(ctx: &Context) -> Self {
        let scope = ctx.counting_scope().cloned();
        if let Some(scope) = &scope {
            scope.task_started();
        }
        TaskCount(scope)
    }
}

impl Drop for TaskCount {
    fn drop(&mut self) {
        if let Some(scope) = &self.0 {
            scope.task_ended();
        }
    }
}

impl<T> fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}
