//! Model checks of the synchronization this crate writes itself, explored by loom over every
//! interleaving (up to `LOOM_MAX_PREEMPTIONS` preemptions):
//!
//! ```sh
//! LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" cargo test --lib --release loom
//! ```
//!
//! Each model races two or three threads over one of the tree's protocols (see the header of
//! `tree/mod.rs`): the lock-free finish against registration, publishing a custom cause, linking a
//! child or a merge while a parent is cancelled, a `done()` future registering its waker while
//! the context is cancelled or going away, `AfterFunc::stop` against the callback, and
//! installing a token watch or a mirror token (`Context::token`) in a scope being cancelled,
//! a worker wheel's timer that fires before the wheel has stored it, the fallback timer
//! thread told of an earlier deadline while it sleeps, a child's last handles let go of it
//! (leaving its parent before it is taken apart) while the parent is cancelled, a handle
//! dropped before its context (its lock-free cancel, then the context's drop keeping the scope
//! for reuse) while the parent is cancelled, and a child
//! registering in a shard of a parent being cancelled, and two first registrations racing to
//! make a scope's lock.
//!
//! Only the crate's own state byte and locks are loom's: tokio-util's `CancellationToken` is
//! not instrumented, so the models that use one check what the scope holds, not the token's
//! internals. A token watch is the one `Source` that can be built under loom (a deadline needs
//! Tokio's timer or the fallback timer thread); deadlines reach the same `Scope::set_source`.
//! A foreign token cancelled while `with_token` watches it is not modelled: the edge from the
//! watch's registration to its waker runs through tokio-util's std locks, which loom cannot
//! see, so loom explores one interleaving, or with a yield reports a causality violation in
//! `Scope::finish` that is not there.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{self, Wake, Waker};

use loom::future::block_on;
use loom::thread;
use tokio_util::sync::CancellationToken;

use crate::source::{self, Fallback};
use crate::testing::census;
use crate::tree::node::Node;
use crate::tree::{Expiry, Scope};
use crate::wheel::{Wheel, loom_timer};
use crate::{Cause, Context, Error};

/// `pair`, with its context registered in its parent rather than lone (see
/// `tree/lone.rs`), as it is once anything registers in it (a lone context's `done()` future waits
/// in the parent instead, and does not link it).
fn linked<T>(pair: (Context, T)) -> (Context, T) {
    pair.0.scope().unwrap().link_first();
    pair
}

#[test]
fn loom_cancel_races_deriving_a_child() {
    loom::model(|| {
        let (parent, cancel) = Context::background().with_cancel_cause();
        let deriver = {
            let parent = parent.clone();
            thread::spawn(move || parent.with_cancel())
        };
        cancel.cancel("shutting down");
        let (child, _cancel_child) = deriver.join().unwrap();
        // Either the child was registered and reached, or it was born done: never lost.
        assert_eq!(child.err(), Some(Error::Canceled));
        assert_eq!(child.cause().unwrap().to_string(), "shutting down");
        assert!(census(&parent).is_clean());
    });
}

#[test]
fn loom_cancel_races_a_waiting_done_future() {
    loom::model(|| {
        let (ctx, cancel) = Context::background().with_cancel();
        let waiter = {
            let ctx = ctx.clone();
            thread::spawn(move || block_on(ctx.done()))
        };
        cancel.cancel();
        // A lost wake-up would leave the waiter blocked: loom reports that as a deadlock.
        assert_eq!(waiter.join().unwrap(), Error::Canceled);
    });
}

#[test]
fn loom_a_leaf_waiter_woken_during_the_walk_and_a_cancel_from_its_thread() {
    loom::model(|| {
        // The walk reaches the leaf `child` first (the last registered) and wakes its waiter
        // then, while it still walks `sibling`'s subtree and holds the root's `PROPAGATING`
        // bit. The woken thread cancels the root once more: that call waits for the walk,
        // so when it returns everything is done.
        let (root, cancel) = Context::background().with_cancel();
        let cancel = Arc::new(cancel);
        let (sibling, _cancel_sibling) = root.with_cancel();
        let (nephew, _cancel_nephew) = linked(sibling.with_cancel());
        let (child, _cancel_child) = root.with_cancel();
        let waiter = {
            let cancel = cancel.clone();
            thread::spawn(move || {
                let err = block_on(child.done());
                cancel.cancel();
                assert!(sibling.is_done() && nephew.is_done() && root.is_done());
                err
            })
        };
        cancel.cancel();
        assert_eq!(waiter.join().unwrap(), Error::Canceled);
    });
}

