//! The allocation claims of the docs: roots and queries cost nothing, deriving a cancellable
//! context costs one allocation (two for a parent's first child, whose registrations the
//! parent then keeps), a value context two, and a `done()` future allocates nothing when it is
//! ready at once, and nothing once its context's registrations are allocated. The counting
//! global allocator (`tests/common/alloc.rs`) counts what the current thread allocates, so tests
//! running in parallel on other threads do not disturb it.

mod common;

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{self, Poll, Waker};
use std::time::Duration;

use taskctx::testing::census;
use taskctx::{Context, Error, Key};

#[global_allocator]
static ALLOCATOR: common::alloc::CountingAlloc = common::alloc::CountingAlloc;

/// Runs `f` and returns how many allocations this thread made meanwhile, with `f`'s output,
/// which the caller drops outside the count.
fn allocations<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let (before, _) = common::alloc::this_thread();
    let out = black_box(f());
    (common::alloc::this_thread().0 - before, out)
}

/// Polls `future` once with a waker that does nothing.
fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut task::Context::from_waker(Waker::noop()))
}

#[test]
fn the_counter_sees_this_threads_allocations_and_not_other_threads() {
    let (n, boxed) = allocations(|| Box::new(7u64));
    assert_eq!((n, *boxed), (1, 7), "one Box is one allocation");
    let (n, grown) = allocations(|| {
        let mut v = Vec::<u64>::with_capacity(1);
        v.extend([1, 2]); // a realloc
        v
    });
    assert_eq!((n, grown.len()), (2, 2), "an allocation and a realloc");

    let barrier = Arc::new(Barrier::new(2));
    let other = {
        let barrier = barrier.clone();
        std::thread::spawn(move || {
            barrier.wait();
            let boxes: Vec<Box<u64>> = (0..100).map(Box::new).collect();
            barrier.wait();
            boxes.len()
        })
    };
    let (n, ()) = allocations(|| {
        barrier.wait();
        barrier.wait(); // the other thread has allocated 101 times in between
    });
    assert_eq!(other.join().unwrap(), 100);
    assert_eq!(n, 0, "another thread's allocations are not counted here");
}

#[test]
fn background_and_todo_and_their_clones_allocate_nothing() {
    let (n, roots) = allocations(|| {
        let background = Context::background();
        let todo = Context::todo();
        let clones = (background.clone(), todo.clone());
        (background, todo, clones, Context::default())
    });
    assert_eq!(n, 0);
    assert_eq!(roots.2.1.to_string(), "context.TODO");
}

#[tokio::test(start_paused = true)]
async fn queries_allocate_nothing_live_or_done() {
    let (ctx, cancel) = Context::background().with_timeout(Duration::from_secs(10));
    let ctx = ctx.with_value(3u8);
    let (n, live) = allocations(|| {
        (
            ctx.err(),
            ctx.is_done(),
            ctx.cause().is_none(),
            ctx.deadline(),
            ctx.remaining(),
        )
    });
    assert_eq!(n, 0, "live: {live:?}");
    assert_eq!(live.0, None);
    assert!(!live.1 && live.2 && live.3.is_some());
    assert_eq!(live.4, Some(Duration::from_secs(10)));

    cancel.cancel();
    let (n, done) = allocations(|| {
        (
            ctx.err(),
            ctx.is_done(),
            ctx.cause(),
            ctx.deadline(),
            ctx.remaining(),
        )
    });
    assert_eq!(n, 0, "done: {done:?}");
    assert_eq!(done.0, Some(Error::Canceled));
    assert!(done.1);
    assert_eq!(
        done.2.unwrap().downcast_ref::<Error>(),
        Some(&Error::Canceled),
        "a plain cancel's cause is the error itself"
    );
    assert_eq!((done.3, done.4), (live.3, live.4), "the deadline is kept");
}

#[test]
fn cause_of_a_custom_cancel_is_a_reference_count_not_an_allocation() {
    let (ctx, cancel) = Context::background().with_cancel_cause();
    cancel.cancel("client went away");
    let (n, cause) = allocations(|| ctx.cause());
    assert_eq!(n, 0);
    assert_eq!(cause.unwrap().to_string(), "client went away");
}

