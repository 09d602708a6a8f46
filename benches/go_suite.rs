//! Go's `src/context/benchmark_test.go`, ported benchmark for benchmark, printed in Go's format so
//! that `go test -run XXX -bench . -benchmem context` and this suite line up row by row
//! (`benches/compare-go.sh` joins the two).
//!
//! ```sh
//! cargo bench --bench go_suite                       # everything, under 2 minutes
//! cargo bench --bench go_suite -- 'CancelTree|^Err'  # a subset: a regex, as Go's -bench
//! TASKCTX_BENCHTIME=0.2s cargo bench --bench go_suite # quicker, noisier
//! TASKCTX_FLAVOUR=current-thread cargo bench --bench go_suite # or blocking; workers by default
//! ```
//!
//! # Methodology (Go's `testing.B`)
//!
//! - Each benchmark is a *round* function that runs `N` operations and reports how long they
//!   took. The driver runs it with `N = 1`, then predicts the `N` that fills the bench time
//!   (`TASKCTX_BENCHTIME`, default `1s`; `100x` means exactly 100 operations) exactly as Go's
//!   `predictN` does (20% extra, at most 100× the last `N`), until a round lasts at least the
//!   bench time. The last round is reported: `ns/op` = elapsed / `N`.
//! - Setup and teardown inside a round (live contexts created up front, dropping what the
//!   operations built) are not timed, as with Go's `b.ResetTimer`/`b.StopTimer`.
//! - `RunParallel` benchmarks split `N` evenly over the threads of the runtime flavour
//!   (`TASKCTX_FLAVOUR`, see `harness::Flavour`) and report wall time / `N`: `workers`, one task
//!   per worker of a multi-thread Tokio runtime with one worker per core
//!   (`std::thread::available_parallelism`, Go's `GOMAXPROCS`); `current-thread`, the one task
//!   of a current-thread runtime (Go at `-cpu 1`); `blocking`, one plain thread per core that
//!   entered the multi-thread runtime, as blocking code does (Go at its default). The clock
//!   starts once every thread has finished its setup and stops when the last has finished; see
//!   `harness::Meeting`. Single-threaded rows run on the
//!   main thread: with no runtime (`workers`), in `block_on` of the current-thread runtime, or
//!   with the multi-thread runtime entered (`blocking`).
//! - `B/op` and `allocs/op` come from a counting `#[global_allocator]` (over `System`), counted
//!   in every thread during the timed section only and divided by `N`, truncated, as Go does. A
//!   `realloc` counts as one allocation of the new size (Go has no `realloc`: growth allocates).
//! - Names carry Go's `-P` suffix (threads per parallel benchmark). Rows named `Token…` do the
//!   same work with a bare tokio-util `CancellationToken`; rows named `Scale…`,
//!   `SpawnAwaitFloor`, `DeepValueOutermostHit`, `DropOrder` and `ErrOKThroughValue` have no Go
//!   counterpart. Extra metrics follow Go's `b.ReportMetric`
//!   format: `live-B/op` (memory rows) is the heap still held per operation when the timed
//!   section ends; `ns/task` (fan-out rows) is the time per task woken; `floor-ns/op` and
//!   `lookup-ns/op`, see below.
//!
//! # Porting notes
//!
//! - Go's `cancel` funcs become [`CancelHandle`]s, which cancel when dropped. Wherever Go keeps a
//!   context alive (a chain, a live timeout), the port keeps its handle, and drops it at the end
//!   of the operation. Chains are dropped as the end of nested scopes drops them: innermost
//!   first, and in each scope the handle before its context (`let (ctx, _cancel) = …` binds the
//!   handle last, so it drops first). `DropOrder` times one pair dropped in either order.
//! - Contexts with deadlines are created where the flavour's code creates them: in tasks on the
//!   workers, in the task of a current-thread runtime, or on blocking threads. The one-hour
//!   deadlines never fire.
//! - For `Root=Background`, Go lets the chain go to the collector; here dropping the handles
//!   cancels it, which is the only way a Rust program can let go of it.
//! - `CommonParentCancel`'s busy loop is what Go's compiler makes of it, an empty counted loop:
//!   see [`spin`].
//! - `DeepValueNewGoRoutine` spawns a Tokio task per operation from inside a task and awaits
//!   it (on the workers in the `blocking` flavour too); `SpawnAwaitFloor` is the same with an empty task, so lookup cost = total − floor. As
//!   the floor drifts between rounds, each `DeepValueNewGoRoutine` row also measures it in
//!   batches interleaved with its own (`floor-ns/op`, `lookup-ns/op`).
//! - `Scale` rows run once untimed, then five times timed, and report the median round, so
//!   that neither side is timed while the kernel maps fresh heap pages, nor at the mercy of
//!   one round's heap state (see [`Harness::bench_once`]); a context row and its token row
//!   take their rounds in turn ([`Harness::bench_alternating`]).
//! - Without `--bench` (as under `cargo test --benches`) every benchmark runs once, with the
//!   `Scale` sizes divided by 1000: a smoke test of the harness.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "go/harness.rs"]
mod harness;

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{self, Poll, Waker};
use std::time::{Duration, Instant};

