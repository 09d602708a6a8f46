//! Causes and errors: Go's `context.Cause` rules. The first cancellation wins, descendants
//! report the cause of whatever cancelled them, a missing cause is the `Error` itself, a
//! deadline's cause counts only if the deadline fired, and `err()` and `cause()` never
//! disagree or change once set.

use std::fmt;
use std::time::Duration;

use taskctx::{Cause, Context, Error};
use tokio::time::Instant;

#[derive(Debug, PartialEq)]
struct ClientGone(u32);

impl fmt::Display for ClientGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} went away", self.0)
    }
}

impl std::error::Error for ClientGone {}

fn cause_text(ctx: &Context) -> String {
    ctx.cause().expect("a done context has a cause").to_string()
}

/// Asserts the invariant that holds at every instant: both `None`, or both `Some`; and a cause
/// that is a plain `Error` is the context's own error.
fn assert_err_and_cause_agree(ctx: &Context) {
    match (ctx.err(), ctx.cause()) {
        (None, None) => {}
        (Some(err), Some(cause)) => {
            if let Some(plain) = cause.downcast_ref::<Error>() {
                assert_eq!(*plain, err, "{ctx}: plain cause differs from err");
            }
        }
        (err, cause) => panic!("{ctx}: err {err:?} but cause {cause:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Who wins
// ---------------------------------------------------------------------------------------------

#[test]
fn first_cancellation_wins_the_cause() {
    let (ctx, cancel) = Context::background().with_cancel_cause();
    cancel.cancel("first");
    cancel.cancel("second");
    drop(cancel);

    assert_eq!(cause_text(&ctx), "first");
}

#[test]
fn descendant_cancelled_through_ancestor_reports_the_ancestors_cause() {
    let (root, cancel) = Context::background().with_cancel_cause();
    let (child, _cancel_child) = root.with_value(1u8).with_cancel_cause();
    let (grandchild, _cancel_grandchild) = child.with_cancel();
    let leaf = grandchild.with_value("leaf");

    cancel.cancel(ClientGone(7));

    for ctx in [&root, &child, &grandchild, &leaf] {
        assert_eq!(ctx.err(), Some(Error::Canceled));
        assert_eq!(
            ctx.cause().unwrap().downcast_ref::<ClientGone>(),
            Some(&ClientGone(7)),
            "{ctx}"
        );
    }
}

#[test]
fn child_cancelled_first_keeps_its_own_cause() {
    let (parent, cancel_parent) = Context::background().with_cancel_cause();
    let (child, cancel_child) = parent.with_cancel_cause();
    let (grandchild, _cancel_grandchild) = child.with_cancel();
    let (sibling, _cancel_sibling) = parent.with_cancel();

    cancel_child.cancel("child first");
    cancel_parent.cancel("parent second");

    assert_eq!(cause_text(&child), "child first");
    assert_eq!(cause_text(&grandchild), "child first");
    assert_eq!(cause_text(&parent), "parent second");
    assert_eq!(cause_text(&sibling), "parent second");
}

#[test]
fn cancelling_a_child_after_its_parent_keeps_the_parents_cause() {
    let (parent, cancel_parent) = Context::background().with_cancel_cause();
    let (child, cancel_child) = parent.with_cancel_cause();

    cancel_parent.cancel("parent first");
    cancel_child.cancel("child too late");

    assert_eq!(cause_text(&child), "parent first");
}

// ---------------------------------------------------------------------------------------------
// No cause given
// ---------------------------------------------------------------------------------------------

#[test]
fn cancel_without_a_cause_reports_the_error_as_the_cause() {
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();

    let cause = ctx.cause().unwrap();
    assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::Canceled));
    assert!(cause.is::<Error>());
    assert_eq!(cause.to_string(), "context canceled");
}

#[test]
fn dropping_a_cause_handle_reports_canceled_as_the_cause() {
    let (ctx, cancel) = Context::background().with_cancel_cause();
    let (child, _cancel_child) = ctx.with_cancel();
    drop(cancel);

    for ctx in [&ctx, &child] {
        assert_eq!(ctx.err(), Some(Error::Canceled));
        assert_eq!(
            ctx.cause().unwrap().downcast_ref::<Error>(),
            Some(&Error::Canceled)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn deadline_without_a_cause_reports_deadline_exceeded_as_the_cause() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(1));
    let (child, _cancel_child) = ctx.with_cancel_cause();

    assert_eq!(ctx.done().await, Error::DeadlineExceeded);

    for ctx in [&ctx, &child] {
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
        assert_eq!(
            ctx.cause().unwrap().downcast_ref::<Error>(),
            Some(&Error::DeadlineExceeded)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Deadline causes
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn timeout_cause_is_reported_when_the_timer_fires() {
    let (ctx, _cancel) =
        Context::background().with_timeout_cause(Duration::from_secs(1), ClientGone(1));
    let (child, _cancel_child) = ctx.with_value(0u8).with_cancel();

    tokio::time::advance(Duration::from_secs(1)).await;

    for ctx in [&ctx, &child] {
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
        assert_eq!(
            ctx.cause().unwrap().downcast_ref::<ClientGone>(),
            Some(&ClientGone(1))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn deadline_cause_is_reported_when_the_timer_fires() {
    let at = Instant::now() + Duration::from_secs(3);
    let (ctx, _cancel) = Context::background().with_deadline_cause(at, "too slow");

    assert_eq!(ctx.done().await, Error::DeadlineExceeded);

    assert_eq!(cause_text(&ctx), "too slow");
}

#[tokio::test(start_paused = true)]
async fn cancel_before_the_deadline_reports_canceled_not_the_deadline_cause() {
    let (ctx, cancel) =
        Context::background().with_timeout_cause(Duration::from_secs(1), "too slow");

    cancel.cancel();
    tokio::time::advance(Duration::from_secs(5)).await;

    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(
        ctx.cause().unwrap().downcast_ref::<Error>(),
        Some(&Error::Canceled)
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_a_deadline_handle_before_the_deadline_reports_canceled() {
    let (ctx, cancel) =
        Context::background().with_timeout_cause(Duration::from_secs(1), "too slow");

    drop(cancel);

    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(
        ctx.cause().unwrap().downcast_ref::<Error>(),
        Some(&Error::Canceled)
    );
}

#[tokio::test(start_paused = true)]
async fn parent_cancel_before_the_childs_deadline_reports_the_parents_cause() {
    let (parent, cancel_parent) = Context::background().with_cancel_cause();
    let (child, _cancel_child) = parent.with_timeout_cause(Duration::from_secs(1), "child slow");

    cancel_parent.cancel("parent gone");
    tokio::time::advance(Duration::from_secs(2)).await;

    assert_eq!(child.err(), Some(Error::Canceled));
    assert_eq!(cause_text(&child), "parent gone");
}

#[tokio::test(start_paused = true)]
async fn earlier_ancestor_deadline_reports_the_ancestors_cause_not_the_childs() {
    let (parent, _cancel_parent) =
        Context::background().with_timeout_cause(Duration::from_secs(1), "parent slow");
    let (child, _cancel_child) = parent.with_timeout_cause(Duration::from_secs(10), "child slow");

    child.done().await;

    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_text(&child), "parent slow");
}

#[tokio::test(start_paused = true)]
async fn earlier_child_deadline_reports_its_own_cause_and_leaves_the_parent_live() {
    let (parent, _cancel_parent) =
        Context::background().with_timeout_cause(Duration::from_secs(10), "parent slow");
    let (child, _cancel_child) = parent.with_timeout_cause(Duration::from_secs(1), "child slow");

    child.done().await;

    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_text(&child), "child slow");
    assert_eq!(parent.err(), None);
    assert!(parent.cause().is_none());
}

#[tokio::test(start_paused = true)]
async fn deadline_already_passed_gives_a_done_context_with_the_deadline_cause() {
    let (zero, _c1) = Context::background().with_timeout_cause(Duration::ZERO, "no budget");
    let (now, _c2) = Context::background().with_deadline(Instant::now());

    assert_eq!(zero.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_text(&zero), "no budget");
    assert_eq!(now.err(), Some(Error::DeadlineExceeded));
    assert_eq!(
        now.cause().unwrap().downcast_ref::<Error>(),
        Some(&Error::DeadlineExceeded)
    );
}

// ---------------------------------------------------------------------------------------------
// Cause values
// ---------------------------------------------------------------------------------------------

#[test]
fn cause_passed_as_an_existing_cause_is_not_nested() {
    let (first, cancel_first) = Context::background().with_cancel_cause();
    cancel_first.cancel(ClientGone(3));
    let existing: Cause = first.cause().unwrap().clone();

    let (second, cancel_second) = Context::background().with_cancel_cause();
    cancel_second.cancel(existing);

    let cause = second.cause().unwrap();
    assert!(cause.is::<ClientGone>());
    assert!(!cause.is::<Cause>(), "no Cause wrapped inside a Cause");
    assert_eq!(cause.downcast_ref::<ClientGone>(), Some(&ClientGone(3)));
    assert_eq!(cause.to_string(), "client 3 went away");
}

#[test]
fn plain_cause_passed_on_stays_a_plain_error() {
    let (ctx, cancel) = Context::background().with_cancel_cause();
    cancel.cancel(Cause::from(Error::DeadlineExceeded));
    let cause = ctx.cause().unwrap();
    assert_eq!(
        cause.downcast_ref::<Error>(),
        Some(&Error::DeadlineExceeded)
    );
    assert!(!cause.is::<Cause>());
    assert_eq!(
        ctx.err(),
        Some(Error::Canceled),
        "the cause never changes err"
    );

    let (ctx, cancel) = Context::background().with_cancel_cause();
    cancel.cancel(Error::DeadlineExceeded);
    assert_eq!(
        ctx.cause().unwrap().downcast_ref::<Error>(),
        Some(&Error::DeadlineExceeded)
    );
}

#[test]
fn cause_keeps_the_given_error_type_and_message() {
    let (ctx, cancel) = Context::background().with_cancel_cause();
    cancel.cancel(std::io::Error::other("disk full"));

    let cause = ctx.cause().unwrap();
    assert!(cause.is::<std::io::Error>());
    assert_eq!(cause.to_string(), "disk full");
    assert_eq!(cause.as_error().to_string(), "disk full");
    assert!(cause.downcast_ref::<Error>().is_none());

    let (ctx, cancel) = Context::background().with_cancel_cause();
    cancel.cancel(String::from("owned message"));
    assert_eq!(cause_text(&ctx), "owned message");
}

// ---------------------------------------------------------------------------------------------
// without_cancel
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn without_cancel_has_no_err_and_no_cause_after_the_parent_is_cancelled() {
    let (parent, cancel) = Context::background().with_cancel_cause();
    let (deadline_parent, _cancel_deadline) = parent.with_timeout(Duration::from_secs(1));
    let detached = deadline_parent.without_cancel();
    let valued = detached.with_value(1u8);

    cancel.cancel("request over");

    assert_eq!(deadline_parent.err(), Some(Error::Canceled));
    for ctx in [&detached, &valued] {
        assert_eq!(ctx.err(), None);
        assert!(ctx.cause().is_none());
        assert_eq!(ctx.deadline(), None);
        assert!(!ctx.is_done());
    }
}

#[tokio::test(start_paused = true)]
async fn child_of_without_cancel_reports_only_its_own_cancellation() {
    let (parent, cancel_parent) =
        Context::background().with_timeout_cause(Duration::from_secs(1), "request slow");
    let (child, cancel_child) = parent.without_cancel().with_cancel_cause();

    tokio::time::advance(Duration::from_secs(2)).await;
    cancel_parent.cancel();
    assert_eq!(parent.err(), Some(Error::DeadlineExceeded));
    assert_eq!(child.err(), None);

    cancel_child.cancel("own reason");
    assert_eq!(child.err(), Some(Error::Canceled));
    assert_eq!(cause_text(&child), "own reason");
}

// ---------------------------------------------------------------------------------------------
// err() and cause() over time
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn err_and_cause_never_change_after_cancel() {
    let (parent, cancel_parent) = Context::background().with_cancel_cause();
    let (ctx, cancel) = parent.with_timeout_cause(Duration::from_secs(1), "too slow");

    cancel.cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled));

    cancel_parent.cancel("parent later");
    tokio::time::advance(Duration::from_secs(2)).await;

    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(
        ctx.cause().unwrap().downcast_ref::<Error>(),
        Some(&Error::Canceled)
    );
}

#[tokio::test(start_paused = true)]
async fn err_and_cause_never_change_after_the_deadline_fired() {
    let (parent, cancel_parent) = Context::background().with_cancel_cause();
    let (ctx, cancel) = parent.with_timeout_cause(Duration::from_secs(1), "too slow");

    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));

    cancel.cancel();
    cancel_parent.cancel("parent later");
    drop(cancel);

    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_text(&ctx), "too slow");
    assert_eq!(ctx.done().await, Error::DeadlineExceeded);
}

#[tokio::test(start_paused = true)]
async fn err_and_cause_agree_at_every_step() {
    let (root, cancel_root) = Context::background().with_cancel_cause();
    let (a, cancel_a) = root.with_cancel();
    let (b, _cancel_b) = root.with_timeout(Duration::from_secs(1));
    let (c, _cancel_c) = b.with_timeout_cause(Duration::from_secs(5), "c slow");
    let d = c.with_value(4u8);
    let e = root.without_cancel();
    let (f, _cancel_f) = root.with_timeout_cause(Duration::from_secs(3), "f slow");
    let all = [&root, &a, &b, &c, &d, &e, &f];

    all.iter().for_each(|ctx| assert_err_and_cause_agree(ctx));
    assert!(all.iter().all(|ctx| ctx.err().is_none()));

    cancel_a.cancel();
    all.iter().for_each(|ctx| assert_err_and_cause_agree(ctx));

    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(d.err(), Some(Error::DeadlineExceeded));
    all.iter().for_each(|ctx| assert_err_and_cause_agree(ctx));

    cancel_root.cancel("root");
    all.iter().for_each(|ctx| assert_err_and_cause_agree(ctx));
    assert_eq!(f.err(), Some(Error::Canceled));
    assert_eq!(cause_text(&f), "root");
    assert_eq!(d.err(), Some(Error::DeadlineExceeded));
}

// with_token_cause / from_token_cause

#[tokio::test]
async fn with_token_cause_reports_the_cause_when_the_token_fires() {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let root = Context::background().with_token_cause(shutdown.clone(), "shutting down");
    let (request, _done) = root.with_cancel();
    let (waiting, _stop) = root.with_cancel();
    let waiter = tokio::spawn(async move { (waiting.done().await, cause_text(&waiting)) });
    tokio::task::yield_now().await;
    assert_eq!((root.err(), request.err()), (None, None));
    shutdown.cancel();
    assert_eq!(root.err(), Some(Error::Canceled));
    assert_eq!(cause_text(&root), "shutting down");
    assert_eq!(cause_text(&request), "shutting down");
    assert_err_and_cause_agree(&request);
    let (err, cause) = waiter.await.unwrap();
    assert_eq!((err, cause.as_str()), (Error::Canceled, "shutting down"));
}

#[test]
fn with_token_cause_on_a_cancelled_token_is_born_done_with_the_cause() {
    let shutdown = tokio_util::sync::CancellationToken::new();
    shutdown.cancel();
    let ctx = Context::background().with_token_cause(shutdown, ClientGone(3));
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(cause_text(&ctx), "client 3 went away");
}

#[test]
fn with_token_cause_reports_the_parents_cause_when_the_parent_is_cancelled_first() {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (parent, cancel) = Context::background().with_cancel_cause();
    let ctx = parent.with_token_cause(shutdown.clone(), "shutting down");
    let (child, _cancel_child) = ctx.with_cancel();
    cancel.cancel(ClientGone(9));
    shutdown.cancel(); // too late: the first cancellation wins
    for ctx in [&ctx, &child] {
        assert_eq!(ctx.err(), Some(Error::Canceled));
        assert_eq!(cause_text(ctx), "client 9 went away");
    }
    // Born under a done parent: the parent's cause, not the token's.
    let late = parent.with_token_cause(tokio_util::sync::CancellationToken::new(), "unused");
    assert_eq!(cause_text(&late), "client 9 went away");
}

#[test]
fn with_token_without_a_cause_still_reports_canceled() {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let ctx = Context::background().with_token(shutdown.clone());
    shutdown.cancel();
    assert_eq!(
        ctx.cause().unwrap().downcast_ref::<Error>(),
        Some(&Error::Canceled)
    );
}

#[test]
fn from_token_cause_is_a_root_that_reports_the_cause() {
    let token = tokio_util::sync::CancellationToken::new();
    let ctx = Context::from_token_cause(token.clone(), ClientGone(1));
    assert_eq!(ctx.err(), None);
    token.cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(
        ctx.cause().unwrap().downcast_ref::<ClientGone>(),
        Some(&ClientGone(1))
    );
}

// with_deadline_cancel_cause / with_timeout_cancel_cause

#[tokio::test(start_paused = true)]
async fn with_timeout_cancel_cause_reports_the_handles_cause_before_the_deadline() {
    let (ctx, cancel) = Context::background().with_timeout_cancel_cause(Duration::from_secs(5));
    assert!(ctx.deadline().is_some());
    cancel.cancel(ClientGone(4));
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(cause_text(&ctx), "client 4 went away");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        ctx.err(),
        Some(Error::Canceled),
        "the first cancellation wins"
    );
}

#[tokio::test(start_paused = true)]
async fn with_deadline_cancel_cause_fires_with_deadline_exceeded() {
    let at = Instant::now() + Duration::from_secs(2);
    let (ctx, cancel) = Context::background().with_deadline_cancel_cause(at);
    assert_eq!(ctx.deadline(), Some(at));
    assert_eq!(ctx.done().await, Error::DeadlineExceeded);
    assert_eq!(
        ctx.cause().unwrap().downcast_ref::<Error>(),
        Some(&Error::DeadlineExceeded)
    );
    cancel.cancel("too late");
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

#[tokio::test(start_paused = true)]
async fn with_timeout_cancel_cause_too_long_for_an_instant_has_no_deadline() {
    let (ctx, cancel) = Context::background().with_timeout_cancel_cause(Duration::MAX);
    assert_eq!(ctx.deadline(), None);
    drop(cancel);
    assert_eq!(ctx.err(), Some(Error::Canceled));
}