#[test]
fn loom_cause_is_never_seen_before_the_error_or_torn() {
    loom::model(|| {
        let (ctx, cancel) = Context::background().with_cancel_cause();
        let reader = {
            let ctx = ctx.clone();
            thread::spawn(move || {
                let err = ctx.err();
                let cause = ctx.cause().map(|cause| cause.to_string());
                (err, cause)
            })
        };
        cancel.cancel("custom cause");
        match reader.join().unwrap() {
            (None, None) => {}
            (Some(Error::Canceled), Some(cause)) => assert_eq!(cause, "custom cause"),
            (None, Some(cause)) => assert_eq!(cause, "custom cause"), // read after the error
            other => panic!("inconsistent read: {other:?}"),
        }
    });
}

#[test]
fn loom_two_cancellations_agree_on_one_cause() {
    loom::model(|| {
        let (parent, cancel) = Context::background().with_cancel_cause();
        let (child, _cancel_child) = parent.with_cancel();
        let cancel = Arc::new(cancel);
        let other = {
            let cancel = cancel.clone();
            thread::spawn(move || cancel.cancel("second"))
        };
        cancel.cancel("first");
        other.join().unwrap();
        let cause = parent.cause().unwrap().to_string();
        assert!(cause == "first" || cause == "second");
        assert_eq!(child.cause().unwrap().to_string(), cause);
    });
}

#[test]
fn loom_lock_free_cancel_races_a_custom_cause_cancel() {
    loom::model(|| {
        let (ctx, cancel) = Context::background().with_cancel_cause();
        let cancel = Arc::new(cancel);
        let plain = {
            let cancel = cancel.clone();
            // Dropping the last handle would also cancel; `cancel(Error)` is the plain path.
            thread::spawn(move || cancel.cancel(Error::Canceled))
        };
        cancel.cancel("custom");
        plain.join().unwrap();
        let cause = ctx.cause().unwrap();
        assert_eq!(ctx.err(), Some(Error::Canceled));
        assert!(cause.to_string() == "custom" || cause.is::<Error>());
    });
}

#[test]
fn loom_merge_links_while_a_parent_is_cancelled() {
    loom::model(|| {
        let (left, cancel_left) = Context::background().with_cancel();
        let (right, _cancel_right) = Context::background().with_cancel();
        let merger = {
            let (left, right) = (left.clone(), right.clone());
            thread::spawn(move || left.merge(&right))
        };
        cancel_left.cancel();
        let merged = merger.join().unwrap();
        assert_eq!(merged.err(), Some(Error::Canceled));
        // Done through `left`, the merge must have left `right` too: nothing stays behind.
        assert!(census(&right).is_clean(), "{}", census(&right));
    });
}

#[test]
fn loom_after_func_stop_races_the_callback() {
    loom::model(|| {
        let (ctx, cancel) = Context::background().with_cancel();
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let registration = ctx.after_func(move || flag.store(true, Ordering::SeqCst));
        let canceller = thread::spawn(move || cancel.cancel());
        let stopped = registration.stop();
        canceller.join().unwrap();
        // Exactly one of the two happened.
        assert_ne!(stopped, ran.load(Ordering::SeqCst));
    });
}

/// A lone child (counted in its parent, registered nowhere) cancelled and dropped while its
/// parent is cancelled: it leaves the parent's count exactly once, whichever finish wins.
#[test]
fn loom_parent_cancel_races_a_child_cancel_and_drop() {
    loom::model(|| {
        let (parent, cancel_parent) = Context::background().with_cancel();
        let (child, cancel_child) = parent.with_cancel();
        let dropped = Arc::new(AtomicUsize::new(0));
        let count = dropped.clone();
        let dropper = thread::spawn(move || {
            cancel_child.cancel();
            drop(cancel_child);
            drop(child);
            count.fetch_add(1, Ordering::SeqCst);
        });
        cancel_parent.cancel();
        dropper.join().unwrap();
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        assert!(census(&parent).is_clean());
    });
}

