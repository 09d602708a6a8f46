//! Concurrency: many threads cancelling, deriving, reading, waiting and stopping at once, over
//! many iterations with a seeded xorshift PRNG. Every test asserts an outcome that must hold
//! whatever the interleaving (no timing asserts); timeouts only guard against real hangs.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use taskctx::testing::census;
use taskctx::{CancelCauseHandle, CancelHandle, Context, Error};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use common::rng::Rng;

fn cause_text(ctx: &Context) -> Option<String> {
    ctx.cause().map(|cause| cause.to_string())
}

/// Reads `err`, `cause`, `err` and checks they never disagree: an error is never visible
/// without its cause, a cause never without an error, and the error never changes. Returns a
/// consistent snapshot: `(None, None)` or `(Some(err), Some(cause))`.
fn read_consistently(ctx: &Context) -> (Option<Error>, Option<String>) {
    let before = ctx.err();
    let cause = cause_text(ctx);
    let after = ctx.err();
    if before.is_some() {
        assert!(cause.is_some(), "error {before:?} visible without a cause");
        assert_eq!(before, after, "the error changed");
    }
    match cause {
        Some(cause) => {
            assert!(after.is_some(), "cause {cause:?} visible before the error");
            (after, Some(cause))
        }
        None => (None, None),
    }
}

struct Node {
    ctx: Context,
    handle: CancelCauseHandle,
    parent: Option<usize>,
}

fn build_tree(rng: &mut Rng, size: usize) -> Vec<Node> {
    let (ctx, handle) = Context::background().with_cancel_cause();
    let mut nodes = vec![Node {
        ctx,
        handle,
        parent: None,
    }];
    for i in 1..size {
        // Half the time extend the newest node (deep paths), else any node (bushy).
        let parent = if rng.below(2) == 0 {
            i - 1
        } else {
            rng.below(i)
        };
        let base = if rng.below(3) == 0 {
            nodes[parent].ctx.with_value(i)
        } else {
            nodes[parent].ctx.clone()
        };
        let (ctx, handle) = base.with_cancel_cause();
        nodes.push(Node {
            ctx,
            handle,
            parent: Some(parent),
        });
    }
    nodes
}

fn is_ancestor_or_self(nodes: &[Node], ancestor: usize, mut node: usize) -> bool {
    loop {
        if node == ancestor {
            return true;
        }
        match nodes[node].parent {
            Some(p) => node = p,
            None => return false,
        }
    }
}

#[test]
fn concurrent_cancels_of_a_random_tree_leave_every_node_done_with_a_consistent_cause() {
    const ITERATIONS: u64 = 200;
    const SIZE: usize = 128;
    const THREADS: usize = 4;
    for iteration in 0..ITERATIONS {
        let mut rng = Rng::new(iteration);
        let nodes = build_tree(&mut rng, SIZE);
        let mut order: Vec<usize> = (0..SIZE).collect();
        rng.shuffle(&mut order);
        let barrier = Barrier::new(THREADS + 1);
        let finished = AtomicBool::new(false);
        let (nodes, order, barrier, finished) = (&nodes, &order, &barrier, &finished);

        thread::scope(|s| {
            for t in 0..THREADS {
                let seed = iteration * 100 + t as u64;
                s.spawn(move || {
                    let mut rng = Rng::new(seed);
                    barrier.wait();
                    for &i in order.iter().skip(t).step_by(THREADS) {
                        rng.spin(64);
                        nodes[i].handle.cancel(format!("node-{i}"));
                        // And cancel someone else's node again: idempotent, racing.
                        let j = rng.below(SIZE);
                        nodes[j].handle.cancel(format!("node-{j}"));
                    }
                });
            }
            // Observer: once a node reports done, it must report the same thing forever.
            let observer = s.spawn(move || {
                let mut seen: Vec<Option<(Error, String)>> = vec![None; SIZE];
                let mut rng = Rng::new(iteration ^ 0xABCD);
                barrier.wait();
                while !finished.load(Ordering::Acquire) {
                    let i = rng.below(SIZE);
                    let (err, cause) = read_consistently(&nodes[i].ctx);
                    match (&seen[i], err, cause) {
                        (Some(before), err, cause) => {
                            assert_eq!(Some(before.0), err, "node {i}: err changed");
                            assert_eq!(Some(&before.1), cause.as_ref(), "node {i}: cause changed");
                        }
                        (None, Some(err), Some(cause)) => seen[i] = Some((err, cause)),
                        (None, None, None) => {}
                        (None, err, cause) => panic!("node {i}: {err:?} with {cause:?}"),
                    }
                }
                seen
            });
            // Every node gets cancelled by some canceller, so this ends; then stop the observer.
            while !nodes.iter().all(|n| n.ctx.is_done()) {
                thread::yield_now();
            }
            finished.store(true, Ordering::Release);
            let seen = observer.join().unwrap();
            for (i, first) in seen.into_iter().enumerate() {
                if let Some((err, cause)) = first {
                    assert_eq!(nodes[i].ctx.err(), Some(err));
                    assert_eq!(cause_text(&nodes[i].ctx), Some(cause));
                }
            }
        });

        for (i, node) in nodes.iter().enumerate() {
            assert_eq!(node.ctx.err(), Some(Error::Canceled), "node {i}");
            let cause = cause_text(&node.ctx).expect("a done node has a cause");
            let k: usize = cause
                .strip_prefix("node-")
                .and_then(|k| k.parse().ok())
                .unwrap_or_else(|| panic!("node {i}: unexpected cause {cause:?}"));
            assert!(
                is_ancestor_or_self(nodes, k, i),
                "iteration {iteration}: node {i} reports the cause of node {k}, not an ancestor"
            );
            // Either this node was cancelled first by its own handle, or it inherited its
            // parent's cause as the parent's cancellation reached it.
            if let Some(p) = node.parent {
                let parents = cause_text(&nodes[p].ctx).unwrap();
                assert!(
                    cause == format!("node-{i}") || cause == parents,
                    "iteration {iteration}: node {i} has {cause:?}, parent {p} has {parents:?}"
                );
            }
        }
    }
}

