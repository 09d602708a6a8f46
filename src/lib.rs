//! Go's `context` package for Tokio: cancellation trees, deadlines, causes and typed
//! request-scoped values, with Go's leaks made impossible by ownership.
//!
//! A [`Context`] carries three things down every call: a signal that says the work is no
//! longer wanted, a deadline, and values scoped to one request. Contexts form a tree. Roots
//! come from [`Context::background`]; each derived context is done when its parent is, when its
//! own deadline passes, or when its handle cancels it.
//!
//! ```
//! use std::time::Duration;
//! use taskctx::{Context, Error};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // One context per request, with a budget of 2 seconds.
//! let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(2));
//! let ctx = ctx.with_value(RequestId(17));
//!
//! // Everything below receives `&ctx` and stops when it is done.
//! assert_eq!(handle(&ctx).await, Err(Error::DeadlineExceeded));
//!
//! #[derive(Debug)]
//! struct RequestId(u64);
//!
//! async fn handle(ctx: &Context) -> Result<(), Error> {
//!     let id = ctx.value::<RequestId>().map_or(0, |id| id.0);
//!     loop {
//!         tokio::select! {
//!             err = ctx.done() => return Err(err),
//!             _ = tokio::time::sleep(Duration::from_millis(500)) => {
//!                 println!("request {id}: still working");
//!             }
//!         }
//!     }
//! }
//! # }
//! ```
//!
//! # Idioms
//!
//! - Take the context as the first parameter, `ctx: &Context`. Never store one in a struct
//!   that outlives the request; pass it along.
//! - Derive a context for each unit of work that can be abandoned on its own, and let its
//!   handle's drop cancel it when the unit ends: `let (ctx, _cancel) = ctx.with_cancel();`.
//! - Stop at the next `.await` once the context is done: `tokio::select!` on
//!   [`Context::done`], or wrap the work in [`Context::run_until_cancelled`],
//!   [`with_timeout`] or [`Context::spawn`], which drop the work at that `.await`.
//! - Work that must clean up when told to stop (flush a buffer, ack a message, close a
//!   connection) selects on [`Context::done`], cleans up, and runs under
//!   [`Context::spawn_graceful`] or [`Context::run_with_grace`], which give it a grace for
//!   that before they drop it.
//! - Use values for data that crosses API boundaries with a request (ids, identities, trace
//!   handles), looked up by type or by a [`Key`]; not to pass optional arguments.
//! - Work that must outlive the request gets [`Context::without_cancel`] and a timeout of its
//!   own.
//!
//! # What Go gets wrong, and what this crate does instead
//!
//! | Go | taskctx |
//! |---|---|
//! | A forgotten `cancel()` keeps the child in its parent's map and its timer armed until the parent is cancelled | [`CancelHandle`] cancels on drop; a context whose handles are all gone leaves nothing registered and no timer armed |
//! | A goroutine that never selects on `Done` leaks | [`Context::spawn`] and [`with_timeout`] drop the work once the context is done |
//! | The caller cannot easily confirm that work stopped | the [`TaskHandle`] of [`Context::spawn`] resolves only once the task has stopped |
//! | `errgroup` reports the first error only, and cannot bound a shutdown | a [`TaskGroup`]'s [`Report`] says how each task stopped; [`TaskGroup::shutdown`] aborts what outlives its grace |
//! | `Value(key any) any`: keys collide across packages, results need a type assertion | [`Context::value`] and [`Context::get`] are typed, keyed by types nobody else can name |
//! | No way to combine two cancellation sources | [`Context::merge`] |
//! | `AfterFunc` callbacks run in unordered goroutines | [`Context::after_func`] callbacks have run when the cancelling call returns |
//!
//! # Task groups
//!
//! [`TaskGroup`] runs named tasks under one context and stops them together, with a report of
//! how each one stopped: Go's `errgroup` (with [`GroupBuilder::fail_fast`] and
//! [`GroupBuilder::limit`]) and tokio-util's `TaskTracker`, where
//! [`shutdown`](TaskGroup::shutdown) gives every task a grace period to see its context done
//! and clean up, aborts the rest, and says which were aborted.
//!
//! ```
//! use std::time::Duration;
//! use taskctx::{Context, TaskGroup};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let group = TaskGroup::new(&Context::background());
//! for id in 0..3 {
//!     group
//!         .spawn(format!("conn-{id}"), |ctx| async move {
//!             ctx.done().await; // serve until the group is shut down, then clean up
//!             Ok::<(), std::io::Error>(())
//!         })
//!         .unwrap();
//! }
//! let report = group.shutdown("SIGTERM", Duration::from_secs(10)).await;
//! assert_eq!(report.counts().finished, 3);
//! report.into_result().unwrap();
//! # }
//! ```
//!
//! # Interoperability
//!
//! [`Context::token`] hands out a tokio-util [`CancellationToken`] that is cancelled with the
//! context, for code that takes a token; [`Context::with_token`] and [`Context::from_token`]
//! go the other way, so a shutdown token (such as the one driving axum's graceful shutdown)
//! can be the root of a context tree. [`Context::cancelled_owned`] is the `Future<Output = ()>`
//! that such APIs take as their shutdown signal.
//!
//! # Cargo features
//!
//! - `futures` (off by default): `futures_core`'s `FusedFuture` for [`Done`], [`DoneOwned`],
//!   [`CancelledOwned`], [`RunUntilCancelled`], [`RunWithGrace`], [`Timeout`] and
//!   [`TaskHandle`], each terminated once it has returned `Ready`, so that `futures::select!`
//!   takes them without `.fuse()`; and `Context::take_until_done`, a `Stream` that ends when
//!   its context is done (with its error as the last item). It adds one dependency,
//!   `futures-core`.
//! - `signal` (off by default): [`signal::notify_context`], Go's `signal.NotifyContext`: a
//!   context cancelled by `SIGINT` or `SIGTERM` with the signal as its cause, and a second one
//!   cancelled by the second signal. It turns on Tokio's `signal` feature.
//! - `tower` (off by default): [`service`], a context per request in tower servers (a layer
//!   that reads `grpc-timeout` and caps the budget, cancels on shutdown and when the client
//!   goes away), a client layer that sends the remaining budget on, and the `grpc-timeout`
//!   codec. It adds `tower-layer`, `tower-service` and `http`.
//! - `axum` (off by default, turns on `tower`): [`Context`] as an axum extractor, and
//!   [`Error`] as a response (504, or 499 for a cancellation). It adds `axum-core`.
//! - `tonic` (off by default, turns on `tower`): [`Error`] converts to `tonic::Status`
//!   (`DEADLINE_EXCEEDED`, `CANCELLED`), and tonic requests carry contexts. It adds `tonic`
//!   without default features.
//!
//! # Performance
//!
//! What a program can rely on:
//!
//! - Checks do not allocate: [`Context::is_done`], [`Context::err`], [`Context::cause`],
//!   [`Context::deadline`] and value lookups, on a live or a done context. `is_done` and `err`
//!   read an atomic and take no lock.
//! - Awaiting [`Context::done`] on a context that is already done does not allocate, and
//!   cancelling a context wakes a few waiters without allocating.
//! - A cancellable context is one allocation. Its lock and its room for registrations are
//!   made later, once, if anything needs them: deriving from it a context that is itself
//!   derived from or waited on, a `done()` waiting on it, an `after_func`, a deadline
//!   or a token. Each thread keeps the memory of up to 1,024 released contexts and reuses it,
//!   so a loop that derives and releases contexts stops allocating for them once warm.
//! - A value context is two allocations (one for a zero-sized value), and a lookup walks one
//!   layer per derived context, stopping early at a value layer that says the key is not
//!   above it.
//! - A deadline runs no task and arms no Tokio timer of its own: inside a Tokio runtime it
//!   is a slot in a deadline wheel that the thread keeps for that runtime, in every runtime
//!   flavour, so that once the wheel is made, arming a deadline on a reused context does not
//!   allocate. A paused clock fires it exactly when a `sleep_until` of the same instant would.
//! - Cancelling and dropping are iterative: a chain of any depth is cancelled and released
//!   without growing the stack.
//!
//! # Observability
//!
//! Every cancellation emits a `tracing` event at debug level, target `taskctx`, with the
//! error, the cause and how many descendants it reached. A panicking [`Context::after_func`]
//! callback, or a waker that panics when a cancellation wakes it, is reported as an error
//! event; the cancellation goes on. A task group's [`Report`] is emitted when its owner gets
//! it: an info event with the counts, and a warn event for each task that was aborted or took
//! more than half the grace to stop.
//!
//! [`CancellationToken`]: tokio_util::sync::CancellationToken

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![deny(unsafe_code)]
// three exceptions: `tree::scope`'s `Scope::fresh`, `tree::kept`'s `Kept::get` and the `tree::once` module, each with its reasons
#![warn(clippy::undocumented_unsafe_blocks)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod after_func;
mod context;
mod error;
mod future;
mod group;
mod handle;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod service;
#[cfg(feature = "signal")]
#[cfg_attr(docsrs, doc(cfg(feature = "signal")))]
pub mod signal;
mod slab;
mod source;
#[cfg(feature = "futures")]
mod stream;
mod sync;
mod task;
pub mod testing;
mod timeout;
mod tree;
mod value;
mod wheel;

#[cfg(all(test, loom))]
mod loom_tests;

pub use after_func::AfterFunc;
pub use context::Context;
pub use error::{Cause, Error};
pub use future::{CancelledOwned, Done, DoneOwned, RunUntilCancelled, RunWithGrace};
pub use group::{
    AllStopped, GroupBuilder, GroupHandle, Outcome, OutcomeCounts, Panic, Report, Shutdown,
    SpawnError, TaskGroup, TaskPanicked, TaskReport, Wait,
};
pub use handle::{CancelCauseHandle, CancelHandle};
#[cfg(feature = "futures")]
#[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
pub use stream::TakeUntilDone;
pub use task::TaskHandle;
pub use timeout::{Timeout, with_timeout};
pub use value::Key;
