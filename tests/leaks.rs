//! Leaks: nothing of a derived context (registration, timer, token watch, waiter, task, value)
//! outlives its last handle or its cancellation. Checked with `taskctx::testing::census`,
//! `assert_no_leaks`, and the strong count of a marker `Arc` stored in contexts.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use taskctx::testing::{Census, assert_no_leaks, census};
use taskctx::{Context, Error};
use tokio::time::advance;
use tokio_util::sync::CancellationToken;

/// A value stored in contexts; its strong count says how many contexts still hold it.
#[derive(Clone)]
struct Marker(Arc<()>);

impl Marker {
    fn new() -> Self {
        Marker(Arc::new(()))
    }
    fn holders(&self) -> usize {
        Arc::strong_count(&self.0) - 1
    }
}

fn counts(c: Census) -> (usize, usize, usize, usize, usize) {
    (c.contexts, c.timers, c.token_watches, c.tasks, c.waiters)
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_derive_drop_cycles_leave_nothing_registered_in_a_long_lived_parent() {
    const CYCLES: usize = 10_000;
    let (root, _cancel_root) = Context::background().with_cancel();
    let (other, _cancel_other) = Context::background().with_cancel();
    let marker = Marker::new();
    for cycle in 0..CYCLES {
        let during = match cycle % 8 {
            0 => {
                let (ctx, _cancel) = root.with_cancel();
                let _ = futures::poll!(ctx.done()); // registers a waiter, then drops it
                census(&root)
            }
            1 => {
                let (ctx, cancel) = root.with_cancel();
                cancel.disarm();
                let ctx = ctx.with_value(marker.clone());
                let during = census(&root);
                drop(ctx);
                during
            }
            2 => {
                let (_ctx, _cancel) = root.with_timeout(Duration::from_secs(30));
                census(&root)
            }
            3 => {
                let (ctx, cancel) = root.with_timeout(Duration::from_secs(30));
                cancel.disarm();
                let during = census(&root);
                drop(ctx);
                during
            }
            4 => {
                let (_ctx, _cancel) = root
                    .with_value(marker.clone())
                    .with_deadline_cause(tokio::time::Instant::now() + Duration::from_secs(1), "x");
                census(&root)
            }
            5 => {
                let _merged = root.merge(&other);
                assert_eq!(census(&other).contexts, 1);
                census(&root)
            }
            6 => {
                let ctx = root.with_token(CancellationToken::new());
                let during = census(&root);
                drop(ctx);
                during
            }
            _ => {
                let (ctx, _cancel) = root.with_cancel();
                let (_grandchild, _c) = ctx.with_timeout(Duration::from_secs(5));
                let _stopped = ctx.after_func(|| {}).stop();
                census(&root)
            }
        };
        assert!(
            during.contexts >= 1,
            "cycle {cycle}: the child was registered: {during}"
        );
        let after = census(&root);
        assert_eq!(counts(after), (0, 0, 0, 0, 0), "cycle {cycle}: {after}");
        assert_eq!(after.callbacks, 0, "cycle {cycle}: {after}");
    }
    assert!(census(&other).is_clean(), "{}", census(&other));
    assert_eq!(
        marker.holders(),
        0,
        "every value stored in a cycle was dropped"
    );
    // Timers of the cycles were disarmed, not merely forgotten: nothing fires later.
    advance(Duration::from_secs(60)).await;
    assert!(!root.is_done());
    assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn census_sees_timers_token_watches_waiters_and_callbacks_while_alive() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (a, _ca) = root.with_timeout(Duration::from_secs(5));
    let b = a.with_token(CancellationToken::new());
    let _registration = b.after_func(|| {});
    let mut waiter = Box::pin(b.done_owned());
    assert_eq!(futures::poll!(waiter.as_mut()), Poll::Pending);
    let c = census(&root);
    assert_eq!(
        (
            c.contexts,
            c.timers,
            c.token_watches,
            c.waiters,
            c.callbacks
        ),
        (2, 1, 1, 1, 1),
        "{c}"
    );
    drop(waiter);
    assert_eq!(census(&root).waiters, 0);
}

#[tokio::test(start_paused = true)]
async fn cancelled_child_leaves_the_parent_at_once_while_still_held() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (child, cancel) = root.with_cancel();
    let (grandchild, _c) = child.with_timeout(Duration::from_secs(60));
    assert_eq!((census(&root).contexts, census(&root).timers), (2, 1));
    cancel.cancel();
    assert!(child.is_done() && grandchild.is_done());
    let left = census(&root);
    assert_eq!(counts(left), (0, 0, 0, 0, 0), "{left}");

    // The same when a deadline fires.
    let (timed, _cancel_timed) = root.with_timeout(Duration::from_secs(1));
    assert_eq!(census(&root).timers, 1);
    advance(Duration::from_secs(1)).await;
    assert_eq!(timed.err(), Some(Error::DeadlineExceeded));
    assert!(census(&root).is_clean(), "{}", census(&root));

    // And a merge leaves both of its parents.
    let (other, cancel_other) = Context::background().with_cancel();
    let merged = root.merge(&other);
    assert_eq!((census(&root).contexts, census(&other).contexts), (1, 1));
    drop(cancel_other);
    assert!(merged.is_done());
    assert_eq!(census(&root).contexts, 0, "the merge left its live parent");
}

