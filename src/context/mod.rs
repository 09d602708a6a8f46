//! The public handle: [`Context`].

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::after_func::AfterFunc;
use crate::error::{Cause, Error};
use crate::future::{CancelledOwned, Done, DoneOwned, RunUntilCancelled, RunWithGrace};
use crate::handle::{CancelCauseHandle, CancelHandle};
use crate::task::TaskHandle;
use crate::tree::node::Node;
use crate::tree::{Scope, run_callback};

mod name;
mod values;

/// A cancellation signal, a deadline and request-scoped values, passed down every call.
///
/// A `Context` is a cheap handle (one pointer and a tag; cloning bumps a reference count) to a
/// node in a tree. Roots come from [`Context::background`]; every other context is derived
/// from a parent with a `with_*` method and is done when its parent is done, when its deadline
/// passes, or when its [`CancelHandle`] is cancelled or dropped, whichever comes first.
/// Cancellation flows down the tree, never up: cancelling a child leaves its parent and
/// siblings alone.
///
/// Pass the context first, by reference, named `ctx`:
///
/// ```
/// use taskctx::{Context, Error};
///
/// async fn fetch_user(ctx: &Context, id: u64) -> Result<String, Error> {
///     ctx.run_until_cancelled(async move {
///         // ... the real work, which stops at the first `.await` after `ctx` is done
///         format!("user {id}")
///     })
///     .await
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (ctx, _cancel) = Context::background().with_timeout(std::time::Duration::from_secs(1));
/// assert_eq!(fetch_user(&ctx, 7).await.as_deref(), Ok("user 7"));
/// # }
/// ```
///
/// # Differences from Go
///
/// - **No forgotten `cancel`.** The handle that cancels a derived context cancels it when
///   dropped, and a context whose every handle is gone leaves nothing behind: not a child entry
///   in its parent, not a timer. Go leaks both until the parent is cancelled.
/// - **Typed values.** Values are looked up by their type or by a [`Key`](crate::Key) type, never by an
///   untyped key, so two crates cannot collide and a lookup needs no type assertion.
/// - **Confirmed stops.** [`Context::spawn`] hands back a handle that resolves once the task
///   has really stopped, with its output or the context's error.
/// - **`after_func` runs in place.** Callbacks run on the thread that cancels, after every
///   internal lock is released, so when `cancel()` returns they have run. Go starts a goroutine
///   for each.
/// - **Merge.** [`Context::merge`] is done when either of two contexts is; Go offers only a
///   recipe.
///
/// # Panics
///
/// Dropping the last handle to a context releases, iteratively, every context above it that
/// nothing else holds, however long the chain. If the `Drop` of a value (or of a cause or
/// callback a released context held) panics, the rest of the chain is still released, and the
/// first such panic is then resumed from the drop, so it is not lost.
#[derive(Clone)]
pub struct Context {
    node: Node,
}

impl Default for Context {
    /// The background context, as [`Context::background`].
    ///
    /// # Examples
    ///
    /// ```
    /// let ctx = taskctx::Context::default();
    /// assert_eq!(ctx.to_string(), "context.Background");
    /// ```
    fn default() -> Self {
        Context::background()
    }
}

impl Context {
    /// The root context: never done, no deadline, no values.
    ///
    /// Use it in `main`, in tests, and at the top of each incoming request, as the parent of
    /// everything else. It costs nothing: no allocation, no shared state.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::Context;
    ///
    /// let ctx = Context::background();
    /// assert!(!ctx.is_done());
    /// assert_eq!(ctx.err(), None);
    /// assert_eq!(ctx.deadline(), None);
    /// ```
    pub const fn background() -> Self {
        Context {
            node: Node::Background,
        }
    }

    /// A root context that marks a place where the right context is not yet known.
    ///
    /// It behaves exactly like [`Context::background`]; only its name differs, so that code
    /// still to be plumbed stands out in logs and reviews.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::Context;
    ///
    /// let ctx = Context::todo();
    /// assert!(!ctx.is_done());
    /// assert_eq!(ctx.to_string(), "context.TODO");
    /// ```
    pub const fn todo() -> Self {
        Context { node: Node::Todo }
    }

    fn from_scope(scope: Arc<Scope>) -> Self {
        Context {
            node: Node::Scope(scope),
        }
    }

    /// The scope that decides when this context is done, if anything can.
    #[inline]
    pub(crate) fn scope(&self) -> Option<&Arc<Scope>> {
        self.node.scope()
    }

    /// The nearest scope at or above this context, across `without_cancel` boundaries: where
    /// the leak check counts a task started on this context.
    pub(crate) fn counting_scope(&self) -> Option<&Arc<Scope>> {
        self.node.counting_scope()
    }

