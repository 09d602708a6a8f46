//! Cancellation: how a cancel travels down the tree (and never up), what the handles do, how
//! `done()` futures are woken, and when `after_func` callbacks run.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use futures::FutureExt;
use futures::task::ArcWake;
use taskctx::testing::census;
use taskctx::{AfterFunc, CancelHandle, Context, Error};
use tokio_util::sync::CancellationToken;

/// A waker that counts how often it was woken.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl ArcWake for CountingWaker {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_waker() -> (Arc<CountingWaker>, Waker) {
    let counter = Arc::new(CountingWaker::default());
    (counter.clone(), futures::task::waker(counter))
}

fn wakes(counter: &CountingWaker) -> usize {
    counter.0.load(Ordering::SeqCst)
}

fn poll_with<F: Future + Unpin>(future: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(future).poll(&mut TaskContext::from_waker(waker))
}

/// A callback counter shared with `after_func` closures.
fn counter() -> (Arc<AtomicUsize>, impl Fn() -> usize) {
    let count = Arc::new(AtomicUsize::new(0));
    let read = count.clone();
    (count, move || read.load(Ordering::SeqCst))
}

// ---------------------------------------------------------------------------------------------
// Propagation down the tree
// ---------------------------------------------------------------------------------------------

#[test]
fn parent_cancel_reaches_grandchild_before_cancel_returns() {
    let (parent, cancel) = Context::background().with_cancel();
    let (child, _cancel_child) = parent.with_cancel();
    let (grandchild, _cancel_grandchild) = child.with_cancel();

    cancel.cancel();

    assert_eq!(parent.err(), Some(Error::Canceled));
    assert_eq!(child.err(), Some(Error::Canceled));
    assert_eq!(grandchild.err(), Some(Error::Canceled));
    assert!(grandchild.is_done());
}

#[test]
fn parent_cancel_reaches_every_link_of_a_deep_chain_of_cancel_and_value_layers() {
    const DEPTH: usize = 10_000;
    let (root, cancel) = Context::background().with_cancel();
    let mut handles: Vec<CancelHandle> = Vec::with_capacity(DEPTH);
    let mut chain = Vec::with_capacity(DEPTH);
    let mut current = root.clone();
    for depth in 0..DEPTH {
        current = if depth % 2 == 0 {
            let (ctx, handle) = current.with_cancel();
            handles.push(handle);
            ctx
        } else {
            current.with_value(depth)
        };
        chain.push(current.clone());
    }
    assert!(chain.iter().all(|ctx| !ctx.is_done()));

    cancel.cancel();

    let live = chain.iter().filter(|ctx| !ctx.is_done()).count();
    assert_eq!(live, 0, "every layer is done when cancel() returns");
    assert!(chain.iter().all(|ctx| ctx.err() == Some(Error::Canceled)));
}

#[test]
fn parent_cancel_reaches_every_node_of_a_wide_tree() {
    let (root, cancel) = Context::background().with_cancel();
    let mut handles = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..200 {
        let (child, handle) = root.with_cancel();
        handles.push(handle);
        for _ in 0..10 {
            let (grandchild, handle) = child.with_cancel();
            handles.push(handle);
            nodes.push(grandchild.with_value("leaf"));
        }
        nodes.push(child);
    }
    assert_eq!(census(&root).contexts, 200 * 11);

    cancel.cancel();

    assert!(nodes.iter().all(|ctx| ctx.err() == Some(Error::Canceled)));
    assert_eq!(
        census(&root).contexts,
        0,
        "a done tree keeps nothing registered"
    );
}

#[tokio::test(start_paused = true)]
async fn parent_cancel_reaches_through_mixed_value_cancel_deadline_token_and_merge_layers() {
    let (root, cancel) = Context::background().with_cancel_cause();
    let (side, _cancel_side) = Context::todo().with_cancel();
    let token = CancellationToken::new();

    let a = root.with_value(1u8);
    let (b, _cb) = a.with_timeout(Duration::from_secs(3600));
    let c = b.with_value("two");
    let d = c.merge(&side);
    let e = d.with_token(token.clone());
    let (f, _cf) = e.with_cancel_cause();
    let g = f.with_value(3u64);
    let layers = [a, b, c, d, e, f, g];
    assert!(layers.iter().all(|ctx| !ctx.is_done()));

    cancel.cancel("root gone");

    for ctx in &layers {
        assert_eq!(ctx.err(), Some(Error::Canceled), "{ctx}");
        assert_eq!(ctx.cause().unwrap().to_string(), "root gone", "{ctx}");
    }
    assert!(!side.is_done(), "the merge's other parent is untouched");
    assert!(!token.is_cancelled(), "the foreign token is untouched");
}

