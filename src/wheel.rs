//! Deadline wheels: one per thread and runtime, for deadlines armed inside a Tokio runtime.
//!
//! Tokio's timer driver keeps every timer behind one lock. When every thread arms and disarms
//! a timer per request, they queue on that lock, and two threads do less than one; and even
//! alone, a Tokio timer per deadline costs a lock, a registration and a separate allocation.
//! Go keeps a timer heap per P; this is the same idea. Each thread that arms deadlines inside a
//! runtime (a worker, the thread in `block_on` of a current-thread runtime, a `spawn_blocking`
//! thread, a plain thread that entered the runtime) gets a wheel of its own for that runtime,
//! behind a lock that only a cancellation from another thread (or the timer itself) contends
//! for, and driven by a single Tokio `Sleep` of that runtime, armed at the earliest deadline.
//!
//! A wheel keeps its runtime's time: it serves one runtime, reads that runtime's clock, and its
//! `Sleep` is armed at the exact instant of its earliest deadline, so Tokio fires it when it
//! would have fired a `Sleep` of that deadline's own. A paused clock's `advance` therefore
//! fires the same deadlines at the same instants as with a timer per deadline (pinned by
//! `tests/flavours.rs::a_deadline_on_a_current_thread_runtime_fires_when_a_sleep_of_its_instant_would`
//! and `tests/deadlines.rs`).
//!
//! # Layout
//!
//! `SLOTS` buckets of one millisecond each (Tokio's own resolution). An entry due `at`
//! nanoseconds after `origin` goes in tick `at / 1 ms` (or `processed`, if that is later), in
//! bucket `tick % SLOTS`: a doubly linked list threaded through a slab, so inserting and
//! removing are O(1) whatever the number of live deadlines. The `Sleep` is armed at the earliest
//! deadline known when it is armed, and at most one rotation ahead; entries due in a later
//! rotation stay in their bucket until then.
//!
//! # Invariants
//!
//! - Every field of `State` is guarded by `Wheel::state`. No callback, waker or scope code runs
//!   under that lock: due entries are taken out and fired after it is released, and a new
//!   `Sleep` is polled with no lock held.
//! - Every tick below `processed` has been fired whole; an insert never goes below it. An entry
//!   of a bucket the wheel scans is due exactly when its `at` has passed: one in a later
//!   rotation is at least a rotation ahead.
//! - A slot of the slab belongs to one `WheelEntry` for as long as that handle lives, and only
//!   its drop frees it. Firing an entry (or retiring the wheel) takes it out of its bucket and
//!   hands its scope on, but leaves the slot taken, marked fired: so an index names one entry
//!   for its whole life, and a handle dropped after its entry fired cannot remove another's.
//!   A fired slot lives until its scope, cancelled by the deadline, drops the handle.
//! - Tokio fires a timer early only when its runtime shuts down. A wake before the armed
//!   instant therefore retires the wheel: every entry is handed to its scope, which moves its
//!   deadline to the crate's fallback timer thread, and the thread gets a new wheel next time.

use std::sync::{Arc, PoisonError, Weak};
use std::task::{Wake, Waker};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::slab::Slab;
use crate::sync::{AtomicBool, Mutex, MutexGuard, Ordering};
use crate::tree::Expiry;

#[cfg(loom)]
pub(crate) use loom_timer::{Timer, start_timer};

/// What a wheel arms: a Tokio `Sleep`, polled once by hand with the wheel's waker (under loom, a
/// stand-in that a model fires by hand, `loom_timer`).
#[cfg(not(loom))]
type Timer = std::pin::Pin<Box<tokio::task::Unconstrained<tokio::time::Sleep>>>;

/// Starts a timer that wakes `waker` at `at`; `None` if it is due already.
///
/// # Panics
///
/// In a runtime built without the time driver, as `tokio::time::sleep` does.
#[cfg(not(loom))]
fn start_timer(at: Instant, waker: &Waker) -> Option<Timer> {
    use std::future::Future;
    // `unconstrained`: a task that has used up its cooperative budget would otherwise get a
    // `Pending` without the timer being registered.
    let mut sleep = Box::pin(tokio::task::unconstrained(tokio::time::sleep_until(at)));
    match sleep
        .as_mut()
        .poll(&mut std::task::Context::from_waker(waker))
    {
        std::task::Poll::Ready(()) => None,
        std::task::Poll::Pending => Some(sleep),
    }
}