/// Something derived from the parent while it was being cancelled, kept alive with whatever
/// handle it came with.
#[allow(dead_code)] // the handles are held, not read
enum Derived {
    Plain(Context),
    Cancel(Context, CancelHandle),
    Cause(Context, CancelCauseHandle),
}

impl Derived {
    fn ctx(&self) -> &Context {
        match self {
            Derived::Plain(c) | Derived::Cancel(c, _) | Derived::Cause(c, _) => c,
        }
    }
}

#[test]
fn child_derived_while_parent_is_cancelled_is_done_with_the_parents_error_and_cause() {
    const ITERATIONS: u64 = 600;
    const DERIVED: usize = 40;
    let (other, _cancel_other) = Context::background().with_cancel();
    for iteration in 0..ITERATIONS {
        let (root, _cancel_root) = Context::background().with_cancel();
        let (parent, cancel_parent) = root.with_cancel_cause();
        let barrier = Barrier::new(2);
        let expected = format!("parent-{iteration}");
        let derived = thread::scope(|s| {
            s.spawn(|| {
                let mut rng = Rng::new(iteration);
                barrier.wait();
                rng.spin(2_000);
                cancel_parent.cancel(expected.clone());
            });
            let deriver = s.spawn(|| {
                let mut rng = Rng::new(iteration + 7);
                let mut derived: Vec<Derived> = Vec::new();
                barrier.wait();
                for n in 0..DERIVED {
                    // Derive from the parent, or from something derived from it already.
                    let from = if n == 0 || rng.below(2) == 0 {
                        parent.clone()
                    } else {
                        derived[rng.below(derived.len())].ctx().clone()
                    };
                    let made = match rng.below(7) {
                        0 => {
                            let (c, h) = from.with_cancel();
                            Derived::Cancel(c, h)
                        }
                        1 => {
                            let (c, h) = from.with_cancel_cause();
                            Derived::Cause(c, h)
                        }
                        2 => {
                            // Outside a runtime: kept by the crate's timer thread.
                            let (c, h) = from.with_timeout(Duration::from_secs(3600));
                            Derived::Cancel(c, h)
                        }
                        3 => {
                            let (c, h) = from.with_value(n).with_cancel();
                            Derived::Cancel(c, h)
                        }
                        4 => Derived::Plain(from.merge(&other)),
                        5 => Derived::Plain(other.merge(&from)),
                        _ => Derived::Plain(from.with_token(CancellationToken::new())),
                    };
                    derived.push(made);
                }
                derived
            });
            deriver.join().unwrap()
        });
        for (n, d) in derived.iter().enumerate() {
            assert_eq!(
                d.ctx().err(),
                Some(Error::Canceled),
                "iteration {iteration}, #{n}"
            );
            assert_eq!(
                cause_text(d.ctx()).as_deref(),
                Some(expected.as_str()),
                "iteration {iteration}, #{n}"
            );
        }
        assert!(!other.is_done());
        assert_eq!(
            census(&other).contexts,
            0,
            "merged children left the live parent"
        );
        assert!(census(&root).is_clean(), "{}", census(&root));
    }
}