use harness::{Harness, Sample, Snapshot, cpu_model, measure, parallel};
use taskctx::{CancelHandle, Context};
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const HOUR: Duration = Duration::from_secs(3600);

fn main() {
    // A failed check must end the run: the other workers of a parallel benchmark would wait
    // for the failed one forever.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::exit(101);
    }));
    let h = Harness::from_env();
    let started = Instant::now();
    println!("goos: {}", std::env::consts::OS);
    println!("goarch: {}", std::env::consts::ARCH);
    println!("pkg: taskctx");
    if let Some(cpu) = cpu_model() {
        println!("cpu: {cpu}");
    }

    common_parent_cancel(&h);
    with_timeout(&h);
    cancel_tree(&h);
    drop_order(&h);
    check_canceled(&h);
    context_cancel_done(&h);
    deep_value_new_go_routine(&h);
    deep_value_same_go_routine(&h);
    err_ok_and_canceled(&h);

    scale_live_deadlines(&h);
    scale_cancel_fanout(&h);
    scale_memory_per_context(&h);

    println!("PASS");
    println!("ok  \ttaskctx\t{:.3}s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// Go's suite
// ---------------------------------------------------------------------------------------------

/// The busy loop around the cancel in `CommonParentCancel`, as Go runs it. Go's source says
/// `for i := 0; i < 100; i++ { x /= x + 1 }`, but `x` is never read afterwards, so Go's compiler
/// drops the division and keeps an empty counted loop (`INCQ; CMPQ $0x64; JL`, as
/// `go tool objdump` shows). The same here: `black_box` keeps the counter and the loop (about
/// 40 ns, as in Go); real 64-bit divisions would cost about 330 ns that Go never spends.
fn spin() {
    for i in 0..100u32 {
        black_box(i);
    }
}

fn common_parent_cancel(h: &Harness) {
    h.bench("CommonParentCancel", h.procs, |n| {
        let root = Context::background().with_value("value");
        let (shared, _shared_cancel) = root.with_cancel();
        parallel(
            h,
            n,
            |_| (),
            move |(), ops| {
                for _ in 0..ops {
                    let (ctx, cancel) = shared.with_cancel();
                    if ctx.value::<&str>() != Some(&"value") {
                        panic!("should not be reached");
                    }
                    spin();
                    cancel.cancel();
                    spin();
                }
            },
        )
    });
    h.bench("TokenCommonParentCancel", h.procs, |n| {
        let shared = CancellationToken::new();
        parallel(
            h,
            n,
            |_| (),
            move |(), ops| {
                for _ in 0..ops {
                    let token = shared.child_token();
                    spin();
                    token.cancel();
                    spin();
                }
            },
        )
    });
}

/// One task of `WithTimeout`: the live contexts it created up front, and the batch it reuses.
struct TimeoutWorker {
    live: Vec<CancelHandle>,
    batch: Vec<CancelHandle>,
}

fn with_timeout(h: &Harness) {
    for concurrency in [40, 4_000, 400_000] {
        let name = format!("WithTimeout/concurrency={concurrency}");
        h.bench(&name, h.procs, |n| {
            let per_task = concurrency / h.procs;
            let setup = move |_| TimeoutWorker {
                live: (0..per_task)
                    .map(|_| Context::background().with_timeout(HOUR).1)
                    .collect(),
                batch: Vec::with_capacity(10),
            };
            parallel(h, n, setup, |worker, ops| {
                let root = Context::background();
                for _ in 0..ops {
                    for _ in 0..10 {
                        let (_ctx, cancel) = root.with_timeout(HOUR);
                        worker.batch.push(cancel);
                    }
                    for cancel in &worker.batch {
                        cancel.cancel();
                    }
                    worker.batch.clear();
                }
                black_box(worker.live.len());
            })
        });
    }
}

/// Go's `buildContextTree`: a chain of `depth` cancellable contexts under `root`, each kept in
/// `chain` beside its handle (dropping one would cancel), as nested scopes of user code keep
/// their `let (ctx, cancel) = parent.with_cancel();` bindings.
fn build_context_tree(root: &Context, depth: usize, chain: &mut Vec<(Context, CancelHandle)>) {
    for _ in 0..depth {
        let pair = chain.last().map_or(root, |(leaf, _)| leaf).with_cancel();
        chain.push(pair);
    }
}

/// Drops a chain of contexts as the end of nested scopes does: the innermost scope first, and in
/// each the handle before its context (bindings drop in reverse order).
fn drop_as_scopes_end(chain: &mut Vec<(Context, CancelHandle)>) {
    while let Some((ctx, cancel)) = chain.pop() {
        drop(cancel);
        drop(ctx);
    }
}

/// The same chain of tokens; with no root, the first token is a root of its own, as a context
/// under `Background` is the first node that can be cancelled.
fn build_token_tree(
    root: Option<&CancellationToken>,
    depth: usize,
    tokens: &mut Vec<CancellationToken>,
) {
    for _ in 0..depth {
        let next = match tokens.last().or(root) {
            Some(parent) => parent.child_token(),
            None => CancellationToken::new(),
        };
        tokens.push(next);
    }
}

/// Drops a chain's handles (or tokens) leaf first.
fn drop_leaf_first(chain: &mut Vec<CancellationToken>) {
    while chain.pop().is_some() {}
}

#[derive(Clone, Copy)]
enum Root {
    Background,
    OpenCanceler,
    ClosedCanceler,
}

impl Root {
    const ALL: [Root; 3] = [Root::Background, Root::OpenCanceler, Root::ClosedCanceler];

    fn name(self) -> &'static str {
        match self {
            Root::Background => "Background",
            Root::OpenCanceler => "OpenCanceler",
            Root::ClosedCanceler => "ClosedCanceler",
        }
    }
}

