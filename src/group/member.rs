//! The future each member task runs, and the record of its stop.
//!
//! Owns invariant 1 of `mod.rs` (a member's stop is recorded exactly once, after its context
//! and count are gone) and the limit: a body exists only while its task holds a slot.
//!
//! Drop order carries both. [`Member`] holds the body before the [`Record`], and [`Running`]
//! the body before its slot, and fields drop in declaration order: when a task is aborted, its
//! body (with the user's future) is dropped first, then its slot is given back, then the record
//! reports the stop. A body that returns has dropped both already, so its record reports then,
//! in the same poll, and its drop does nothing. Pinned by `the_limit_is_never_exceeded` and
//! `tasks_that_ignore_cancellation_are_aborted_and_named`.

use std::any::Any;
use std::borrow::Cow;
use std::cell::Cell;
use std::error::Error as StdError;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{self, Poll, ready};

use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;
use tracing::level_filters::LevelFilter;

use super::error::TaskPanicked;
use super::report::{Outcome, Panic, TaskReport};
use super::{Core, MemberId};
use crate::context::Context;
use crate::error::Cause;
use crate::handle::CancelHandle;
use crate::task::TaskCount;

/// Which group and member the running task is: so that a `shutdown` or `wait` awaited inside a
/// member does not wait for itself (invariant 6), and so that a group built inside a member
/// knows which task of which group it belongs to (invariant 7).
struct Membership {
    group: Arc<Core>,
    id: MemberId,
}

std::thread_local! {
    /// The member whose body this thread is polling, moved in by [`Member`]'s `poll` around its
    /// body's and moved back out after: what a task-local set around the member would hold
    /// whenever a `shutdown`, `wait` or `build` inside it runs, at the cost of one thread-local
    /// swap each way (the member's `Record`'s own `Arc` is moved, not cloned).
    static MEMBERSHIP: Cell<Option<Membership>> = const { Cell::new(None) };
}

/// Calls `f` with the membership of the running task, if it is a member of any group.
fn with_membership<T>(f: impl FnOnce(Option<&Membership>) -> T) -> T {
    MEMBERSHIP.with(|cell| {
        // Nothing in `f` polls a member, so the cell is put back before anyone else looks.
        let membership = cell.take();
        let result = f(membership.as_ref());
        cell.set(membership);
        result
    })
}

/// The member id of the running task, if it is a member of `core`'s group.
pub(super) fn current(core: &Arc<Core>) -> Option<MemberId> {
    with_membership(|membership| {
        let membership = membership?;
        Arc::ptr_eq(&membership.group, core).then_some(membership.id)
    })
}

/// The group and member id of the running task, if it is a member of any group.
pub(super) fn enclosing() -> Option<(Weak<Core>, MemberId)> {
    with_membership(|membership| membership.map(|m| (Arc::downgrade(&m.group), m.id)))
}

/// Moves a member's group (its record's `Arc`) and id into the thread-local for the length of
/// its body's poll, and back (with the membership an inner poll replaced, none unless a runtime
/// runs inside a member's poll, put back too), even if the poll unwinds.
struct Entered<'a> {
    home: &'a mut Option<Arc<Core>>,
    outer: Option<Membership>,
}

impl<'a> Entered<'a> {
    #[inline]
    fn new(home: &'a mut Option<Arc<Core>>, id: MemberId) -> Self {
        let membership = home.take().map(|group| Membership { group, id });
        let outer = MEMBERSHIP.replace(membership);
        Entered { home, outer }
    }
}

impl Drop for Entered<'_> {
    #[inline]
    fn drop(&mut self) {
        *self.home = MEMBERSHIP.replace(self.outer.take()).map(|m| m.group);
    }
}

/// How a new task gets its slot.
pub(super) enum Slot {
    /// The group has no limit.
    Free,
    /// `spawn` took a free one.
    Held(OwnedSemaphorePermit),
    /// The task waits for one before it starts.
    Wait(Arc<Semaphore>),
}

/// Spawns member `id` of `core`'s group; returns its join handle, which the group keeps to
/// abort it.
pub(super) fn spawn<F, Fut, E>(
    core: &Arc<Core>,
    id: MemberId,
    name: Cow<'static, str>,
    slot: Slot,
    f: F,
) -> JoinHandle<()>
where
    F: FnOnce(Context) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<Box<dyn StdError + Send + Sync + 'static>> + 'static,
{
    // While no subscriber enables anything (`LevelFilter::current()` is OFF), no span is
    // enabled, so none can be current: the look-up `Span::current` makes is skipped. Pinned by
    // `a_task_runs_in_the_tracing_span_current_at_its_spawn`.
    let span = if LevelFilter::current() == LevelFilter::OFF {
        tracing::Span::none()
    } else {
        tracing::Span::current()
    };
    let (ctx, cancel) = core.ctx.with_cancel();
    let counted = TaskCount::new(&ctx);
    let spawned_at = Instant::now();
    // Boxed: Tokio moves a task's future by value as it spawns, starts and finishes it, and a
    // member's is a few hundred bytes; boxed, each move is a pointer's. Built in one
    // expression from parts made beforehand: built field by field between other calls, it is
    // copied once for each wrapper on its way into the box (`-- group N` of
    // `benches/groups.rs` under callgrind shows the copies). `Box::write` into a box allocated
    // first would save the last copy too, from Rust 1.87.
    let future = Box::pin(
        Member {
            body: run(ctx, slot, f),
            record: Record {
                cancel: Some(cancel),
                counted: Some(counted),
                core: Some(core.clone()),
                id,
                name,
                spawned_at,
            },
        }
        .instrument(span),
    );
    tokio::spawn(future)
}

