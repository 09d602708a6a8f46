//! Confirming that a worker has stopped, without sleeping and hoping.
//!
//! In Go, cancelling a context only asks a goroutine to stop; to know that it has, the worker
//! must clean up and then close a `done` channel (or call `wg.Done()`), and the caller must wait
//! for that. Waiting with `time.Sleep` instead is a guess. Here the caller waits for the work it
//! asked for (acks, not a timer), and a worker that watches `ctx.done()` cleans up and only then
//! sends its report on a oneshot. A worker that does not watch its context is stopped by
//! `Context::spawn`, whose `TaskHandle` resolves once the worker has been dropped. `after_func`
//! callbacks have run by the time `cancel()` returns (Go runs `AfterFunc` in a new goroutine).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use taskctx::{Context, Error};
use tokio::sync::{mpsc, oneshot};

const JOBS: u32 = 3;

#[allow(dead_code)] // unused when tour.rs includes this file as a module
#[tokio::main]
async fn main() {
    run().await;
}

/// Acks jobs until it sees `ctx.done()`, cleans up, then confirms: Go's `defer close(done)`.
async fn watching(
    ctx: Context,
    mut jobs: mpsc::Receiver<u32>,
    acks: mpsc::Sender<u32>,
    stopped: oneshot::Sender<(u32, Error)>,
) {
    let mut jobs_done = 0;
    let why = loop {
        tokio::select! {
            biased; // a job queued behind the cancellation is not started
            why = ctx.done() => break why,
            Some(job) = jobs.recv() => {
                jobs_done += 1;
                let _ = acks.send(job).await;
            }
        }
    };
    // The cleanup the caller relies on: refuse new jobs and end the ack stream. It must come
    // before the report, or the caller could see "stopped" while the worker still holds these.
    jobs.close();
    drop(acks);
    let _ = stopped.send((jobs_done, why));
}

/// The same work with no eye on the context: only `Context::spawn` can stop it.
async fn unwatching(mut jobs: mpsc::Receiver<u32>, acks: mpsc::Sender<u32>) -> u32 {
    let mut jobs_done = 0;
    while let Some(job) = jobs.recv().await {
        jobs_done += 1;
        let _ = acks.send(job).await;
    }
    jobs_done
}

/// Gives a worker `JOBS` jobs and waits for each ack: progress seen, not guessed with a timer.
async fn feed(jobs: &mpsc::Sender<u32>, acks: &mut mpsc::Receiver<u32>) {
    for job in 1..=JOBS {
        jobs.send(job).await.expect("the worker is running");
        assert_eq!(acks.recv().await, Some(job), "each job is acked");
    }
}

pub async fn run() {
    let (ctx, cancel) = Context::background().with_cancel();

    // Go: stop := context.AfterFunc(ctx, func() { pool.Close() })
    let pool_closed = Arc::new(AtomicBool::new(false));
    let flag = pool_closed.clone();
    let _registration = ctx.after_func(move || flag.store(true, Ordering::SeqCst));

    // Under plain tokio::spawn nothing else can stop the watching worker, so it always sees
    // ctx.done() itself and always reports: the branch printed below does not vary.
    let (jobs_w, jobs) = mpsc::channel(JOBS as usize);
    let (acks, mut acks_w) = mpsc::channel(JOBS as usize);
    let (stopped, report) = oneshot::channel();
    tokio::spawn(watching(ctx.clone(), jobs, acks, stopped));
    let (jobs_u, jobs) = mpsc::channel(JOBS as usize);
    let (acks, mut acks_u) = mpsc::channel(JOBS as usize);
    let handle = ctx.spawn(move |_ctx| unwatching(jobs, acks));

    feed(&jobs_w, &mut acks_w).await;
    feed(&jobs_u, &mut acks_u).await;
    cancel.cancel();
    let closed_on_return = pool_closed.load(Ordering::SeqCst);

    let (jobs_done, why) = report.await.expect("the watching worker always reports");
    // Read at once, with no wait: the report was sent after the cleanup, so it shows already.
    let cleaned_w = jobs_w.is_closed() && acks_w.recv().await.is_none();
    let result = handle.await;
    // Dropping the unwatching worker's future dropped its channel ends, its only cleanup.
    let cleaned_u = jobs_u.is_closed() && acks_u.recv().await.is_none();

    println!("Each worker acked {JOBS} jobs, and the caller waited for those acks; then cancel().");
    println!(
        "  The after_func callback (standing in for closing a connection pool) had already run"
    );
    println!(
        "  when cancel() returned: {closed_on_return}. (Go runs AfterFunc in a new goroutine.)"
    );
    println!("  Watching worker (tokio::spawn): saw ctx.done(), did {jobs_done} jobs, \"{why}\".");
    println!("    When its report came, its job queue and ack stream were closed: {cleaned_w}.");
    println!("  Unwatching worker (ctx.spawn): its TaskHandle resolved to {result:?}.");
    println!("    By then its future was dropped, closing its queue and ack stream: {cleaned_u}.");

    assert!(closed_on_return);
    assert_eq!((jobs_done, why), (JOBS, Error::Canceled));
    assert!(cleaned_w);
    assert_eq!(result, Err(Error::Canceled));
    assert!(cleaned_u);
}