#[test]
fn err_and_cause_never_disagree_while_a_deadline_races_a_cancel() {
    const ITERATIONS: u64 = 500;
    let mut deadline_won = 0;
    for iteration in 0..ITERATIONS {
        let mut rng = Rng::new(iteration);
        // Outside a runtime, so the crate's timer thread fires it, concurrently with the
        // canceller below. Which one wins is up to the scheduler.
        let at = Instant::now() + Duration::from_micros(rng.below(300) as u64);
        let (ctx, cancel) = Context::background().with_deadline_cause(at, "deadline");
        let (child, _c) = ctx.with_value(iteration).with_cancel();
        let barrier = Barrier::new(4);
        let done_reading = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                let mut rng = Rng::new(iteration + 1);
                barrier.wait();
                rng.spin(20_000);
                cancel.cancel();
                done_reading.store(true, Ordering::Release);
            });
            for _reader in 0..2 {
                let (barrier, done_reading, ctx, child) = (&barrier, &done_reading, &ctx, &child);
                s.spawn(move || {
                    barrier.wait();
                    loop {
                        let stop = done_reading.load(Ordering::Acquire);
                        for watched in [ctx, child] {
                            match read_consistently(watched) {
                                (None, None) => {}
                                (Some(Error::DeadlineExceeded), Some(c)) => {
                                    assert_eq!(c, "deadline")
                                }
                                (Some(Error::Canceled), Some(c)) => {
                                    assert_eq!(c, Error::Canceled.to_string())
                                }
                                other => panic!("mismatched err and cause: {other:?}"),
                            }
                        }
                        if stop {
                            break;
                        }
                    }
                });
            }
            barrier.wait();
        });
        let (err, cause) = read_consistently(&ctx);
        let expected_cause = match err {
            Some(Error::DeadlineExceeded) => "deadline".to_string(),
            Some(Error::Canceled) => Error::Canceled.to_string(),
            None => panic!("cancel() returned but the context is live"),
        };
        assert_eq!(cause.as_deref(), Some(expected_cause.as_str()));
        assert_eq!(read_consistently(&child), (err, cause), "the child agrees");
        deadline_won += usize::from(err == Some(Error::DeadlineExceeded));
    }
    // Not an assertion on timing: both outcomes are legal, this only reports the mix.
    println!("the deadline won {deadline_won} of {ITERATIONS} races");
}

