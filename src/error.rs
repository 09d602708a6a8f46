//! Error types: why a context is done.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// Why a context is done, as reported by [`Context::err`](crate::Context::err).
///
/// Go has two sentinel errors, `context.Canceled` and `context.DeadlineExceeded`; this enum is
/// the same pair. Once a context reports one, it reports the same one forever.
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
/// assert_eq!(Error::Canceled.to_string(), "context canceled");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// The context was cancelled: its handle was cancelled or dropped, an ancestor was, or the
    /// token it follows was.
    Canceled,
    /// The context's deadline, or an ancestor's, passed before anything cancelled it.
    DeadlineExceeded,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Canceled => "context canceled",
            Error::DeadlineExceeded => "context deadline exceeded",
        })
    }
}

impl StdError for Error {}

impl From<Error> for std::io::Error {
    /// Maps [`Error::DeadlineExceeded`] to [`TimedOut`](std::io::ErrorKind::TimedOut) and
    /// [`Error::Canceled`] to [`Interrupted`](std::io::ErrorKind::Interrupted), so a context's
    /// error can leave through an `io::Result`.
    ///
    /// # Examples
    ///
    /// ```
    /// let io: std::io::Error = taskctx::Error::DeadlineExceeded.into();
    /// assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
    /// ```
    fn from(err: Error) -> Self {
        let kind = match err {
            Error::Canceled => std::io::ErrorKind::Interrupted,
            Error::DeadlineExceeded => std::io::ErrorKind::TimedOut,
        };
        std::io::Error::new(kind, err)
    }
}

/// The error that explains why a context is done, as reported by
/// [`Context::cause`](crate::Context::cause).
///
/// A cause is the error given to [`CancelCauseHandle::cancel`](crate::CancelCauseHandle::cancel)
/// or to a `_cause` deadline constructor. Where none was given, the cause is the context's
/// [`Error`] itself, so a done context always has one. Cloning is cheap (a reference count).
///
/// # Examples
///
/// ```
/// use taskctx::{Context, Error};
///
/// #[derive(Debug)]
/// struct ClientGone;
/// impl std::fmt::Display for ClientGone {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("client went away")
///     }
/// }
/// impl std::error::Error for ClientGone {}
///
/// let (ctx, cancel) = Context::background().with_cancel_cause();
/// cancel.cancel(ClientGone);
/// assert_eq!(ctx.err(), Some(Error::Canceled));
/// let cause = ctx.cause().unwrap();
/// assert!(cause.is::<ClientGone>());
/// assert_eq!(cause.to_string(), "client went away");
/// ```
#[derive(Clone)]
pub struct Cause(Repr);

#[derive(Clone)]
enum Repr {
    Plain(Error),
    Custom(Arc<dyn StdError + Send + Sync + 'static>),
}

impl Cause {
    /// Turns any error into a cause, without nesting a cause or an [`Error`] inside another.
    pub(crate) fn new(err: Box<dyn StdError + Send + Sync + 'static>) -> Self {
        let err = match err.downcast::<Cause>() {
            Ok(cause) => return *cause,
            Err(err) => err,
        };
        match err.downcast::<Error>() {
            Ok(plain) => Cause(Repr::Plain(*plain)),
            Err(err) => Cause(Repr::Custom(Arc::from(err))),
        }
    }

    /// Whether this cause is just `err` itself, as when no cause was given.
    pub(crate) fn is_plain(&self, err: Error) -> bool {
        matches!(self.0, Repr::Plain(plain) if plain == err)
    }

    /// The cause as a plain error trait object.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Cause, Error};
    ///
    /// let cause = Cause::from(Error::DeadlineExceeded);
    /// let err: &(dyn std::error::Error + Send + Sync) = cause.as_error();
    /// assert_eq!(err.to_string(), "context deadline exceeded");
    /// ```
    pub fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        match &self.0 {
            Repr::Plain(err) => err,
            Repr::Custom(err) => &**err,
        }
    }

    /// Returns the cause as an `E`, if that is its type.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Cause, Error};
    ///
    /// let cause = Cause::from(Error::Canceled);
    /// assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::Canceled));
    /// assert!(cause.downcast_ref::<std::io::Error>().is_none());
    /// ```
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.as_error().downcast_ref()
    }

    /// Whether the cause is an `E`.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Cause, Error};
    ///
    /// assert!(Cause::from(Error::Canceled).is::<Error>());
    /// ```
    pub fn is<E: StdError + 'static>(&self) -> bool {
        self.as_error().is::<E>()
    }
}

impl From<Error> for Cause {
    /// A cause that is the context error itself: what a context reports when no cause was given.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Cause, Error};
    ///
    /// assert_eq!(Cause::from(Error::Canceled).to_string(), "context canceled");
    /// ```
    fn from(err: Error) -> Self {
        Cause(Repr::Plain(err))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_error(), f)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_error(), f)
    }
}

impl StdError for Cause {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.as_error().source()
    }
}
