//! The harness of `go_suite`: Go's `testing.B`, `RunParallel` and `-benchmem`, in the three
//! places Tokio code runs (see [`Flavour`]), and its allocation counts.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU8, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use regex_lite::Regex;
use tokio::runtime::Runtime;

/// Where a benchmark's work runs, and the Go setting it is compared with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Flavour {
    /// Tasks on the workers of a multi-thread runtime with one worker per core: Go at its
    /// default `GOMAXPROCS` (one P per core).
    Workers,
    /// One task on a current-thread runtime (`#[tokio::test]`, `flavor = "current_thread"`):
    /// Go at `-cpu 1`.
    CurrentThread,
    /// Blocking code: plain threads, one per core, that entered a multi-thread runtime (as
    /// `Handle::enter` or `block_on` from outside does; they are no task of it), whose workers
    /// sit idle: Go at its default `GOMAXPROCS`.
    Blocking,
}

impl Flavour {
    /// From `TASKCTX_FLAVOUR`: `workers` (the default), `current-thread` or `blocking`.
    fn from_env() -> Flavour {
        match std::env::var("TASKCTX_FLAVOUR").as_deref() {
            Err(_) | Ok("workers") => Flavour::Workers,
            Ok("current-thread") => Flavour::CurrentThread,
            Ok("blocking") => Flavour::Blocking,
            Ok(other) => {
                panic!("TASKCTX_FLAVOUR={other:?}: expected workers, current-thread or blocking")
            }
        }
    }
}

/// How long each benchmark runs: Go's `-benchtime`, `1s` or `100x`.
#[derive(Clone, Copy)]
pub(super) enum BenchTime {
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

pub(super) struct Harness {
    /// Go's `-bench` regex, split at `/`: one unanchored regex per level of the name.
    filter: Vec<Regex>,
    time: BenchTime,
    /// Threads per parallel benchmark: Go's `GOMAXPROCS`.
    pub(super) procs: usize,
    /// Run once, at reduced scale: not benchmarking, only checking that everything runs.
    smoke: bool,
    pub(super) flavour: Flavour,
    /// The flavour's runtime, built on first use.
    runtime: OnceLock<Runtime>,
}

impl Harness {
    pub(super) fn from_env() -> Harness {
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
        let flavour = Flavour::from_env();
        let procs = match flavour {
            Flavour::CurrentThread => 1,
            Flavour::Workers | Flavour::Blocking => {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            }
        };
        Harness {
            filter,
            time,
            procs,
            smoke,
            flavour,
            runtime: OnceLock::new(),
        }
    }

    /// The flavour's runtime, with a timer: a multi-thread one with one worker per core, as Go
    /// has one P per core, or a current-thread one.
    pub(super) fn runtime(&self) -> &Runtime {
        self.runtime.get_or_init(|| {
            let mut builder = match self.flavour {
                Flavour::CurrentThread => tokio::runtime::Builder::new_current_thread(),
                Flavour::Workers | Flavour::Blocking => {
                    let mut builder = tokio::runtime::Builder::new_multi_thread();
                    builder.worker_threads(self.procs);
                    builder
                }
            };
            builder
                .enable_all()
                .build()
                .expect("cannot build a Tokio runtime")
        })
    }

    /// Runs `f` where the flavour's code derives its contexts: in a task on a worker, in the
    /// task of a current-thread runtime, or on a plain thread that entered the runtime.
    pub(super) fn on_worker<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let runtime = self.runtime();
        match self.flavour {
            Flavour::Workers => runtime.block_on(runtime.spawn(async { f() })).unwrap(),
            Flavour::CurrentThread => runtime.block_on(async { f() }),
            Flavour::Blocking => {
                let handle = runtime.handle().clone();
                std::thread::spawn(move || {
                    let _entered = handle.enter();
                    f()
                })
                .join()
                .unwrap()
            }
        }
    }

