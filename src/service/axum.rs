//! axum: the request's context as an extractor, and the crate's errors as responses.

use std::convert::Infallible;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use super::{CLIENT_CLOSED_REQUEST, MissingContext};
use crate::context::Context;
use crate::error::Error;

/// The request's context, as stored by a [`ServerLayer`](super::ServerLayer).
///
/// Rejects a request without one (no server layer in front of the handler) with
/// [`MissingContext`], a 500 Internal Server Error; take `Option<Context>` to get `None`
/// instead.
///
/// # Examples
///
/// ```
/// use axum::{Router, routing::get};
/// use taskctx::{Context, Error};
/// use taskctx::service::ServerLayer;
///
/// async fn handler(ctx: Context) -> Result<&'static str, Error> {
///     ctx.run_until_cancelled(async { "hello" }).await
/// }
///
/// let app: Router = Router::new()
///     .route("/", get(handler))
///     .layer(ServerLayer::new(&Context::background()));
/// # drop(app);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl<S: Send + Sync> FromRequestParts<S> for Context {
    type Rejection = MissingContext;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get().cloned().ok_or(MissingContext)
    }
}

/// The request's context if it has one, for `Option<Context>`.
///
/// # Examples
///
/// ```
/// use axum::{Router, routing::get};
/// use taskctx::Context;
///
/// async fn handler(ctx: Option<Context>) -> &'static str {
///     if ctx.is_some() { "with a context" } else { "without" }
/// }
///
/// let app: Router = Router::new().route("/", get(handler));
/// # drop(app);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl<S: Send + Sync> OptionalFromRequestParts<S> for Context {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get().cloned())
    }
}

/// [`Error::DeadlineExceeded`] is 504 Gateway Timeout; [`Error::Canceled`] is 499 (nginx's
/// "client closed request"), or the status set with
/// [`ServerLayer::canceled_status`](super::ServerLayer::canceled_status) when the response
/// passes through a server layer. The body is the error's text, and the response carries the
/// error in its extensions.
///
/// # Examples
///
/// ```
/// use axum::response::IntoResponse;
/// use taskctx::Error;
///
/// let response = Error::DeadlineExceeded.into_response();
/// assert_eq!(response.status(), http::StatusCode::GATEWAY_TIMEOUT);
/// assert_eq!(Error::Canceled.into_response().status().as_u16(), 499);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match self {
            Error::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Error::Canceled => CLIENT_CLOSED_REQUEST,
        };
        let mut response = (status, self.to_string()).into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// 500 Internal Server Error, with the error's text as the body.
///
/// # Examples
///
/// ```
/// use axum::response::IntoResponse;
///
/// let response = taskctx::service::MissingContext.into_response();
/// assert_eq!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl IntoResponse for MissingContext {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}