fn cancel_tree(h: &Harness) {
    for depth in [1, 10, 100, 1000] {
        for root_kind in Root::ALL {
            let name = format!("CancelTree/depth={depth}/Root={}", root_kind.name());
            h.bench_here(&name, |n| {
                let mut chain = Vec::with_capacity(depth);
                measure(|| {
                    for _ in 0..n {
                        match root_kind {
                            Root::Background => {
                                build_context_tree(&Context::background(), depth, &mut chain);
                                drop_as_scopes_end(&mut chain);
                            }
                            Root::OpenCanceler => {
                                let (root, cancel) = Context::background().with_cancel();
                                build_context_tree(&root, depth, &mut chain);
                                cancel.cancel();
                                drop_as_scopes_end(&mut chain);
                            }
                            Root::ClosedCanceler => {
                                let (root, cancel) = Context::background().with_cancel();
                                cancel.cancel();
                                build_context_tree(&root, depth, &mut chain);
                                drop_as_scopes_end(&mut chain);
                            }
                        }
                    }
                })
            });
            h.bench_here(&format!("Token{name}"), |n| {
                let mut tokens = Vec::with_capacity(depth);
                measure(|| {
                    for _ in 0..n {
                        match root_kind {
                            Root::Background => build_token_tree(None, depth, &mut tokens),
                            Root::OpenCanceler => {
                                let root = CancellationToken::new();
                                build_token_tree(Some(&root), depth, &mut tokens);
                                root.cancel();
                            }
                            Root::ClosedCanceler => {
                                let root = CancellationToken::new();
                                root.cancel();
                                build_token_tree(Some(&root), depth, &mut tokens);
                            }
                        }
                        drop_leaf_first(&mut tokens);
                    }
                })
            });
        }
    }
}

/// Not in Go's suite: `with_cancel` from `Background`, then the end of the scope, in the order
/// user code drops the pair (`let (ctx, _cancel) = …`: the handle first, cancelling a context
/// still held) and in the other order (the context first, so that nothing is cancelled).
fn drop_order(h: &Harness) {
    let root = Context::background();
    h.bench_here("DropOrder/first=handle", |n| {
        measure(|| {
            for _ in 0..n {
                let (ctx, _cancel) = black_box(&root).with_cancel();
                black_box(&ctx);
            }
        })
    });
    h.bench_here("DropOrder/first=context", |n| {
        measure(|| {
            for _ in 0..n {
                let (ctx, cancel) = black_box(&root).with_cancel();
                black_box(&ctx);
                drop(ctx);
                drop(cancel);
            }
        })
    });
}

