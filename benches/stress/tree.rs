//! Part 2: a big random tree cancelled from every thread at once, while other threads derive
//! from it and tasks await it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant as StdInstant};

use taskctx::testing::census;
use taskctx::{CancelCauseHandle, CancelHandle, Context, Error};

use crate::common::rng::Rng;
use crate::{Checks, NodeCause, cause_node, memory_kib, mib, multi_thread_runtime};

/// A context derived from tree nodes while the tree is being cancelled.
struct Derived {
    ctx: Context,
    parent: u32,
    /// For a merge: the other tree node.
    other: Option<u32>,
    _cancel: Option<CancelHandle>,
}

pub fn tree(checks: &Checks, nodes: usize, threads: usize) {
    let cancellers = threads;
    let derivers = 2;
    let waiters = nodes / 10;
    println!(
        "tree: {nodes} contexts cancelled from {cancellers} threads at once, {derivers} threads \
         deriving, {waiters} tasks awaiting done()"
    );
    let rt = multi_thread_runtime(threads);
    let _runtime = rt.enter();
    let mut rng = Rng::new(42);

    // A random recursive tree: each node hangs from a random earlier one.
    let started = StdInstant::now();
    let mut parent_of: Vec<u32> = Vec::with_capacity(nodes);
    let mut ctxs: Vec<Context> = Vec::with_capacity(nodes);
    let mut handles: Vec<CancelCauseHandle> = Vec::with_capacity(nodes);
    let (root, root_handle) = Context::background().with_cancel_cause();
    parent_of.push(0);
    ctxs.push(root);
    handles.push(root_handle);
    for i in 1..nodes {
        let p = rng.below(i);
        let (ctx, handle) = ctxs[p].with_cancel_cause();
        parent_of.push(p as u32);
        ctxs.push(ctx);
        handles.push(handle);
    }
    let mut depth = vec![0u32; nodes];
    for i in 1..nodes {
        depth[i] = depth[parent_of[i] as usize] + 1;
    }
    let (rss, _) = memory_kib();
    println!(
        "  built in {:.2} s: max depth {}, RSS {}",
        started.elapsed().as_secs_f64(),
        depth.iter().max().unwrap_or(&0),
        mib(rss)
    );
    let before = census(&ctxs[0]);
    checks.check(before.contexts == nodes - 1, || {
        format!("tree: census before the cancellation: {before}")
    });

    // Tasks awaiting done(): three in four by `done_owned`, one in four through `spawn`.
    let finished = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(waiters);
    let mut spawned = Vec::with_capacity(waiters / 4 + 1);
    for w in 0..waiters {
        let ctx = &ctxs[rng.below(nodes)];
        if w % 4 == 3 {
            spawned.push(ctx.spawn(|_ctx| std::future::pending::<()>()));
        } else {
            let (finished, wrong, done) = (finished.clone(), wrong.clone(), ctx.done_owned());
            tasks.push(tokio::spawn(async move {
                if done.await != Error::Canceled {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
                finished.fetch_add(1, Ordering::Relaxed);
            }));
        }
    }
    // Let the tasks register (bounded by the watchdog).
    while census(&ctxs[0]).waiters < waiters {
        std::thread::sleep(Duration::from_millis(1));
    }

    let mut order: Vec<u32> = (0..nodes as u32).collect();
    rng.shuffle(&mut order);
    let cancelling_done = AtomicBool::new(false);
    let cancelled_by_threads = AtomicUsize::new(0);
    let derived: Mutex<Vec<Derived>> = Mutex::new(Vec::new());
    let derived_tasks = Mutex::new(Vec::new());
    let start = Barrier::new(cancellers + derivers);
    let started = StdInstant::now();
    std::thread::scope(|s| {
        let mut running = Vec::new();
        for t in 0..cancellers {
            let (order, handles, start, count) = (&order, &handles, &start, &cancelled_by_threads);
            running.push(s.spawn(move || {
                start.wait();
                // Interleaved slices of one random order: all threads sweep the whole tree.
                for &node in order.iter().skip(t).step_by(cancellers) {
                    handles[node as usize].cancel(NodeCause(node));
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in 0..derivers {
            let (ctxs, start, stop, derived, derived_tasks, rt) = (
                &ctxs,
                &start,
                &cancelling_done,
                &derived,
                &derived_tasks,
                &rt,
            );
            s.spawn(move || {
                let _runtime = rt.enter();
                let mut rng = Rng::new(7 + t as u64);
                let mut mine = Vec::new();
                let mut my_tasks = Vec::new();
                start.wait();
                while !stop.load(Ordering::Acquire) {
                    let p = rng.below(ctxs.len());
                    let parent = &ctxs[p];
                    let (ctx, other, cancel) = match rng.below(4) {
                        0 => {
                            let (ctx, cancel) = parent.with_cancel();
                            (ctx, None, Some(cancel))
                        }
                        1 => {
                            let (ctx, cancel) = parent.with_timeout(Duration::from_secs(3600));
                            (ctx, None, Some(cancel))
                        }
                        2 => (parent.with_value(p), None, None),
                        _ => {
                            let o = rng.below(ctxs.len());
                            (parent.merge(&ctxs[o]), Some(o as u32), None)
                        }
                    };
                    if mine.len() % 8 == 0 {
                        my_tasks.push(tokio::spawn(ctx.done_owned()));
                    }
                    mine.push(Derived {
                        ctx,
                        parent: p as u32,
                        other,
                        _cancel: cancel,
                    });
                }
                derived.lock().unwrap().extend(mine);
                derived_tasks.lock().unwrap().extend(my_tasks);
            });
        }
        for thread in running {
            thread.join().expect("a cancelling thread panicked");
        }
        cancelling_done.store(true, Ordering::Release);
    });
    let elapsed = started.elapsed();
    let derived = derived.into_inner().unwrap();
    let derived_tasks = derived_tasks.into_inner().unwrap();
    println!(
        "  cancelled in {:.2} s ({} cancel calls); {} contexts derived meanwhile, {} more tasks \
         awaiting them",
        elapsed.as_secs_f64(),
        cancelled_by_threads.load(Ordering::Relaxed),
        derived.len(),
        derived_tasks.len()
    );

    // Every node done, with a consistent cause.
    let mut not_done = 0;
    let mut inconsistent = 0;
    let mut first_inconsistent = None;
    let mut own = 0;
    for (i, ctx) in ctxs.iter().enumerate() {
        let (err, cause) = (ctx.err(), cause_node(ctx));
        if err != Some(Error::Canceled) || cause.is_none() {
            not_done += 1;
            continue;
        }
        let cause = cause.unwrap();
        // Its own cancellation came first, or its parent's reached it first: then it reports
        // what its parent reports (the cause of the first-cancelled ancestor).
        let consistent = if i == 0 {
            cause == 0
        } else {
            cause == i as u32 || Some(cause) == cause_node(&ctxs[parent_of[i] as usize])
        };
        if cause == i as u32 {
            own += 1;
        }
        if !consistent {
            inconsistent += 1;
            first_inconsistent.get_or_insert((i, cause));
        }
    }
    println!(
        "  {} nodes done, {} with their own cause, {} reached first through an ancestor",
        nodes - not_done,
        own,
        nodes - not_done - own
    );
    checks.check(not_done == 0, || {
        format!("tree: {not_done} nodes not done with a cause after every node was cancelled")
    });
    checks.check(inconsistent == 0, || {
        format!("tree: {inconsistent} nodes with a cause that is neither their own nor their parent's, first {first_inconsistent:?}")
    });
    let mut bad_children = 0;
    for d in &derived {
        let parent = cause_node(&ctxs[d.parent as usize]);
        let other = d.other.and_then(|o| cause_node(&ctxs[o as usize]));
        let cause = cause_node(&d.ctx);
        let ok = d.ctx.err() == Some(Error::Canceled)
            && cause.is_some()
            && (cause == parent || (d.other.is_some() && cause == other));
        if !ok {
            bad_children += 1;
        }
    }
    checks.check(bad_children == 0, || {
        format!("tree: {bad_children} contexts derived during the cancellation are not done with a parent's cause")
    });

    // No task left waiting.
    let waited = StdInstant::now();
    let (ok_tasks, ok_spawned, ok_derived) = rt.block_on(async {
        let mut ok_tasks = 0;
        for task in tasks {
            ok_tasks += usize::from(task.await.is_ok());
        }
        let mut ok_spawned = 0;
        for handle in spawned {
            ok_spawned += usize::from(handle.await == Err(Error::Canceled));
        }
        let mut ok_derived = 0;
        for task in derived_tasks {
            ok_derived += usize::from(matches!(task.await, Ok(Error::Canceled)));
        }
        (ok_tasks, ok_spawned, ok_derived)
    });
    let finished = finished.load(Ordering::Relaxed);
    let wrong = wrong.load(Ordering::Relaxed);
    println!(
        "  awaiting tasks: {finished} done() tasks and {ok_spawned} spawned tasks finished, {ok_derived} \
         waiters on derived contexts woken, in {:.2} s",
        waited.elapsed().as_secs_f64()
    );
    checks.check(ok_tasks == finished && wrong == 0, || {
        format!("tree: done() tasks: {ok_tasks} joined, {finished} finished, {wrong} with the wrong error")
    });
    checks.check(finished + ok_spawned == waiters, || {
        format!(
            "tree: {} of {waiters} awaiting tasks finished",
            finished + ok_spawned
        )
    });
    let root_census = census(&ctxs[0]);
    println!("  census of the root: {root_census}");
    checks.check(root_census.is_clean(), || {
        format!("tree: left in the root: {root_census}")
    });
    drop(derived);
    drop((ctxs, handles));
    drop(_runtime);
    drop(rt);
}