#[test]
fn cause_read_while_two_cancellations_race_is_none_or_the_final_cause() {
    const ITERATIONS: u64 = 1_000;
    for iteration in 0..ITERATIONS {
        let (parent, cancel_parent) = Context::background().with_cancel_cause();
        let (child, cancel_child) = parent.with_cancel_cause();
        let (grandchild, _c) = child.with_cancel();
        let barrier = Barrier::new(3);
        let cancellers_done = AtomicUsize::new(0);
        let observed = thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                Rng::new(iteration).spin(500);
                cancel_parent.cancel("parent");
                cancellers_done.fetch_add(1, Ordering::Release);
            });
            s.spawn(|| {
                barrier.wait();
                Rng::new(iteration + 1).spin(500);
                cancel_child.cancel("child");
                cancellers_done.fetch_add(1, Ordering::Release);
            });
            let reader = s.spawn(|| {
                let mut observed = Vec::new();
                barrier.wait();
                loop {
                    let stop = cancellers_done.load(Ordering::Acquire) == 2;
                    observed.push(read_consistently(&grandchild));
                    if stop {
                        return observed;
                    }
                }
            });
            reader.join().unwrap()
        });
        let final_cause = cause_text(&grandchild).expect("done");
        assert!(final_cause == "parent" || final_cause == "child");
        assert_eq!(cause_text(&child), Some(final_cause.clone()));
        for (err, cause) in observed {
            match (err, cause) {
                (None, None) => {}
                (Some(Error::Canceled), Some(c)) => assert_eq!(c, final_cause),
                other => panic!("observed {other:?}, final cause {final_cause:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn done_futures_registered_concurrently_with_cancel_are_always_woken() {
    const ITERATIONS: u64 = 300;
    const WAITERS: usize = 16;
    let (root, _cancel_root) = Context::background().with_cancel();
    for iteration in 0..ITERATIONS {
        let (ctx, cancel) = root.with_cancel();
        let mut waiters = Vec::new();
        for w in 0..WAITERS {
            let ctx = ctx.clone();
            let mut rng = Rng::new(iteration * 1000 + w as u64);
            let style = rng.below(3);
            waiters.push(tokio::spawn(async move {
                for _ in 0..rng.below(3) {
                    tokio::task::yield_now().await;
                }
                match style {
                    0 => ctx.done().await,
                    1 => ctx.done_owned().await,
                    _ => {
                        // Register from this task, then finish waiting in another one, so
                        // the registered waker is replaced while cancel may be running.
                        let mut done = ctx.done_owned();
                        let _ = futures::poll!(&mut done);
                        tokio::spawn(done).await.unwrap()
                    }
                }
            }));
        }
        let seed = iteration;
        let canceller = tokio::task::spawn_blocking(move || {
            Rng::new(seed).spin(5_000);
            cancel.cancel();
        });
        let all = futures::future::join_all(waiters);
        let results = tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .unwrap_or_else(|_| panic!("iteration {iteration}: a done() waiter was never woken"));
        for result in results {
            assert_eq!(result.unwrap(), Error::Canceled);
        }
        canceller.await.unwrap();
    }
    assert!(census(&root).is_clean(), "{}", census(&root));
}

#[test]
fn after_func_stop_racing_cancel_exactly_one_of_ran_or_stopped() {
    const ITERATIONS: u64 = 5_000;
    let mut stopped_count = 0;
    for iteration in 0..ITERATIONS {
        let (ctx, cancel) = Context::background().with_cancel();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let registration = ctx.after_func(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        let barrier = Barrier::new(2);
        let stopped = thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                Rng::new(iteration).spin(200);
                cancel.cancel();
            });
            barrier.wait();
            Rng::new(iteration + 1).spin(200);
            registration.stop()
        });
        let ran = runs.load(Ordering::SeqCst);
        assert!(ran <= 1, "iteration {iteration}: ran {ran} times");
        assert!(
            stopped != (ran == 1),
            "iteration {iteration}: stopped = {stopped}, ran = {ran}"
        );
        stopped_count += usize::from(stopped);
    }
    // Not an assertion on timing: both outcomes are legal, this only reports the mix.
    println!("stop won {stopped_count} of {ITERATIONS} races");
}

#[test]
fn after_func_registered_concurrently_with_cancel_runs_exactly_once() {
    const ITERATIONS: u64 = 2_000;
    const CALLBACKS: usize = 8;
    for iteration in 0..ITERATIONS {
        let (ctx, cancel) = Context::background().with_cancel();
        let runs = Arc::new(AtomicUsize::new(0));
        let barrier = Barrier::new(2);
        let registrations = Mutex::new(Vec::new());
        thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                Rng::new(iteration).spin(500);
                cancel.cancel();
            });
            barrier.wait();
            for _ in 0..CALLBACKS {
                let r = runs.clone();
                let registration = ctx.after_func(move || {
                    r.fetch_add(1, Ordering::SeqCst);
                });
                registrations.lock().unwrap().push(registration);
            }
        });
        assert_eq!(
            runs.load(Ordering::SeqCst),
            CALLBACKS,
            "iteration {iteration}: every callback runs exactly once"
        );
    }
}

#[test]
fn children_dropped_while_parent_is_cancelled_leave_nothing_registered() {
    const ITERATIONS: u64 = 400;
    const CHILDREN: usize = 64;
    for iteration in 0..ITERATIONS {
        let (root, _cancel_root) = Context::background().with_cancel();
        let (parent, cancel_parent) = root.with_cancel();
        let (other, _cancel_other) = root.with_cancel();
        let mut children = Vec::new();
        for n in 0..CHILDREN {
            let (c, h) = parent.with_cancel();
            h.disarm();
            // Some are merges, registered in `other` as well.
            children.push(if n % 4 == 0 { c.merge(&other) } else { c });
        }
        let half = children.split_off(CHILDREN / 2);
        let barrier = Barrier::new(3);
        thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                Rng::new(iteration).spin(2_000);
                cancel_parent.cancel();
            });
            s.spawn(|| {
                barrier.wait();
                drop(children);
            });
            s.spawn(|| {
                barrier.wait();
                drop(half);
            });
        });
        assert!(parent.is_done());
        assert_eq!(census(&other).contexts, 0, "iteration {iteration}");
        let left = census(&root);
        assert_eq!(left.contexts, 1, "only `other` is left: {left}");
    }
}