#[test]
fn parent_cancel_does_not_cross_without_cancel() {
    let (parent, cancel) = Context::background().with_cancel();
    let detached = parent.without_cancel();
    let (below, _cancel_below) = detached.with_cancel();

    cancel.cancel();

    assert!(parent.is_done());
    assert!(!detached.is_done());
    assert!(!below.is_done());
}

#[test]
fn child_cancel_never_reaches_parent() {
    let (parent, _cancel_parent) = Context::background().with_cancel();
    let valued = parent.with_value(7u32);
    let (child, cancel_child) = valued.with_cancel();

    cancel_child.cancel();

    assert!(child.is_done());
    assert_eq!(parent.err(), None);
    assert_eq!(valued.err(), None);
    assert!(parent.cause().is_none());
}

#[test]
fn child_cancel_never_reaches_siblings_or_their_descendants() {
    let (parent, _cancel_parent) = Context::background().with_cancel();
    let (left, cancel_left) = parent.with_cancel();
    let (right, _cancel_right) = parent.with_cancel();
    let (right_child, _cancel_right_child) = right.with_cancel();
    let right_value = right_child.with_value("x");
    let (left_child, _cancel_left_child) = left.with_cancel();

    cancel_left.cancel();

    assert!(left.is_done());
    assert!(left_child.is_done());
    assert!(!right.is_done());
    assert!(!right_child.is_done());
    assert!(!right_value.is_done());
    assert!(!parent.is_done());
    assert_eq!(census(&parent).contexts, 2, "right and right_child stay");
}

#[test]
fn cancel_is_idempotent() {
    let (ctx, cancel) = Context::background().with_cancel();
    let (runs, ran) = counter();
    let _registration = ctx.after_func(move || {
        runs.fetch_add(1, Ordering::SeqCst);
    });

    cancel.cancel();
    cancel.cancel();
    cancel.cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(ran(), 1, "the second cancel does nothing");

    drop(cancel);
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(ran(), 1, "dropping an already used handle does nothing");
}

#[test]
fn cancel_cause_is_idempotent() {
    let (ctx, cancel) = Context::background().with_cancel_cause();
    let (runs, ran) = counter();
    let _registration = ctx.after_func(move || {
        runs.fetch_add(1, Ordering::SeqCst);
    });

    cancel.cancel("once");
    cancel.cancel("twice");
    drop(cancel);

    assert_eq!(ran(), 1);
    assert_eq!(ctx.cause().unwrap().to_string(), "once");
}

// ---------------------------------------------------------------------------------------------
// Handles
// ---------------------------------------------------------------------------------------------

#[test]
fn dropping_the_handle_cancels_the_context_and_its_descendants() {
    let (ctx, cancel) = Context::background().with_cancel();
    let (child, _cancel_child) = ctx.with_cancel();
    assert!(!ctx.is_done());

    drop(cancel);

    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(child.err(), Some(Error::Canceled));
}

#[test]
fn dropping_the_cause_handle_cancels_the_context() {
    let (ctx, cancel) = Context::background().with_cancel_cause();
    drop(cancel);
    assert_eq!(ctx.err(), Some(Error::Canceled));
}

#[test]
fn underscore_binding_drops_the_handle_and_cancels_at_once() {
    let (ctx, _) = Context::background().with_cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled));

    let (ctx, _) = Context::background().with_cancel_cause();
    assert_eq!(ctx.err(), Some(Error::Canceled));
}

#[tokio::test(start_paused = true)]
async fn underscore_binding_of_a_timeout_handle_cancels_at_once_with_canceled() {
    let (ctx, _) = Context::background().with_timeout(Duration::from_secs(10));
    assert_eq!(ctx.err(), Some(Error::Canceled));

    // Every `with_*` that returns a handle, as its docs say; `_cancel` keeps the handle.
    let root = Context::background();
    let at = tokio::time::Instant::now() + Duration::from_secs(10);
    let ten = Duration::from_secs(10);
    let (ctx, _) = root.with_deadline(at);
    assert!(ctx.is_done());
    let (ctx, _) = root.with_deadline_cause(at, "slow");
    assert!(ctx.is_done());
    let (ctx, _) = root.with_timeout_cause(ten, "slow");
    assert!(ctx.is_done());
    let (ctx, _cancel) = root.with_timeout_cause(ten, "slow");
    assert!(!ctx.is_done());
}

