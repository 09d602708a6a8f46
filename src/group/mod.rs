//! Task groups: named tasks under one context, stopped together, with a report of how each
//! stopped. Go's `errgroup`, Trio's nursery and tokio-util's `TaskTracker`, bound to a
//! [`Context`].
//!
//! # Layout
//!
//! - this file: the public handles ([`TaskGroup`], [`GroupHandle`], [`GroupBuilder`]) and the
//!   shared core they point to, with the protocol below;
//! - `member.rs`: the future each task runs (slot, body, panic catching) and the `Record` that
//!   reports its stop;
//! - `state.rs`: what the lock guards (members, stops, phase) and the bookkeeping of each step;
//! - `report.rs`: [`Report`] and what it is made of; `future.rs`: the futures of `wait` and
//!   `shutdown`; `error.rs`: [`SpawnError`] and [`TaskPanicked`].
//!
//! # Invariants
//!
//! 1. **Membership.** A task is a member from the moment `spawn` enters it in
//!    `State::members` (before its Tokio task exists) until its `Record` reports its stop,
//!    which happens exactly once, whether the task finished, failed, panicked, was aborted or
//!    was dropped by a runtime shutting down. The record drops the member's own cancel handle
//!    and its task count *before* it takes the lock to report, so once no member runs no
//!    member's context or leak-check count is left. Pinned by
//!    `a_thousand_tasks_all_run_their_cleanup_within_the_grace` (`assert_no_leaks` after it).
//! 2. **Who cancels the group's context.** A shutdown (either handle), with its cause; under
//!    fail-fast, the record of the first member to fail or panic, with that failure; taking the
//!    report, with no cause (errgroup's `Wait` does the same), so that nothing derived from the
//!    group outlives it; dropping the owner; and the parent. The first wins the cause. Pinned by
//!    `fail_fast_cancels_every_sibling_with_the_first_failure`.
//! 3. **Who aborts.** Only a shutdown whose grace has passed (every member but its caller), and
//!    the owner's drop (every member). A member whose task handle arrives after an abort began
//!    (its `spawn` was still under way) is aborted when it arrives. Pinned by
//!    `tasks_that_ignore_cancellation_are_aborted_and_named`.
//! 4. **When the report is taken.** The same critical section that sees no member left (other
//!    than the caller's own task, see 6) moves the phase to `Reported`; `spawn` checks the phase
//!    under the same lock, so no task can join after the report and be left out of it. Pinned
//!    by `wait_includes_tasks_spawned_while_it_waits`.
//! 5. **Spawning is refused** once a shutdown has begun or the owner is gone (`Closing`), and
//!    after the report (`Reported`). A fail-fast or parent cancellation does not close the
//!    group: a task spawned then starts with a done context, as under errgroup.
//! 6. **Shutdown from inside.** A shutdown or wait awaited by one of the group's own tasks
//!    (found through a thread-local set while a member is polled) waits for the others only, and never
//!    aborts its caller; so it cannot wait for itself. Pinned by
//!    `shutdown_from_inside_a_task_does_not_wait_for_that_task`.
//! 7. **Nesting.** A group built while a member of another group is polled (the same
//!    thread-local) keeps that group's core, weakly, and the member's id. When its report is
//!    taken, a summary (the report without panic payloads) is kept for that member in
//!    `State::summaries` if the member has not stopped, and the member's stop moves its
//!    summaries, in order, into its `TaskReport`. A group dropped without its report leaves nothing, and a
//!    stop never waits for an inner report. Pinned by
//!    `an_inner_groups_summary_is_shown_under_the_task_that_owned_it`,
//!    `a_task_that_owns_two_groups_in_turn_keeps_both_in_order` and
//!    `an_inner_group_owned_by_a_task_stops_within_the_outer_shutdowns_grace`.
//!
//! # Locking
//!
//! One mutex, `Core::state`, held for map and vector updates only: never across an `.await`,
//! a cancellation (which runs `after_func` callbacks), an abort, a spawn or any user code, and
//! never while another group's is held (a summary is handed to the enclosing group after the
//! inner lock is released). So there is no lock order, and a callback or a drop that comes back
//! into the group cannot deadlock. `Core::changed` is notified after the lock is released.
//!
//! # Where user code runs
//!
//! A task's closure is called inside its Tokio task, after it has a slot, not in `spawn`; the
//! closure and its future run on the runtime's workers, inside the `tracing` span that was
//! current at `spawn`. A fail-fast cancellation, and so the `after_func` callbacks it runs,
//! happens in the failing task, as it ends. The `tracing` events of a report are emitted by
//! the future that returns it.

