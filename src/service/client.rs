//! The client layer: an outgoing request carries its context's remaining budget, and stops
//! when the context is done.
//!
//! Invariants, pinned by tests in `tests/service_two_hops.rs`:
//! 1. A request whose context is done is never sent: it fails with the context's error.
//! 2. A request sent with a context that has a deadline states no longer a budget than the
//!    context has left (the header is written from `Context::remaining`, rounded down).
//! 3. When the context becomes done while the call is in flight, the call is dropped and the
//!    future resolves to the context's error at once.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{self, Poll};

use http::{HeaderName, Request};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::budget::Headers;
use crate::context::Context;
use crate::error::Error;
use crate::future::{DoneOwned, race};

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A tower layer for clients: each outgoing request that carries a [`Context`] in its
/// extensions (see [`RequestExt::set_context`](super::RequestExt::set_context)) states the
/// context's remaining budget in its headers, and lives no longer than the context.
///
/// - The budget goes into `grpc-timeout` (unless [turned off](ClientLayer::no_grpc_timeout))
///   and into the [milliseconds header](ClientLayer::millis_header) if one is set, rounded
///   down so that it never lengthens; a shorter budget already in the same header is kept.
/// - A request whose context is already done is not sent: the call fails at once with the
///   context's [`Error`], boxed.
/// - When the context becomes done while the call is in flight, the call is dropped (over
///   HTTP/2 the stream is reset, and a server with a [`ServerLayer`](super::ServerLayer)
///   cancels the request's context with [`ClientGone`](super::ClientGone)) and it fails
///   with the context's error.
///
/// With the `tonic` feature, a gRPC request (`content-type: application/grpc…`) fails with a
/// boxed `tonic::Status` instead (`DEADLINE_EXCEEDED` or `CANCELLED`), which tonic's client
/// returns as it is. A request without a context passes through untouched.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use taskctx::{Context, Error};
/// use taskctx::service::{ClientLayer, RequestExt};
/// use tower::{Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // Stands in for an HTTP client: answers with the budget it was sent.
/// let transport = tower::service_fn(|req: http::Request<()>| async move {
///     let budget = req.headers().get("grpc-timeout").cloned();
///     Ok::<_, std::convert::Infallible>(http::Response::new(budget))
/// });
/// let mut client = tower::ServiceBuilder::new().layer(ClientLayer::new()).service(transport);
///
/// let (ctx, cancel) = Context::background().with_timeout(Duration::from_millis(300));
/// let mut req = http::Request::new(());
/// req.set_context(&ctx);
/// let response = client.ready().await.unwrap().call(req).await.unwrap();
/// assert_eq!(response.into_body().unwrap(), "300000u");
///
/// cancel.cancel();
/// let mut req = http::Request::new(());
/// req.set_context(&ctx);
/// let err = client.ready().await.unwrap().call(req).await.unwrap_err();
/// assert_eq!(err.downcast_ref::<Error>(), Some(&Error::Canceled));
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct ClientLayer {
    headers: Arc<Headers>,
}

impl ClientLayer {
    /// A layer that writes the budget into `grpc-timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = taskctx::service::ClientLayer::new();
    /// # drop(layer);
    /// ```
    pub fn new() -> Self {
        ClientLayer::default()
    }

    /// Also writes the budget, in whole milliseconds rounded down, into the header `name`.
    ///
    /// # Examples
    ///
    /// ```
    /// use http::HeaderName;
    /// let layer = taskctx::service::ClientLayer::new()
    ///     .millis_header(HeaderName::from_static("x-budget-ms"));
    /// # drop(layer);
    /// ```
    pub fn millis_header(mut self, name: HeaderName) -> Self {
        Arc::make_mut(&mut self.headers).millis = Some(name);
        self
    }

    /// Does not write `grpc-timeout` (it is written unless this is called).
    ///
    /// # Examples
    ///
    /// ```
    /// use http::HeaderName;
    /// let layer = taskctx::service::ClientLayer::new()
    ///     .no_grpc_timeout()
    ///     .millis_header(HeaderName::from_static("x-budget-ms"));
    /// # drop(layer);
    /// ```
    pub fn no_grpc_timeout(mut self) -> Self {
        Arc::make_mut(&mut self.headers).grpc_timeout = false;
        self
    }
}