/// A lone child starts waiting (its future waits in the parent, `Scope::wait_lone`) while the
/// parent is cancelled: either the waiter is registered under the live parent's lock, and the
/// parent's finish takes it and wakes it, or the parent refuses it, and the child takes the
/// parent's error and cause. Never a waiter registered where no walk takes it: loom would
/// report the blocked `block_on` as a deadlock.
#[test]
fn loom_a_lone_child_links_to_wait_while_its_parent_is_cancelled() {
    loom::model(|| {
        let (parent, cancel) = Context::background().with_cancel_cause();
        let (child, _cancel_child) = parent.with_cancel();
        let waiter = {
            let child = child.clone();
            thread::spawn(move || block_on(child.done()))
        };
        // A reader that finds the parent done makes the child take its error (`Scope::adopt`)
        // only if the child is still lone then: never a child already linked, whose waiter
        // only the parent's walk wakes.
        let reader = {
            let child = child.clone();
            thread::spawn(move || child.is_done())
        };
        cancel.cancel("shutting down");
        assert_eq!(waiter.join().unwrap(), Error::Canceled);
        reader.join().unwrap();
        assert_eq!(child.cause().unwrap().to_string(), "shutting down");
        assert!(census(&parent).is_clean());
    });
}

/// A lone child's future waits in its parent while the child itself is cancelled, in the
/// parent's lock or in a shard of it: the cancel swaps the waiter's registration out of the
/// child's link after its finish, and the future swaps it in before it returns pending, so
/// either the cancel finds it and wakes it, or the future finds the link closed and sees the
/// child done. Loom reports a lost wake-up as a deadlock.
#[test]
fn loom_a_lone_childs_waiter_in_its_parent_races_the_childs_cancel() {
    for sharded in [false, true] {
        loom::model(move || {
            let (parent, _cancel_parent) = Context::background().with_cancel();
            if sharded {
                parent.scope().unwrap().use_shards();
            }
            let (child, cancel_child) = parent.with_cancel();
            let waiter = {
                let child = child.clone();
                thread::spawn(move || block_on(child.done()))
            };
            cancel_child.cancel();
            assert_eq!(waiter.join().unwrap(), Error::Canceled);
            assert_eq!(census(&parent).waiters, 0, "{}", census(&parent));
        });
    }
}

/// A lone child's future waits in its parent while another thread links the child (derives
/// from it) and the child is cancelled: the link takes the waiter out of the parent and wakes
/// it to register in the child, or finds it gone; the future, woken, registers in the linked
/// child or sees it done. No wake-up is lost and no registration is left in the parent.
#[test]
fn loom_a_lone_childs_waiter_moves_into_it_when_it_links_during_its_cancel() {
    loom::model(|| {
        let (parent, _cancel_parent) = Context::background().with_cancel();
        let (child, cancel_child) = parent.with_cancel();
        let waiter = {
            let child = child.clone();
            thread::spawn(move || block_on(child.done()))
        };
        let linker = {
            let child = child.clone();
            thread::spawn(move || drop(child.with_cancel()))
        };
        cancel_child.cancel();
        assert_eq!(waiter.join().unwrap(), Error::Canceled);
        linker.join().unwrap();
        assert_eq!(census(&parent).waiters, 0, "{}", census(&parent));
    });
}

/// A lone child's future that waited in its parent is dropped while the child is cancelled:
/// its registration is taken out exactly once, by whichever of the two swaps it out of the
/// child's link, and no clone of its waker stays anywhere.
#[test]
fn loom_a_lone_childs_future_dropped_during_its_cancel_leaves_nothing() {
    loom::model(|| {
        let (parent, _cancel_parent) = Context::background().with_cancel();
        let (child, cancel_child) = parent.with_cancel();
        let parked = Arc::new(Parked);
        let waiter = {
            let child = child.clone();
            let waker = Waker::from(parked.clone());
            thread::spawn(move || {
                let mut done = child.done();
                let _ = std::pin::Pin::new(&mut done).poll(&mut task::Context::from_waker(&waker));
                drop(done);
            })
        };
        cancel_child.cancel();
        waiter.join().unwrap();
        assert_eq!(census(&parent).waiters, 0, "{}", census(&parent));
        assert_eq!(
            Arc::strong_count(&parked),
            1,
            "a clone of the waker is still held"
        );
    });
}

