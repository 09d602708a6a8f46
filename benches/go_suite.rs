//! Go's `src/context/benchmark_test.go`, ported benchmark for benchmark, printed in Go's format so
//! that `go test -run XXX -bench . -benchmem context` and this suite line up row by row
//! (`benches/compare-go.sh` joins the two).
//!
//! ```sh
//! cargo bench --bench go_suite                       # everything, under 2 minutes
//! cargo bench --bench go_suite -- 'CancelTree|^Err'  # a subset: a regex, as Go's -bench
//! TASKCTX_BENCHTIME=0.2s cargo bench --bench go_suite # quicker, noisier
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
//! - `RunParallel` benchmarks split `N` evenly over one task per worker of a multi-thread Tokio
//!   runtime with one worker per core (`std::thread::available_parallelism`, Go's `GOMAXPROCS`)
//!   and report wall time / `N`. The clock starts once every task has finished its setup and
//!   stops when the last has finished; see [`Meeting`].
//! - `B/op` and `allocs/op` come from a counting `#[global_allocator]` (over `System`), counted
//!   in every thread during the timed section only and divided by `N`, truncated, as Go does. A
//!   `realloc` counts as one allocation of the new size (Go has no `realloc`: growth allocates).
//! - Names carry Go's `-P` suffix (threads per parallel benchmark). Rows named `Token…` do the
//!   same work with a bare tokio-util `CancellationToken`; rows named `Scale…`,
//!   `SpawnAwaitFloor`, `DeepValueOutermostHit` and `ErrOKThroughValue` have no Go counterpart. Extra metrics follow Go's `b.ReportMetric`
//!   format: `live-B/op` (memory rows) is the heap still held per operation when the timed
//!   section ends; `ns/task` (fan-out rows) is the time per task woken; `floor-ns/op` and
//!   `lookup-ns/op`, see below.
//!
//! # Porting notes
//!
//! - Go's `cancel` funcs become [`CancelHandle`]s, which cancel when dropped. Wherever Go keeps a
//!   context alive (a chain, a live timeout), the port keeps its handle, and drops it at the end
//!   of the operation; chains are dropped leaf first, as nested scopes would drop them.
//! - Contexts with deadlines are created where a server creates them, in tasks on the worker
//!   threads of a multi-thread runtime (which is where taskctx arms its own per-worker wheel;
//!   elsewhere it falls back to one Tokio timer per context). The one-hour deadlines never fire.
//! - For `Root=Background`, Go lets the chain go to the collector; here dropping the handles
//!   cancels it, which is the only way a Rust program can let go of it.
//! - `CommonParentCancel`'s busy loop is what Go's compiler makes of it, an empty counted loop:
//!   see [`spin`].
//! - `DeepValueNewGoRoutine` spawns a Tokio task per operation from inside a task and awaits
//!   it; `SpawnAwaitFloor` is the same with an empty task, so lookup cost = total − floor. As
//!   the floor drifts between rounds, each `DeepValueNewGoRoutine` row also measures it in
//!   batches interleaved with its own (`floor-ns/op`, `lookup-ns/op`).
//! - `Scale` rows run once untimed, then five times timed, and report the median round, so
//!   that neither side is timed while the kernel maps fresh heap pages, nor at the mercy of
//!   one round's heap state (see [`Harness::bench_once`]); a context row and its token row
//!   take their rounds in turn ([`Harness::bench_alternating`]).
//! - Without `--bench` (as under `cargo test --benches`) every benchmark runs once, with the
//!   `Scale` sizes divided by 1000: a smoke test of the harness.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{self, Poll, Waker};
use std::time::{Duration, Instant};

