//! Hostile and unusual input: overflowing, zero and past timeouts, deadlines, waiters and tasks
//! outside or across runtimes and through runtime shutdown, panicking and re-entrant callbacks,
//! re-entrant and panicking drops, chains deep enough to overflow a naive recursive drop, and
//! names of contexts too deep or too merged to write in full. Waits on real
//! time (where there is no runtime to pause) block on a channel or a Tokio timeout; their 10 s
//! bounds only ever catch hangs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use taskctx::testing::census;
use taskctx::{CancelHandle, Context, Error};
use tokio::time::{Instant, advance};

const HANG_GUARD: Duration = Duration::from_secs(10);
const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Runs `f` on its own thread (with `stack` bytes of stack) and fails the test if it has not
/// returned within 10 s. A panic in `f` is propagated.
fn guarded_with_stack(stack: usize, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || {
            f();
            let _ = tx.send(());
        })
        .unwrap();
    match rx.recv_timeout(HANG_GUARD) {
        Ok(()) => thread.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("hang: the code under test never returned"),
    }
}

fn guarded(f: impl FnOnce() + Send + 'static) {
    guarded_with_stack(2 * 1024 * 1024, f);
}

/// A channel that receives `ctx`'s error once it is done, from whichever thread finishes it.
/// The callback owns a clone of `ctx`, which keeps it alive until then: these tests wait for
/// exactly that.
fn done_signal(ctx: &Context) -> mpsc::Receiver<Error> {
    let (tx, rx) = mpsc::channel();
    let ctx_in_callback = ctx.clone();
    let _registration = ctx.after_func(move || {
        let _ = tx.send(ctx_in_callback.err().expect("callbacks run once done"));
    });
    rx
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Timeouts that overflow, are zero, or lie in the past

const OVERFLOWING: [Duration; 4] = [
    Duration::MAX,
    Duration::from_secs(u64::MAX),
    Duration::from_secs(i64::MAX as u64),
    Duration::from_secs(u64::MAX / 2),
];

#[tokio::test(start_paused = true)]
async fn overflowing_timeouts_give_a_live_context_without_deadline() {
    let (root, _cancel_root) = Context::background().with_cancel();
    for timeout in OVERFLOWING {
        let (a, cancel_a) = root.with_timeout(timeout);
        let (b, cancel_b) = root.with_timeout_cause(timeout, "never reported");
        for ctx in [&a, &b] {
            assert_eq!(ctx.deadline(), None, "{timeout:?}");
            assert_eq!(ctx.remaining(), None, "{timeout:?}");
            assert!(!ctx.is_done(), "{timeout:?}");
        }
        assert_eq!(
            census(&root).timers,
            0,
            "{timeout:?}: no timer can be armed"
        );
        advance(10 * YEAR).await;
        assert!(!a.is_done() && !b.is_done(), "{timeout:?}");
        cancel_a.cancel();
        cancel_b.cancel();
        assert_eq!(a.err(), Some(Error::Canceled));
        assert_eq!(
            b.cause().unwrap().downcast_ref::<Error>(),
            Some(&Error::Canceled),
            "{timeout:?}: the timeout's cause is never reported when it cannot fire"
        );
    }
    assert!(census(&root).is_clean());
}

#[test]
fn overflowing_timeouts_outside_a_runtime_give_a_live_context_without_deadline() {
    for timeout in OVERFLOWING {
        let (ctx, cancel) = Context::background().with_timeout(timeout);
        assert_eq!(ctx.deadline(), None, "{timeout:?}");
        assert!(!ctx.is_done());
        cancel.cancel();
        assert_eq!(ctx.err(), Some(Error::Canceled));
    }
}

#[tokio::test(start_paused = true)]
async fn huge_but_representable_timeout_does_not_fire_early() {
    let (ctx, _cancel) = Context::background().with_timeout(100 * YEAR);
    assert_eq!(ctx.remaining(), Some(100 * YEAR));
    advance(5 * YEAR).await;
    assert!(!ctx.is_done(), "fired 95 years early");
    assert_eq!(ctx.remaining(), Some(95 * YEAR));
}

#[tokio::test(start_paused = true)]
async fn taskctx_with_timeout_with_overflowing_timeout_runs_the_work_to_completion() {
    for timeout in OVERFLOWING {
        let out = taskctx::with_timeout(&Context::background(), timeout, |child| async move {
            assert_eq!(child.deadline(), None);
            tokio::time::sleep(YEAR).await;
            "finished a year later"
        })
        .await;
        assert_eq!(out, Ok("finished a year later"), "{timeout:?}");
    }
    let (parent, cancel_parent) = Context::background().with_cancel();
    let guard = taskctx::with_timeout(&parent, Duration::MAX, |_| std::future::pending::<()>());
    cancel_parent.cancel();
    assert_eq!(
        guard.await,
        Err(Error::Canceled),
        "the parent still cancels it"
    );
}

#[tokio::test(start_paused = true)]
async fn zero_timeout_is_done_at_once_and_taskctx_with_timeout_never_polls_the_work() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::ZERO);
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    let (ctx, _cancel) = Context::background().with_timeout_cause(Duration::ZERO, "zero");
    assert_eq!(ctx.cause().unwrap().to_string(), "zero");
    let polled = Arc::new(AtomicBool::new(false));
    let p = polled.clone();
    let out = taskctx::with_timeout(&Context::background(), Duration::ZERO, |_| async move {
        p.store(true, Ordering::SeqCst);
    })
    .await;
    assert_eq!(out, Err(Error::DeadlineExceeded));
    assert!(
        !polled.load(Ordering::SeqCst),
        "work under an expired child must not run"
    );
}

