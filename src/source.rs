//! What cancels a scope from outside the tree: its deadline timer, or a foreign token.
//!
//! Neither costs a task while it waits. A deadline armed inside a Tokio runtime is an entry in
//! this thread's deadline wheel for that runtime (`wheel.rs`), which holds only a `Weak`
//! reference to the scope and is driven by one Tokio `Sleep`; outside any runtime, it is an
//! entry on the crate's fallback timer thread. Dropping the scope drops the entry, so nothing
//! outlives the context. A token watch is a `cancelled()` future polled once, by hand, with a
//! waker that holds only a `Weak` reference to the scope.
//!
//! # Where a deadline's cancellation runs
//!
//! Tokio calls a wheel's waker inside its timer driver. On a multi-thread runtime, one worker
//! at a time holds the driver, and no timer of the runtime fires until that waker returns. So
//! there the waker only hands the scope on ([`deadline_due`]): a task spawned on the runtime
//! runs the cancellation, its walk, wakers and `after_func` callbacks, as a `CancellationToken`
//! cancelled from a task would (pinned by
//! `tests/deadlines.rs::a_slow_deadline_callback_delays_no_timer_of_a_multi_thread_runtime`).
//! If the runtime cannot run that task (it is shutting down), the task's drop runs the
//! cancellation where it is dropped. On a current-thread runtime the driver and every task
//! share one thread, so a task would stall the other timers as long: the waker cancels in
//! place, and a paused clock's `advance` returns with the deadline's whole subtree done
//! (pinned by `tests/deadlines.rs::deadline_cancels_the_subtree_at_the_deadline_and_not_before`).
//! The fallback thread below hands each batch of deadlines to a thread of its own, so that a
//! callback that blocks holds up no deadline that comes due after it began (pinned by
//! `tests/deadlines.rs::a_slow_deadline_callback_delays_no_later_deadline_outside_a_runtime`);
//! the deadlines of one batch, all due when the thread woke, fire one after the other.

use std::collections::BTreeMap;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError};
use std::task::{self, Poll, Wake, Waker};

use tokio::runtime::RuntimeFlavor;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::sync::{Condvar, Mutex, MutexGuard};
use crate::tree::Expiry;

/// Something that can cancel a scope from outside; dropping it disarms it.
pub(crate) enum Source {
    /// A deadline in a deadline wheel of the runtime it was armed in.
    Wheel { _entry: crate::wheel::WheelEntry },
    /// A deadline on the crate's fallback timer thread. Boxed, as this path is rare (no
    /// runtime, or one shut down): its 24-byte key inline would make every `Source` 32 bytes,
    /// and a scope's lock, which holds one, larger (see `Inner` in `tree/inner.rs`).
    Fallback { _entry: Box<FallbackEntry> },
    /// A watch on a foreign `CancellationToken`.
    Token {
        _cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    },
}

/// Arms a timer that calls [`Expiry::fire_deadline`] at `at`, which the caller has checked is
/// in the future: in this thread's wheel for the current runtime, or on the fallback thread
/// outside any runtime. Always `Some`: a deadline that has passed by the time the wheel arms
/// its timer is fired by the wheel.
///
/// # Panics
///
/// Inside a Tokio runtime built without the time driver, as `tokio::time::sleep` does.
pub(crate) fn arm_timer(scope: &Expiry, at: Instant) -> Option<Source> {
    Some(match crate::wheel::insert(scope, at) {
        Some(entry) => Source::Wheel { _entry: entry },
        None => fallback_timer(scope.clone(), at),
    })
}

/// Hands a deadline that a Tokio timer fired to a task of the current runtime, which calls
/// [`Expiry::fire_deadline`], if it is a multi-thread one; calls it in place otherwise (see
/// "Where a deadline's cancellation runs").
pub(crate) fn deadline_due(scope: Expiry) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == RuntimeFlavor::MultiThread => {
            drop(runtime.spawn(DeadlineDue(Some(scope))));
        }
        _ => fire(scope),
    }
}

fn fire(scope: Expiry) {
    scope.fire_deadline();
}