const SLOTS: u64 = 1024;
/// A slot of the slab, in 32 bits, which keeps an entry in 24 bytes. The values from [`HEAD`]
/// up name a bucket instead (an entry's `prev`, when it heads its bucket's list).
type Index = u32;
const NIL: Index = Index::MAX;
/// `HEAD + bucket` is the `prev` of the entry at the head of `bucket`'s list.
const HEAD: Index = NIL - SLOTS as Index;
/// One tick, in nanoseconds.
const TICK: u64 = 1_000_000;
/// How far ahead a `Sleep` is armed at most: Tokio's own limit is about two years.
const FAR: u64 = 365 * 24 * 3600 * 1_000_000_000;

pub(crate) struct Wheel {
    state: Mutex<State>,
    /// Set once the runtime that drives this wheel has shut down.
    retired: AtomicBool,
}

struct State {
    origin: Instant,
    entries: Slab<Entry>,
    heads: Vec<Index>,
    processed: u64,
    /// How many entries have not fired: those in the buckets' lists.
    pending: usize,
    /// When the timer is armed for (nanoseconds after `origin`), and the timer.
    armed: Option<(u64, Timer)>,
}

/// 24 bytes: a live deadline's share of its wheel (pinned by `a_wheel_entry_is_24_bytes`).
struct Entry {
    /// When it is due, in nanoseconds after `origin`.
    at: u64,
    /// Taken (left empty) when the entry fires: an entry is in its bucket's list exactly while
    /// this is not empty.
    scope: Expiry,
    /// The entry before it in its bucket's list, or `HEAD + bucket` if it heads the list.
    prev: Index,
    next: Index,
}

/// A scope's place in a wheel; dropping it takes the entry out and frees its slot.
///
/// 16 bytes, with room for the tags of the enums that hold it: a scope's lock keeps a source
/// inline in 16 bytes (`Outside` in `tree/inner.rs`, pinned by
/// `a_scope_allocation_stays_at_120_bytes`).
pub(crate) struct WheelEntry {
    wheel: Arc<Wheel>,
    index: Index,
    _tags: Tags,
}

/// A byte with one valid value: the other 255 are free for the tags of enums that hold a
/// [`WheelEntry`], which then need no room of their own.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Tags {
    Room = 0,
}

impl Drop for WheelEntry {
    fn drop(&mut self) {
        let removed = self.wheel.lock().remove(self.index);
        drop(removed);
    }
}

/// What a thread knows about deadline wheels.
struct Local {
    /// This thread's wheel, and the runtime it serves.
    wheel: Option<(tokio::runtime::Id, Arc<Wheel>)>,
    /// The task that last looked the wheel up: a task stays on its runtime, so while it runs,
    /// the runtime need not be asked again (asking touches a count shared by all its threads).
    task: Option<tokio::task::Id>,
}

std::thread_local! {
    static LOCAL: std::cell::RefCell<Local> =
        const { std::cell::RefCell::new(Local { wheel: None, task: None }) };
}

/// Puts `scope`'s deadline `at` (in the future) in this thread's wheel for the current runtime;
/// `None` outside any runtime.
///
/// # Panics
///
/// In a runtime built without the time driver, as `tokio::time::sleep` does; the wheel is left
/// as it was.
pub(crate) fn insert(scope: &Expiry, at: Instant) -> Option<WheelEntry> {
    Some(local_wheel()?.insert(scope, at))
}

fn local_wheel() -> Option<Arc<Wheel>> {
    let task = tokio::task::try_id();
    // `try_with`: a deadline armed while this thread's locals are being destroyed goes to the
    // fallback thread.
    LOCAL
        .try_with(|local| {
            let mut local = local.borrow_mut();
            if let (Some(task), Some((_, wheel))) = (task, &local.wheel) {
                if local.task == Some(task) && !wheel.retired.load(Ordering::Acquire) {
                    return Some(wheel.clone());
                }
            }
            let runtime = Handle::try_current().ok()?.id();
            local.task = task;
            match &local.wheel {
                Some((id, wheel)) if *id == runtime && !wheel.retired.load(Ordering::Acquire) => {
                    Some(wheel.clone())
                }
                _ => {
                    let wheel = Wheel::new();
                    local.wheel = Some((runtime, wheel.clone()));
                    Some(wheel)
                }
            }
        })
        .ok()
        .flatten()
}

impl Wheel {
    pub(crate) fn new() -> Arc<Wheel> {
        Arc::new(Wheel {
            state: Mutex::new(State::empty(Instant::now())),
            retired: AtomicBool::new(false),
        })
    }

