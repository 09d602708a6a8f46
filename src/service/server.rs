//! The server layer: one context per request, below a server-wide root.
//!
//! Invariants, each pinned by a test in `tests/service_server.rs` unless said otherwise:
//! 1. The service sees every request with a live context in its extensions, a descendant of
//!    the root (or of the context an outer layer stored), whose deadline is no later than the
//!    request's budget allows (`budget_is_the_shortest_header_capped_by_the_maximum`).
//! 2. That context is cancelled once the response future completes, with the cause
//!    [`Responded`], or when it is dropped first (the client went away), with [`ClientGone`]
//!    (`axum_client_hang_up_cancels_spawned_work`).
//! 3. A request whose budget is malformed, already spent, or whose parent context is already
//!    done is answered without calling the service (`refusals_do_not_call_the_service`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{self, Poll, ready};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::budget::{BudgetError, Headers};
use super::{CLIENT_CLOSED_REQUEST, is_grpc};
use crate::context::Context;
use crate::error::Error;
use crate::handle::CancelCauseHandle;

/// A tower layer that gives each request a context of its own, below a server-wide root.
///
/// Each request's context is a child of `root` (so cancelling `root` cancels every request
/// in flight) or, if an outer `ServerLayer` has already stored one, of that one (so a layer on
/// a route can only shorten the budget). Its deadline comes from the request's budget: the
/// shortest of its budget headers (`grpc-timeout`, and opt-in Envoy's
/// `x-envoy-expected-rq-timeout-ms` and a header of your choosing), or the
/// [default](ServerLayer::default_timeout) when none is present, capped by the
/// [maximum](ServerLayer::max_timeout). The service finds the context in the request's
/// extensions: take it with `req.extensions().get::<Context>()`, axum's extractor (feature
/// `axum`) or [`RequestExt::context`](super::RequestExt::context).
///
/// The context is cancelled when the response future completes (cause [`Responded`]) or is
/// dropped before that (cause [`ClientGone`]: hyper drops it when the client goes away),
/// so whatever the handler spawned with it stops. As in Go's `net/http`, this is when the
/// handler returns its response, before a streamed body is sent.
///
/// Requests are answered without calling the service when:
///
/// | the request | HTTP | gRPC (`content-type: application/grpc…`) |
/// |---|---|---|
/// | a malformed budget header ([`BudgetError`]) | 400 Bad Request | `INTERNAL` |
/// | a budget of zero | 504 Gateway Timeout | `DEADLINE_EXCEEDED` |
/// | arrives when the parent context is already cancelled (shutdown) | 503 Service Unavailable | `UNAVAILABLE` |
/// | ... or past its deadline | 504 Gateway Timeout | `DEADLINE_EXCEEDED` |
///
/// with an empty body, and the [`BudgetError`] or the [`Error`] in the response's extensions.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use taskctx::Context;
/// use taskctx::service::ServerLayer;
/// use tower::{Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (root, shutdown) = Context::background().with_cancel_cause();
/// let layer = ServerLayer::new(&root).max_timeout(Duration::from_secs(30));
/// let mut svc = tower::ServiceBuilder::new().layer(layer).service_fn(
///     |req: http::Request<()>| async move {
///         let ctx = req.extensions().get::<Context>().unwrap();
///         Ok::<_, std::convert::Infallible>(http::Response::new(ctx.remaining()))
///     },
/// );
/// let req = http::Request::builder().header("grpc-timeout", "2S").body(()).unwrap();
/// let response = svc.ready().await.unwrap().call(req).await.unwrap();
/// let left = response.into_body().unwrap();
/// assert!(left <= Duration::from_secs(2));
///
/// // Shutting down cancels every request in flight, and refuses new ones.
/// shutdown.cancel("the server is shutting down");
/// let response = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
/// assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ServerLayer {
    config: Arc<Config>,
}

/// What every request's service shares, the root with the rest: axum clones a route's service
/// for each request, and a clone then raises one count.
#[derive(Clone, Debug)]
struct Config {
    root: Context,
    headers: Headers,
    default_timeout: Option<Duration>,
    max_timeout: Option<Duration>,
    canceled_status: StatusCode,
}

