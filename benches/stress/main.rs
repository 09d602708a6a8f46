//! Stress and soak: the cancellation tree at scale, under races, over millions of cycles, and
//! through a runtime shutdown. Every figure is printed; any failed check makes the exit status
//! non-zero.
//!
//! ```sh
//! cargo bench --bench stress -- --quick   # what CI runs: under a minute
//! cargo bench --bench stress              # the full sizes
//! ```
//!
//! A plain `cargo bench` runs it at full sizes with the other benches; `cargo test --benches`
//! (no `--bench` argument) at quick sizes.
//!
//! Parts, in the order they run (the soak first, so that its memory figures start from a
//! process that has not yet grown and shrunk):
//!
//! 1. **soak**: 10,000,000 derive/cancel/drop cycles (quick: 1,000,000) with deadlines, values,
//!    merges, waiters and callbacks, below one long-lived parent: half on plain threads that
//!    entered a multi-thread runtime, half in tasks on its workers (whose deadlines go into the
//!    workers' own wheels). Every answer is checked. Most deadlines (1–5,000 ms) never fire, as
//!    their context is dropped first; so one cycle in 16 sets a deadline that must fire: already
//!    due when derived (one in four of them) or 1–1,000 µs ahead, fired by Tokio's timer or a
//!    worker's wheel. They come in bursts of 64 at the end of every block of 1,024 cycles, held
//!    until `done()` resolves, and the run fails unless every one of them reports
//!    `DeadlineExceeded`, not early. Resident memory (`VmRSS`) and the live heap (counted by
//!    this program's allocator) are read at process start, after a warm-up of a quarter of the
//!    cycles (at least 100,000) and at the end, and all are printed; the run fails if after the
//!    warm-up the live heap grew by 0.01 byte per cycle or more, or `VmRSS` by more than 5% (and 512 KiB)
//!    (see `soak` for why the warm-up is left out). The parent's census must be clean at the end.
//! 2. **tree**: a random tree of 1,000,000 contexts (quick: 100,000) cancelled from every thread
//!    at once in random order, each node with a cause of its own, while other threads derive new
//!    children and tasks await `done()`. Afterwards every context is done; each node's cause is
//!    its own or its parent's (so it is the cause of its first-cancelled ancestor-or-self), and
//!    the root's is its own; every derived child agrees with its parent(s); every awaiting task
//!    finished with the right error.
//! 3. **chain**: chains of 100,000 derived contexts cancelled and dropped, or released without
//!    a cancellation, on a thread with a 2 MiB stack.
//! 4. **shutdown**: current-thread and multi-thread runtimes shut down while contexts, timers,
//!    waiting tasks and spawned tasks are alive: no panic, no hang, no deadline fired early, the
//!    short ones still fire afterwards, and nothing is left registered.
//! 5. **hostile**: 10,000 deadlines (quick: 2,000) due over 200 ms on a two-worker runtime,
//!    half in the workers' wheels, half in Tokio's timer, whose `after_func` callbacks block
//!    for 1-5 ms (about 32 of them) or panic (one in 16), and whose waiters' wakers panic (one
//!    in 16).
//!    Every context must end done with `DeadlineExceeded`, every other callback run and every
//!    other waiter wake; a 1 ms ticker on the same runtime prints how late the other timers
//!    were (the p99 and the worst tick).
//!
//! A watchdog ends the process with an error if a part runs far longer than it should (a
//! deadlock). Randomness comes from a seeded generator (`tests/common/rng.rs`), so every run does
//! the same work (thread interleavings aside). Each part is a module of its own; this file holds
//! the driver and the tools they share.

use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant as StdInstant};

use taskctx::Context;

mod chain;
#[path = "../../tests/common/mod.rs"]
mod common;
mod hostile;
mod shutdown;
mod soak;
mod tree;

// ---------------------------------------------------------------------------------------------
// Small tools
// ---------------------------------------------------------------------------------------------

/// Collects failed checks; the process exits non-zero if there is any.
#[derive(Default)]
struct Checks {
    passed: AtomicUsize,
    failed: Mutex<Vec<String>>,
}

impl Checks {
    fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        if ok {
            self.passed.fetch_add(1, Ordering::Relaxed);
        } else {
            let what = what();
            println!("  FAILED: {what}");
            self.failed.lock().unwrap().push(what);
        }
    }
}

