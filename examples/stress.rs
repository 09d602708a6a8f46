//! Stress and soak: the cancellation tree at scale, under races, over millions of cycles, and
//! through a runtime shutdown. Every figure is printed; any failed check makes the exit status
//! non-zero.
//!
//! ```sh
//! cargo run --release --example stress -- --quick   # what CI runs: under a minute
//! cargo run --release --example stress              # the full sizes
//! ```
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
//! deadlock). Randomness comes from a seeded xorshift generator, so every run does the same work
//! (thread interleavings aside).

use std::alloc::{GlobalAlloc, Layout, System};
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant as StdInstant};

use taskctx::testing::census;
use taskctx::{CancelCauseHandle, CancelHandle, Context, Error};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Small tools
// ---------------------------------------------------------------------------------------------

/// xorshift64*: small, deterministic, good enough to shuffle work.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

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

/// Counts the bytes and blocks allocated and not yet freed, from process start to the end of
/// the soak (then `COUNTING` is cleared and it only forwards, so that the other parts do not
/// all contend for two counters). Unlike `VmRSS`, which also holds what the allocator keeps
/// for reuse and how fragmented that is, this is exactly what is live.
struct CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(true);
static HEAP_BYTES: AtomicIsize = AtomicIsize::new(0);
static HEAP_BLOCKS: AtomicIsize = AtomicIsize::new(0);

fn count(bytes: isize, blocks: isize) {
    if COUNTING.load(Ordering::Relaxed) {
        HEAP_BYTES.fetch_add(bytes, Ordering::Relaxed);
        HEAP_BLOCKS.fetch_add(blocks, Ordering::Relaxed);
    }
}

// SAFETY: every call goes to `System` with the caller's arguments, and its result back to the
// caller; the counting only touches atomics and never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize, 1);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize, 1);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize), -1);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count(new_size as isize - layout.size() as isize, 0);
        }
        new
    }
}

