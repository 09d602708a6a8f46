//! What a group's `wait` or `shutdown` returns: how each task stopped.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tracing::Level;

use crate::error::{Cause, Error};

/// How the tasks of a [`TaskGroup`](crate::TaskGroup) stopped, one [`TaskReport`] per task, in
/// the order they stopped.
///
/// Its `Display` gives the counts first, then the tasks worth a look by name: failed,
/// panicked, aborted, and slow (those that took more than half the grace to stop after the
/// group was cancelled), a few of each. When the owner's `wait` or `shutdown` returns it,
/// the same is emitted as `tracing` events, target `taskctx`: one info event with the counts,
/// and a warn event for each aborted task and each slow one.
///
/// A panic is never lost: its payload stays in the report until
/// [`into_result`](Report::into_result) resumes it, or the caller takes it out of the
/// [`Outcome`].
///
/// Groups nest: a group built inside one of another group's tasks hands a summary of its report
/// to that task when its owner takes it, found in [`TaskReport::groups`] and shown in the
/// `Display` indented under `task <name>:`. A summary has no panic payloads, which stay with the
/// inner owner's report.
///
/// # Examples
///
/// ```
/// use taskctx::{Context, TaskGroup};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let group = TaskGroup::builder(&Context::background()).name("import").build();
/// group.spawn("users", |_ctx| async { Ok::<(), &str>(()) }).unwrap();
/// group.spawn("orders", |_ctx| async { Err("orders.csv: line 7: bad date") }).unwrap();
/// let report = group.wait().await;
/// assert_eq!(
///     report.to_string(),
///     "task group \"import\": 2 tasks, 1 finished, 1 failed\n  failed: orders (orders.csv: line 7: bad date)",
/// );
/// assert_eq!(report.into_result().unwrap_err().to_string(), "orders.csv: line 7: bad date");
/// # }
/// ```
#[derive(Debug)]
pub struct Report {
    name: Option<Cow<'static, str>>,
    tasks: Vec<TaskReport>,
    first_failure: Option<usize>,
    cause: Option<Cause>,
    grace: Option<Duration>,
}

/// How many tasks of a [`Report`] ended each way.
///
/// # Examples
///
/// ```
/// use taskctx::{Context, OutcomeCounts, TaskGroup};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let group = TaskGroup::new(&Context::background());
/// group.spawn("a", |_ctx| async { Ok::<(), &str>(()) }).unwrap();
/// let counts: OutcomeCounts = group.wait().await.counts();
/// assert_eq!((counts.finished, counts.failed, counts.aborted), (1, 0, 0));
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct OutcomeCounts {
    /// Tasks whose future returned `Ok(())`.
    pub finished: usize,
    /// Tasks that returned their context's error once it was done.
    pub canceled: usize,
    /// Tasks that returned another error.
    pub failed: usize,
    /// Tasks that panicked.
    pub panicked: usize,
    /// Tasks aborted: still running when a shutdown's grace ran out.
    pub aborted: usize,
    /// Tasks still waiting for a slot when the group was cancelled.
    pub not_started: usize,
}

/// How one task of a group stopped, and when.
///
/// # Examples
///
/// ```
/// use taskctx::{Context, Outcome, TaskGroup};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let group = TaskGroup::new(&Context::background());
/// group.spawn("quick", |_ctx| async { Ok::<(), &str>(()) }).unwrap();
/// let report = group.wait().await;
/// let task = &report.tasks()[0];
/// assert_eq!(task.name(), "quick");
/// assert!(matches!(task.outcome(), Outcome::Finished));
/// assert_eq!(task.time_to_stop(), None, "it stopped before any cancellation");
/// # }
/// ```
pub struct TaskReport {
    name: Cow<'static, str>,
    outcome: Outcome,
    /// The instants the durations are read from, kept as they are: the subtractions are made
    /// only for the tasks a reader asks about.
    spawned_at: Instant,
    stopped_at: Instant,
    /// When the task was asked to stop (the group's cancellation, or its spawn if that came
    /// later), if that was before it stopped.
    asked_at: Option<Instant>,
    /// Summaries of the groups the task built and took the report of, in that order.
    groups: Vec<Report>,
}