/// Released contexts are reused by the next context their thread derives. A cancellation that
/// is still walking a released child's old parent must never reach the child's next life:
/// threads derive and drop children of a parent another thread cancels at the same moment, and
/// between drops derive long-lived contexts under an uncancelled root (which take those
/// released allocations). None of those may ever be done.
#[test]
fn a_cancellation_racing_a_release_never_reaches_the_reused_context() {
    const ITERATIONS: u64 = 300;
    const CHILDREN: usize = 32;
    let (keeper, _cancel_keeper) = Context::background().with_cancel();
    for iteration in 0..ITERATIONS {
        let (parent, cancel_parent) = Context::background().with_cancel();
        let barrier = Barrier::new(3);
        let kept: Vec<Vec<(Context, CancelHandle)>> = thread::scope(|s| {
            let workers: Vec<_> = (0..2u64)
                .map(|worker| {
                    let (parent, barrier, keeper) = (&parent, &barrier, &keeper);
                    s.spawn(move || {
                        let mut rng = Rng::new(iteration * 2 + worker);
                        let children: Vec<_> =
                            (0..CHILDREN).map(|_| parent.with_cancel()).collect();
                        let mut kept = Vec::new();
                        barrier.wait();
                        for child in children {
                            drop(child); // released: its allocation is kept for reuse
                            rng.spin(50);
                            kept.push(keeper.with_cancel()); // likely takes that allocation
                        }
                        kept
                    })
                })
                .collect();
            s.spawn(|| {
                barrier.wait();
                Rng::new(iteration).spin(500);
                cancel_parent.cancel();
            });
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert!(parent.is_done());
        for (ctx, _) in kept.iter().flatten() {
            assert_eq!(
                ctx.err(),
                None,
                "iteration {iteration}: a stale walk reached it"
            );
        }
        assert_eq!(
            census(&keeper).contexts,
            2 * CHILDREN,
            "iteration {iteration}"
        );
        drop(kept);
        assert!(census(&keeper).is_clean(), "iteration {iteration}");
    }
}

/// A live deadline context whose handle goes last gives its timer back and is reused
/// unfinished, unless its timer is firing. Tasks on two workers arm deadlines due about now,
/// drop each pair context first, and derive a long-lived context right after (which takes the
/// released allocation): none of those is ever done, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_firing_as_its_context_is_released_never_reaches_the_reused_context() {
    const TASKS: u64 = 4;
    const PER_TASK: usize = 5_000;
    let (keeper, _cancel_keeper) = Context::background().with_cancel();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let keeper = keeper.clone();
            tokio::spawn(async move {
                let mut rng = Rng::new(task);
                let mut kept = Vec::with_capacity(PER_TASK);
                for i in 0..PER_TASK {
                    let timeout = Duration::from_micros(rng.below(500) as u64);
                    let (ctx, cancel) = keeper.with_timeout(timeout);
                    rng.spin(2_000);
                    drop(ctx);
                    drop(cancel); // the last reference: released unfinished if not yet fired
                    kept.push(keeper.with_cancel()); // likely takes that allocation
                    if i % 8 == 0 {
                        tokio::task::yield_now().await; // lets the deadlines' tasks run
                    }
                }
                kept
            })
        })
        .collect();
    let mut kept = Vec::new();
    for task in tasks {
        kept.extend(task.await.unwrap());
    }
    for (i, (ctx, _)) in kept.iter().enumerate() {
        assert_eq!(ctx.err(), None, "context {i}: a stale deadline reached it");
    }
    drop(kept);
    taskctx::testing::assert_no_leaks(&keeper).await;
}