use regex_lite::Regex;
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
            h.runtime(),
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
            h.runtime(),
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
            parallel(h.runtime(), n, setup, |worker, ops| {
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

/// Go's `buildContextTree`: a chain of `depth` cancellable contexts under `root`. The handles
/// go into `handles` (dropping one would cancel); the leaf is returned.
fn build_context_tree(root: &Context, depth: usize, handles: &mut Vec<CancelHandle>) -> Context {
    let mut leaf: Option<Context> = None;
    for _ in 0..depth {
        let (child, cancel) = leaf.as_ref().unwrap_or(root).with_cancel();
        handles.push(cancel);
        leaf = Some(child);
    }
    leaf.unwrap_or_else(|| root.clone())
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
fn drop_leaf_first<T>(chain: &mut Vec<T>) {
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
            h.bench(&name, 1, |n| {
                let mut handles = Vec::with_capacity(depth);
                measure(|| {
                    for _ in 0..n {
                        match root_kind {
                            Root::Background => {
                                let leaf =
                                    build_context_tree(&Context::background(), depth, &mut handles);
                                drop(leaf);
                            }
                            Root::OpenCanceler => {
                                let (root, cancel) = Context::background().with_cancel();
                                let leaf = build_context_tree(&root, depth, &mut handles);
                                cancel.cancel();
                                drop(leaf);
                            }
                            Root::ClosedCanceler => {
                                let (root, cancel) = Context::background().with_cancel();
                                cancel.cancel();
                                let leaf = build_context_tree(&root, depth, &mut handles);
                                drop(leaf);
                            }
                        }
                        drop_leaf_first(&mut handles);
                    }
                })
            });
            h.bench(&format!("Token{name}"), 1, |n| {
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

    h.bench("CheckCanceled/Err", 1, |n| {
        measure(|| {
            for _ in 0..n {
                black_box(black_box(&ctx).err());
            }
        })
    });
    h.bench("TokenCheckCanceled/Err", 1, |n| {
        measure(|| {
            for _ in 0..n {
                black_box(black_box(&token).is_cancelled());
            }
        })
    });
    h.bench("CheckCanceled/Done", 1, |n| {
        measure(|| {
            for _ in 0..n {
                black_box(poll_once(black_box(&ctx).done()).is_ready());
            }
        })
    });
    h.bench("TokenCheckCanceled/Done", 1, |n| {
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
            h.runtime(),
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
            h.runtime(),
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
        h.bench(&format!("DeepValueSameGoRoutine/depth={depth}"), 1, |n| {
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
        h.bench(&format!("DeepValueOutermostHit/depth={depth}"), 1, |n| {
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

    h.bench("ErrOK", 1, |n| {
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
    h.bench("ErrOKThroughValue", 1, |n| {
        measure(|| {
            for _ in 0..n {
                if let Some(err) = black_box(&through_value).err() {
                    panic!("ctx.err() = {err:?}");
                }
            }
        })
    });
    h.bench("TokenErrOK", 1, |n| {
        measure(|| {
            for _ in 0..n {
                assert!(!black_box(&live_token).is_cancelled());
            }
        })
    });
    h.bench("ErrCanceled", 1, |n| {
        measure(|| {
            for _ in 0..n {
                if black_box(&canceled).err().is_none() {
                    panic!("ctx.err() = None");
                }
            }
        })
    });
    h.bench("TokenErrCanceled", 1, |n| {
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

// ---------------------------------------------------------------------------------------------
// The harness: Go's testing.B, RunParallel and -benchmem
// ---------------------------------------------------------------------------------------------

/// How long each benchmark runs: Go's `-benchtime`, `1s` or `100x`.
#[derive(Clone, Copy)]
enum BenchTime {
    For(Duration),
    Times(u64),
}

impl BenchTime {
    fn parse(text: &str) -> Option<BenchTime> {
        if let Some(count) = text.strip_suffix('x') {
            return count.parse().ok().filter(|&n| n > 0).map(BenchTime::Times);
        }
        let (number, scale) = [("ms", 1e-3), ("us", 1e-6), ("s", 1.0), ("m", 60.0)]
            .into_iter()
            .find_map(|(unit, scale)| Some((text.strip_suffix(unit)?, scale)))?;
        let seconds: f64 = number.parse().ok()?;
        Some(BenchTime::For(Duration::from_secs_f64(seconds * scale)))
    }
}

struct Harness {
    /// Go's `-bench` regex, split at `/`: one unanchored regex per level of the name.
    filter: Vec<Regex>,
    time: BenchTime,
    /// Threads per parallel benchmark: Go's `GOMAXPROCS`.
    procs: usize,
    /// Run once, at reduced scale: not benchmarking, only checking that everything runs.
    smoke: bool,
    /// A multi-thread runtime with one worker per core, built on first use.
    runtime: OnceLock<Runtime>,
}

impl Harness {
    fn from_env() -> Harness {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let smoke = !args.iter().any(|arg| arg == "--bench");
        let filter = match args.iter().find(|arg| !arg.starts_with('-')) {
            Some(pattern) => pattern
                .split('/')
                .map(|level| {
                    Regex::new(level).unwrap_or_else(|err| panic!("bad filter {pattern:?}: {err}"))
                })
                .collect(),
            None => Vec::new(),
        };
        let time = match std::env::var("TASKCTX_BENCHTIME") {
            _ if smoke => BenchTime::Times(1),
            Ok(text) => BenchTime::parse(&text).unwrap_or_else(|| {
                panic!("TASKCTX_BENCHTIME={text:?}: expected 1s, 500ms or 100x")
            }),
            Err(_) => BenchTime::For(Duration::from_secs(1)),
        };
        let procs = std::thread::available_parallelism().map_or(1, |n| n.get());
        Harness {
            filter,
            time,
            procs,
            smoke,
            runtime: OnceLock::new(),
        }
    }

    /// The runtime that parallel and task benchmarks run on: one worker per core, as Go has
    /// one P per core, with a timer.
    fn runtime(&self) -> &Runtime {
        self.runtime.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.procs)
                .enable_all()
                .build()
                .expect("cannot build a Tokio runtime")
        })
    }

    /// Runs `f` in a task on [`Harness::runtime`]: where a server derives its contexts.
    fn on_worker<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let runtime = self.runtime();
        runtime.block_on(runtime.spawn(async { f() })).unwrap()
    }

    /// `count`, or a thousandth of it in a smoke test.
    fn scaled(&self, count: u64) -> u64 {
        if self.smoke {
            (count / 1000).max(1)
        } else {
            count
        }
    }

    /// Whether the filter selects `name`, as Go's `-bench` does: `CancelTree/depth=1/` selects
    /// every `Root` of depths 1, 10, 100 and 1000.
    fn wants(&self, name: &str) -> bool {
        name.split('/')
            .zip(&self.filter)
            .all(|(level, re)| re.is_match(level))
    }

    /// Runs a benchmark as Go's `testing.B` does: rounds of `n` operations, growing `n` until a
    /// round lasts the bench time. `threads` only names it (Go's `-P` suffix).
    fn bench(&self, name: &str, threads: usize, mut round: impl FnMut(u64) -> Sample) {
        if !self.wants(name) {
            return;
        }
        let (n, sample) = match self.time {
            BenchTime::Times(n) => (n, round(n)),
            BenchTime::For(goal) => {
                let (mut n, mut sample) = (1, round(1));
                while sample.elapsed < goal && n < 1_000_000_000 {
                    n = predict_n(goal, n, sample.elapsed);
                    sample = round(n);
                }
                (n, sample)
            }
        };
        print_result(name, threads, n, &sample);
    }

    /// Runs a scale benchmark: `round` performs `n` operations, once untimed, then
    /// [`SCALE_ROUNDS`] times timed; reports the round of median time.
    ///
    /// The untimed round is there for the heap: a process's first hundred thousand contexts
    /// land on pages the kernel has never mapped, and the faults (zeroing 30 MB) then dominated
    /// whichever row ran first (`ScaleMemoryPerContext/derive=with_cancel`: 290 ns/op when run
    /// alone, 66 in the full suite). Go's own first round of `b.N = 1` warms its heap the same way.
    /// The median is there because one round still varied by a factor of up to four with the
    /// heap's state (the token's `child_token` row took 22.7 to 96.5 ns/op in four runs of the
    /// same binary), a few milliseconds against a millisecond of page faults or trimming.
    fn bench_once(&self, name: &str, n: u64, round: impl Fn() -> Sample) {
        self.bench_alternating(n, &[(name, &round)]);
    }

    /// [`Harness::bench_once`] for rows that compare with each other (the context's and the
    /// token's): their rounds are taken in turn, so that neither row runs wholly on a heap the
    /// other has just grown or emptied. The fan-out, run one row after the other, came out at
    /// 1.29-1.43x the token; in turn, 1.16-1.24x (three runs each). The memory rows do not
    /// move (52.0-52.9 against 22.5-22.6 ns/op either way): the token's smaller rounds reuse
    /// the pages the context's larger ones fault in, as they did in sequence; run alone, each
    /// faulting its own, they take 66.3 and 52.5 ns/op.
    fn bench_alternating(&self, n: u64, rows: &[(&str, &dyn Fn() -> Sample)]) {
        let rows: Vec<_> = rows.iter().filter(|(name, _)| self.wants(name)).collect();
        for (_, round) in &rows {
            drop(round());
        }
        let rounds = if self.smoke { 1 } else { SCALE_ROUNDS };
        let mut samples: Vec<Vec<Sample>> = rows.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for ((_, round), taken) in rows.iter().zip(&mut samples) {
                taken.push(round());
            }
        }
        for ((name, _), mut taken) in rows.iter().zip(samples) {
            taken.sort_by_key(|sample| sample.elapsed);
            let median = taken.swap_remove(taken.len() / 2);
            print_result(name, self.procs, n, &median);
        }
    }
}

/// How many timed rounds a scale benchmark runs (see [`Harness::bench_once`]).
const SCALE_ROUNDS: usize = 5;

/// Go's `predictN`: the next round's `n`, aiming 20% past the goal, growing at most 100× and
/// at least by one.
fn predict_n(goal: Duration, last: u64, elapsed: Duration) -> u64 {
    let elapsed = elapsed.as_nanos().max(1);
    let mut n = (goal.as_nanos() * u128::from(last) / elapsed) as u64;
    n += n / 5;
    n.min(100 * last).max(last + 1).min(1_000_000_000)
}

/// Prints one line as Go's `testing` package does, extra metrics sorted by unit before the
/// memory columns.
fn print_result(name: &str, threads: usize, n: u64, sample: &Sample) {
    let suffix = if threads == 1 {
        String::new()
    } else {
        format!("-{threads}")
    };
    let mut line = format!("{:<60}\t{n:8}", format!("Benchmark{name}{suffix}"));
    let ns_per_op = sample.elapsed.as_nanos() as f64 / n as f64;
    line += &format!("\t{}", pretty(ns_per_op, "ns/op"));
    let mut extra = sample.extra.clone();
    extra.sort_by(|a, b| a.0.cmp(b.0));
    for (unit, total) in extra {
        line += &format!("\t{}", pretty(total / n as f64, unit));
    }
    line += &format!(
        "\t{:8} B/op\t{:8} allocs/op",
        sample.bytes / n,
        sample.allocs / n
    );
    println!("{line}");
}

/// Go's `prettyPrint`: ten places before the point, four significant figures for small values.
fn pretty(x: f64, unit: &str) -> String {
    let y = x.abs();
    let (width, precision) = match () {
        _ if y == 0.0 || y >= 999.95 => (10, 0),
        _ if y >= 99.995 => (12, 1),
        _ if y >= 9.9995 => (13, 2),
        _ if y >= 0.99995 => (14, 3),
        _ if y >= 0.099995 => (15, 4),
        _ if y >= 0.0099995 => (16, 5),
        _ if y >= 0.00099995 => (17, 6),
        _ => (18, 7),
    };
    format!("{x:width$.precision$} {unit}")
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|line| line.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// Go's `RunParallel`: `n` operations split evenly over one task per worker of `runtime`.
/// Each task first builds its state with `setup(task_index)`, untimed; `body(state, ops)` then
/// runs its share of the operations. Timed from the moment every task is set up until the last
/// is done; dropping the states is not timed.
fn parallel<S, Setup, Body>(runtime: &Runtime, n: u64, setup: Setup, body: Body) -> Sample
where
    S: 'static,
    Setup: Fn(usize) -> S + Send + Sync + 'static,
    Body: Fn(&mut S, u64) + Send + Sync + 'static,
{
    let tasks = runtime.metrics().num_workers();
    let meeting = Arc::new(Meeting::new(tasks));
    let (setup, body) = (Arc::new(setup), Arc::new(body));
    let handles: Vec<_> = (0..tasks)
        .map(|index| {
            let ops = n / tasks as u64 + u64::from((index as u64) < n % tasks as u64);
            let (meeting, setup, body) = (meeting.clone(), setup.clone(), body.clone());
            runtime.spawn(async move { meeting.attend(|| setup(index), |state| body(state, ops)) })
        })
        .collect();
    let sample = meeting.time();
    for handle in handles {
        runtime.block_on(handle).unwrap();
    }
    sample
}

/// Where the tasks of a parallel benchmark and the timing thread meet.
///
/// The tasks never `.await`, so each keeps its worker thread from setup to teardown, as a
/// goroutine of `RunParallel` keeps its P: they wait for one another by spinning, which also
/// makes Tokio hand any task still queued on a busy worker to an idle one. The timing thread
/// sleeps until the tasks report that they are set up, and then that they are done.
struct Meeting {
    tasks: usize,
    /// How many tasks have begun their setup.
    started: AtomicUsize,
    /// How many tasks are set up, and how many are done.
    reports: Mutex<(usize, usize)>,
    reported: Condvar,
    clock: AtomicU8,
}

/// How long a set-up task waits for another task to begin before it hands its worker off.
const HAND_OFF_AFTER: Duration = Duration::from_millis(200);

const NOT_STARTED: u8 = 0;
const RUNNING: u8 = 1;
const STOPPED: u8 = 2;

impl Meeting {
    fn new(tasks: usize) -> Meeting {
        Meeting {
            tasks,
            started: AtomicUsize::new(0),
            reports: Mutex::new((0, 0)),
            reported: Condvar::new(),
            clock: AtomicU8::new(NOT_STARTED),
        }
    }

    /// One task's part: set up, wait for the clock, work, wait for the clock to stop, tear down.
    fn attend<S>(&self, setup: impl FnOnce() -> S, body: impl FnOnce(&mut S)) {
        self.started.fetch_add(1, Relaxed);
        let mut state = setup();
        self.report(|(ready, _)| *ready += 1);
        let since = Instant::now();
        while self.clock.load(Acquire) == NOT_STARTED {
            // Once in a few thousand parallel rows (seen in `WithTimeout`), a task waited 60 s
            // here for another that never began: that one sat queued where no free worker
            // took it, most likely in this worker's own run queue. Handing this worker, queue
            // and all, to a new thread lets the queued task run; this task goes on spinning on
            // the thread it keeps.
            if self.started.load(Relaxed) < self.tasks && since.elapsed() > HAND_OFF_AFTER {
                eprintln!("note: a task of a parallel benchmark was not taken up; handing off");
                tokio::task::block_in_place(|| self.wait_for_clock(since));
                break;
            }
            self.check_waited(since);
            std::hint::spin_loop();
        }
        body(&mut state);
        self.report(|(_, done)| *done += 1);
        while self.clock.load(Acquire) == RUNNING {
            std::hint::spin_loop();
        }
        drop(state);
    }

    fn wait_for_clock(&self, since: Instant) {
        while self.clock.load(Acquire) == NOT_STARTED {
            self.check_waited(since);
            std::hint::spin_loop();
        }
    }

    fn check_waited(&self, since: Instant) {
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "the other tasks never started: fewer free workers than tasks?"
        );
    }

    fn report(&self, count: impl FnOnce(&mut (usize, usize))) {
        count(&mut self.reports.lock().unwrap());
        self.reported.notify_all();
    }

    /// The timing thread's part: the clock runs while the tasks work.
    fn time(&self) -> Sample {
        let wait_for = |all: fn(&(usize, usize), usize) -> bool| {
            let reports = self.reports.lock().unwrap();
            drop(
                self.reported
                    .wait_while(reports, |r| !all(r, self.tasks))
                    .unwrap(),
            );
        };
        wait_for(|&(ready, _), tasks| ready == tasks);
        let start = Snapshot::take();
        self.clock.store(RUNNING, Release);
        wait_for(|&(_, done), tasks| done == tasks);
        let sample = start.sample();
        self.clock.store(STOPPED, Release);
        sample
    }
}

/// Times `f` and counts what it allocates.
fn measure(f: impl FnOnce()) -> Sample {
    let start = Snapshot::take();
    f();
    start.sample()
}

/// What a timed section took: wall time, and the heap traffic of every thread meanwhile.
/// `extra` holds custom metrics as totals over the section; they are printed per operation.
#[derive(Clone, Debug, Default)]
struct Sample {
    elapsed: Duration,
    allocs: u64,
    bytes: u64,
    freed: u64,
    extra: Vec<(&'static str, f64)>,
}

impl Sample {
    /// Adds the heap still held at the end of the section, as `live-B/op`.
    fn with_live_bytes(mut self) -> Sample {
        let live = self.bytes as f64 - self.freed as f64;
        self.extra.push(("live-B/op", live));
        self
    }

    /// Adds the time per task of a section that ended `tasks` tasks, as `ns/task`.
    fn per_task(mut self, tasks: usize) -> Sample {
        let ns = self.elapsed.as_nanos() as f64 / tasks as f64;
        self.extra.push(("ns/task", ns));
        self
    }
}

impl std::ops::AddAssign for Sample {
    fn add_assign(&mut self, other: Sample) {
        self.elapsed += other.elapsed;
        self.allocs += other.allocs;
        self.bytes += other.bytes;
        self.freed += other.freed;
        for (unit, value) in other.extra {
            match self.extra.iter_mut().find(|(u, _)| *u == unit) {
                Some((_, total)) => *total += value,
                None => self.extra.push((unit, value)),
            }
        }
    }
}

/// The clock and the allocation counters at the start of a timed section.
struct Snapshot {
    at: Instant,
    counts: Counts,
}

impl Snapshot {
    fn take() -> Snapshot {
        let counts = Counts::now();
        Snapshot {
            at: Instant::now(),
            counts,
        }
    }

    fn sample(&self) -> Sample {
        let elapsed = self.at.elapsed();
        let now = Counts::now();
        Sample {
            elapsed,
            allocs: now.allocs - self.counts.allocs,
            bytes: now.bytes - self.counts.bytes,
            freed: now.freed - self.counts.freed,
            extra: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The counting allocator
// ---------------------------------------------------------------------------------------------

/// Counts allocations in per-thread stripes, so that threads allocating at once do not fight
/// over one cache line (Go also counts per P). Totals are the sums over all stripes.
struct CountingAlloc;

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

const STRIPES: usize = 64;

#[repr(align(128))] // two cache lines: no false sharing, even with adjacent-line prefetch
struct Stripe {
    allocs: AtomicU64,
    bytes: AtomicU64,
    freed: AtomicU64,
}

static COUNTS: [Stripe; STRIPES] = [const {
    Stripe {
        allocs: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        freed: AtomicU64::new(0),
    }
}; STRIPES];

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // `const`, with no destructor: usable from inside the allocator, even while a thread exits.
    static MY_STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn my_stripe() -> &'static Stripe {
    let index = MY_STRIPE
        .try_with(|slot| {
            if slot.get() == usize::MAX {
                slot.set(NEXT_STRIPE.fetch_add(1, Relaxed) % STRIPES);
            }
            slot.get()
        })
        .unwrap_or(0);
    &COUNTS[index]
}

/// Relaxed is enough: totals are read after the threads that allocated have met the reader at
/// a barrier (or after an `.await` that synchronised with them).
fn count_alloc(size: usize) {
    let stripe = my_stripe();
    stripe.allocs.fetch_add(1, Relaxed);
    stripe.bytes.fetch_add(size as u64, Relaxed);
}

fn count_free(size: usize) {
    my_stripe().freed.fetch_add(size as u64, Relaxed);
}

#[derive(Clone, Copy)]
struct Counts {
    allocs: u64,
    bytes: u64,
    freed: u64,
}

impl Counts {
    fn now() -> Counts {
        COUNTS.iter().fold(
            Counts {
                allocs: 0,
                bytes: 0,
                freed: 0,
            },
            |sum, stripe| Counts {
                allocs: sum.allocs + stripe.allocs.load(Relaxed),
                bytes: sum.bytes + stripe.bytes.load(Relaxed),
                freed: sum.freed + stripe.freed.load(Relaxed),
            },
        )
    }
}

// SAFETY: every method forwards to `System` unchanged; the counting touches only atomics and a
// const thread-local, neither of which allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_alloc(layout.size());
        // SAFETY: the caller's contract is `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_alloc(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count_free(layout.size());
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_alloc(new_size);
        count_free(layout.size());
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