    /// Derives a child that is done when this context is, or when the returned handle is
    /// cancelled or dropped.
    ///
    /// Go's `WithCancel`, with `defer cancel()` made automatic: the handle cancels the child when
    /// it goes out of scope. Call [`CancelHandle::disarm`] to let the child live on without it.
    ///
    /// After `let (ctx, _) = parent.with_cancel();` the context is already cancelled: `_` drops the
    /// handle at once. `let (ctx, _cancel) = …` keeps it to the end of the block.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, Error};
    ///
    /// let parent = Context::background();
    /// let (ctx, cancel) = parent.with_cancel();
    /// assert!(!ctx.is_done());
    /// cancel.cancel();
    /// assert_eq!(ctx.err(), Some(Error::Canceled));
    /// assert!(!parent.is_done(), "cancellation never flows up");
    ///
    /// let (ctx, _) = parent.with_cancel(); // the handle is dropped at once...
    /// assert!(ctx.is_done()); // ...and so the context is already done
    /// ```
    #[inline] // only the pair is built here: see `Context::new_cancel_scope`
    pub fn with_cancel(&self) -> (Context, CancelHandle) {
        let scope = self.new_cancel_scope();
        (Context::from_scope(scope.clone()), CancelHandle::new(scope))
    }

    /// The scope of a `with_cancel` child: out of line, while the pair returned is built in the
    /// caller, from one pointer in a register: returned through memory, the context's two words
    /// would be written one by one and read back by one wider load, a store-forwarding stall
    /// (`CancelTree/depth=1/Root=OpenCanceler`).
    #[inline(never)]
    fn new_cancel_scope(&self) -> Arc<Scope> {
        Scope::with_cancel(&self.node)
    }

    /// Like [`Context::with_cancel`], but the handle cancels with a cause, which the child and
    /// its descendants then report from [`Context::cause`].
    ///
    /// Dropping the handle cancels without a cause; the cause is then [`Error::Canceled`].
    ///
    /// After `let (ctx, _) = parent.with_cancel_cause();` the context is already cancelled: `_`
    /// drops the handle at once. `let (ctx, _cancel) = …` keeps it to the end of the block.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, Error};
    ///
    /// let (ctx, cancel) = Context::background().with_cancel_cause();
    /// let (child, _cancel_child) = ctx.with_cancel();
    /// cancel.cancel("upstream closed the connection");
    /// assert_eq!(child.err(), Some(Error::Canceled));
    /// assert_eq!(child.cause().unwrap().to_string(), "upstream closed the connection");
    /// ```
    #[inline]
    pub fn with_cancel_cause(&self) -> (Context, CancelCauseHandle) {
        let scope = self.new_cancel_scope();
        (
            Context::from_scope(scope.clone()),
            CancelCauseHandle::new(scope),
        )
    }

    /// Derives a child that is done at `deadline` at the latest, with
    /// [`Error::DeadlineExceeded`] if the deadline fires first.
    ///
    /// The child's [`deadline`](Context::deadline) is the earlier of `deadline` and this
    /// context's. A deadline at or before now gives a child that is already done, with
    /// [`Error::DeadlineExceeded`] and this call's cause, even when an earlier deadline of this
    /// context has passed but its timer has not run yet (Go's `WithDeadline` returns a live
    /// child then, until the parent's timer fires). Time is Tokio
    /// time, so `tokio::time::pause` and `advance` control it in tests.
    ///
    /// Arming the deadline costs no task: it sits in Tokio's timer wheel and is taken out when
    /// the context is cancelled or dropped. Outside a Tokio runtime, the deadline is kept by one
    /// crate-wide timer thread on the system clock instead; the same thread takes over if the
    /// runtime that armed the deadline shuts down before it passes. As with any Tokio timer,
    /// the runtime that armed the deadline drives it: a current-thread runtime does so only
    /// while it runs (inside `block_on`), so a context moved to another runtime sees its
    /// deadline fire only while the arming runtime runs or after it is dropped.
    ///
    /// When the deadline passes, the cancellation (reaching the descendants, waking their
    /// `done()` futures, running their [`after_func`](Context::after_func) callbacks) never
    /// holds up the runtime's other timers:
    ///
    /// - on a multi-thread runtime it runs in a task of that runtime, spawned when the timer
    ///   fires, so the context reports done a moment after the deadline, as Go's does once its
    ///   timer's goroutine has run;
    /// - on a current-thread runtime it runs in place, when the runtime's timer fires, so that
    ///   with a paused clock, once `tokio::time::advance` past the deadline returns, the context
    ///   and every descendant report done;
    /// - outside a runtime it runs on a thread the crate starts for the deadlines due at that
    ///   moment.
    ///
    /// No call returns when a deadline's cancellation is over, as `cancel()` does: a task that
    /// awaits `done()` may resume, on another thread, before the cancellation has run the last
    /// `after_func` callback.
    ///
    /// After `let (ctx, _) = parent.with_deadline(…);` the context is already cancelled: `_` drops
    /// the handle at once. `let (ctx, _cancel) = …` keeps it to the end of the block.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::{Context, Error};
    /// use tokio::time::Instant;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let deadline = Instant::now() + Duration::from_millis(50);
    /// let (ctx, _cancel) = Context::background().with_deadline(deadline);
    /// assert_eq!(ctx.deadline(), Some(deadline));
    /// assert_eq!(ctx.done().await, Error::DeadlineExceeded);
    /// assert!(Instant::now() >= deadline);
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// Inside a Tokio runtime built without the time driver (`enable_time`), with Tokio's own
    /// message, like `tokio::time::sleep`. Outside any runtime it does not panic.
    pub fn with_deadline(&self, deadline: Instant) -> (Context, CancelHandle) {
        self.with_deadline_at(deadline, None, None)
    }

