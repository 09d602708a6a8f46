//! Interoperability: `CancellationToken` in both directions (`token`, `with_token`,
//! `from_token`), `merge` of two lifetimes, the traits `Context` and its companions implement,
//! the Go-style `Display` names, and the conversions of `Error`.

use std::io;
use std::time::Duration;

use taskctx::testing::census;
use taskctx::{AfterFunc, CancelCauseHandle, CancelHandle, Cause, Context, DoneOwned, Error, Key};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn cause_text(ctx: &Context) -> String {
    ctx.cause().expect("a done context has a cause").to_string()
}

// ---------------------------------------------------------------------------------------------
// Context::token
// ---------------------------------------------------------------------------------------------

#[test]
fn token_is_cancelled_when_the_context_is_cancelled() {
    let (ctx, cancel) = Context::background().with_cancel();
    let token = ctx.token();
    assert!(!token.is_cancelled());

    cancel.cancel();

    assert!(token.is_cancelled(), "cancelled before cancel() returned");
}

#[test]
fn token_is_cancelled_when_an_ancestor_is_cancelled() {
    let (root, cancel) = Context::background().with_cancel();
    let (child, _cancel_child) = root.with_value(1u8).with_cancel();
    let leaf = child.with_value("leaf");
    let child_token = child.token();
    let leaf_token = leaf.token();

    cancel.cancel();

    assert!(child_token.is_cancelled());
    assert!(leaf_token.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn token_is_cancelled_when_the_deadline_fires() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(2));
    let (child, _cancel_child) = ctx.with_cancel();
    let token = ctx.token();
    let child_token = child.token();

    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(!token.is_cancelled());

    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(token.is_cancelled());
    assert!(child_token.is_cancelled());
}

#[test]
fn cancelling_the_token_does_not_cancel_the_context() {
    let (ctx, _cancel) = Context::background().with_cancel();
    let (child, _cancel_child) = ctx.with_cancel();
    let token = ctx.token();

    token.cancel();

    assert!(!ctx.is_done());
    assert!(!child.is_done());
    assert!(!ctx.token().is_cancelled(), "other tokens are unaffected");
}

#[test]
fn each_token_call_returns_an_independent_token() {
    let (ctx, cancel) = Context::background().with_cancel();
    let first = ctx.token();
    let second = ctx.token();

    first.cancel();
    assert!(!second.is_cancelled());

    cancel.cancel();
    assert!(second.is_cancelled());
}

#[test]
fn token_of_an_already_done_context_is_cancelled() {
    let (parent, cancel) = Context::background().with_cancel();
    let (child, _cancel_child) = parent.with_cancel();
    cancel.cancel();

    assert!(parent.token().is_cancelled());
    assert!(child.token().is_cancelled());
    assert!(child.with_value(1u8).token().is_cancelled());
}

#[test]
fn token_of_background_is_never_cancelled() {
    let (ctx, cancel) = Context::background().with_cancel();
    let background = Context::background().token();
    let todo = Context::todo().token();
    let detached = ctx.without_cancel().token();

    cancel.cancel();

    assert!(!background.is_cancelled());
    assert!(!todo.is_cancelled());
    assert!(
        !detached.is_cancelled(),
        "without_cancel's token ignores the parent"
    );
}

#[test]
fn token_of_a_disarmed_child_keeps_following_the_parent_after_the_child_is_dropped() {
    let (parent, cancel_parent) = Context::background().with_cancel();
    let (child, cancel_child) = parent.with_cancel();
    cancel_child.disarm();
    let token = child.token();
    let value_token = child.with_value(1u8).token();
    drop(child);
    assert!(
        census(&parent).is_clean(),
        "the child is gone: {}",
        census(&parent)
    );
    assert!(!token.is_cancelled());

    cancel_parent.cancel();

    assert!(token.is_cancelled());
    assert!(value_token.is_cancelled());
}

// A token does not keep its context alive: once every handle to a context is gone, the context
// is released with its timer, its token watch and its registration in a merge partner, and the
// token follows only the chain of contexts it was derived from. These pin that documented
// trade-off (no leak, at the price of the released context's own sources).

#[tokio::test(start_paused = true)]
async fn token_of_a_released_deadline_child_no_longer_follows_its_deadline_but_follows_the_parent()
{
    let (parent, cancel_parent) = Context::background().with_cancel();
    let (ctx, cancel) = parent.with_timeout(Duration::from_secs(1));
    cancel.disarm();
    let token = ctx.token();
    drop(ctx);
    assert!(
        census(&parent).is_clean(),
        "the timer went with the context"
    );

    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(
        !token.is_cancelled(),
        "the released context's deadline is gone"
    );

    cancel_parent.cancel();
    assert!(token.is_cancelled(), "the parent still reaches the token");
}

#[test]
fn token_of_a_released_merge_follows_the_first_parent_only() {
    let (left, cancel_left) = Context::background().with_cancel();
    let (right, cancel_right) = Context::background().with_cancel();
    let merged = left.merge(&right);
    let token = merged.token();
    drop(merged);
    assert!(
        census(&right).is_clean(),
        "the merge left its second parent"
    );

    cancel_right.cancel();
    assert!(!token.is_cancelled());

    cancel_left.cancel();
    assert!(token.is_cancelled());
}

