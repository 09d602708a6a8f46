//! tonic: the crate's errors as gRPC statuses, and tonic requests' contexts.
//!
//! tonic's server also reads `grpc-timeout` on its own and, when the budget runs out, answers
//! `CANCELLED` ("Timeout expired") in place of the handler. A [`ServerLayer`](super::ServerLayer)
//! on that server gives the handler's context the same budget, so the handler's work stops at
//! that moment either way; only the status the client reads may be tonic's `CANCELLED` rather
//! than `DEADLINE_EXCEEDED`. A client under a context with that deadline sees its own
//! `DEADLINE_EXCEEDED` first, as its budget is the shorter one
//! (`tests/service_two_hops.rs`).

use tonic::{Code, Status};

use super::{MissingContext, RequestExt};
use crate::context::Context;
use crate::error::Error;

/// [`Error::DeadlineExceeded`] is `DEADLINE_EXCEEDED`, [`Error::Canceled`] is `CANCELLED`, with
/// the error's text as the message; so `?` on a context's error in a handler answers the call
/// as gRPC expects.
///
/// # Examples
///
/// ```
/// use taskctx::Error;
///
/// let status = tonic::Status::from(Error::DeadlineExceeded);
/// assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
/// assert_eq!(tonic::Status::from(Error::Canceled).code(), tonic::Code::Cancelled);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = match err {
            Error::DeadlineExceeded => Code::DeadlineExceeded,
            Error::Canceled => Code::Cancelled,
        };
        Status::new(code, err.to_string())
    }
}

/// `INTERNAL`: the server is missing its [`ServerLayer`](super::ServerLayer).
///
/// # Examples
///
/// ```
/// let status = tonic::Status::from(taskctx::service::MissingContext);
/// assert_eq!(status.code(), tonic::Code::Internal);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
impl From<MissingContext> for Status {
    fn from(err: MissingContext) -> Self {
        Status::internal(err.to_string())
    }
}

/// A tonic request's context: in a handler, the one the server layer made from the call's
/// `grpc-timeout`; on an outgoing call, the one whose remaining budget a
/// [`ClientLayer`](super::ClientLayer) on the channel sends.
///
/// # Examples
///
/// ```
/// use taskctx::Context;
/// use taskctx::service::RequestExt;
///
/// let (ctx, _cancel) = Context::background().with_cancel();
/// let mut call = tonic::Request::new(());
/// call.set_context(&ctx);
/// assert!(call.context().is_ok());
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
impl<T> RequestExt for tonic::Request<T> {
    fn context(&self) -> Result<Context, MissingContext> {
        self.extensions().get().cloned().ok_or(MissingContext)
    }

    fn set_context(&mut self, ctx: &Context) {
        self.extensions_mut().insert(ctx.clone());
    }
}
