//! Work run under a context: futures it bounds (`run_until_cancelled`, `run_with_grace`,
//! `taskctx::with_timeout`), tasks spawned on it (`Context::spawn`, `Context::spawn_graceful`,
//! and the `tracing` span a spawned task runs in; the events are in `tests/events.rs`), and
//! `after_func` callbacks.
//! Time is Tokio's paused clock; tests that could deadlock run under a hang guard.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use futures::FutureExt;
use taskctx::testing::{assert_no_leaks, census};
use taskctx::{AfterFunc, CancelHandle, Context, Error};
use tokio::time::{Instant, advance, sleep};
use tracing::{Instrument, Span};

// ---------------------------------------------------------------------------------------------
// Test doubles

/// A future that counts its polls, is ready on poll number `ready_on` (never if 0), and raises
/// a flag when dropped.
struct Probe {
    polls: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
    ready_on: usize,
}

#[derive(Clone, Default)]
struct ProbeState {
    polls: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
}

impl ProbeState {
    fn probe(&self, ready_on: usize) -> Probe {
        Probe {
            polls: self.polls.clone(),
            dropped: self.dropped.clone(),
            ready_on,
        }
    }
    fn polls(&self) -> usize {
        self.polls.load(Ordering::SeqCst)
    }
    fn dropped(&self) -> bool {
        self.dropped.load(Ordering::SeqCst)
    }
}

impl Future for Probe {
    type Output = &'static str;
    fn poll(self: Pin<&mut Self>, _cx: &mut TaskCx<'_>) -> Poll<&'static str> {
        let n = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.ready_on != 0 && n >= self.ready_on {
            Poll::Ready("probe finished")
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// Runs `f` on its own thread and fails the test if it has not returned within 10 s: the
/// bound only ever matters if `f` deadlocks. A panic in `f` is propagated.
fn hang_guard(f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(()) => thread.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("deadlock: the code under test hung"),
    }
}

// ---------------------------------------------------------------------------------------------
// run_until_cancelled

#[tokio::test(start_paused = true)]
async fn run_until_cancelled_returns_ok_when_the_future_finishes_first() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(1));
    assert_eq!(ctx.run_until_cancelled(async { 40 + 2 }).await, Ok(42));
    let slow_but_in_time = ctx.run_until_cancelled(async {
        sleep(Duration::from_millis(999)).await;
        "made it"
    });
    assert_eq!(slow_but_in_time.await, Ok("made it"));
    assert!(!ctx.is_done());
}

#[tokio::test(start_paused = true)]
async fn run_until_cancelled_returns_the_ctx_error_when_ctx_is_done_first() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let out = ctx.run_until_cancelled(sleep(Duration::from_secs(5))).await;
    assert_eq!(out, Err(Error::DeadlineExceeded));
    assert_eq!(Instant::now() - started, Duration::from_secs(1));

    let (ctx, cancel) = Context::background().with_cancel();
    let canceller = tokio::spawn(async move {
        sleep(Duration::from_millis(10)).await;
        cancel.cancel();
    });
    let out = ctx.run_until_cancelled(std::future::pending::<()>()).await;
    assert_eq!(out, Err(Error::Canceled));
    canceller.await.unwrap();
}

#[tokio::test]
async fn run_until_cancelled_drops_the_future_without_polling_it_again_once_done() {
    let (ctx, cancel) = Context::background().with_cancel();
    let state = ProbeState::default();
    // Ready on its second poll: if it were polled again after cancel, it would win.
    let mut run = Box::pin(ctx.run_until_cancelled(state.probe(2)));
    assert_eq!(futures::poll!(run.as_mut()), Poll::Pending);
    assert_eq!(state.polls(), 1);

    cancel.cancel();
    assert_eq!(
        futures::poll!(run.as_mut()),
        Poll::Ready(Err(Error::Canceled))
    );
    assert_eq!(
        state.polls(),
        1,
        "the future was polled after the context was done"
    );
    drop(run);
    assert!(state.dropped());

    // The same through `.await`: by the time the error comes back the future is gone.
    let (ctx, cancel) = Context::background().with_cancel();
    let state = ProbeState::default();
    let watcher = state.clone();
    let out = ctx
        .run_until_cancelled(async move {
            let probe = state.probe(0);
            cancel.cancel(); // cancel from inside, then park
            probe.await
        })
        .await;
    assert_eq!(out, Err(Error::Canceled));
    assert!(watcher.dropped());
    assert_eq!(watcher.polls(), 1);
}

