//! Deadlines and timeouts: when a deadline fires, which error and cause it reports, how
//! deadlines combine down the tree, and that cancelling first disarms the timer. Time is
//! Tokio's paused clock, moved by `tokio::time::advance`, except in the multi-thread tests and
//! those outside a runtime.

use std::time::Duration;

use taskctx::testing::census;
use taskctx::{Context, Error};
use tokio::time::{Instant, advance};

const MS: Duration = Duration::from_millis(1);

fn cause_text(ctx: &Context) -> Option<String> {
    ctx.cause().map(|cause| cause.to_string())
}

#[tokio::test(start_paused = true)]
async fn deadline_fires_exactly_at_the_deadline_with_deadline_exceeded() {
    let at = Instant::now() + Duration::from_millis(100);
    let (ctx, _cancel) = Context::background().with_deadline(at);
    assert_eq!(ctx.deadline(), Some(at));

    advance(Duration::from_millis(99)).await;
    assert!(!ctx.is_done(), "done 1ms before the deadline");
    assert_eq!(ctx.err(), None);
    assert!(ctx.cause().is_none());

    advance(MS).await;
    assert_eq!(Instant::now(), at);
    assert!(
        ctx.is_done(),
        "not done once the clock reached the deadline"
    );
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    let cause = ctx.cause().expect("a done context has a cause");
    assert_eq!(
        cause.downcast_ref::<Error>(),
        Some(&Error::DeadlineExceeded)
    );
    assert_eq!(ctx.done().await, Error::DeadlineExceeded);
}

#[tokio::test(start_paused = true)]
async fn awaiting_done_wakes_at_the_deadline_and_not_before() {
    let at = Instant::now() + Duration::from_secs(3);
    let (ctx, _cancel) = Context::background().with_deadline(at);
    assert_eq!(ctx.done().await, Error::DeadlineExceeded);
    assert_eq!(
        Instant::now(),
        at,
        "the paused clock auto-advanced to the deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn child_deadline_is_never_later_than_the_parents() {
    let parent_at = Instant::now() + Duration::from_secs(1);
    let (parent, _cancel_parent) =
        Context::background().with_deadline_cause(parent_at, "parent budget");
    let (child, _cancel_child) = parent.with_timeout_cause(Duration::from_secs(60), "child budget");
    assert_eq!(child.deadline(), Some(parent_at));
    // Through a value context too.
    let (grandchild, _cancel_grandchild) = parent
        .with_value(7u32)
        .with_deadline(Instant::now() + Duration::from_secs(5));
    assert_eq!(grandchild.deadline(), Some(parent_at));

    advance(Duration::from_secs(1)).await;
    for ctx in [&parent, &child, &grandchild] {
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded), "{ctx:?}");
        assert_eq!(cause_text(ctx).as_deref(), Some("parent budget"), "{ctx:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn child_with_earlier_deadline_fires_first_and_parent_stays_live() {
    let (parent, _cancel_parent) =
        Context::background().with_timeout_cause(Duration::from_secs(10), "parent budget");
    let (child, _cancel_child) = parent.with_timeout_cause(Duration::from_secs(1), "child budget");
    assert_eq!(
        child.deadline(),
        Some(Instant::now() + Duration::from_secs(1))
    );

    advance(Duration::from_secs(1)).await;
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_text(&child).as_deref(), Some("child budget"));
    assert_eq!(parent.err(), None, "cancellation never flows up");
    assert!(parent.cause().is_none());

    advance(Duration::from_secs(9)).await;
    assert_eq!(parent.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_text(&parent).as_deref(), Some("parent budget"));
    assert_eq!(
        cause_text(&child).as_deref(),
        Some("child budget"),
        "the first cancellation keeps its cause"
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_before_deadline_gives_canceled_and_disarms_the_timer() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_deadline_cause(Instant::now() + Duration::from_secs(1), "slow");
    let counted = census(&root);
    assert_eq!((counted.contexts, counted.timers), (1, 1));

    advance(Duration::from_millis(500)).await;
    cancel.cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled));
    let counted = census(&root);
    assert_eq!((counted.contexts, counted.timers), (0, 0));

    advance(Duration::from_secs(5)).await;
    assert_eq!(
        ctx.err(),
        Some(Error::Canceled),
        "a later deadline changes nothing"
    );
    assert_eq!(
        ctx.cause().unwrap().downcast_ref::<Error>(),
        Some(&Error::Canceled)
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_before_deadline_cancels_and_disarms() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_timeout(Duration::from_secs(1));
    assert_eq!(census(&root).timers, 1);
    drop(cancel);
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(census(&root).timers, 0);
}

