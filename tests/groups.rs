//! Task groups: every task spawned into a group is accounted for in its report (finished,
//! canceled, failed, panicked, aborted or never started), a shutdown stops them all within its
//! grace plus the aborts, fail-fast cancels the siblings with the first failure, the limit is
//! never exceeded, and the leak check sees the group's tasks until they are gone.
//!
//! Time is Tokio's paused clock; every wait that could hang runs under [`watchdog`], which a
//! hang trips at once (the paused clock jumps to its deadline when nothing else can run).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskctx::testing::{assert_no_leaks, census};
use taskctx::{Context, Error, Outcome, Report, SpawnError, TaskGroup, TaskPanicked};
use tokio::time::{Instant, sleep};

const SECOND: Duration = Duration::from_secs(1);

/// Fails the test if `future` has not completed within a day of Tokio time.
async fn watchdog<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(86_400), future)
        .await
        .expect("hung: a day of Tokio time went by")
}

fn names(report: &Report, pick: impl Fn(&Outcome) -> bool) -> Vec<&str> {
    let mut names: Vec<_> = report
        .tasks()
        .iter()
        .filter(|task| pick(task.outcome()))
        .map(|task| task.name())
        .collect();
    names.sort_unstable();
    names
}

#[derive(Debug)]
struct Broken(u32);

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task {} broke", self.0)
    }
}

impl std::error::Error for Broken {}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_thousand_tasks_all_run_their_cleanup_within_the_grace() {
    const TASKS: u64 = 1_000;
    let (root, _cancel_root) = Context::background().with_cancel();
    let cleaned = Arc::new(AtomicUsize::new(0));
    let group = TaskGroup::new(&root);
    for i in 0..TASKS {
        let cleaned = cleaned.clone();
        group
            .spawn(format!("worker-{i}"), move |ctx| async move {
                ctx.done().await;
                // Cleanup of up to 999 ms: within the grace, some past its half.
                sleep(Duration::from_millis(i)).await;
                cleaned.fetch_add(1, Ordering::SeqCst);
                Ok::<(), Broken>(())
            })
            .unwrap();
    }
    tokio::task::yield_now().await;
    assert_eq!(census(&root).tasks, TASKS as usize);

    let report = watchdog(group.shutdown("deploy", 2 * SECOND)).await;

