//! Part 5: deadlines whose callbacks block or panic and whose waiters' wakers panic.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Waker;
use std::time::{Duration, Instant as StdInstant};

use taskctx::{Context, Error};
use tokio::time::Instant;

use crate::common::rng::Rng;
use crate::{Checks, CountingWaker, INTENDED, INTENDED_PANICS, PANICS, multi_thread_runtime};

/// A waker that panics when woken.
struct PanickingWaker;

impl std::task::Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        std::panic::panic_any(INTENDED);
    }
}

/// How many `hostile` callbacks block (for 1-5 ms each), on average, whatever the number of
/// deadlines: about a quarter of the two workers' time over the 200 ms, so that the ticker
/// measures the timers' lateness, not a saturated runtime.
const BLOCKING: usize = 32;

/// Deadlines whose callbacks block or panic and whose waiters' wakers panic, with a ticker
/// measuring how late the runtime's other timers run meanwhile.
pub fn hostile(checks: &Checks, contexts: usize) {
    println!(
        "hostile: {contexts} deadlines over 200 ms; about {BLOCKING} callbacks block, 1 in 16 panic"
    );
    let rt = multi_thread_runtime(2);
    let ran = Arc::new(AtomicUsize::new(0));
    let woken = Arc::new(AtomicUsize::new(0));
    let intended_before = INTENDED_PANICS.load(Ordering::SeqCst);
    let panics_before = PANICS.load(Ordering::SeqCst);
    let (mut expected_runs, mut expected_panics, mut expected_wakes) = (0, 0, 0);
    let mut rng = Rng::new(5);
    let mut plans = Vec::with_capacity(contexts);
    for _ in 0..contexts {
        let due = Duration::from_micros(1_000 + rng.below(199_000) as u64);
        let block = (rng.below(contexts) < BLOCKING)
            .then(|| Duration::from_micros(1_000 + rng.below(4_000) as u64));
        let panics = rng.below(16) == 0;
        let waker_panics = rng.below(16) == 0;
        expected_runs += usize::from(!panics);
        expected_panics += usize::from(panics) + usize::from(waker_panics);
        expected_wakes += usize::from(!waker_panics);
        plans.push((due, block, panics, waker_panics));
    }
    let arm = {
        let (ran, woken) = (ran.clone(), woken.clone());
        move |plans: Vec<(Duration, Option<Duration>, bool, bool)>| {
            let mut held = Vec::with_capacity(plans.len());
            for (due, block, panics, waker_panics) in plans {
                let (ctx, cancel) = Context::background().with_timeout(due);
                let ran = ran.clone();
                let registration = ctx.after_func(move || {
                    if let Some(block) = block {
                        std::thread::sleep(block);
                    }
                    if panics {
                        std::panic::panic_any(INTENDED);
                    }
                    ran.fetch_add(1, Ordering::Relaxed);
                });
                let waker = if waker_panics {
                    Waker::from(Arc::new(PanickingWaker))
                } else {
                    let woken = woken.clone();
                    Waker::from(Arc::new(CountingWaker(woken)))
                };
                let mut done = Box::pin(ctx.clone().done_owned());
                let polled = done
                    .as_mut()
                    .poll(&mut std::task::Context::from_waker(&waker));
                held.push((ctx, cancel, registration, done, polled.is_pending()));
            }
            held
        }
    };
    let second_half = plans.split_off(contexts / 2);
    let started = StdInstant::now();
    let (held, lateness) = rt.block_on(async move {
        let arm_in_task = arm.clone();
        let in_task = tokio::spawn(async move { arm_in_task(second_half) });
        let mut held = arm(plans);
        held.extend(in_task.await.expect("arming in a task"));
        let ticker = tokio::spawn({
            let contexts: Vec<Context> = held.iter().map(|h| h.0.clone()).collect();
            async move {
                let mut ticker = tokio::time::interval(Duration::from_millis(1));
                let mut late = Vec::new();
                while contexts.iter().any(|ctx| !ctx.is_done()) {
                    let due = ticker.tick().await;
                    late.push(Instant::now().saturating_duration_since(due));
                }
                late
            }
        });
        for (ctx, ..) in &held {
            ctx.done().await;
        }
        (held, ticker.await.expect("the ticker"))
    });
    let elapsed = started.elapsed();
    drop(rt);
    let not_exceeded = held
        .iter()
        .filter(|h| h.0.err() != Some(Error::DeadlineExceeded))
        .count();
    let all_pending = held.iter().all(|h| h.4);
    drop(held);
    let mut lateness = lateness;
    lateness.sort();
    let ms = |at: usize| {
        lateness
            .get(at)
            .map_or(0.0, |late| late.as_secs_f64() * 1e3)
    };
    println!(
        "  all done in {:.0} ms; the ticker's {} ticks late by: median {:.2} ms, p99 {:.2} ms, worst {:.2} ms",
        elapsed.as_secs_f64() * 1e3,
        lateness.len(),
        ms(lateness.len() / 2),
        ms(lateness.len() * 99 / 100),
        ms(lateness.len().saturating_sub(1)),
    );
    let intended = INTENDED_PANICS.load(Ordering::SeqCst) - intended_before;
    let ran = ran.load(Ordering::SeqCst);
    let woken = woken.load(Ordering::SeqCst);
    checks.check(all_pending && not_exceeded == 0, || {
        format!("hostile: {not_exceeded} contexts not done with DeadlineExceeded")
    });
    checks.check(ran == expected_runs, || {
        format!("hostile: {ran} of {expected_runs} callbacks ran")
    });
    checks.check(woken == expected_wakes, || {
        format!("hostile: {woken} of {expected_wakes} waiters woken")
    });
    checks.check(intended == expected_panics, || {
        format!("hostile: {intended} of {expected_panics} intended panics seen")
    });
    checks.check(PANICS.load(Ordering::SeqCst) == panics_before, || {
        "hostile: an unintended panic".to_string()
    });
}
