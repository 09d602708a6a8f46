//! A task group's whole life at scale, beside tokio-util's `TaskTracker` and
//! `CancellationToken` doing the same work: spawn 100,000 tasks that each wait for their
//! context (token) to be done, then shut the group down and wait until every task has stopped.
//! Run with `cargo bench --bench groups`; `benches/compare-groups.sh` runs these rows beside
//! Go's errgroup pattern (`benches/go/groups_test.go`), in alternating rounds.
//!
//! The group does more per task than the tracker: a child context, a named entry in the
//! report, a panic guard and the leak check's count. The rows show what that costs.
//!
//! `-- group N [R] [workers[=W]] [time]` or `-- tracker N [R] [workers[=W]] [time]` runs R
//! rounds (default 1) of N tasks on a current-thread runtime (or on the rows' two workers, or
//! W), and nothing else. For instruction counts under `valgrind --tool=callgrind`, which do not depend on the
//! machine's load: the difference of two such runs divided by the difference in tasks is the
//! cost per task without the process's start and end; from 1 round to 3 of the same N, that of
//! the rounds after the first, whose allocator has the room the first left, as divan's later
//! samples do. The current-thread count is exact run to run; the allocator's share of it moves
//! with the size of the member's future (the user's future is part of it), so compare the rest
//! too. On two workers the count changes with how the threads interleave. `time` prints the
//! median wall-clock time of the rounds: one row per process, since a row run after another in
//! the same process runs on the heap the first left.

use std::time::Duration;

use divan::Bencher;
use taskctx::{Context, TaskGroup};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const TASKS: usize = 100_000;

fn main() {
    // `cargo bench` passes `--bench`; `group N [R] [workers] [time]` or `tracker ...` picks R
    // rounds (1 if not given) of one row.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let mut counts = args.iter().skip(1).filter_map(|arg| arg.parse().ok());
    match args.first().map(String::as_str) {
        Some(row @ ("group" | "tracker")) => {
            let tasks = counts.next().expect("a count of tasks");
            let rounds = counts.next().unwrap_or(1);
            let workers = args
                .iter()
                .find_map(|arg| match arg.strip_prefix("workers") {
                    Some("") => Some(2),
                    Some(count) => count.strip_prefix('=')?.parse().ok(),
                    None => None,
                });
            let runtime = if let Some(workers) = workers {
                runtime_with(workers)
            } else {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
            };
            let mut times = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let start = std::time::Instant::now();
                if row == "group" {
                    runtime.block_on(group_round(tasks));
                } else {
                    runtime.block_on(tracker_round(tasks));
                }
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            if args.iter().any(|arg| arg == "time") {
                println!(
                    "{row}: {:.1} ms (median of {rounds} rounds)",
                    median(&mut times)
                );
            }
        }
        _ => divan::main(),
    }
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// A multi-thread runtime with two workers, as the machine these run on has two cores.
fn runtime() -> Runtime {
    runtime_with(2)
}

fn runtime_with(workers: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn group_spawn_then_shutdown(bencher: Bencher) {
    let runtime = runtime();
    bencher.bench_local(|| runtime.block_on(group_round(TASKS)));
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn tracker_spawn_then_cancel_and_wait(bencher: Bencher) {
    let runtime = runtime();
    bencher.bench_local(|| runtime.block_on(tracker_round(TASKS)));
}

async fn group_round(tasks: usize) {
    let group = TaskGroup::new(&Context::background());
    for _ in 0..tasks {
        group
            .spawn("worker", |ctx| async move {
                ctx.done().await;
                Ok::<(), taskctx::Error>(())
            })
            .unwrap();
    }
    let report = group.shutdown("bench", Duration::from_secs(60)).await;
    assert_eq!(report.counts().finished, tasks);
}

async fn tracker_round(tasks: usize) {
    let tracker = TaskTracker::new();
    let token = CancellationToken::new();
    for _ in 0..tasks {
        let token = token.child_token();
        tracker.spawn(async move { token.cancelled().await });
    }
    tracker.close();
    token.cancel();
    tracker.wait().await;
}