mod error;
mod future;
mod member;
mod report;
mod state;

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::context::Context;
use crate::error::{Cause, Error};
use crate::handle::CancelCauseHandle;

pub use error::{SpawnError, TaskPanicked};
pub use future::{AllStopped, Shutdown, Wait};
pub use report::{Outcome, OutcomeCounts, Panic, Report, TaskReport};

use member::Slot;
use state::{MemberId, Phase, State};

/// A set of named tasks that run under one context and stop together.
///
/// The group owns a child of the parent context, cancelled with a cause: by
/// [`shutdown`](TaskGroup::shutdown), by the first failure under
/// [fail-fast](GroupBuilder::fail_fast), or by the parent. Each task gets a child of the
/// group's context and returns `Result<(), E>`. [`wait`](TaskGroup::wait) and
/// [`shutdown`](TaskGroup::shutdown) resolve once every task has stopped, to a [`Report`] that
/// says how each one stopped.
///
/// | Go `errgroup` / tokio-util | taskctx |
/// |---|---|
/// | `g, ctx := errgroup.WithContext(parent)` | `TaskGroup::builder(&parent).fail_fast().build()` |
/// | `g.Go(func() error {…})` | `group.spawn("name", \|ctx\| async move {…})` |
/// | `g.TryGo(…)`, `g.SetLimit(n)` | [`try_spawn`](TaskGroup::try_spawn), [`limit(n)`](GroupBuilder::limit) |
/// | `err := g.Wait()` | `group.wait().await.into_result()` |
/// | `tracker.close(); token.cancel(); tracker.wait()` | `group.shutdown(cause, grace).await` |
///
/// Tasks that spawn siblings, or stop the group from inside, use a cheap [`GroupHandle`]. The
/// group is not `Clone`: one owner takes the report.
///
/// Dropping the group without waiting cancels its context and aborts its tasks, as dropping a
/// `JoinSet` does, so nothing it started outlives it.
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
/// for shard in 0..3 {
///     group
///         .spawn(format!("shard-{shard}"), move |ctx| async move {
///             ctx.done().await; // serve until told to stop...
///             println!("shard {shard}: flushing"); // ...then clean up
///             Ok::<(), std::io::Error>(())
///         })
///         .unwrap();
/// }
/// let report = group.shutdown("deploy", Duration::from_secs(5)).await;
/// println!("{report}"); // task group: 3 tasks, 3 finished; canceled: deploy; grace 5s
/// assert_eq!(report.counts().finished, 3);
/// # }
/// ```
pub struct TaskGroup {
    core: Arc<Core>,
}

/// A cheap, cloneable handle to a [`TaskGroup`]: spawns into it and shuts it down, from
/// anywhere, including from the group's own tasks.
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
/// group
///     .spawn("crawler", move |_ctx| async move {
///         for page in 0..3 {
///             handle.spawn(format!("page-{page}"), |_ctx| async { Ok::<(), std::io::Error>(()) })?;
///         }
///         Ok::<(), taskctx::SpawnError>(())
///     })
///     .unwrap();
/// assert_eq!(group.wait().await.tasks().len(), 4);
/// # }
/// ```
#[derive(Clone)]
pub struct GroupHandle {
    core: Arc<Core>,
}

/// Configures a [`TaskGroup`]: failure policy, concurrency limit, name. From
/// [`TaskGroup::builder`].
///
/// # Examples
///
/// ```
/// use taskctx::{Context, TaskGroup};
///
/// let group = TaskGroup::builder(&Context::background())
///     .name("fetchers")
///     .fail_fast()
///     .limit(8)
///     .build();
/// assert!(!group.context().is_done());
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct GroupBuilder {
    parent: Context,
    name: Option<Cow<'static, str>>,
    fail_fast: bool,
    limit: Option<usize>,
}