/// How a task of a group ended.
///
/// # Examples
///
/// ```
/// use taskctx::Outcome;
///
/// assert_eq!(Outcome::Aborted.to_string(), "aborted");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// Its future returned `Ok(())`.
    Finished,
    /// It returned its own context's error once that context was done (as `ctx.done().await`
    /// gives): it stopped because it was asked to. Not a failure.
    Canceled(Error),
    /// It returned an error, kept as a [`Cause`].
    Failed(Cause),
    /// Its closure or its future panicked; the payload is kept.
    Panicked(Panic),
    /// It was still running when a shutdown's grace ran out (or the group was dropped, or the
    /// runtime shut down), and was dropped at its next `.await`.
    Aborted,
    /// It was still waiting for a slot (see [`GroupBuilder::limit`](crate::GroupBuilder::limit))
    /// when the group was cancelled; its closure was never called.
    NotStarted,
}

/// The payload of a task's panic, kept so that it can be resumed.
///
/// In the summary of an inner group ([`TaskReport::groups`]) it keeps the message only: its
/// payload is that message, as a `String`, since the original stays with the inner owner's
/// report.
///
/// # Examples
///
/// ```
/// use taskctx::{Context, Outcome, TaskGroup};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let group = TaskGroup::new(&Context::background());
/// group.spawn("boom", |_ctx| async {
///     if true {
///         panic!("out of cheese");
///     }
///     Ok::<(), &str>(())
/// })
/// .unwrap();
/// let mut tasks = group.wait().await.into_tasks();
/// let Outcome::Panicked(panic) = tasks.remove(0).into_outcome() else { unreachable!() };
/// assert_eq!(panic.message(), "out of cheese");
/// let caught = std::panic::catch_unwind(move || panic.resume());
/// assert!(caught.is_err());
/// # }
/// ```
pub struct Panic(Box<Caught>);

/// A [`Panic`]'s contents, boxed so that an [`Outcome`], and so each [`TaskReport`], stays
/// small for the tasks that did not panic: a stop's report is moved on its way into the group.
struct Caught {
    message: String,
    /// In a mutex only so that a `Report` can be shared between threads (`Sync`), as Tokio's
    /// `JoinError` does; nothing locks it but `into_payload`.
    payload: Mutex<Box<dyn Any + Send + 'static>>,
}

impl Panic {
    pub(super) fn new(payload: Box<dyn Any + Send + 'static>) -> Self {
        let message = if let Some(text) = payload.downcast_ref::<&'static str>() {
            (*text).to_owned()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "Box<dyn Any>".to_owned()
        };
        Panic(Box::new(Caught {
            message,
            payload: Mutex::new(payload),
        }))
    }

    /// A panic of a summary (see [`TaskReport::groups`]): the message, as its own payload.
    fn summary(message: &str) -> Self {
        Panic(Box::new(Caught {
            message: message.to_owned(),
            payload: Mutex::new(Box::new(message.to_owned())),
        }))
    }

    /// The panic's message, or `Box<dyn Any>` if the payload was not a string.
    ///
    /// # Examples
    ///
    /// See [`Panic`].
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The payload, as `std::panic::catch_unwind` gives it.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, Outcome, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::new(&Context::background());
    /// group.spawn("boom", |_ctx| async {
    ///     std::panic::panic_any(42u8);
    ///     #[allow(unreachable_code)]
    ///     Ok::<(), &str>(())
    /// })
    /// .unwrap();
    /// let mut tasks = group.wait().await.into_tasks();
    /// let Outcome::Panicked(panic) = tasks.remove(0).into_outcome() else { unreachable!() };
    /// assert_eq!(panic.into_payload().downcast_ref::<u8>(), Some(&42));
    /// # }
    /// ```
    pub fn into_payload(self) -> Box<dyn Any + Send + 'static> {
        self.0
            .payload
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Resumes the panic on the calling thread, with its original payload.
    ///
    /// # Examples
    ///
    /// See [`Panic`].
    ///
    /// # Panics
    ///
    /// Always: that is what it is for.
    pub fn resume(self) -> ! {
        std::panic::resume_unwind(self.into_payload())
    }
}

