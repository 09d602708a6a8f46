//! Contexts cancelled by the operating system's shutdown signals (the `signal` feature): Go's
//! `signal.NotifyContext`, with a second context for the second signal.
//!
//! One listener task per [`notify_context`] call owns the signal streams and both cancel
//! handles. It cancels the shutdown context on the first signal and the forced context on the
//! second, and ends with either its parent context or its [`SignalStop`]; nothing of it
//! outlives the stop handle.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::context::Context;
use crate::error::Error;
use crate::handle::CancelCauseHandle;

/// A shutdown signal, the cause of a context that [`notify_context`] made.
///
/// Its `Display` reads as Go's `context.Cause` does for `signal.NotifyContext`:
/// "interrupt signal received".
///
/// # Examples
///
/// ```
/// use taskctx::signal::Signal;
///
/// assert_eq!(Signal::Interrupt.to_string(), "interrupt signal received");
/// assert_eq!(Signal::Terminate.to_string(), "terminated signal received");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// `SIGINT` (Ctrl-C), or Ctrl-C on Windows.
    Interrupt,
    /// `SIGTERM`, what service managers and container runtimes send to stop a process.
    Terminate,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Interrupt => "interrupt signal received",
            Signal::Terminate => "terminated signal received",
        })
    }
}

impl StdError for Signal {}

/// Returns a child of `parent` that is cancelled, with the [`Signal`] as its cause, when the
/// process receives `SIGINT` or `SIGTERM` (Ctrl-C on Windows), and a [`SignalStop`] whose
/// [`forced`](SignalStop::forced) context is cancelled by the second such signal: the moment
/// to end a graceful shutdown's grace at once.
///
/// The signal handlers are installed before this returns, so a signal that arrives at any
/// time after it is seen. From then on these signals no longer end the process by default,
/// even after the stop handle is dropped: that is the contract of Tokio's signal handling,
/// which this uses. Dropping the [`SignalStop`] stops listening and cancels the context, as
/// Go's `stop()` does; the listener also ends once `parent` is done.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use taskctx::Context;
///
/// # #[tokio::main]
/// # async fn main() -> std::io::Result<()> {
/// let (ctx, stop) = taskctx::signal::notify_context(&Context::background())?;
/// ctx.done().await; // Ctrl-C or SIGTERM
/// println!("shutting down: {}", ctx.cause().unwrap());
/// tokio::select! {
///     _ = tokio::time::sleep(Duration::from_secs(10)) => println!("grace over"),
///     _ = stop.forced().done() => println!("second signal: stopping now"),
/// }
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// The error of installing a signal handler, as Tokio's `signal` returns it.
///
/// # Panics
///
/// Outside a Tokio runtime, or in one built without its IO driver (`enable_io` or
/// `enable_all`), as Tokio's signal functions do.
pub fn notify_context(parent: &Context) -> io::Result<(Context, SignalStop)> {
    let mut signals = Signals::install()?;
    let (ctx, cancel) = parent.with_cancel_cause();
    let cancel = Arc::new(cancel);
    let (forced, cancel_forced) = Context::background().with_cancel_cause();
    // Only the second signal cancels `forced`: however the listener ends, it lets the handle
    // go disarmed.
    let cancel_forced = Disarmed(Some(cancel_forced));
    let listener = tokio::spawn({
        let (parent, cancel) = (parent.clone(), cancel.clone());
        async move {
            let first = {
                let mut next = std::pin::pin!(signals.next());
                let mut parent_done = parent.done();
                std::future::poll_fn(|cx| match next.as_mut().poll(cx) {
                    Poll::Ready(signal) => Poll::Ready(Some(signal)),
                    Poll::Pending => Pin::new(&mut parent_done).poll(cx).map(|_| None),
                })
                .await
            };
            let Some(first) = first else {
                return; // the parent is done, and the context with it
            };
            cancel.cancel(first);
            let second = signals.next().await;
            cancel_forced.cancel(second);
        }
    });
    Ok((
        ctx,
        SignalStop {
            cancel,
            forced,
            listener,
        },
    ))
}

/// A cancel handle that is disarmed, not fired, when dropped unused.
struct Disarmed(Option<CancelCauseHandle>);

impl Disarmed {
    fn cancel(mut self, signal: Signal) {
        if let Some(handle) = self.0.take() {
            handle.cancel(signal);
        }
    }
}

impl Drop for Disarmed {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.disarm();
        }
    }
}

/// The other half of [`notify_context`]: dropping it stops listening and cancels the context
/// it came with; [`forced`](SignalStop::forced) is done on the second signal.
///
/// # Examples
///
/// ```
/// use taskctx::{Context, Error};
///
/// # #[tokio::main]
/// # async fn main() -> std::io::Result<()> {
/// let (ctx, stop) = taskctx::signal::notify_context(&Context::background())?;
/// assert!(!ctx.is_done());
/// drop(stop); // Go's `stop()`
/// assert_eq!(ctx.err(), Some(Error::Canceled));
/// # Ok(())
/// # }
/// ```
#[must_use = "dropping the SignalStop cancels its context at once"]
pub struct SignalStop {
    cancel: Arc<CancelCauseHandle>,
    forced: Context,
    listener: JoinHandle<()>,
}

impl SignalStop {
    /// A context that is cancelled, with the [`Signal`] as its cause, by the second shutdown
    /// signal: an operator asking for the shutdown to end now. Only that signal cancels it: not
    /// the parent, nor dropping the stop handle. Once the listener has ended (the parent is
    /// done, or the stop handle is gone), it stays live.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::Context;
    ///
    /// # #[tokio::main]
    /// # async fn main() -> std::io::Result<()> {
    /// let (_ctx, stop) = taskctx::signal::notify_context(&Context::background())?;
    /// assert!(!stop.forced().is_done(), "no signal yet");
    /// # Ok(())
    /// # }
    /// ```
    pub fn forced(&self) -> &Context {
        &self.forced
    }
}

impl Drop for SignalStop {
    fn drop(&mut self) {
        // Cancels here, before the listener's abort takes effect, so that the context is done
        // when the drop returns (pinned by `notify_context_follows_real_signals_its_stop_and_its_parent`).
        self.cancel.cancel(Error::Canceled);
        self.listener.abort();
    }
}

impl fmt::Debug for SignalStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalStop")
            .field("forced", &self.forced.is_done())
            .finish()
    }
}

/// The shutdown signals a listener waits for, registered when it is made.
#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal. A stream that ends (never, while its handler is installed) is
    /// pending forever.
    async fn next(&mut self) -> Signal {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(Some(())) = self.interrupt.poll_recv(cx) {
                return Poll::Ready(Signal::Interrupt);
            }
            if let Poll::Ready(Some(())) = self.terminate.poll_recv(cx) {
                return Poll::Ready(Signal::Terminate);
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> io::Result<Signals> {
        Ok(Signals)
    }

    async fn next(&mut self) -> Signal {
        match tokio::signal::ctrl_c().await {
            Ok(()) => Signal::Interrupt,
            Err(_) => std::future::pending().await,
        }
    }
}
