//! Deadlines wherever Tokio code runs: on a current-thread runtime, on `spawn_blocking`
//! threads, on plain threads that entered a runtime, across runtimes and through a runtime's
//! shutdown; and contexts dropped in the order user code drops them. The reference for when a
//! deadline fires is a Tokio `Sleep` of the same instant: under a paused clock, the context is
//! done exactly when that `Sleep` has elapsed.

use std::sync::mpsc;
use std::time::Duration;

use taskctx::testing::census;
use taskctx::{Context, Error};
use tokio::runtime::{Builder, Runtime};
use tokio::time::{Instant, advance};

/// How long a test waits for something that should happen at once before calling it a hang.
const HANG_GUARD: Duration = Duration::from_secs(10);

fn current_thread_paused() -> Runtime {
    Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn multi_thread() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap()
}

/// Steps a paused clock in `step`s past `deadline`, checking at each that `ctx` is done exactly
/// when a `Sleep` until `deadline` has elapsed.
async fn fires_as_a_sleep_would(ctx: &Context, deadline: Instant, step: Duration) {
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    let mut steps = 0;
    loop {
        let elapsed = futures::poll!(sleep.as_mut()).is_ready();
        assert_eq!(
            ctx.is_done(),
            elapsed,
            "at {:?} from the deadline, the context and a Sleep disagree",
            Instant::now().checked_duration_since(deadline)
        );
        if elapsed {
            break;
        }
        advance(step).await;
        steps += 1;
        assert!(steps < 100_000, "never fired");
    }
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_on_a_current_thread_runtime_fires_when_a_sleep_of_its_instant_would() {
    // Off Tokio's millisecond grid before the first deadline, and so before this thread's
    // wheel is made: whole milliseconds from here, and instants between the ticks.
    advance(Duration::from_micros(300)).await;
    for (timeout, step) in [
        (Duration::from_millis(10), Duration::from_millis(1)),
        (Duration::from_micros(2_500), Duration::from_micros(100)),
        (
            Duration::from_nanos(1_000_001),
            Duration::from_nanos(250_000),
        ),
    ] {
        let (ctx, _cancel) = Context::background().with_timeout(timeout);
        fires_as_a_sleep_would(&ctx, ctx.deadline().unwrap(), step).await;
    }
}

#[tokio::test(start_paused = true)]
async fn deadlines_on_a_current_thread_runtime_fire_in_order_each_at_its_instant() {
    // Several in one wheel, armed out of order, some in one millisecond, one beyond a rotation.
    let timeouts_ms = [5_000, 7, 3, 3, 1_500, 12, 7];
    let contexts: Vec<_> = timeouts_ms
        .iter()
        .map(|&ms| Context::background().with_timeout(Duration::from_millis(ms)))
        .collect();
    let start = Instant::now();
    let mut sorted = timeouts_ms.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    for ms in sorted {
        let just_before = start + Duration::from_millis(ms) - Duration::from_micros(1);
        advance(just_before - Instant::now()).await;
        for ((ctx, _), &due) in contexts.iter().zip(&timeouts_ms) {
            assert_eq!(ctx.is_done(), due < ms, "{due} ms, just before {ms} ms");
        }
        advance(Duration::from_micros(1)).await;
        for ((ctx, _), &due) in contexts.iter().zip(&timeouts_ms) {
            assert_eq!(ctx.is_done(), due <= ms, "{due} ms, at {ms} ms");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn advance_returns_with_the_whole_subtree_of_a_deadline_done() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(20));
    let (child, _cancel_child) = ctx.with_cancel();
    let grandchild = child.with_value(1u8);
    advance(Duration::from_millis(20)).await;
    assert_eq!(grandchild.err(), Some(Error::DeadlineExceeded));
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_armed_from_spawn_blocking_fires() {
    let (ctx, cancel) =
        tokio::task::spawn_blocking(|| Context::background().with_timeout(Duration::from_secs(1)))
            .await
            .unwrap();
    let deadline = ctx.deadline().unwrap();
    // The paused clock moves on by itself once the runtime is idle, to the wheel's timer.
    assert_eq!(ctx.done().await, Error::DeadlineExceeded);
    let now = Instant::now();
    assert!(
        now >= deadline && now - deadline < Duration::from_millis(1),
        "fired at {now:?}, due at {deadline:?}"
    );
    drop(cancel);
}

#[test]
fn a_deadline_armed_on_a_plain_thread_that_entered_a_paused_runtime_fires_at_its_instant() {
    let runtime = current_thread_paused();
    let handle = runtime.handle().clone();
    let (ctx, _cancel) = std::thread::spawn(move || {
        let _entered = handle.enter();
        Context::background().with_timeout(Duration::from_millis(30))
    })
    .join()
    .unwrap();
    runtime.block_on(async {
        fires_as_a_sleep_would(&ctx, ctx.deadline().unwrap(), Duration::from_millis(1)).await;
    });
}

#[test]
fn deadlines_armed_on_plain_threads_that_entered_a_multi_thread_runtime_fire() {
    let runtime = multi_thread();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let handle = runtime.handle().clone();
            std::thread::spawn(move || {
                let _entered = handle.enter();
                let (ctx, cancel) = Context::background().with_timeout(Duration::from_millis(20));
                // Another on the same thread's wheel, cancelled first: it must not take the
                // other's timer with it.
                drop(Context::background().with_timeout(Duration::from_millis(5)));
                (ctx, cancel)
            })
        })
        .collect();
    for thread in threads {
        let (ctx, _cancel) = thread.join().unwrap();
        let deadline = ctx.deadline().unwrap();
        let done = runtime.block_on(async { tokio::time::timeout(HANG_GUARD, ctx.done()).await });
        assert_eq!(
            done,
            Ok(Error::DeadlineExceeded),
            "hang: the deadline never fired"
        );
        assert!(Instant::now() >= deadline, "fired early");
    }
}

#[test]
fn a_deadline_armed_on_one_runtime_fires_when_awaited_on_another() {
    let armed_on = multi_thread();
    let (ctx, _cancel) = armed_on.block_on(async {
        tokio::spawn(async { Context::background().with_timeout(Duration::from_millis(20)) })
            .await
            .unwrap()
    });
    let awaited_on = Builder::new_current_thread().enable_time().build().unwrap();
    let done = awaited_on.block_on(async { tokio::time::timeout(HANG_GUARD, ctx.done()).await });
    assert_eq!(done, Ok(Error::DeadlineExceeded));

    // The other way: armed on a current-thread runtime that a thread keeps driving.
    let driven = Builder::new_current_thread().enable_time().build().unwrap();
    let (ctx, _cancel) =
        driven.block_on(async { Context::background().with_timeout(Duration::from_millis(20)) });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = std::thread::spawn(move || driven.block_on(stopped));
    let done =
        multi_thread().block_on(async { tokio::time::timeout(HANG_GUARD, ctx.done()).await });
    assert_eq!(done, Ok(Error::DeadlineExceeded));
    drop(stop);
    driver.join().unwrap().unwrap_err();
}

/// Dropping a runtime fires its timers early; the deadlines of its wheels must move to the
/// crate's own timer thread, and fire there at their instant, not before and not never.
#[test]
fn a_runtime_shut_down_hands_its_deadlines_to_the_fallback_timer() {
    for flavour in ["current-thread", "multi-thread", "entered"] {
        let runtime = match flavour {
            "current-thread" => Builder::new_current_thread().enable_time().build().unwrap(),
            _ => multi_thread(),
        };
        let arm = || Context::background().with_timeout(Duration::from_millis(50));
        let (ctx, _cancel) = match flavour {
            "current-thread" => runtime.block_on(async { arm() }),
            "multi-thread" => runtime
                .block_on(async { tokio::spawn(async move { arm() }).await })
                .unwrap(),
            _ => {
                let _entered = runtime.enter();
                arm()
            }
        };
        let deadline = ctx.deadline().unwrap().into_std();
        let (fired, fired_at) = mpsc::channel();
        let _registration = ctx.after_func(move || {
            let _ = fired.send(std::time::Instant::now());
        });
        drop(runtime);
        assert!(
            !ctx.is_done(),
            "{flavour}: the shutdown fired the deadline early"
        );
        let at = fired_at
            .recv_timeout(HANG_GUARD)
            .unwrap_or_else(|_| panic!("{flavour}: the deadline never fired after the shutdown"));
        assert!(at >= deadline, "{flavour}: fired before the deadline");
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    }
}

/// `let (ctx, _cancel) = …` drops the handle first, cancelling a context that is still held,
/// then the context. Whichever order, the end of the scope leaves the parent clean, and a clone
/// kept past it sees the cancellation.
#[tokio::test(start_paused = true)]
async fn a_scope_that_ends_handle_first_leaves_the_parent_clean() {
    let (parent, _cancel_parent) = Context::background().with_cancel();
    let kept = {
        let (ctx, _cancel) = parent.with_cancel();
        ctx.clone()
    };
    assert_eq!(
        kept.err(),
        Some(Error::Canceled),
        "the handle's drop cancelled it"
    );
    drop(kept);
    for round in 0..3 {
        {
            let (ctx, _cancel) = parent.with_timeout(Duration::from_secs(60));
            let (grandchild, _cancel_grandchild) = ctx.with_cancel();
            assert!(!grandchild.is_done());
            assert_eq!(census(&parent).timers, 1, "round {round}");
        }
        assert!(
            census(&parent).is_clean(),
            "round {round}: {:?}",
            census(&parent)
        );
        {
            let (ctx, cancel) = parent.with_timeout(Duration::from_secs(60));
            drop(ctx);
            drop(cancel);
        }
        assert!(census(&parent).is_clean(), "round {round}, context first");
    }
    // Nothing left armed: the clock can pass the old deadlines with no effect on the parent.
    advance(Duration::from_secs(120)).await;
    assert_eq!(parent.err(), None);
}