/// Deadlines armed by tasks of a multi-thread runtime live in per-worker wheels. Tasks on every
/// worker arm short and long timeouts, cancel some from other threads, and let others fire:
/// each context ends done exactly once, with the right error, and every wheel entry is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_wheels_fire_or_cancel_every_deadline_exactly_once_under_contention() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 200;
    let (root, _cancel_root) = Context::background().with_cancel();
    let fired = Arc::new(AtomicUsize::new(0));
    let (to_cancel_tx, to_cancel_rx) = std::sync::mpsc::channel::<CancelHandle>();
    let canceller = thread::spawn(move || {
        for handle in to_cancel_rx {
            handle.cancel(); // from a thread that owns no wheel
        }
    });
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (root, fired, to_cancel) = (root.clone(), fired.clone(), to_cancel_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..PER_TASK {
                let short = (i + task) % 3 == 0;
                let timeout = if short {
                    Duration::from_millis(1 + (i % 7) as u64)
                } else {
                    Duration::from_secs(3600)
                };
                let (ctx, cancel) = root.with_timeout(timeout);
                let counter = fired.clone();
                let _registration = ctx.after_func(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                });
                if short {
                    mine.push((ctx, Some(cancel)));
                } else {
                    to_cancel.send(cancel).unwrap();
                    mine.push((ctx, None));
                }
                if i % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            for (ctx, handle) in &mine {
                let err = ctx.done().await;
                let expected = if handle.is_some() {
                    Error::DeadlineExceeded
                } else {
                    Error::Canceled
                };
                assert_eq!(err, expected);
            }
        }));
    }
    drop(to_cancel_tx);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("no deadline was lost")
            .unwrap();
    }
    canceller.join().unwrap();
    assert_eq!(
        fired.load(Ordering::SeqCst),
        TASKS * PER_TASK,
        "each ran once"
    );
    taskctx::testing::assert_no_leaks(&root).await;
}

/// Whichever call wins, every `cancel()` that returns has seen the whole subtree done: the
/// late comers wait for the walk in progress (Go blocks them on the parent's lock). Three
/// cancellers meet on one tree: two on the root, one halfway down, where a merge also joins a
/// second branch, so walks overlap and cross.
#[test]
fn every_cancel_returns_only_after_the_whole_subtree_is_done() {
    const ITERATIONS: u64 = 300;
    const DEPTH: usize = 64;
    for iteration in 0..ITERATIONS {
        let (root, cancel_root) = Context::background().with_cancel();
        let mut chain = vec![root.clone()];
        let mut handles = Vec::new();
        for _ in 0..DEPTH {
            let (child, handle) = chain.last().unwrap().with_value(iteration).with_cancel();
            chain.push(child);
            handles.push(handle);
        }
        let (branch, _branch_handle) = root.with_cancel();
        let merged = chain[DEPTH / 2].merge(&branch);
        let (below_merge, _below) = merged.with_cancel();
        let middle = handles.remove(DEPTH / 2 - 1);
        let leaves = [chain[DEPTH].clone(), below_merge];
        let cancel_root = Arc::new(cancel_root);
        let barrier = Barrier::new(3);
        thread::scope(|s| {
            for canceller in 0..3 {
                let (barrier, leaves, cancel_root, middle) =
                    (&barrier, &leaves, &cancel_root, &middle);
                s.spawn(move || {
                    let mut rng = Rng::new(iteration * 3 + canceller);
                    barrier.wait();
                    rng.spin(2_000);
                    if canceller == 2 {
                        middle.cancel();
                    } else {
                        cancel_root.cancel();
                    }
                    // The middle canceller's subtree holds the chain's leaf and the merge.
                    for leaf in leaves {
                        assert!(
                            leaf.is_done(),
                            "cancel() returned, a descendant is live: canceller {canceller}, {leaf}"
                        );
                    }
                });
            }
        });
        assert!(chain.iter().all(Context::is_done));
    }
}

/// Runs `release` on a thread of its own while this one runs `cancel`, at the same moment;
/// then that thread derives three contexts, where the scopes it released may be kept for
/// reuse (so each must start clean), and hands them back.
fn release_racing_cancel(
    iteration: u64,
    release: impl FnOnce() + Send + 'static,
    cancel: impl FnOnce(),
) -> Vec<(Context, CancelHandle)> {
    let barrier = Arc::new(Barrier::new(2));
    let releaser = {
        let barrier = barrier.clone();
        thread::spawn(move || {
            let mut rng = Rng::new(iteration);
            barrier.wait();
            rng.spin(1_000);
            release();
            (0..3)
                .map(|_| Context::background().with_cancel())
                .collect::<Vec<_>>()
        })
    };
    barrier.wait();
    cancel();
    releaser.join().unwrap()
}