#[test]
fn token_of_a_released_token_context_no_longer_follows_the_foreign_token() {
    let foreign = CancellationToken::new();
    let ctx = Context::from_token(foreign.clone());
    let token = ctx.token();
    drop(ctx);

    foreign.cancel();

    assert!(
        !token.is_cancelled(),
        "the watch on the foreign token went with the context"
    );
}

#[test]
fn token_of_a_live_token_context_follows_the_foreign_token() {
    let foreign = CancellationToken::new();
    let ctx = Context::from_token(foreign.clone());
    let token = ctx.token();

    foreign.cancel();

    assert!(token.is_cancelled());
    assert!(ctx.is_done());
}

// ---------------------------------------------------------------------------------------------
// with_token / from_token
// ---------------------------------------------------------------------------------------------

#[test]
fn from_token_context_is_cancelled_when_the_token_is() {
    let token = CancellationToken::new();
    let ctx = Context::from_token(token.clone());
    assert!(!ctx.is_done());

    token.cancel();

    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(
        ctx.cause().unwrap().downcast_ref::<Error>(),
        Some(&Error::Canceled)
    );
}

#[test]
fn with_token_context_is_cancelled_when_the_token_is_and_keeps_its_parent_live() {
    let (parent, _cancel) = Context::background().with_cancel();
    let token = CancellationToken::new();
    let ctx = parent.with_value(1u8).with_token(token.clone());

    token.cancel();

    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert!(!parent.is_done());
}

#[test]
fn with_token_context_is_cancelled_when_a_parent_token_is() {
    let shutdown = CancellationToken::new();
    let ctx = Context::from_token(shutdown.child_token());

    shutdown.cancel();

    assert!(ctx.is_done());
}

#[test]
fn already_cancelled_token_gives_a_done_context() {
    let token = CancellationToken::new();
    token.cancel();

    let root = Context::from_token(token.clone());
    let (parent, _cancel) = Context::background().with_cancel();
    let child = parent.with_token(token);

    assert_eq!(root.err(), Some(Error::Canceled));
    assert_eq!(child.err(), Some(Error::Canceled));
    assert!(!parent.is_done());
    assert!(census(&parent).is_clean(), "{}", census(&parent));
}

#[test]
fn child_of_a_token_context_is_cancelled_when_the_token_is() {
    let token = CancellationToken::new();
    let root = Context::from_token(token.clone());
    let (child, _cancel_child) = root.with_cancel();
    let grandchild = child.with_value("v");

    token.cancel();

    assert_eq!(child.err(), Some(Error::Canceled));
    assert_eq!(grandchild.err(), Some(Error::Canceled));
}

#[test]
fn with_token_context_is_cancelled_by_its_parent_and_leaves_the_foreign_token_alone() {
    let (parent, cancel) = Context::background().with_cancel_cause();
    let token = CancellationToken::new();
    let ctx = parent.with_token(token.clone());

    cancel.cancel("parent gone");

    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(cause_text(&ctx), "parent gone");
    assert!(
        !token.is_cancelled(),
        "a context never cancels a foreign token"
    );
}

#[test]
fn with_token_under_a_done_parent_is_born_done_with_the_parents_cause() {
    let (parent, cancel) = Context::background().with_cancel_cause();
    cancel.cancel("parent gone");
    let token = CancellationToken::new();

    let ctx = parent.with_token(token.clone());

    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(cause_text(&ctx), "parent gone");
    assert!(!token.is_cancelled());
}

#[test]
fn dropping_a_token_context_removes_its_token_watch() {
    let (root, _cancel) = Context::background().with_cancel();
    let token = CancellationToken::new();
    let ctx = root.with_token(token.clone());
    let counted = census(&root);
    assert_eq!((counted.contexts, counted.token_watches), (1, 1));

    drop(ctx);

    assert!(census(&root).is_clean(), "{}", census(&root));
}

#[test]
fn cancelled_token_context_removes_its_token_watch() {
    let (root, _cancel) = Context::background().with_cancel();
    let token = CancellationToken::new();
    let ctx = root.with_token(token.clone());

    token.cancel();

    assert!(ctx.is_done());
    assert!(census(&root).is_clean(), "{}", census(&root));
}