/// A lone child's own `cancel()` while the child links (a grandchild is derived from it) and
/// its parent is cancelled: the cancel may find the child lone, then the parent done, and the
/// child linked by then, with the parent's walk still to reach it. It must not return before
/// the child is done: `Scope::cancel_slow` goes on in that case.
#[test]
fn loom_a_lone_childs_cancel_returns_done_while_it_links_and_its_parent_is_cancelled() {
    loom::model(|| {
        let (parent, cancel_parent) = Context::background().with_cancel();
        let (child, cancel_child) = parent.with_cancel();
        let linker = {
            let child = child.clone();
            thread::spawn(move || drop(child.with_cancel()))
        };
        let own = {
            let child = child.clone();
            thread::spawn(move || {
                cancel_child.cancel();
                assert!(child.is_done(), "cancel() returned with the child live");
            })
        };
        cancel_parent.cancel();
        linker.join().unwrap();
        own.join().unwrap();
    });
}

/// A lone child's own cancellation races its parent's while a reader looks at the child: the
/// child ends with one cause, its own or the parent's, and a reader that saw a cause never
/// sees another one later (a query that finds the parent done makes the child take the
/// parent's cause there and then, `Scope::adopt`, so the child's own swap cannot win after).
#[test]
fn loom_a_lone_child_reports_one_cause_while_it_and_its_parent_are_cancelled() {
    loom::model(|| {
        let (parent, cancel_parent) = Context::background().with_cancel_cause();
        let (child, cancel_child) = parent.with_cancel_cause();
        let own = thread::spawn(move || cancel_child.cancel("own"));
        let reader = {
            let child = child.clone();
            thread::spawn(move || {
                let done = child.is_done();
                let cause = child.cause().map(|cause| cause.to_string());
                (done, cause)
            })
        };
        cancel_parent.cancel("parent's");
        own.join().unwrap();
        let (done, seen) = reader.join().unwrap();
        let cause = child.cause().unwrap().to_string();
        assert!(cause == "own" || cause == "parent's");
        if done {
            assert_eq!(
                seen.as_deref(),
                Some(cause.as_str()),
                "done, then no cause or another"
            );
        }
        if let Some(seen) = seen {
            assert_eq!(seen, cause, "one cause seen, then another");
        }
        assert!(census(&parent).is_clean());
    });
}

/// A lone child adopts its parent's custom cause without a copy (invariant 16) while two
/// readers query it and the child's handle is dropped: each reader that sees the error sees
/// the parent's cause with it, a reader never sees a cause without the error being set
/// afterwards, and the child's own plain cancel never replaces the adopted cause.
#[test]
fn loom_a_lone_child_adopts_its_parents_custom_cause_while_read() {
    loom::model(|| {
        let (parent, cancel_parent) = Context::background().with_cancel_cause();
        let (child, cancel_child) = parent.with_cancel();
        let read = |child: Context| {
            thread::spawn(move || {
                let err = child.err();
                let cause = child.cause().map(|cause| cause.to_string());
                (err, cause)
            })
        };
        let first = read(child.clone());
        let second = read(child.clone());
        cancel_parent.cancel("shutting down");
        drop(cancel_child);
        for reader in [first, second] {
            match reader.join().unwrap() {
                (None, None) => {}
                (Some(Error::Canceled), Some(cause)) | (None, Some(cause)) => {
                    assert_eq!(cause, "shutting down")
                }
                other => panic!("inconsistent read: {other:?}"),
            }
        }
        assert_eq!(child.err(), Some(Error::Canceled));
        assert_eq!(child.cause().unwrap().to_string(), "shutting down");
        assert!(census(&parent).is_clean());
    });
}