#[test]
fn disarm_keeps_the_context_alive_and_the_parent_still_cancels_it() {
    let (parent, cancel_parent) = Context::background().with_cancel();
    let (child, cancel_child) = parent.with_cancel();

    cancel_child.disarm();
    assert!(!child.is_done(), "disarm does not cancel");
    assert_eq!(
        census(&parent).contexts,
        1,
        "still registered in its parent"
    );

    cancel_parent.cancel();
    assert_eq!(child.err(), Some(Error::Canceled));
}

#[test]
fn disarmed_cause_handle_keeps_the_context_alive_and_the_parent_still_cancels_it() {
    let (parent, cancel_parent) = Context::background().with_cancel_cause();
    let (child, cancel_child) = parent.with_cancel_cause();

    cancel_child.disarm();
    assert!(!child.is_done());

    cancel_parent.cancel("parent");
    assert_eq!(child.err(), Some(Error::Canceled));
    assert_eq!(child.cause().unwrap().to_string(), "parent");
}

#[test]
fn disarmed_context_leaves_nothing_registered_once_its_clones_are_dropped() {
    let (parent, _cancel_parent) = Context::background().with_cancel();
    let (child, cancel_child) = parent.with_cancel();
    cancel_child.disarm();
    let (grandchild, cancel_grandchild) = child.with_value(1u8).with_cancel();
    cancel_grandchild.disarm();
    assert_eq!(census(&parent).contexts, 2);

    drop(child);
    assert_eq!(census(&parent).contexts, 2, "the grandchild still holds it");
    drop(grandchild);
    assert!(census(&parent).is_clean(), "{}", census(&parent));
}

#[tokio::test(start_paused = true)]
async fn deriving_from_a_done_parent_gives_a_done_child_with_the_parents_err_and_cause() {
    let (parent, cancel) = Context::background().with_cancel_cause();
    cancel.cancel("parent gone");

    let (c1, _h1) = parent.with_cancel();
    let (c2, _h2) = parent.with_cancel_cause();
    let (c3, _h3) = parent.with_timeout(Duration::from_secs(60));
    let (c4, _h4) = parent.with_deadline_cause(
        tokio::time::Instant::now() + Duration::from_secs(60),
        "own deadline",
    );
    let c5 = parent.with_value(5u8);
    let c6 = parent.merge(&Context::background());
    let c7 = Context::background().merge(&parent);
    let c8 = parent.with_token(CancellationToken::new());

    for child in [c1, c2, c3, c4, c5, c6, c7, c8] {
        assert_eq!(child.err(), Some(Error::Canceled), "{child}");
        assert_eq!(child.cause().unwrap().to_string(), "parent gone", "{child}");
        assert_eq!(child.done().now_or_never(), Some(Error::Canceled));
    }
}

#[tokio::test(start_paused = true)]
async fn deriving_from_a_parent_whose_deadline_fired_gives_a_deadline_exceeded_child() {
    let (parent, _cancel) =
        Context::background().with_timeout_cause(Duration::from_secs(1), "too slow");
    assert_eq!(parent.done().await, Error::DeadlineExceeded);

    let (child, _cancel_child) = parent.with_cancel();

    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    assert_eq!(child.cause().unwrap().to_string(), "too slow");
}

#[test]
fn cancel_from_another_thread_reaches_every_descendant_before_cancel_returns() {
    let (root, cancel) = Context::background().with_cancel();
    let mut handles = Vec::new();
    let mut nodes = Vec::new();
    let mut current = root.clone();
    for _ in 0..100 {
        let (ctx, handle) = current.with_cancel();
        handles.push(handle);
        nodes.push(ctx.clone());
        current = ctx;
    }

    let all_done_on_return = std::thread::spawn(move || {
        cancel.cancel();
        nodes.iter().all(Context::is_done)
    })
    .join()
    .unwrap();

    assert!(all_done_on_return);
    assert!(current.is_done());
}

#[tokio::test(start_paused = true)]
async fn deadline_cancels_the_subtree_at_the_deadline_and_not_before() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(5));
    let (child, _cancel_child) = ctx.with_value(1u8).with_cancel();

    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert!(!ctx.is_done());
    assert!(!child.is_done());

    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
}

// ---------------------------------------------------------------------------------------------
// done() and done_owned()
// ---------------------------------------------------------------------------------------------

