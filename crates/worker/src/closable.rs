//! A transport whose read side can be ended from outside, for a graceful connection close.
//!
//! When its incoming stream ends, a tarpc server channel stops reading, writes every response
//! still owed and then finishes by itself. Ending the stream on a signal is therefore the way to
//! close a connection without losing answers that are computed but not yet on the wire, which
//! aborting the connection task would.

use futures::{Sink, Stream};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::watch;

/// Wraps a transport; its stream ends once `closing` turns true (or its sender is dropped).
pub struct UntilClosed<T> {
    inner: T,
    closed: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
}

impl<T> UntilClosed<T> {
    pub fn new(inner: T, mut closing: watch::Receiver<bool>) -> Self {
        let closed = Box::pin(async move {
            // An error means the sender is gone, which also means the server is stopping.
            let _ = closing.wait_for(|closed| *closed).await;
        });
        UntilClosed {
            inner,
            closed,
            done: false,
        }
    }
}

impl<T: Stream + Unpin> Stream for UntilClosed<T> {
    type Item = T::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T::Item>> {
        let this = self.get_mut();
        if this.done || this.closed.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(None);
        }
        Pin::new(&mut this.inner).poll_next(cx)
    }
}

impl<T: Sink<I> + Unpin, I> Sink<I> for UntilClosed<T> {
    type Error = T::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: I) -> Result<(), Self::Error> {
        Pin::new(&mut self.get_mut().inner).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn stream_ends_when_closing_is_signalled() {
        let (tx, rx) = watch::channel(false);
        let mut s = UntilClosed::new(
            futures::stream::iter([1, 2, 3]).chain(futures::stream::pending()),
            rx,
        );
        assert_eq!(s.next().await, Some(1));
        tx.send(true).unwrap();
        assert_eq!(s.next().await, None);
        assert_eq!(s.next().await, None);
    }

    #[tokio::test]
    async fn a_pending_stream_is_woken_by_the_signal() {
        let (tx, rx) = watch::channel(false);
        let mut s = UntilClosed::new(futures::stream::pending::<u8>(), rx);
        let next = tokio::spawn(async move { s.next().await });
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(next.await.unwrap(), None);
    }
}
