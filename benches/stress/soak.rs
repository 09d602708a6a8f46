//! Part 1, the soak: derive/cancel/drop cycles below one long-lived parent, every answer
//! checked, the live heap and resident memory compared before and after.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant as StdInstant};

use taskctx::testing::census;
use taskctx::{CancelHandle, Context, Error};
use tokio::time::Instant;

use crate::common::rng::Rng;
use crate::{Checks, heap, memory_kib, mib, multi_thread_runtime};

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
///
/// The live heap also has a floor, `HEAP_FLOOR_BYTES`: the scopes each thread keeps for reuse
/// (up to 1,024, each with the lock it made in an earlier life, if it made one) change with the
/// mix of what was released last, so the heap at any two moments differs by some tens of KiB
/// either way (seen: -21 KiB to +20 KiB between quick runs), bounded by those caps whatever the
/// number of cycles, while a leak grows with the cycles.
const HEAP_PER_CYCLE: f64 = 0.01;
const HEAP_FLOOR_BYTES: isize = 64 * 1024;
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
pub fn soak(
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
         bytes ({heap_per_cycle:+.6} B/cycle; limit {HEAP_PER_CYCLE} B/cycle or {HEAP_FLOOR_BYTES} \
         bytes)",
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
    let heap_allowed = ((HEAP_PER_CYCLE * cycles as f64) as isize).max(HEAP_FLOOR_BYTES);
    checks.check(heap_grown < heap_allowed, || {
        format!(
            "soak: the live heap grew after the warm-up by {heap_per_cycle:.6} bytes per cycle \
             ({heap_grown} bytes over {cycles} cycles; limit {HEAP_PER_CYCLE} per cycle or \
             {HEAP_FLOOR_BYTES} bytes)"
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