    /// Puts `scope`'s deadline `at` in this wheel, arming its timer if `at` is the earliest.
    pub(crate) fn insert(self: &Arc<Self>, scope: &Expiry, at: Instant) -> WheelEntry {
        let (index, arm) = {
            let mut state = self.lock();
            let at = state.offset_of(at);
            let index = state.link(at, scope.clone());
            let arm = match &state.armed {
                Some((armed, _)) if *armed <= at => None,
                _ => Some(at),
            };
            (index, arm)
        };
        // Made before arming: if arming panics (no time driver), its drop takes the entry out.
        let entry = WheelEntry {
            wheel: self.clone(),
            index,
            _tags: Tags::Room,
        };
        if let Some(at) = arm {
            self.arm(at);
        }
        entry
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Arms the timer for `at` (nanoseconds after `origin`), unless it is already armed no
    /// later.
    ///
    /// The timer is started with no lock held, so it may fire before it is stored: its `fire`
    /// then runs without seeing it, and the timer stored afterwards would never wake again,
    /// blocking every later arm on this wheel. Its waker's `fired` flag says so; the flag is
    /// set before that `fire` takes the lock, so reading it after the store (which takes the
    /// same lock) cannot miss it, and the wheel is then fired again from here (loom model
    /// `loom_a_wheel_timer_firing_before_it_is_stored_does_not_stall_the_wheel`).
    fn arm(self: &Arc<Self>, at: u64) {
        let (at, instant) = {
            let state = self.lock();
            let at = at.min(state.offset_of(Instant::now()).saturating_add(FAR));
            (at, state.instant_of(at))
        };
        let wheel_waker = Arc::new(WheelWaker {
            wheel: Arc::downgrade(self),
            at: instant,
            fired: AtomicBool::new(false),
        });
        let waker = Waker::from(wheel_waker.clone());
        let Some(sleep) = start_timer(instant, &waker) else {
            return self.fire(instant);
        };
        #[cfg(all(test, not(loom)))]
        tests::pause_after_poll();
        let replaced = {
            let mut state = self.lock();
            match &state.armed {
                Some((armed, _)) if *armed <= at => Some(sleep), // armed earlier meanwhile
                _ => state.armed.replace((at, sleep)).map(|(_, old)| old),
            }
        };
        drop(replaced);
        if wheel_waker.fired.load(Ordering::Acquire) {
            self.fire(instant);
        }
    }

    /// Fires what is due. `armed_at` is when the `Sleep` that woke us was due; whatever
    /// `Sleep` is armed now is replaced by one for the next deadline.
    fn fire(self: &Arc<Self>, armed_at: Instant) {
        let now = Instant::now();
        let (due, next, old_sleep) = {
            let mut state = self.lock();
            let old_sleep = state.armed.take();
            if now < armed_at {
                // Only a runtime shutting down fires a timer early: retire this wheel.
                self.retired.store(true, Ordering::Release);
                let due = state.drain_all();
                (due, None, old_sleep)
            } else {
                let due = state.take_due(now);
                (due, state.next_due(), old_sleep)
            }
        };
        drop(old_sleep);
        // What is due first: arming may find the next deadline already due and fire it inline.
        due.into_iter().for_each(crate::source::deadline_due);
        if let Some(at) = next {
            // A runtime shutting down fires its timers in turn; one that was due fires as if
            // on time, and starting the next `Sleep` on that runtime then panics ("timer is
            // shutdown"), as its time driver is gone. That runtime had a time driver (its
            // timer woke us), so a panic here means it has shut down: retire the wheel, or its
            // later deadlines would never fire (the stress harness's shutdown part).
            let armed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.arm(at)));
            if armed.is_err() {
                self.retire();
            }
        }
    }

    /// Retires this wheel, its runtime gone: every entry is handed to its scope, which moves
    /// its deadline to the crate's fallback timer thread.
    fn retire(self: &Arc<Self>) {
        let (due, old_sleep) = {
            let mut state = self.lock();
            self.retired.store(true, Ordering::Release);
            (state.drain_all(), state.armed.take())
        };
        drop(old_sleep);
        due.into_iter().for_each(crate::source::deadline_due);
    }
}

impl State {
    fn empty(origin: Instant) -> State {
        State {
            origin,
            entries: Slab::new(),
            heads: vec![NIL; SLOTS as usize],
            processed: 0,
            pending: 0,
            armed: None,
        }
    }