impl fmt::Debug for Panic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Panic")
            .field("message", &self.0.message)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for TaskReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskReport")
            .field("name", &self.name)
            .field("outcome", &self.outcome)
            .field("ran_for", &self.ran_for())
            .field("time_to_stop", &self.time_to_stop())
            .field("groups", &self.groups)
            .finish()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Finished => f.write_str("finished"),
            Outcome::Canceled(err) => write!(f, "canceled ({err})"),
            Outcome::Failed(cause) => write!(f, "failed: {cause}"),
            Outcome::Panicked(panic) => write!(f, "panicked: {}", panic.message()),
            Outcome::Aborted => f.write_str("aborted"),
            Outcome::NotStarted => f.write_str("not started"),
        }
    }
}

impl TaskReport {
    pub(super) fn new(
        name: Cow<'static, str>,
        outcome: Outcome,
        spawned_at: Instant,
        stopped_at: Instant,
        asked_at: Option<Instant>,
    ) -> Self {
        TaskReport {
            name,
            outcome,
            spawned_at,
            stopped_at,
            asked_at,
            groups: Vec::new(),
        }
    }

    /// Gives the task the summaries of the groups it owned (invariant 7).
    pub(super) fn adopt(&mut self, groups: Vec<Report>) {
        self.groups = groups;
    }

    /// The same, with each panic's payload left out (see [`Report::summary`]).
    fn summary(&self) -> TaskReport {
        let outcome = match &self.outcome {
            Outcome::Finished => Outcome::Finished,
            Outcome::Canceled(err) => Outcome::Canceled(*err),
            Outcome::Failed(cause) => Outcome::Failed(cause.clone()),
            Outcome::Panicked(panic) => Outcome::Panicked(Panic::summary(panic.message())),
            Outcome::Aborted => Outcome::Aborted,
            Outcome::NotStarted => Outcome::NotStarted,
        };
        TaskReport {
            name: self.name.clone(),
            outcome,
            spawned_at: self.spawned_at,
            stopped_at: self.stopped_at,
            asked_at: self.asked_at,
            groups: self.groups.iter().map(Report::summary).collect(),
        }
    }

    /// The name the task was spawned with.
    ///
    /// # Examples
    ///
    /// See [`TaskReport`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How the task ended.
    ///
    /// # Examples
    ///
    /// See [`TaskReport`].
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// How the task ended, by value: to take a panic's payload.
    ///
    /// # Examples
    ///
    /// See [`Panic`].
    pub fn into_outcome(self) -> Outcome {
        self.outcome
    }

    /// Time from `spawn` to the task's stop (Tokio time).
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
    /// group.spawn("nap", |_ctx| async {
    ///     tokio::time::sleep(Duration::from_secs(3)).await;
    ///     Ok::<(), &str>(())
    /// })
    /// .unwrap();
    /// assert_eq!(group.wait().await.tasks()[0].ran_for(), Duration::from_secs(3));
    /// # }
    /// ```
    pub fn ran_for(&self) -> Duration {
        self.stopped_at.saturating_duration_since(self.spawned_at)
    }

    /// Time from the group's cancellation (or from `spawn`, for a task spawned after it) to
    /// the task's stop: how long it took to stop once asked. `None` if it stopped before the
    /// group was cancelled.
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
    /// group.spawn("flusher", |ctx| async move {
    ///     ctx.done().await;
    ///     tokio::time::sleep(Duration::from_millis(300)).await; // flush
    ///     Ok::<(), &str>(())
    /// })
    /// .unwrap();
    /// let report = group.shutdown("stop", Duration::from_secs(1)).await;
    /// assert_eq!(report.tasks()[0].time_to_stop(), Some(Duration::from_millis(300)));
    /// # }
    /// ```
    pub fn time_to_stop(&self) -> Option<Duration> {
        let asked_at = self.asked_at?;
        Some(self.stopped_at.saturating_duration_since(asked_at))
    }