/// A live scope released through a value layer on one thread (and so offered for reuse)
/// while another cancels its parent: the cancellation reaches it or it is gone, its callback
/// runs at most once, and nothing of it reaches what that thread derives next.
#[test]
fn releasing_a_live_scope_races_its_parents_cancel() {
    const ITERATIONS: u64 = 2_000;
    for iteration in 0..ITERATIONS {
        let (root, cancel_root) = Context::background().with_cancel();
        let (scope, cancel_scope) = root.with_cancel();
        cancel_scope.disarm();
        let ran = Arc::new(AtomicUsize::new(0));
        let seen = ran.clone();
        drop(scope.after_func(move || {
            seen.fetch_add(1, Ordering::Relaxed);
        }));
        let (below, cancel_below) = scope.with_cancel();
        cancel_below.disarm();
        let value = below.with_value(1u8);
        drop((scope, below)); // the value layer now holds the chain
        let fresh = release_racing_cancel(iteration, move || drop(value), || cancel_root.cancel());
        for (ctx, _cancel) in &fresh {
            assert!(
                !ctx.is_done(),
                "the old life's cancellation reached a new one"
            );
        }
        assert!(ran.load(Ordering::Relaxed) <= 1, "the callback ran twice");
        assert!(census(&root).is_clean());
    }
}

/// Children nothing waits on are counted in their parent, not registered there, and follow it
/// through their own queries (see "Lone leaves" in `tree.rs`). Many of them, each raced by a
/// thread that cancels it, starts waiting on it (registering it in the parent) or lets go of
/// it without cancelling it, while a reader watches them and the parent is cancelled: each ends with one cause, the
/// reader never sees a cause change, every waiter is woken, a cancel that starts after the
/// parent's returned keeps the parent's cause, and the census ends clean.
#[test]
fn lone_children_raced_by_their_own_cancel_a_waiter_and_their_parents_cancel_agree() {
    const ITERATIONS: u64 = 300;
    const CHILDREN: usize = 32;
    for iteration in 0..ITERATIONS {
        let (parent, cancel_parent) = Context::background().with_cancel_cause();
        let children: Vec<(Context, CancelCauseHandle)> =
            (0..CHILDREN).map(|_| parent.with_cancel_cause()).collect();
        assert_eq!(census(&parent).contexts, CHILDREN);
        let watched: Vec<Context> = children.iter().map(|(ctx, _)| ctx.clone()).collect();
        let barrier = Barrier::new(3);
        let parent_done = AtomicBool::new(false);
        let (observed, late) = thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                Rng::new(iteration).spin(2_000);
                cancel_parent.cancel("parent");
                parent_done.store(true, Ordering::Release);
            });
            let racer = s.spawn(|| {
                let mut rng = Rng::new(iteration + 7);
                let mut late = Vec::new();
                barrier.wait();
                for (ctx, cancel) in children {
                    match rng.below(3) {
                        0 => cancel.cancel("own"),
                        1 => {
                            let waiter = thread::spawn(move || {
                                futures::executor::block_on(ctx.done());
                                drop(cancel);
                            });
                            late.push(waiter);
                            continue;
                        }
                        // Let go of this clone only: the handle lives on, uncancelled.
                        _ => late.push(thread::spawn(move || drop((ctx, cancel.disarm())))),
                    }
                    rng.spin(100);
                }
                late
            });
            let reader = s.spawn(|| {
                let mut observed = vec![Vec::new(); CHILDREN];
                barrier.wait();
                loop {
                    let stop = parent_done.load(Ordering::Acquire);
                    for (ctx, seen) in watched.iter().zip(&mut observed) {
                        seen.push(read_consistently(ctx));
                    }
                    if stop {
                        return observed;
                    }
                }
            });
            (reader.join().unwrap(), racer.join().unwrap())
        });
        for waiter in late {
            waiter
                .join()
                .expect("a waiter on a lone child was never woken");
        }
        for (ctx, seen) in watched.iter().zip(observed) {
            let cause = cause_text(ctx).expect("done once the parent is");
            assert!(cause == "parent" || cause == "own", "{cause}");
            for (err, seen) in seen {
                match (err, seen) {
                    (None, None) => {}
                    (Some(Error::Canceled), Some(seen)) => assert_eq!(seen, cause),
                    other => panic!("observed {other:?}, final cause {cause:?}"),
                }
            }
        }
        // After the parent's cancel has returned, a child's own cancel is too late.
        let (late_child, cancel_late) = parent.with_cancel_cause();
        cancel_late.cancel("own");
        assert_eq!(cause_text(&late_child).as_deref(), Some("parent"));
        drop(watched);
        assert!(census(&parent).is_clean(), "{}", census(&parent));
    }
}