/// Fires a batch of the fallback thread's deadlines on a thread of its own, so that a
/// callback that blocks holds up no later batch; in place if no thread can be started
/// (or under loom, whose models drive the fallback thread's loop by hand).
fn fire_batch(due: Vec<Expiry>) {
    fn fire_all(batch: &Mutex<Vec<Expiry>>) {
        let due = mem::take(&mut *batch.lock().unwrap_or_else(PoisonError::into_inner));
        due.into_iter().for_each(fire);
    }
    let batch = Arc::new(Mutex::new(due));
    if !cfg!(loom) {
        let theirs = batch.clone();
        let spawned = std::thread::Builder::new()
            .name("taskctx-deadline".into())
            .spawn(move || fire_all(&theirs));
        if spawned.is_ok() {
            return;
        }
    }
    fire_all(&batch);
}

/// The task that runs a deadline's cancellation: at its first poll, or when it is dropped
/// unpolled (a runtime shutting down drops the tasks it can no longer run).
struct DeadlineDue(Option<Expiry>);

impl Future for DeadlineDue {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _: &mut task::Context<'_>) -> Poll<()> {
        if let Some(scope) = self.0.take() {
            fire(scope);
        }
        Poll::Ready(())
    }
}

impl Drop for DeadlineDue {
    fn drop(&mut self) {
        if let Some(scope) = self.0.take() {
            fire(scope);
        }
    }
}

/// Watches `token` for `scope`; `None` if the token is already cancelled.
pub(crate) fn watch_token(scope: Expiry, token: CancellationToken) -> Option<Source> {
    let mut cancelled = Box::pin(token.clone().cancelled_owned());
    let waker = Waker::from(Arc::new(TokenWaker { scope, token }));
    match cancelled
        .as_mut()
        .poll(&mut task::Context::from_waker(&waker))
    {
        Poll::Ready(()) => None,
        Poll::Pending => Some(Source::Token {
            _cancelled: cancelled,
        }),
    }
}

struct TokenWaker {
    scope: Expiry,
    token: CancellationToken,
}

impl Wake for TokenWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // tokio-util wakes waiters only after releasing its own locks, so asking the token
        // (which `token_woke` does) is safe here.
        self.scope.token_woke(&self.token);
    }
}

/// Schedules [`Expiry::fire_deadline`] at `at` on the crate's fallback timer thread.
pub(crate) fn fallback_timer(scope: Expiry, at: Instant) -> Source {
    let key = Fallback::get().schedule(scope, at.into_std());
    Source::Fallback {
        _entry: Box::new(FallbackEntry { key }),
    }
}

pub(crate) type Key = (std::time::Instant, u64);

/// A deadline on the fallback thread; dropping it takes it off the queue.
pub(crate) struct FallbackEntry {
    key: Key,
}

impl Drop for FallbackEntry {
    fn drop(&mut self) {
        let removed = Fallback::get().lock().remove(&self.key);
        drop(removed);
    }
}

/// The queue of the fallback timer thread. Its lock guards the queue; the thread sleeps on
/// `changed` until the earliest deadline, and `schedule` notifies it when a new deadline
/// becomes the earliest, after inserting it under the same lock, so that the thread either
/// sees the new deadline before it sleeps or is woken (loom model
/// `loom_an_earlier_deadline_wakes_the_fallback_timer_thread`).
pub(crate) struct Fallback {
    queue: Mutex<BTreeMap<Key, Expiry>>,
    changed: Condvar,
    next_id: AtomicU64,
}

impl Fallback {
    pub(crate) fn new() -> Fallback {
        Fallback {
            queue: Mutex::new(BTreeMap::new()),
            changed: Condvar::new(),
            next_id: AtomicU64::new(0),
        }
    }

    /// Queues `scope`'s deadline `at`, waking the thread if it is now the earliest.
    pub(crate) fn schedule(&self, scope: Expiry, at: std::time::Instant) -> Key {
        let key = (at, self.next_id.fetch_add(1, Ordering::Relaxed));
        let earliest = {
            let mut queue = self.lock();
            queue.insert(key, scope);
            queue.keys().next() == Some(&key)
        };
        if earliest {
            self.changed.notify_one();
        }
        key
    }