/// Polls `future` once with a waker that does nothing: Go's `select` with a `default` case.
fn poll_once<F: Future>(future: F) -> Poll<F::Output> {
    let mut cx = task::Context::from_waker(Waker::noop());
    pin!(future).poll(&mut cx)
}

fn check_canceled(h: &Harness) {
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    let token = CancellationToken::new();
    token.cancel();

    h.bench_here("CheckCanceled/Err", |n| {
        measure(|| {
            for _ in 0..n {
                black_box(black_box(&ctx).err());
            }
        })
    });
    h.bench_here("TokenCheckCanceled/Err", |n| {
        measure(|| {
            for _ in 0..n {
                black_box(black_box(&token).is_cancelled());
            }
        })
    });
    h.bench_here("CheckCanceled/Done", |n| {
        measure(|| {
            for _ in 0..n {
                black_box(poll_once(black_box(&ctx).done()).is_ready());
            }
        })
    });
    h.bench_here("TokenCheckCanceled/Done", |n| {
        measure(|| {
            for _ in 0..n {
                black_box(poll_once(black_box(&token).cancelled()).is_ready());
            }
        })
    });
}

fn context_cancel_done(h: &Harness) {
    let (ctx, _cancel) = Context::background().with_cancel();
    let token = CancellationToken::new();
    h.bench("ContextCancelDone", h.procs, |n| {
        let ctx = ctx.clone();
        parallel(
            h,
            n,
            |_| (),
            move |(), ops| {
                for _ in 0..ops {
                    black_box(black_box(&ctx).is_done());
                }
            },
        )
    });
    h.bench("TokenContextCancelDone", h.procs, |n| {
        let token = token.clone();
        parallel(
            h,
            n,
            |_| (),
            move |(), ops| {
                for _ in 0..ops {
                    black_box(black_box(&token).is_cancelled());
                }
            },
        )
    });
}

/// `depth` value layers over `Background`, as in Go's `DeepValue*` benchmarks.
fn value_chain(depth: usize) -> Context {
    (0..depth).fold(Context::background(), |ctx, i| ctx.with_value(i))
}

fn deep_value_new_go_routine(h: &Harness) {
    for depth in [10, 20, 30, 50, 100] {
        // Leaked so that each spawned task can borrow it for 'static, as Go's closure captures
        // `ctx`, with no reference count to bump per operation.
        let ctx: &'static Context = Box::leak(Box::new(value_chain(depth)));
        let name = format!("DeepValueNewGoRoutine/depth={depth}");
        h.bench(&name, h.procs, |n| {
            let lookup = move || {
                black_box(black_box(ctx).value::<i64>());
            };
            spawn_and_await_each(h.runtime(), n, lookup, true)
        });
    }
    h.bench("SpawnAwaitFloor", h.procs, |n| {
        spawn_and_await_each(h.runtime(), n, || {}, false)
    });
}

/// From inside a task, `n` times: spawn a task that runs `work`, and await it.
///
/// What a spawn costs drifts from round to round by a factor of two, as Tokio's scheduler
/// settles into keeping both tasks on one worker or bouncing them between the two. So with
/// `with_floor`, every batch of measured operations is followed by a batch of empty tasks,
/// timed apart (and not counted in `ns/op`): the extra metrics `floor-ns/op` and `lookup-ns/op`
/// (= `ns/op` − floor) compare the two under the same conditions.
fn spawn_and_await_each(
    runtime: &Runtime,
    n: u64,
    work: impl Fn() + Copy + Send + 'static,
    with_floor: bool,
) -> Sample {
    const BATCH: u64 = 1000;
    let driver = runtime.spawn(async move {
        let mut measured = Sample::default();
        let mut floor = Duration::ZERO;
        let mut left = n;
        while left > 0 {
            let batch = left.min(BATCH);
            left -= batch;
            let start = Snapshot::take();
            for _ in 0..batch {
                tokio::spawn(async move { work() }).await.unwrap();
            }
            measured += start.sample();
            if with_floor {
                let start = Instant::now();
                for _ in 0..batch {
                    tokio::spawn(async {}).await.unwrap();
                }
                floor += start.elapsed();
            }
        }
        if with_floor {
            let (total, floor) = (measured.elapsed.as_nanos(), floor.as_nanos());
            measured.extra.push(("floor-ns/op", floor as f64));
            measured
                .extra
                .push(("lookup-ns/op", total as f64 - floor as f64));
        }
        measured
    });
    runtime.block_on(driver).unwrap()
}