#[tokio::test]
async fn run_until_cancelled_cancellation_wins_when_already_done_at_first_poll() {
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    let state = ProbeState::default();
    let out = ctx.run_until_cancelled(state.probe(1)).await;
    assert_eq!(out, Err(Error::Canceled));
    assert_eq!(
        state.polls(),
        0,
        "an already-ready future must not be polled"
    );
    assert!(state.dropped());
}

#[tokio::test]
async fn run_until_cancelled_on_a_never_done_context_runs_to_completion() {
    let ctx = Context::background().with_value(1u8).without_cancel();
    let state = ProbeState::default();
    assert_eq!(
        ctx.run_until_cancelled(state.probe(1)).await,
        Ok("probe finished")
    );
}

#[tokio::test]
async fn run_until_cancelled_stays_pending_once_it_has_returned_and_polls_nothing() {
    let (ctx, cancel) = Context::background().with_cancel();
    let state = ProbeState::default();
    let mut run = Box::pin(ctx.run_until_cancelled(state.probe(1)));
    assert_eq!(
        futures::poll!(run.as_mut()),
        Poll::Ready(Ok("probe finished"))
    );
    cancel.cancel();
    assert_eq!(
        futures::poll!(run.as_mut()),
        Poll::Pending,
        "no second output"
    );
    assert_eq!(state.polls(), 1, "the finished future is not polled again");

    // Nor when the context won: its error is delivered once too.
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    let mut run = Box::pin(ctx.run_until_cancelled(std::future::pending::<()>()));
    assert_eq!(
        futures::poll!(run.as_mut()),
        Poll::Ready(Err(Error::Canceled))
    );
    assert_eq!(futures::poll!(run.as_mut()), Poll::Pending);
}

// ---------------------------------------------------------------------------------------------
// taskctx::with_timeout

#[tokio::test(start_paused = true)]
async fn with_timeout_returns_ok_for_fast_work() {
    let ctx = Context::background().with_value("request-1");
    let out = taskctx::with_timeout(&ctx, Duration::from_secs(1), |child| async move {
        sleep(Duration::from_millis(10)).await;
        (child.value::<&str>().copied(), child.deadline())
    })
    .await;
    let (value, deadline) = out.expect("fast work finishes in time");
    assert_eq!(
        value,
        Some("request-1"),
        "the child carries the parent's values"
    );
    assert!(deadline.is_some());
}

#[tokio::test(start_paused = true)]
async fn with_timeout_returns_deadline_exceeded_on_expiry() {
    let started = Instant::now();
    let state = ProbeState::default();
    let probe = state.probe(0);
    let out = taskctx::with_timeout(&Context::background(), Duration::from_millis(250), |_| {
        probe
    })
    .await;
    assert_eq!(out, Err(Error::DeadlineExceeded));
    assert_eq!(Instant::now() - started, Duration::from_millis(250));
    assert!(state.dropped());
}

#[tokio::test(start_paused = true)]
async fn with_timeout_returns_canceled_when_the_parent_is_cancelled() {
    let (parent, cancel_parent) = Context::background().with_cancel();
    tokio::spawn(async move {
        sleep(Duration::from_millis(10)).await;
        cancel_parent.cancel();
    });
    let out = taskctx::with_timeout(&parent, Duration::from_secs(60), |_| {
        sleep(Duration::from_secs(3600))
    })
    .await;
    assert_eq!(out, Err(Error::Canceled));
}

