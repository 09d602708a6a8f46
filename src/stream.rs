//! A `Stream` that ends when its context is done (the `futures` feature).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{self, Poll, ready};

use futures_core::stream::{FusedStream, Stream};
use pin_project_lite::pin_project;

use crate::error::Error;
use crate::future::DoneOwned;

pin_project! {
    /// Stream returned by [`Context::take_until_done`](crate::Context::take_until_done): the
    /// inner stream's items as `Ok` until the context is done, then one `Err` with the
    /// context's error, then the end.
    ///
    /// If the inner stream ends first, this ends too, without an error. Once ended it yields
    /// `None` forever and polls neither the context nor the inner stream again: it is a
    /// `FusedStream`.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::{StreamExt, stream};
    /// use taskctx::{Context, Error, TakeUntilDone};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// let mut numbers: TakeUntilDone<_> = ctx.take_until_done(stream::iter(1..));
    /// assert_eq!(numbers.next().await, Some(Ok(1)));
    /// cancel.cancel();
    /// assert_eq!(numbers.next().await, Some(Err(Error::Canceled)));
    /// assert_eq!(numbers.next().await, None);
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// `next()` on it is as cancel safe as on the inner stream: this adapter loses nothing when
    /// a `next()` future is dropped, and the context's error, once it is done, comes on the
    /// next poll.
    #[must_use = "streams do nothing unless polled"]
    pub struct TakeUntilDone<S> {
        #[pin]
        stream: S,
        done: DoneOwned,
        // Whether it has ended: yielded the context's error, or passed on the stream's end.
        finished: bool,
    }
}

impl<S> TakeUntilDone<S> {
    pub(crate) fn new(done: DoneOwned, stream: S) -> Self {
        TakeUntilDone {
            stream,
            done,
            finished: false,
        }
    }
}

impl<S: Stream> Stream for TakeUntilDone<S> {
    type Item = Result<S::Item, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        // The context first, as in `Context::run_until_cancelled`: once it is done, the stream
        // is not polled again (pinned by `take_until_done_checks_the_context_before_the_stream`).
        // One atomic load: registering the waker takes the scope's lock, which a stream with
        // many items ready would otherwise take once an item.
        if let Some(err) = this.done.err() {
            *this.finished = true;
            return Poll::Ready(Some(Err(err)));
        }
        if let Poll::Ready(item) = this.stream.poll_next(cx) {
            *this.finished = item.is_none();
            return Poll::Ready(item.map(Ok));
        }
        // Nothing ready: wait for the context too, with `done()`'s own registration, which
        // checks the context again as it registers, so a cancellation since the first check is
        // not missed (pinned by
        // `take_until_done_wakes_when_the_context_is_done_while_the_stream_waits`).
        let err = ready!(Pin::new(this.done).poll(cx));
        *this.finished = true;
        Poll::Ready(Some(Err(err)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.finished {
            return (0, Some(0));
        }
        // At least one item (an `Ok` or the error) if the stream has any; at most one more than
        // the stream's, as the error may come after its last item, in place of its end.
        let (lower, upper) = self.stream.size_hint();
        (lower.min(1), upper.and_then(|upper| upper.checked_add(1)))
    }
}

impl<S: Stream> FusedStream for TakeUntilDone<S> {
    /// Whether it has ended: yielded the context's error, or `None`.
    fn is_terminated(&self) -> bool {
        self.finished
    }
}

impl<S> fmt::Debug for TakeUntilDone<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TakeUntilDone")
            .field("done", &self.done)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}
