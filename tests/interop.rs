//! Interoperability with `tokio_util`'s `CancellationToken`, in both directions: `Context::token`
//! (a token that follows a context), and `with_token` / `from_token` (a context that follows a
//! token).

use std::time::Duration;

use taskctx::testing::census;
use taskctx::{Context, Error};
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
