//! Model checks of the synchronization this crate writes itself, explored by loom over every
//! interleaving (up to `LOOM_MAX_PREEMPTIONS` preemptions):
//!
//! ```sh
//! LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" cargo test --lib --release loom
//! ```
//!
//! Each model races two or three threads over one of the tree's protocols (see the header of
//! `tree.rs`): the lock-free finish against registration, publishing a custom cause, linking a
//! child or a merge while a parent is cancelled, a `done()` future registering its waker while
//! the context is cancelled, and `AfterFunc::stop` against the callback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use loom::future::block_on;
use loom::thread;

use crate::testing::census;
use crate::{Context, Error};

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

#[test]
fn loom_every_cancel_returns_after_the_subtree_is_done() {
    loom::model(|| {
        let (parent, cancel_parent) = Context::background().with_cancel();
        let (child, cancel_child) = parent.with_cancel();
        let (grandchild, _cancel_grandchild) = child.with_cancel();
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