    /// Summaries of the groups this task owned, in the order their reports were taken: each
    /// [`TaskGroup`](crate::TaskGroup) built while the task was running (in its closure or its
    /// future) whose owner's [`wait`](crate::TaskGroup::wait) or
    /// [`shutdown`](crate::TaskGroup::shutdown) returned before the task stopped.
    ///
    /// A summary is the inner group's [`Report`] without panic payloads, which stay with the
    /// inner owner's own report: a summary's [`Panic`] keeps the message, and its payload is
    /// that message as a `String`. An inner group dropped without its report (its owner
    /// aborted, say) is not here.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let outer = TaskGroup::new(&Context::background());
    /// outer
    ///     .spawn("indexer", |ctx| async move {
    ///         let inner = TaskGroup::builder(&ctx).name("shards").build();
    ///         for shard in 0..3 {
    ///             inner.spawn(format!("shard-{shard}"), |_ctx| async { Ok::<(), &str>(()) })?;
    ///         }
    ///         inner.wait().await.into_result()?;
    ///         Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    ///     })
    ///     .unwrap();
    /// let report = outer.wait().await;
    /// let shards = &report.tasks()[0].groups()[0];
    /// assert_eq!(shards.counts().finished, 3);
    /// assert_eq!(
    ///     report.to_string(),
    ///     "task group: 1 task, 1 finished\n  task indexer:\n    task group \"shards\": 3 tasks, 3 finished",
    /// );
    /// # }
    /// ```
    pub fn groups(&self) -> &[Report] {
        &self.groups
    }

    fn is_failure(&self) -> bool {
        matches!(self.outcome, Outcome::Failed(_) | Outcome::Panicked(_))
    }
}

impl Report {
    pub(super) fn new(
        name: Option<Cow<'static, str>>,
        tasks: Vec<TaskReport>,
        first_failure: Option<usize>,
        cause: Option<Cause>,
        grace: Option<Duration>,
    ) -> Self {
        Report {
            name,
            tasks,
            first_failure,
            cause,
            grace,
        }
    }

    /// The same report without panic payloads, for the enclosing group (invariant 7).
    pub(super) fn summary(&self) -> Report {
        Report {
            name: self.name.clone(),
            tasks: self.tasks.iter().map(TaskReport::summary).collect(),
            first_failure: self.first_failure,
            cause: self.cause.clone(),
            grace: self.grace,
        }
    }

    /// The group's name, if it was given one ([`GroupBuilder::name`](crate::GroupBuilder::name)).
    ///
    /// # Examples
    ///
    /// See [`GroupBuilder::name`](crate::GroupBuilder::name).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Every task, in the order they stopped.
    ///
    /// # Examples
    ///
    /// See [`TaskReport`].
    pub fn tasks(&self) -> &[TaskReport] {
        &self.tasks
    }

    /// Every task, by value: to take a panic's payload.
    ///
    /// # Examples
    ///
    /// See [`Panic`].
    pub fn into_tasks(self) -> Vec<TaskReport> {
        self.tasks
    }

    /// How many tasks ended each way.
    ///
    /// # Examples
    ///
    /// See [`OutcomeCounts`].
    pub fn counts(&self) -> OutcomeCounts {
        let mut counts = OutcomeCounts::default();
        for task in &self.tasks {
            *match task.outcome {
                Outcome::Finished => &mut counts.finished,
                Outcome::Canceled(_) => &mut counts.canceled,
                Outcome::Failed(_) => &mut counts.failed,
                Outcome::Panicked(_) => &mut counts.panicked,
                Outcome::Aborted => &mut counts.aborted,
                Outcome::NotStarted => &mut counts.not_started,
            } += 1;
        }
        counts
    }

    /// Why the group's context was cancelled before the tasks had all stopped: a shutdown's
    /// cause, the first failure under fail-fast, or the parent's cause. `None` if nothing
    /// cancelled it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let report = TaskGroup::new(&Context::background()).wait().await;
    /// assert!(report.cause().is_none());
    /// let report = TaskGroup::new(&Context::background())
    ///     .shutdown("rolling restart", Duration::from_secs(1))
    ///     .await;
    /// assert_eq!(report.cause().unwrap().to_string(), "rolling restart");
    /// # }
    /// ```
    pub fn cause(&self) -> Option<&Cause> {
        self.cause.as_ref()
    }

    /// The grace of the shutdown (the earliest deadline's, if shutdowns overlapped), if there
    /// was one.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let report = TaskGroup::new(&Context::background())
    ///     .shutdown("bye", Duration::from_secs(2))
    ///     .await;
    /// assert_eq!(report.grace(), Some(Duration::from_secs(2)));
    /// # }
    /// ```
    pub fn grace(&self) -> Option<Duration> {
        self.grace
    }

