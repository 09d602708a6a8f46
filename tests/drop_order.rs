//! The drop order user code has: `let (ctx, _cancel) = parent.with_cancel();` at the end of a
//! scope drops `_cancel` first (bindings drop in reverse order), cancelling a context that is
//! still held, then `ctx`. That order costs no more allocations than the other one (the
//! context first), and what it cancelled is reset before its allocation is reused: a context
//! of the next life is live, with no value or cause of the last. The counting global allocator
//! (`tests/common/alloc.rs`) counts what the current thread allocates; tests that need a
//! thread's kept scopes to start empty run on a thread of their own.

mod common;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use taskctx::testing::census;
use taskctx::{Context, Error};

#[global_allocator]
static ALLOCATOR: common::alloc::CountingAlloc = common::alloc::CountingAlloc;

/// How many allocations this thread made while `f` ran.
fn allocations(f: impl FnOnce()) -> usize {
    let (before, _) = common::alloc::this_thread();
    f();
    common::alloc::this_thread().0 - before
}

/// Derives from `parent` and lets the pair go as the end of a scope does: the handle first.
fn end_of_scope(parent: &Context) {
    let (ctx, _cancel) = parent.with_cancel();
    assert!(!ctx.is_done());
}

/// The same pair, the context dropped first.
fn context_first(parent: &Context) {
    let (ctx, cancel) = parent.with_cancel();
    assert!(!ctx.is_done());
    drop(ctx);
    drop(cancel);
}

/// Runs `round` once to warm up, then `rounds` more times: the allocations of those.
fn warm(rounds: usize, mut round: impl FnMut()) -> usize {
    round();
    allocations(|| (0..rounds).for_each(|_| round()))
}

#[test]
fn the_end_of_a_scope_allocates_nothing_once_warm_as_the_context_first_order() {
    std::thread::spawn(|| {
        let root = Context::background();
        assert_eq!(warm(100, || context_first(&root)), 0, "context first");
        assert_eq!(warm(100, || end_of_scope(&root)), 0, "handle first");
    })
    .join()
    .unwrap();
}

#[test]
fn the_end_of_a_scope_under_a_live_parent_allocates_nothing_once_warm() {
    std::thread::spawn(|| {
        let (parent, _cancel_parent) = Context::background().with_cancel();
        assert_eq!(warm(100, || context_first(&parent)), 0, "context first");
        assert_eq!(warm(100, || end_of_scope(&parent)), 0, "handle first");
        assert!(
            census(&parent).is_clean(),
            "each child left its parent's count once"
        );
        assert!(!parent.is_done(), "cancelling a child never reaches up");
    })
    .join()
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_timeout_at_the_end_of_a_scope_allocates_nothing_once_warm() {
    let (parent, _cancel_parent) = Context::background().with_cancel();
    let first = |parent: &Context| {
        let (ctx, cancel) = parent.with_timeout(Duration::from_secs(1));
        assert!(!ctx.is_done());
        drop(ctx);
        drop(cancel);
    };
    let end_of_scope = |parent: &Context| {
        let (ctx, _cancel) = parent.with_timeout(Duration::from_secs(1));
        assert!(!ctx.is_done());
    };
    for root in [Context::background(), parent.clone()] {
        assert_eq!(warm(100, || first(&root)), 0, "context first, {root}");
        assert_eq!(warm(100, || end_of_scope(&root)), 0, "handle first, {root}");
    }
    assert_eq!(census(&parent).timers, 0, "every timer was disarmed");
    assert!(census(&parent).is_clean());
    // The deadline of a reused context still fires.
    let (ctx, _cancel) = parent.with_timeout(Duration::from_secs(1));
    assert_eq!(ctx.done().await, Error::DeadlineExceeded);
}

#[test]
fn the_handle_dropped_first_cancels_the_context_it_leaves_behind() {
    let (parent, _cancel_parent) = Context::background().with_cancel();
    for parent in [Context::background(), parent] {
        let ctx = {
            let (ctx, cancel) = parent.with_cancel();
            drop(cancel);
            ctx
        };
        assert_eq!(ctx.err(), Some(Error::Canceled), "{parent}");
        assert!(ctx.is_done());
        let (child, _cancel_child) = ctx.with_cancel();
        assert!(child.is_done(), "born done under a cancelled parent");
    }
}

/// An error that records, through its `Arc`, whether anything still holds it.
struct Tracked(#[allow(dead_code)] Arc<()>);

impl fmt::Debug for Tracked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tracked")
    }
}