#[test]
fn done_wakes_its_waker_on_cancel() {
    let (ctx, cancel) = Context::background().with_cancel();
    let (counter, waker) = counting_waker();
    let mut done = ctx.done();
    assert_eq!(poll_with(&mut done, &waker), Poll::Pending);
    assert_eq!(wakes(&counter), 0);

    cancel.cancel();

    assert_eq!(wakes(&counter), 1, "woken before cancel() returned");
    assert_eq!(poll_with(&mut done, &waker), Poll::Ready(Error::Canceled));
}

#[test]
fn done_wakes_when_an_ancestor_is_cancelled() {
    let (root, cancel) = Context::background().with_cancel();
    let (child, _cancel_child) = root.with_value("v").with_cancel();
    let leaf = child.with_value(2u8);
    let (counter, waker) = counting_waker();
    let mut done = leaf.done();
    assert_eq!(poll_with(&mut done, &waker), Poll::Pending);

    cancel.cancel();

    assert_eq!(wakes(&counter), 1);
    assert_eq!(poll_with(&mut done, &waker), Poll::Ready(Error::Canceled));
}

#[test]
fn done_polled_again_after_ready_is_ready_again() {
    let (waker_counter, waker) = counting_waker();
    // A lone child (its `done()` would wait in the parent), a linked one, and a root.
    let (root, cancel_root) = Context::background().with_cancel();
    let (lone, _cancel_lone) = root.with_cancel();
    let (linked, _cancel_linked) = root.with_cancel();
    let (_grandchild, _cancel_grandchild) = linked.with_cancel();
    let mut futures = [root.done(), lone.done(), linked.done()];
    for done in &mut futures {
        assert_eq!(poll_with(done, &waker), Poll::Pending);
    }

    cancel_root.cancel();

    for done in &mut futures {
        assert_eq!(poll_with(done, &waker), Poll::Ready(Error::Canceled));
        assert_eq!(
            poll_with(done, &waker),
            Poll::Ready(Error::Canceled),
            "same answer"
        );
    }
    drop(futures); // after `Ready`: nothing of theirs is registered, nothing is forgotten
    assert_eq!(wakes(&waker_counter), 3);
    let mut owned = root.done_owned();
    assert_eq!(poll_with(&mut owned, &waker), Poll::Ready(Error::Canceled));
    assert_eq!(poll_with(&mut owned, &waker), Poll::Ready(Error::Canceled));
}

#[test]
fn done_owned_wakes_its_waker_on_cancel() {
    let (ctx, cancel) = Context::background().with_cancel();
    let (counter, waker) = counting_waker();
    let mut done = ctx.done_owned();
    drop(ctx);
    assert_eq!(poll_with(&mut done, &waker), Poll::Pending);

    cancel.cancel();

    assert_eq!(wakes(&counter), 1);
    assert_eq!(poll_with(&mut done, &waker), Poll::Ready(Error::Canceled));
}

#[tokio::test(start_paused = true)]
async fn done_owned_in_a_spawned_task_completes_on_cancel() {
    let (ctx, cancel) = Context::background().with_cancel();
    let watcher = tokio::spawn(ctx.done_owned());
    tokio::task::yield_now().await;
    assert!(!watcher.is_finished());

    cancel.cancel();

    assert_eq!(watcher.await.unwrap(), Error::Canceled);
}

#[tokio::test(start_paused = true)]
async fn cancelled_owned_completes_with_unit_on_cancel_and_on_deadline() {
    let (ctx, cancel) = Context::background().with_cancel();
    let shutdown = tokio::spawn(ctx.cancelled_owned());
    drop(ctx);
    tokio::task::yield_now().await;
    assert!(!shutdown.is_finished());
    cancel.cancel();
    shutdown.await.unwrap();

    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(2));
    let started = tokio::time::Instant::now();
    ctx.cancelled_owned().await;
    assert_eq!(started.elapsed(), Duration::from_secs(2));

    let (never, _keep) = Context::background().with_cancel();
    let pending = tokio::time::timeout(Duration::from_secs(60), never.cancelled_owned()).await;
    assert!(pending.is_err(), "a live context's signal does not fire");
}

#[tokio::test(start_paused = true)]
async fn done_completes_with_deadline_exceeded_when_the_deadline_fires() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(2));
    assert_eq!(ctx.done().await, Error::DeadlineExceeded);
    assert_eq!(ctx.done_owned().await, Error::DeadlineExceeded);
}

#[test]
fn done_and_done_owned_are_ready_at_once_when_already_done() {
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();

    assert_eq!(ctx.done().now_or_never(), Some(Error::Canceled));
    assert_eq!(ctx.done_owned().now_or_never(), Some(Error::Canceled));
    assert_eq!(
        ctx.with_value(1u8).done().now_or_never(),
        Some(Error::Canceled)
    );
}

