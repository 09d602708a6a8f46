//! Part 4: runtimes shut down while contexts, timers and tasks are alive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant as StdInstant};

use taskctx::testing::census;
use taskctx::{Context, Error};

use crate::{Checks, multi_thread_runtime};

pub fn shutdown(checks: &Checks) {
    const CONTEXTS: usize = 1_000;
    println!("shutdown: runtimes dropped with {CONTEXTS} contexts, their timers and tasks alive");
    for flavor in ["current-thread", "multi-thread"] {
        let rt = match flavor {
            "current-thread" => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            _ => multi_thread_runtime(2),
        };
        let (root, cancel_root) = Context::background().with_cancel();
        let fired = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        // Half the contexts are made in `block_on`, half in a task (on a worker of the
        // multi-thread runtime, where deadlines go into the worker's own wheel).
        let make = |range: std::ops::Range<usize>| {
            let (root, fired, started) = (root.clone(), fired.clone(), started.clone());
            async move {
                let mut long = Vec::new();
                let mut short = Vec::new();
                let mut handles = Vec::new();
                let mut registrations = Vec::new();
                let mut ctx_tasks = Vec::new();
                for i in range {
                    let (ctx, cancel) = if i % 2 == 0 {
                        root.with_timeout(Duration::from_secs(3600))
                    } else {
                        root.with_timeout(Duration::from_millis(20 + (i % 30) as u64))
                    };
                    let (counter, done) = (started.clone(), ctx.done_owned());
                    tokio::spawn(async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        done.await
                    });
                    let body_ran = Arc::new(AtomicBool::new(false));
                    let ran = body_ran.clone();
                    let task = ctx.spawn(|ctx| async move {
                        ran.store(true, Ordering::SeqCst);
                        ctx.done().await
                    });
                    ctx_tasks.push((body_ran, task));
                    let fired = fired.clone();
                    registrations.push(ctx.after_func(move || {
                        fired.fetch_add(1, Ordering::SeqCst);
                    }));
                    handles.push(cancel);
                    if i % 2 == 0 {
                        long.push(ctx)
                    } else {
                        short.push(ctx)
                    }
                }
                (long, short, handles, registrations, ctx_tasks)
            }
        };
        let setting_up = StdInstant::now();
        let (long, short, handles, registrations) = rt.block_on(async {
            let mut made = make(0..CONTEXTS / 2).await;
            let other = tokio::spawn(make(CONTEXTS / 2..CONTEXTS))
                .await
                .expect("a task");
            made.0.extend(other.0);
            made.1.extend(other.1);
            made.2.extend(other.2);
            made.3.extend(other.3);
            made.4.extend(other.4);
            // Every task started (bounded by the watchdog). A `ctx.spawn` task whose short
            // deadline fired before its first poll finishes without running its body
            // (`run_until_cancelled` looks at the context first): it counts as started once it
            // has finished. (Waiting for every body alone hung whenever setting up took longer
            // than the shortest deadline, 21 ms.)
            let ctx_tasks = std::mem::take(&mut made.4);
            while started.load(Ordering::SeqCst) < CONTEXTS
                || ctx_tasks
                    .iter()
                    .any(|(ran, task)| !ran.load(Ordering::SeqCst) && !task.is_finished())
            {
                tokio::task::yield_now().await;
            }
            drop(ctx_tasks); // detached, as before the shutdown
            (made.0, made.1, made.2, made.3)
        });
        let set_up = setting_up.elapsed();
        let during = census(&root);
        let started = StdInstant::now();
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(rt)));
        let shutdown_took = started.elapsed();
        let after = census(&root);
        let early = long.iter().filter(|ctx| ctx.is_done()).count();
        // The short deadlines still fire, on the crate's timer thread if not before.
        let waited = StdInstant::now();
        while short.iter().any(|ctx| !ctx.is_done()) && waited.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let short_ok = short
            .iter()
            .all(|ctx| ctx.err() == Some(Error::DeadlineExceeded));
        let left_before_cancel = census(&root);
        cancel_root.cancel();
        let long_ok = long.iter().all(|ctx| ctx.err() == Some(Error::Canceled));
        let ran = fired.load(Ordering::SeqCst);
        drop((handles, registrations, long, short));
        let end = census(&root);
        println!(
            "  {flavor}: set up in {:.3} s; before the shutdown {during}; shut down in {:.3} s; \
             after it {after}; \
             {early} long deadlines fired early; short deadlines all fired: {short_ok}; {ran} \
             callbacks ran; at the end {end}",
            set_up.as_secs_f64(),
            shutdown_took.as_secs_f64()
        );
        checks.check(dropped.is_ok(), || {
            format!("shutdown ({flavor}): dropping the runtime panicked")
        });
        checks.check(after.tasks == 0 && after.waiters == 0, || {
            format!("shutdown ({flavor}): tasks or waiters left after the shutdown: {after}")
        });
        checks.check(early == 0, || {
            format!("shutdown ({flavor}): {early} deadlines fired early")
        });
        checks.check(short_ok, || {
            format!("shutdown ({flavor}): short deadlines did not all fire")
        });
        checks.check(left_before_cancel.contexts == CONTEXTS / 2, || {
            format!("shutdown ({flavor}): before the root's cancellation: {left_before_cancel}")
        });
        checks.check(long_ok && ran == CONTEXTS, || {
            format!("shutdown ({flavor}): after the root's cancellation {ran} callbacks ran")
        });
        checks.check(end.is_clean() && end.callbacks == 0, || {
            format!("shutdown ({flavor}): left at the end: {end}")
        });
    }
}