/// Ends the process if a part is still running after `limit`: a deadlock or a lost wake-up.
struct Watchdog {
    stop: mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn new(part: &'static str, limit: Duration) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(limit) {
                println!("  FAILED: watchdog: {part} still running after {limit:?} (deadlock?)");
                println!("stress: FAILED (watchdog)");
                std::process::exit(3);
            }
        });
        Watchdog {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `(VmRSS, VmHWM)` of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[global_allocator]
static ALLOCATOR: common::alloc::CountingAlloc = common::alloc::CountingAlloc;

/// `(bytes, blocks)` allocated and not yet freed, over the whole process since it started
/// (`tests/common/alloc.rs`). Unlike `VmRSS`, which also holds what the allocator keeps for
/// reuse and how fragmented that is, this is exactly what is live.
fn heap() -> (isize, isize) {
    let counts = common::alloc::Counts::now();
    (counts.live_bytes() as isize, counts.live_blocks() as isize)
}

/// Counts panics anywhere in the process (tasks included), on top of the default report;
/// the `hostile` part's own panics ([`INTENDED`]) are counted apart and not reported.
static PANICS: AtomicUsize = AtomicUsize::new(0);
static INTENDED_PANICS: AtomicUsize = AtomicUsize::new(0);
const INTENDED: &str = "stress: an intended panic";

fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() == Some(&INTENDED) {
            INTENDED_PANICS.fetch_add(1, Ordering::SeqCst);
            return;
        }
        PANICS.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
}

/// The cause each tree node is cancelled with: its own index.
#[derive(Debug)]
struct NodeCause(u32);

impl fmt::Display for NodeCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} cancelled", self.0)
    }
}

impl StdError for NodeCause {}

/// Which node's cancellation a context reports, if its cause is a `NodeCause`.
fn cause_node(ctx: &Context) -> Option<u32> {
    ctx.cause()?.downcast_ref::<NodeCause>().map(|c| c.0)
}

struct Sizes {
    soak_cycles: usize,
    tree_nodes: usize,
    chain: usize,
}

fn main() {
    // Before anything else: the soak's memory figures start here.
    let (rss_at_start, _) = memory_kib();
    let heap_at_start = heap();
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`) the sizes are quick.
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|arg| arg == "--quick") || !args.iter().any(|arg| arg == "--bench");
    let sizes = if quick {
        Sizes {
            soak_cycles: 1_000_000,
            tree_nodes: 100_000,
            chain: 100_000,
        }
    } else {
        Sizes {
            soak_cycles: 10_000_000,
            tree_nodes: 1_000_000,
            chain: 100_000,
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(2, usize::from)
        .max(2);
    println!(
        "stress ({} mode, {} threads, {} build)",
        if quick { "quick" } else { "full" },
        threads,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    count_panics();
    let checks = Checks::default();
    let started = StdInstant::now();

    let limit = if quick { 120 } else { 900 };
    {
        let _watchdog = Watchdog::new("soak", Duration::from_secs(limit));
        soak::soak(
            &checks,
            sizes.soak_cycles,
            threads,
            rss_at_start,
            heap_at_start,
        );
    }
    {
        let _watchdog = Watchdog::new("tree", Duration::from_secs(limit));
        tree::tree(&checks, sizes.tree_nodes, threads);
    }
    {
        let _watchdog = Watchdog::new("chain", Duration::from_secs(limit));
        chain::chain(&checks, sizes.chain);
    }
    {
        let _watchdog = Watchdog::new("shutdown", Duration::from_secs(120));
        shutdown::shutdown(&checks);
    }
    {
        let _watchdog = Watchdog::new("hostile", Duration::from_secs(120));
        hostile::hostile(&checks, if quick { 2_000 } else { 10_000 });
    }

    let panics = PANICS.load(Ordering::SeqCst);
    checks.check(panics == 0, || format!("{panics} panics"));
    let failed = checks.failed.lock().unwrap().len();
    let passed = checks.passed.load(Ordering::Relaxed);
    let (_, peak) = memory_kib();
    println!(
        "stress: {} ({passed} checks passed, {failed} failed, peak RSS {}, {:.1} s)",
        if failed == 0 { "OK" } else { "FAILED" },
        mib(peak),
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

fn multi_thread_runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A waker that counts its wakes.
struct CountingWaker(Arc<AtomicUsize>);

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}