#[tokio::test(start_paused = true)]
async fn dropping_every_clone_of_a_disarmed_child_deregisters_it() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let marker = Marker::new();
    let (child, cancel) = root.with_timeout(Duration::from_secs(60));
    cancel.disarm();
    let clone = child.clone();
    let valued = child.with_value(marker.clone());
    let done = child.done_owned();
    let mut holders: Vec<Box<dyn Send>> = vec![
        Box::new(child),
        Box::new(clone),
        Box::new(valued),
        Box::new(done),
    ];
    while let Some(holder) = holders.pop() {
        let before = census(&root);
        assert_eq!((before.contexts, before.timers), (1, 1), "{before}");
        drop(holder);
    }
    let after = census(&root);
    assert_eq!(counts(after), (0, 0, 0, 0, 0), "{after}");
    assert_eq!(marker.holders(), 0);
    advance(Duration::from_secs(120)).await;
    assert!(!root.is_done());
}

/// Dropping the last handle after every clone of its context releases it without a cancel
/// when nothing could observe one; what could observe one is still told.
#[tokio::test]
async fn last_handle_dropped_after_its_context_unregisters_it_and_still_runs_its_callbacks() {
    let (root, _cancel_root) = Context::background().with_cancel();
    for _ in 0..3 {
        let (child, cancel) = root.with_cancel();
        assert_eq!(census(&root).contexts, 1);
        drop(child);
        drop(cancel);
        assert_eq!(census(&root).contexts, 0, "unregistered from the parent");
    }
    // A callback, a waiter or a child is an observer: the drop cancels, and they see it.
    let (child, cancel) = root.with_cancel();
    let (ran_tx, mut ran_rx) = tokio::sync::oneshot::channel();
    let _stop = child.after_func(move || ran_tx.send(()).unwrap());
    let (grandchild, _cancel_grandchild) = child.with_cancel();
    let waiter = child.done_owned();
    drop(child);
    drop(cancel);
    assert_eq!(ran_rx.try_recv(), Ok(()), "the callback ran");
    assert_eq!(grandchild.err(), Some(Error::Canceled));
    assert_eq!(waiter.await, Error::Canceled);
    drop(grandchild);
    assert_no_leaks(&root).await;
}