impl GroupBuilder {
    /// Makes the first task to fail (return `Err`) or panic cancel the group's context, with
    /// that failure as the cause, so that every sibling sees it through
    /// [`Context::cause`]: errgroup's `WithContext`. Without it (the default, collect-all),
    /// failures are recorded and the siblings go on.
    ///
    /// A panicking task's cause is a [`TaskPanicked`]; a failing task's is its own error.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::builder(&Context::background()).fail_fast().build();
    /// group.spawn("fails", |_ctx| async { Err("disk full") }).unwrap();
    /// group
    ///     .spawn("sibling", |ctx| async move {
    ///         ctx.done().await;
    ///         assert_eq!(ctx.cause().unwrap().to_string(), "disk full");
    ///         Ok::<(), &str>(())
    ///     })
    ///     .unwrap();
    /// let err = group.wait().await.into_result().unwrap_err();
    /// assert_eq!(err.to_string(), "disk full");
    /// # }
    /// ```
    pub fn fail_fast(mut self) -> Self {
        self.fail_fast = true;
        self
    }

    /// Lets at most `n` task bodies run at once: errgroup's `SetLimit`.
    ///
    /// [`spawn`](TaskGroup::spawn) never waits: it takes a free slot if there is one, and
    /// otherwise the task it starts waits for one (in spawn order) before its closure is
    /// called; a task still waiting when the group's context is done never starts
    /// ([`Outcome::NotStarted`]). [`try_spawn`](TaskGroup::try_spawn) refuses when no slot is
    /// free. A slot is given back once the task's future has been dropped. A
    /// limit above [`Semaphore::MAX_PERMITS`](tokio::sync::Semaphore::MAX_PERMITS) is no
    /// limit.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::builder(&Context::background()).limit(1).build();
    /// group.spawn("first", |_ctx| async { Ok::<(), std::io::Error>(()) }).unwrap();
    /// let refused = group.try_spawn("second", |_ctx| async { Ok::<(), std::io::Error>(()) });
    /// assert!(refused.unwrap_err().is_full());
    /// group.wait().await;
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// If `n` is 0: no task could ever run.
    pub fn limit(mut self, n: usize) -> Self {
        assert!(n > 0, "a task group's limit must be at least 1");
        self.limit = (n <= Semaphore::MAX_PERMITS).then_some(n);
        self
    }

    /// Names the group in its [`Report`] and `tracing` events.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::builder(&Context::background()).name("indexers").build();
    /// assert_eq!(group.wait().await.name(), Some("indexers"));
    /// # }
    /// ```
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Makes the group, with a child of the parent context.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// let (parent, cancel) = Context::background().with_cancel();
    /// let group = TaskGroup::builder(&parent).build();
    /// cancel.cancel();
    /// assert!(group.context().is_done(), "the parent's cancellation reaches the group");
    /// ```
    pub fn build(self) -> TaskGroup {
        let (ctx, cancel) = self.parent.with_cancel_cause();
        let cancelled_at = Arc::new(OnceLock::new());
        let stamp = cancelled_at.clone();
        // The registration lives as long as the context; its handle is not needed.
        let _ = ctx.after_func(move || {
            let _ = stamp.set(Instant::now());
        });
        TaskGroup {
            core: Arc::new(Core {
                name: self.name,
                ctx,
                cancel,
                fail_fast: self.fail_fast,
                slots: self.limit.map(|n| Arc::new(Semaphore::new(n))),
                limit: self.limit,
                cancelled_at,
                enclosing: member::enclosing(),
                state: Mutex::new(State::default()),
                changed: Notify::new(),
            }),
        }
    }
}