#[test]
fn dropping_a_pending_done_future_deregisters_it_and_a_new_one_still_wakes() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_cancel();
    let (first_counter, first_waker) = counting_waker();
    let mut first = ctx.done();
    assert_eq!(poll_with(&mut first, &first_waker), Poll::Pending);
    assert_eq!(census(&root).waiters, 1);

    drop(first);
    assert_eq!(
        census(&root).waiters,
        0,
        "a dropped future leaves no waiter"
    );

    let (second_counter, second_waker) = counting_waker();
    let mut second = ctx.done();
    assert_eq!(poll_with(&mut second, &second_waker), Poll::Pending);

    cancel.cancel();

    assert_eq!(wakes(&second_counter), 1);
    assert_eq!(wakes(&first_counter), 0, "the dropped future is not woken");
    assert_eq!(
        poll_with(&mut second, &second_waker),
        Poll::Ready(Error::Canceled)
    );
}

#[test]
fn dropping_a_pending_done_owned_future_deregisters_it_and_a_new_one_still_wakes() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_cancel();
    let (_, first_waker) = counting_waker();
    let mut first = ctx.done_owned();
    assert_eq!(poll_with(&mut first, &first_waker), Poll::Pending);
    drop(first);
    assert_eq!(census(&root).waiters, 0);

    let (counter, waker) = counting_waker();
    let mut second = ctx.done_owned();
    assert_eq!(poll_with(&mut second, &waker), Poll::Pending);
    cancel.cancel();

    assert_eq!(wakes(&counter), 1);
    assert_eq!(poll_with(&mut second, &waker), Poll::Ready(Error::Canceled));
}

#[test]
fn done_polled_with_two_wakers_wakes_the_latest() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_cancel();
    let (_, old_waker) = counting_waker();
    let (new_counter, new_waker) = counting_waker();
    let mut done = ctx.done();

    assert_eq!(poll_with(&mut done, &old_waker), Poll::Pending);
    assert_eq!(poll_with(&mut done, &new_waker), Poll::Pending);
    assert_eq!(
        census(&root).waiters,
        1,
        "re-polling replaces the registration"
    );

    cancel.cancel();

    assert_eq!(wakes(&new_counter), 1);
    assert_eq!(
        poll_with(&mut done, &new_waker),
        Poll::Ready(Error::Canceled)
    );
}

#[test]
fn done_owned_polled_with_two_wakers_wakes_the_latest() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_cancel();
    let (_, old_waker) = counting_waker();
    let (new_counter, new_waker) = counting_waker();
    let mut done = ctx.done_owned();

    assert_eq!(poll_with(&mut done, &old_waker), Poll::Pending);
    assert_eq!(poll_with(&mut done, &new_waker), Poll::Pending);
    assert_eq!(census(&root).waiters, 1);

    cancel.cancel();

    assert_eq!(wakes(&new_counter), 1);
}

#[test]
fn done_on_background_and_todo_never_completes() {
    let (counter, waker) = counting_waker();
    for ctx in [Context::background(), Context::todo(), Context::default()] {
        let mut done = ctx.done();
        assert_eq!(poll_with(&mut done, &waker), Poll::Pending);
        assert_eq!(poll_with(&mut done, &waker), Poll::Pending);
        let mut owned = ctx.done_owned();
        assert_eq!(poll_with(&mut owned, &waker), Poll::Pending);
        assert!(ctx.done().now_or_never().is_none());
    }
    assert_eq!(wakes(&counter), 0);
}

#[test]
fn done_below_without_cancel_never_completes_even_after_the_parent_is_cancelled() {
    let (parent, cancel) = Context::background().with_cancel();
    let detached = parent.without_cancel();
    let (counter, waker) = counting_waker();
    let mut done = detached.done();
    assert_eq!(poll_with(&mut done, &waker), Poll::Pending);

    cancel.cancel();

    assert_eq!(wakes(&counter), 0);
    assert_eq!(poll_with(&mut done, &waker), Poll::Pending);
    assert!(detached.done_owned().now_or_never().is_none());
}

/// A waker that runs a check when woken.
struct CheckingWaker(Box<dyn Fn() + Send + Sync>);

impl ArcWake for CheckingWaker {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        (arc_self.0)();
    }
}