    /// `at` in nanoseconds after `origin` (0 if before it).
    fn offset_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin);
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant_of(&self, at: u64) -> Instant {
        self.origin + Duration::from_nanos(at)
    }

    /// Puts an entry due `at` in its bucket's list; returns its slot.
    fn link(&mut self, at: u64, scope: Expiry) -> Index {
        let tick = (at / TICK).max(self.processed);
        let bucket = (tick % SLOTS) as usize;
        let head = self.heads[bucket];
        let slot = self.entries.insert(Entry {
            at,
            scope,
            prev: HEAD + bucket as Index,
            next: head,
        });
        let index = Index::try_from(slot)
            .ok()
            .filter(|&index| index < HEAD)
            .expect("a wheel holds fewer than 2^32 - 1025 entries");
        if let Some(old) = self.entry(head) {
            old.prev = index;
        }
        self.heads[bucket] = index;
        self.pending += 1;
        index
    }

    fn entry(&mut self, index: Index) -> Option<&mut Entry> {
        self.entries.get_mut(index as usize)
    }

    /// Takes the entry at `index` out of its bucket's list and marks it fired; its slot stays
    /// taken (see "Invariants"). Returns its scope, or `None` if it had fired already.
    fn unlink(&mut self, index: Index) -> Option<Expiry> {
        let entry = self
            .entries
            .get_mut(index as usize)
            .filter(|entry| entry.is_linked())?;
        self.pending -= 1;
        let (prev, next) = (entry.prev, entry.next);
        let scope = std::mem::take(&mut entry.scope);
        match self.entry(prev) {
            Some(prev) => prev.next = next,
            None => self.heads[(prev - HEAD) as usize] = next,
        }
        if let Some(next) = self.entry(next) {
            next.prev = prev;
        }
        Some(scope)
    }

    /// Frees the slot of a `WheelEntry` being dropped, taking its entry out first if it has
    /// not fired; returns what it held, to be dropped once the lock is released.
    fn remove(&mut self, index: Index) -> Option<Expiry> {
        let scope = self.unlink(index);
        self.entries.remove_if(index as usize, |_| true);
        scope
    }

    /// Takes every entry due by `now`, and marks the ticks before `now`'s processed.
    fn take_due(&mut self, now: Instant) -> Vec<Expiry> {
        let now = self.offset_of(now);
        let now_tick = (now / TICK).max(self.processed);
        let mut due = Vec::new();
        let span = (now_tick - self.processed + 1).min(SLOTS);
        for tick in self.processed..self.processed + span {
            let mut index = self.heads[(tick % SLOTS) as usize];
            while let Some(entry) = self.entry(index) {
                let next = entry.next;
                if entry.at <= now {
                    due.extend(self.unlink(index));
                }
                index = next;
            }
        }
        // The tick of `now` may still hold entries due later in it.
        self.processed = now_tick;
        due
    }

    /// When to wake next (nanoseconds after `origin`): the earliest entry within one rotation,
    /// or one rotation ahead if every entry is further out. `None` when empty.
    fn next_due(&mut self) -> Option<u64> {
        if self.pending == 0 {
            return None;
        }
        for tick in self.processed..self.processed + SLOTS {
            // Entries of this bucket due before the tick ends are this rotation's (see
            // "Invariants").
            let end = (tick + 1).saturating_mul(TICK);
            let mut earliest = None;
            let mut index = self.heads[(tick % SLOTS) as usize];
            while let Some(entry) = self.entry(index) {
                if entry.at < end {
                    earliest = Some(earliest.map_or(entry.at, |at: u64| at.min(entry.at)));
                }
                index = entry.next;
            }
            if earliest.is_some() {
                return earliest;
            }
        }
        Some((self.processed + SLOTS).saturating_mul(TICK))
    }

    /// Takes every entry that has not fired, as fired (their slots stay taken).
    fn drain_all(&mut self) -> Vec<Expiry> {
        let mut scopes = Vec::with_capacity(self.pending);
        for bucket in 0..self.heads.len() {
            // Every list is emptied whole, so its links need no mending; each step marks an
            // entry fired, so even a broken list could not be walked twice.
            let mut index = std::mem::replace(&mut self.heads[bucket], NIL);
            while let Some(entry) = self.entry(index).filter(|entry| entry.is_linked()) {
                index = entry.next;
                scopes.push(std::mem::take(&mut entry.scope));
            }
        }
        self.pending = 0;
        scopes
    }
}

impl Entry {
    fn is_linked(&self) -> bool {
        !self.scope.is_empty()
    }
}

