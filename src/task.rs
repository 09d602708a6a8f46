//! Tasks that stop with their context.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{self, Poll, ready};

use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::context::Context;
use crate::error::Error;
use crate::tree::Scope;

/// Handle of a task started by [`Context::spawn`](crate::Context::spawn); resolves once the task
/// has stopped.
///
/// Resolves to `Ok(output)` if the task's future completed, or `Err` with the context's error
/// if the context was done first. A task aborted through [`TaskHandle::abort`], or dropped by a
/// runtime shutting down, resolves to `Err(Error::Canceled)`. Dropping the handle detaches the
/// task; it still stops when its context is done.
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
/// # Panics
///
/// Awaiting the handle resumes a panic that happened inside the task, on the awaiting task, as
/// joining a thread does.
///
/// # Cancel safety
///
/// Cancel safe: dropping the handle while awaiting it detaches the task and loses nothing else.
#[must_use = "dropping a TaskHandle detaches the task; await it to confirm the task stopped"]
pub struct TaskHandle<T> {
    join: JoinHandle<Result<T, Error>>,
}

impl<T: Send + 'static> TaskHandle<T> {
    pub(crate) fn spawn<F>(ctx: &Context, future: F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        let ctx = ctx.clone();
        let counted = TaskCount::new(&ctx);
        let task = async move {
            let _counted = counted;
            ctx.run_until_cancelled(future).await
        };
        TaskHandle {
            join: tokio::spawn(task.instrument(tracing::Span::current())),
        }
    }
}

impl<T> TaskHandle<T> {
    /// Aborts the task at its next `.await`, whatever its context; awaiting the handle then
    /// gives `Err(Error::Canceled)` (unless the task had already finished).
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
        self.join.abort();
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
        self.join.is_finished()
    }
}

impl<T> Future for TaskHandle<T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        match ready!(Pin::new(&mut self.join).poll(cx)) {
            Ok(result) => Poll::Ready(result),
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => Poll::Ready(Err(Error::Canceled)),
        }
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
            .field("finished", &self.join.is_finished())
            .finish()
    }
}