#[test]
fn a_leaf_waiter_wakes_during_the_walk_and_the_others_once_their_subtree_is_done() {
    // Three children of one root, each awaited: two leaves, and one with a child of its own.
    // The walk finishes one leaf before it reaches the other: that leaf's waiter wakes then,
    // with the other leaf still live. The waiters of the root and of the inner child wake at
    // the end of the walk, with everything done.
    let (root, cancel) = Context::background().with_cancel();
    let (a, _cancel_a) = root.with_cancel();
    let (b, _cancel_b) = root.with_cancel();
    let (c, _cancel_c) = root.with_cancel();
    // A context registers in its parent once a child is derived from it (or something
    // registers in it; a `done()` future of a lone context waits in the parent instead): `a`,
    // `b`, then `c` (as `c_child` is derived), the order the walk takes them in reverse.
    for leaf in [&a, &b] {
        drop(leaf.with_cancel());
    }
    let (c_child, _cancel_c_child) = c.with_cancel();
    // Registered in `c` too, so that the walk goes below `c`.
    drop(c_child.with_cancel());
    // Per waiter: (its own subtree done, the whole tree done), as seen when woken.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let everything = vec![
        root.clone(),
        a.clone(),
        b.clone(),
        c.clone(),
        c_child.clone(),
    ];
    let mut futures = Vec::new();
    for (name, ctx, own) in [
        ("a", &a, vec![a.clone()]),
        ("b", &b, vec![b.clone()]),
        ("c", &c, vec![c.clone(), c_child.clone()]),
        ("root", &root, everything.clone()),
    ] {
        let (seen, everything) = (seen.clone(), everything.clone());
        let waker = futures::task::waker(Arc::new(CheckingWaker(Box::new(move || {
            let own = own.iter().all(Context::is_done);
            let all = everything.iter().all(Context::is_done);
            seen.lock().unwrap().push((name, own, all));
        }))));
        let mut done = ctx.done();
        assert!(poll_with(&mut done, &waker).is_pending());
        futures.push(done);
    }
    cancel.cancel();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "every waiter woken once: {seen:?}");
    assert!(
        seen.iter().all(|&(_, own, _)| own),
        "a subtree done first: {seen:?}"
    );
    let early: Vec<_> = seen.iter().filter(|&&(_, _, all)| !all).collect();
    assert!(
        early.len() == 1 && ["a", "b"].contains(&early[0].0),
        "one leaf woken before the walk reached the other: {seen:?}"
    );
    let last: Vec<_> = seen[2..].iter().map(|&(name, ..)| name).collect();
    assert!(last.contains(&"root") && last.contains(&"c"), "{seen:?}");
}

/// A `done()` future of a lone context (a child nothing else registers in) waits in the
/// parent, and the child makes no lock of its own. It is woken by the child's own cancel and
/// by the parent's, takes the newest waker, leaves nothing behind when dropped, and moves into
/// the child (woken once, to poll again) when the child links.
#[test]
fn a_lone_contexts_done_future_waits_in_its_parent() {
    let (root, cancel_root) = Context::background().with_cancel();

    // Woken by the child's own cancel.
    let (child, cancel_child) = root.with_cancel();
    let (counter, waker) = counting_waker();
    let mut done = child.done();
    assert_eq!(poll_with(&mut done, &waker), Poll::Pending);
    let (in_root, in_child) = (census(&root), census(&child));
    assert_eq!((in_root.contexts, in_root.waiters), (1, 1));
    assert_eq!(in_child.waiters, 1);
    cancel_child.cancel();
    assert_eq!(wakes(&counter), 1);
    assert_eq!(
        census(&root).waiters,
        0,
        "taken out of the parent by the child's cancel"
    );
    assert_eq!(poll_with(&mut done, &waker), Poll::Ready(Error::Canceled));
    drop(done);
    drop(child);

    // The newest waker is the one woken; a dropped future leaves nothing.
    let (child, _cancel_child) = root.with_cancel();
    let (old, old_waker) = counting_waker();
    let (new, new_waker) = counting_waker();
    let mut done = child.done();
    assert_eq!(poll_with(&mut done, &old_waker), Poll::Pending);
    assert_eq!(poll_with(&mut done, &new_waker), Poll::Pending);
    assert_eq!(census(&root).waiters, 1, "replaced in place");
    let mut dropped = child.done();
    assert_eq!(poll_with(&mut dropped, &old_waker), Poll::Pending);
    assert_eq!(census(&root).waiters, 1, "a second future linked the child");
    assert_eq!(
        wakes(&new),
        1,
        "the first future woken to register in the child"
    );
    assert_eq!(poll_with(&mut done, &new_waker), Poll::Pending);
    assert_eq!(census(&child).waiters, 2);
    drop(dropped);
    assert_eq!(census(&child).waiters, 1);

    // Woken by the parent's cancel; the lone sibling's future with it.
    let (sibling, _cancel_sibling) = root.with_cancel();
    let (by_root, by_root_waker) = counting_waker();
    let mut sibling_done = sibling.done();
    assert_eq!(poll_with(&mut sibling_done, &by_root_waker), Poll::Pending);
    assert_eq!(
        census(&root).waiters,
        2,
        "the child's, in it, and the sibling's, in root"
    );
    cancel_root.cancel();
    assert_eq!((wakes(&new), wakes(&by_root), wakes(&old)), (2, 1, 0));
    assert_eq!(
        poll_with(&mut sibling_done, &by_root_waker),
        Poll::Ready(Error::Canceled)
    );
    assert_eq!(
        poll_with(&mut done, &new_waker),
        Poll::Ready(Error::Canceled)
    );
    drop((sibling_done, done));
    assert!(census(&root).waiters == 0 && census(&child).waiters == 0);
}