#[test]
fn loom_every_cancel_returns_after_the_subtree_is_done() {
    loom::model(|| {
        let (parent, cancel_parent) = Context::background().with_cancel();
        let (child, cancel_child) = parent.with_cancel();
        // Registered in `child`, so that the walks below `child` meet (a lone one would be done
        // by its parent's state alone).
        let (grandchild, _cancel_grandchild) = linked(child.with_cancel());
        let cancel_parent = Arc::new(cancel_parent);
        let racers = [0, 1].map(|racer| {
            let grandchild = grandchild.clone();
            let cancel_parent = cancel_parent.clone();
            thread::spawn(move || {
                cancel_parent.cancel();
                // The loser may find the parent done while the winner is still walking.
                assert!(grandchild.is_done(), "racer {racer} returned too early");
            })
        });
        // A third walk, from halfway down, that the parent's walk must wait for.
        cancel_child.cancel();
        assert!(grandchild.is_done());
        for racer in racers {
            racer.join().unwrap();
        }
    });
}

/// `Scope::set_source` against the scope's own cancellation (a token watch renewing itself, or
/// a deadline moving to the fallback timer, while a handle cancels): the finish either takes
/// the source, or `claim` refuses it and `set_source` drops it at once. Without that check a
/// source installed just after the finish would stay in the done scope, armed, for as long as
/// the scope lives: a done scope must hold nothing.
#[test]
fn loom_a_source_installed_during_a_cancel_is_dropped() {
    loom::model(|| {
        let scope = Scope::with_cancel(&Node::Background);
        let watch = source::watch_token(Expiry::of(&scope), CancellationToken::new())
            .expect("a live token");
        // The watch's waker holds the only weak reference to the scope: while the watch is
        // installed the count is 1, and it drops to 0 when the watch is dropped.
        assert_eq!(Arc::weak_count(&scope), 1);
        let installer = {
            let scope = scope.clone();
            thread::spawn(move || scope.set_source(watch))
        };
        scope.cancel(Error::Canceled, Cause::from(Error::Canceled));
        installer.join().unwrap();
        assert!(scope.is_done());
        assert_eq!(
            Arc::weak_count(&scope),
            0,
            "a done scope still holds its source"
        );
    });
}

/// `with_token` while its parent is cancelled: the new scope is linked (and finished by the
/// walk) or born done, and its token watch is installed only if the walk has not yet finished
/// it. The window is between `with_token`'s `is_done` check and `set_source`'s lock; a watch
/// installed in it without `claim`'s refusal would outlive the cancellation.
#[test]
fn loom_a_token_watch_set_while_the_parent_is_cancelled_is_dropped() {
    loom::model(|| {
        let (parent, cancel) = Context::background().with_cancel();
        let deriver = {
            let parent = parent.clone();
            thread::spawn(move || parent.with_token(CancellationToken::new()))
        };
        cancel.cancel();
        let child = deriver.join().unwrap();
        assert_eq!(child.err(), Some(Error::Canceled));
        // The watch's waker and the parent's registration were the only weak references.
        let scope = child.scope().unwrap();
        assert_eq!(
            Arc::weak_count(scope),
            0,
            "a done scope still holds its token watch"
        );
        assert!(census(&parent).is_clean(), "{}", census(&parent));
    });
}

/// A token with a cause fires while the parent is cancelled with another: the child ends with
/// one of the two causes, and a reader that saw the child done saw that same cause (the token
/// scope's fire cause is read under its lock before the finish that publishes it).
#[test]
fn loom_a_token_cause_and_a_parents_cause_race() {
    loom::model(|| {
        let (parent, cancel) = Context::background().with_cancel_cause();
        let token = CancellationToken::new();
        let child = parent.with_token_cause(token.clone(), "token's");
        let firer = thread::spawn(move || token.cancel());
        let reader = {
            let child = child.clone();
            thread::spawn(move || {
                let done = child.is_done();
                (done, child.cause().map(|cause| cause.to_string()))
            })
        };
        cancel.cancel("parent's");
        firer.join().unwrap();
        let (done, seen) = reader.join().unwrap();
        assert_eq!(child.err(), Some(Error::Canceled));
        let cause = child.cause().unwrap().to_string();
        assert!(cause == "token's" || cause == "parent's", "{cause}");
        if done || seen.is_some() {
            assert_eq!(
                seen.as_deref(),
                Some(cause.as_str()),
                "one cause, then another"
            );
        }
        assert!(census(&parent).is_clean(), "{}", census(&parent));
    });
}