impl fmt::Display for Tracked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tracked cause")
    }
}

impl std::error::Error for Tracked {}

/// A context cancelled by its handle, with a cause and a value layer on it, is reused by the
/// next derive on its thread (which allocates nothing): that context is live, reports no
/// error, cause or value of the last life, is cancelled with its own cause, and the last
/// life's cause is gone.
#[test]
fn a_context_reused_after_its_handle_cancelled_it_starts_live_and_clean() {
    std::thread::spawn(|| {
        let (parent, _cancel_parent) = Context::background().with_cancel();
        for parent in [Context::background(), parent] {
            let held = Arc::new(());
            {
                let (ctx, cancel) = parent.with_cancel_cause();
                let ctx = ctx.with_value(7u32);
                cancel.cancel(Tracked(held.clone()));
                assert!(ctx.cause().is_some_and(|cause| cause.is::<Tracked>()));
                // End of scope: the handle, then the context.
            }
            assert_eq!(
                Arc::strong_count(&held),
                1,
                "{parent}: the cause went with its context"
            );
            let mut next = None;
            let n = allocations(|| next = Some(parent.with_cancel()));
            let (next, cancel_next) = next.unwrap();
            assert_eq!(n, 0, "{parent}: the released scope is reused");
            assert!(!next.is_done(), "{parent}");
            assert_eq!(next.err(), None);
            assert!(next.cause().is_none());
            assert_eq!(next.value::<u32>(), None);
            let (child, _cancel_child) = next.with_cancel();
            assert!(
                !child.is_done(),
                "{parent}: a child of the next life is live"
            );
            cancel_next.cancel();
            assert_eq!(next.err(), Some(Error::Canceled));
            assert!(
                next.cause().is_some_and(|cause| cause.is::<Error>()),
                "{parent}: its own cause, not the last life's"
            );
            assert!(child.is_done());
        }
    })
    .join()
    .unwrap();
}

/// A context the handle cancelled while a clone of it is still held is not reused: the next
/// derive allocates, and the clone still reports done.
#[test]
fn a_context_still_held_elsewhere_is_not_reused() {
    std::thread::spawn(|| {
        let root = Context::background();
        let kept = {
            let (ctx, _cancel) = root.with_cancel();
            ctx.clone()
        };
        let mut next = None;
        let n = allocations(|| next = Some(root.with_cancel()));
        assert_eq!(n, 1, "a fresh scope: the held one was not kept");
        assert_eq!(kept.err(), Some(Error::Canceled));
        assert!(!next.unwrap().0.is_done());
    })
    .join()
    .unwrap();
}

/// Whether it has been woken.
struct Flag(std::sync::atomic::AtomicBool);

impl std::task::Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A context whose `done()` is pending, its handle dropped while the context is still held:
/// the waiter is woken and sees the error, under `background()` and under a live parent,
/// whether it is the context's first waiter or a later one.
#[test]
fn a_handle_dropped_first_wakes_the_contexts_waiters() {
    let (parent, _cancel_parent) = Context::background().with_cancel();
    for root in [Context::background(), parent.clone()] {
        for waiters in 1..=3 {
            let (ctx, cancel) = root.with_cancel();
            let mut pending: Vec<_> = (0..waiters)
                .map(|_| {
                    let flag = Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
                    let mut done = Box::pin(ctx.done());
                    let waker = std::task::Waker::from(flag.clone());
                    let polled = done
                        .as_mut()
                        .poll(&mut std::task::Context::from_waker(&waker));
                    assert!(polled.is_pending());
                    (flag, done, waker)
                })
                .collect();
            drop(cancel);
            for (flag, done, waker) in &mut pending {
                assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst), "woken");
                let polled = done
                    .as_mut()
                    .poll(&mut std::task::Context::from_waker(waker));
                assert_eq!(polled, std::task::Poll::Ready(Error::Canceled));
            }
            drop(pending);
            drop(ctx);
        }
    }
    assert!(census(&parent).is_clean(), "{}", census(&parent));
}
