//! Confirming that a worker has stopped, without sleeping and hoping.
//!
//! In Go, cancelling a context only asks a goroutine to stop; to know that it has, the worker
//! must close a `done` channel (or call `wg.Done()`) on its way out, and the caller must wait
//! for that. `context.AfterFunc` callbacks run in goroutines of their own, so they may not have
//! run yet when `cancel()` returns. Here the `TaskHandle` from `Context::spawn` resolves only
//! once the worker has stopped (its future dropped, its cleanup done), and `after_func`
//! callbacks have run by the time `cancel()` returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use taskctx::{Context, Error};
use tokio::time::{Instant, sleep};

#[allow(dead_code)] // unused when tour.rs includes this file as a module
#[tokio::main]
async fn main() {
    run().await;
}

/// Sets a flag when dropped: the worker's own cleanup, run however it stops.
struct CleanupOnDrop(Arc<AtomicBool>);

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Ticks every 5 ms until the context is done; returns how many ticks it saw.
async fn worker(ctx: Context, ticks: Arc<AtomicU32>, cleaned_up: Arc<AtomicBool>) -> u32 {
    let _cleanup = CleanupOnDrop(cleaned_up);
    let mut interval = tokio::time::interval(Duration::from_millis(5));
    loop {
        tokio::select! {
            _ = ctx.done() => return ticks.load(Ordering::SeqCst),
            _ = interval.tick() => { ticks.fetch_add(1, Ordering::SeqCst); }
        }
    }
}

pub async fn run() {
    let (ctx, cancel) = Context::background().with_cancel();

    // Go: stop := context.AfterFunc(ctx, func() { pool.Close() })
    let pool_closed = Arc::new(AtomicBool::new(false));
    let flag = pool_closed.clone();
    let _registration = ctx.after_func(move || flag.store(true, Ordering::SeqCst));

    let ticks = Arc::new(AtomicU32::new(0));
    let worker_cleaned_up = Arc::new(AtomicBool::new(false));
    let (t, c) = (ticks.clone(), worker_cleaned_up.clone());
    let handle = ctx.spawn(move |ctx| worker(ctx, t, c));

    sleep(Duration::from_millis(30)).await;
    let start = Instant::now();
    cancel.cancel();
    let closed_on_return = pool_closed.load(Ordering::SeqCst);
    let result = handle.await;
    let confirm = start.elapsed();
    let ticks_at_stop = ticks.load(Ordering::SeqCst);
    let cleaned_up = worker_cleaned_up.load(Ordering::SeqCst);

    println!(
        "The worker ticked {ticks_at_stop} times in 30 ms (every 5 ms, the first at once); then cancel()."
    );
    println!(
        "  The after_func callback (standing in for closing a connection pool) had already run"
    );
    println!(
        "  when cancel() returned: {closed_on_return}. (Go runs AfterFunc in a new goroutine.)"
    );
    // Which of the two it is depends on whether the worker was running at that instant.
    let how = match result {
        Ok(n) => format!("the worker saw ctx.done() and returned after {n} ticks"),
        Err(err) => format!("Context::spawn dropped the worker at its next .await ({err:?})"),
    };
    println!(
        "  Awaiting the worker's handle took {:.0} µs: {how}.",
        confirm.as_secs_f64() * 1e6
    );
    println!("  The worker's own cleanup (a Drop guard) had run by then: {cleaned_up}.");

    sleep(Duration::from_millis(20)).await;
    let ticks_later = ticks.load(Ordering::SeqCst);
    println!(
        "  20 ms later the tick count is still {ticks_later}: the confirmation was not premature."
    );

    assert!(closed_on_return);
    assert!(matches!(result, Ok(_) | Err(Error::Canceled)));
    assert!(cleaned_up);
    assert!(ticks_at_stop >= 2);
    assert_eq!(ticks_later, ticks_at_stop);
}
