//! `merge` of two lifetimes: a merged context is done as soon as either parent is, with that
//! parent's err and cause, has the earlier of the two deadlines, never cancels its parents, and
//! deregisters from both parents once dropped or done.

use std::time::Duration;

use taskctx::testing::census;
use taskctx::{Context, Error};
use tokio::time::Instant;

fn cause_text(ctx: &Context) -> String {
    ctx.cause().expect("a done context has a cause").to_string()
}

// ---------------------------------------------------------------------------------------------
// merge
// ---------------------------------------------------------------------------------------------

#[test]
fn merge_is_done_when_self_is_cancelled_with_selfs_err_and_cause() {
    let (left, cancel_left) = Context::background().with_cancel_cause();
    let (right, cancel_right) = Context::background().with_cancel_cause();
    let merged = left.merge(&right);

    cancel_left.cancel("left first");
    assert_eq!(merged.err(), Some(Error::Canceled));
    assert_eq!(cause_text(&merged), "left first");
    assert!(!right.is_done(), "a merge never cancels its parents");

    cancel_right.cancel("right second");
    assert_eq!(cause_text(&merged), "left first");
}

#[test]
fn merge_is_done_when_other_is_cancelled_with_others_err_and_cause() {
    let (left, cancel_left) = Context::background().with_cancel_cause();
    let (right, cancel_right) = Context::background().with_cancel_cause();
    let merged = left.merge(&right);
    let (child, _cancel_child) = merged.with_cancel();

    cancel_right.cancel("right first");
    assert_eq!(merged.err(), Some(Error::Canceled));
    assert_eq!(cause_text(&merged), "right first");
    assert_eq!(cause_text(&child), "right first");
    assert!(!left.is_done());

    cancel_left.cancel("left second");
    assert_eq!(cause_text(&merged), "right first");
}

#[tokio::test(start_paused = true)]
async fn merge_reports_deadline_exceeded_and_cause_of_the_parent_whose_deadline_fired() {
    let (left, _cancel_left) = Context::background().with_cancel();
    let (right, _cancel_right) =
        Context::background().with_timeout_cause(Duration::from_secs(1), "right slow");

    for merged in [left.merge(&right), right.merge(&left)] {
        assert_eq!(merged.clone().done_owned().await, Error::DeadlineExceeded);
        assert_eq!(merged.err(), Some(Error::DeadlineExceeded));
        assert_eq!(cause_text(&merged), "right slow");
    }
    assert!(!left.is_done());
}

#[tokio::test(start_paused = true)]
async fn merge_deadline_is_the_earliest_of_both_parents() {
    let soon = Instant::now() + Duration::from_secs(3);
    let late = Instant::now() + Duration::from_secs(5);
    let (early_ctx, _c1) = Context::background().with_deadline(soon);
    let (late_ctx, _c2) = Context::background().with_deadline(late);
    let (no_deadline, _c3) = Context::background().with_cancel();

    assert_eq!(early_ctx.merge(&late_ctx).deadline(), Some(soon));
    assert_eq!(late_ctx.merge(&early_ctx).deadline(), Some(soon));
    assert_eq!(no_deadline.merge(&late_ctx).deadline(), Some(late));
    assert_eq!(late_ctx.merge(&no_deadline).deadline(), Some(late));
    assert_eq!(no_deadline.merge(&Context::background()).deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn merge_fires_at_the_earliest_deadline() {
    let (early, _c1) = Context::background().with_timeout(Duration::from_secs(3));
    let (late, _c2) = Context::background().with_timeout(Duration::from_secs(5));
    let merged = late.merge(&early);

    tokio::time::advance(Duration::from_millis(2_999)).await;
    assert!(!merged.is_done());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(merged.err(), Some(Error::DeadlineExceeded));
    assert!(!late.is_done());
}

#[test]
fn merge_with_a_done_context_is_born_done_with_its_err_and_cause() {
    let (done, cancel) = Context::background().with_cancel_cause();
    cancel.cancel("already over");
    let (live, _cancel_live) = Context::background().with_cancel();

    for merged in [done.merge(&live), live.merge(&done)] {
        assert_eq!(merged.err(), Some(Error::Canceled));
        assert_eq!(cause_text(&merged), "already over");
    }
    assert!(!live.is_done());
    assert!(
        census(&live).is_clean(),
        "a born-done merge stays registered nowhere: {}",
        census(&live)
    );
}

#[test]
fn dropping_a_merge_deregisters_it_from_both_parents() {
    let (left, _cancel_left) = Context::background().with_cancel();
    let (right, _cancel_right) = Context::background().with_cancel();
    let merged = left.merge(&right);
    let (child, _cancel_child) = merged.with_cancel();
    assert_eq!(census(&left).contexts, 2, "the merge and its child");
    assert_eq!(census(&right).contexts, 2);

    drop(child);
    drop(_cancel_child);
    drop(merged);

    assert!(census(&left).is_clean(), "{}", census(&left));
    assert!(census(&right).is_clean(), "{}", census(&right));
}

#[test]
fn merge_done_through_one_parent_leaves_the_other_parent_clean() {
    let (left, cancel_left) = Context::background().with_cancel();
    let (right, _cancel_right) = Context::background().with_cancel();
    let merged = left.merge(&right);
    assert_eq!(census(&right).contexts, 1);

    cancel_left.cancel();

    assert!(merged.is_done());
    assert!(
        census(&right).is_clean(),
        "still held, but done: deregistered ({})",
        census(&right)
    );
}