/// A child's own cancel that starts after its parent's cancel returned keeps the parent's
/// cause, as in Go, though the parent's walk never reached the child (nothing waited on it).
#[test]
fn a_lone_childs_cancel_after_its_parents_keeps_the_parents_cause() {
    for threads in [1, 4] {
        let (parent, cancel_parent) = Context::background().with_cancel_cause();
        let children: Vec<_> = (0..64).map(|_| parent.with_cancel_cause()).collect();
        cancel_parent.cancel("parent");
        thread::scope(|s| {
            for chunk in children.chunks(64 / threads) {
                s.spawn(move || {
                    for (ctx, cancel) in chunk {
                        cancel.cancel("own");
                        assert_eq!(cause_text(ctx).as_deref(), Some("parent"));
                        assert_eq!(ctx.err(), Some(Error::Canceled));
                    }
                });
            }
        });
        assert!(census(&parent).is_clean());
    }
}

/// Threads derive lone children of one parent at once, each counted in its own thread's shard
/// of the parent (or in the parent's own count on its home thread), and release, link or keep
/// them, some from another thread than made them: the census counts exactly the children
/// still held, every one then follows the parent's cancellation, and nothing is left counted.
#[test]
fn lone_children_of_a_shared_parent_are_counted_wherever_they_are_made_and_released() {
    const ITERATIONS: u64 = 200;
    const THREADS: usize = 4;
    const CHILDREN: usize = 32;
    for iteration in 0..ITERATIONS {
        let (parent, cancel_parent) = Context::background().with_cancel();
        let barrier = Barrier::new(THREADS);
        let made: Vec<Vec<(Context, CancelHandle)>> = thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|worker| {
                    let (parent, barrier) = (&parent, &barrier);
                    s.spawn(move || {
                        let mut rng = Rng::new(iteration * 31 + worker as u64);
                        barrier.wait();
                        let mut kept = Vec::new();
                        for _ in 0..CHILDREN {
                            let (ctx, cancel) = parent.with_cancel();
                            match rng.below(4) {
                                0 => drop((ctx, cancel)), // released where it was made
                                1 => {
                                    drop(ctx.token()); // links it into the parent
                                    kept.push((ctx, cancel));
                                }
                                _ => kept.push((ctx, cancel)),
                            }
                        }
                        kept
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let held: usize = made.iter().map(Vec::len).sum();
        assert_eq!(census(&parent).contexts, held, "iteration {iteration}");

        // Half the threads' children are released by another thread than made them.
        let (released, kept): (Vec<_>, Vec<_>) =
            made.into_iter().enumerate().partition(|(n, _)| n % 2 == 0);
        let kept: Vec<(Context, CancelHandle)> = kept.into_iter().flat_map(|(_, v)| v).collect();
        let barrier = Barrier::new(2);
        thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                drop(released);
            });
            s.spawn(|| {
                barrier.wait();
                assert!(census(&parent).contexts >= kept.len());
            });
        });
        assert_eq!(
            census(&parent).contexts,
            kept.len(),
            "iteration {iteration}"
        );
        cancel_parent.cancel();
        assert!(
            kept.iter().all(|(ctx, _)| ctx.is_done()),
            "iteration {iteration}"
        );
        drop(kept);
        assert!(census(&parent).is_clean(), "{}", census(&parent));
    }
}

/// The last handle of a chain's link whose child has gone is dropped on one thread (which
/// lets the link go unfinished when nothing could tell, and keeps it for reuse) while another
/// cancels its parent: a token handed out by the link is cancelled either way, and nothing of
/// the old life reaches what the releasing thread derives next.
#[test]
fn a_links_last_handle_dropped_while_its_parent_is_cancelled() {
    const ITERATIONS: u64 = 2_000;
    for iteration in 0..ITERATIONS {
        let (root, cancel_root) = Context::background().with_cancel();
        let (link, cancel_link) = root.with_cancel();
        drop(link.with_cancel()); // links it into the root, and goes
        let token = (iteration % 2 == 0).then(|| link.token());
        drop(link); // the handle now holds the link alone
        let fresh = release_racing_cancel(
            iteration,
            move || drop(cancel_link),
            || cancel_root.cancel(),
        );
        for (ctx, _cancel) in &fresh {
            assert!(
                !ctx.is_done(),
                "iteration {iteration}: the old life reached a new one"
            );
        }
        if let Some(token) = token {
            assert!(
                token.is_cancelled(),
                "iteration {iteration}: the token was not cancelled"
            );
        }
        assert!(census(&root).is_clean());
    }
}
