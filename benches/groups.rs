//! A task group's whole life at scale, beside tokio-util's `TaskTracker` and
//! `CancellationToken` doing the same work: spawn 100,000 tasks that each wait for their
//! context (token) to be done, then shut the group down and wait until every task has stopped.
//! Run with `cargo bench --bench groups`; `benches/compare-groups.sh` runs these rows beside
//! Go's errgroup pattern (`benches/go/groups_test.go`), in alternating rounds.
//!
//! The group does more per task than the tracker: a child context, a named entry in the
//! report, a panic guard and the leak check's count. The rows show what that costs.

use std::time::Duration;

use divan::Bencher;
use taskctx::{Context, TaskGroup};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const TASKS: usize = 100_000;

fn main() {
    divan::main();
}

/// A multi-thread runtime with two workers, as the machine these run on has two cores.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn group_spawn_then_shutdown(bencher: Bencher) {
    let runtime = runtime();
    bencher.bench_local(|| {
        runtime.block_on(async {
            let group = TaskGroup::new(&Context::background());
            for _ in 0..TASKS {
                group
                    .spawn("worker", |ctx| async move {
                        ctx.done().await;
                        Ok::<(), taskctx::Error>(())
                    })
                    .unwrap();
            }
            let report = group.shutdown("bench", Duration::from_secs(60)).await;
            assert_eq!(report.counts().finished, TASKS);
        })
    });
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn tracker_spawn_then_cancel_and_wait(bencher: Bencher) {
    let runtime = runtime();
    bencher.bench_local(|| {
        runtime.block_on(async {
            let tracker = TaskTracker::new();
            let token = CancellationToken::new();
            for _ in 0..TASKS {
                let token = token.child_token();
                tracker.spawn(async move { token.cancelled().await });
            }
            tracker.close();
            token.cancel();
            tracker.wait().await;
        })
    });
}