impl TaskGroup {
    /// A collect-all group without a limit, under a child of `parent`.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::new(&Context::background());
    /// group.spawn("ok", |_ctx| async { Ok::<(), &str>(()) }).unwrap();
    /// group.spawn("fails", |_ctx| async { Err("bad input") }).unwrap();
    /// let report = group.wait().await;
    /// assert_eq!((report.counts().finished, report.counts().failed), (1, 1));
    /// # }
    /// ```
    pub fn new(parent: &Context) -> TaskGroup {
        TaskGroup::builder(parent).build()
    }

    /// A builder for a group under a child of `parent`: see [`GroupBuilder`].
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// let group = TaskGroup::builder(&Context::background()).fail_fast().build();
    /// # drop(group);
    /// ```
    pub fn builder(parent: &Context) -> GroupBuilder {
        GroupBuilder {
            parent: parent.clone(),
            name: None,
            fail_fast: false,
            limit: None,
        }
    }

    /// The group's context: each task's context is a child of it.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::new(&Context::background());
    /// let ctx = group.context().clone();
    /// let _ = group.wait().await;
    /// assert!(ctx.is_done(), "a group's context ends with its report");
    /// # }
    /// ```
    pub fn context(&self) -> &Context {
        &self.core.ctx
    }

    /// A cloneable handle that spawns into this group and can shut it down.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// let group = TaskGroup::new(&Context::background());
    /// let handle = group.handle();
    /// assert!(handle.is_empty());
    /// ```
    pub fn handle(&self) -> GroupHandle {
        GroupHandle {
            core: self.core.clone(),
        }
    }

    /// Starts a task named `name` that runs `f(ctx)`, with `ctx` a child of the group's
    /// context; as [`GroupHandle::spawn`].
    ///
    /// **Never drops the future because its context is done**: the task sees the cancellation
    /// through `ctx.done()` and may clean up; only a [`shutdown`](TaskGroup::shutdown) whose
    /// grace has run out, or dropping the group, aborts it, at its next `.await`.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::new(&Context::background());
    /// group.spawn("hello", |_ctx| async {
    ///     println!("hello from a group");
    ///     Ok::<(), std::io::Error>(())
    /// })
    /// .unwrap();
    /// assert!(group.wait().await.into_result().is_ok());
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn`.
    ///
    /// # Errors
    ///
    /// [`SpawnError`] ([`is_closed`](SpawnError::is_closed)) if a shutdown has begun through a
    /// [`GroupHandle`]; `f` is then dropped uncalled.
    pub fn spawn<F, Fut, E>(
        &self,
        name: impl Into<Cow<'static, str>>,
        f: F,
    ) -> Result<(), SpawnError>
    where
        F: FnOnce(Context) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<Box<dyn StdError + Send + Sync + 'static>> + 'static,
    {
        self.core.spawn(name.into(), f, false)
    }

    /// Like [`spawn`](TaskGroup::spawn), but refuses when the group's limit leaves no slot
    /// free now; as [`GroupHandle::try_spawn`].
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::builder(&Context::background()).limit(2).build();
    /// let started = (0..5)
    ///     .filter(|i| group.try_spawn(format!("job-{i}"), |_ctx| async { Ok::<(), &str>(()) }).is_ok())
    ///     .count();
    /// assert_eq!(started, 2);
    /// # group.wait().await;
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn`.
    ///
    /// # Errors
    ///
    /// [`SpawnError`]: [`is_full`](SpawnError::is_full) when no slot is free,
    /// [`is_closed`](SpawnError::is_closed) as for `spawn`. `f` is then dropped uncalled.
    pub fn try_spawn<F, Fut, E>(
        &self,
        name: impl Into<Cow<'static, str>>,
        f: F,
    ) -> Result<(), SpawnError>
    where
        F: FnOnce(Context) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<Box<dyn StdError + Send + Sync + 'static>> + 'static,
    {
        self.core.spawn(name.into(), f, true)
    }

    /// How many tasks have not stopped yet, including those waiting for a slot.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::new(&Context::background());
    /// group.spawn("idle", |ctx| async move { ctx.done().await; Ok::<(), &str>(()) }).unwrap();
    /// assert_eq!(group.len(), 1);
    /// # drop(group);
    /// # }
    /// ```
    pub fn len(&self) -> usize {
        self.core.lock().running()
    }