/// A member's whole life: its slot, its closure, its future; returns how it ended.
async fn run<F, Fut, E>(ctx: Context, slot: Slot, f: F) -> Outcome
where
    F: FnOnce(Context) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<Box<dyn StdError + Send + Sync + 'static>> + 'static,
{
    let permit = match slot {
        Slot::Free => None,
        Slot::Held(permit) => Some(permit),
        // The context is checked first: a task still queued when the group is cancelled never
        // starts, even if a slot frees up in the same instant. The semaphore is never closed.
        // Boxed: the wait is large and rare, and every member's future would carry its room
        // (tokio copies a task's whole future as it starts and finishes).
        Slot::Wait(slots) => match Box::pin(ctx.run_until_cancelled(slots.acquire_owned())).await {
            Ok(permit) => permit.ok(),
            Err(_) => return Outcome::NotStarted,
        },
    };
    let body = match catch_unwind(AssertUnwindSafe(|| f(ctx.clone()))) {
        Ok(body) => body,
        Err(payload) => return Outcome::Panicked(Panic::new(payload)),
    };
    let running = Running {
        body: CatchUnwind { future: body },
        _slot: permit,
    };
    match running.await {
        Ok(Ok(())) => Outcome::Finished,
        Ok(Err(err)) => {
            let cause = Cause::new(err.into());
            match ctx.err() {
                Some(err) if cause.is_plain(err) => Outcome::Canceled(err),
                _ => Outcome::Failed(cause),
            }
        }
        Err(payload) => Outcome::Panicked(Panic::new(payload)),
    }
}

pin_project! {
    /// A member task's future: `body` must stay declared before `record` (see the module
    /// header).
    struct Member<B> {
        #[pin]
        body: B,
        record: Record,
    }
}

impl<B: Future<Output = Outcome>> Future for Member<B> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<()> {
        let this = self.project();
        let outcome = {
            let _entered = Entered::new(&mut this.record.core, this.record.id);
            ready!(this.body.poll(cx))
        };
        // `run` has returned, so its future holds nothing (the user's future and the slot are
        // gone): the stop is recorded now, as the record's drop would after it.
        this.record.stop(outcome);
        Poll::Ready(())
    }
}

pin_project! {
    /// A body and the slot it holds: `body` must stay declared before `_slot`.
    struct Running<F> {
        #[pin]
        body: CatchUnwind<F>,
        _slot: Option<OwnedSemaphorePermit>,
    }
}

impl<F: Future> Future for Running<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        self.project().body.poll(cx)
    }
}

pin_project! {
    /// Catches a panic in `future`'s `poll`, so that it reaches the report.
    struct CatchUnwind<F> {
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        let future = self.project().future;
        // A future that panicked is never polled again: `run` drops it at once.
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(poll) => poll.map(Ok),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// Reports a member's stop exactly once: when its body returns, or else when it is dropped,
/// however the task ends.
struct Record {
    /// The member's own context's handle: dropped (cancelling that context) before the stop is
    /// recorded. `None` once it is.
    cancel: Option<CancelHandle>,
    /// The leak check's count of this task, also gone before the stop is recorded.
    counted: Option<TaskCount>,
    /// `None` only while the body is polled, when it is in the thread-local (see `Entered`):
    /// never when the record reports.
    core: Option<Arc<Core>>,
    id: MemberId,
    name: Cow<'static, str>,
    spawned_at: Instant,
}

impl Record {
    fn stop(&mut self, outcome: Outcome) {
        let Some(cancel) = self.cancel.take() else {
            return; // recorded already
        };
        drop(cancel);
        drop(self.counted.take());
        let Some(core) = &self.core else {
            unreachable!("a record reports outside its body's poll, with its group back")
        };
        let stopped_at = Instant::now();
        let asked_at = core.cancelled_at.get().map(|&at| at.max(self.spawned_at));
        let failure = match &outcome {
            Outcome::Failed(cause) => Some(cause.clone()),
            Outcome::Panicked(panic) => Some(Cause::new(Box::new(TaskPanicked::new(
                self.name.clone(),
                panic.message(),
            )))),
            _ => None,
        };
        let task = TaskReport::new(
            std::mem::take(&mut self.name),
            outcome,
            self.spawned_at,
            stopped_at,
            asked_at,
        );
        core.stopped(self.id, task, failure);
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        // Not recorded yet: the body never returned (and no outcome need be made otherwise).
        if self.cancel.is_some() {
            self.stop(Outcome::Aborted);
        }
    }
}