impl<S> Layer<S> for ClientLayer {
    type Service = ClientService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientService {
            inner,
            headers: self.headers.clone(),
        }
    }
}

/// The service made by [`ClientLayer`].
///
/// # Examples
///
/// ```
/// use taskctx::service::{ClientLayer, ClientService};
/// use tower::Layer;
///
/// let svc: ClientService<_> = ClientLayer::new()
///     .layer(tower::service_fn(|_req: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
///     }));
/// # drop(svc);
/// ```
#[derive(Clone, Debug)]
pub struct ClientService<S> {
    inner: S,
    headers: Arc<Headers>,
}

impl<S, ReqBody> Service<Request<ReqBody>> for ClientService<S>
where
    S: Service<Request<ReqBody>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let Some(ctx) = req.extensions().get::<Context>().cloned() else {
            return ClientFuture::sent(self.inner.call(req), None);
        };
        let grpc = super::is_grpc(req.headers());
        if let Some(err) = ctx.err() {
            return ClientFuture::failed(err, grpc);
        }
        if let Some(remaining) = ctx.remaining() {
            if remaining.is_zero() {
                return ClientFuture::failed(Error::DeadlineExceeded, grpc);
            }
            self.headers.write(req.headers_mut(), remaining);
        }
        ClientFuture::sent(self.inner.call(req), Some((ctx.done_owned(), grpc)))
    }
}

pin_project! {
    /// Future returned by [`ClientService`]: the inner service's response, or the error of
    /// the request's context if it is done first.
    ///
    /// The context is checked first on every poll, so a response that arrives at the very
    /// poll where the context is seen done is dropped, and the call fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::service::{ClientFuture, ClientLayer};
    /// use tower::{Layer, Service};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let mut svc = ClientLayer::new()
    ///     .layer(tower::service_fn(|_req: http::Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
    ///     }));
    /// let future: ClientFuture<_> = svc.call(http::Request::new(()));
    /// assert!(future.await.is_ok());
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping it drops the call in flight.
    #[must_use = "futures do nothing unless polled"]
    pub struct ClientFuture<F> {
        #[pin]
        inner: Option<F>,
        done: Option<DoneOwned>,
        grpc: bool,
        failed: Option<Error>,
    }
}

impl<F> ClientFuture<F> {
    fn sent(inner: F, done: Option<(DoneOwned, bool)>) -> Self {
        let (done, grpc) = match done {
            Some((done, grpc)) => (Some(done), grpc),
            None => (None, false),
        };
        ClientFuture {
            inner: Some(inner),
            done,
            grpc,
            failed: None,
        }
    }

    fn failed(err: Error, grpc: bool) -> Self {
        ClientFuture {
            inner: None,
            done: None,
            grpc,
            failed: Some(err),
        }
    }
}

impl<F, T, E> Future for ClientFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(err) = this.failed.take() {
            return Poll::Ready(Err(boxed(err, *this.grpc)));
        }
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            // Polled after `Ready`.
            return Poll::Pending;
        };
        let polled = match this.done {
            Some(done) => race(done, inner, cx),
            None => inner.poll(cx).map(Ok),
        };
        let Poll::Ready(result) = polled else {
            return Poll::Pending;
        };
        // The call is dropped as soon as the context is done.
        this.inner.set(None);
        *this.done = None;
        Poll::Ready(match result {
            Ok(result) => result.map_err(Into::into),
            Err(err) => Err(boxed(err, *this.grpc)),
        })
    }
}

fn boxed(err: Error, grpc: bool) -> BoxError {
    #[cfg(feature = "tonic")]
    if grpc {
        return Box::new(tonic::Status::from(err));
    }
    let _ = grpc;
    Box::new(err)
}

impl<F> fmt::Debug for ClientFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientFuture")
            .field("in_flight", &self.inner.is_some())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}