    /// Whether every task has stopped (or none was spawned).
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// assert!(TaskGroup::new(&Context::background()).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for every task to stop, including tasks spawned while it waits, and returns the
    /// report. Errgroup's `Wait`, tokio-util's `TaskTracker::wait`.
    ///
    /// Nothing is cancelled or aborted first (a fail-fast failure or the parent may cancel the
    /// group meanwhile): a task that never stops keeps it waiting; use
    /// [`shutdown`](TaskGroup::shutdown) for a bound. Once it resolves, the group's context is
    /// cancelled (without a cause, so the report's [`cause`](Report::cause) says why the
    /// tasks were cancelled, if they were) and the group refuses new tasks.
    ///
    /// Awaited from inside one of the group's own tasks (which must then own the group), it
    /// waits for the other tasks only, and the report leaves that task out.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::new(&Context::background());
    /// group.spawn("quick", |_ctx| async { Ok::<(), &str>(()) }).unwrap();
    /// let report = group.wait().await;
    /// assert_eq!(report.tasks()[0].name(), "quick");
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the group: its context is cancelled and its tasks are aborted.
    pub fn wait(self) -> Wait {
        Wait::new(async move {
            let me = self.core.current_member();
            let report = self.core.report_when_stopped(me).await;
            drop(self); // the report is taken: the drop aborts nothing
            report
        })
    }

    /// Stops every task and returns the report: cancels the group's context with `cause`,
    /// gives the tasks `grace` to observe [`Context::done`] and finish their cleanup, aborts
    /// those still running, and waits for the aborts to take effect.
    ///
    /// The first cancellation's cause stays: after a fail-fast failure, or alongside another
    /// shutdown, `cause` may not be the one the tasks see. When several shutdowns overlap, the
    /// earliest deadline (call time + grace) aborts. A task stuck in synchronous code is
    /// aborted only when it next yields.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::{Context, Outcome, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let group = TaskGroup::new(&Context::background());
    /// group
    ///     .spawn("polite", |ctx| async move {
    ///         ctx.done().await;
    ///         Ok::<(), &str>(())
    ///     })
    ///     .unwrap();
    /// group
    ///     .spawn("stubborn", |_ctx| async {
    ///         std::future::pending::<()>().await; // never looks at its context
    ///         Ok::<(), &str>(())
    ///     })
    ///     .unwrap();
    /// let report = group.shutdown("maintenance", Duration::from_secs(1)).await;
    /// let stubborn = report.tasks().iter().find(|t| t.name() == "stubborn").unwrap();
    /// assert!(matches!(stubborn.outcome(), Outcome::Aborted));
    /// assert_eq!(report.cause().unwrap().to_string(), "maintenance");
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the group: its context is cancelled and its tasks are aborted.
    pub fn shutdown(
        self,
        cause: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
        grace: Duration,
    ) -> Shutdown {
        let cause = Cause::new(cause.into());
        Shutdown::new(async move {
            let me = self.core.current_member();
            self.core.shut_down(me, cause, grace).await;
            let report = self.core.report_when_stopped(me).await;
            drop(self);
            report
        })
    }
}

impl Drop for TaskGroup {
    fn drop(&mut self) {
        self.core.abandon();
    }
}

impl GroupHandle {
    /// The group's context: each task's context is a child of it.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// let group = TaskGroup::new(&Context::background());
    /// assert_eq!(group.handle().context().to_string(), group.context().to_string());
    /// ```
    pub fn context(&self) -> &Context {
        &self.core.ctx
    }