/// `Context::token` while an ancestor is cancelled: the token walk installs a mirror in the
/// parent and then in the child, and the cancellation finishes both. Whatever the order, the
/// token handed out is cancelled by the time the cancel has returned, and no live mirror stays
/// in a done scope: `install_mirror` must refuse (and cancel its fresh token) once `claim`
/// says the scope is done, or the caller gets a token that is never cancelled, and so does
/// every later caller, since later tokens hang from the stored mirror.
#[test]
fn loom_a_token_taken_during_a_cancel_is_cancelled() {
    loom::model(|| {
        let (parent, cancel) = Context::background().with_cancel();
        let (child, _cancel_child) = parent.with_cancel();
        let taker = {
            let child = child.clone();
            thread::spawn(move || child.token())
        };
        cancel.cancel();
        let token = taker.join().unwrap();
        assert!(token.is_cancelled(), "a live token from a done context");
        // Each call hangs a new token from the stored mirror, if one is stored.
        assert!(
            child.token().is_cancelled(),
            "a live mirror in the done child"
        );
        assert!(
            parent.token().is_cancelled(),
            "a live mirror in the done parent"
        );
    });
}

/// A waker that does nothing when woken: the strong count of its `Arc` says how many clones of
/// it are alive.
struct Parked;

impl Wake for Parked {
    fn wake(self: Arc<Self>) {}
}

/// A `done()` future polled once (registering its waker) and dropped while the context is
/// cancelled: its registration is either refused (the context is already done), taken and
/// woken by the cancellation, or removed by `forget_waiter`; afterwards no clone of the waker
/// is left anywhere. A registration that slipped in after the finish would never be taken:
/// `forget_waiter` skips a done scope, whose registrations are supposed to be gone.
#[test]
fn loom_a_done_future_dropped_during_a_cancel_leaves_nothing() {
    loom::model(|| {
        let (ctx, cancel) = Context::background().with_cancel();
        let parked = Arc::new(Parked);
        let waiter = {
            let ctx = ctx.clone();
            let waker = Waker::from(parked.clone());
            thread::spawn(move || {
                let mut done = ctx.done();
                // Pending registers the waker; Ready means the cancellation came first.
                let _ = std::pin::Pin::new(&mut done).poll(&mut task::Context::from_waker(&waker));
                drop(done);
            })
        };
        cancel.cancel();
        waiter.join().unwrap();
        assert_eq!(census(&ctx).waiters, 0, "{}", census(&ctx));
        assert_eq!(
            Arc::strong_count(&parked),
            1,
            "a clone of the waker is still held"
        );
    });
}

/// A worker wheel arms a timer with no lock held and stores it afterwards; if the timer fires
/// in between, its `fire` cannot see it. The wheel must then not keep that timer armed: it
/// never wakes again, and every later deadline on the wheel would wait behind it forever.
/// Whenever it fires, the due deadline is taken out exactly once.
#[test]
fn loom_a_wheel_timer_firing_before_it_is_stored_does_not_stall_the_wheel() {
    loom::model(|| {
        let wheel = Wheel::new();
        let scope = Scope::with_cancel(&Node::Background);
        // The stand-in for Tokio's timer driver: fires the timer once it has been started.
        let driver = thread::spawn(|| {
            while !loom_timer::fire_one() {
                thread::yield_now();
            }
        });
        let entry = wheel.insert(&Expiry::of(&scope), wheel.origin());
        driver.join().unwrap();
        assert!(wheel.is_empty(), "the due deadline was taken out");
        assert!(
            !wheel.holds_a_fired_timer(),
            "the wheel keeps a timer that already fired: it would never arm again"
        );
        assert_eq!(
            wheel.slots(),
            1,
            "a fired entry's slot lives as long as its handle"
        );
        drop(entry);
        assert_eq!(wheel.slots(), 0, "and goes with it");
    });
}