#[test]
fn done_futures_leave_no_waiters_behind_once_woken() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_cancel();
    let (_, waker) = counting_waker();
    let mut futures: Vec<_> = (0..5).map(|_| ctx.done_owned()).collect();
    for done in &mut futures {
        assert_eq!(poll_with(done, &waker), Poll::Pending);
    }
    // The first waited in `root` while `ctx` was lone; the second linked `ctx`, which woke the
    // first to register in `ctx` instead, as an executor polls a woken future again.
    assert_eq!(census(&root).waiters, 4);
    assert_eq!(poll_with(&mut futures[0], &waker), Poll::Pending);
    assert_eq!(census(&root).waiters, 5);

    cancel.cancel();
    assert_eq!(census(&root).waiters, 0);
    for done in &mut futures {
        assert_eq!(poll_with(done, &waker), Poll::Ready(Error::Canceled));
    }
}

// ---------------------------------------------------------------------------------------------
// after_func
// ---------------------------------------------------------------------------------------------

#[test]
fn after_func_runs_exactly_once_when_cancelled() {
    let (parent, cancel_parent) = Context::background().with_cancel();
    let (ctx, cancel) = parent.with_cancel();
    let (runs, ran) = counter();
    let _registration = ctx.after_func(move || {
        runs.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(ran(), 0, "not before the context is done");

    cancel.cancel();
    assert_eq!(ran(), 1, "ran before cancel() returned");

    cancel.cancel();
    cancel_parent.cancel();
    drop(cancel);
    drop(ctx);
    assert_eq!(ran(), 1);
}

#[test]
fn after_func_runs_when_an_ancestor_is_cancelled() {
    let (root, cancel) = Context::background().with_cancel();
    let (child, _cancel_child) = root.with_cancel();
    let leaf = child.with_value(9u16);
    let (runs, ran) = counter();
    let _registration = leaf.after_func(move || {
        runs.fetch_add(1, Ordering::SeqCst);
    });

    cancel.cancel();

    assert_eq!(ran(), 1);
}

#[tokio::test(start_paused = true)]
async fn after_func_runs_when_the_deadline_fires() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(1));
    let (runs, ran) = counter();
    let _registration = ctx.after_func(move || {
        runs.fetch_add(1, Ordering::SeqCst);
    });

    ctx.done().await;

    assert_eq!(ran(), 1);
}

#[test]
fn after_func_runs_at_once_when_already_done() {
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    let (runs, ran) = counter();

    let registration = ctx.after_func(move || {
        runs.fetch_add(1, Ordering::SeqCst);
    });

    assert_eq!(ran(), 1, "ran before after_func returned");
    assert!(!registration.stop(), "too late to stop");
    assert_eq!(ran(), 1);
}