#[test]
fn a_lone_child_adopting_its_parents_custom_cause_allocates_nothing() {
    // A group's member tasks each hold such a child: shutting the group down with a cause
    // must not give each of them a copy.
    let (parent, cancel) = Context::background().with_cancel_cause();
    let (child, _cancel_child) = parent.with_cancel();
    let (grandchild, _cancel_grandchild) = parent.with_value(RequestId(7)).with_cancel();
    cancel.cancel("shutting down");
    let (n, seen) = allocations(|| {
        let err = child.err();
        let cause = child.cause();
        let through_a_value = grandchild.cause();
        (err, cause, through_a_value)
    });
    assert_eq!(
        n, 0,
        "the child's queries took the parent's cause without copying it"
    );
    let (err, cause, through_a_value) = seen;
    assert_eq!(err, Some(Error::Canceled));
    assert_eq!(cause.unwrap().to_string(), "shutting down");
    assert_eq!(through_a_value.unwrap().to_string(), "shutting down");
    // Later registrations in the done child are refused with the same cause.
    let (after_child, _cancel_after) = child.with_cancel();
    assert_eq!(after_child.cause().unwrap().to_string(), "shutting down");
    let stop = child.after_func(|| {});
    assert!(child.is_done());
    drop(stop);
    assert_eq!(child.cause().unwrap().to_string(), "shutting down");
}

#[derive(Debug, PartialEq)]
struct RequestId(u64);

/// One of the layers between the request id and the context the lookups start from.
struct Layer(usize);

struct TraceKey;
impl Key for TraceKey {
    type Value = &'static str;
}

struct MissingKey;
impl Key for MissingKey {
    type Value = RequestId;
}

#[test]
fn value_and_get_through_ten_value_layers_allocate_nothing_on_hits_and_misses() {
    let (root, _cancel) = Context::background().with_cancel();
    let mut ctx = root
        .with_value(RequestId(7))
        .with_key::<TraceKey>("trace-1");
    for i in 0..10 {
        ctx = ctx.with_value(Layer(i));
    }
    let (n, found) = allocations(|| {
        (
            ctx.value::<RequestId>(),
            ctx.get::<TraceKey>(),
            ctx.value::<Layer>().map(|layer| layer.0),
            ctx.value::<u128>(),
            ctx.get::<MissingKey>(),
        )
    });
    assert_eq!(n, 0, "{found:?}");
    assert_eq!(found.0, Some(&RequestId(7)));
    assert_eq!(found.1, Some(&"trace-1"));
    assert_eq!(found.2, Some(9), "the innermost layer");
    assert_eq!(
        (found.3, found.4),
        (None, None),
        "misses walk the whole chain"
    );
}

#[test]
fn awaiting_done_on_a_done_context_allocates_nothing() {
    let (ctx, cancel) = Context::background().with_cancel();
    let ctx = ctx.with_value(RequestId(1));
    cancel.cancel();
    let (n, polled) = allocations(|| {
        let borrowed = poll_once(pin!(ctx.done()));
        let owned = poll_once(pin!(ctx.done_owned()));
        (borrowed, owned)
    });
    assert_eq!(n, 0);
    assert_eq!(
        polled,
        (Poll::Ready(Error::Canceled), Poll::Ready(Error::Canceled))
    );
}

#[test]
fn with_cancel_from_background_costs_one_allocation() {
    let (n, (ctx, _cancel)) = allocations(|| Context::background().with_cancel());
    assert_eq!(n, 1);
    assert!(!ctx.is_done());
}

#[test]
fn with_value_costs_the_node_and_the_boxed_value_and_one_for_a_zero_sized_value() {
    let root = Context::background();
    let (n, ctx) = allocations(|| root.with_value(7u64));
    assert_eq!(n, 2);
    assert_eq!(ctx.value::<u64>(), Some(&7));
    struct Flag;
    let (n, ctx) = allocations(|| ctx.with_value(Flag));
    assert_eq!(n, 1);
    assert!(ctx.value::<Flag>().is_some());
}