    /// Starts a task named `name` that runs `f(ctx)`, with `ctx` a child of the group's
    /// context, and counts it as one of the group's tasks until it stops.
    ///
    /// `f` is called inside the new task, once the task has a slot (see
    /// [`GroupBuilder::limit`]), and its future runs in the `tracing` span current here. The
    /// task's outcome goes to the [`Report`]: `Ok(())` is [`Outcome::Finished`]; an `Err`
    /// is [`Outcome::Failed`] with the error as a [`Cause`], except that the task's own context
    /// error returned once that context is done (as `ctx.done().await` gives) is
    /// [`Outcome::Canceled`], since the task stopped because it was asked to; a panic, in `f`
    /// or in its future, is [`Outcome::Panicked`]. Never waits, with or without a limit.
    ///
    /// **Never drops the future because its context is done** (unlike [`Context::spawn`]): the
    /// task sees the cancellation through `ctx.done()` and may clean up for as long as it
    /// needs. Only a [`shutdown`](GroupHandle::shutdown) whose grace has run out, or dropping
    /// the [`TaskGroup`], aborts it, at its next `.await`.
    ///
    /// Spawning after the group's context is done (a fail-fast failure, the parent) is allowed,
    /// as with errgroup: the task starts with a done context. Spawning once a shutdown has
    /// begun, or after the report, is refused.
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
    /// handle
    ///     .spawn("child", |ctx| async move {
    ///         assert!(!ctx.is_done());
    ///         Ok::<(), std::io::Error>(())
    ///     })
    ///     .unwrap();
    /// let report = group.wait().await;
    /// assert!(handle.spawn("late", |_ctx| async { Ok::<(), &str>(()) }).unwrap_err().is_closed());
    /// # drop(report);
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn`.
    ///
    /// # Errors
    ///
    /// [`SpawnError`] ([`is_closed`](SpawnError::is_closed)) once a shutdown has begun, the
    /// group was dropped, or its report was taken; `f` is then dropped uncalled.
    pub fn spawn<F, Fut, E>(
        &self,
        name: impl Into<Cow<'static, str>>,
        f: F,
    ) -> Result<(), SpawnError>
    where
        F: FnOnce(Context) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<Box<dyn StdError + Send + Sync + 'static>> + 'static,
    {
        self.core.spawn(name.into(), f, false)
    }

    /// Like [`spawn`](GroupHandle::spawn), but refuses when the group's limit leaves no slot
    /// free now: errgroup's `TryGo`. In a group without a limit it refuses only when `spawn`
    /// would.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::builder(&Context::background()).limit(1).build();
    /// let handle = group.handle();
    /// handle.try_spawn("a", |_ctx| async { Ok::<(), &str>(()) }).unwrap();
    /// let err = handle.try_spawn("b", |_ctx| async { Ok::<(), &str>(()) }).unwrap_err();
    /// assert_eq!(err.to_string(), "task group has no free slot (limit 1)");
    /// # group.wait().await;
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn`.
    ///
    /// # Errors
    ///
    /// [`SpawnError`]: [`is_full`](SpawnError::is_full) when no slot is free,
    /// [`is_closed`](SpawnError::is_closed) as for `spawn`. `f` is then dropped uncalled.
    pub fn try_spawn<F, Fut, E>(
        &self,
        name: impl Into<Cow<'static, str>>,
        f: F,
    ) -> Result<(), SpawnError>
    where
        F: FnOnce(Context) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<Box<dyn StdError + Send + Sync + 'static>> + 'static,
    {
        self.core.spawn(name.into(), f, true)
    }