#[test]
fn after_func_stop_before_cancel_prevents_the_run_and_returns_true_only_once() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, cancel) = root.with_cancel();
    let (runs, ran) = counter();
    let registration = ctx.after_func(move || {
        runs.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(census(&root).callbacks, 1);

    assert!(registration.stop(), "this call prevented the run");
    assert_eq!(census(&root).callbacks, 0, "the callback is gone");
    assert!(!registration.stop(), "the second stop prevents nothing");

    cancel.cancel();
    assert_eq!(ran(), 0);
    assert!(!registration.stop());
}

#[test]
fn after_func_stop_after_the_run_returns_false() {
    let (ctx, cancel) = Context::background().with_cancel();
    let (runs, ran) = counter();
    let registration = ctx.after_func(move || {
        runs.fetch_add(1, Ordering::SeqCst);
    });
    cancel.cancel();
    assert_eq!(ran(), 1);

    assert!(!registration.stop());
    assert!(!registration.stop());
}

#[test]
fn after_func_stop_from_inside_the_callback_returns_false() {
    let (ctx, cancel) = Context::background().with_cancel();
    let slot: Arc<OnceLock<AfterFunc>> = Arc::new(OnceLock::new());
    let stopped_inside = Arc::new(Mutex::new(None));
    let (slot2, stopped2) = (slot.clone(), stopped_inside.clone());
    let registration = ctx.after_func(move || {
        *stopped2.lock().unwrap() = Some(slot2.get().unwrap().stop());
    });
    assert!(slot.set(registration).is_ok());

    cancel.cancel();

    assert_eq!(*stopped_inside.lock().unwrap(), Some(false));
}

#[test]
fn after_func_callbacks_see_the_whole_subtree_done_when_they_run() {
    let (root, cancel) = Context::background().with_cancel();
    let mut handles = Vec::new();
    let mut subtree = Vec::new();
    for _ in 0..10 {
        let (child, handle) = root.with_cancel();
        handles.push(handle);
        for _ in 0..10 {
            let (grandchild, handle) = child.with_value(0u8).with_cancel();
            handles.push(handle);
            subtree.push(grandchild);
        }
        subtree.push(child);
    }
    subtree.push(root.clone());
    let subtree = Arc::new(subtree);

    // One callback on the root and one on a leaf deep in another branch: both must see every
    // node done, whatever order the cancellation visits them in.
    let observations = Arc::new(Mutex::new(Vec::new()));
    let mut registrations = Vec::new();
    for ctx in [&root, &subtree[0], &subtree[subtree.len() - 2]] {
        let (subtree, observations) = (subtree.clone(), observations.clone());
        registrations.push(ctx.after_func(move || {
            let all_done = subtree.iter().all(Context::is_done);
            observations.lock().unwrap().push(all_done);
        }));
    }

    cancel.cancel();

    assert_eq!(*observations.lock().unwrap(), vec![true, true, true]);
}

#[test]
fn after_func_callbacks_of_a_wide_tree_have_all_run_when_cancel_returns() {
    let (root, cancel) = Context::background().with_cancel();
    let (runs, ran) = counter();
    let mut handles = Vec::new();
    let mut registrations = Vec::new();
    for _ in 0..500 {
        let (child, handle) = root.with_cancel();
        handles.push(handle);
        let runs = runs.clone();
        registrations.push(child.after_func(move || {
            runs.fetch_add(1, Ordering::SeqCst);
        }));
    }

    cancel.cancel();

    assert_eq!(ran(), 500);
}

#[test]
fn after_func_on_background_never_runs_and_stop_returns_true_once() {
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();

    let registration = Context::background().after_func(move || flag.store(true, Ordering::SeqCst));

    assert!(
        registration.stop(),
        "the first stop reports that it prevented the run"
    );
    assert!(!registration.stop());
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(
        Arc::strong_count(&ran),
        1,
        "the callback was dropped unregistered"
    );
}

#[test]
fn after_func_below_without_cancel_never_runs() {
    let (parent, cancel) = Context::background().with_cancel();
    let detached = parent.without_cancel();
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let registration = detached.after_func(move || flag.store(true, Ordering::SeqCst));

    cancel.cancel();

    assert!(!ran.load(Ordering::SeqCst));
    assert!(registration.stop());
    assert!(!registration.stop());
}

#[test]
fn after_func_callback_may_cancel_other_contexts() {
    let (first, cancel_first) = Context::background().with_cancel();
    let (second, cancel_second) = Context::background().with_cancel();
    let (third, cancel_third) = Context::background().with_cancel();
    let _r1 = first.after_func(move || cancel_second.cancel());
    let _r2 = second.after_func(move || drop(cancel_third));

    cancel_first.cancel();

    assert!(second.is_done(), "cancelled from first's callback");
    assert!(third.is_done(), "cancelled from second's callback");
}

#[test]
fn after_func_panic_is_contained_and_other_callbacks_still_run() {
    let (ctx, cancel) = Context::background().with_cancel();
    let (runs, ran) = counter();
    let runs_before = runs.clone();
    let _before = ctx.after_func(move || {
        runs_before.fetch_add(1, Ordering::SeqCst);
    });
    let _panics = ctx.after_func(|| panic!("callback failure (expected by this test)"));
    let _after = ctx.after_func(move || {
        runs.fetch_add(1, Ordering::SeqCst);
    });

    cancel.cancel();

    assert_eq!(ran(), 2);
    assert!(ctx.is_done());
}