#[tokio::test]
async fn spawned_tasks_are_counted_until_they_finish() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, _cancel) = root.with_cancel();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<u32>();
    let task = ctx.spawn(|_| async move { finish_rx.await.unwrap() });
    let on_root = root.spawn(|_| async { 1 });
    assert_eq!(census(&root).tasks, 2);
    assert_eq!(on_root.await, Ok(1));
    assert_eq!(census(&root).tasks, 1);
    finish_tx.send(7).unwrap();
    assert_eq!(task.await, Ok(7));
    assert_eq!(census(&root).tasks, 0);
    drop(ctx);
    drop(_cancel);
    assert_no_leaks(&root).await;
}

#[tokio::test]
async fn tasks_detached_with_without_cancel_count_in_the_requests_census_until_they_end() {
    let (root, cancel_root) = Context::background().with_cancel();
    let detached = root.with_value(3u8).without_cancel();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let (below, _cancel_below) = detached.with_timeout(Duration::from_secs(60));
    let direct = detached.spawn(|_| async move { finish_rx.await.unwrap() });
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let nested = below.spawn(|_| async move { release_rx.await.unwrap() });
    assert_eq!(
        census(&root).tasks,
        2,
        "detached work shows in the request's census"
    );
    assert_eq!(
        census(&root).contexts,
        0,
        "contexts below without_cancel are not registered"
    );

    cancel_root.cancel(); // the request ends; the detached work goes on, and is still counted
    tokio::task::yield_now().await;
    assert_eq!(census(&root).tasks, 2);
    finish_tx.send(()).unwrap();
    assert_eq!(direct.await, Ok(()));
    release_tx.send(()).unwrap();
    assert_eq!(nested.await, Ok(()));
    assert_no_leaks(&root).await;
}

#[tokio::test]
async fn task_of_a_cancelled_child_is_counted_until_it_ends() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_cancel();
    let (alive_tx, mut alive_rx) = tokio::sync::oneshot::channel::<()>();
    let task = ctx.spawn(move |_| async move {
        let _alive = alive_tx; // dropped with the task's future
        std::future::pending::<()>().await
    });
    tokio::task::yield_now().await;
    assert_eq!(census(&root).tasks, 1);

    cancel.cancel();
    // The task has been told to stop but has not run since: its future still exists.
    assert_eq!(
        alive_rx.try_recv(),
        Err(tokio::sync::oneshot::error::TryRecvError::Empty)
    );
    assert_eq!(
        census(&root).tasks,
        1,
        "a task that has not ended must still be counted (Census::tasks, assert_no_leaks docs)"
    );
    assert_eq!(task.await, Err(Error::Canceled));
    assert_eq!(census(&root).tasks, 0);
}

#[tokio::test]
async fn assert_no_leaks_waits_for_a_stopping_task_of_a_cancelled_child() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_cancel();
    let (alive_tx, mut alive_rx) = tokio::sync::oneshot::channel::<()>();
    drop(ctx.spawn(move |_| async move {
        let _alive = alive_tx;
        std::future::pending::<()>().await
    }));
    cancel.cancel();
    assert_no_leaks(&root).await;
    assert_eq!(
        alive_rx.try_recv(),
        Err(tokio::sync::oneshot::error::TryRecvError::Closed),
        "assert_no_leaks returned while the task's future was still alive"
    );
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "still alive")]
async fn assert_no_leaks_fails_when_a_child_is_still_registered() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (_child, _cancel) = root.with_cancel();
    assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn value_stored_in_a_dropped_context_is_dropped() {
    let marker = Marker::new();

    // Directly, and below a cancellable context.
    let ctx = Context::background().with_value(marker.clone());
    let (below, cancel) = ctx.with_cancel();
    let deeper = below.with_value(1u8);
    drop(ctx);
    assert_eq!(marker.holders(), 1);
    cancel.cancel();
    assert_eq!(
        marker.holders(),
        1,
        "a cancelled context still held keeps its values"
    );
    drop((below, deeper));
    assert_eq!(marker.holders(), 1, "the handle still holds its context");
    drop(cancel);
    assert_eq!(marker.holders(), 0);

    // An armed timer does not keep its context, or the values above it, alive.
    let (root, _cancel_root) = Context::background().with_cancel();
    let (timed, cancel) = root
        .with_value(marker.clone())
        .with_timeout(Duration::from_secs(60));
    cancel.disarm();
    assert_eq!(marker.holders(), 1);
    drop(timed);
    assert_eq!(marker.holders(), 0);
    assert!(census(&root).is_clean());

    // Held by a spawned task until it ends.
    let (ctx, cancel) = Context::background()
        .with_value(marker.clone())
        .with_cancel();
    let task = ctx.spawn(|ctx| async move { ctx.done().await });
    drop(ctx);
    assert_eq!(marker.holders(), 1);
    cancel.cancel();
    let stopped = task.await;
    assert!(
        matches!(stopped, Err(Error::Canceled) | Ok(Error::Canceled)),
        "{stopped:?}"
    );
    drop(cancel); // the handle holds its context too
    assert_eq!(
        marker.holders(),
        0,
        "the task's clone of the context was dropped"
    );

    // Via a merge's other parent.
    let other = Context::background().with_value(marker.clone());
    let (base, _c) = Context::background().with_cancel();
    let merged = base.merge(&other);
    drop(other);
    assert_eq!(marker.holders(), 1);
    drop(merged);
    assert_eq!(marker.holders(), 0);
}