    /// `now`, if the caller has just read the clock.
    fn with_deadline_at(
        &self,
        at: Instant,
        cause: Option<Cause>,
        now: Option<Instant>,
    ) -> (Context, CancelHandle) {
        let scope = Scope::with_deadline(&self.node, at, cause, now);
        (Context::from_scope(scope.clone()), CancelHandle::new(scope))
    }

    /// Like [`Context::with_deadline`], but when the deadline fires the child reports `cause`
    /// from [`Context::cause`]. A cancellation before the deadline reports no such cause.
    ///
    /// After `let (ctx, _) = parent.with_deadline_cause(…);` the context is already cancelled: `_`
    /// drops the handle at once. `let (ctx, _cancel) = …` keeps it to the end of the block.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::{Context, Error};
    /// use tokio::time::Instant;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let at = Instant::now() + Duration::from_secs(2);
    /// let (ctx, _cancel) = Context::background().with_deadline_cause(at, "payment provider too slow");
    /// assert_eq!(ctx.done().await, Error::DeadlineExceeded);
    /// assert_eq!(ctx.cause().unwrap().to_string(), "payment provider too slow");
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// As [`Context::with_deadline`].
    pub fn with_deadline_cause(
        &self,
        deadline: Instant,
        cause: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> (Context, CancelHandle) {
        self.with_deadline_at(deadline, Some(Cause::new(cause.into())), None)
    }

    /// Derives a child that is done `timeout` from now at the latest: `with_deadline(now +
    /// timeout)`.
    ///
    /// A zero timeout gives a child that is already done. A timeout so long that `now +
    /// timeout` does not fit in an [`Instant`] (such as `Duration::MAX`) can never pass: the
    /// child then has no deadline of its own and behaves as [`Context::with_cancel`].
    ///
    /// After `let (ctx, _) = parent.with_timeout(…);` the context is already cancelled: `_` drops
    /// the handle at once. `let (ctx, _cancel) = …` keeps it to the end of the block.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::{Context, Error};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(100));
    /// assert!(ctx.remaining() <= Some(Duration::from_millis(100)));
    /// assert_eq!(ctx.done().await, Error::DeadlineExceeded);
    ///
    /// let (forever, _cancel) = Context::background().with_timeout(Duration::MAX);
    /// assert_eq!(forever.deadline(), None);
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// As [`Context::with_deadline`].
    pub fn with_timeout(&self, timeout: Duration) -> (Context, CancelHandle) {
        let now = Instant::now();
        match now.checked_add(timeout) {
            Some(deadline) => self.with_deadline_at(deadline, None, Some(now)),
            None => self.with_cancel(),
        }
    }

    /// Like [`Context::with_timeout`], but when the timeout fires the child reports `cause`.
    ///
    /// After `let (ctx, _) = parent.with_timeout_cause(…);` the context is already cancelled: `_`
    /// drops the handle at once. `let (ctx, _cancel) = …` keeps it to the end of the block.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::Context;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let (ctx, _cancel) =
    ///     Context::background().with_timeout_cause(Duration::from_secs(1), "inventory lookup");
    /// ctx.done().await;
    /// assert_eq!(ctx.cause().unwrap().to_string(), "inventory lookup");
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// As [`Context::with_deadline`].
    pub fn with_timeout_cause(
        &self,
        timeout: Duration,
        cause: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> (Context, CancelHandle) {
        let now = Instant::now();
        match now.checked_add(timeout) {
            Some(deadline) => {
                self.with_deadline_at(deadline, Some(Cause::new(cause.into())), Some(now))
            }
            None => self.with_cancel(),
        }
    }

    /// Derives a child that is done as soon as this context or `other` is, with the error and
    /// cause of whichever was done first. If both are already done when the merge is made, the
    /// child reports this context's error and cause.
    ///
    /// Values are looked up in this context only; the deadline is the earlier of the two.
    /// Useful when work serves two lifetimes at once, such as a request and the server's
    /// shutdown. The child is registered in both parents and removed from both when it is done
    /// or dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, Error};
    ///
    /// let (request, _cancel_request) = Context::background().with_cancel();
    /// let (shutdown, begin_shutdown) = Context::background().with_cancel_cause();
    /// let ctx = request.merge(&shutdown);
    /// assert!(!ctx.is_done());
    /// begin_shutdown.cancel("server shutting down");
    /// assert_eq!(ctx.err(), Some(Error::Canceled));
    /// assert_eq!(ctx.cause().unwrap().to_string(), "server shutting down");
    /// assert!(!request.is_done());
    /// ```
    pub fn merge(&self, other: &Context) -> Context {
        Context::from_scope(Scope::merge(&self.node, &other.node))
    }

    /// [`Context::with_deadline`] and [`Context::with_cancel_cause`] in one child: done at
    /// `deadline` at the latest, or earlier when its handle cancels it with a cause. One
    /// context where `with_cancel_cause` followed by `with_deadline` would make two.
    ///
    /// After `let (ctx, _) = parent.with_deadline_cancel_cause(…);` the context is already
    /// cancelled: `_` drops the handle at once. `let (ctx, _cancel) = …` keeps it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::{Context, Error};
    /// use tokio::time::Instant;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let at = Instant::now() + Duration::from_secs(5);
    /// let (ctx, cancel) = Context::background().with_deadline_cancel_cause(at);
    /// assert_eq!(ctx.deadline(), Some(at));
    /// cancel.cancel("client went away");
    /// assert_eq!(ctx.err(), Some(Error::Canceled));
    /// assert_eq!(ctx.cause().unwrap().to_string(), "client went away");
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// As [`Context::with_deadline`].
    pub fn with_deadline_cancel_cause(&self, deadline: Instant) -> (Context, CancelCauseHandle) {
        let scope = Scope::with_deadline(&self.node, deadline, None, None);
        (
            Context::from_scope(scope.clone()),
            CancelCauseHandle::new(scope),
        )
    }

    /// [`Context::with_timeout`] and [`Context::with_cancel_cause`] in one child: done
    /// `timeout` from now at the latest, or earlier when its handle cancels it with a cause.
    /// A timeout too long for an [`Instant`] gives no deadline, as `with_timeout`'s.
    ///
    /// After `let (ctx, _) = parent.with_timeout_cancel_cause(…);` the context is already
    /// cancelled: `_` drops the handle at once. `let (ctx, _cancel) = …` keeps it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::{Context, Error};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let (ctx, _cancel) = Context::background().with_timeout_cancel_cause(Duration::from_secs(1));
    /// assert_eq!(ctx.done().await, Error::DeadlineExceeded);
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// As [`Context::with_deadline`].
    pub fn with_timeout_cancel_cause(&self, timeout: Duration) -> (Context, CancelCauseHandle) {
        let now = Instant::now();
        let Some(deadline) = now.checked_add(timeout) else {
            return self.with_cancel_cause();
        };
        let scope = Scope::with_deadline(&self.node, deadline, None, Some(now));
        (
            Context::from_scope(scope.clone()),
            CancelCauseHandle::new(scope),
        )
    }

    /// Derives a child that is done when this context is or when `token` is cancelled, with
    /// [`Error::Canceled`] in the latter case.
    ///
    /// This is how code that already speaks `CancellationToken` (a shutdown token, a library
    /// that takes one) joins a context tree. Watching the token costs no task.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, Error};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let shutdown = CancellationToken::new();
    /// let ctx = Context::background().with_value("svc").with_token(shutdown.clone());
    /// assert!(!ctx.is_done());
    /// shutdown.cancel();
    /// assert_eq!(ctx.err(), Some(Error::Canceled));
    /// ```
    pub fn with_token(&self, token: CancellationToken) -> Context {
        Context::from_scope(Scope::with_token(&self.node, token, None))
    }

    /// Like [`Context::with_token`], but when `token` is cancelled the child reports `cause`
    /// from [`Context::cause`] (its error is [`Error::Canceled`]). If this context is done
    /// first, the child reports this context's error and cause instead, as any child does.
    ///
    /// This is how a shutdown token (such as the one driving axum's `with_graceful_shutdown`)
    /// becomes a root whose descendants can tell a shutdown from their own cancellation by
    /// their cause.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, Error};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let shutdown = CancellationToken::new();
    /// let root = Context::background().with_token_cause(shutdown.clone(), "shutting down");
    /// let (request, _done) = root.with_cancel();
    /// shutdown.cancel();
    /// assert_eq!(request.err(), Some(Error::Canceled));
    /// assert_eq!(request.cause().unwrap().to_string(), "shutting down");
    /// ```
    pub fn with_token_cause(
        &self,
        token: CancellationToken,
        cause: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Context {
        let cause = Cause::new(cause.into());
        Context::from_scope(Scope::with_token(&self.node, token, Some(cause)))
    }

    /// A root context that is done when `token` is cancelled: `background().with_token(token)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::Context;
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let token = CancellationToken::new();
    /// let ctx = Context::from_token(token.clone());
    /// token.cancel();
    /// assert!(ctx.is_done());
    /// ```
    pub fn from_token(token: CancellationToken) -> Context {
        Context::background().with_token(token)
    }

    /// A root context that is done, reporting `cause`, when `token` is cancelled:
    /// `background().with_token_cause(token, cause)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, Error};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let token = CancellationToken::new();
    /// let ctx = Context::from_token_cause(token.clone(), "shutting down");
    /// token.cancel();
    /// assert_eq!(ctx.err(), Some(Error::Canceled));
    /// assert_eq!(ctx.cause().unwrap().to_string(), "shutting down");
    /// ```
    pub fn from_token_cause(
        token: CancellationToken,
        cause: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Context {
        Context::background().with_token_cause(token, cause)
    }

    /// A `CancellationToken` that is cancelled when this context is done.
    ///
    /// Hand it to code that takes a token. Each call returns a new child token: cancelling it
    /// affects only that token, never the context, so code that receives a context cannot
    /// cancel it through a token either. The first call on a context allocates the token the
    /// children hang from; a token of a never-done context is never cancelled.
    ///
    /// A token does not keep its context alive, so that a token nobody cancels cannot pin a
    /// context in its parent (Go's leak). Once every handle to the context is dropped (its
    /// clones and its cancel handle, which cancels it unless disarmed), the context is released
    /// together with its own deadline timer, token watch and registration in a merge partner;
    /// the token then still follows the contexts this one was derived from (for a merge, the
    /// first). Keep the context, or its cancel handle, for as long as the token must follow it.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::Context;
    ///
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// let token = ctx.token();
    /// token.cancel();
    /// assert!(!ctx.is_done(), "a token cannot cancel its context");
    ///
    /// let token = ctx.token();
    /// cancel.cancel();
    /// assert!(token.is_cancelled());
    /// ```
    pub fn token(&self) -> CancellationToken {
        match self.scope() {
            Some(scope) => scope.token(),
            None => CancellationToken::new(),
        }
    }

    /// Arranges for `f` to run once when this context is done, or at once if it already is.
    ///
    /// `f` runs on the thread that cancels the context (for a deadline, see
    /// [`with_deadline`](Context::with_deadline) for where that is), after every lock of the
    /// crate has been released: it may cancel contexts, this one included, derive new ones, or
    /// call [`AfterFunc::stop`], without deadlocking. When the cancelling call returns, `f` has
    /// run. Keep `f` short and non-blocking, as you would a waker; to do async work, spawn a
    /// task from it. A panic in `f` is caught and reported as a `tracing` error event; the
    /// cancellation and the other callbacks go on. (So is a panic in a waker of a `done()`
    /// future that the cancellation wakes.)
    ///
    /// On a context that can never be done (background, or below `without_cancel`), `f` is
    /// dropped without running. If every handle to the context is dropped before it is done,
    /// `f` is dropped too. Avoid capturing in `f` a clone of the same context, or its
    /// [`CancelHandle`](crate::CancelHandle): `f` is held by the context until it is done, so
    /// the context would then stay alive, and registered in its parent, until it is cancelled
    /// by other means (a parent, a deadline, `cancel()`), never by dropping the handles.
    ///
    /// Go runs each `AfterFunc` callback in a new goroutine; this runs it in place, which makes
    /// "after `cancel()` returns, the callbacks have run" a guarantee.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use taskctx::Context;
    ///
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// let closed = Arc::new(AtomicBool::new(false));
    /// let flag = closed.clone();
    /// let _stop = ctx.after_func(move || flag.store(true, Ordering::SeqCst));
    /// cancel.cancel();
    /// assert!(closed.load(Ordering::SeqCst), "ran before cancel() returned");
    /// ```
    pub fn after_func(&self, f: impl FnOnce() + Send + 'static) -> AfterFunc {
        let Some(scope) = self.scope() else {
            return AfterFunc::unregistered();
        };
        match scope.add_callback(Box::new(f)) {
            Ok(slot) => AfterFunc::registered(scope.clone(), slot),
            Err(f) => {
                run_callback(f);
                AfterFunc::ran()
            }
        }
    }

    /// A future that completes, with this context's error, when the context is done.
    ///
    /// Equivalent to `async fn done(&self) -> Error`. On a context that is already done it is
    /// ready at once, without allocating. On one that can never be done it never completes. A
    /// pending future may be woken once before its context is done; polled again, it is
    /// pending again and woken when the context is done, as `select!` and other pollers
    /// expect.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::{Context, Error};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(1));
    /// let mut ticks = 0;
    /// let mut interval = tokio::time::interval(Duration::from_millis(300));
    /// let err = loop {
    ///     tokio::select! {
    ///         err = ctx.done() => break err,
    ///         _ = interval.tick() => ticks += 1,
    ///     }
    /// };
    /// assert_eq!(err, Error::DeadlineExceeded);
    /// assert_eq!(ticks, 4); // at 0, 300, 600 and 900 ms
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future before it completes loses nothing, and a new one
    /// observes the same state. Use it freely in `tokio::select!` loops.
    #[inline]
    pub fn done(&self) -> Done<'_> {
        Done::new(self.scope())
    }

    /// Like [`Context::done`], but the future owns a handle to the context, so it is `'static`
    /// and can move into a spawned task or be stored.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, Error};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// let watcher = tokio::spawn(ctx.done_owned());
    /// cancel.cancel();
    /// assert_eq!(watcher.await.unwrap(), Error::Canceled);
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`Context::done`].
    pub fn done_owned(&self) -> DoneOwned {
        DoneOwned::new(self.scope().cloned())
    }

    /// A `'static` future that completes, with `()`, when this context is done: the shutdown
    /// signal that APIs such as axum's `serve(…).with_graceful_shutdown(signal)` take.
    ///
    /// Equivalent to `async fn cancelled_owned(&self)`, and named after tokio-util's
    /// `CancellationToken::cancelled_owned`. It completes when the context is done for any
    /// reason, its deadline included. [`Context::done_owned`] is the same future with the
    /// context's [`Error`] as its output, for when the reason matters.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::future::Future;
    /// use std::time::Duration;
    /// use taskctx::Context;
    ///
    /// // Stands in for `axum::serve(listener, app).with_graceful_shutdown(shutdown)`.
    /// async fn serve(shutdown: impl Future<Output = ()> + Send + 'static) -> &'static str {
    ///     shutdown.await;
    ///     "stopped taking requests"
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let (server_ctx, stop) = Context::background().with_cancel();
    /// let server = tokio::spawn(serve(server_ctx.cancelled_owned()));
    /// tokio::time::sleep(Duration::from_secs(60)).await; // serving
    /// stop.cancel();
    /// assert_eq!(server.await.unwrap(), "stopped taking requests");
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`Context::done`].
    pub fn cancelled_owned(&self) -> CancelledOwned {
        CancelledOwned::new(self.done_owned())
    }

    /// Whether this context is done. One atomic load: no lock, no clock read.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::Context;
    ///
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// assert!(!ctx.is_done());
    /// drop(cancel);
    /// assert!(ctx.is_done());
    /// ```
    #[inline]
    pub fn is_done(&self) -> bool {
        // Matched here rather than through `scope()`: that match compiles to a jump table and
        // a jump back to a shared load, three taken branches a check; with the arms apart the
        // scope's load follows its compare (`ContextCancelDone`, `ErrOK` and
        // `ErrOKThroughValue` in `benches/go_suite.rs`).
        match &self.node {
            Node::Scope(scope) => scope.is_done(),
            Node::Value(node) => node.scope.as_ref().is_some_and(|scope| scope.is_done()),
            _ => false,
        }
    }

    /// `None` while the context is live; once it is done, why, and the same answer forever.
    ///
    /// [`Error::DeadlineExceeded`] only if the deadline (this context's or an ancestor's) fired
    /// before any cancellation; otherwise [`Error::Canceled`]. One atomic load.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, Error};
    ///
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// assert_eq!(ctx.err(), None);
    /// cancel.cancel();
    /// assert_eq!(ctx.err(), Some(Error::Canceled));
    /// ```
    #[inline]
    pub fn err(&self) -> Option<Error> {
        // As in `is_done`.
        match &self.node {
            Node::Scope(scope) => scope.err(),
            Node::Value(node) => node.scope.as_ref().and_then(|scope| scope.err()),
            _ => None,
        }
    }

    /// `None` while the context is live; once it is done, the error that explains why.
    ///
    /// The first cancellation wins: a context cancelled through an ancestor reports the
    /// ancestor's cause, one cancelled first keeps its own. A deadline's cause is reported only
    /// if the deadline fired. Where no cause was given, the cause is the [`Error`] itself. A
    /// `without_cancel` context never has one.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, Error};
    ///
    /// let (parent, cancel_parent) = Context::background().with_cancel_cause();
    /// let (child, cancel_child) = parent.with_cancel_cause();
    /// let (grandchild, _cancel) = child.with_cancel();
    /// cancel_child.cancel("child first");
    /// cancel_parent.cancel("parent second");
    /// assert_eq!(grandchild.cause().unwrap().to_string(), "child first");
    /// assert_eq!(parent.cause().unwrap().to_string(), "parent second");
    ///
    /// let (plain, cancel) = Context::background().with_cancel();
    /// cancel.cancel();
    /// assert_eq!(plain.cause().unwrap().downcast_ref::<Error>(), Some(&Error::Canceled));
    /// ```
    pub fn cause(&self) -> Option<Cause> {
        self.scope().and_then(|scope| scope.cause())
    }

    /// The time by which this context will be done on its own, if there is one: the earliest
    /// deadline of the context and its ancestors.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::Context;
    /// use tokio::time::Instant;
    ///
    /// let soon = Instant::now() + Duration::from_secs(1);
    /// let (outer, _c1) = Context::background().with_deadline(soon);
    /// let (inner, _c2) = outer.with_timeout(Duration::from_secs(60));
    /// assert_eq!(inner.deadline(), Some(soon), "a child never outlives its parent's deadline");
    /// assert_eq!(Context::background().deadline(), None);
    /// ```
    #[inline]
    pub fn deadline(&self) -> Option<Instant> {
        self.scope().and_then(|scope| scope.deadline())
    }

    /// The time left until [`Context::deadline`]; zero once it has passed, `None` without one.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::Context;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(10));
    /// tokio::time::advance(Duration::from_secs(4)).await;
    /// assert_eq!(ctx.remaining(), Some(Duration::from_secs(6)));
    /// # }
    /// ```
    pub fn remaining(&self) -> Option<Duration> {
        let deadline = self.deadline()?;
        Some(deadline.saturating_duration_since(Instant::now()))
    }

    /// Runs `future` until it completes or this context is done, whichever comes first.
    ///
    /// Resolves to `Ok(output)`, or to `Err` with the context's error; in the latter case the
    /// future is dropped without being polled again. Equivalent to
    /// `async fn run_until_cancelled<F: Future>(&self, future: F) -> Result<F::Output, Error>`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::{Context, Error};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(1));
    /// let quick = ctx.run_until_cancelled(async { 1 + 1 }).await;
    /// assert_eq!(quick, Ok(2));
    /// let slow = ctx.run_until_cancelled(tokio::time::sleep(Duration::from_secs(5))).await;
    /// assert_eq!(slow, Err(Error::DeadlineExceeded));
    /// # }
    /// ```
    ///
    /// # Which side wins
    ///
    /// The context is checked first on every poll: once it is done, the future is not polled
    /// again, even if it would have completed in that same poll. A future that completes in a
    /// poll that began before the context was done keeps its output.
    ///
    /// # Cancel safety
    ///
    /// As cancel safe as `future` is: dropping this drops `future`.
    pub fn run_until_cancelled<F: Future>(&self, future: F) -> RunUntilCancelled<'_, F> {
        RunUntilCancelled::new(self.done(), future)
    }