    /// Runs `f` on this thread, inside the flavour's runtime (none for `Workers`, whose
    /// single-threaded rows run on the main thread, as Go's run on the benchmark's goroutine):
    /// inside `block_on` of the current-thread runtime, or with the runtime entered.
    pub(super) fn here<T>(&self, f: impl FnOnce() -> T) -> T {
        match self.flavour {
            Flavour::Workers => f(),
            Flavour::CurrentThread => self.runtime().block_on(async { f() }),
            Flavour::Blocking => {
                let _entered = self.runtime().enter();
                f()
            }
        }
    }

    /// [`Harness::bench`] for a row that runs on one thread, in [`Harness::here`].
    pub(super) fn bench_here(&self, name: &str, mut round: impl FnMut(u64) -> Sample) {
        self.bench(name, 1, |n| self.here(|| round(n)));
    }

    /// `count`, or a thousandth of it in a smoke test.
    pub(super) fn scaled(&self, count: u64) -> u64 {
        if self.smoke {
            (count / 1000).max(1)
        } else {
            count
        }
    }

    /// Whether the filter selects `name`, as Go's `-bench` does: `CancelTree/depth=1/` selects
    /// every `Root` of depths 1, 10, 100 and 1000.
    pub(super) fn wants(&self, name: &str) -> bool {
        name.split('/')
            .zip(&self.filter)
            .all(|(level, re)| re.is_match(level))
    }