#[tokio::test(start_paused = true)]
async fn with_timeout_stops_tasks_spawned_with_the_child_on_expiry() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let state = ProbeState::default();
    let probe = state.probe(0);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let out = taskctx::with_timeout(&root, Duration::from_millis(100), |child| async move {
        let helper = child.spawn(move |_| probe);
        let _ = tx.send(helper);
        sleep(Duration::from_secs(10)).await;
    })
    .await;
    assert_eq!(out, Err(Error::DeadlineExceeded));
    let helper = rx.await.expect("the work spawned its helper");
    assert_eq!(helper.await, Err(Error::DeadlineExceeded));
    assert!(state.dropped(), "the helper's future is gone");
    assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn with_timeout_stays_pending_once_it_has_returned() {
    let ctx = Context::background();
    let mut guarded = Box::pin(taskctx::with_timeout(
        &ctx,
        Duration::from_secs(1),
        |_| async { "ok" },
    ));
    assert_eq!(futures::poll!(guarded.as_mut()), Poll::Ready(Ok("ok")));
    // The `async` block would panic if polled again ("`async fn` resumed after completion").
    assert_eq!(futures::poll!(guarded.as_mut()), Poll::Pending);
}

#[tokio::test(start_paused = true)]
async fn with_timeout_cancels_the_child_when_the_guard_completes() {
    let mut seen = None;
    let guard = taskctx::with_timeout(&Context::background(), Duration::from_secs(60), |child| {
        seen = Some(child.clone());
        async { "done" }
    });
    let child = seen.expect("f was called with the child");
    let mut guard = std::pin::pin!(guard);
    assert_eq!((&mut guard).await, Ok("done"));
    // The guard has resolved but is still alive: the doc promises the child is cancelled
    // "when the guard resolves or is dropped".
    assert_eq!(
        child.err(),
        Some(Error::Canceled),
        "the child context outlives a resolved with_timeout guard"
    );
}

#[tokio::test(start_paused = true)]
async fn with_timeout_cancels_the_child_when_awaited_to_completion() {
    let mut seen = None;
    let out = taskctx::with_timeout(&Context::background(), Duration::from_secs(60), |child| {
        seen = Some(child.clone());
        async { 1 }
    })
    .await;
    assert_eq!(out, Ok(1));
    assert_eq!(seen.unwrap().err(), Some(Error::Canceled));
}

#[tokio::test(start_paused = true)]
async fn with_timeout_cancels_the_child_and_its_tasks_when_the_guard_is_dropped() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let mut seen = None;
    let state = ProbeState::default();
    let probe = state.probe(0);
    let mut helper = None;
    let guard = taskctx::with_timeout(&root, Duration::from_secs(60), |child| {
        helper = Some(child.spawn(move |_| probe));
        seen = Some(child);
        std::future::pending::<()>()
    });
    let mut guard = Box::pin(guard);
    assert_eq!(futures::poll!(guard.as_mut()), Poll::Pending);
    let child = seen.unwrap();
    assert!(!child.is_done());
    drop(guard);
    assert_eq!(child.err(), Some(Error::Canceled));
    assert_eq!(helper.unwrap().await, Err(Error::Canceled));
    assert!(state.dropped());
    drop(child);
    assert_no_leaks(&root).await;
}

// ---------------------------------------------------------------------------------------------
// Context::spawn

#[tokio::test]
async fn spawn_handle_yields_the_tasks_output() {
    let ctx = Context::background().with_value(21u32);
    let task = ctx.spawn(|ctx| async move { ctx.value::<u32>().copied().unwrap() * 2 });
    assert_eq!(task.await, Ok(42));
}

#[tokio::test(start_paused = true)]
async fn spawn_handle_yields_the_ctx_error_when_ctx_is_done_first() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(1));
    let task = ctx.spawn(|_| sleep(Duration::from_secs(10)));
    assert_eq!(task.await, Err(Error::DeadlineExceeded));

    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    let state = ProbeState::default();
    let probe = state.probe(1);
    let task = ctx.spawn(move |_| probe);
    assert_eq!(task.await, Err(Error::Canceled));
    assert_eq!(
        state.polls(),
        0,
        "a task on a done context never runs its future"
    );
}

