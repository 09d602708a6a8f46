//! Leak checks for tests: is anything derived from a context still alive?
//!
//! Go's usual leak check counts goroutines for the whole process, which breaks as soon as tests
//! run in parallel. These look at one tree only: what hangs below the context you pass in.
//! Create a root with [`Context::with_cancel`], run the code under test with it (or with
//! contexts derived from it), then check the root.
//!
//! ```
//! use std::time::Duration;
//! use taskctx::Context;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let (root, _cancel) = Context::background().with_cancel();
//! {
//!     let (ctx, _cancel) = root.with_timeout(Duration::from_secs(30));
//!     let worker = ctx.spawn(|ctx| async move { ctx.done().await });
//!     assert_eq!(taskctx::testing::census(&root).contexts, 1);
//!     drop(_cancel); // the request ends
//!     worker.await.ok();
//! }
//! taskctx::testing::assert_no_leaks(&root).await;
//! # }
//! ```

use std::time::Duration;

use crate::context::Context;

pub use crate::tree::census::Census;

/// Counts what is alive at and below `root`.
///
/// A context that can never be done (background, or directly below `without_cancel`) has
/// nothing registered in it, and counts as empty: check the cancellable context above it
/// instead. Contexts derived below a `without_cancel` are not registered in `root` (they do not
/// follow its cancellation) and are not counted as `contexts`; the tasks that hold them are.
///
/// # Examples
///
/// ```
/// use taskctx::{Context, testing::census};
///
/// let (root, _cancel) = Context::background().with_cancel();
/// let (child, cancel_child) = root.with_cancel();
/// assert_eq!(census(&root).contexts, 1);
/// drop(cancel_child); // a done context leaves its parent at once
/// assert_eq!(census(&root).contexts, 0);
/// # drop(child);
/// ```
pub fn census(root: &Context) -> Census {
    root.scope().map(|scope| scope.census()).unwrap_or_default()
}

/// Panics unless nothing derived from `root` is still alive (see [`Census::is_clean`]).
///
/// Cleanup that is already under way (a task that was told to stop but has not yet been
/// polled to its end) gets a chance to finish: the check yields to the runtime and retries for
/// up to a second of Tokio time before it gives up. Under a paused clock that second passes
/// instantly once the runtime has nothing else to do.
///
/// # Examples
///
/// ```
/// use taskctx::Context;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (root, _cancel) = Context::background().with_cancel();
/// let (ctx, cancel) = root.with_cancel();
/// let task = ctx.spawn(|ctx| async move { ctx.done().await });
/// drop(task); // detached: only the context stops it
/// cancel.cancel();
/// taskctx::testing::assert_no_leaks(&root).await; // waits for the task to wind down
/// # }
/// ```
///
/// # Panics
///
/// If something is still alive after the retries, with the census in the message. Like
/// `tokio::time::sleep`, which it uses between retries, inside a Tokio runtime built without the
/// time driver (`enable_time`) once the first 50 retries have not seen a clean census.
///
/// # Cancel safety
///
/// Cancel safe: it only reads the census between waits; dropping it stops the check.
pub async fn assert_no_leaks(root: &Context) {
    const ROUNDS: u32 = 100;
    for round in 0..ROUNDS {
        if census(root).is_clean() {
            return;
        }
        if round < ROUNDS / 2 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let left = census(root);
    assert!(
        left.is_clean(),
        "contexts derived from {root} are still alive: {left}"
    );
}