#[tokio::test(start_paused = true)]
async fn remaining_counts_down_and_saturates_at_zero() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(10));
    assert_eq!(ctx.remaining(), Some(Duration::from_secs(10)));
    advance(Duration::from_secs(4)).await;
    assert_eq!(ctx.remaining(), Some(Duration::from_secs(6)));
    advance(Duration::from_millis(5_999)).await;
    assert_eq!(ctx.remaining(), Some(MS));
    advance(MS).await;
    assert_eq!(ctx.remaining(), Some(Duration::ZERO));
    assert!(ctx.is_done());
    advance(Duration::from_secs(100)).await;
    assert_eq!(
        ctx.remaining(),
        Some(Duration::ZERO),
        "saturates, never panics"
    );
    assert_eq!(Context::background().remaining(), None);
    let (plain, _c) = Context::background().with_cancel();
    assert_eq!(plain.remaining(), None);
}

#[tokio::test(start_paused = true)]
async fn zero_timeout_is_done_at_once_with_deadline_exceeded() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::ZERO);
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(
        ctx.cause().unwrap().downcast_ref::<Error>(),
        Some(&Error::DeadlineExceeded)
    );
    let (with_cause, _cancel) =
        Context::background().with_timeout_cause(Duration::ZERO, "no budget at all");
    assert_eq!(with_cause.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_text(&with_cause).as_deref(), Some("no budget at all"));
}

#[tokio::test(start_paused = true)]
async fn past_deadline_is_done_at_once_with_deadline_exceeded() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let past = Instant::now() - Duration::from_secs(1);
    let (ctx, _cancel) = root.with_deadline(past);
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(ctx.deadline(), Some(past));
    assert_eq!(ctx.remaining(), Some(Duration::ZERO));
    let (now, _cancel) = root.with_deadline(Instant::now());
    assert_eq!(
        now.err(),
        Some(Error::DeadlineExceeded),
        "a deadline of now has passed"
    );
    assert!(
        census(&root).is_clean(),
        "born-done children stay unregistered"
    );
}

#[tokio::test(start_paused = true)]
async fn duration_max_timeout_has_no_deadline_and_behaves_like_with_cancel() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_timeout(Duration::MAX);
    assert_eq!(ctx.deadline(), None);
    assert_eq!(ctx.remaining(), None);
    let counted = census(&root);
    assert_eq!((counted.contexts, counted.timers), (1, 0));

    advance(Duration::from_secs(60 * 60 * 24 * 365)).await;
    assert!(!ctx.is_done(), "a year later it is still live");

    cancel.cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert!(census(&root).is_clean());
}

#[tokio::test(start_paused = true)]
async fn deadline_cause_is_reported_only_when_the_deadline_fired() {
    let (fired, _cancel) =
        Context::background().with_timeout_cause(Duration::from_secs(1), "too slow");
    let (cancelled, cancel) =
        Context::background().with_timeout_cause(Duration::from_secs(1), "too slow");
    assert!(fired.cause().is_none(), "no cause while live");
    cancel.cancel();
    advance(Duration::from_secs(2)).await;

    assert_eq!(fired.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_text(&fired).as_deref(), Some("too slow"));
    assert_eq!(cancelled.err(), Some(Error::Canceled));
    assert_eq!(
        cancelled.cause().unwrap().downcast_ref::<Error>(),
        Some(&Error::Canceled),
        "the deadline's cause must not be reported for an explicit cancel"
    );
}

#[tokio::test(start_paused = true)]
async fn parent_cancel_before_child_deadline_gives_canceled_with_parents_cause() {
    let (parent, cancel_parent) = Context::background().with_cancel_cause();
    let (child, _cancel) = parent.with_timeout_cause(Duration::from_secs(1), "child budget");
    cancel_parent.cancel("shutting down");
    advance(Duration::from_secs(2)).await;
    assert_eq!(child.err(), Some(Error::Canceled));
    assert_eq!(cause_text(&child).as_deref(), Some("shutting down"));
}

#[tokio::test(start_paused = true)]
async fn deadline_derived_from_done_parent_is_born_done_with_parents_error() {
    let (parent, _cancel) = Context::background().with_timeout_cause(MS, "parent budget");
    advance(MS).await;
    assert!(parent.is_done());
    let (child, _cancel_child) = parent.with_timeout(Duration::from_secs(60));
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_text(&child).as_deref(), Some("parent budget"));
    assert_eq!(census(&parent).timers, 0);
}