    /// How many tasks have not stopped yet, including those waiting for a slot.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// let group = TaskGroup::new(&Context::background());
    /// assert_eq!(group.handle().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.core.lock().running()
    }

    /// Whether every task has stopped (or none was spawned).
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// assert!(TaskGroup::new(&Context::background()).handle().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shuts the group down as [`TaskGroup::shutdown`] does, and resolves once every task
    /// (but the caller's own, see below) has stopped; the owner's
    /// [`wait`](TaskGroup::wait) or `shutdown` then returns the report, which records this
    /// shutdown.
    ///
    /// Idempotent and safe to call concurrently: the first call's cause stays, the earliest
    /// deadline aborts, and every call resolves once the tasks have stopped. Awaited from
    /// inside one of the group's own tasks, it waits for the others only and never aborts its
    /// caller, which then finishes its own cleanup (or is aborted by another shutdown's
    /// deadline). After the report was taken it resolves at once.
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
    /// group.spawn("worker", |ctx| async move { ctx.done().await; Ok::<(), &str>(()) }).unwrap();
    /// group
    ///     .spawn("watchdog", move |_ctx| async move {
    ///         // a task that decides the whole group must stop
    ///         handle.shutdown("watchdog fired", Duration::from_secs(1)).await;
    ///         Ok::<(), &str>(())
    ///     })
    ///     .unwrap();
    /// let report = group.wait().await;
    /// assert_eq!(report.cause().unwrap().to_string(), "watchdog fired");
    /// assert_eq!(report.counts().finished, 2);
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops waiting; the cancellation stays, and tasks not yet aborted are
    /// aborted only by another shutdown's deadline or the owner's drop.
    pub fn shutdown(
        &self,
        cause: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
        grace: Duration,
    ) -> AllStopped {
        let cause = Cause::new(cause.into());
        let core = self.core.clone();
        AllStopped::new(async move {
            let me = core.current_member();
            core.shut_down(me, cause, grace).await;
        })
    }
}

/// What the handles share. Fields other than `state` are set at `build` and never change.
struct Core {
    name: Option<Cow<'static, str>>,
    ctx: Context,
    cancel: CancelCauseHandle,
    fail_fast: bool,
    /// Free slots, with a limit.
    slots: Option<Arc<Semaphore>>,
    limit: Option<usize>,
    /// When the group's context was cancelled, by whatever cancelled it: set by an `after_func`
    /// callback, so that each task's time to stop is measured from the cancellation itself.
    cancelled_at: Arc<OnceLock<Instant>>,
    /// The group and member whose body was being polled when this group was built, if any:
    /// where the summary of this group's report goes (invariant 7).
    enclosing: Option<(Weak<Core>, MemberId)>,
    state: Mutex<State>,
    /// Notified (after `state` is released) when a task's stop leaves at most one member: the
    /// only moments a waiter's "every task but mine has stopped" can become true.
    changed: Notify,
}

impl Core {
    #[inline]
    fn lock(&self) -> MutexGuard<'_, State> {
        // No user code runs under this lock, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The member id of the task running this, if it is one of this group's tasks.
    fn current_member(self: &Arc<Self>) -> Option<MemberId> {
        member::current(self)
    }

