//! Work raced against a timeout, and everything it started stopped with it.
//!
//! Go: `ctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond); defer cancel()`, then
//! `fetch(ctx)`; a slow fetch returns `context.DeadlineExceeded`, but only if every goroutine it
//! started also watches `ctx.Done()`. Here `taskctx::with_timeout(&ctx, budget, |ctx| ...)`
//! guards the work: on expiry it drops the work and cancels every task spawned under it.
//! `with_timeout_cause` adds Go's `WithTimeoutCause`: the reason reported by `ctx.cause()`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskctx::{Context, Error, TaskHandle};
use tokio::time::{Instant, sleep};

const BUDGET: Duration = Duration::from_millis(50);

#[allow(dead_code)] // unused when tour.rs includes this file as a module
#[tokio::main]
async fn main() {
    run().await;
}

/// A fake remote call that takes `latency` to answer. It knows nothing of contexts.
async fn fetch(latency: Duration) -> String {
    sleep(latency).await;
    format!("answer after {} ms", latency.as_millis())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

pub async fn run() {
    let ctx = Context::background();

    // 1. A fast fetch finishes inside the budget.
    let start = Instant::now();
    let fast = taskctx::with_timeout(&ctx, BUDGET, |_ctx| fetch(Duration::from_millis(10))).await;
    println!(
        "A fast fetch (10 ms of work, 50 ms budget): {fast:?} after {}",
        ms(start.elapsed())
    );
    assert_eq!(fast.as_deref(), Ok("answer after 10 ms"));

    // 2. A slow fetch overruns; it also started a helper task, which must not outlive it.
    let helper_slot: Arc<Mutex<Option<TaskHandle<()>>>> = Arc::default();
    let slot = helper_slot.clone();
    let start = Instant::now();
    let slow = taskctx::with_timeout(&ctx, BUDGET, |ctx| async move {
        // A keep-alive loop that never checks its context: in Go it would run forever.
        let helper = ctx.spawn(|_ctx| async {
            loop {
                sleep(Duration::from_millis(5)).await;
            }
        });
        *slot.lock().unwrap() = Some(helper);
        fetch(Duration::from_millis(500)).await
    })
    .await;
    let slow_elapsed = start.elapsed();
    println!(
        "A slow fetch (500 ms of work, 50 ms budget): {slow:?} after {}",
        ms(slow_elapsed)
    );
    assert_eq!(slow, Err(Error::DeadlineExceeded));
    assert!(slow_elapsed >= BUDGET && slow_elapsed < Duration::from_millis(400));

    let helper = helper_slot
        .lock()
        .unwrap()
        .take()
        .expect("the helper was spawned");
    let stopped = helper.await;
    println!(
        "  The helper task it spawned was stopped with it: its handle resolved to {stopped:?} at {}",
        ms(start.elapsed())
    );
    assert_eq!(stopped, Err(Error::DeadlineExceeded));

    // 3. The same, with a cause: the error stays DeadlineExceeded, the cause says why.
    let start = Instant::now();
    let (ctx, _cancel) = ctx.with_timeout_cause(BUDGET, "inventory service took longer than 50 ms");
    let result = ctx
        .run_until_cancelled(fetch(Duration::from_millis(500)))
        .await;
    println!(
        "The slow fetch under with_timeout_cause: {result:?} after {}.",
        ms(start.elapsed())
    );
    println!(
        "  ctx.err() is still {:?}; ctx.cause() says why: {:?}.",
        ctx.err(),
        ctx.cause().map(|cause| cause.to_string()),
    );
    assert_eq!(result, Err(Error::DeadlineExceeded));
    assert_eq!(
        ctx.cause().map(|cause| cause.to_string()).as_deref(),
        Some("inventory service took longer than 50 ms")
    );
}
