//! Stopping a worker pool gracefully, and knowing how every worker stopped.
//!
//! Go services write this by hand: a `WaitGroup`, a context to cancel, a timer for the grace
//! period, and no way to learn which goroutine is still running when the timer fires. Here a
//! `TaskGroup` holds the intake and the workers. On the shutdown signal (simulated here; with
//! the `signal` feature, `taskctx::signal::notify_context` gives a context that Ctrl-C or
//! SIGTERM cancels), the intake stops taking jobs, every worker finishes the job in its hands
//! and flushes what it holds within the grace, and the one worker that never looks at its
//! context is aborted when the grace is over. The report names each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use taskctx::{Context, Outcome, TaskGroup};
use tokio::sync::{Mutex, mpsc};

const WORKERS: u32 = 3;
const GRACE: Duration = Duration::from_millis(200);

#[allow(dead_code)] // unused when tour.rs includes this file as a module
#[tokio::main]
async fn main() {
    run().await;
}

pub async fn run() {
    let group = TaskGroup::builder(&Context::background())
        .name("pool")
        .build();
    let (jobs_in, jobs) = mpsc::channel::<u32>(16);
    let jobs = Arc::new(Mutex::new(jobs));
    let (taken, done, flushed) = (counter(), counter(), counter());

    // Intake: takes jobs until the shutdown, then stops (and closes the queue as it ends).
    group
        .spawn("intake", {
            let taken = taken.clone();
            move |ctx| async move {
                for job in 0.. {
                    tokio::select! {
                        biased;
                        _ = ctx.done() => break,
                        _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                    }
                    if jobs_in.send(job).await.is_err() {
                        break;
                    }
                    taken.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<(), std::io::Error>(())
            }
        })
        .unwrap();

    // Workers: a job in hand is finished even after the shutdown; then they flush.
    for worker in 0..WORKERS {
        let (jobs, done, flushed) = (jobs.clone(), done.clone(), flushed.clone());
        group
            .spawn(format!("worker-{worker}"), move |ctx| async move {
                loop {
                    let job = tokio::select! {
                        biased;
                        _ = ctx.done() => break,
                        job = async { jobs.lock().await.recv().await } => job,
                    };
                    let Some(_job) = job else { break };
                    tokio::time::sleep(Duration::from_millis(30)).await; // the work
                    done.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await; // flush, ack, close
                flushed.fetch_add(1, Ordering::SeqCst);
                Ok::<(), std::io::Error>(())
            })
            .unwrap();
    }

    // A worker that never looks at its context: only the end of the grace stops it.
    group
        .spawn("stuck", |_ctx| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<(), std::io::Error>(())
        })
        .unwrap();

    tokio::time::sleep(Duration::from_millis(100)).await;
    let done_before = done.load(Ordering::SeqCst);
    println!("shutting down: {done_before} jobs done so far");
    let report = group.shutdown("SIGTERM received", GRACE).await;
    let (taken, done) = (taken.load(Ordering::SeqCst), done.load(Ordering::SeqCst));
    println!(
        "{} jobs in hand finished after the signal; {} queued jobs never started (to hand back)",
        done - done_before,
        taken - done
    );
    println!("{report}");
    for task in report.tasks() {
        let stop = task.time_to_stop().unwrap_or_default();
        println!(
            "  {:<9} {:<9} stopped {:>3} ms after the signal",
            task.name(),
            outcome(task.outcome()),
            stop.as_millis()
        );
    }

    assert_eq!(
        flushed.load(Ordering::SeqCst),
        WORKERS,
        "every worker flushed"
    );
    let counts = report.counts();
    assert_eq!((counts.finished, counts.aborted), (WORKERS as usize + 1, 1));
    let stuck = report.tasks().iter().find(|task| task.name() == "stuck");
    assert!(matches!(
        stuck.map(|task| task.outcome()),
        Some(Outcome::Aborted)
    ));
}

fn counter() -> Arc<AtomicU32> {
    Arc::new(AtomicU32::new(0))
}

fn outcome(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Finished => "finished",
        Outcome::Aborted => "aborted",
        Outcome::Failed(_) => "failed",
        Outcome::Panicked(_) => "panicked",
        _ => "canceled",
    }
}
