//! Contexts at the service boundary: a context per request in tower servers, budgets that
//! cross processes, and the crate's errors as HTTP and gRPC answers.
//!
//! - [`ServerLayer`] gives each request a child of a server-wide root context, with the
//!   deadline its budget header states (capped by the server), in the request's extensions;
//!   it cancels that context when the response is returned or the client goes away.
//! - [`ClientLayer`] writes the remaining budget of the context in an outgoing request's
//!   extensions into its headers, fails fast when the context is done, and drops the call in
//!   flight when it becomes done.
//! - [`grpc_timeout`] is gRPC's `grpc-timeout` header codec, used by both.
//! - With the `axum` feature, [`Context`] is an axum extractor and [`Error`] an
//!   `IntoResponse` (504 for [`Error::DeadlineExceeded`], 499 or the server's choice for
//!   [`Error::Canceled`]); with the `tonic` feature, both convert to `tonic::Status`.
//!
//! An axum server whose handlers each get a context that a shutdown or a client that hangs up
//! cancels:
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use taskctx::{Context, Error, service::{self, ServerLayer}};
//!
//! async fn handler(ctx: Context) -> Result<String, Error> {
//!     let work = ctx.spawn(|ctx| async move { /* stops when the client goes away */ 42 });
//!     Ok(format!("answer: {}", work.await?))
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> std::io::Result<()> {
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let root = Context::background().with_token_cause(shutdown.clone(), "shutting down");
//! let app = Router::new()
//!     .route("/", get(handler))
//!     .layer(ServerLayer::new(&root).max_timeout(Duration::from_secs(30)));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
//! # }
//! ```

mod budget;
mod client;
pub mod grpc_timeout;
mod server;

#[cfg(feature = "axum")]
mod axum;
#[cfg(feature = "tonic")]
mod tonic;

use std::error::Error as StdError;
use std::fmt;

use http::{HeaderMap, StatusCode};

use crate::context::Context;
#[cfg(doc)]
use crate::error::Error;

pub use budget::BudgetError;
pub use client::{ClientFuture, ClientLayer, ClientService};
pub use server::{ClientGone, Responded, ServerFuture, ServerLayer, ServerService};

/// nginx's "499 Client Closed Request", the status of a response made from
/// [`Error::Canceled`] unless the server layer says otherwise.
pub(crate) const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => panic!("499 is a valid status code"),
};

/// Whether a request or response is gRPC, by its `content-type`.
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// Requests that carry a context in their extensions: read it, or set the one an outgoing
/// request carries to a [`ClientLayer`].
///
/// # Examples
///
/// ```
/// use taskctx::Context;
/// use taskctx::service::RequestExt;
///
/// let mut req = http::Request::new(());
/// assert!(req.context().is_err());
/// let (ctx, _cancel) = Context::background().with_cancel();
/// req.set_context(&ctx);
/// assert!(req.context().is_ok());
/// ```
pub trait RequestExt: sealed::Sealed {
    /// The request's context, as stored by a [`ServerLayer`] or [`RequestExt::set_context`].
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::service::RequestExt;
    ///
    /// fn handle(req: &http::Request<()>) -> Result<(), taskctx::service::MissingContext> {
    ///     let ctx = req.context()?;
    ///     assert!(!ctx.is_done());
    ///     Ok(())
    /// }
    /// let mut req = http::Request::new(());
    /// req.set_context(&taskctx::Context::background());
    /// handle(&req).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// [`MissingContext`] if the request carries none (no server layer is installed).
    fn context(&self) -> Result<Context, MissingContext>;

    /// Stores `ctx` in the request's extensions, replacing any context there.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskctx::Context;
    /// use taskctx::service::RequestExt;
    ///
    /// let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(1));
    /// let mut outgoing = http::Request::new(());
    /// outgoing.set_context(&ctx); // a `ClientLayer` sends its remaining budget along
    /// assert_eq!(outgoing.context().unwrap().deadline(), ctx.deadline());
    /// ```
    fn set_context(&mut self, ctx: &Context);
}

mod sealed {
    pub trait Sealed {}
    impl<B> Sealed for http::Request<B> {}
    impl Sealed for http::request::Parts {}
    #[cfg(feature = "tonic")]
    impl<T> Sealed for tonic::Request<T> {}
}

impl<B> RequestExt for http::Request<B> {
    fn context(&self) -> Result<Context, MissingContext> {
        self.extensions().get().cloned().ok_or(MissingContext)
    }

    fn set_context(&mut self, ctx: &Context) {
        self.extensions_mut().insert(ctx.clone());
    }
}

impl RequestExt for http::request::Parts {
    fn context(&self) -> Result<Context, MissingContext> {
        self.extensions.get().cloned().ok_or(MissingContext)
    }

    fn set_context(&mut self, ctx: &Context) {
        self.extensions.insert(ctx.clone());
    }
}

/// A request that carries no context: no [`ServerLayer`] runs in front of the handler.
///
/// With the `axum` feature it is the extractor's rejection, a 500 Internal Server Error; with
/// the `tonic` feature it converts to the status `INTERNAL`.
///
/// # Examples
///
/// ```
/// use taskctx::service::{MissingContext, RequestExt};
///
/// let req = http::Request::new(());
/// assert_eq!(req.context().unwrap_err(), MissingContext);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MissingContext;

impl fmt::Display for MissingContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request carries no context: is the taskctx server layer installed?")
    }
}

impl StdError for MissingContext {}