#[test]
fn context_token_round_trips_through_from_token() {
    let (ctx, cancel) = Context::background().with_cancel();
    let mirrored = Context::from_token(ctx.token());
    assert!(!mirrored.is_done());

    cancel.cancel();

    assert!(mirrored.is_done());
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

// ---------------------------------------------------------------------------------------------
// Traits
// ---------------------------------------------------------------------------------------------

fn assert_context_traits<T: Clone + Send + Sync + 'static + Default>() {}
fn assert_send_sync<T: Send + Sync + 'static>() {}
fn assert_std_error<T: std::error::Error + Send + Sync + 'static>() {}

#[test]
fn context_is_clone_send_sync_static_and_default() {
    assert_context_traits::<Context>();
    assert_eq!(Context::default().to_string(), "context.Background");
    assert!(!Context::default().is_done());
}

#[test]
fn handles_and_futures_can_cross_threads() {
    assert_send_sync::<CancelHandle>();
    assert_send_sync::<CancelCauseHandle>();
    assert_send_sync::<AfterFunc>();
    assert_send_sync::<DoneOwned>();
    assert_send_sync::<Cause>();

    let (ctx, cancel) = Context::background().with_cancel();
    std::thread::spawn(move || cancel.cancel()).join().unwrap();
    assert!(ctx.is_done());
}

#[test]
fn error_and_cause_implement_std_error() {
    assert_std_error::<Error>();
    assert_std_error::<Cause>();
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(Error::Canceled);
    assert_eq!(boxed.to_string(), "context canceled");
}

// ---------------------------------------------------------------------------------------------
// Display
// ---------------------------------------------------------------------------------------------

struct TraceKey;
impl Key for TraceKey {
    type Value = u128;
}

#[test]
fn display_of_roots_and_cancel_layers_is_gos() {
    assert_eq!(Context::background().to_string(), "context.Background");
    assert_eq!(Context::todo().to_string(), "context.TODO");

    let (ctx, _cancel) = Context::background().with_cancel();
    assert_eq!(ctx.to_string(), "context.Background.WithCancel");
    let (ctx, _cancel) = Context::todo().with_cancel_cause();
    assert_eq!(ctx.to_string(), "context.TODO.WithCancel");
    assert_eq!(
        ctx.without_cancel().to_string(),
        "context.TODO.WithCancel.WithoutCancel"
    );
}

#[test]
fn display_of_value_layers_names_the_type_or_key() {
    let ctx = Context::background().with_value(7u32);
    assert_eq!(ctx.to_string(), "context.Background.WithValue(type u32)");

    let ctx = Context::background().with_key::<TraceKey>(1);
    assert_eq!(
        ctx.to_string(),
        format!(
            "context.Background.WithValue(key {})",
            std::any::type_name::<TraceKey>()
        )
    );
}

#[test]
fn display_of_merge_and_token_layers() {
    let (left, _c1) = Context::background().with_cancel();
    let (right, _c2) = Context::todo().with_cancel();
    assert_eq!(
        left.merge(&right).to_string(),
        "context.Background.WithCancel.Merge(context.TODO.WithCancel)"
    );

    let token = CancellationToken::new();
    assert_eq!(
        Context::from_token(token.clone()).to_string(),
        "context.Background.WithToken"
    );
    assert_eq!(
        Context::todo()
            .with_value(1u8)
            .with_token(token)
            .to_string(),
        "context.TODO.WithValue(type u8).WithToken"
    );
}

#[tokio::test(start_paused = true)]
async fn display_of_deadline_layers() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(5));
    let shown = ctx.to_string();
    assert!(
        shown.starts_with("context.Background.WithDeadline(["),
        "{shown}"
    );
    assert!(shown.ends_with("])"), "{shown}");

    let (ctx, _cancel) =
        Context::background().with_deadline_cause(Instant::now() + Duration::from_secs(1), "c");
    assert!(
        ctx.to_string()
            .starts_with("context.Background.WithDeadline([")
    );
}

// ---------------------------------------------------------------------------------------------
// Error conversions
// ---------------------------------------------------------------------------------------------

#[test]
fn error_display_is_gos() {
    assert_eq!(Error::Canceled.to_string(), "context canceled");
    assert_eq!(
        Error::DeadlineExceeded.to_string(),
        "context deadline exceeded"
    );
}

#[test]
fn error_converts_to_io_error_with_matching_kind_and_source() {
    let canceled: io::Error = Error::Canceled.into();
    assert_eq!(canceled.kind(), io::ErrorKind::Interrupted);
    assert_eq!(canceled.to_string(), "context canceled");
    assert_eq!(
        canceled.get_ref().and_then(|e| e.downcast_ref::<Error>()),
        Some(&Error::Canceled)
    );

    let timed_out: io::Error = Error::DeadlineExceeded.into();
    assert_eq!(timed_out.kind(), io::ErrorKind::TimedOut);
    assert_eq!(timed_out.to_string(), "context deadline exceeded");
    assert_eq!(
        timed_out.get_ref().and_then(|e| e.downcast_ref::<Error>()),
        Some(&Error::DeadlineExceeded)
    );
}

#[test]
fn error_propagates_through_io_result_with_question_mark() {
    fn read(ctx: &Context) -> io::Result<u8> {
        if let Some(err) = ctx.err() {
            return Err(err.into());
        }
        Ok(1)
    }
    let (ctx, cancel) = Context::background().with_cancel();
    assert_eq!(read(&ctx).unwrap(), 1);
    cancel.cancel();
    assert_eq!(read(&ctx).unwrap_err().kind(), io::ErrorKind::Interrupted);
}