#[tokio::test]
async fn spawned_task_stops_when_its_ctx_is_done() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_cancel();
    let state = ProbeState::default();
    let probe = state.probe(0);
    let task = ctx.spawn(move |_| probe);
    tokio::task::yield_now().await;
    assert_eq!(state.polls(), 1, "the task started");
    assert!(!task.is_finished());
    cancel.cancel();
    assert_eq!(task.await, Err(Error::Canceled));
    assert!(
        state.dropped(),
        "the task's future was dropped before the handle resolved"
    );
    assert_eq!(state.polls(), 1);
    assert_eq!(census(&root).tasks, 0);
}

#[tokio::test]
async fn detached_task_still_stops_when_its_ctx_is_done() {
    let (ctx, cancel) = Context::background().with_cancel();
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    // The task's future owns the sender: the receiver errors once that future is dropped.
    drop(ctx.spawn(move |_| async move {
        let _stopped_tx = stopped_tx;
        std::future::pending::<()>().await
    }));
    tokio::task::yield_now().await;
    cancel.cancel();
    assert!(
        stopped_rx.await.is_err(),
        "the detached task's future was dropped, never completed"
    );
}

#[tokio::test]
#[should_panic(expected = "task exploded")]
async fn spawned_task_panic_is_resumed_when_awaiting_the_handle() {
    let task = Context::background().spawn(|_| async {
        tokio::task::yield_now().await;
        panic!("task exploded");
    });
    let _ = task.await;
}

#[test]
fn spawned_task_panic_payload_reaches_the_awaiting_caller() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            let task = Context::background().spawn(|_| async { std::panic::panic_any(7u32) });
            let _ = task.await;
        })
    }));
    let payload = caught.expect_err("awaiting a panicked task must panic");
    assert_eq!(payload.downcast_ref::<u32>(), Some(&7));
}

#[tokio::test]
async fn aborted_task_handle_gives_canceled() {
    let state = ProbeState::default();
    let probe = state.probe(0);
    let task = Context::background().spawn(move |_| probe);
    tokio::task::yield_now().await;
    task.abort();
    assert_eq!(task.await, Err(Error::Canceled));
    assert!(state.dropped());

    let never_started = Context::background().spawn(|_| async { 1 });
    never_started.abort();
    assert_eq!(never_started.await, Err(Error::Canceled));
}

#[tokio::test(start_paused = true)]
async fn task_handle_awaited_again_after_a_completed_timeout_stays_pending() {
    let mut task = Context::background().spawn(|_| async { 7 });
    let first = tokio::time::timeout(Duration::from_secs(1), &mut task).await;
    assert_eq!(first, Ok(Ok(7)));
    assert!(task.is_finished());

    // Tokio's own `JoinHandle` panics here: "JoinHandle polled after completion".
    let again = tokio::time::timeout(Duration::from_secs(1), &mut task).await;
    assert!(again.is_err(), "delivered once, then pending");
    assert!(task.is_finished());
    task.abort(); // a no-op now, and no panic either
}

#[tokio::test(start_paused = true)]
async fn task_handle_resumes_a_panic_once_then_stays_pending() {
    let mut task = Context::background().spawn(|_| async { std::panic::panic_any(7u32) });
    let caught = std::panic::AssertUnwindSafe(&mut task).catch_unwind().await;
    let payload = caught.expect_err("awaiting a panicked task must panic");
    assert_eq!(payload.downcast_ref::<u32>(), Some(&7));

    let again = tokio::time::timeout(Duration::from_secs(1), &mut task).await;
    assert!(again.is_err(), "resumed once, then pending");
}

#[tokio::test]
async fn spawned_task_runs_inside_the_callers_tracing_span() {
    let _default = common::trace_everything();
    let span = tracing::info_span!("request", id = 7);
    let expected = span.id();
    assert!(expected.is_some(), "the span is enabled");

    let ctx = Context::background();
    let (inside, control) = async {
        let inside = ctx.spawn(|_| async {
            tokio::task::yield_now().await;
            let current = Span::current();
            (current.id(), current.metadata().map(|m| m.name()))
        });
        let control = tokio::spawn(async { Span::current().id() });
        (inside.await.unwrap(), control.await.unwrap())
    }
    .instrument(span)
    .await;
    assert_eq!(inside, (expected, Some("request")));
    assert_eq!(
        control, None,
        "a plain tokio::spawn does not inherit the span"
    );
}