/// The waker of one armed `Sleep`.
struct WheelWaker {
    wheel: Weak<Wheel>,
    /// When that `Sleep` is due: a wake before it means the runtime is shutting down.
    at: Instant,
    /// Set when Tokio wakes it, before the wheel is fired (see [`Wheel::arm`]).
    fired: AtomicBool,
}

impl Wake for WheelWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        if let Some(wheel) = self.wheel.upgrade() {
            wheel.fire(self.at);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use crate::{Context, Error};

    std::thread_local! {
        static PAUSE: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    }

    /// Widens the window between polling a new `Sleep` and storing it, on this thread.
    pub(super) fn pause_after_poll() {
        let pause = PAUSE.with(Cell::get);
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }

    /// A fired entry keeps its slot until its handle drops, so a handle dropped after its entry
    /// fired (the scope's cancellation drops it a moment later) cannot take out an entry armed
    /// meanwhile; the same after the wheel is retired.
    #[test]
    fn a_handle_dropped_after_its_entry_fired_leaves_later_entries_alone() {
        use super::{State, TICK};
        use crate::tree::Expiry;

        let (a, _cancel_a) = Context::background().with_cancel();
        let (b, _cancel_b) = Context::background().with_cancel();
        let scope = |ctx: &Context| Expiry::of(ctx.scope().unwrap());
        let origin = tokio::time::Instant::now();
        let mut state = State::empty(origin);
        let tick = Duration::from_nanos(TICK);
        let first = state.link(TICK, scope(&a));
        let due = state.take_due(origin + tick);
        assert_eq!(due.len(), 1, "a fired");
        assert_eq!(
            (state.pending, state.entries.len()),
            (0, 1),
            "its slot kept"
        );
        let second = state.link(5 * TICK, scope(&b));
        assert_ne!(second, first, "a fired entry's slot is not reused");
        assert!(
            state.remove(first).is_none(),
            "a's handle drops: nothing left to fire"
        );
        assert_eq!(state.next_due(), Some(5 * TICK), "b is still armed");
        let third = state.link(7 * TICK, scope(&a));
        assert_eq!(
            state.drain_all().len(),
            2,
            "retired: b and a's new entry fire"
        );
        assert_eq!((state.pending, state.entries.len()), (0, 2));
        assert!(state.remove(second).is_none() && state.remove(third).is_none());
        assert_eq!(state.entries.len(), 0, "every slot freed by its handle");
        assert_eq!(state.next_due(), None);
    }

    /// Entries of one bucket are a list whose head names its bucket: removing the head, a
    /// middle entry or the tail mends the list, and the bucket still fires what is left.
    #[test]
    fn removing_any_entry_of_a_bucket_leaves_the_others_to_fire() {
        use super::{State, TICK};
        use crate::tree::Expiry;

        let (ctx, _cancel) = Context::background().with_cancel();
        let origin = tokio::time::Instant::now();
        for removed in [[0, 1], [1, 3], [3, 2], [2, 0]] {
            let mut state = State::empty(origin);
            // Four entries in bucket 3 (the last linked is the head), one in bucket 4.
            let indices: Vec<_> = (0..4)
                .map(|i| state.link(3 * TICK + i, Expiry::of(ctx.scope().unwrap())))
                .collect();
            state.link(4 * TICK, Expiry::of(ctx.scope().unwrap()));
            for i in removed {
                assert!(
                    state.remove(indices[i]).is_some(),
                    "{removed:?}: {i} was armed"
                );
            }
            assert_eq!(state.pending, 3, "{removed:?}");
            let due = state.take_due(origin + Duration::from_nanos(3 * TICK + 3));
            assert_eq!(due.len(), 2, "{removed:?}: the other two of bucket 3 fire");
            assert_eq!(
                state.next_due(),
                Some(4 * TICK),
                "{removed:?}: bucket 4 untouched"
            );
            assert_eq!(state.drain_all().len(), 1, "{removed:?}");
        }
    }

    /// An entry, and a slot of the slab that holds it, are 24 bytes: a live deadline's share
    /// of its wheel.
    #[test]
    fn a_wheel_entry_is_24_bytes() {
        assert_eq!(std::mem::size_of::<super::Entry>(), 24);
        // The slab's inline first slot, its `Vec` and two counts: a slot takes no more room
        // than the entry, its vacant state in the room of the entry's `Expiry`.
        assert_eq!(
            std::mem::size_of::<super::Slab<super::Entry>>(),
            24 + 24 + 8
        );
    }