#[tokio::test(start_paused = true)]
async fn merge_takes_the_earlier_deadline_and_its_cause() {
    let (a, _ca) = Context::background().with_timeout_cause(Duration::from_secs(5), "a");
    let (b, _cb) = Context::background().with_timeout_cause(Duration::from_secs(2), "b");
    let merged = a.merge(&b);
    assert_eq!(merged.deadline(), b.deadline());
    advance(Duration::from_secs(2)).await;
    assert_eq!(merged.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_text(&merged).as_deref(), Some("b"));
    assert!(!a.is_done());
}

#[tokio::test(start_paused = true)]
async fn deadline_armed_with_exhausted_coop_budget_still_fires() {
    // Use up this task's cooperative budget without yielding...
    std::future::poll_fn(|cx| {
        while tokio::task::coop::has_budget_remaining() {
            let consume = std::pin::pin!(tokio::task::coop::consume_budget());
            let _ = std::future::Future::poll(consume, cx);
        }
        std::task::Poll::Ready(())
    })
    .await;
    assert!(!tokio::task::coop::has_budget_remaining());
    // ...then arm a deadline in the same poll.
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(1));
    advance(Duration::from_millis(999)).await;
    assert!(!ctx.is_done());
    advance(MS).await;
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_fires_on_a_multi_thread_runtime() {
    let (ctx, _cancel) =
        Context::background().with_timeout_cause(Duration::from_millis(20), "mt budget");
    let err = tokio::time::timeout(Duration::from_secs(10), ctx.done())
        .await
        .expect("the deadline never fired (hang guard)");
    assert_eq!(err, Error::DeadlineExceeded);
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_text(&ctx).as_deref(), Some("mt budget"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_fires_on_a_multi_thread_runtime_without_any_waiter() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(20));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let _registration = ctx.after_func(move || {
        let _ = tx.send(());
    });
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the deadline never fired (hang guard)")
        .expect("callback dropped without running");
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

// ---------------------------------------------------------------------------------------------
// Deadlines armed by tasks of a multi-thread runtime go into a wheel per worker thread.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_wheel_fires_deadlines_in_order_and_keeps_later_ones() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let root2 = root.clone();
    let order = tokio::spawn(async move {
        let short = root2.with_timeout(Duration::from_millis(20));
        let next = root2.with_timeout(Duration::from_millis(60));
        // An hour away, so that "not yet fired" holds however long this worker stalls.
        let hour = root2.with_timeout(Duration::from_secs(3600));
        let done = |ctx: &Context| tokio::time::timeout(Duration::from_secs(10), ctx.done_owned());
        let hang = "the deadline never fired (hang guard)";
        assert_eq!(done(&short.0).await.expect(hang), Error::DeadlineExceeded);
        assert!(!hour.0.is_done(), "a later deadline stays armed");
        assert_eq!(
            done(&next.0).await.expect(hang),
            Error::DeadlineExceeded,
            "the wheel re-arms for the next deadline it holds"
        );
        assert!(!hour.0.is_done(), "and still keeps the later one");
        assert_eq!(
            taskctx::testing::census(&root2).timers,
            1,
            "only the hour is left"
        );
        drop(hour);
    })
    .await;
    order.unwrap();
    assert!(taskctx::testing::census(&root).is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_wheel_entries_leave_when_cancelled_or_dropped() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let root2 = root.clone();
    tokio::spawn(async move {
        let mut live = Vec::new();
        for i in 0..1000u64 {
            live.push(root2.with_timeout(Duration::from_secs(60 + i)));
        }
        assert_eq!(taskctx::testing::census(&root2).timers, 1000);
        for (ctx, cancel) in live.drain(..500) {
            cancel.cancel();
            assert_eq!(ctx.err(), Some(Error::Canceled));
        }
        assert_eq!(taskctx::testing::census(&root2).timers, 500);
    })
    .await
    .unwrap();
    assert!(taskctx::testing::census(&root).is_clean());
}

#[test]
fn worker_wheel_hands_its_deadlines_to_the_timer_thread_when_the_runtime_shuts_down() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let (ctx, cancel) = runtime
        .block_on(async {
            tokio::spawn(async { Context::background().with_timeout(Duration::from_millis(50)) })
                .await
        })
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let _registration = ctx.after_func(move || tx.send(()).unwrap());
    drop(runtime); // the worker's wheel is woken early and retires

    rx.recv_timeout(Duration::from_secs(10))
        .expect("the deadline still fires, on the fallback thread");
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    drop(cancel);
}