    /// Runs `future` to completion, or until `grace` after this context is done, whichever
    /// comes first.
    ///
    /// Resolves to `Ok(output)` if `future` completes, before the context is done or within
    /// the grace; or to `Err` with the context's error once the grace has run out, and
    /// `future` is then not polled again (it is dropped with the returned future). Until then
    /// `future` is polled as usual, so that it can see [`Context::done`] ready and clean up.
    /// Equivalent to
    /// `async fn run_with_grace<F: Future>(&self, grace: Duration, future: F) -> Result<F::Output, Error>`.
    ///
    /// The grace is Tokio time, counted from the first poll that sees the context done (the
    /// cancellation wakes the future, so that is as soon as its executor gets to it). So:
    ///
    /// - on a context already done, `future` is still polled, and has the whole grace;
    /// - a zero grace is [`Context::run_until_cancelled`]: once the context is done, `future`
    ///   is not polled again, and on a context already done it is never polled;
    /// - a grace whose end does not fit in an [`Instant`] (such as `Duration::MAX`) never runs
    ///   out: the context never stops `future`, and the result is always `Ok`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::{Context, Error};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(1));
    /// let polite = ctx.run_with_grace(Duration::from_secs(2), async {
    ///     ctx.done().await; // work until the deadline...
    ///     tokio::time::sleep(Duration::from_millis(500)).await; // ...then flush
    ///     "flushed"
    /// });
    /// assert_eq!(polite.await, Ok("flushed"));
    ///
    /// let stubborn = ctx.run_with_grace(Duration::from_secs(2), std::future::pending::<()>());
    /// assert_eq!(stubborn.await, Err(Error::DeadlineExceeded), "dropped after 2 s of grace");
    /// # }
    /// ```
    ///
    /// # Which side wins
    ///
    /// Until the context is done, `future` keeps any output it completes with. Once the grace
    /// has begun, its end is checked first on every poll: once it has passed, `future` is not
    /// polled again, even if it would have completed in that same poll.
    ///
    /// # Cancel safety
    ///
    /// As cancel safe as `future` is: dropping this drops `future`.
    ///
    /// # Panics
    ///
    /// When it sees the context done with a grace that has an end, outside a Tokio runtime or
    /// inside one built without the time driver (`enable_time`), with Tokio's own message, as
    /// `tokio::time::sleep`.
    pub fn run_with_grace<F: Future>(&self, grace: Duration, future: F) -> RunWithGrace<'_, F> {
        RunWithGrace::new(self.done(), grace, future)
    }

    /// Wraps `stream` so that it ends when this context is done: its items come as `Ok` until
    /// then, followed by one `Err` with the context's error. If `stream` ends first, so does
    /// the result, without an error.
    ///
    /// The stream counterpart of [`Context::run_until_cancelled`], named after `futures`'
    /// `StreamExt::take_until`, which ends a stream silently; this one says why it ended, so a
    /// consumer's `?` stops at the error as it would at the stream's own. The result owns a
    /// handle to the context: it is `'static` if `stream` is, to return or move into a task.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::{Stream, StreamExt, stream};
    /// use taskctx::{Context, Error};
    ///
    /// // Go's `for { select { case <-ctx.Done(): return ctx.Err(); case v := <-values: … } }`.
    /// async fn sum(ctx: &Context, values: impl Stream<Item = u32>) -> Result<u32, Error> {
    ///     let mut values = std::pin::pin!(ctx.take_until_done(values));
    ///     let mut sum = 0;
    ///     while let Some(value) = values.next().await {
    ///         sum += value?;
    ///     }
    ///     Ok(sum)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// assert_eq!(sum(&ctx, stream::iter([1, 2, 3])).await, Ok(6));
    /// cancel.cancel();
    /// assert_eq!(sum(&ctx, stream::iter([1, 2, 3])).await, Err(Error::Canceled));
    /// # }
    /// ```
    ///
    /// # Which side wins
    ///
    /// As in [`Context::run_until_cancelled`]: the context is checked first on every poll, so
    /// once it is done the next poll yields its error, and `stream` is not polled again, even
    /// if it had an item ready. An item yielded in a poll that began before the context was
    /// done is kept.
    ///
    /// # Cancel safety
    ///
    /// `next()` on the result is as cancel safe as on `stream` (see
    /// [`TakeUntilDone`](crate::TakeUntilDone)).
    #[cfg(feature = "futures")]
    #[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
    pub fn take_until_done<S: futures_core::Stream>(&self, stream: S) -> crate::TakeUntilDone<S> {
        crate::TakeUntilDone::new(self.done_owned(), stream)
    }

    /// Spawns a Tokio task that runs `f(ctx)` until it completes or this context is done.
    ///
    /// **Drops the future at its next `.await` once the context is done**: a future that
    /// selects on `ctx.done()` to run its cleanup (flush a buffer, ack a message, close a
    /// connection politely) is dropped before that cleanup runs. Use
    /// [`Context::spawn_graceful`] for work that must clean up.
    ///
    /// `f` is called at once with a clone of this context, and the future it returns runs on
    /// the current runtime inside the caller's current `tracing` span. The handle resolves once
    /// the task has stopped: to `Ok(output)`, or to `Err` with the context's error if the
    /// context was done first (the future is then dropped, as in
    /// [`Context::run_until_cancelled`], and the same side wins; on a context already done,
    /// `f` is still called but its future is never polled). Awaiting the handle is how a caller confirms that the work has really
    /// stopped. Dropping the handle detaches the task, which still stops when the context is
    /// done.
    ///
    /// A future that watches the context itself (say, by selecting on `ctx.done()`) and
    /// returns when it is done, without a further `.await`, may be the first to notice a
    /// cancellation; the handle then resolves to `Ok` with what the future returned. Match on
    /// both if the future does that.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::{Context, Error};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// let worker = ctx.spawn(|ctx| async move {
    ///     let mut rounds = 0u32;
    ///     while !ctx.is_done() {
    ///         tokio::time::sleep(Duration::from_millis(10)).await;
    ///         rounds += 1;
    ///     }
    ///     rounds
    /// });
    /// tokio::time::sleep(Duration::from_millis(35)).await;
    /// cancel.cancel();
    /// assert_eq!(worker.await, Err(Error::Canceled), "stopped, and we know it");
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Awaiting the [`TaskHandle`] is cancel safe: dropping it detaches the task, which still
    /// stops when this context is done.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn`. Awaiting the handle resumes, once, a panic
    /// that happened inside the task (see [`TaskHandle`]).
    pub fn spawn<F, Fut>(&self, f: F) -> TaskHandle<Fut::Output>
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        TaskHandle::spawn(self, f(self.clone()))
    }

    /// Spawns a Tokio task that runs `f(ctx)`, and gives it up to `grace` after this context
    /// is done to finish its cleanup before it is dropped.
    ///
    /// **Keeps polling the future for up to `grace` once the context is done**, so that it can
    /// see [`Context::done`] ready and clean up (flush a buffer, ack a message, close a
    /// connection politely); a future still running when the grace runs out is dropped at the
    /// `.await` it waits in. This is [`Context::spawn`] with the work wrapped in
    /// [`Context::run_with_grace`] rather than [`Context::run_until_cancelled`]; Go's
    /// goroutines, which are never dropped, behave as with an endless grace.
    ///
    /// `f` is called at once with a clone of this context, and the future it returns runs on
    /// the current runtime inside the caller's current `tracing` span. The handle resolves once
    /// the task has stopped: to `Ok(output)` if the future completed, before the context was
    /// done or within the grace; to `Err` with the context's error if the grace ran out. The
    /// task counts in the leak check ([`testing`](crate::testing)) until it ends, grace
    /// included. The grace is as in [`Context::run_with_grace`]:
    ///
    /// - Tokio time (so `tokio::time::pause` makes tests of it deterministic), counted from
    ///   when the task first sees the context done: the cancellation wakes it, so that is as
    ///   soon as the runtime gets to it;
    /// - on a context already done at the spawn, the future still runs, and has the whole
    ///   grace: it sees `ctx.done()` ready at once and can clean up;
    /// - `Duration::ZERO` is exactly [`Context::spawn`]: the future is dropped at its next
    ///   `.await` once the context is done, and on a context already done it is never polled;
    /// - a grace whose end does not fit in an [`Instant`] (such as `Duration::MAX`) never runs
    ///   out: the context never drops the future, the handle always resolves to `Ok` (unless
    ///   the task is [aborted](TaskHandle::abort)), and a future that ignores the context runs
    ///   forever.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::{Context, Error};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// let worker = ctx.spawn_graceful(Duration::from_secs(5), |ctx| async move {
    ///     let mut buffered = 0u32;
    ///     loop {
    ///         tokio::select! {
    ///             _ = ctx.done() => break,
    ///             _ = tokio::time::sleep(Duration::from_millis(10)) => buffered += 1,
    ///         }
    ///     }
    ///     tokio::time::sleep(Duration::from_secs(1)).await; // flush, within the grace
    ///     buffered
    /// });
    /// let stubborn = ctx.spawn_graceful(Duration::from_secs(5), |_ctx| std::future::pending::<()>());
    /// tokio::time::sleep(Duration::from_millis(35)).await;
    /// cancel.cancel();
    /// assert_eq!(worker.await, Ok(3), "cleaned up, and handed back what it flushed");
    /// assert_eq!(stubborn.await, Err(Error::Canceled), "dropped once the grace ran out");
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Awaiting the [`TaskHandle`] is cancel safe: dropping it detaches the task, which still
    /// stops when this context is done and its grace has run out, or sooner if it finishes.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn`. Awaiting the handle resumes, once, a panic
    /// that happened inside the task (see [`TaskHandle`]). In a runtime built without the time
    /// driver (`enable_time`), the task panics as `tokio::time::sleep` does once it sees the
    /// context done with a grace that has an end.
    pub fn spawn_graceful<F, Fut>(&self, grace: Duration, f: F) -> TaskHandle<Fut::Output>
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        TaskHandle::spawn_graceful(self, grace, f(self.clone()))
    }
}

impl Drop for Context {
    #[inline]
    fn drop(&mut self) {
        self.node.let_go();
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("name", &format_args!("{self}"))
            .field("err", &self.err())
            .field("deadline", &self.deadline())
            .finish()
    }
}