    /// The first task to fail or panic, in the order they stopped: under fail-fast, the one
    /// whose failure cancelled the others.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::new(&Context::background());
    /// group.spawn("bad", |_ctx| async { Err("no such file") }).unwrap();
    /// let report = group.wait().await;
    /// assert_eq!(report.first_failure().unwrap().name(), "bad");
    /// # }
    /// ```
    pub fn first_failure(&self) -> Option<&TaskReport> {
        self.first_failure.map(|index| &self.tasks[index])
    }

    /// The tasks that failed or panicked, in the order they stopped.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::new(&Context::background());
    /// for i in 0..4 {
    ///     group
    ///         .spawn(format!("job-{i}"), move |_ctx| async move {
    ///             if i % 2 == 1 { Err(format!("job {i} failed")) } else { Ok(()) }
    ///         })
    ///         .unwrap();
    /// }
    /// let report = group.wait().await;
    /// assert_eq!(report.failures().count(), 2);
    /// # }
    /// ```
    pub fn failures(&self) -> impl Iterator<Item = &TaskReport> + '_ {
        self.tasks.iter().filter(|task| task.is_failure())
    }

    /// The tasks that took more than half the grace to stop after the group was cancelled
    /// (aborted tasks aside), in the order they stopped. Empty without a shutdown.
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
    /// group.spawn("laggard", |ctx| async move {
    ///     ctx.done().await;
    ///     tokio::time::sleep(Duration::from_millis(800)).await;
    ///     Ok::<(), &str>(())
    /// })
    /// .unwrap();
    /// let report = group.shutdown("stop", Duration::from_secs(1)).await;
    /// assert_eq!(report.slow().next().unwrap().name(), "laggard");
    /// # }
    /// ```
    pub fn slow(&self) -> impl Iterator<Item = &TaskReport> + '_ {
        let half = self.grace.map(|grace| grace / 2);
        // Every task spawned before the cancellation was asked to stop at that one instant: the
        // bound for it is computed once, and those tasks' stops are compared with it, not
        // subtracted from anything. `None` as a bound: none can be past it.
        let mut last: Option<(Instant, Option<Instant>)> = None;
        self.tasks.iter().filter(move |task| {
            let (Some(half), Some(asked_at)) = (half, task.asked_at) else {
                return false;
            };
            let bound = match last {
                Some((at, bound)) if at == asked_at => bound,
                _ => {
                    let bound = asked_at.checked_add(half);
                    last = Some((asked_at, bound));
                    bound
                }
            };
            !matches!(task.outcome, Outcome::Aborted) && bound.is_some_and(|b| task.stopped_at > b)
        })
    }

    /// `Ok(())` if no task failed or panicked. Otherwise resumes the first panic, if any task
    /// panicked (a panic is never turned into an error), or returns the first failure's error.
    ///
    /// Aborted and not-started tasks are not failures: check [`counts`](Report::counts) for
    /// them.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::new(&Context::background());
    /// group.spawn("io", |_ctx| async { Err(std::io::Error::other("connection reset")) }).unwrap();
    /// let err = group.wait().await.into_result().unwrap_err();
    /// assert!(err.is::<std::io::Error>());
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// With the payload of the first task that panicked, if one did.
    ///
    /// # Errors
    ///
    /// The first failing task's error, as a [`Cause`].
    pub fn into_result(self) -> Result<(), Cause> {
        let mut first = None;
        for task in self.tasks {
            match task.outcome {
                Outcome::Panicked(panic) => panic.resume(),
                Outcome::Failed(cause) if first.is_none() => first = Some(cause),
                _ => {}
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Emits the report's `tracing` events (see [`Report`]).
    pub(super) fn emit(&self) {
        // Nothing is counted or searched for events that no subscriber wants.
        let group = self.name.as_deref().unwrap_or("");
        if tracing::enabled!(target: "taskctx", Level::INFO) {
            let counts = self.counts();
            tracing::info!(
                target: "taskctx",
                group,
                tasks = self.tasks.len(),
                finished = counts.finished,
                canceled = counts.canceled,
                failed = counts.failed,
                panicked = counts.panicked,
                aborted = counts.aborted,
                not_started = counts.not_started,
                cause = self.cause.as_ref().map(tracing::field::display),
                grace = self.grace.map(tracing::field::debug),
                "task group stopped",
            );
        }
        if !tracing::enabled!(target: "taskctx", Level::WARN) {
            return;
        }
        for task in self
            .tasks
            .iter()
            .filter(|t| matches!(t.outcome, Outcome::Aborted))
        {
            tracing::warn!(
                target: "taskctx",
                group,
                task = %task.name,
                grace = self.grace.map(tracing::field::debug),
                "task aborted: it did not stop within the grace",
            );
        }
        for task in self.slow() {
            tracing::warn!(
                target: "taskctx",
                group,
                task = %task.name,
                time_to_stop = task.time_to_stop().map(tracing::field::debug),
                grace = self.grace.map(tracing::field::debug),
                "task slow to stop: it took more than half the grace",
            );
        }
    }
}

/// How many names each line of a report's `Display` lists before it says how many more.
const NAMES_PER_LINE: usize = 8;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "task group {name:?}: ")?,
            None => f.write_str("task group: ")?,
        }
        let counts = self.counts();
        match self.tasks.len() {
            1 => f.write_str("1 task")?,
            n => write!(f, "{n} tasks")?,
        }
        for (count, what) in [
            (counts.finished, "finished"),
            (counts.canceled, "canceled"),
            (counts.failed, "failed"),
            (counts.panicked, "panicked"),
            (counts.aborted, "aborted"),
            (counts.not_started, "not started"),
        ] {
            if count > 0 {
                write!(f, ", {count} {what}")?;
            }
        }
        if let Some(cause) = &self.cause {
            write!(f, "; canceled: {cause}")?;
        }
        if let Some(grace) = self.grace {
            write!(f, "; grace {grace:?}")?;
        }
        let failed = self.tasks.iter().filter_map(|task| match &task.outcome {
            Outcome::Failed(cause) => Some((task, cause)),
            _ => None,
        });
        list(f, "failed", failed, |(task, cause), f| {
            write!(f, "{} ({cause})", task.name)
        })?;
        let panicked = self.tasks.iter().filter_map(|task| match &task.outcome {
            Outcome::Panicked(panic) => Some((task, panic.message())),
            _ => None,
        });
        list(f, "panicked", panicked, |(task, message), f| {
            write!(f, "{} ({message})", task.name)
        })?;
        let aborted = self
            .tasks
            .iter()
            .filter(|task| matches!(task.outcome, Outcome::Aborted));
        list(f, "aborted", aborted, |task, f| f.write_str(&task.name))?;
        list(f, "slow", self.slow(), |task, f| {
            let took = task.time_to_stop().unwrap_or_default();
            write!(f, "{} ({took:?} to stop)", task.name)
        })?;
        let owners = self.tasks.iter().filter(|task| !task.groups.is_empty());
        let mut more = 0;
        for (index, task) in owners.enumerate() {
            if index >= NAMES_PER_LINE {
                more += 1;
                continue;
            }
            write!(f, "\n  task {}:", task.name)?;
            for group in &task.groups {
                // Each line of the inner report, its own nested groups included, four deeper.
                for line in group.to_string().lines() {
                    write!(f, "\n    {line}")?;
                }
            }
        }
        if more > 0 {
            write!(f, "\n  and {more} more tasks that owned groups")?;
        }
        Ok(())
    }
}

/// Writes one line, `label: a, b, c`, if there are any entries: the first
/// [`NAMES_PER_LINE`] shown, the rest counted (so a report of any size prints in a few lines).
fn list<T>(
    f: &mut fmt::Formatter<'_>,
    label: &str,
    entries: impl Iterator<Item = T>,
    show: impl Fn(T, &mut fmt::Formatter<'_>) -> fmt::Result,
) -> fmt::Result {
    let mut more = 0;
    for (index, entry) in entries.enumerate() {
        match index {
            0 => write!(f, "\n  {label}: ")?,
            NAMES_PER_LINE.. => {
                more += 1;
                continue;
            }
            _ => f.write_str(", ")?,
        }
        show(entry, f)?;
    }
    if more > 0 {
        write!(f, " and {more} more")?;
    }
    Ok(())
}