#[test]
fn zero_timeout_and_past_deadline_outside_a_runtime_are_done_at_once() {
    let (zero, _c1) = Context::background().with_timeout(Duration::ZERO);
    assert_eq!(zero.err(), Some(Error::DeadlineExceeded));
    let past = Instant::now()
        .checked_sub(Duration::from_secs(3600))
        .unwrap_or_else(Instant::now);
    let (ctx, _c2) = Context::background().with_deadline_cause(past, "long gone");
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(ctx.cause().unwrap().to_string(), "long gone");
    assert_eq!(ctx.remaining(), Some(Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn deadline_in_the_past_is_done_at_once_with_its_cause() {
    let (root, _cancel_root) = Context::background().with_cancel();
    for ago in [
        Duration::from_nanos(1),
        Duration::from_secs(1),
        Duration::from_secs(3600),
    ] {
        let Some(past) = Instant::now().checked_sub(ago) else {
            continue;
        };
        let (ctx, _cancel) = root.with_deadline_cause(past, "in the past");
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded), "{ago:?}");
        assert_eq!(ctx.cause().unwrap().to_string(), "in the past");
        assert_eq!(ctx.done().await, Error::DeadlineExceeded);
    }
    assert!(census(&root).is_clean());
}

#[test]
fn with_timeout_in_a_runtime_without_time_driver_panics_and_leaves_the_parent_clean() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _entered = rt.enter();
    let (parent, cancel_parent) = Context::background().with_cancel();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = parent.with_timeout(Duration::from_secs(1));
    }));
    let payload = panicked.expect_err("documented to panic, as tokio::time::sleep does");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(message.contains("timers are disabled"), "{message}");
    assert!(
        census(&parent).is_clean(),
        "the half-made child left no trace"
    );
    // What cannot need a timer does not panic.
    let (zero, _c) = parent.with_timeout(Duration::ZERO);
    assert_eq!(zero.err(), Some(Error::DeadlineExceeded));
    let (forever, _c) = parent.with_timeout(Duration::MAX);
    assert!(!forever.is_done());
    cancel_parent.cancel();
    assert_eq!(forever.err(), Some(Error::Canceled));
}

// ---------------------------------------------------------------------------------------------
// Deadlines without a runtime, across runtimes, and through a shutdown

#[test]
fn deadline_created_outside_any_runtime_fires_on_its_own() {
    let (ctx, _cancel) =
        Context::background().with_timeout_cause(Duration::from_millis(30), "no runtime");
    let deadline = ctx.deadline().unwrap();
    let fired_at = Arc::new(Mutex::new(None));
    let (tx, rx) = mpsc::channel();
    let at = fired_at.clone();
    let _registration = ctx.after_func(move || {
        *at.lock().unwrap() = Some(std::time::Instant::now());
        let _ = tx.send(());
    });
    rx.recv_timeout(HANG_GUARD)
        .expect("a deadline set outside a runtime never fired");
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(ctx.cause().unwrap().to_string(), "no runtime");
    let fired_at = fired_at.lock().unwrap().unwrap();
    assert!(fired_at >= deadline.into_std(), "fired before the deadline");
}

/// A multi-thread runtime with one worker and the time driver.
fn one_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap()
}

/// Awaits `ctx.done()` in a fresh current-thread runtime; `HANG_GUARD` only catches a hang.
fn await_done_in_a_new_runtime(ctx: &Context) -> Error {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(HANG_GUARD, ctx.done())
            .await
            .expect("never woken")
    })
}

#[test]
fn deadline_created_outside_a_runtime_can_be_awaited_inside_one() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(30));
    let err = await_done_in_a_new_runtime(&ctx);
    assert_eq!(err, Error::DeadlineExceeded);
}

#[test]
fn deadline_created_in_one_runtime_is_awaited_in_another() {
    // The arming runtime is alive and drives its own timers.
    let arming = one_worker_runtime();
    let (ctx, _cancel) = arming.block_on(async {
        Context::background().with_timeout_cause(Duration::from_millis(30), "from rt1")
    });
    let err = await_done_in_a_new_runtime(&ctx);
    assert_eq!(err, Error::DeadlineExceeded);
    assert_eq!(ctx.cause().unwrap().to_string(), "from rt1");
    drop(arming);
}