/// A child of a live parent costs one allocation, its own, where Go makes two: it is counted in
/// its parent, not registered there, until something waits on it. A released child's
/// allocation is kept by the thread and reused by the next one: none from then on. A `done()`
/// future of a lone child waits in the parent, and the child makes no lock of its own: the
/// first waiter's registration is inline in the parent's lock, the second's allocates the
/// parent's room for more.
#[test]
fn with_cancel_from_a_live_parent_costs_one_allocation_then_none_once_a_scope_is_reused() {
    let (parent, _cancel_parent) = Context::background().with_cancel();
    for round in 0..3 {
        let (n, child) = allocations(|| parent.with_cancel());
        assert_eq!(n, if round == 0 { 1 } else { 0 }, "round {round}");
        assert_eq!(
            census(&parent).contexts,
            1,
            "round {round}: the child is counted in its parent"
        );
        drop(child);
        assert!(census(&parent).is_clean(), "round {round}");
    }
    let (first, cancel_first) = parent.with_cancel();
    let (n, second) = allocations(|| parent.with_cancel());
    assert_eq!(n, 1, "the second child's scope, whose spare the first took");
    assert_eq!(census(&parent).contexts, 2);
    {
        let mut waiting = [pin!(first.done()), pin!(second.0.done())];
        let (registered, ()) = allocations(|| {
            for done in &mut waiting {
                assert!(poll_once(done.as_mut()).is_pending());
            }
        });
        assert_eq!(
            registered, 2,
            "the parent's lock (which no census made: counting takes no lock a scope has not \
             made), its first registration inline, then the room; no lock of the children's own"
        );
        let counted = census(&parent);
        assert_eq!((counted.contexts, counted.waiters), (2, 2));
        assert_eq!(
            census(&first).waiters,
            1,
            "a lone child counts its waiter in the parent"
        );
    }
    assert_eq!(
        census(&parent).waiters,
        0,
        "the futures' registrations went with them"
    );
    drop((first, cancel_first, second));
    assert!(census(&parent).is_clean());
}

/// A cancellation takes a parent's registrations out to walk them, and gives the emptied room
/// back: when the parent's allocation is reused, its next waiters register without allocating.
#[test]
fn a_cancelled_parent_keeps_the_room_of_its_registrations_for_its_next_life() {
    let mut rooms = Vec::new();
    for round in 0..3 {
        let (root, cancel) = Context::background().with_cancel();
        // Two children, each awaited by a future that waits in the root: the second needs
        // room beyond the inline registration.
        let (made, children) = allocations(|| [root.with_cancel(), root.with_cancel()]);
        {
            let [(first, _), (second, _)] = &children;
            let mut waiting = [pin!(first.done()), pin!(second.done())];
            let (registered, ()) = allocations(|| {
                for done in &mut waiting {
                    assert!(poll_once(done.as_mut()).is_pending());
                }
            });
            rooms.push(made + registered);
            cancel.cancel();
            for done in &mut waiting {
                assert_eq!(
                    poll_once(done.as_mut()),
                    Poll::Ready(Error::Canceled),
                    "round {round}"
                );
            }
        }
        // As in `CancelTree`: the root's last references are its children's, so it is kept.
        drop((cancel, root));
        drop(children);
    }
    assert_eq!(
        rooms,
        [4, 0, 0],
        "two children, the root's lock and its room, then nothing"
    );
}

/// A cancellation that reaches more scopes than its batches hold inline spills them to the
/// heap, and frees that room when it is done (one that spilled nothing is forgotten rather
/// than dropped, which must leak nothing either): after a first round, which fills the
/// thread's kept scopes, rounds of both kinds leave the live heap exactly where it was.
#[test]
fn a_cancellation_leaves_nothing_behind_whether_its_batches_spilled_or_not() {
    let round = |children: usize| {
        let (root, cancel) = Context::background().with_cancel();
        let live: Vec<_> = (0..children).map(|_| root.with_cancel()).collect();
        let done = root.done_owned();
        cancel.cancel();
        assert!(live.iter().all(|(child, _)| child.is_done()));
        drop(done);
        drop((cancel, root));
        drop(live);
    };
    for children in [1, 10] {
        round(children);
        let (_, before) = common::alloc::this_thread();
        for _ in 0..100 {
            round(children);
        }
        assert_eq!(
            common::alloc::this_thread().1 - before,
            0,
            "{children} children per round"
        );
    }
}