/// The fallback timer thread sleeps until its earliest deadline. A deadline queued meanwhile
/// that is earlier (here: due at once) must wake it: either the thread sees it before it
/// sleeps, or `schedule` notifies it. A lost notification leaves the thread asleep on the
/// hour-long deadline, which loom reports as a deadlock (its timed waits never time out).
#[test]
fn loom_an_earlier_deadline_wakes_the_fallback_timer_thread() {
    loom::model(|| {
        let fallback = Arc::new(Fallback::new());
        let scope = Scope::with_cancel(&Node::Background);
        let now = std::time::Instant::now();
        fallback.schedule(
            Expiry::of(&scope),
            now + std::time::Duration::from_secs(3600),
        );
        let thread = {
            let fallback = fallback.clone();
            thread::spawn(move || fallback.run(1))
        };
        let due = fallback.schedule(Expiry::of(&scope), now);
        thread.join().unwrap();
        let queue = fallback.lock();
        assert!(!queue.contains_key(&due), "the due deadline was fired");
        assert_eq!(queue.len(), 1, "the hour-long deadline is still queued");
    });
}

/// The last handle of a child lets go of it (`Scope::recycle`: it leaves its parent first, then
/// takes the scope apart) while the parent is cancelled and another clone of the child is
/// dropped. Whichever order: no deadlock, no registration left behind in the parent, and a
/// sibling still held is cancelled by the parent's walk.
#[test]
fn loom_releasing_a_childs_last_handles_races_the_parents_cancel() {
    loom::model(|| {
        let (parent, cancel) = Context::background().with_cancel();
        let (child, cancel_child) = linked(parent.with_cancel());
        let (sibling, _cancel_sibling) = linked(parent.with_cancel());
        let clone = child.clone();
        let dropper = thread::spawn(move || drop(clone));
        let releaser = thread::spawn(move || drop((child, cancel_child)));
        cancel.cancel();
        dropper.join().unwrap();
        releaser.join().unwrap();
        assert!(parent.is_done());
        assert_eq!(sibling.err(), Some(Error::Canceled));
        assert!(census(&parent).is_clean());
    });
}

/// A parent starts spreading its children over shards (`SHARDED`, as on contention) while it
/// is cancelled: the cancellation either locks the shards across its swap (it saw `SHARDED`,
/// or its swap failed because the bit appeared, and it tries again), or the registration sees
/// the error and refuses. The child is never left live in a done parent.
#[test]
fn loom_a_child_registered_in_a_shard_races_the_parents_cancel() {
    loom::model(|| {
        let (parent, cancel) = Context::background().with_cancel();
        let deriver = {
            let parent = parent.clone();
            thread::spawn(move || {
                parent.scope().unwrap().use_shards();
                linked(parent.with_cancel())
            })
        };
        cancel.cancel();
        let (child, _cancel_child) = deriver.join().unwrap();
        assert_eq!(child.err(), Some(Error::Canceled));
        assert!(census(&parent).is_clean());
    });
}

/// Once `BUSY | SHARDED` are set, a registration into a shard only loads `state`, under the
/// shard's lock: racing the parent's cancel, it either sees the error or is in a shard the
/// cancellation drains. No child is left live in a done parent.
#[test]
fn loom_a_registration_that_only_loads_the_state_races_the_parents_cancel() {
    loom::model(|| {
        let (parent, cancel) = Context::background().with_cancel();
        parent.scope().unwrap().use_shards();
        let (first, _cancel_first) = linked(parent.with_cancel()); // sets `BUSY | SHARDED`
        let deriver = {
            let parent = parent.clone();
            thread::spawn(move || linked(parent.with_cancel()))
        };
        cancel.cancel();
        let (child, _cancel_child) = deriver.join().unwrap();
        assert_eq!(first.err(), Some(Error::Canceled));
        assert_eq!(child.err(), Some(Error::Canceled));
        assert!(census(&parent).is_clean());
    });
}