#[test]
fn deadline_created_in_a_runtime_that_is_gone_is_awaited_in_another() {
    let arming = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (ctx, _cancel) =
        arming.block_on(async { Context::background().with_timeout(Duration::from_millis(30)) });
    drop(arming); // its timer wheel goes away, normally well before the deadline
    let deadline = ctx.deadline().unwrap();
    assert!(
        !ctx.is_done() || Instant::now() >= deadline,
        "the shutdown fired the deadline early"
    );
    let err = await_done_in_a_new_runtime(&ctx);
    assert_eq!(err, Error::DeadlineExceeded);
}

#[test]
fn deadline_armed_in_a_worker_task_of_one_runtime_fires_for_a_waiter_in_another() {
    let arming = one_worker_runtime();
    // Inside a worker task, the deadline goes into that worker's wheel, which `arming` drives.
    let (ctx, _cancel) = arming
        .block_on(async {
            tokio::spawn(async {
                Context::background()
                    .with_timeout_cause(Duration::from_millis(5), "from a worker of rt1")
            })
            .await
        })
        .unwrap();
    let err = await_done_in_a_new_runtime(&ctx);
    assert_eq!(err, Error::DeadlineExceeded);
    assert_eq!(ctx.cause().unwrap().to_string(), "from a worker of rt1");
    drop(arming);
}