    /// A burst of deadlines armed on a worker and dropped gives the wheel's room back: to a
    /// little, whether a few of them stay or none does.
    #[test]
    #[cfg_attr(
        miri,
        ignore = "a scale test, too slow under Miri; smaller tests reach the same code"
    )]
    fn a_wheel_gives_back_the_room_of_a_burst_of_deadlines() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::spawn(async {
                // All on one worker, in one poll: this thread's wheel.
                let room = || {
                    super::LOCAL.with(|local| {
                        let local = local.borrow();
                        local
                            .wheel
                            .as_ref()
                            .map(|(_, wheel)| wheel.lock().entries.capacity())
                    })
                };
                let mut deadlines: Vec<_> = (0..200_000)
                    .map(|_| Context::background().with_timeout(Duration::from_secs(600)))
                    .collect();
                assert!(room().unwrap() >= 200_000 - 1, "entry 0 is inline");
                let stay: Vec<_> = deadlines.drain(..20).collect();
                drop(deadlines);
                assert!(room().unwrap() <= 64, "{:?} entries of room for 20", room());
                drop(stay);
                assert!(
                    room().unwrap() <= 64,
                    "{:?} entries of room for none",
                    room()
                );
            })
            .await
            .unwrap();
        });
    }

    /// A `Sleep` that fires before `arm` stores it must not leave the wheel armed with a
    /// `Sleep` that never wakes again: later deadlines on the same worker still fire.
    #[test]
    fn a_sleep_that_fires_before_it_is_stored_does_not_stall_the_wheel() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let outcome = tokio::spawn(async {
                // The other worker drives the timer while this one pauses 20 ms after polling
                // the 1 ms `Sleep`, so it fires inside the window.
                PAUSE.with(|pause| pause.set(Duration::from_millis(20)));
                let (first, _cancel_first) =
                    Context::background().with_timeout(Duration::from_millis(1));
                PAUSE.with(|pause| pause.set(Duration::ZERO));
                let first = tokio::time::timeout(Duration::from_secs(10), first.done()).await;
                let (second, _cancel_second) =
                    Context::background().with_timeout(Duration::from_millis(30));
                let second = tokio::time::timeout(Duration::from_secs(10), second.done()).await;
                (first, second)
            })
            .await
            .unwrap();
            assert_eq!(outcome.0, Ok(Error::DeadlineExceeded));
            assert_eq!(outcome.1, Ok(Error::DeadlineExceeded), "the wheel stalled");
        });
    }
}

/// Under loom, a wheel's timer is a stand-in: starting one records its waker, and a model
/// fires it by hand ([`fire_one`](loom_timer::fire_one)), at whatever point loom chooses.
#[cfg(loom)]
pub(crate) mod loom_timer {
    use std::sync::Arc;
    use std::task::Waker;

    use tokio::time::Instant;

    use crate::sync::{AtomicBool, Mutex, Ordering};

    /// A started timer; `fired` once a model has fired it.
    pub(crate) struct Timer {
        fired: Arc<AtomicBool>,
    }

    loom::lazy_static! {
        static ref STARTED: Mutex<Vec<(Waker, Arc<AtomicBool>)>> = Mutex::new(Vec::new());
    }

    pub(crate) fn start_timer(_at: Instant, waker: &Waker) -> Option<Timer> {
        let fired = Arc::new(AtomicBool::new(false));
        STARTED.lock().unwrap().push((waker.clone(), fired.clone()));
        Some(Timer { fired })
    }

    /// Fires the timer started last, if any is waiting; true if it did.
    pub(crate) fn fire_one() -> bool {
        let Some((waker, fired)) = STARTED.lock().unwrap().pop() else {
            return false;
        };
        fired.store(true, Ordering::SeqCst);
        waker.wake();
        true
    }

    impl super::Wheel {
        /// When a deadline is due at once.
        pub(crate) fn origin(&self) -> Instant {
            self.lock().origin
        }

        /// Whether no deadline is left in the wheel to fire.
        pub(crate) fn is_empty(&self) -> bool {
            self.lock().pending == 0
        }

        /// How many slots are taken: entries not fired, and fired ones whose handle lives.
        pub(crate) fn slots(&self) -> usize {
            self.lock().entries.len()
        }

        /// Whether the timer the wheel holds armed has already fired: such a timer never wakes
        /// again, and the wheel would never arm another.
        pub(crate) fn holds_a_fired_timer(&self) -> bool {
            self.lock()
                .armed
                .as_ref()
                .is_some_and(|(_, timer)| timer.fired.load(Ordering::SeqCst))
        }
    }
}