impl ServerLayer {
    /// A layer whose requests' contexts are children of `root`; it reads `grpc-timeout` and
    /// sets no default and no maximum.
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = taskctx::service::ServerLayer::new(&taskctx::Context::background());
    /// # drop(layer);
    /// ```
    pub fn new(root: &Context) -> Self {
        ServerLayer {
            config: Arc::new(Config {
                root: root.clone(),
                headers: Headers::default(),
                default_timeout: None,
                max_timeout: None,
                canceled_status: CLIENT_CLOSED_REQUEST,
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The budget of a request that states none.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let layer = taskctx::service::ServerLayer::new(&taskctx::Context::background())
    ///     .default_timeout(Duration::from_secs(10));
    /// # drop(layer);
    /// ```
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.config().default_timeout = Some(timeout);
        self
    }

    /// The longest budget any request gets, whatever its headers say.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let layer = taskctx::service::ServerLayer::new(&taskctx::Context::background())
    ///     .max_timeout(Duration::from_secs(60));
    /// # drop(layer);
    /// ```
    pub fn max_timeout(mut self, timeout: Duration) -> Self {
        self.config().max_timeout = Some(timeout);
        self
    }

    /// Also reads Envoy's `x-envoy-expected-rq-timeout-ms` (whole milliseconds), for a server
    /// behind an Envoy proxy.
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = taskctx::service::ServerLayer::new(&taskctx::Context::background())
    ///     .envoy_timeout_header();
    /// # drop(layer);
    /// ```
    pub fn envoy_timeout_header(mut self) -> Self {
        self.config().headers.envoy = true;
        self
    }

    /// Also reads a budget in whole milliseconds from the header `name`.
    ///
    /// # Examples
    ///
    /// ```
    /// use http::HeaderName;
    /// let layer = taskctx::service::ServerLayer::new(&taskctx::Context::background())
    ///     .millis_header(HeaderName::from_static("x-budget-ms"));
    /// # drop(layer);
    /// ```
    pub fn millis_header(mut self, name: HeaderName) -> Self {
        self.config().headers.millis = Some(name);
        self
    }

    /// Does not read `grpc-timeout` (it is read unless this is called).
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = taskctx::service::ServerLayer::new(&taskctx::Context::background())
    ///     .ignore_grpc_timeout();
    /// # drop(layer);
    /// ```
    pub fn ignore_grpc_timeout(mut self) -> Self {
        self.config().headers.grpc_timeout = false;
        self
    }

    /// The status of a response the service made from [`Error::Canceled`] (with the `axum`
    /// feature's `IntoResponse`): 499 (nginx's "client closed request") unless set here, for
    /// instance to 503 Service Unavailable.
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = taskctx::service::ServerLayer::new(&taskctx::Context::background())
    ///     .canceled_status(http::StatusCode::SERVICE_UNAVAILABLE);
    /// # drop(layer);
    /// ```
    pub fn canceled_status(mut self, status: StatusCode) -> Self {
        self.config().canceled_status = status;
        self
    }
}

impl<S> Layer<S> for ServerLayer {
    type Service = ServerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`ServerLayer`].
///
/// # Examples
///
/// ```
/// use taskctx::service::{ServerLayer, ServerService};
/// use tower::Layer;
///
/// let svc: ServerService<_> = ServerLayer::new(&taskctx::Context::background())
///     .layer(tower::service_fn(|_req: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
///     }));
/// # drop(svc);
/// ```
#[derive(Clone, Debug)]
pub struct ServerService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ServerService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ServerFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let config = &*self.config;
        let grpc = is_grpc(req.headers());
        let budget = match config.headers.read(req.headers()) {
            Ok(budget) => budget.or(config.default_timeout),
            Err(err) => return ServerFuture::refused(refusal(grpc, Refusal::Malformed(err))),
        };
        let budget = match (budget, config.max_timeout) {
            (Some(budget), Some(max)) => Some(budget.min(max)),
            (budget, max) => budget.or(max),
        };
        let parent = req.extensions().get::<Context>().unwrap_or(&config.root);
        if let Some(err) = parent.err() {
            return ServerFuture::refused(refusal(grpc, Refusal::Done(err)));
        }
        if budget == Some(Duration::ZERO) {
            return ServerFuture::refused(refusal(grpc, Refusal::Done(Error::DeadlineExceeded)));
        }
        // One scope for both: the budget's deadline and the guard's cancellation with a cause.
        let (ctx, cancel) = match budget {
            Some(budget) => parent.with_timeout_cancel_cause(budget),
            None => parent.with_cancel_cause(),
        };
        req.extensions_mut().insert(ctx.clone());
        ServerFuture {
            inner: Some(self.inner.call(req)),
            refused: None,
            guard: Guard {
                ctx: Some(ctx),
                cancel: Some(cancel),
            },
            canceled_status: config.canceled_status,
        }
    }
}

pin_project! {
    /// Future returned by [`ServerService`]: the service's response, or the layer's own
    /// answer to a request it refused.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::service::{ServerFuture, ServerLayer};
    /// use tower::{Layer, Service};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let mut svc = ServerLayer::new(&taskctx::Context::background())
    ///     .layer(tower::service_fn(|_req: http::Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
    ///     }));
    /// let future: ServerFuture<_, ()> = svc.call(http::Request::new(()));
    /// assert_eq!(future.await.unwrap().status(), http::StatusCode::OK);
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping it cancels the request's context with the cause [`ClientGone`], then drops
    /// the service's future: code that runs as that future is dropped (a `Drop`, a task group
    /// the handler owned) sees the context done, with that cause.
    #[must_use = "futures do nothing unless polled"]
    pub struct ServerFuture<F, B> {
        // Declared first so that it drops first: see "Cancel safety" above
        // (`tests/service_axum.rs::a_client_hang_up_stops_a_handlers_task_group_with_the_cause_client_gone`).
        guard: Guard,
        #[pin]
        inner: Option<F>,
        refused: Option<Response<B>>,
        canceled_status: StatusCode,
    }
}

impl<F, B> ServerFuture<F, B> {
    fn refused(response: Response<B>) -> Self {
        ServerFuture {
            inner: None,
            refused: Some(response),
            guard: Guard {
                ctx: None,
                cancel: None,
            },
            canceled_status: CLIENT_CLOSED_REQUEST,
        }
    }
}

impl<F, B, E> Future for ServerFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return match this.refused.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled after `Ready`.
                None => Poll::Pending,
            };
        };
        let mut result = ready!(inner.poll(cx));
        this.guard.responded();
        if let Ok(response) = &mut result {
            if response.status() == CLIENT_CLOSED_REQUEST
                && response.extensions().get::<Error>() == Some(&Error::Canceled)
            {
                *response.status_mut() = *this.canceled_status;
            }
        }
        Poll::Ready(result)
    }
}