#[test]
fn done_waiter_in_one_runtime_wakes_when_a_task_of_another_cancels() {
    let waiting = one_worker_runtime();
    let cancelling = one_worker_runtime();
    let (ctx, cancel) = Context::background().with_cancel();
    let in_task = ctx.clone();
    let waiter = waiting.spawn(async move { in_task.done().await });
    cancelling.block_on(async {
        // Cancel only once the waiter's waker is registered, so that the wake crosses over.
        tokio::time::timeout(HANG_GUARD, async {
            while census(&ctx).waiters == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the waiter never registered");
        tokio::spawn(async move { cancel.cancel() }).await.unwrap();
    });
    let woken = waiting.block_on(async { tokio::time::timeout(HANG_GUARD, waiter).await });
    assert_eq!(woken.expect("never woken").unwrap(), Error::Canceled);
    assert!(census(&ctx).is_clean());
}

#[test]
fn task_spawned_in_one_runtime_stops_when_a_task_of_another_cancels_its_context() {
    let spawning = one_worker_runtime();
    let cancelling = one_worker_runtime();
    let (ctx, cancel) = Context::background().with_cancel();
    let marker = Arc::new(());
    let held = marker.clone();
    let entered = spawning.enter();
    let worker = ctx.spawn(|_| async move {
        let _held = held;
        std::future::pending::<()>().await
    });
    drop(entered);
    let stopped = cancelling.block_on(async {
        // The task's `run_until_cancelled` registers a waiter once it is first polled.
        tokio::time::timeout(HANG_GUARD, async {
            while census(&ctx).waiters == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the task never started");
        tokio::spawn(async move { cancel.cancel() }).await.unwrap();
        tokio::time::timeout(HANG_GUARD, worker).await
    });
    assert_eq!(
        stopped.expect("the task never stopped"),
        Err(Error::Canceled)
    );
    assert_eq!(
        Arc::strong_count(&marker),
        1,
        "the task's future was dropped"
    );
    assert!(census(&ctx).is_clean(), "{}", census(&ctx));
}

fn shut_down_with_live_timers_and_waiters(rt: tokio::runtime::Runtime) {
    let (root, ctx, cancel, short, _cancel_short) = rt.block_on(async {
        let (root, cancel_root) = Context::background().with_cancel();
        cancel_root.disarm();
        let (ctx, cancel) = root.with_timeout(Duration::from_secs(3600));
        // Under a root of its own, so that whether it fired yet does not change `root`'s census.
        let (short, cancel_short) = Context::background().with_timeout(Duration::from_millis(30));
        for _ in 0..8 {
            tokio::spawn(ctx.done_owned());
        }
        for _ in 0..4 {
            drop(ctx.spawn(|ctx| async move { ctx.done().await }));
        }
        // Wait until every waiter and task is registered (bounded by the hang guard): at least
        // one waiter per task.
        loop {
            let c = census(&root);
            if c.waiters >= 8 + 4 && c.tasks == 4 {
                break;
            }
            tokio::task::yield_now().await;
        }
        (root, ctx, cancel, short, cancel_short)
    });
    drop(rt);

    assert!(!ctx.is_done(), "a shutdown must not fire a deadline early");
    let left = census(&root);
    assert_eq!((left.tasks, left.waiters), (0, 0), "{left}");
    assert_eq!((left.contexts, left.timers), (1, 1), "{left}");
    // The short deadline still fires: on the runtime if it passed before the shutdown, on the
    // crate's timer thread otherwise.
    let rx = done_signal(&short);
    assert_eq!(rx.recv_timeout(HANG_GUARD), Ok(Error::DeadlineExceeded));
    cancel.cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert!(census(&root).is_clean(), "{}", census(&root));
}

#[test]
fn current_thread_runtime_shut_down_with_live_timers_and_waiters_neither_panics_nor_hangs() {
    guarded(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        shut_down_with_live_timers_and_waiters(rt);
    });
}

#[test]
fn multi_thread_runtime_shut_down_with_live_timers_and_waiters_neither_panics_nor_hangs() {
    guarded(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        shut_down_with_live_timers_and_waiters(rt);
    });
}

// ---------------------------------------------------------------------------------------------
// Panicking and re-entrant callbacks

#[test]
fn panicking_after_func_on_a_done_context_does_not_propagate() {
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    let registration = ctx.after_func(|| panic!("late callback exploded"));
    assert!(!registration.stop(), "it ran (and panicked) already");
    let registration = ctx.after_func(|| std::panic::panic_any(42u8));
    assert!(!registration.stop());
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let _ok = ctx.after_func(move || r.store(true, Ordering::SeqCst));
    assert!(ran.load(Ordering::SeqCst));
}

#[test]
fn panicking_after_func_with_any_payload_does_not_stop_the_cancellation() {
    let (ctx, cancel) = Context::background().with_cancel();
    let (child, _c) = ctx.with_cancel();
    let ran = Arc::new(AtomicUsize::new(0));
    let _a = ctx.after_func(|| std::panic::panic_any(vec![1, 2, 3]));
    let r = ran.clone();
    let _b = child.after_func(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    let _c = ctx.after_func(|| panic!("{}", String::from("formatted")));
    let r = ran.clone();
    let _d = ctx.after_func(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    cancel.cancel(); // must not panic
    assert_eq!(ran.load(Ordering::SeqCst), 2);
    assert!(ctx.is_done() && child.is_done());
}

#[test]
fn panicking_callback_on_the_timer_thread_does_not_stop_later_deadlines() {
    let (first, _c1) = Context::background().with_timeout(Duration::from_millis(50));
    let _boom = first.after_func(|| panic!("exploded on the timer thread"));
    let first_done = done_signal(&first);
    assert_eq!(
        first_done.recv_timeout(HANG_GUARD),
        Ok(Error::DeadlineExceeded)
    );

    let (second, _c2) = Context::background().with_timeout(Duration::from_millis(5));
    let second_done = done_signal(&second);
    assert_eq!(
        second_done.recv_timeout(HANG_GUARD),
        Ok(Error::DeadlineExceeded),
        "the timer thread died with the panicking callback"
    );
}

#[test]
fn panicking_callback_fired_by_a_tokio_timer_does_not_break_the_runtime() {
    let rt = paused_runtime();
    rt.block_on(async {
        let (a, _ca) = Context::background().with_timeout(Duration::from_secs(1));
        let (b, _cb) = Context::background().with_timeout(Duration::from_secs(2));
        let _boom = a.after_func(|| panic!("exploded inside the timer wheel"));
        advance(Duration::from_secs(1)).await;
        assert_eq!(a.err(), Some(Error::DeadlineExceeded));
        assert_eq!(
            b.done().await,
            Error::DeadlineExceeded,
            "later timers still fire"
        );
    });
}

#[test]
fn cancel_from_inside_an_after_func_does_not_deadlock() {
    guarded(|| {
        // A's callback cancels A itself, cancels B, and drops C's last handle; B's callback
        // cancels A back. The handles are shared without any lock held while cancelling.
        let (a, cancel_a) = Context::background().with_cancel();
        let (b, cancel_b) = Context::background().with_cancel();
        let (c, cancel_c) = Context::background().with_cancel();
        let cancel_a = Arc::new(cancel_a);
        let (ca, cb) = (cancel_a.clone(), Arc::new(cancel_b));
        let _on_a = a.after_func(move || {
            ca.cancel();
            cb.cancel();
            drop(cancel_c);
        });
        let ca = cancel_a.clone();
        let _on_b = b.after_func(move || ca.cancel());
        cancel_a.cancel();
        assert_eq!(a.err(), Some(Error::Canceled));
        assert_eq!(b.err(), Some(Error::Canceled));
        assert_eq!(c.err(), Some(Error::Canceled));
    });
}

/// A waker that runs a closure when woken, as an executor that polls its task inside the
/// waker would run the task's code.
struct InlineWaker(Mutex<Option<Box<dyn FnOnce() + Send>>>);

impl futures::task::ArcWake for InlineWaker {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        if let Some(f) = arc_self.0.lock().unwrap().take() {
            f();
        }
    }
}

fn inline_waker(f: impl FnOnce() + Send + 'static) -> std::task::Waker {
    futures::task::waker(Arc::new(InlineWaker(Mutex::new(Some(Box::new(f))))))
}

/// Registers `waker` as a waiter of `ctx` (a `done()` future polled once, then forgotten by
/// the test: the registration stays until it is woken).
fn wait_with(ctx: &Context, waker: &std::task::Waker) {
    let mut done = Box::pin(ctx.clone().done_owned());
    let poll = done
        .as_mut()
        .poll(&mut std::task::Context::from_waker(waker));
    assert!(poll.is_pending());
    std::mem::forget(done);
}

#[test]
fn a_waker_that_cancels_the_scope_being_cancelled_does_not_wait_for_itself() {
    guarded(|| {
        // The root's cancellation wakes the leaf `a`'s waiter while it still walks below the
        // root (and holds the root's `PROPAGATING` bit): the waker cancels the root again, and
        // `b`'s handle, in place. Neither waits for the walk that runs it.
        let (root, cancel_root) = Context::background().with_cancel();
        let cancel_root = Arc::new(cancel_root);
        let (a, _cancel_a) = root.with_cancel();
        let (b, cancel_b) = root.with_cancel();
        let (b_child, _cancel_b_child) = b.with_cancel();
        let woken = Arc::new(AtomicBool::new(false));
        let waker = {
            let (cancel_root, woken) = (cancel_root.clone(), woken.clone());
            inline_waker(move || {
                cancel_root.cancel();
                cancel_b.cancel();
                woken.store(true, Ordering::SeqCst);
            })
        };
        wait_with(&a, &waker);
        cancel_root.cancel();
        assert!(woken.load(Ordering::SeqCst));
        for ctx in [&root, &a, &b, &b_child] {
            assert_eq!(ctx.err(), Some(Error::Canceled));
        }
        assert!(census(&root).is_clean());
    });
}

#[test]
fn a_waker_that_panics_during_the_walk_leaves_every_scope_done_and_settled() {
    guarded(|| {
        // The leaf `a`'s waiter is woken during the walk and panics. The panic is reported,
        // not propagated: the canceller returns, the walk has finished `b` and its child and
        // cleared every `PROPAGATING` bit, and a second cancellation returns.
        let (root, cancel_root) = Context::background().with_cancel();
        let (a, _cancel_a) = root.with_cancel();
        let (b, _cancel_b) = root.with_cancel();
        let (b_child, _cancel_b_child) = b.with_cancel();
        let token = a.token();
        let waker = inline_waker(|| panic!("a waker that panics"));
        wait_with(&a, &waker);
        cancel_root.cancel();
        for ctx in [&root, &a, &b, &b_child] {
            assert_eq!(ctx.err(), Some(Error::Canceled));
        }
        assert!(
            token.is_cancelled(),
            "the leaf's token, cancelled before its waiter woke"
        );
        cancel_root.cancel(); // would wait forever for a bit left set
        let (again, _cancel_again) = b.with_cancel();
        assert!(again.is_done());
        assert!(census(&root).is_clean());
    });
}

#[test]
fn a_waker_that_cancels_the_root_mid_walk_gets_the_documented_guarantee() {
    guarded(|| {
        // `CancelHandle::cancel`'s docs: a cancel() inside a waker that a walk runs on the same
        // thread returns with its context done, and every descendant is done once the walk
        // that ran the waker returns. The root's walk wakes a leaf's waiter early, with most of
        // its 20,000 descendants still to finish; the waker cancels the root again.
        let (root, cancel_root) = Context::background().with_cancel();
        let cancel_root = Arc::new(cancel_root);
        let mut kept = Vec::new();
        let mut parent = root.clone();
        for i in 0..20_000 {
            let (ctx, cancel) = if i % 100 == 0 {
                root.with_cancel()
            } else {
                parent.with_cancel()
            };
            parent = ctx.clone();
            kept.push((ctx, cancel));
        }
        let (leaf, _cancel_leaf) = root.with_cancel();
        let _token = leaf.token(); // registers the leaf in the root, so the walk reaches it
        let inside = Arc::new(Mutex::new(None));
        let waker = {
            let (cancel_root, root, inside) = (cancel_root.clone(), root.clone(), inside.clone());
            let kept: Vec<Context> = kept.iter().map(|(ctx, _)| ctx.clone()).collect();
            inline_waker(move || {
                cancel_root.cancel();
                let live = kept.iter().filter(|ctx| !ctx.is_done()).count();
                *inside.lock().unwrap() = Some((root.is_done(), live));
            })
        };
        wait_with(&leaf, &waker);
        cancel_root.cancel();
        let (root_done, live_inside) = inside.lock().unwrap().expect("the waker ran");
        assert!(root_done, "done when the inner cancel() returned");
        assert!(
            live_inside > 0,
            "the inner cancel() did not wait for the walk"
        );
        let live = kept.iter().filter(|(ctx, _)| !ctx.is_done()).count();
        assert_eq!(
            live, 0,
            "descendants still live once the outer cancel() returned"
        );
        drop(kept);
        assert!(census(&root).is_clean());
    });
}

#[test]
fn a_callback_holding_its_own_cancel_handle_keeps_the_context_until_it_is_cancelled() {
    // `after_func`'s docs: a callback that captures its context's handle is held by the
    // context, so dropping everything else releases nothing; a cancellation from above does.
    let (root, cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_cancel();
    let ran = Arc::new(AtomicBool::new(false));
    let _registration = ctx.after_func({
        let ran = ran.clone();
        move || {
            drop(cancel);
            ran.store(true, Ordering::SeqCst);
        }
    });
    drop(ctx);
    let held = census(&root);
    assert_eq!((held.contexts, held.callbacks), (1, 1), "{held:?}");
    cancel_root.cancel();
    assert!(ran.load(Ordering::SeqCst));
    assert!(census(&root).is_clean());
}

#[test]
fn a_panicking_waker_loses_no_wake_and_no_callback() {
    guarded(|| {
        // Waiters of scopes with children are woken after the walk, with the callbacks: the
        // root's panicking waiter comes first. Every other waiter still wakes and every
        // callback still runs, and the canceller does not unwind.
        let (root, cancel_root) = Context::background().with_cancel();
        wait_with(&root, &inline_waker(|| panic!("the root's waiter panics")));
        let woken = Arc::new(AtomicUsize::new(0));
        let ran = Arc::new(AtomicUsize::new(0));
        let mut kept = Vec::new();
        for _ in 0..100 {
            let (mid, cancel_mid) = root.with_cancel();
            let (leaf, cancel_leaf) = mid.with_cancel();
            for ctx in [&mid, &leaf] {
                let woken = woken.clone();
                wait_with(
                    ctx,
                    &inline_waker(move || {
                        woken.fetch_add(1, Ordering::SeqCst);
                    }),
                );
            }
            kept.push((mid, cancel_mid, leaf, cancel_leaf));
        }
        let stops: Vec<_> = (0..1_000)
            .map(|i| {
                let ran = ran.clone();
                kept[i % 100].0.after_func(move || {
                    ran.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        cancel_root.cancel();
        assert_eq!(woken.load(Ordering::SeqCst), 200, "waiters woken");
        assert_eq!(ran.load(Ordering::SeqCst), 1_000, "callbacks run");
        drop((stops, kept));
        assert!(census(&root).is_clean());
    });
}

#[test]
fn a_panicking_waker_on_deadlines_due_at_one_tick_stops_neither_them_nor_other_timers() {
    // On either flavour, 100 deadlines due at the same tick, each with a waiter whose waker
    // panics: every one still fires, and an unrelated ticker keeps ticking afterwards.
    for rt in [
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap(),
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap(),
    ] {
        guarded(move || {
            rt.block_on(async {
                tokio::spawn(async {
                    let at = Instant::now() + Duration::from_millis(20);
                    let contexts: Vec<_> = (0..100)
                        .map(|_| Context::background().with_deadline(at))
                        .collect();
                    for (ctx, _) in &contexts {
                        wait_with(ctx, &inline_waker(|| panic!("a deadline's waiter panics")));
                    }
                    for (ctx, _) in &contexts {
                        assert_eq!(ctx.clone().done_owned().await, Error::DeadlineExceeded);
                    }
                    let mut ticker = tokio::time::interval(Duration::from_millis(1));
                    for _ in 0..10 {
                        ticker.tick().await;
                    }
                })
                .await
                .unwrap();
            });
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Re-entrant drops

/// A value that cancels a context when dropped.
struct CancelOnDrop(Option<CancelHandle>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.cancel();
        }
    }
}

#[test]
fn cancel_from_the_drop_of_a_value_stored_in_the_context_does_not_deadlock() {
    guarded(|| {
        // Another context.
        let (other, cancel_other) = Context::background().with_cancel();
        let ctx = Context::background().with_value(CancelOnDrop(Some(cancel_other)));
        drop(ctx);
        assert_eq!(other.err(), Some(Error::Canceled));

        // The very scope the value hangs below.
        let (parent, cancel_parent) = Context::background().with_cancel();
        let token = parent.token();
        let (child, _cancel_child) = parent.with_cancel();
        let holder = parent.with_value(CancelOnDrop(Some(cancel_parent)));
        drop(parent);
        assert!(!token.is_cancelled());
        drop(holder);
        assert!(
            token.is_cancelled(),
            "the value's drop cancelled its own parent"
        );
        assert_eq!(child.err(), Some(Error::Canceled));

        // During a cancellation: the value's context is owned by a callback of the scope it
        // hangs below, so it is dropped while that scope's cancellation runs callbacks.
        let (root, cancel_root) = Context::background().with_cancel();
        let (a, cancel_a) = root.with_cancel();
        let (b, cancel_b) = Context::background().with_cancel();
        let marker = Arc::new(());
        let value_ctx = a
            .with_value(marker.clone())
            .with_value(CancelOnDrop(Some(cancel_a)))
            .with_value(CancelOnDrop(Some(cancel_b)));
        let _r = a.after_func(move || drop(value_ctx));
        drop(a);
        cancel_root.cancel();
        assert_eq!(b.err(), Some(Error::Canceled));
        assert_eq!(Arc::strong_count(&marker), 1, "everything was released");
        assert!(census(&root).is_clean());
    });
}

#[test]
fn value_whose_drop_derives_contexts_is_dropped_cleanly() {
    struct DeriveOnDrop(Context, Arc<Mutex<Vec<Context>>>);
    impl Drop for DeriveOnDrop {
        fn drop(&mut self) {
            let (child, handle) = self.0.with_cancel();
            handle.disarm();
            self.1.lock().unwrap().push(child);
        }
    }
    guarded(|| {
        let (root, _cancel_root) = Context::background().with_cancel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let (ctx, cancel) = root.with_cancel();
        let holder = ctx.with_value(DeriveOnDrop(root.clone(), out.clone()));
        cancel.cancel();
        drop((ctx, holder));
        let made = out.lock().unwrap().pop().expect("drop ran");
        assert!(!made.is_done());
        assert_eq!(census(&root).contexts, 1);
        drop(made);
        assert!(census(&root).is_clean());
    });
}

/// A value that counts its drop in `dropped`, or panics in it instead.
struct DropProbe {
    dropped: Arc<AtomicUsize>,
    panics: bool,
}

impl Drop for DropProbe {
    fn drop(&mut self) {
        assert!(!self.panics, "this value's drop panics");
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn value_whose_drop_panics_midway_down_a_chain_does_not_stop_its_release() {
    const VALUES: usize = 1_000;
    guarded(|| {
        let dropped = Arc::new(AtomicUsize::new(0));
        let (root, _cancel_root) = Context::background().with_cancel();
        let mut leaf = root.clone();
        for i in 0..VALUES {
            if i % 10 == 0 {
                let (ctx, handle) = leaf.with_cancel();
                handle.disarm();
                leaf = ctx;
            }
            leaf = leaf.with_value(DropProbe {
                dropped: dropped.clone(),
                panics: i == VALUES / 2,
            });
        }
        assert_eq!(census(&root).contexts, VALUES / 10);

        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(leaf)))
            .expect_err("the value's panic comes out of the drop");
        assert_eq!(
            panic.downcast_ref::<&str>(),
            Some(&"this value's drop panics")
        );
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            VALUES - 1,
            "every other value was dropped"
        );
        assert!(census(&root).is_clean(), "{}", census(&root));
    });
}

// ---------------------------------------------------------------------------------------------
// Deep chains

const CHAIN: usize = 100_000;
const DEFAULT_STACK: usize = 2 * 1024 * 1024;

#[test]
fn chain_of_100_000_contexts_dropped_from_the_leaf_does_not_overflow_the_stack() {
    guarded_with_stack(DEFAULT_STACK, || {
        let marker = Arc::new(());
        let (root, _cancel_root) = Context::background().with_cancel();
        let mut leaf = root.with_value(marker.clone());
        for i in 0..CHAIN {
            leaf = if i % 2 == 0 {
                let (ctx, handle) = leaf.with_cancel();
                handle.disarm();
                ctx
            } else {
                leaf.with_value(i)
            };
        }
        assert_eq!(census(&root).contexts, CHAIN / 2);
        assert_eq!(leaf.value::<Arc<()>>().map(Arc::strong_count), Some(2));
        drop(leaf);
        assert_eq!(
            Arc::strong_count(&marker),
            1,
            "the whole chain was released"
        );
        assert!(census(&root).is_clean());
    });
}

/// Every kind of layer in one chain (cancellable, value, `without_cancel`, merge), released
/// from the leaf: each scope on the way is offered for reuse, and the release stays iterative.
#[test]
fn chain_of_100_000_mixed_layers_dropped_from_the_leaf_does_not_overflow_the_stack() {
    guarded_with_stack(DEFAULT_STACK, || {
        let (root, _cancel_root) = Context::background().with_cancel();
        let (side, _cancel_side) = Context::background().with_cancel();
        let mut leaf = root.clone();
        for i in 0..CHAIN {
            leaf = match i % 4 {
                0 => {
                    let (ctx, handle) = leaf.with_cancel();
                    handle.disarm();
                    ctx
                }
                1 => leaf.with_value(i),
                2 => leaf.without_cancel().with_value(i as u64),
                _ => leaf.merge(&side),
            };
        }
        assert!(census(&side).contexts > 0);
        drop(leaf);
        assert!(census(&root).is_clean());
        assert!(
            census(&side).is_clean(),
            "every merge left its second parent"
        );
    });
}

#[test]
fn chain_of_100_000_contexts_cancelled_from_the_root_does_not_overflow_the_stack() {
    guarded_with_stack(DEFAULT_STACK, || {
        let marker = Arc::new(());
        let (root, cancel_root) = Context::background().with_cancel_cause();
        let mut handles = Vec::with_capacity(CHAIN / 2);
        let mut leaf = root.with_value(marker.clone());
        for i in 0..CHAIN {
            leaf = if i % 2 == 0 {
                let (ctx, handle) = leaf.with_cancel();
                handles.push(handle);
                ctx
            } else {
                leaf.with_value(i)
            };
        }
        let reached = Arc::new(AtomicBool::new(false));
        let r = reached.clone();
        let _registration = leaf.after_func(move || r.store(true, Ordering::SeqCst));
        cancel_root.cancel("root cancelled");
        assert!(reached.load(Ordering::SeqCst), "the leaf's callback ran");
        assert_eq!(leaf.err(), Some(Error::Canceled));
        assert_eq!(leaf.cause().unwrap().to_string(), "root cancelled");
        drop((leaf, _registration));
        assert_eq!(
            Arc::strong_count(&marker),
            2,
            "the handles still hold the chain"
        );
        drop(handles); // root first: each drop releases one more link
        assert_eq!(
            Arc::strong_count(&marker),
            1,
            "the whole chain was released"
        );
    });
}

#[test]
fn chain_of_100_000_contexts_with_handles_dropped_leaf_first_does_not_overflow_the_stack() {
    guarded_with_stack(DEFAULT_STACK, || {
        let marker = Arc::new(());
        let (root, _cancel_root) = Context::background().with_cancel();
        let mut handles = Vec::with_capacity(CHAIN);
        let mut leaf = root.with_value(marker.clone());
        for _ in 0..CHAIN {
            let (ctx, handle) = leaf.with_cancel();
            handles.push(handle);
            leaf = ctx;
        }
        drop(leaf);
        while let Some(handle) = handles.pop() {
            drop(handle); // cancels the deepest live link, which leaves its parent
        }
        assert_eq!(Arc::strong_count(&marker), 1);
        assert!(census(&root).is_clean());
    });
}

// ---------------------------------------------------------------------------------------------
// Names of huge contexts

/// Far more than a name of at most 256 short layers and its `…(N more)` marks can take.
const NAME_CAP: usize = 16 * 1024;

/// A buffer that refuses to grow past `NAME_CAP` bytes, so that a name without bound fails the
/// test at once rather than filling memory.
#[derive(Default)]
struct Capped(String);

impl std::fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.0.len() + s.len() > NAME_CAP {
            return Err(std::fmt::Error);
        }
        self.0.push_str(s);
        Ok(())
    }
}

/// `ctx`'s `Display` and `Debug`, each of which must fit in `NAME_CAP` bytes.
fn bounded_names(ctx: &Context) -> (String, String) {
    use std::fmt::Write;
    let (mut shown, mut debug) = (Capped::default(), Capped::default());
    write!(shown, "{ctx}").expect("the name fits in NAME_CAP bytes");
    write!(debug, "{ctx:?}").expect("the Debug form fits in NAME_CAP bytes");
    (shown.0, debug.0)
}

#[test]
fn display_of_10_000_nested_merges_on_a_2_mib_stack_is_elided() {
    guarded_with_stack(DEFAULT_STACK, || {
        let (base, _cancel) = Context::background().with_cancel();
        let mut merged = base.clone();
        for _ in 0..10_000 {
            merged = base.merge(&merged);
        }
        // Unbounded buffers: a recursive walk of the name overflows the stack before it is long.
        let (shown, debug) = (merged.to_string(), format!("{merged:?}"));
        assert!(shown.len() <= NAME_CAP, "{} bytes", shown.len());
        assert!(
            shown.starts_with(
                "context.Background.WithCancel.Merge(context.Background.WithCancel.Merge("
            ),
            "{shown}"
        );
        assert!(
            shown.contains(".Merge(context.Background…(2 more))"),
            "the rest is elided: {shown}"
        );
        assert_eq!(
            shown.matches('(').count(),
            shown.matches(')').count(),
            "every open Merge( is closed"
        );
        assert!(debug.contains(&shown), "{debug}");
    });
}

#[test]
fn display_of_a_context_merged_with_itself_64_times_is_bounded() {
    guarded(|| {
        let (mut merged, _cancel) = Context::background().with_cancel();
        for _ in 0..64 {
            merged = merged.merge(&merged);
        }
        let (shown, _) = bounded_names(&merged);
        assert!(shown.starts_with("context.Background.WithCancel.Merge("));
        assert!(shown.contains(" more)"), "the rest is elided: {shown}");
    });
}

#[test]
fn display_of_a_chain_of_100_000_contexts_is_elided_without_overflow() {
    guarded_with_stack(DEFAULT_STACK, || {
        let (root, _cancel_root) = Context::background().with_cancel();
        let mut leaf = root.clone();
        for i in 0..CHAIN {
            leaf = if i % 2 == 0 {
                let (ctx, handle) = leaf.with_cancel();
                handle.disarm();
                ctx
            } else {
                leaf.with_value(i)
            };
        }
        let (shown, _) = bounded_names(&leaf);
        assert!(
            shown.starts_with("context.Background.WithCancel.WithCancel.WithValue(type usize)"),
            "{shown}"
        );
        // 100,002 layers with the root and its `WithCancel`, of which the first 256 are named.
        assert!(shown.ends_with("…(99746 more)"), "{shown}");
    });
}