// ---------------------------------------------------------------------------------------------
// Context::spawn_graceful
//
// Each test but the zero-grace one fails with `spawn` in place of `spawn_graceful`: the
// workers' cleanup never runs, their handles give `Err`, and the stubborn tasks stop at once
// rather than at the end of the grace.

/// Awaits `future`, or fails the test once a year of Tokio time has passed: under the paused
/// clock that year passes at once when nothing else can run, so a task that never stops fails
/// the test rather than hanging it.
async fn or_hang<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(365 * 24 * 3600), future)
        .await
        .expect("hung: the task never stopped")
}

/// A worker in the shape of issue #22: works until `ctx` is done, then runs an async cleanup
/// of `cleanup` and counts it in `cleaned`; returns the error it saw.
async fn polite_worker(ctx: Context, cleanup: Duration, cleaned: Arc<AtomicUsize>) -> Error {
    let err = loop {
        tokio::select! {
            err = ctx.done() => break err,
            _ = sleep(Duration::from_millis(10)) => {} // a unit of work
        }
    };
    sleep(cleanup).await; // flush the buffer, ack the message, close the connection
    cleaned.fetch_add(1, Ordering::SeqCst);
    err
}

#[tokio::test(start_paused = true)]
async fn spawn_graceful_lets_every_worker_finish_its_cleanup_within_the_grace() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_cancel();
    let cleaned = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..5)
        .map(|_| {
            let cleaned = cleaned.clone();
            ctx.spawn_graceful(Duration::from_secs(1), move |ctx| {
                polite_worker(ctx, Duration::from_millis(100), cleaned)
            })
        })
        .collect();
    sleep(Duration::from_millis(25)).await;
    cancel.cancel();
    let cancelled_at = Instant::now();
    for worker in workers {
        assert_eq!(or_hang(worker).await, Ok(Error::Canceled));
    }
    assert_eq!(
        cleaned.load(Ordering::SeqCst),
        5,
        "every worker ran its cleanup"
    );
    assert_eq!(
        cancelled_at.elapsed(),
        Duration::from_millis(100),
        "each stopped when its cleanup was done, not at the end of the grace"
    );
    assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn spawn_graceful_drops_a_task_that_ignores_cancellation_when_the_grace_runs_out() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_cancel();
    let state = ProbeState::default();
    let probe = state.probe(0);
    let task = ctx.spawn_graceful(Duration::from_secs(2), move |_| probe);
    tokio::task::yield_now().await;
    assert_eq!(state.polls(), 1, "the task started");
    cancel.cancel();
    let cancelled_at = Instant::now();
    assert_eq!(or_hang(task).await, Err(Error::Canceled));
    assert_eq!(
        cancelled_at.elapsed(),
        Duration::from_secs(2),
        "the whole grace"
    );
    assert!(
        state.dropped(),
        "the task's future was dropped before the handle resolved"
    );
    assert_eq!(
        state.polls(),
        2,
        "polled when the cancellation woke it, not once the grace had run out"
    );
    assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn spawn_graceful_gives_deadline_exceeded_when_a_deadline_ends_the_work() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, _cancel) = root.with_timeout(Duration::from_secs(1));
    let cleaned = Arc::new(AtomicUsize::new(0));
    let polite = ctx.spawn_graceful(Duration::from_millis(500), {
        let cleaned = cleaned.clone();
        move |ctx| polite_worker(ctx, Duration::from_millis(100), cleaned)
    });
    let stubborn = ctx.spawn_graceful(Duration::from_millis(500), |_| std::future::pending::<()>());
    let start = Instant::now();
    assert_eq!(or_hang(polite).await, Ok(Error::DeadlineExceeded));
    assert_eq!(cleaned.load(Ordering::SeqCst), 1);
    assert_eq!(start.elapsed(), Duration::from_millis(1100));
    assert_eq!(or_hang(stubborn).await, Err(Error::DeadlineExceeded));
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(1500),
        "deadline + grace"
    );
    assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn spawn_graceful_task_counts_as_a_task_until_it_ends() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_cancel();
    let task = ctx.spawn_graceful(Duration::from_secs(2), |_| std::future::pending::<()>());
    cancel.cancel();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(census(&root).tasks, 1, "still counted within its grace");
    assert_eq!(or_hang(task).await, Err(Error::Canceled));
    assert_eq!(census(&root).tasks, 0);
}

