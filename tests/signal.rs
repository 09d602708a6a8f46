//! `signal::notify_context` with real signals sent to this test process (its own binary, so no
//! other test shares the process). Waits are bounded by a 10 s watchdog, which only catches
//! hangs.
#![cfg(all(unix, feature = "signal"))]

use std::time::Duration;

use taskctx::signal::{Signal, notify_context};
use taskctx::{Context, Error};

const HANG_GUARD: Duration = Duration::from_secs(10);

/// Sends `signal` (a name `kill` knows) to this process.
fn send(signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

async fn done_within_guard(ctx: &Context) -> Error {
    tokio::time::timeout(HANG_GUARD, ctx.done())
        .await
        .expect("hang: the signal never reached the context")
}

#[tokio::test]
async fn notify_context_follows_real_signals_its_stop_and_its_parent() {
    // One test, so that no other listener in this process sees the signals it sends.
    let (ctx, stop) = notify_context(&Context::background()).unwrap();
    let forced = stop.forced().clone();
    drop(stop);
    assert_eq!(
        ctx.err(),
        Some(Error::Canceled),
        "Go's stop(): done when the drop returns"
    );
    assert!(ctx.cause().unwrap().downcast_ref::<Signal>().is_none());
    tokio::task::yield_now().await; // the listener's abort takes effect
    assert!(
        !forced.is_done(),
        "only a second signal cancels the forced context"
    );

    let (parent, cancel_parent) = Context::background().with_cancel();
    let (ctx, stop) = notify_context(&parent).unwrap();
    cancel_parent.cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled), "a child of its parent");
    tokio::task::yield_now().await; // the listener sees the parent done and ends
    assert!(
        !stop.forced().is_done(),
        "only a second signal cancels the forced context"
    );
    drop((ctx, stop));
    tokio::time::timeout(HANG_GUARD, taskctx::testing::assert_no_leaks(&parent))
        .await
        .expect("hang: the listener kept something alive");

    let (root, _cancel_root) = Context::background().with_cancel();
    let (ctx, stop) = notify_context(&root).unwrap();
    let (child, _cancel_child) = ctx.with_cancel();

    send("INT");
    assert_eq!(done_within_guard(&child).await, Error::Canceled);
    for ctx in [&ctx, &child] {
        let cause = ctx.cause().unwrap();
        assert_eq!(cause.downcast_ref::<Signal>(), Some(&Signal::Interrupt));
        assert_eq!(cause.to_string(), "interrupt signal received");
    }
    assert!(!root.is_done(), "a signal never flows up");
    assert!(!stop.forced().is_done(), "one signal does not force");

    send("TERM");
    assert_eq!(done_within_guard(stop.forced()).await, Error::Canceled);
    let cause = stop.forced().cause().unwrap();
    assert_eq!(cause.downcast_ref::<Signal>(), Some(&Signal::Terminate));
}