/// `(bytes, blocks)` live on the heap, while `COUNTING` is set.
fn heap() -> (isize, isize) {
    (
        HEAP_BYTES.load(Ordering::Relaxed),
        HEAP_BLOCKS.load(Ordering::Relaxed),
    )
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
    let quick = std::env::args().any(|arg| arg == "--quick");
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
        soak(
            &checks,
            sizes.soak_cycles,
            threads,
            rss_at_start,
            heap_at_start,
        );
        COUNTING.store(false, Ordering::Relaxed);
    }
    {
        let _watchdog = Watchdog::new("tree", Duration::from_secs(limit));
        tree(&checks, sizes.tree_nodes, threads);
    }
    {
        let _watchdog = Watchdog::new("chain", Duration::from_secs(limit));
        chain(&checks, sizes.chain);
    }
    {
        let _watchdog = Watchdog::new("shutdown", Duration::from_secs(120));
        shutdown(&checks);
    }
    {
        let _watchdog = Watchdog::new("hostile", Duration::from_secs(120));
        hostile(&checks, if quick { 2_000 } else { 10_000 });
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

// ---------------------------------------------------------------------------------------------
// 1. Soak
// ---------------------------------------------------------------------------------------------

/// The part of `total` that worker `w` of `n` does.
fn share(total: usize, n: usize, w: usize) -> usize {
    total / n + usize::from(w < total % n)
}

/// The soak's cycles go in blocks of `BLOCK`; the last `BURST` of a block (one cycle in 16)
/// derive contexts whose deadline must fire, one after the other, and the block ends once all
/// of them have fired and been dropped. A burst waits once for Tokio's timer (1 ms resolution,
/// about 2.4 ms a burst) instead of once per deadline, and nothing is held from one block to
/// the next.
const BLOCK: usize = 1024;
const BURST: usize = 64;

/// The cause half the deadlines that must fire are given.
const FIRING_CAUSE: &str = "soak deadline fired";

/// The kind (in `FIRST_WRONG`) of a cycle whose deadline must fire.
const FIRING: usize = 8;

/// Growth allowed after the warm-up: of the live heap, in bytes per cycle; of `VmRSS`, in
/// percent or `RSS_FLOOR_KIB`, whichever is larger. The floor is for the allocator's
/// per-thread arenas, which keep the highest mark their live data ever reached: deadlines fire
/// in bursts, each cancelled by a task of its own, and the rare bursts that coincide raise
/// those marks by a few hundred KiB in all, in quick and full runs alike (a diff of
/// `/proc/self/smaps` across the soak shows it in the arenas' mappings alone), while a leak
/// grows with the cycles, and the live heap, counted exactly, shows none.
const HEAP_PER_CYCLE: f64 = 0.01;
const RSS_PERCENT: f64 = 5.0;
const RSS_FLOOR_KIB: u64 = 512;

/// What the soak counts, warm-up included.
#[derive(Default)]
struct Tally {
    wrong: AtomicUsize,
    /// Deadlines that must fire: already due when derived.
    due: AtomicUsize,
    /// Deadlines that must fire: 1–1,000 µs ahead when derived.
    ahead: AtomicUsize,
    /// Of `ahead`, those still live just after they were derived (so a timer fired them).
    live: AtomicUsize,
    /// Of `due` and `ahead`, those whose `done()` gave `DeadlineExceeded`, not early, with the
    /// deadline's cause and the value still visible.
    fired: AtomicUsize,
    /// Time spent waiting for bursts to fire, summed over the threads and tasks, in ns.
    waited: AtomicU64,
}

impl Tally {
    fn wrong(&self, kind: usize) {
        self.wrong.fetch_add(1, Ordering::Relaxed);
        let _ = FIRST_WRONG.compare_exchange(0, kind + 1, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// `[due, ahead, live, fired]` so far.
    fn firing(&self) -> [usize; 4] {
        [&self.due, &self.ahead, &self.live, &self.fired].map(|n| n.load(Ordering::Relaxed))
    }
}

/// `rss_at_start` (KiB) and `heap_at_start`: `VmRSS` and the live heap when the process started.
fn soak(
    checks: &Checks,
    cycles: usize,
    threads: usize,
    rss_at_start: u64,
    heap_at_start: (isize, isize),
) {
    const WORKERS: usize = 2;
    println!(
        "soak: {cycles} derive/cancel/drop cycles, half on {threads} threads outside the runtime, \
         half in tasks on its {WORKERS} workers"
    );
    let rt = multi_thread_runtime(WORKERS);
    let (rss_runtime, _) = memory_kib();
    let (parent, _cancel_parent) = Context::background().with_cancel();
    let (partner, _cancel_partner) = Context::background().with_cancel();
    let tally = Arc::new(Tally::default());

    // Half the cycles on plain threads that entered the runtime (deadlines in Tokio's timer),
    // half in tasks on the runtime's workers (deadlines in the workers' own wheels). A burst of
    // deadlines that must fire is waited for on a thread by blocking, in a task by awaiting.
    let run = |total: usize, seed: u64| {
        let outside = total / 2;
        std::thread::scope(|s| {
            for t in 0..threads {
                let (parent, partner, rt, tally) = (&parent, &partner, &rt, &*tally);
                s.spawn(move || {
                    let _runtime = rt.enter();
                    let mut rng = Rng::new(seed * 1000 + t as u64);
                    let mut burst = Vec::with_capacity(BURST);
                    let n = share(outside, threads, t);
                    for i in 0..n {
                        if i % BLOCK < BLOCK - BURST {
                            cycle(&mut rng, parent, partner, i, tally);
                        } else {
                            burst.push(firing(&mut rng, parent, i, tally));
                        }
                        if i % BLOCK == BLOCK - 1 || i + 1 == n {
                            futures::executor::block_on(settle(&mut burst, tally));
                        }
                    }
                });
            }
            rt.block_on(async {
                let tasks: Vec<_> = (0..WORKERS)
                    .map(|w| {
                        let (parent, partner, tally) =
                            (parent.clone(), partner.clone(), tally.clone());
                        let mut rng = Rng::new(seed * 1000 + 500 + w as u64);
                        tokio::spawn(async move {
                            let mut burst = Vec::with_capacity(BURST);
                            let n = share(total - outside, WORKERS, w);
                            for i in 0..n {
                                if i % BLOCK < BLOCK - BURST {
                                    cycle(&mut rng, &parent, &partner, i, &tally);
                                } else {
                                    burst.push(firing(&mut rng, &parent, i, &tally));
                                }
                                if i % BLOCK == BLOCK - 1 || i + 1 == n {
                                    settle(&mut burst, &tally).await;
                                } else if i % 256 == 0 {
                                    tokio::task::yield_now().await;
                                }
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("a soak task panicked");
                }
            });
        });
    };

    // Why the memory limits start after the warm-up: its cycles grow, once, what the process
    // then reuses (the allocator's arenas, one per thread that allocates; the stack pages the
    // runtime's worker threads touch; the per-worker deadline wheels and their slabs; the
    // bursts' vectors), so the figures from process start are printed but not bounded. What
    // must not grow is what each cycle leaves behind: that shows as growth after the warm-up.
    //
    // The live heap shows it exactly, and is allowed less than 0.01 byte per cycle (a leak of
    // one 100-byte block every 10,000 cycles fails). `VmRSS` also shows what the allocator
    // keeps. The deadlines that must fire in tasks (not those on threads, nor those already
    // due) make glibc's per-thread caches grow it by 1–2.3% over 1 M cycles and 2.6–5.3% over
    // 10 M (0.3% with `GLIBC_TUNABLES=glibc.malloc.tcache_count=0`) while the live heap does
    // not grow at all; presumably a woken task often resumes on the other worker and frees
    // there what the first allocated. A warm-up of a quarter of the run lets those caches reach
    // their size; the RSS limit then catches what the heap count cannot see (threads, stacks,
    // mappings).
    // A quarter of the run (at least 100,000 cycles): long enough for the allocator's per-thread
    // caches to reach the size that deadlines firing on either worker give them.
    let warm_up_cycles = (cycles / 4).max(100_000);
    run(warm_up_cycles, 1);
    let (before, _) = memory_kib();
    let heap_before = heap();
    let warm_up = tally.firing();
    let waited_before = tally.waited.load(Ordering::Relaxed);
    let started = StdInstant::now();
    run(cycles, 2);
    let elapsed = started.elapsed();
    let (after, peak) = memory_kib();
    let heap_after = heap();
    let wrong = tally.wrong.load(Ordering::Relaxed);
    println!(
        "  {} cycles in {:.2} s ({:.0} ns/cycle); {} callbacks ran; {wrong} wrong answers",
        cycles,
        elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / cycles as f64,
        SOAK_CALLBACKS.load(Ordering::Relaxed)
    );
    checks.check(wrong == 0, || {
        let kind = FIRST_WRONG.load(Ordering::Relaxed).saturating_sub(1);
        format!(
            "soak: {wrong} contexts answered wrongly (the first in a cycle of kind {kind}; \
             {FIRING}: a deadline that must fire)"
        )
    });

    // The run's own figures (the warm-up's are checked too, not printed).
    let now = tally.firing();
    let [due, ahead, live, fired] = std::array::from_fn(|k| now[k] - warm_up[k]);
    let waited = tally.waited.load(Ordering::Relaxed) - waited_before;
    println!(
        "  deadlines that must fire: {} ({due} already due, {ahead} 1-1000 us ahead, {live} of \
         these live when derived); {fired} fired with DeadlineExceeded; waiting for them took \
         {:.2} s, summed over {threads} threads and {WORKERS} tasks",
        due + ahead,
        waited as f64 / 1e9
    );
    checks.check(
        fired == due + ahead && warm_up[3] == warm_up[0] + warm_up[1],
        || {
            format!(
                "soak: {fired} of {} deadlines that must fire fired with DeadlineExceeded \
                 (warm-up: {} of {})",
                due + ahead,
                warm_up[3],
                warm_up[0] + warm_up[1]
            )
        },
    );

    let percent = |from: f64, to: f64| (to / from - 1.0) * 100.0;
    let rss_grown = after as i64 - before as i64;
    let rss_per_cycle = rss_grown as f64 * 1024.0 / cycles as f64;
    println!(
        "  RSS at process start {}, with the runtime built {}, after the warm-up \
         ({warm_up_cycles} cycles) {}, after the run {}; peak {}",
        mib(rss_at_start),
        mib(rss_runtime),
        mib(before),
        mib(after),
        mib(peak)
    );
    println!(
        "  RSS growth: {:+} KiB from process start ({:+.2}%, not bounded); {rss_grown:+} KiB \
         after the warm-up ({:+.2}%, {rss_per_cycle:+.4} B/cycle; limit +{RSS_PERCENT}% or +{RSS_FLOOR_KIB} KiB)",
        after as i64 - rss_at_start as i64,
        percent(rss_at_start as f64, after as f64),
        percent(before as f64, after as f64)
    );
    let heap_grown = heap_after.0 - heap_before.0;
    let heap_per_cycle = heap_grown as f64 / cycles as f64;
    println!(
        "  live heap at process start {} bytes in {} blocks, after the warm-up {} bytes in {} \
         blocks, after the run {} bytes in {} blocks; growth after the warm-up {heap_grown:+} \
         bytes ({heap_per_cycle:+.6} B/cycle; limit {HEAP_PER_CYCLE} B/cycle)",
        heap_at_start.0, heap_at_start.1, heap_before.0, heap_before.1, heap_after.0, heap_after.1
    );
    println!(
        "  (the warm-up is left out of the limits: allocator arenas, the runtime's worker \
         threads and the per-worker wheels reach their steady size once; what must not grow is \
         what each cycle leaves behind, which the live heap shows exactly and VmRSS along with \
         what the allocator keeps, hence its looser limit)"
    );
    let rss_allowed = (before as f64 * RSS_PERCENT / 100.0).max(RSS_FLOOR_KIB as f64);
    checks.check(after as f64 <= before as f64 + rss_allowed, || {
        format!(
            "soak: resident memory grew after the warm-up from {} to {} (over {RSS_PERCENT}% \
             and {RSS_FLOOR_KIB} KiB)",
            mib(before),
            mib(after)
        )
    });
    checks.check(heap_per_cycle < HEAP_PER_CYCLE, || {
        format!(
            "soak: the live heap grew after the warm-up by {heap_per_cycle:.6} bytes per cycle \
             ({heap_grown} bytes over {cycles} cycles; limit {HEAP_PER_CYCLE})"
        )
    });
    let left = census(&parent);
    println!("  census of the long-lived parent: {left}");
    checks.check(left.is_clean() && left.callbacks == 0, || {
        format!("soak: left in the long-lived parent: {left}")
    });
    let left = census(&partner);
    checks.check(left.is_clean() && left.callbacks == 0, || {
        format!("soak: left in the merge partner: {left}")
    });
    drop(rt);
}

static SOAK_CALLBACKS: AtomicUsize = AtomicUsize::new(0);

/// Whether `ctx` is done because its deadline passed: with that error, and not early.
fn expired(ctx: &Context) -> bool {
    ctx.err() == Some(Error::DeadlineExceeded)
        && ctx.deadline().is_some_and(|at| at <= Instant::now())
}

/// The first kind of cycle that got a wrong answer, plus one (0: none).
static FIRST_WRONG: AtomicUsize = AtomicUsize::new(0);

/// A cycle whose deadline must fire, held until it has.
struct Firing {
    /// A child of the context with the deadline, holding the value `i`.
    child: Context,
    i: usize,
    with_cause: bool,
    _handles: (CancelHandle, CancelHandle),
}

/// Derives below `parent` a context whose deadline must fire: already due (one in four), or
/// 1–1,000 µs ahead, so that the timer (Tokio's on a plain thread, the worker's wheel in a
/// task) fires it while the context is held.
fn firing(rng: &mut Rng, parent: &Context, i: usize, tally: &Tally) -> Firing {
    let ahead = rng.below(4) != 0;
    let with_cause = rng.below(2) == 0;
    let (ctx, cancel) = if ahead {
        let timeout = Duration::from_micros(1 + rng.below(1_000) as u64);
        if with_cause {
            parent.with_timeout_cause(timeout, FIRING_CAUSE)
        } else {
            parent.with_timeout(timeout)
        }
    } else {
        // Due now, or up to 1 ms ago.
        let now = Instant::now();
        let at = now
            .checked_sub(Duration::from_micros(rng.below(1_000) as u64))
            .unwrap_or(now);
        if with_cause {
            parent.with_deadline_cause(at, FIRING_CAUSE)
        } else {
            parent.with_deadline(at)
        }
    };
    let (child, cancel_child) = ctx.with_value(i).with_cancel();
    if ahead {
        tally.ahead.fetch_add(1, Ordering::Relaxed);
        if !child.is_done() {
            tally.live.fetch_add(1, Ordering::Relaxed);
        }
    } else {
        tally.due.fetch_add(1, Ordering::Relaxed);
    }
    Firing {
        child,
        i,
        with_cause,
        _handles: (cancel, cancel_child),
    }
}

/// Waits until every deadline in `burst` has fired, checks the answers, and drops the contexts.
async fn settle(burst: &mut Vec<Firing>, tally: &Tally) {
    let started = StdInstant::now();
    for firing in burst.iter() {
        let err = firing.child.done().await;
        let cause_ok = firing.child.cause().is_some_and(|cause| {
            if firing.with_cause {
                cause.to_string() == FIRING_CAUSE
            } else {
                cause.downcast_ref::<Error>() == Some(&Error::DeadlineExceeded)
            }
        });
        if err == Error::DeadlineExceeded
            && expired(&firing.child)
            && cause_ok
            && firing.child.value::<usize>() == Some(&firing.i)
        {
            tally.fired.fetch_add(1, Ordering::Relaxed);
        } else {
            tally.wrong(FIRING);
        }
    }
    let waited = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    tally.waited.fetch_add(waited, Ordering::Relaxed);
    burst.clear();
}

/// One derive/use/cancel-or-drop cycle below `parent`; counts wrong answers in `tally`.
fn cycle(rng: &mut Rng, parent: &Context, partner: &Context, i: usize, tally: &Tally) {
    let kind = rng.below(8);
    let expect = |ok: bool| {
        if !ok {
            tally.wrong(kind);
        }
    };
    let ms = |rng: &mut Rng| Duration::from_millis(1 + rng.below(5_000) as u64);
    match kind {
        0 => {
            let (ctx, cancel) = parent.with_timeout(ms(rng));
            let ctx = ctx.with_value(i as u64);
            let (child, _cancel_child) = ctx.with_cancel();
            // The deadline (1 ms at the least) may pass at any moment: then, and only then, the
            // context is done with `DeadlineExceeded` before it is cancelled.
            expect(child.value::<u64>() == Some(&(i as u64)));
            expect(!child.is_done() || expired(&child));
            if rng.below(2) == 0 {
                cancel.cancel();
                expect(child.err() == Some(Error::Canceled) || expired(&child));
            }
        }
        1 => {
            let at = Instant::now() + ms(rng);
            let (_ctx, _cancel) = parent.with_deadline_cause(at, "soak deadline");
        }
        2 => {
            let (ctx, cancel) = parent.with_cancel_cause();
            let ctx = ctx.with_value(format!("request {i}"));
            let (grandchild, _cancel) = ctx.with_timeout(ms(rng));
            cancel.cancel("soak cause");
            expect(
                grandchild
                    .cause()
                    .is_some_and(|c| c.to_string() == "soak cause")
                    || expired(&grandchild),
            );
        }
        3 => {
            let merged = parent.merge(partner);
            let (_ctx, _cancel) = merged.with_timeout(ms(rng));
        }
        4 => {
            // Released without a cancellation.
            let (ctx, cancel) = parent.with_timeout(ms(rng));
            cancel.disarm();
            drop(ctx.with_value([i; 4]));
        }
        5 => {
            let (ctx, _cancel) = parent.with_timeout(Duration::ZERO);
            let (child, _cancel) = ctx.with_cancel(); // born done
            expect(child.err() == Some(Error::DeadlineExceeded));
        }
        6 => {
            let (ctx, cancel) = parent.with_cancel();
            let mut done = ctx.done_owned();
            let mut poll = || {
                std::pin::Pin::new(&mut done)
                    .poll(&mut std::task::Context::from_waker(Waker::noop()))
            };
            expect(poll().is_pending());
            let registration = ctx.after_func(|| {
                SOAK_CALLBACKS.fetch_add(1, Ordering::Relaxed);
            });
            if rng.below(2) == 0 {
                expect(registration.stop());
            } else {
                cancel.cancel();
                expect(poll() == Poll::Ready(Error::Canceled) && !registration.stop());
            }
        }
        _ => {
            let detached = parent.with_value(i as u32).without_cancel();
            let (ctx, _cancel) = detached.with_timeout(ms(rng));
            expect(ctx.value::<u32>() == Some(&(i as u32)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. A big tree cancelled from every thread at once
// ---------------------------------------------------------------------------------------------

/// A context derived from tree nodes while the tree is being cancelled.
struct Derived {
    ctx: Context,
    parent: u32,
    /// For a merge: the other tree node.
    other: Option<u32>,
    _cancel: Option<CancelHandle>,
}

fn tree(checks: &Checks, nodes: usize, threads: usize) {
    let cancellers = threads;
    let derivers = 2;
    let waiters = nodes / 10;
    println!(
        "tree: {nodes} contexts cancelled from {cancellers} threads at once, {derivers} threads \
         deriving, {waiters} tasks awaiting done()"
    );
    let rt = multi_thread_runtime(threads);
    let _runtime = rt.enter();
    let mut rng = Rng::new(42);

    // A random recursive tree: each node hangs from a random earlier one.
    let started = StdInstant::now();
    let mut parent_of: Vec<u32> = Vec::with_capacity(nodes);
    let mut ctxs: Vec<Context> = Vec::with_capacity(nodes);
    let mut handles: Vec<CancelCauseHandle> = Vec::with_capacity(nodes);
    let (root, root_handle) = Context::background().with_cancel_cause();
    parent_of.push(0);
    ctxs.push(root);
    handles.push(root_handle);
    for i in 1..nodes {
        let p = rng.below(i);
        let (ctx, handle) = ctxs[p].with_cancel_cause();
        parent_of.push(p as u32);
        ctxs.push(ctx);
        handles.push(handle);
    }
    let mut depth = vec![0u32; nodes];
    for i in 1..nodes {
        depth[i] = depth[parent_of[i] as usize] + 1;
    }
    let (rss, _) = memory_kib();
    println!(
        "  built in {:.2} s: max depth {}, RSS {}",
        started.elapsed().as_secs_f64(),
        depth.iter().max().unwrap_or(&0),
        mib(rss)
    );
    let before = census(&ctxs[0]);
    checks.check(before.contexts == nodes - 1, || {
        format!("tree: census before the cancellation: {before}")
    });

    // Tasks awaiting done(): three in four by `done_owned`, one in four through `spawn`.
    let finished = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(waiters);
    let mut spawned = Vec::with_capacity(waiters / 4 + 1);
    for w in 0..waiters {
        let ctx = &ctxs[rng.below(nodes)];
        if w % 4 == 3 {
            spawned.push(ctx.spawn(|_ctx| std::future::pending::<()>()));
        } else {
            let (finished, wrong, done) = (finished.clone(), wrong.clone(), ctx.done_owned());
            tasks.push(tokio::spawn(async move {
                if done.await != Error::Canceled {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
                finished.fetch_add(1, Ordering::Relaxed);
            }));
        }
    }
    // Let the tasks register (bounded by the watchdog).
    while census(&ctxs[0]).waiters < waiters {
        std::thread::sleep(Duration::from_millis(1));
    }

    let mut order: Vec<u32> = (0..nodes as u32).collect();
    rng.shuffle(&mut order);
    let cancelling_done = AtomicBool::new(false);
    let cancelled_by_threads = AtomicUsize::new(0);
    let derived: Mutex<Vec<Derived>> = Mutex::new(Vec::new());
    let derived_tasks = Mutex::new(Vec::new());
    let start = Barrier::new(cancellers + derivers);
    let started = StdInstant::now();
    std::thread::scope(|s| {
        let mut running = Vec::new();
        for t in 0..cancellers {
            let (order, handles, start, count) = (&order, &handles, &start, &cancelled_by_threads);
            running.push(s.spawn(move || {
                start.wait();
                // Interleaved slices of one random order: all threads sweep the whole tree.
                for &node in order.iter().skip(t).step_by(cancellers) {
                    handles[node as usize].cancel(NodeCause(node));
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in 0..derivers {
            let (ctxs, start, stop, derived, derived_tasks, rt) = (
                &ctxs,
                &start,
                &cancelling_done,
                &derived,
                &derived_tasks,
                &rt,
            );
            s.spawn(move || {
                let _runtime = rt.enter();
                let mut rng = Rng::new(7 + t as u64);
                let mut mine = Vec::new();
                let mut my_tasks = Vec::new();
                start.wait();
                while !stop.load(Ordering::Acquire) {
                    let p = rng.below(ctxs.len());
                    let parent = &ctxs[p];
                    let (ctx, other, cancel) = match rng.below(4) {
                        0 => {
                            let (ctx, cancel) = parent.with_cancel();
                            (ctx, None, Some(cancel))
                        }
                        1 => {
                            let (ctx, cancel) = parent.with_timeout(Duration::from_secs(3600));
                            (ctx, None, Some(cancel))
                        }
                        2 => (parent.with_value(p), None, None),
                        _ => {
                            let o = rng.below(ctxs.len());
                            (parent.merge(&ctxs[o]), Some(o as u32), None)
                        }
                    };
                    if mine.len() % 8 == 0 {
                        my_tasks.push(tokio::spawn(ctx.done_owned()));
                    }
                    mine.push(Derived {
                        ctx,
                        parent: p as u32,
                        other,
                        _cancel: cancel,
                    });
                }
                derived.lock().unwrap().extend(mine);
                derived_tasks.lock().unwrap().extend(my_tasks);
            });
        }
        for thread in running {
            thread.join().expect("a cancelling thread panicked");
        }
        cancelling_done.store(true, Ordering::Release);
    });
    let elapsed = started.elapsed();
    let derived = derived.into_inner().unwrap();
    let derived_tasks = derived_tasks.into_inner().unwrap();
    println!(
        "  cancelled in {:.2} s ({} cancel calls); {} contexts derived meanwhile, {} more tasks \
         awaiting them",
        elapsed.as_secs_f64(),
        cancelled_by_threads.load(Ordering::Relaxed),
        derived.len(),
        derived_tasks.len()
    );

    // Every node done, with a consistent cause.
    let mut not_done = 0;
    let mut inconsistent = 0;
    let mut first_inconsistent = None;
    let mut own = 0;
    for (i, ctx) in ctxs.iter().enumerate() {
        let (err, cause) = (ctx.err(), cause_node(ctx));
        if err != Some(Error::Canceled) || cause.is_none() {
            not_done += 1;
            continue;
        }
        let cause = cause.unwrap();
        // Its own cancellation came first, or its parent's reached it first: then it reports
        // what its parent reports (the cause of the first-cancelled ancestor).
        let consistent = if i == 0 {
            cause == 0
        } else {
            cause == i as u32 || Some(cause) == cause_node(&ctxs[parent_of[i] as usize])
        };
        if cause == i as u32 {
            own += 1;
        }
        if !consistent {
            inconsistent += 1;
            first_inconsistent.get_or_insert((i, cause));
        }
    }
    println!(
        "  {} nodes done, {} with their own cause, {} reached first through an ancestor",
        nodes - not_done,
        own,
        nodes - not_done - own
    );
    checks.check(not_done == 0, || {
        format!("tree: {not_done} nodes not done with a cause after every node was cancelled")
    });
    checks.check(inconsistent == 0, || {
        format!("tree: {inconsistent} nodes with a cause that is neither their own nor their parent's, first {first_inconsistent:?}")
    });
    let mut bad_children = 0;
    for d in &derived {
        let parent = cause_node(&ctxs[d.parent as usize]);
        let other = d.other.and_then(|o| cause_node(&ctxs[o as usize]));
        let cause = cause_node(&d.ctx);
        let ok = d.ctx.err() == Some(Error::Canceled)
            && cause.is_some()
            && (cause == parent || (d.other.is_some() && cause == other));
        if !ok {
            bad_children += 1;
        }
    }
    checks.check(bad_children == 0, || {
        format!("tree: {bad_children} contexts derived during the cancellation are not done with a parent's cause")
    });

    // No task left waiting.
    let waited = StdInstant::now();
    let (ok_tasks, ok_spawned, ok_derived) = rt.block_on(async {
        let mut ok_tasks = 0;
        for task in tasks {
            ok_tasks += usize::from(task.await.is_ok());
        }
        let mut ok_spawned = 0;
        for handle in spawned {
            ok_spawned += usize::from(handle.await == Err(Error::Canceled));
        }
        let mut ok_derived = 0;
        for task in derived_tasks {
            ok_derived += usize::from(matches!(task.await, Ok(Error::Canceled)));
        }
        (ok_tasks, ok_spawned, ok_derived)
    });
    let finished = finished.load(Ordering::Relaxed);
    let wrong = wrong.load(Ordering::Relaxed);
    println!(
        "  awaiting tasks: {finished} done() tasks and {ok_spawned} spawned tasks finished, {ok_derived} \
         waiters on derived contexts woken, in {:.2} s",
        waited.elapsed().as_secs_f64()
    );
    checks.check(ok_tasks == finished && wrong == 0, || {
        format!("tree: done() tasks: {ok_tasks} joined, {finished} finished, {wrong} with the wrong error")
    });
    checks.check(finished + ok_spawned == waiters, || {
        format!(
            "tree: {} of {waiters} awaiting tasks finished",
            finished + ok_spawned
        )
    });
    let root_census = census(&ctxs[0]);
    println!("  census of the root: {root_census}");
    checks.check(root_census.is_clean(), || {
        format!("tree: left in the root: {root_census}")
    });
    drop(derived);
    drop((ctxs, handles));
    drop(_runtime);
    drop(rt);
}

// ---------------------------------------------------------------------------------------------
// 3. Long chains
// ---------------------------------------------------------------------------------------------

fn chain(checks: &Checks, length: usize) {
    println!("chain: {length} derived contexts, on a thread with a 2 MiB stack");
    let rt = multi_thread_runtime(1);
    let handle = rt.handle().clone();
    let results: Vec<(String, bool, Duration)> = std::thread::Builder::new()
        .name("chain".into())
        .stack_size(2 << 20)
        .spawn(move || {
            let _runtime = handle.enter();
            let mut results = Vec::new();
            for variant in [
                "cancelled from the root",
                "released without a cancellation",
                "handles dropped leaf first",
            ] {
                let started = StdInstant::now();
                let (root, cancel_root) = Context::background().with_cancel_cause();
                let mut handles = Vec::with_capacity(length);
                let mut leaf = root.clone();
                let mut last_value = None;
                for i in 0..length {
                    leaf = match i % 4 {
                        0 => {
                            let (ctx, cancel) = leaf.with_cancel();
                            handles.push(cancel);
                            ctx
                        }
                        1 => {
                            last_value = Some(i);
                            leaf.with_value(i)
                        }
                        2 => {
                            let (ctx, cancel) = leaf.with_timeout(Duration::from_secs(3600));
                            handles.push(cancel);
                            ctx
                        }
                        _ => leaf.merge(&root),
                    };
                }
                let scopes = (0..length).filter(|i| i % 4 != 1).count(); // all but values
                let registered = census(&root).contexts;
                let ok = registered == scopes
                    && !leaf.is_done()
                    && leaf.value::<usize>() == last_value.as_ref();
                let ok = ok
                    && match variant {
                        "cancelled from the root" => {
                            cancel_root.cancel("root cancelled");
                            let ok = leaf.err() == Some(Error::Canceled)
                                && leaf
                                    .cause()
                                    .is_some_and(|c| c.to_string() == "root cancelled");
                            drop(handles);
                            drop(leaf);
                            ok
                        }
                        "released without a cancellation" => {
                            handles.into_iter().for_each(CancelHandle::disarm);
                            cancel_root.disarm();
                            drop(leaf);
                            true
                        }
                        _ => {
                            while let Some(handle) = handles.pop() {
                                drop(handle);
                            }
                            let ok = leaf.err() == Some(Error::Canceled);
                            drop(leaf);
                            cancel_root.disarm();
                            ok
                        }
                    };
                let ok = ok && census(&root).is_clean();
                drop(root);
                results.push((variant.to_string(), ok, started.elapsed()));
            }
            results
        })
        .expect("a thread")
        .join()
        .unwrap_or_else(|_| vec![("a chain".to_string(), false, Duration::ZERO)]);
    for (variant, ok, elapsed) in results {
        println!(
            "  {variant}: {} in {:.2} s",
            if ok { "ok" } else { "FAILED" },
            elapsed.as_secs_f64()
        );
        checks.check(ok, || format!("chain: {variant}"));
    }
    drop(rt);
}

// ---------------------------------------------------------------------------------------------
// 4. Runtime shutdown with everything alive
// ---------------------------------------------------------------------------------------------

fn shutdown(checks: &Checks) {
    const CONTEXTS: usize = 1_000;
    println!("shutdown: runtimes dropped with {CONTEXTS} contexts, their timers and tasks alive");
    for flavor in ["current-thread", "multi-thread"] {
        let rt = match flavor {
            "current-thread" => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            _ => multi_thread_runtime(2),
        };
        let (root, cancel_root) = Context::background().with_cancel();
        let fired = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        // Half the contexts are made in `block_on`, half in a task (on a worker of the
        // multi-thread runtime, where deadlines go into the worker's own wheel).
        let make = |range: std::ops::Range<usize>| {
            let (root, fired, started) = (root.clone(), fired.clone(), started.clone());
            async move {
                let mut long = Vec::new();
                let mut short = Vec::new();
                let mut handles = Vec::new();
                let mut registrations = Vec::new();
                let mut ctx_tasks = Vec::new();
                for i in range {
                    let (ctx, cancel) = if i % 2 == 0 {
                        root.with_timeout(Duration::from_secs(3600))
                    } else {
                        root.with_timeout(Duration::from_millis(20 + (i % 30) as u64))
                    };
                    let (counter, done) = (started.clone(), ctx.done_owned());
                    tokio::spawn(async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        done.await
                    });
                    let body_ran = Arc::new(AtomicBool::new(false));
                    let ran = body_ran.clone();
                    let task = ctx.spawn(|ctx| async move {
                        ran.store(true, Ordering::SeqCst);
                        ctx.done().await
                    });
                    ctx_tasks.push((body_ran, task));
                    let fired = fired.clone();
                    registrations.push(ctx.after_func(move || {
                        fired.fetch_add(1, Ordering::SeqCst);
                    }));
                    handles.push(cancel);
                    if i % 2 == 0 {
                        long.push(ctx)
                    } else {
                        short.push(ctx)
                    }
                }
                (long, short, handles, registrations, ctx_tasks)
            }
        };
        let setting_up = StdInstant::now();
        let (long, short, handles, registrations) = rt.block_on(async {
            let mut made = make(0..CONTEXTS / 2).await;
            let other = tokio::spawn(make(CONTEXTS / 2..CONTEXTS))
                .await
                .expect("a task");
            made.0.extend(other.0);
            made.1.extend(other.1);
            made.2.extend(other.2);
            made.3.extend(other.3);
            made.4.extend(other.4);
            // Every task started (bounded by the watchdog). A `ctx.spawn` task whose short
            // deadline fired before its first poll finishes without running its body
            // (`run_until_cancelled` looks at the context first): it counts as started once it
            // has finished. (Waiting for every body alone hung whenever setting up took longer
            // than the shortest deadline, 21 ms.)
            let ctx_tasks = std::mem::take(&mut made.4);
            while started.load(Ordering::SeqCst) < CONTEXTS
                || ctx_tasks
                    .iter()
                    .any(|(ran, task)| !ran.load(Ordering::SeqCst) && !task.is_finished())
            {
                tokio::task::yield_now().await;
            }
            drop(ctx_tasks); // detached, as before the shutdown
            (made.0, made.1, made.2, made.3)
        });
        let set_up = setting_up.elapsed();
        let during = census(&root);
        let started = StdInstant::now();
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(rt)));
        let shutdown_took = started.elapsed();
        let after = census(&root);
        let early = long.iter().filter(|ctx| ctx.is_done()).count();
        // The short deadlines still fire, on the crate's timer thread if not before.
        let waited = StdInstant::now();
        while short.iter().any(|ctx| !ctx.is_done()) && waited.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let short_ok = short
            .iter()
            .all(|ctx| ctx.err() == Some(Error::DeadlineExceeded));
        let left_before_cancel = census(&root);
        cancel_root.cancel();
        let long_ok = long.iter().all(|ctx| ctx.err() == Some(Error::Canceled));
        let ran = fired.load(Ordering::SeqCst);
        drop((handles, registrations, long, short));
        let end = census(&root);
        println!(
            "  {flavor}: set up in {:.3} s; before the shutdown {during}; shut down in {:.3} s; \
             after it {after}; \
             {early} long deadlines fired early; short deadlines all fired: {short_ok}; {ran} \
             callbacks ran; at the end {end}",
            set_up.as_secs_f64(),
            shutdown_took.as_secs_f64()
        );
        checks.check(dropped.is_ok(), || {
            format!("shutdown ({flavor}): dropping the runtime panicked")
        });
        checks.check(after.tasks == 0 && after.waiters == 0, || {
            format!("shutdown ({flavor}): tasks or waiters left after the shutdown: {after}")
        });
        checks.check(early == 0, || {
            format!("shutdown ({flavor}): {early} deadlines fired early")
        });
        checks.check(short_ok, || {
            format!("shutdown ({flavor}): short deadlines did not all fire")
        });
        checks.check(left_before_cancel.contexts == CONTEXTS / 2, || {
            format!("shutdown ({flavor}): before the root's cancellation: {left_before_cancel}")
        });
        checks.check(long_ok && ran == CONTEXTS, || {
            format!("shutdown ({flavor}): after the root's cancellation {ran} callbacks ran")
        });
        checks.check(end.is_clean() && end.callbacks == 0, || {
            format!("shutdown ({flavor}): left at the end: {end}")
        });
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Hostile callbacks and wakers
// ---------------------------------------------------------------------------------------------

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
fn hostile(checks: &Checks, contexts: usize) {
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

/// A waker that counts its wakes.
struct CountingWaker(Arc<AtomicUsize>);

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}