    fn get() -> &'static Fallback {
        static FALLBACK: OnceLock<Fallback> = OnceLock::new();
        let mut started = false;
        let fallback = FALLBACK.get_or_init(|| {
            started = true;
            Fallback::new()
        });
        if started {
            let spawned = std::thread::Builder::new()
                .name("taskctx-timer".into())
                .spawn(|| Fallback::get().run(usize::MAX));
            if let Err(err) = spawned {
                tracing::error!(
                    target: "taskctx",
                    error = %err,
                    "cannot start the timer thread: deadlines set outside a runtime will not fire",
                );
            }
        }
        fallback
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, BTreeMap<Key, Expiry>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The thread's loop: fires deadlines as they come due; returns once it has fired
    /// `fire_at_most` of them (never, for the thread itself).
    pub(crate) fn run(&self, fire_at_most: usize) {
        let mut fired = 0;
        let mut queue = self.lock();
        loop {
            let now = std::time::Instant::now();
            // Everything keyed at or before `now`: no id reaches `u64::MAX`.
            let later = queue.split_off(&(now, u64::MAX));
            let due: Vec<_> = mem::replace(&mut *queue, later).into_values().collect();
            if !due.is_empty() {
                drop(queue);
                fired += due.len();
                fire_batch(due);
                if fired >= fire_at_most {
                    return;
                }
                queue = self.lock();
                continue;
            }
            queue = match queue.keys().next() {
                Some(&(at, _)) => {
                    let wait = at.saturating_duration_since(now);
                    self.changed
                        .wait_timeout(queue, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .changed
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::{Expiry, Fallback, Source, fallback_timer};
    use crate::tree::tests::plain_scope as scope;

    #[test]
    #[cfg_attr(
        miri,
        ignore = "leaves threads running (the crate's timer thread), which Miri reports"
    )]
    fn a_fallback_deadline_leaves_the_timer_threads_queue_when_dropped() {
        let scope = scope();
        let at = tokio::time::Instant::now() + Duration::from_secs(3600);
        let source = fallback_timer(Expiry::of(&scope), at);
        let Source::Fallback { _entry: entry } = &source else {
            panic!("a fallback timer")
        };
        let key = entry.key;
        assert!(Fallback::get().lock().contains_key(&key), "queued");
        drop(source);
        assert!(
            !Fallback::get().lock().contains_key(&key),
            "gone with its entry"
        );
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "leaves threads running (the crate's timer thread), which Miri reports"
    )]
    fn the_fallback_loop_fires_what_is_due_and_keeps_what_is_not() {
        // A queue of its own, run on a thread with a watchdog: a loop that fires too much
        // empties the queue, one that fires too little never returns.
        let fallback = Arc::new(Fallback::new());
        let scope = scope();
        let now = Instant::now();
        let later = fallback.schedule(Expiry::of(&scope), now + Duration::from_secs(3600));
        let due = fallback.schedule(Expiry::of(&scope), now - Duration::from_millis(1));
        let (returned, watchdog) = mpsc::channel();
        std::thread::spawn({
            let fallback = fallback.clone();
            move || {
                fallback.run(1);
                let _ = returned.send(());
            }
        });
        watchdog
            .recv_timeout(Duration::from_secs(10))
            .expect("hang: the loop did not return once it had fired the due deadline");
        let queue = fallback.lock();
        assert!(!queue.contains_key(&due), "the due deadline was fired");
        assert!(
            queue.contains_key(&later),
            "the hour-long one is still queued"
        );
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "leaves threads running (the crate's timer thread), which Miri reports"
    )]
    fn a_deadline_earlier_than_the_one_the_loop_sleeps_for_wakes_it() {
        // The loop sleeps until an hour from now; a deadline due at once must wake it, or it
        // fires an hour late (and the watchdog calls it a hang).
        let fallback = Arc::new(Fallback::new());
        let scope = scope();
        let now = Instant::now();
        let later = fallback.schedule(Expiry::of(&scope), now + Duration::from_secs(3600));
        let (returned, watchdog) = mpsc::channel();
        std::thread::spawn({
            let fallback = fallback.clone();
            move || {
                fallback.run(1);
                let _ = returned.send(());
            }
        });
        // Until the loop waits, a new deadline is found without a wake-up: give it the time to
        // reach its wait; the test holds whenever it does.
        std::thread::sleep(Duration::from_millis(50));
        let due = fallback.schedule(Expiry::of(&scope), Instant::now());
        watchdog
            .recv_timeout(Duration::from_secs(10))
            .expect("hang: the earlier deadline did not wake the loop");
        let queue = fallback.lock();
        assert!(!queue.contains_key(&due) && queue.contains_key(&later));
    }
}