    /// Runs a benchmark as Go's `testing.B` does: rounds of `n` operations, growing `n` until a
    /// round lasts the bench time. `threads` only names it (Go's `-P` suffix).
    pub(super) fn bench(&self, name: &str, threads: usize, mut round: impl FnMut(u64) -> Sample) {
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
    pub(super) fn bench_once(&self, name: &str, n: u64, round: impl Fn() -> Sample) {
        self.bench_alternating(n, &[(name, &round)]);
    }

    /// [`Harness::bench_once`] for rows that compare with each other (the context's and the
    /// token's): their rounds are taken in turn, so that neither row runs wholly on a heap the
    /// other has just grown or emptied. The fan-out, run one row after the other, came out at
    /// 1.29-1.43x the token; in turn, 1.16-1.24x (three runs each). The memory rows do not
    /// move (52.0-52.9 against 22.5-22.6 ns/op either way): the token's smaller rounds reuse
    /// the pages the context's larger ones fault in, as they did in sequence; run alone, each
    /// faulting its own, they take 66.3 and 52.5 ns/op.
    pub(super) fn bench_alternating(&self, n: u64, rows: &[(&str, &dyn Fn() -> Sample)]) {
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
pub(super) const SCALE_ROUNDS: usize = 5;

/// Go's `predictN`: the next round's `n`, aiming 20% past the goal, growing at most 100× and
/// at least by one.
pub(super) fn predict_n(goal: Duration, last: u64, elapsed: Duration) -> u64 {
    let elapsed = elapsed.as_nanos().max(1);
    let mut n = (goal.as_nanos() * u128::from(last) / elapsed) as u64;
    n += n / 5;
    n.min(100 * last).max(last + 1).min(1_000_000_000)
}

/// Prints one line as Go's `testing` package does, extra metrics sorted by unit before the
/// memory columns.
pub(super) fn print_result(name: &str, threads: usize, n: u64, sample: &Sample) {
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
pub(super) fn pretty(x: f64, unit: &str) -> String {
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

pub(super) fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|line| line.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// Go's `RunParallel`: `n` operations split evenly over `h.procs` threads of the flavour: tasks
/// on the workers, the one task of a current-thread runtime, or plain threads that entered the
/// runtime. Each
/// first builds its state with `setup(index)`, untimed; `body(state, ops)` then runs its share
/// of the operations. Timed from the moment every one is set up until the last is done;
/// dropping the states is not timed.
pub(super) fn parallel<S, Setup, Body>(h: &Harness, n: u64, setup: Setup, body: Body) -> Sample
where
    S: 'static,
    Setup: Fn(usize) -> S + Send + Sync + 'static,
    Body: Fn(&mut S, u64) + Send + Sync + 'static,
{
    let runtime = h.runtime();
    if h.flavour == Flavour::CurrentThread {
        return runtime.block_on(async {
            let mut state = setup(0);
            let sample = measure(|| body(&mut state, n));
            drop(state);
            sample
        });
    }
    let tasks = h.procs;
    let meeting = Arc::new(Meeting::new(tasks));
    let (setup, body) = (Arc::new(setup), Arc::new(body));
    let attendants: Vec<_> = (0..tasks)
        .map(|index| {
            let ops = n / tasks as u64 + u64::from((index as u64) < n % tasks as u64);
            let (meeting, setup, body) = (meeting.clone(), setup.clone(), body.clone());
            move || meeting.attend(|| setup(index), |state| body(state, ops))
        })
        .collect();
    if h.flavour == Flavour::Blocking {
        let threads: Vec<_> = attendants
            .into_iter()
            .map(|attend| {
                let handle = runtime.handle().clone();
                std::thread::spawn(move || {
                    let _entered = handle.enter();
                    attend()
                })
            })
            .collect();
        let sample = meeting.time();
        threads
            .into_iter()
            .for_each(|thread| thread.join().unwrap());
        return sample;
    }
    let handles: Vec<_> = attendants
        .into_iter()
        .map(|attend| runtime.spawn(async move { attend() }))
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
pub(super) struct Meeting {
    tasks: usize,
    /// How many tasks have begun their setup.
    started: AtomicUsize,
    /// How many tasks are set up, and how many are done.
    reports: Mutex<(usize, usize)>,
    reported: Condvar,
    clock: AtomicU8,
}

/// How long a set-up task waits for another task to begin before it hands its worker off.
pub(super) const HAND_OFF_AFTER: Duration = Duration::from_millis(200);

pub(super) const NOT_STARTED: u8 = 0;
pub(super) const RUNNING: u8 = 1;
pub(super) const STOPPED: u8 = 2;

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
            let in_task = tokio::task::try_id().is_some();
            if in_task
                && self.started.load(Relaxed) < self.tasks
                && since.elapsed() > HAND_OFF_AFTER
            {
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
pub(super) fn measure(f: impl FnOnce()) -> Sample {
    let start = Snapshot::take();
    f();
    start.sample()
}

/// What a timed section took: wall time, and the heap traffic of every thread meanwhile.
/// `extra` holds custom metrics as totals over the section; they are printed per operation.
#[derive(Clone, Debug, Default)]
pub(super) struct Sample {
    pub(super) elapsed: Duration,
    pub(super) allocs: u64,
    pub(super) bytes: u64,
    pub(super) freed: u64,
    pub(super) extra: Vec<(&'static str, f64)>,
}

impl Sample {
    /// Adds the heap still held at the end of the section, as `live-B/op`.
    pub(super) fn with_live_bytes(mut self) -> Sample {
        let live = self.bytes as f64 - self.freed as f64;
        self.extra.push(("live-B/op", live));
        self
    }

    /// Adds the time per task of a section that ended `tasks` tasks, as `ns/task`.
    pub(super) fn per_task(mut self, tasks: usize) -> Sample {
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
pub(super) struct Snapshot {
    at: Instant,
    counts: Counts,
}

impl Snapshot {
    pub(super) fn take() -> Snapshot {
        let counts = Counts::now();
        Snapshot {
            at: Instant::now(),
            counts,
        }
    }

    pub(super) fn sample(&self) -> Sample {
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

// The counting allocator: the tests' own (`tests/common/alloc.rs`), counting per process in
// per-thread stripes (Go also counts per P).

use super::common::alloc::{CountingAlloc, Counts};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;