fn deep_value_same_go_routine(h: &Harness) {
    for depth in [10, 20, 30, 50, 100] {
        let ctx = value_chain(depth);
        h.bench_here(&format!("DeepValueSameGoRoutine/depth={depth}"), |n| {
            measure(|| {
                for _ in 0..n {
                    black_box(black_box(&ctx).value::<i64>());
                }
            })
        });
    }
    // Go's rows look up a key no layer holds, which each layer's key mask answers at once.
    // These find a value held by the outermost layer, below `depth` others: the full walk.
    struct Outermost(u8);
    for depth in [10, 100] {
        let ctx = (0..depth).fold(Context::background().with_value(Outermost(1)), |ctx, i| {
            ctx.with_value(i)
        });
        h.bench_here(&format!("DeepValueOutermostHit/depth={depth}"), |n| {
            measure(|| {
                for _ in 0..n {
                    black_box(black_box(&ctx).value::<Outermost>().map(|v| v.0));
                }
            })
        });
    }
}

fn err_ok_and_canceled(h: &Harness) {
    let (live, _cancel_live) = Context::background().with_cancel();
    let (canceled, cancel) = Context::background().with_cancel();
    cancel.cancel();
    let live_token = CancellationToken::new();
    let canceled_token = CancellationToken::new();
    canceled_token.cancel();

    h.bench_here("ErrOK", |n| {
        measure(|| {
            for _ in 0..n {
                if let Some(err) = black_box(&live).err() {
                    panic!("ctx.err() = {err:?}");
                }
            }
        })
    });
    // Not in Go's suite: the same check through a value layer, which a query reaches one
    // load further away (the layer's nearest scope).
    let through_value = live.with_value("layer");
    h.bench_here("ErrOKThroughValue", |n| {
        measure(|| {
            for _ in 0..n {
                if let Some(err) = black_box(&through_value).err() {
                    panic!("ctx.err() = {err:?}");
                }
            }
        })
    });
    h.bench_here("TokenErrOK", |n| {
        measure(|| {
            for _ in 0..n {
                assert!(!black_box(&live_token).is_cancelled());
            }
        })
    });
    h.bench_here("ErrCanceled", |n| {
        measure(|| {
            for _ in 0..n {
                if black_box(&canceled).err().is_none() {
                    panic!("ctx.err() = None");
                }
            }
        })
    });
    h.bench_here("TokenErrCanceled", |n| {
        measure(|| {
            for _ in 0..n {
                assert!(black_box(&canceled_token).is_cancelled());
            }
        })
    });
}

// ---------------------------------------------------------------------------------------------
// Scale benchmarks Go lacks
// ---------------------------------------------------------------------------------------------

/// Creating a million one-hour deadline contexts from one task, all kept live: ns and bytes
/// each.
fn scale_live_deadlines(h: &Harness) {
    let count = h.scaled(1_000_000);
    let name = format!("ScaleLiveDeadlines/contexts={count}");
    h.bench_once(&name, count, || {
        h.on_worker(move || {
            let root = Context::background();
            let mut live = Vec::with_capacity(count as usize);
            measure(|| {
                for _ in 0..count {
                    let (_ctx, cancel) = root.with_timeout(HOUR);
                    live.push(cancel);
                }
            })
            .with_live_bytes()
        })
    });
}

/// `tasks` tasks each wait on `done()` of their own child of one root; the root is then
/// cancelled. Timed from the cancel until the last task has run to its end.
fn scale_cancel_fanout(h: &Harness) {
    const FANOUTS: u64 = 5;
    let tasks = h.scaled(100_000) as usize;
    let runtime = h.runtime();

    let name = format!("ScaleCancelFanout/tasks={tasks}");
    let context = || {
        let mut total = Sample::default();
        for _ in 0..FANOUTS {
            let (root, cancel) = Context::background().with_cancel();
            total += fanout(runtime, tasks, move |all_waiting, all_exited| {
                let (child, cancel_child) = root.with_cancel();
                async move {
                    wait_for(child.done(), &all_waiting).await;
                    drop((child, cancel_child));
                    all_exited.arrive();
                }
            })
            .run(|| cancel.cancel());
        }
        total.per_task(tasks)
    };
    let token = || {
        let mut total = Sample::default();
        for _ in 0..FANOUTS {
            let root = CancellationToken::new();
            let trigger = root.clone();
            total += fanout(runtime, tasks, move |all_waiting, all_exited| {
                let child = root.child_token();
                async move {
                    wait_for(child.cancelled(), &all_waiting).await;
                    drop(child);
                    all_exited.arrive();
                }
            })
            .run(|| trigger.cancel());
        }
        total.per_task(tasks)
    };
    let token_name = format!("Token{name}");
    h.bench_alternating(FANOUTS, &[(&name, &context), (&token_name, &token)]);
}