impl<F, B> fmt::Debug for ServerFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerFuture")
            .field("refused", &self.refused.is_some())
            .finish_non_exhaustive()
    }
}

/// Cancels the request's context: with [`Responded`] when told, with [`ClientGone`] if dropped
/// before.
struct Guard {
    /// The request's context, to tell whether anything but the guard still holds it.
    ctx: Option<Context>,
    cancel: Option<CancelCauseHandle>,
}

impl Guard {
    fn responded(&mut self) {
        let Some(cancel) = self.cancel.take() else {
            return;
        };
        // Held by this guard and by its own handle only: nothing can see it cancelled (a clone,
        // a child, a task, a `done()` future would each hold it too), so letting go of the
        // handles, which releases it for reuse, is all the cancellation there is to do.
        let ctx = self.ctx.take();
        let unseen = ctx
            .as_ref()
            .and_then(Context::scope)
            .is_some_and(|scope| std::sync::Arc::strong_count(scope) == 2);
        if !unseen {
            cancel.cancel(Responded);
        }
        drop(ctx);
        drop(cancel);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel.cancel(ClientGone);
        }
    }
}

enum Refusal {
    Malformed(BudgetError),
    Done(Error),
}

fn refusal<B: Default>(grpc: bool, why: Refusal) -> Response<B> {
    // gRPC status codes: INTERNAL 13, DEADLINE_EXCEEDED 4, UNAVAILABLE 14.
    let (status, code, message) = match &why {
        Refusal::Malformed(err) => (StatusCode::BAD_REQUEST, "13", err.to_string()),
        Refusal::Done(Error::DeadlineExceeded) => (
            StatusCode::GATEWAY_TIMEOUT,
            "4",
            Error::DeadlineExceeded.to_string(),
        ),
        Refusal::Done(Error::Canceled) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "14",
            "the server is not taking requests".to_owned(),
        ),
    };
    let mut response = Response::new(B::default());
    if grpc {
        // A "Trailers-Only" gRPC response: the status in the headers, HTTP 200.
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from_static(code));
        // Our messages are printable ASCII without `%`: valid percent-encoded `grpc-message`.
        if let Ok(message) = HeaderValue::try_from(message) {
            headers.insert("grpc-message", message);
        }
    } else {
        *response.status_mut() = status;
    }
    match why {
        Refusal::Malformed(err) => {
            response.extensions_mut().insert(err);
        }
        Refusal::Done(err) => {
            response.extensions_mut().insert(err);
        }
    }
    response
}

/// The cause of a request's context cancelled because the service returned its response.
///
/// # Examples
///
/// ```
/// assert_eq!(taskctx::service::Responded.to_string(), "the response was returned");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Responded;

impl fmt::Display for Responded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the response was returned")
    }
}

impl std::error::Error for Responded {}

/// The cause of a request's context cancelled because the request was dropped before its
/// response was ready: the client went away (or the connection was closed).
///
/// # Examples
///
/// ```
/// assert_eq!(
///     taskctx::service::ClientGone.to_string(),
///     "the client went away before the response was ready"
/// );
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientGone;

impl fmt::Display for ClientGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the client went away before the response was ready")
    }
}

impl std::error::Error for ClientGone {}