#[tokio::test(start_paused = true)]
async fn after_func_callbacks_are_dropped_with_their_context_or_after_running() {
    let marker = Marker::new();

    // Never done: the callback goes with the context.
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.disarm();
    let m = marker.clone();
    let registration = ctx.after_func(move || drop(m));
    assert_eq!(marker.holders(), 1);
    drop((ctx, registration));
    assert_eq!(
        marker.holders(),
        0,
        "the unrun callback was dropped with its context"
    );

    // Done: the callback is dropped once it has run.
    let (ctx, cancel) = Context::background().with_cancel();
    let m = marker.clone();
    let _registration = ctx.after_func(move || {
        let _keep = &m;
    });
    cancel.cancel();
    assert_eq!(
        marker.holders(),
        0,
        "the callback was dropped after running"
    );

    // Stopped: the callback is dropped by stop().
    let (ctx, _cancel) = Context::background().with_cancel();
    let m = marker.clone();
    let registration = ctx.after_func(move || drop(m));
    assert!(registration.stop());
    assert_eq!(marker.holders(), 0, "stop() dropped the callback");
    assert_eq!(census(&ctx).callbacks, 0);
}

#[tokio::test]
async fn waiters_of_aborted_tasks_and_dropped_done_futures_are_removed() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, _cancel) = root.with_cancel();
    let waiting: Vec<_> = (0..10).map(|_| tokio::spawn(ctx.done_owned())).collect();
    while census(&root).waiters < 10 {
        tokio::task::yield_now().await;
    }
    for task in &waiting {
        task.abort();
    }
    for task in waiting {
        assert!(task.await.unwrap_err().is_cancelled());
    }
    assert_eq!(census(&root).waiters, 0);
    assert!(!ctx.is_done());
}

#[test]
fn after_func_handle_does_not_keep_its_context_or_values_alive() {
    let marker = Marker::new();
    let (ctx, cancel) = Context::background()
        .with_value(marker.clone())
        .with_cancel();
    let registration = ctx.after_func(|| {});
    cancel.cancel(); // runs the callback
    drop(ctx);
    drop(cancel);

    assert_eq!(
        marker.holders(),
        0,
        "the AfterFunc handle no longer pins the chain"
    );
    assert!(!registration.stop(), "the callback already ran");
}

#[test]
fn stop_on_a_released_context_reports_that_it_prevented_nothing() {
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.disarm();
    let flag = ran.clone();
    let registration =
        ctx.after_func(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
    drop(ctx); // released live: the callback is dropped unrun

    assert!(!registration.stop());
    assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
}