/// A live scope released through a value layer (so offered for reuse: unlinked, then checked
/// by `Arc::get_mut`) while its parent is cancelled, whose walk may hold its registration:
/// the scope's callback runs at most once and the parent's census ends clean.
#[test]
fn loom_a_live_scope_released_by_its_child_races_the_parents_cancel() {
    loom::model(|| {
        let (parent, cancel) = Context::background().with_cancel();
        let (scope, cancel_scope) = parent.with_cancel();
        cancel_scope.disarm();
        let ran = Arc::new(AtomicUsize::new(0));
        let seen = ran.clone();
        drop(scope.after_func(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        }));
        let value = scope.with_value(1u8);
        drop(scope);
        let releaser = thread::spawn(move || drop(value));
        cancel.cancel();
        releaser.join().unwrap();
        assert!(ran.load(Ordering::SeqCst) <= 1);
        assert!(census(&parent).is_clean());
    });
}

/// A scope makes its lock on first use (`OnceInner` in `tree/once.rs`). Two threads that register
/// in a fresh scope at once race to make it: one publishes its allocation, the other frees its
/// own and takes that one. Either way both registrations are in the one lock's slab, and the
/// scope's cancellation runs both callbacks. `tree::lock_check` makes the model fail if the
/// lock could be found before it was written (the publication's orderings weakened), and here
/// if a lock made is not freed once the scope is gone (the loser's leaked).
#[test]
fn loom_two_first_registrations_race_to_make_the_lock() {
    loom::model(|| {
        let live_before = crate::tree::lock_check::live();
        let (ctx, cancel) = Context::background().with_cancel();
        let ran = Arc::new(AtomicUsize::new(0));
        let register = |ctx: &Context, ran: &Arc<AtomicUsize>| {
            let ran = ran.clone();
            ctx.after_func(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            })
        };
        let other = {
            let (ctx, ran) = (ctx.clone(), ran.clone());
            thread::spawn(move || register(&ctx, &ran))
        };
        let mine = register(&ctx, &ran);
        let theirs = other.join().unwrap();
        assert_eq!(census(&ctx).callbacks, 2, "both registered in the one lock");
        cancel.cancel();
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        assert!(!mine.stop() && !theirs.stop(), "both ran");
        drop((ctx, cancel, mine, theirs));
        assert_eq!(
            crate::tree::lock_check::live(),
            live_before,
            "every lock made was freed"
        );
    });
}

/// The end of a lone child's scope, handle first (its lock-free cancel,
/// `Scope::cancel_unregistered`, then the context's drop, which lets go of the scope as for
/// reuse), while its parent is cancelled: the child ends done with one reason, and the
/// parent's count is left exactly once. With `waiter`, a `done()` future of the child waits in
/// the parent meanwhile, and is woken.
fn handle_dropped_before_its_context_races_the_parents_cancel(waiter: bool) {
    loom::model(move || {
        let (parent, cancel_parent) = Context::background().with_cancel_cause();
        let (child, cancel_child) = parent.with_cancel();
        let mut waiting = waiter.then(|| Box::pin(child.done_owned()));
        if let Some(waiting) = &mut waiting {
            let mut cx = task::Context::from_waker(Waker::noop());
            assert!(waiting.as_mut().poll(&mut cx).is_pending());
        }
        let releaser = thread::spawn(move || {
            drop(cancel_child);
            let reason = (child.err(), child.cause().map(|cause| cause.to_string()));
            drop(child);
            reason
        });
        cancel_parent.cancel("parent's");
        let (err, cause) = releaser.join().unwrap();
        assert!(err.is_some());
        let cause = cause.unwrap();
        assert!(
            cause == "context canceled" || cause == "parent's",
            "{cause}"
        );
        if let Some(waiting) = waiting {
            assert_eq!(block_on(waiting), Error::Canceled);
        }
        assert!(census(&parent).is_clean());
    });
}

#[test]
fn loom_a_handle_dropped_before_its_context_races_the_parents_cancel() {
    handle_dropped_before_its_context_races_the_parents_cancel(false);
}

#[test]
fn loom_a_handle_dropped_before_its_waited_context_races_the_parents_cancel() {
    handle_dropped_before_its_context_races_the_parents_cancel(true);
}