#[tokio::test(start_paused = true)]
async fn spawn_graceful_on_a_done_context_still_runs_the_future_within_its_grace() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_cancel();
    cancel.cancel();
    let cleaned = Arc::new(AtomicUsize::new(0));
    let polite = ctx.spawn_graceful(Duration::from_secs(1), {
        let cleaned = cleaned.clone();
        move |ctx| polite_worker(ctx, Duration::from_millis(100), cleaned)
    });
    assert_eq!(or_hang(polite).await, Ok(Error::Canceled));
    assert_eq!(cleaned.load(Ordering::SeqCst), 1, "it cleaned up");

    let state = ProbeState::default();
    let probe = state.probe(0);
    let start = Instant::now();
    let stubborn = ctx.spawn_graceful(Duration::from_secs(1), move |_| probe);
    assert_eq!(or_hang(stubborn).await, Err(Error::Canceled));
    assert_eq!(start.elapsed(), Duration::from_secs(1), "the whole grace");
    assert_eq!(state.polls(), 1);
    assert!(state.dropped());
    assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn spawn_graceful_with_zero_grace_behaves_as_spawn() {
    let (root, _cancel_root) = Context::background().with_cancel();

    // On a live context: once it is done, the future is not polled again.
    let (ctx, cancel) = root.with_cancel();
    let cleaned = Arc::new(AtomicUsize::new(0));
    let polite = ctx.spawn_graceful(Duration::ZERO, {
        let cleaned = cleaned.clone();
        move |ctx| polite_worker(ctx, Duration::from_millis(100), cleaned)
    });
    let state = ProbeState::default();
    let probe = state.probe(0);
    let stubborn = ctx.spawn_graceful(Duration::ZERO, move |_| probe);
    tokio::task::yield_now().await;
    assert_eq!(state.polls(), 1, "the task started");
    cancel.cancel();
    let cancelled_at = Instant::now();
    assert_eq!(or_hang(polite).await, Err(Error::Canceled));
    assert_eq!(or_hang(stubborn).await, Err(Error::Canceled));
    assert_eq!(cancelled_at.elapsed(), Duration::ZERO);
    assert_eq!(
        cleaned.load(Ordering::SeqCst),
        0,
        "no cleanup, as under `spawn`"
    );
    assert_eq!(state.polls(), 1);
    assert!(state.dropped());

    // On a context already done: the future never runs.
    let state = ProbeState::default();
    let probe = state.probe(1);
    let task = ctx.spawn_graceful(Duration::ZERO, move |_| probe);
    assert_eq!(or_hang(task).await, Err(Error::Canceled));
    assert_eq!(state.polls(), 0, "never polled, as under `spawn`");
    assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn spawn_graceful_with_an_endless_grace_is_never_dropped_by_its_context() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_cancel();
    let month = Duration::from_secs(30 * 24 * 3600);
    let cleaned = Arc::new(AtomicUsize::new(0));
    let slow = ctx.spawn_graceful(Duration::MAX, {
        let cleaned = cleaned.clone();
        move |ctx| polite_worker(ctx, month, cleaned)
    });
    let state = ProbeState::default();
    let probe = state.probe(0);
    let stubborn = ctx.spawn_graceful(Duration::MAX, move |_| probe);
    cancel.cancel();
    assert_eq!(or_hang(slow).await, Ok(Error::Canceled));
    assert_eq!(
        cleaned.load(Ordering::SeqCst),
        1,
        "a month of cleanup, all of it run"
    );

    sleep(month).await;
    assert!(!stubborn.is_finished(), "the context never drops it");
    assert!(!state.dropped());
    stubborn.abort();
    assert_eq!(
        or_hang(stubborn).await,
        Err(Error::Canceled),
        "only an abort stops it"
    );
    assert!(state.dropped());
    assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn run_with_grace_stays_pending_once_it_has_returned_and_polls_nothing() {
    let (ctx, cancel) = Context::background().with_cancel();
    let state = ProbeState::default();
    let mut run = Box::pin(ctx.run_with_grace(Duration::from_secs(1), state.probe(2)));
    assert!((&mut run).now_or_never().is_none());
    cancel.cancel();
    assert_eq!((&mut run).now_or_never(), Some(Ok("probe finished")));
    assert_eq!(
        state.polls(),
        2,
        "polled within its grace, and finished there"
    );
    assert!(
        (&mut run).now_or_never().is_none(),
        "pending once it has returned"
    );
    assert_eq!(state.polls(), 2);
}

// ---------------------------------------------------------------------------------------------
// after_func

#[test]
fn cancel_from_inside_an_after_func_does_not_deadlock() {
    hang_guard(|| {
        let (a, cancel_a) = Context::background().with_cancel();
        let cancel_a = Arc::new(cancel_a);
        let (b, cancel_b) = Context::background().with_cancel_cause();
        let (parent, cancel_parent) = Context::background().with_cancel_cause();
        let (child, cancel_child) = parent.with_cancel();

        let same = cancel_a.clone();
        let (born_tx, born_rx) = mpsc::channel();
        let a_for_cb = a.clone().with_value("a").without_cancel(); // values only, no cycle
        let _on_a = a.after_func(move || {
            same.cancel(); // the context that is running this callback
            cancel_b.cancel("cancelled from a's callback"); // another context
            let _ = born_tx.send(a_for_cb.value::<&str>().copied());
        });
        let _on_child = child.after_func(move || cancel_parent.cancel("child cancelled parent"));

        cancel_a.cancel();
        assert_eq!(a.err(), Some(Error::Canceled));
        assert_eq!(b.err(), Some(Error::Canceled));
        assert_eq!(
            b.cause().unwrap().to_string(),
            "cancelled from a's callback"
        );
        assert_eq!(born_rx.try_recv(), Ok(Some("a")));

        cancel_child.cancel();
        assert_eq!(parent.err(), Some(Error::Canceled));
        assert_eq!(
            parent.cause().unwrap().to_string(),
            "child cancelled parent"
        );
    });
}

#[test]
fn after_func_may_derive_and_register_on_its_own_done_context() {
    hang_guard(|| {
        let (ctx, cancel) = Context::background().with_cancel_cause();
        let inner_ran = Arc::new(AtomicBool::new(false));
        let observed = Arc::new(Mutex::new(None));
        let ctx_in_cb = ctx.clone();
        let (flag, out) = (inner_ran.clone(), observed.clone());
        let _r = ctx.after_func(move || {
            let (child, _c) = ctx_in_cb.with_timeout(Duration::from_secs(1));
            let nested = ctx_in_cb.after_func(move || flag.store(true, Ordering::SeqCst));
            *out.lock().unwrap() = Some((child.err(), nested.stop()));
        });
        cancel.cancel("bye");
        assert!(
            inner_ran.load(Ordering::SeqCst),
            "a callback on a done context runs at once"
        );
        assert_eq!(
            *observed.lock().unwrap(),
            Some((Some(Error::Canceled), false)),
            "a child of a done context is born done; the nested callback already ran"
        );
    });
}

#[test]
fn cancel_from_inside_a_deadline_fired_callback_does_not_deadlock() {
    hang_guard(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let (root, _cancel_root) = Context::background().with_cancel();
            let (a, _cancel_a) = root.with_timeout(Duration::from_secs(1));
            let (b, cancel_b) = root.with_timeout(Duration::from_secs(3600));
            let made: Arc<Mutex<Option<(Context, CancelHandle)>>> = Arc::default();
            let (made_in_cb, root_in_cb) = (made.clone(), root.clone());
            let _r = a.after_func(move || {
                cancel_b.cancel(); // drops b's armed timer from inside the timer wheel's wake
                *made_in_cb.lock().unwrap() = Some(root_in_cb.with_timeout(Duration::from_secs(5)));
            });
            assert_eq!(a.done().await, Error::DeadlineExceeded);
            assert_eq!(b.err(), Some(Error::Canceled));
            let (c, _cancel_c) = made.lock().unwrap().take().expect("callback ran");
            assert!(!c.is_done());
            advance(Duration::from_secs(5)).await;
            assert_eq!(
                c.err(),
                Some(Error::DeadlineExceeded),
                "timer armed in a callback fires"
            );
        });
    });
}

