//! The `futures` feature: every future of the crate is a `FusedFuture`, terminated exactly once
//! it has returned `Ready` (and not before, even when its context is already done), so
//! `futures::select!` takes them without `.fuse()`; and `Context::take_until_done`, a stream of
//! `Ok` items that ends with one `Err` once its context is done, or with its stream's end.
//! Time is Tokio's paused clock; a wait that could hang runs under `tokio::time::timeout`.

#![cfg(feature = "futures")]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use futures::channel::mpsc;
use futures::future::FusedFuture;
use futures::stream::{self, FusedStream, Stream, StreamExt};
use taskctx::{Context, Error, TaskGroup};

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

#[tokio::test(start_paused = true)]
async fn group_futures_are_terminated_once_they_have_delivered() {
    let group = TaskGroup::new(&Context::background());
    group
        .spawn("worker", |ctx| async move {
            ctx.done().await;
            Ok::<(), Error>(())
        })
        .unwrap();
    let mut stopped = group.handle().shutdown("stop", Duration::from_secs(1));
    assert!(!stopped.is_terminated());
    (&mut stopped).await;
    assert!(stopped.is_terminated());
    assert_eq!(
        futures::poll!(&mut stopped),
        Poll::Ready(()),
        "ready again, as it is done"
    );

    let mut shutdown = group.shutdown("again", Duration::from_secs(1));
    assert!(!shutdown.is_terminated());
    assert_eq!((&mut shutdown).await.tasks().len(), 1);
    assert!(shutdown.is_terminated());
    assert!(
        futures::poll!(&mut shutdown).is_pending(),
        "the report is delivered once"
    );

    let mut wait = TaskGroup::new(&Context::background()).wait();
    assert!(!wait.is_terminated());
    assert!((&mut wait).await.tasks().is_empty());
    assert!(wait.is_terminated());
    assert!(futures::poll!(&mut wait).is_pending());
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

// ---------------------------------------------------------------------------------------------
// take_until_done

#[tokio::test]
async fn take_until_done_ends_with_the_error_after_a_cancel() {
    let (ctx, cancel) = Context::background().with_cancel();
    let (tx, rx) = mpsc::unbounded();
    let mut stream = ctx.take_until_done(rx);
    tx.unbounded_send(1).unwrap();
    tx.unbounded_send(2).unwrap();
    assert_eq!(stream.next().await, Some(Ok(1)));
    assert_eq!(stream.next().await, Some(Ok(2)));
    assert!(!stream.is_terminated());

    cancel.cancel();
    tx.unbounded_send(3).unwrap(); // ready, but the context is checked first
    assert_eq!(stream.next().await, Some(Err(Error::Canceled)));
    assert!(stream.is_terminated());
    assert_eq!(stream.next().await, None);
    assert_eq!(stream.next().await, None, "ended for good");
    assert_eq!(stream.size_hint(), (0, Some(0)));
}

#[tokio::test(start_paused = true)]
async fn take_until_done_ends_with_deadline_exceeded_when_the_deadline_fires() {
    let (ctx, _cancel) = Context::background().with_timeout(25 * MS);
    let ticks = IntervalStream(tokio::time::interval(10 * MS));
    let got: Vec<_> = ctx
        .take_until_done(ticks)
        .map(|tick| tick.map(drop))
        .collect()
        .await;
    assert_eq!(
        got,
        [Ok(()), Ok(()), Ok(()), Err(Error::DeadlineExceeded)],
        "ticks at 0, 10 and 20 ms"
    );
}

#[tokio::test]
async fn take_until_done_ends_without_error_when_the_stream_ends_first() {
    let (ctx, cancel) = Context::background().with_cancel();
    let mut stream = ctx.take_until_done(stream::iter([1, 2]));
    assert_eq!(stream.size_hint(), (1, Some(3)));
    assert_eq!(stream.next().await, Some(Ok(1)));
    assert_eq!(stream.next().await, Some(Ok(2)));
    assert_eq!(stream.next().await, None);
    assert!(stream.is_terminated());

    cancel.cancel();
    assert_eq!(stream.next().await, None, "no error after the end");
    assert_eq!(
        ctx.take_until_done(stream::empty::<()>()).size_hint(),
        (0, Some(1))
    );
}

#[tokio::test]
async fn take_until_done_checks_the_context_before_the_stream() {
    let (ctx, cancel) = Context::background().with_cancel();
    let polls = Arc::new(AtomicUsize::new(0));
    let counted = polls.clone();
    let always_ready = stream::poll_fn(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Some("item"))
    });
    let mut stream = ctx.take_until_done(always_ready);
    assert_eq!(stream.next().await, Some(Ok("item")));
    cancel.cancel();
    assert_eq!(stream.next().await, Some(Err(Error::Canceled)));
    assert_eq!(stream.next().await, None);
    assert_eq!(
        polls.load(Ordering::SeqCst),
        1,
        "not polled once the context was done"
    );
}

#[tokio::test(start_paused = true)]
async fn take_until_done_wakes_when_the_context_is_done_while_the_stream_waits() {
    let (ctx, cancel) = Context::background().with_cancel();
    let canceller = Context::background().spawn(move |_| async move {
        tokio::time::sleep(10 * MS).await;
        cancel.cancel();
    });
    let mut stream = ctx.take_until_done(stream::pending::<u8>());
    let next = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
    assert_eq!(
        next,
        Ok(Some(Err(Error::Canceled))),
        "woken by the cancel, not the watchdog"
    );
    assert_eq!(canceller.await, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn take_until_done_next_dropped_while_waiting_loses_nothing() {
    let (ctx, cancel) = Context::background().with_cancel();
    let (tx, rx) = mpsc::unbounded();
    let mut stream = ctx.take_until_done(rx);
    let gave_up = tokio::time::timeout(10 * MS, stream.next()).await;
    assert!(gave_up.is_err());

    tx.unbounded_send(1).unwrap();
    assert_eq!(
        stream.next().await,
        Some(Ok(1)),
        "the item after a dropped next()"
    );
    let gave_up = tokio::time::timeout(10 * MS, stream.next()).await;
    assert!(gave_up.is_err());
    cancel.cancel();
    assert_eq!(
        stream.next().await,
        Some(Err(Error::Canceled)),
        "and the error"
    );
}

#[test]
fn take_until_done_is_static_and_send_for_a_static_send_stream() {
    fn assert_static_send<T: Send + 'static>(_: &T) {}
    let stream = {
        let (ctx, _cancel) = Context::background().with_cancel();
        ctx.take_until_done(stream::iter([1]))
    }; // the context and its handle are gone; the stream keeps what it needs
    assert_static_send(&stream);
    let got: Vec<_> = futures::executor::block_on(stream.collect());
    assert_eq!(
        got,
        [Err(Error::Canceled)],
        "its handle's drop cancelled it"
    );
}

/// `tokio::time::Interval` as a `Stream`, without `tokio-stream`.
struct IntervalStream(tokio::time::Interval);

impl Stream for IntervalStream {
    type Item = tokio::time::Instant;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_tick(cx).map(Some)
    }
}
