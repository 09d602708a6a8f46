//! Error types.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

/// Why [`spawn`](crate::TaskGroup::spawn) or [`try_spawn`](crate::TaskGroup::try_spawn) did
/// not start a task. The closure was dropped uncalled.
///
/// # Examples
///
/// ```
/// use taskctx::{Context, TaskGroup};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let group = TaskGroup::new(&Context::background());
/// let handle = group.handle();
/// group.wait().await;
/// let err = handle.spawn("late", |_ctx| async { Ok::<(), &str>(()) }).unwrap_err();
/// assert!(err.is_closed());
/// assert_eq!(err.to_string(), "task group no longer accepts tasks");
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpawnError {
    /// The limit, if the group was full; `None` if it was closed.
    full: Option<usize>,
}

impl SpawnError {
    pub(super) fn closed() -> Self {
        SpawnError { full: None }
    }

    pub(super) fn full(limit: usize) -> Self {
        SpawnError { full: Some(limit) }
    }

    /// Whether the group no longer accepts tasks: a shutdown has begun, the group was dropped,
    /// or its report was taken.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let group = TaskGroup::new(&Context::background());
    /// let handle = group.handle();
    /// handle.shutdown("closing", Duration::from_secs(1)).await;
    /// assert!(group.spawn("late", |_ctx| async { Ok::<(), &str>(()) }).unwrap_err().is_closed());
    /// # }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.full.is_none()
    }

    /// Whether [`try_spawn`](crate::TaskGroup::try_spawn) found no free slot.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::builder(&Context::background()).limit(1).build();
    /// group.spawn("busy", |ctx| async move { ctx.done().await; Ok::<(), &str>(()) }).unwrap();
    /// tokio::task::yield_now().await; // let it take its slot
    /// assert!(group.try_spawn("more", |_ctx| async { Ok::<(), &str>(()) }).unwrap_err().is_full());
    /// # }
    /// ```
    pub fn is_full(&self) -> bool {
        self.full.is_some()
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.full {
            None => f.write_str("task group no longer accepts tasks"),
            Some(limit) => write!(f, "task group has no free slot (limit {limit})"),
        }
    }
}

impl StdError for SpawnError {}

/// The cause a [fail-fast](crate::GroupBuilder::fail_fast) group is cancelled with when one of
/// its tasks panics: which task, and the panic's message. The panic itself is in the
/// [`Report`](crate::Report).
///
/// # Examples
///
/// ```
/// use taskctx::{Context, TaskGroup, TaskPanicked};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let group = TaskGroup::builder(&Context::background()).fail_fast().build();
/// let ctx = group.context().clone();
/// group.spawn("parser", |_ctx| async {
///     if true {
///         panic!("unexpected token");
///     }
///     Ok::<(), &str>(())
/// })
/// .unwrap();
/// let report = group.wait().await;
/// let cause = ctx.cause().unwrap();
/// let panicked = cause.downcast_ref::<TaskPanicked>().unwrap();
/// assert_eq!(panicked.task(), "parser");
/// assert_eq!(cause.to_string(), "task \"parser\" panicked: unexpected token");
/// # drop(report);
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskPanicked {
    task: Cow<'static, str>,
    message: String,
}

impl TaskPanicked {
    pub(super) fn new(task: Cow<'static, str>, message: &str) -> Self {
        TaskPanicked {
            task,
            message: message.to_owned(),
        }
    }

    /// The name of the task that panicked.
    ///
    /// # Examples
    ///
    /// See [`TaskPanicked`].
    pub fn task(&self) -> &str {
        &self.task
    }

    /// The panic's message, or `Box<dyn Any>` if its payload was not a string.
    ///
    /// # Examples
    ///
    /// See [`TaskPanicked`].
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for TaskPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {:?} panicked: {}", self.task, self.message)
    }
}

impl StdError for TaskPanicked {}