#[test]
fn stop_called_inside_its_own_callback_returns_false() {
    hang_guard(|| {
        let (ctx, cancel) = Context::background().with_cancel();
        let registration: Arc<OnceLock<AfterFunc>> = Arc::default();
        let result = Arc::new(Mutex::new(None));
        let (reg, out) = (registration.clone(), result.clone());
        let handle = ctx.after_func(move || {
            let stopped = reg.get().expect("registration stored").stop();
            *out.lock().unwrap() = Some(stopped);
        });
        assert!(registration.set(handle).is_ok());
        cancel.cancel();
        assert_eq!(*result.lock().unwrap(), Some(false));
        assert!(
            !registration.get().unwrap().stop(),
            "still false afterwards"
        );
    });
}

#[test]
fn stop_on_a_sibling_callback_during_cancellation_returns_false_and_sibling_runs() {
    hang_guard(|| {
        let (ctx, cancel) = Context::background().with_cancel();
        let other: Arc<OnceLock<AfterFunc>> = Arc::default();
        let stop_result = Arc::new(Mutex::new(None));
        let other_ran = Arc::new(AtomicBool::new(false));
        let (o, out) = (other.clone(), stop_result.clone());
        let _first = ctx.after_func(move || *out.lock().unwrap() = Some(o.get().unwrap().stop()));
        let ran = other_ran.clone();
        let second = ctx.after_func(move || ran.store(true, Ordering::SeqCst));
        assert!(other.set(second).is_ok());
        cancel.cancel();
        let stopped = stop_result.lock().unwrap().expect("first callback ran");
        assert!(
            stopped != other_ran.load(Ordering::SeqCst),
            "exactly one of: stop() prevented it, or it ran"
        );
        assert!(
            !stopped,
            "cancellation had already taken the sibling to run"
        );
    });
}

#[test]
fn after_func_has_run_when_cancel_returns_and_never_runs_twice() {
    let (ctx, cancel) = Context::background().with_cancel();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let registration = ctx.after_func(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    cancel.cancel();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    cancel.cancel();
    drop(cancel);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(!registration.stop());
}

#[test]
fn after_func_on_a_never_done_context_is_dropped_and_stop_reports_true_once() {
    let marker = Arc::new(());
    let m = marker.clone();
    let registration = Context::background().after_func(move || drop(m));
    assert_eq!(
        Arc::strong_count(&marker),
        1,
        "the callback was dropped unrun"
    );
    assert!(registration.stop());
    assert!(!registration.stop());
}

#[tokio::test]
async fn done_future_in_select_loop_sees_cancellation_from_another_task() {
    let (ctx, cancel) = Context::background().with_cancel();
    let worker = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            let mut ticks = 0u32;
            loop {
                futures::select_biased! {
                    err = ctx.done().fuse() => return (err, ticks),
                    _ = tokio::task::yield_now().fuse() => ticks += 1,
                }
            }
        }
    });
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
    cancel.cancel();
    let (err, _ticks) = worker.await.unwrap();
    assert_eq!(err, Error::Canceled);
}