/// A thread keeps at most 1,024 released scopes: 1,100 live children released together leave
/// 1,024 for reuse, and the next 1,100 children allocate the other 76.
#[test]
fn a_thread_keeps_at_most_1024_released_scopes_for_reuse() {
    std::thread::spawn(|| {
        let root = Context::background();
        let derive = || (0..1100).map(|_| root.with_cancel()).collect::<Vec<_>>();
        let (n, first) = allocations(derive);
        assert_eq!(n, 1100 + 1, "1,100 scopes and the Vec that holds them");
        drop(first);
        let (n, second) = allocations(derive);
        assert_eq!(n, 1100 - 1024 + 1, "1,024 scopes were reused");
        assert!(second.iter().all(|(ctx, _)| !ctx.is_done()));
    })
    .join()
    .unwrap();
}

/// A context that something else can still reach is never reused: here an `after_func`
/// registration, which holds the scope weakly.
#[test]
fn a_scope_still_reachable_through_after_func_is_not_reused() {
    std::thread::spawn(|| {
        let (ctx, cancel) = Context::background().with_cancel();
        let registration = ctx.after_func(|| {});
        drop((ctx, cancel)); // cancels, which runs the callback
        let (n, (next, _cancel_next)) = allocations(|| Context::background().with_cancel());
        assert_eq!(n, 1, "a fresh allocation: the old scope was not kept");
        assert!(!registration.stop(), "the callback ran");
        assert!(!next.is_done());
    })
    .join()
    .unwrap();
}

/// A first waiter makes the context's lock (a context nothing waited on never took it) and
/// registers inline there; a second allocates the context's room for more, which it then
/// keeps.
#[test]
fn done_waiters_allocate_the_registrations_once_and_then_nothing() {
    let (ctx, cancel) = Context::background().with_cancel();
    let mut lone = Box::pin(ctx.done());
    let (n, polled) = allocations(|| poll_once(lone.as_mut()));
    assert_eq!(
        (n, polled),
        (1, Poll::Pending),
        "the context's lock; the first waiter is inline in it"
    );
    for round in 0..3 {
        let mut done = Box::pin(ctx.done());
        let (n, polled) = allocations(|| poll_once(done.as_mut()));
        let expected = if round == 0 { 1 } else { 0 };
        assert_eq!((n, polled), (expected, Poll::Pending), "round {round}");
        assert_eq!(
            census(&ctx).waiters,
            2,
            "round {round}: the waker is registered"
        );
        drop(done);
        assert_eq!(census(&ctx).waiters, 1, "round {round}");
    }
    drop(lone);
    assert!(census(&ctx).is_clean());
    let mut done = Box::pin(ctx.done());
    assert_eq!(poll_once(done.as_mut()), Poll::Pending);
    cancel.cancel();
    assert_eq!(poll_once(done.as_mut()), Poll::Ready(Error::Canceled));
}

#[test]
fn cancelling_wakes_four_waiters_without_allocating() {
    let (ctx, cancel) = Context::background().with_cancel();
    let mut waiters: Vec<_> = (0..4).map(|_| Box::pin(ctx.done())).collect();
    for done in &mut waiters {
        assert_eq!(poll_once(done.as_mut()), Poll::Pending);
    }
    assert_eq!(census(&ctx).waiters, 4);
    let (n, ()) = allocations(|| cancel.cancel());
    assert_eq!(n, 0);
    for done in &mut waiters {
        assert_eq!(poll_once(done.as_mut()), Poll::Ready(Error::Canceled));
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_in_a_tokio_runtime_allocates_nothing_once_its_wheel_is_made() {
    let (root, _cancel_root) = Context::background().with_cancel();
    drop(root.with_cancel()); // keep a spare scope: a lone leaf, which never took its lock
    let (n, (ctx, cancel)) = allocations(|| root.with_timeout(Duration::from_secs(1)));
    assert_eq!(
        n, 6,
        "this thread's wheel for this runtime (the wheel, its buckets, its Tokio timer and that \
         timer's waker), the scope's lock and the root's lock; the scope reuses the spare"
    );
    assert_eq!(census(&root).timers, 1);
    drop((ctx, cancel)); // kept again, its lock with it; the wheel keeps its room
    let (n, (ctx, _cancel)) = allocations(|| root.with_timeout(Duration::from_secs(1)));
    assert_eq!(
        n, 0,
        "the kept scope and its lock, a wheel slot, the wheel's timer armed"
    );
    assert_eq!(census(&root).timers, 1);
    assert_eq!(ctx.done().await, Error::DeadlineExceeded);
}