    assert_eq!(cleaned.load(Ordering::SeqCst), TASKS as usize);
    assert_eq!(report.counts().finished, TASKS as usize);
    assert_eq!(report.tasks().len(), TASKS as usize);
    assert_eq!(report.cause().unwrap().to_string(), "deploy");
    assert_eq!(report.grace(), Some(2 * SECOND));
    let slowest = report.tasks().iter().filter_map(|t| t.time_to_stop()).max();
    assert_eq!(slowest, Some(Duration::from_millis(999)));
    assert!(
        report.slow().count() == 0,
        "none took more than half of 2 s"
    );
    assert!(report.into_result().is_ok());
    assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn tasks_that_ignore_cancellation_are_aborted_and_named() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let dropped = Arc::new(AtomicUsize::new(0));
    let group = TaskGroup::builder(&root).name("mixed").build();
    for i in 0..10 {
        let dropped = dropped.clone();
        group
            .spawn(format!("task-{i}"), move |ctx| async move {
                struct CountsDrop(Arc<AtomicUsize>);
                impl Drop for CountsDrop {
                    fn drop(&mut self) {
                        self.0.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let _counts = CountsDrop(dropped);
                if i % 3 == 0 {
                    std::future::pending::<()>().await; // never looks at its context
                }
                ctx.done().await;
                if i == 4 {
                    sleep(Duration::from_millis(700)).await; // slow, but within the grace
                }
                Ok::<(), Broken>(())
            })
            .unwrap();
    }
    let started = Instant::now();

    let report = watchdog(group.shutdown("maintenance", SECOND)).await;

    assert_eq!(
        started.elapsed(),
        SECOND,
        "the stubborn ones took the whole grace"
    );
    let aborted = names(&report, |o| matches!(o, Outcome::Aborted));
    assert_eq!(aborted, ["task-0", "task-3", "task-6", "task-9"]);
    assert_eq!(report.counts().finished, 6);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        10,
        "every future was dropped"
    );
    let slow: Vec<_> = report.slow().map(|t| t.name()).collect();
    assert_eq!(slow, ["task-4"]);
    let shown = report.to_string();
    assert!(
        shown.starts_with(
            "task group \"mixed\": 10 tasks, 6 finished, 4 aborted; canceled: maintenance; grace 1s"
        ),
        "{shown}"
    );
    assert!(shown.contains("\n  aborted: task-"), "{shown}");
    assert!(
        shown.contains("\n  slow: task-4 (700ms to stop)"),
        "{shown}"
    );
    assert!(report.into_result().is_ok(), "aborts are not failures");
    assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn dropping_the_group_aborts_its_tasks_and_leaks_nothing() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let group = TaskGroup::new(&root);
    let ctx = group.context().clone();
    for i in 0..5 {
        group
            .spawn(format!("t{i}"), |_ctx| async {
                std::future::pending::<()>().await;
                Ok::<(), Broken>(())
            })
            .unwrap();
    }
    tokio::task::yield_now().await;
    assert_eq!(census(&root).tasks, 5);

    drop(group);

    assert!(ctx.is_done());
    assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_called_twice_in_a_row_is_idempotent() {
    let group = TaskGroup::new(&Context::background());
    let handle = group.handle();
    group
        .spawn("worker", |ctx| async move {
            ctx.done().await;
            Ok::<(), Broken>(())
        })
        .unwrap();

    watchdog(handle.shutdown("first", SECOND)).await;
    watchdog(handle.shutdown("second", SECOND)).await;
    let report = watchdog(group.shutdown("third", SECOND)).await;

    assert_eq!(report.cause().unwrap().to_string(), "first");
    assert_eq!(report.counts().finished, 1);
    assert_eq!(
        report.to_string(),
        "task group: 1 task, 1 finished; canceled: first; grace 1s"
    );
    watchdog(handle.shutdown("after the report", SECOND)).await;
}

#[tokio::test(start_paused = true)]
async fn concurrent_shutdowns_all_resolve_and_the_earliest_deadline_aborts() {
    let group = TaskGroup::new(&Context::background());
    let handle = group.handle();
    group
        .spawn("stubborn", |_ctx| async {
            std::future::pending::<()>().await;
            Ok::<(), Broken>(())
        })
        .unwrap();
    let started = Instant::now();

    let (_, _, report) = watchdog(async {
        tokio::join!(
            handle.shutdown("slow", 10 * SECOND),
            handle.shutdown("quick", SECOND),
            group.shutdown("owner", 5 * SECOND),
        )
    })
    .await;

    assert_eq!(started.elapsed(), SECOND);
    assert_eq!(
        names(&report, |o| matches!(o, Outcome::Aborted)),
        ["stubborn"]
    );
    assert_eq!(
        report.cause().unwrap().to_string(),
        "slow",
        "the first call's cause"
    );
    assert_eq!(
        report.grace(),
        Some(SECOND),
        "the earliest deadline's grace"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_from_inside_a_task_does_not_wait_for_that_task() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let group = TaskGroup::new(&root);
    let handle = group.handle();
    for i in 0..3 {
        group
            .spawn(format!("worker-{i}"), |ctx| async move {
                ctx.done().await;
                Ok::<(), Broken>(())
            })
            .unwrap();
    }
    let others_stopped_first = Arc::new(AtomicUsize::new(0));
    let seen = others_stopped_first.clone();
    group
        .spawn("supervisor", move |ctx| async move {
            sleep(SECOND).await;
            handle.shutdown("supervisor gave up", SECOND).await;
            // Still running, with every sibling stopped and its own context done.
            assert!(ctx.is_done());
            seen.store(handle.len(), Ordering::SeqCst);
            sleep(SECOND).await; // its own cleanup
            Ok::<(), Broken>(())
        })
        .unwrap();

    let report = watchdog(group.wait()).await;

    assert_eq!(
        others_stopped_first.load(Ordering::SeqCst),
        1,
        "only itself was left"
    );
    assert_eq!(
        report.counts().finished,
        4,
        "the supervisor finished, not aborted"
    );
    assert_eq!(report.tasks().last().unwrap().name(), "supervisor");
    assert_eq!(report.cause().unwrap().to_string(), "supervisor gave up");
    assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn a_task_that_shuts_down_its_group_is_aborted_by_the_owners_deadline() {
    let group = TaskGroup::new(&Context::background());
    let handle = group.handle();
    group
        .spawn("rogue", move |_ctx| async move {
            handle.shutdown("rogue", SECOND).await;
            std::future::pending::<()>().await; // ignores its own context
            Ok::<(), Broken>(())
        })
        .unwrap();
    tokio::task::yield_now().await;

    let report = watchdog(group.shutdown("owner", 2 * SECOND)).await;

    assert_eq!(names(&report, |o| matches!(o, Outcome::Aborted)), ["rogue"]);
}

#[tokio::test(start_paused = true)]
async fn spawning_after_shutdown_began_is_refused() {
    let group = TaskGroup::new(&Context::background());
    let handle = group.handle();
    let refused = Arc::new(Mutex::new(None));
    let result = refused.clone();
    let spawner = handle.clone();
    group
        .spawn("spawns-late", move |ctx| async move {
            ctx.done().await;
            let late = spawner.spawn("late", |_ctx| async { Ok::<(), Broken>(()) });
            *result.lock().unwrap() = Some(late);
            Ok::<(), Broken>(())
        })
        .unwrap();

    let report = watchdog(group.shutdown("closing", SECOND)).await;

    let late: Result<(), SpawnError> = refused.lock().unwrap().take().unwrap();
    assert!(late.unwrap_err().is_closed());
    assert_eq!(report.tasks().len(), 1);
    let after = handle.spawn("after", |_ctx| async { Ok::<(), Broken>(()) });
    assert_eq!(
        after.unwrap_err().to_string(),
        "task group no longer accepts tasks"
    );
}

// ---------------------------------------------------------------------------------------------
// Wait
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn wait_includes_tasks_spawned_while_it_waits() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let group = TaskGroup::new(&root);
    let handle = group.handle();
    group
        .spawn("parent", move |_ctx| async move {
            for generation in 0..3u64 {
                sleep(SECOND).await;
                handle.spawn(format!("child-{generation}"), move |_ctx| async move {
                    sleep(Duration::from_secs(generation)).await;
                    Ok::<(), Broken>(())
                })?;
            }
            Ok::<(), SpawnError>(())
        })
        .unwrap();
    let ctx = group.context().clone();

    let report = watchdog(group.wait()).await;

    assert_eq!(report.counts().finished, 4);
    assert!(report.cause().is_none(), "nothing cancelled the tasks");
    assert!(ctx.is_done(), "the group's context ends with the report");
    assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn returning_the_context_error_once_asked_to_stop_is_canceled_not_failed() {
    let group = TaskGroup::new(&Context::background());
    group
        .spawn("go-style", |ctx| async move { Err(ctx.done().await) })
        .unwrap();
    group
        .spawn("early-error", |_ctx| async { Err(Error::Canceled) })
        .unwrap();
    tokio::task::yield_now().await;

    let report = watchdog(group.shutdown("stop", SECOND)).await;

    let go_style = report
        .tasks()
        .iter()
        .find(|t| t.name() == "go-style")
        .unwrap();
    assert!(matches!(
        go_style.outcome(),
        Outcome::Canceled(Error::Canceled)
    ));
    let early = report
        .tasks()
        .iter()
        .find(|t| t.name() == "early-error")
        .unwrap();
    assert!(
        matches!(early.outcome(), Outcome::Failed(_)),
        "its context was not done: a real failure"
    );
    assert_eq!(report.first_failure().unwrap().name(), "early-error");
}

#[tokio::test(start_paused = true)]
async fn the_parent_cancelling_the_group_is_the_reports_cause() {
    let (parent, cancel_parent) = Context::background().with_cancel_cause();
    let group = TaskGroup::new(&parent);
    group
        .spawn("follower", |ctx| async move {
            ctx.done().await;
            sleep(SECOND).await;
            Ok::<(), Broken>(())
        })
        .unwrap();
    tokio::task::yield_now().await;
    cancel_parent.cancel("request gone");

    let report = watchdog(group.wait()).await;

    assert_eq!(report.cause().unwrap().to_string(), "request gone");
    assert_eq!(report.tasks()[0].time_to_stop(), Some(SECOND));
    assert_eq!(report.grace(), None);
}

/// A task spawned after the group was cancelled is asked to stop at its spawn: its time to
/// stop, and whether it was slow, count from there, whichever tasks stop around it.
#[tokio::test(start_paused = true)]
async fn a_task_spawned_after_the_cancellation_is_timed_from_its_spawn() {
    let (parent, cancel_parent) = Context::background().with_cancel();
    let group = TaskGroup::new(&parent);
    cancel_parent.cancel();
    let cleanup = |ms| {
        move |ctx: Context| async move {
            ctx.done().await;
            sleep(Duration::from_millis(ms)).await;
            Ok::<(), Broken>(())
        }
    };
    group.spawn("at-cancel", cleanup(600)).unwrap();
    sleep(Duration::from_millis(300)).await;
    group.spawn("later-quick", cleanup(400)).unwrap();
    group.spawn("later-slow", cleanup(700)).unwrap();

    // Half the grace is 500 ms.
    let report = watchdog(group.shutdown("deploy", SECOND)).await;

    let took: Vec<_> = report
        .tasks()
        .iter()
        .map(|t| (t.name(), t.time_to_stop(), t.ran_for()))
        .collect();
    let ms = |ms| Some(Duration::from_millis(ms));
    assert_eq!(
        took,
        [
            ("at-cancel", ms(600), Duration::from_millis(600)),
            ("later-quick", ms(400), Duration::from_millis(400)),
            ("later-slow", ms(700), Duration::from_millis(700)),
        ]
    );
    let slow: Vec<_> = report.slow().map(|t| t.name()).collect();
    assert_eq!(slow, ["at-cancel", "later-slow"]);
}

// ---------------------------------------------------------------------------------------------
// Failure policies
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn fail_fast_cancels_every_sibling_with_the_first_failure() {
    const TASKS: u32 = 20;
    let (root, _cancel_root) = Context::background().with_cancel();
    let group = TaskGroup::builder(&root).fail_fast().build();
    let seen = Arc::new(Mutex::new(Vec::new()));
    for i in 0..TASKS {
        let seen = seen.clone();
        group
            .spawn(format!("task-{i}"), move |ctx| async move {
                if i == 7 {
                    sleep(SECOND).await;
                    return Err(Broken(7));
                }
                ctx.done().await;
                let cause = ctx.cause().unwrap();
                seen.lock()
                    .unwrap()
                    .push((i, cause.downcast_ref::<Broken>().map(|b| b.0)));
                Ok(())
            })
            .unwrap();
    }

    let report = watchdog(group.wait()).await;

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.len(), TASKS as usize - 1);
    assert!(seen.iter().all(|(_, cause)| *cause == Some(7)), "{seen:?}");
    assert_eq!(report.first_failure().unwrap().name(), "task-7");
    assert_eq!(report.counts().finished, TASKS as usize - 1);
    assert!(report.cause().unwrap().is::<Broken>());
    let err = report.into_result().unwrap_err();
    assert_eq!(err.downcast_ref::<Broken>().unwrap().0, 7);
    assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn collect_all_lets_siblings_go_on_and_keeps_every_failure() {
    let group = TaskGroup::new(&Context::background());
    let finished_after_failures = Arc::new(AtomicUsize::new(0));
    for i in 0..10u32 {
        let finished = finished_after_failures.clone();
        group
            .spawn(format!("task-{i}"), move |ctx| async move {
                sleep(Duration::from_secs(u64::from(i))).await;
                if i % 4 == 1 {
                    return Err(Broken(i));
                }
                assert!(!ctx.is_done(), "no failure cancels a collect-all group");
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .unwrap();
    }

    let report = watchdog(group.wait()).await;

    assert_eq!(finished_after_failures.load(Ordering::SeqCst), 7);
    let failures: Vec<_> = report.failures().map(|t| t.name()).collect();
    assert_eq!(failures, ["task-1", "task-5", "task-9"]);
    assert!(report.cause().is_none());
    let shown = report.to_string();
    assert!(
        shown.ends_with(
            "\n  failed: task-1 (task 1 broke), task-5 (task 5 broke), task-9 (task 9 broke)"
        ),
        "{shown}"
    );
    assert_eq!(
        report.into_result().unwrap_err().to_string(),
        "task 1 broke"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_task_is_reported_and_its_panic_resumed() {
    let group = TaskGroup::new(&Context::background());
    group
        .spawn("fails-first", |_ctx| async { Err(Broken(1)) })
        .unwrap();
    group
        .spawn("panics", |_ctx| async {
            sleep(SECOND).await;
            std::panic::panic_any(String::from("invariant violated"));
            #[allow(unreachable_code)]
            Ok::<(), Broken>(())
        })
        .unwrap();
    group
        .spawn(
            "panics-in-closure",
            |_ctx| -> std::future::Ready<Result<(), Broken>> { panic!("before any future") },
        )
        .unwrap();
    group
        .spawn("sibling", |_ctx| async {
            sleep(2 * SECOND).await;
            Ok::<(), Broken>(())
        })
        .unwrap();

    let report = watchdog(group.wait()).await;

    assert_eq!(report.counts().panicked, 2);
    assert_eq!(report.counts().finished, 1, "the sibling went on");
    assert!(
        report.to_string().contains("invariant violated"),
        "{report}"
    );
    let resumed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| report.into_result()));
    let payload = resumed.expect_err("a panic wins over an error");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"before any future"),
        "the first panic, in stop order, with its own payload"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panic_under_fail_fast_cancels_the_siblings_with_which_task_panicked() {
    let group = TaskGroup::builder(&Context::background())
        .fail_fast()
        .build();
    let cause = Arc::new(Mutex::new(None));
    let seen = cause.clone();
    group
        .spawn("sibling", move |ctx| async move {
            ctx.done().await;
            *seen.lock().unwrap() = ctx.cause();
            Ok::<(), Broken>(())
        })
        .unwrap();
    group
        .spawn("parser", |_ctx| async {
            sleep(SECOND).await;
            panic!("unexpected token");
            #[allow(unreachable_code)]
            Ok::<(), Broken>(())
        })
        .unwrap();

    let report = watchdog(group.wait()).await;

    let cause = cause.lock().unwrap().take().unwrap();
    let panicked = cause.downcast_ref::<TaskPanicked>().unwrap();
    assert_eq!(
        (panicked.task(), panicked.message()),
        ("parser", "unexpected token")
    );
    assert_eq!(report.first_failure().unwrap().name(), "parser");
    let mut tasks = report.into_tasks();
    let parser = tasks.iter().position(|t| t.name() == "parser").unwrap();
    let Outcome::Panicked(panic) = tasks.remove(parser).into_outcome() else {
        panic!("not a panic")
    };
    assert_eq!(panic.message(), "unexpected token");
}

// ---------------------------------------------------------------------------------------------
// Limit
// ---------------------------------------------------------------------------------------------

/// Counts the bodies running at once, and the most there ever were.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn the_limit_is_never_exceeded() {
    const LIMIT: usize = 4;
    let (root, _cancel_root) = Context::background().with_cancel();
    let gauge = Arc::new(Gauge::default());
    let group = TaskGroup::builder(&root).limit(LIMIT).build();
    for i in 0..100u64 {
        let gauge = gauge.clone();
        group
            .spawn(format!("job-{i}"), move |_ctx| {
                gauge.enter(); // the closure runs only once the task has its slot
                async move {
                    sleep(Duration::from_millis(1 + i * 37 % 11)).await;
                    gauge.leave();
                    Ok::<(), Broken>(())
                }
            })
            .unwrap();
    }
    assert_eq!(group.len(), 100, "spawn never waits");

    let report = watchdog(group.wait()).await;

    assert_eq!(report.counts().finished, 100);
    assert_eq!(gauge.most.load(Ordering::SeqCst), LIMIT);
    assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn the_limit_holds_while_tasks_are_aborted_and_queued_tasks_never_start() {
    const LIMIT: usize = 3;
    let gauge = Arc::new(Gauge::default());
    let group = TaskGroup::builder(&Context::background())
        .limit(LIMIT)
        .build();
    for i in 0..10 {
        let gauge = gauge.clone();
        group
            .spawn(format!("stuck-{i}"), move |_ctx| {
                gauge.enter();
                struct Leave(Arc<Gauge>);
                impl Drop for Leave {
                    fn drop(&mut self) {
                        self.0.leave();
                    }
                }
                let leave = Leave(gauge);
                async move {
                    let _leave = leave;
                    std::future::pending::<()>().await;
                    Ok::<(), Broken>(())
                }
            })
            .unwrap();
    }
    tokio::task::yield_now().await;
    let refused = group.try_spawn("extra", |_ctx| async { Ok::<(), Broken>(()) });
    assert_eq!(
        refused.unwrap_err().to_string(),
        "task group has no free slot (limit 3)"
    );

    let report = watchdog(group.shutdown("stop", SECOND)).await;

    assert_eq!(report.counts().aborted, LIMIT);
    assert_eq!(report.counts().not_started, 10 - LIMIT);
    assert_eq!(gauge.most.load(Ordering::SeqCst), LIMIT);
    assert_eq!(gauge.now.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn try_spawn_takes_a_free_slot_or_refuses() {
    let group = TaskGroup::builder(&Context::background()).limit(2).build();
    let mut started = 0;
    for i in 0..5 {
        match group.try_spawn(format!("job-{i}"), |_ctx| async {
            sleep(SECOND).await;
            Ok::<(), Broken>(())
        }) {
            Ok(()) => started += 1,
            Err(err) => assert!(err.is_full() && !err.is_closed()),
        }
    }
    assert_eq!(started, 2);
    sleep(2 * SECOND).await;
    assert!(
        group
            .try_spawn("later", |_ctx| async { Ok::<(), Broken>(()) })
            .is_ok()
    );
    assert_eq!(watchdog(group.wait()).await.counts().finished, 3);
}

// ---------------------------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_spawning_and_shutting_down_across_threads_all_stop_once() {
    for _round in 0..20 {
        let (root, _cancel_root) = Context::background().with_cancel();
        let group = TaskGroup::builder(&root).limit(8).build();
        let handle = group.handle();
        for i in 0..200 {
            let handle = handle.clone();
            group
                .spawn(format!("t{i}"), move |ctx| async move {
                    if i % 10 == 0 {
                        // Spawns race with the shutdown: each is either in the report or refused.
                        let _ = handle.spawn("nested", |ctx| async move {
                            ctx.done().await;
                            Ok::<(), Broken>(())
                        });
                    }
                    tokio::task::yield_now().await;
                    if i % 7 == 0 {
                        ctx.done().await;
                    }
                    Ok::<(), Broken>(())
                })
                .unwrap();
        }
        let report = tokio::time::timeout(
            Duration::from_secs(60),
            group.shutdown("round over", Duration::from_secs(30)),
        )
        .await
        .expect("hung");
        assert!(report.tasks().len() >= 200);
        assert_eq!(report.counts().aborted, 0);
        assert!(handle.is_empty());
        assert_no_leaks(&root).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Tracing
// ---------------------------------------------------------------------------------------------

/// The closure is called later, inside the task's own Tokio task, yet runs in the span current
/// at `spawn`, as its future does after an `.await`.
#[tokio::test]
async fn a_task_runs_in_the_tracing_span_current_at_its_spawn() {
    let _default = common::trace_everything();
    let span = tracing::info_span!("request", id = 7);
    let expected = span.id();
    assert!(expected.is_some(), "the span is enabled");

    let group = TaskGroup::new(&Context::background());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    span.in_scope(|| {
        group.spawn("handler", move |_ctx| {
            record.lock().unwrap().push(tracing::Span::current().id());
            async move {
                tokio::task::yield_now().await;
                record.lock().unwrap().push(tracing::Span::current().id());
                Ok::<(), Error>(())
            }
        })
    })
    .unwrap();
    watchdog(group.wait()).await;
    assert_eq!(*seen.lock().unwrap(), [expected.clone(), expected]);
}

// ---------------------------------------------------------------------------------------------
// Nesting
// ---------------------------------------------------------------------------------------------

/// Sets its flag when dropped: the future that owns it is gone.
struct DropFlag(Arc<AtomicUsize>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn an_inner_group_owned_by_a_task_stops_within_the_outer_shutdowns_grace() {
    // A task of the outer group owns an inner group made from its own context. The outer
    // shutdown cancels the inner tasks through the context tree; the inner task that ignores
    // it is aborted when the outer grace ends, as the owner is aborted and drops its group.
    let (root, _cancel_root) = Context::background().with_cancel();
    let outer = TaskGroup::new(&root);
    let (cleaned, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    outer
        .spawn("owner", {
            let (cleaned, dropped) = (cleaned.clone(), dropped.clone());
            move |ctx| async move {
                let inner = TaskGroup::new(&ctx);
                for i in 0..2 {
                    let cleaned = cleaned.clone();
                    inner.spawn(format!("inner-{i}"), move |ctx| async move {
                        ctx.done().await;
                        sleep(SECOND).await; // cleanup, well within the grace
                        cleaned.fetch_add(1, Ordering::SeqCst);
                        Ok::<(), Error>(())
                    })?;
                }
                inner.spawn("inner-stuck", move |_ctx| async move {
                    let _flag = DropFlag(dropped);
                    std::future::pending::<()>().await;
                    Ok::<(), Error>(())
                })?;
                inner.wait().await.into_result()?;
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            }
        })
        .unwrap();
    let started = Instant::now();
    let report = watchdog(outer.shutdown("deploy", 10 * SECOND)).await;
    assert_eq!(
        Instant::now() - started,
        10 * SECOND,
        "stopped when the outer grace ended"
    );
    assert_eq!(names(&report, |o| matches!(o, Outcome::Aborted)), ["owner"]);
    assert!(
        report.tasks()[0].groups().is_empty(),
        "an inner group dropped without its report is not shown"
    );
    assert_eq!(
        cleaned.load(Ordering::SeqCst),
        2,
        "the inner tasks ran their cleanup"
    );
    watchdog(assert_no_leaks(&root)).await;
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the stuck inner task is gone"
    );
}

/// Builds a group named `name` under `ctx` whose `tasks` tasks each wait for cancellation, then
/// clean up for a second; returns its report.
async fn inner_group(ctx: &Context, name: &'static str, tasks: usize) -> Report {
    let inner = TaskGroup::builder(ctx).name(name).build();
    for i in 0..tasks {
        inner
            .spawn(format!("{name}-{i}"), |ctx| async move {
                ctx.done().await;
                sleep(SECOND).await;
                Ok::<(), Error>(())
            })
            .unwrap();
    }
    inner.wait().await
}

#[tokio::test(start_paused = true)]
async fn an_inner_groups_summary_is_shown_under_the_task_that_owned_it() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let outer = TaskGroup::builder(&root).name("outer").build();
    outer
        .spawn("owner", |ctx| async move {
            inner_group(&ctx, "inner", 3).await.into_result()
        })
        .unwrap();
    let report = watchdog(outer.shutdown("deploy", 10 * SECOND)).await;

    let owner = &report.tasks()[0];
    assert!(matches!(owner.outcome(), Outcome::Finished));
    assert_eq!(owner.groups().len(), 1);
    let inner = &owner.groups()[0];
    assert_eq!(inner.name(), Some("inner"));
    assert_eq!(inner.counts().finished, 3);
    assert_eq!(inner.cause().unwrap().to_string(), "deploy");
    assert_eq!(
        report.to_string(),
        "task group \"outer\": 1 task, 1 finished; canceled: deploy; grace 10s\n  \
         task owner:\n    task group \"inner\": 3 tasks, 3 finished; canceled: deploy"
    );
    watchdog(assert_no_leaks(&root)).await;
}

#[tokio::test(start_paused = true)]
async fn a_task_that_owns_two_groups_in_turn_keeps_both_in_order() {
    let outer = TaskGroup::new(&Context::background());
    outer
        .spawn("owner", |ctx| async move {
            let (first_ctx, cancel_first) = ctx.with_cancel();
            cancel_first.cancel();
            inner_group(&first_ctx, "first", 1).await.into_result()?;
            let (second_ctx, cancel_second) = ctx.with_cancel();
            cancel_second.cancel();
            inner_group(&second_ctx, "second", 2).await.into_result()
        })
        .unwrap();
    let report = watchdog(outer.wait()).await;

    let groups = report.tasks()[0].groups();
    let shown: Vec<_> = groups
        .iter()
        .map(|group| (group.name().unwrap(), group.counts().finished))
        .collect();
    assert_eq!(shown, [("first", 1), ("second", 2)]);
    let text = report.to_string();
    let (first, second) = (
        text.find("\n    task group \"first\": 1 task, 1 finished"),
        text.find("\n    task group \"second\": 2 tasks, 2 finished"),
    );
    assert!(first.is_some() && first < second, "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_an_inner_task_shows_its_message_and_its_owner_still_resumes_it() {
    let outer = TaskGroup::new(&Context::background());
    let resumed = Arc::new(Mutex::new(None));
    outer
        .spawn("owner", {
            let resumed = resumed.clone();
            |ctx| async move {
                let inner = TaskGroup::builder(&ctx).name("inner").build();
                inner.spawn("boom", |_ctx| async {
                    if true {
                        panic!("inner cheese");
                    }
                    Ok::<(), Error>(())
                })?;
                let report = inner.wait().await;
                let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    report.into_result()
                }))
                .unwrap_err();
                *resumed.lock().unwrap() = caught.downcast_ref::<&str>().map(|s| s.to_string());
                Ok::<(), SpawnError>(())
            }
        })
        .unwrap();
    let report = watchdog(outer.wait()).await;

    assert_eq!(
        resumed.lock().unwrap().as_deref(),
        Some("inner cheese"),
        "the inner owner's report resumed the original payload"
    );
    let owner = &report.tasks()[0];
    assert!(matches!(owner.outcome(), Outcome::Finished));
    let Outcome::Panicked(panic) = owner.groups()[0].tasks()[0].outcome() else {
        panic!("the summary keeps the panic");
    };
    assert_eq!(panic.message(), "inner cheese");
    let text = report.to_string();
    assert!(
        text.contains("\n  task owner:\n    task group \"inner\": 1 task, 1 panicked\n      panicked: boom (inner cheese)"),
        "{text}"
    );
}