/// A parent whose deadline has passed but whose timer has not run yet (its runtime is not
/// running) is still live; a child given a deadline in the past is done at once all the same.
#[test]
fn past_deadline_under_a_parent_whose_timer_has_not_run_is_done_at_once() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let parent_deadline = std::time::Instant::now() + Duration::from_millis(1);
    // Armed in `runtime`'s timer, which is driven only inside `block_on`.
    let (parent, _cancel_parent) =
        runtime.block_on(async { Context::background().with_deadline(parent_deadline.into()) });
    let past = parent_deadline + Duration::from_millis(1);
    while std::time::Instant::now() <= past {
        std::thread::sleep(Duration::from_millis(1)); // a lower bound on time, not a wait
    }
    assert!(!parent.is_done(), "nothing has driven the parent's timer");

    let (child, _cancel) = parent.with_deadline_cause(past.into(), "too late");
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_text(&child).as_deref(), Some("too late"));
    assert!(!parent.is_done(), "the child's own deadline never flows up");
    drop(runtime);
}

// ---------------------------------------------------------------------------------------------
// Where a deadline's cancellation runs

type Waited = std::sync::mpsc::Receiver<Result<(), std::sync::mpsc::RecvTimeoutError>>;

/// Makes `a` (due in 10 ms) run a callback that waits, with a 10 s watchdog, for `b` (due in
/// 20 ms) to fire, and returns what the wait saw. Both are armed where this is called.
fn a_callback_that_waits_for_another_deadline() -> (Context, Context, Waited) {
    let (a, cancel_a) = Context::background().with_timeout(10 * MS);
    let (b, cancel_b) = Context::background().with_timeout(20 * MS);
    cancel_a.disarm();
    cancel_b.disarm();
    let (b_fired, wait_for_b) = std::sync::mpsc::channel();
    let (result, waited) = std::sync::mpsc::channel();
    let _registration = b.after_func(move || {
        let _ = b_fired.send(());
    });
    let _registration = a.after_func(move || {
        let _ = result.send(wait_for_b.recv_timeout(Duration::from_secs(10)));
    });
    (a, b, waited)
}

fn assert_the_callback_saw_the_other_deadline((a, b, waited): (Context, Context, Waited)) {
    let seen = waited.recv_timeout(Duration::from_secs(20));
    assert_eq!(
        seen,
        Ok(Ok(())),
        "the other deadline fired while the callback waited"
    );
    assert_eq!(a.err(), Some(Error::DeadlineExceeded));
    assert_eq!(b.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn a_slow_deadline_callback_delays_no_timer_of_a_multi_thread_runtime() {
    // The callback blocks its worker until another deadline has fired: that can happen only
    // if the callback does not hold Tokio's timer driver. The other worker is kept busy, as
    // an idle one would not look at the timers until it is woken (Tokio's own behaviour,
    // whoever blocks a worker). Once for deadlines armed in a worker's task (the worker's
    // wheel), once from the thread that runs `block_on` (Tokio's timer).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = rt.spawn({
        let stop = stop.clone();
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::task::yield_now().await;
            }
        }
    });
    let in_a_task = || {
        rt.block_on(async {
            tokio::spawn(async { a_callback_that_waits_for_another_deadline() })
                .await
                .unwrap()
        })
    };
    let in_block_on = || rt.block_on(async { a_callback_that_waits_for_another_deadline() });
    // One at a time: two blocked callbacks would block both workers.
    for arm in [&in_a_task as &dyn Fn() -> _, &in_block_on] {
        assert_the_callback_saw_the_other_deadline(arm());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rt.block_on(busy).unwrap();
}

#[test]
fn a_slow_deadline_callback_delays_no_later_deadline_outside_a_runtime() {
    // Outside a runtime, deadlines are kept by the crate's timer thread: a callback that
    // blocks must not hold it up either. The other deadline is armed by the callback itself,
    // so it comes due after the callback began however late the timer thread wakes (two
    // deadlines already due when it wakes are fired one after the other, on one thread).
    let (a, cancel_a) = Context::background().with_timeout(10 * MS);
    cancel_a.disarm();
    let (result, waited) = std::sync::mpsc::channel();
    let _registration = a.after_func(move || {
        let (b, cancel_b) = Context::background().with_timeout(10 * MS);
        cancel_b.disarm();
        let (b_fired, wait_for_b) = std::sync::mpsc::channel();
        let _registration = b.after_func(move || {
            let _ = b_fired.send(());
        });
        let _ = result.send((wait_for_b.recv_timeout(Duration::from_secs(10)), b));
    });
    let (seen, b) = waited.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(
        seen,
        Ok(()),
        "the other deadline fired while the callback waited"
    );
    assert_eq!(a.err(), Some(Error::DeadlineExceeded));
    assert_eq!(b.err(), Some(Error::DeadlineExceeded));
}