/// Polls `signal` once, so that it has registered this task's waker, reports to `all_waiting`,
/// then waits for `signal` if it was not ready yet.
async fn wait_for<F: Future>(signal: F, all_waiting: &Countdown) {
    let mut signal = pin!(signal);
    let first = std::future::poll_fn(|cx| Poll::Ready(signal.as_mut().poll(cx))).await;
    all_waiting.arrive();
    if first.is_pending() {
        signal.await;
    }
}

/// A count of tasks still to reach a point, and a notification when the last one has.
struct Countdown {
    left: AtomicUsize,
    zero: Notify,
}

impl Countdown {
    fn new(count: usize) -> Arc<Self> {
        Arc::new(Countdown {
            left: AtomicUsize::new(count),
            zero: Notify::new(),
        })
    }

    fn arrive(&self) {
        if self.left.fetch_sub(1, Relaxed) == 1 {
            self.zero.notify_one(); // stores a permit if nobody waits yet
        }
    }
}

/// `tasks` tasks spawned on `runtime`, each made by `make_task`, all waiting on something.
struct Fanout<'rt> {
    runtime: &'rt Runtime,
    all_waiting: Arc<Countdown>,
    all_exited: Arc<Countdown>,
}

fn fanout<'rt, F, Fut>(runtime: &'rt Runtime, tasks: usize, mut make_task: F) -> Fanout<'rt>
where
    F: FnMut(Arc<Countdown>, Arc<Countdown>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let all_waiting = Countdown::new(tasks);
    let all_exited = Countdown::new(tasks);
    for _ in 0..tasks {
        runtime.spawn(make_task(all_waiting.clone(), all_exited.clone()));
    }
    Fanout {
        runtime,
        all_waiting,
        all_exited,
    }
}

impl Fanout<'_> {
    /// Waits until every task waits, then times `cancel` until every task has exited.
    fn run(self, cancel: impl FnOnce()) -> Sample {
        self.runtime.block_on(async {
            self.all_waiting.zero.notified().await;
            let start = Snapshot::take();
            cancel();
            self.all_exited.zero.notified().await;
            start.sample()
        })
    }
}

/// Bytes and allocations of one derived context that is kept alive (with its handle, if any),
/// under a live cancellable parent, derived from a task.
fn scale_memory_per_context(h: &Harness) {
    type Derive = fn(&Context) -> (Context, Option<CancelHandle>);
    let derives: [(&str, Derive); 4] = [
        ("with_cancel", |p| {
            let (ctx, cancel) = p.with_cancel();
            (ctx, Some(cancel))
        }),
        ("with_timeout", |p| {
            let (ctx, cancel) = p.with_timeout(HOUR);
            (ctx, Some(cancel))
        }),
        ("with_value", |p| (p.with_value(7usize), None)),
        ("without_cancel", |p| (p.without_cancel(), None)),
    ];
    let count = h.scaled(100_000);
    // `child_token`, under the name of the context row whose work it does, in turn with it.
    let token_name = "TokenScaleMemoryPerContext/derive=with_cancel";
    let token = || {
        h.on_worker(move || {
            let parent = CancellationToken::new();
            let mut live = Vec::with_capacity(count as usize);
            measure(|| {
                for _ in 0..count {
                    live.push(parent.child_token());
                }
            })
            .with_live_bytes()
        })
    };
    for (derive, f) in derives {
        let name = format!("ScaleMemoryPerContext/derive={derive}");
        let context = || {
            h.on_worker(move || {
                let (parent, _cancel) = Context::background().with_cancel();
                let mut live = Vec::with_capacity(count as usize);
                measure(|| {
                    for _ in 0..count {
                        live.push(f(&parent));
                    }
                })
                .with_live_bytes()
            })
        };
        if derive == "with_cancel" {
            h.bench_alternating(count, &[(&name, &context), (token_name, &token)]);
        } else {
            h.bench_once(&name, count, context);
        }
    }
}