    fn spawn<F, Fut, E>(
        self: &Arc<Self>,
        name: Cow<'static, str>,
        f: F,
        refuse_if_full: bool,
    ) -> Result<(), SpawnError>
    where
        F: FnOnce(Context) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<Box<dyn StdError + Send + Sync + 'static>> + 'static,
    {
        // A free slot is taken now, so that the next `try_spawn` sees it taken; the semaphore
        // hands freed slots to queued tasks first, so this never jumps the queue.
        let slot = match &self.slots {
            None => Slot::Free,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(permit) => Slot::Held(permit),
                Err(_) if refuse_if_full => {
                    return Err(SpawnError::full(self.limit.unwrap_or_default()));
                }
                Err(_) => Slot::Wait(slots.clone()),
            },
        };
        let id = {
            let mut state = self.lock();
            if state.phase != Phase::Open {
                return Err(SpawnError::closed());
            }
            state.enroll()
        };
        let task = member::spawn(self, id, name, slot, f);
        let abort_now = self.lock().arrived(id, task);
        if let Some(task) = abort_now {
            task.abort();
        }
        Ok(())
    }

    /// Cancels with `cause`, waits up to `grace` for the members other than `me` to stop,
    /// aborts those left, and waits for them.
    async fn shut_down(&self, me: Option<MemberId>, cause: Cause, grace: Duration) {
        let now = Instant::now();
        let deadline = now.checked_add(grace);
        {
            let mut state = self.lock();
            if state.phase == Phase::Open {
                state.phase = Phase::Closing;
                state.expect_stops();
            }
            if state.phase != Phase::Reported {
                let (_, earliest) = state.shutdown.get_or_insert((now, deadline));
                *earliest = match (*earliest, deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        self.cancel.cancel(cause);
        if !self.others_stopped(me, deadline).await {
            self.abort_all(me);
            self.others_stopped(me, None).await;
        }
    }

    /// Waits until no member other than `me` is left, or `deadline` passes; whether they all
    /// stopped.
    async fn others_stopped(&self, me: Option<MemberId>, deadline: Option<Instant>) -> bool {
        loop {
            // Registered before the check, so a stop between the check and the await wakes it.
            let mut notified = pin!(self.changed.notified());
            notified.as_mut().enable();
            if self.lock().others(me) == 0 {
                return true;
            }
            match deadline {
                Some(at) => {
                    if tokio::time::timeout_at(at, notified).await.is_err() {
                        return self.lock().others(me) == 0;
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Waits until no member other than `me` is left, then takes the report (invariant 4) and
    /// ends the group's context.
    async fn report_when_stopped(&self, me: Option<MemberId>) -> Report {
        loop {
            let mut notified = pin!(self.changed.notified());
            notified.as_mut().enable();
            if let Some(report) = self.take_report(me) {
                report.emit();
                self.hand_summary_to_enclosing(&report);
                return report;
            }
            notified.await;
        }
    }

    fn take_report(&self, me: Option<MemberId>) -> Option<Report> {
        let (tasks, first_failure, shutdown) = {
            let mut state = self.lock();
            if state.others(me) > 0 {
                state.expect_stops();
                return None;
            }
            let (tasks, first_failure) = state.take_stopped();
            (tasks, first_failure, state.shutdown)
        };
        let cause = self.ctx.cause();
        self.cancel.cancel(Error::Canceled);
        let grace = shutdown.and_then(|(began, deadline)| Some(deadline?.duration_since(began)));
        Some(Report::new(
            self.name.clone(),
            tasks,
            first_failure,
            cause,
            grace,
        ))
    }

    /// Gives the summary of this group's report to the member that built the group, if it has
    /// not stopped (invariant 7). Takes the enclosing group's lock alone: this group's is free.
    fn hand_summary_to_enclosing(&self, report: &Report) {
        let Some((group, id)) = &self.enclosing else {
            return;
        };
        let Some(group) = group.upgrade() else {
            return;
        };
        let summary = report.summary();
        let left_over = group.lock().hand_summary(*id, summary);
        drop(left_over); // the member has stopped; dropped once the lock is released
    }

    /// Aborts every member but `spared`, and those whose `spawn` is still under way.
    fn abort_all(&self, spared: Option<MemberId>) {
        let handles = self.lock().begin_abort(spared);
        for handle in handles {
            handle.abort();
        }
    }

    /// The owner is gone: unless the report was taken, refuse new tasks, abort every task and
    /// cancel the context.
    fn abandon(&self) {
        {
            let mut state = self.lock();
            if state.phase == Phase::Reported {
                return;
            }
            state.phase = Phase::Closing;
        }
        self.abort_all(None);
        self.cancel.cancel(Error::Canceled);
    }

    /// Records a member's stop (called once per member, from its `Record`'s drop) and, under
    /// fail-fast, cancels the group with the first failure.
    fn stopped(&self, id: MemberId, task: TaskReport, failure: Option<Cause>) {
        let (first_failure, refused, wake) = {
            let mut state = self.lock();
            let (first_failure, refused) = state.stop(id, task, failure.is_some());
            (first_failure, refused, state.running() <= 1)
        };
        drop(refused); // stopped after the report: dropped once the lock is released
        if let Some(cause) = failure.filter(|_| first_failure && self.fail_fast) {
            self.cancel.cancel(cause);
        }
        if wake {
            self.changed.notify_waiters();
        }
    }
}

impl fmt::Debug for TaskGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.debug("TaskGroup", f)
    }
}

impl fmt::Debug for GroupHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.debug("GroupHandle", f)
    }
}

impl Core {
    fn debug(&self, kind: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct(kind)
            .field("name", &self.name)
            .field("fail_fast", &self.fail_fast)
            .field("limit", &self.limit)
            .field("running", &state.running())
            .field("stopped", &state.stopped())
            .field("phase", &state.phase)
            .finish()
    }
}
