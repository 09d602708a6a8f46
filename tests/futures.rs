//! The `futures` feature: every future of the crate is a `FusedFuture`, terminated exactly once
//! it has returned `Ready` (and not before, even when its context is already done), so
//! `futures::select!` takes them without `.fuse()`.
//! Time is Tokio's paused clock.

#![cfg(feature = "futures")]

use std::task::Poll;
use std::time::Duration;

use futures::future::FusedFuture;
use taskctx::{Context, Error};

const MS: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------------------------
// FusedFuture

#[tokio::test]
async fn done_is_terminated_once_ready_and_not_before() {
    let (ctx, cancel) = Context::background().with_cancel();
    let mut done = ctx.done();
    assert!(!done.is_terminated());
    assert_eq!(futures::poll!(&mut done), Poll::Pending);
    assert!(!done.is_terminated());
    cancel.cancel();
    assert!(
        !done.is_terminated(),
        "done, but its error not yet delivered"
    );
    assert_eq!(futures::poll!(&mut done), Poll::Ready(Error::Canceled));
    assert!(done.is_terminated());

    let mut owned = ctx.done_owned();
    assert!(
        !owned.is_terminated(),
        "a done context's new future still has to deliver"
    );
    assert_eq!((&mut owned).await, Error::Canceled);
    assert!(owned.is_terminated());

    let mut signal = ctx.cancelled_owned();
    assert!(!signal.is_terminated());
    (&mut signal).await;
    assert!(signal.is_terminated());

    let never = Context::background();
    let mut never_done = never.done();
    assert_eq!(futures::poll!(&mut never_done), Poll::Pending);
    assert!(!never_done.is_terminated());
}

#[tokio::test(start_paused = true)]
async fn run_until_cancelled_and_with_timeout_are_terminated_once_ready() {
    let (ctx, cancel) = Context::background().with_cancel();
    let mut run = Box::pin(ctx.run_until_cancelled(async { 1 }));
    assert!(!run.is_terminated());
    assert_eq!(run.as_mut().await, Ok(1));
    assert!(run.is_terminated());

    let mut cut = Box::pin(ctx.run_until_cancelled(std::future::pending::<()>()));
    cancel.cancel();
    assert!(!cut.is_terminated());
    assert_eq!(cut.as_mut().await, Err(Error::Canceled));
    assert!(cut.is_terminated());

    let root = Context::background();
    let mut guarded = Box::pin(taskctx::with_timeout(&root, MS, |_| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }));
    assert!(!guarded.is_terminated());
    assert_eq!(guarded.as_mut().await, Err(Error::DeadlineExceeded));
    assert!(guarded.is_terminated());
}

#[tokio::test(start_paused = true)]
async fn task_handle_is_terminated_once_it_has_delivered() {
    let mut task = Context::background().spawn(|_| async { 7 });
    assert!(!task.is_terminated());
    tokio::task::yield_now().await;
    assert!(task.is_finished());
    assert!(
        !task.is_terminated(),
        "finished, but its output not yet delivered"
    );
    assert_eq!((&mut task).await, Ok(7));
    assert!(task.is_terminated());
}

// ---------------------------------------------------------------------------------------------
// futures::select!

#[tokio::test(start_paused = true)]
async fn select_on_done_without_fuse_sees_the_cancellation() {
    let (ctx, cancel) = Context::background().with_cancel();
    let canceller = Context::background().spawn(move |_| async move {
        tokio::time::sleep(10 * MS).await;
        cancel.cancel();
    });
    let (never, _keep) = Context::background().with_cancel();
    let err = futures::select! {
        err = ctx.done() => err,
        err = never.done() => panic!("a context nobody cancels was done: {err}"),
    };
    assert_eq!(err, Error::Canceled);
    assert_eq!(canceller.await, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn select_loop_skips_what_has_delivered_and_waits_for_done() {
    let (ctx, _cancel) = Context::background().with_timeout(100 * MS);
    // Reused across iterations: after their first output, `select!` must not poll them again
    // (a `JoinHandle` would panic, an `async` block too).
    let mut task = ctx.spawn(|_| async { 7 });
    let mut quick = Box::pin(ctx.run_until_cancelled(async { "quick" }));
    let mut done = ctx.done_owned();
    let mut seen = Vec::new();
    let err = loop {
        futures::select! {
            out = task => seen.push(format!("task {out:?}")),
            out = quick => seen.push(format!("quick {out:?}")),
            err = done => break err,
        }
    };
    assert_eq!(err, Error::DeadlineExceeded);
    seen.sort();
    assert_eq!(seen, ["quick Ok(\"quick\")", "task Ok(7)"]);
    assert!(task.is_terminated() && quick.is_terminated() && done.is_terminated());
}
