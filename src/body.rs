//! The one response/request body type the mirror passes around: boxed, so
//! upstream streams, in-memory answers and (later) store files mix freely.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Reads a whole body of at most `limit` bytes.
///
/// (Not `http_body_util::Limited`: its `Into<Box<dyn Error>>` bound makes
/// futures that await it fail rustc's `Send` check in generic contexts.)
pub async fn collect_limited(mut body: Body, limit: usize) -> Result<Bytes, BoxError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buf.len() + data.len() > limit {
                return Err(format!("body larger than {limit} bytes").into());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// An upstream body that fails when no frame arrives for `limit`: a stalled
/// GHES or blob store must not hold a client (or a fill) forever. The timer
/// is created only when the body first has to wait, so an answer that
/// arrives whole costs none.
pub struct StallLimited<B> {
    inner: B,
    limit: std::time::Duration,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<B> StallLimited<B> {
    pub fn new(inner: B, limit: std::time::Duration) -> Self {
        StallLimited {
            inner,
            limit,
            sleep: None,
        }
    }
}

impl<B> hyper::body::Body for StallLimited<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(sleep) = &mut this.sleep {
                    sleep
                        .as_mut()
                        .reset(tokio::time::Instant::now() + this.limit);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let limit = this.limit;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                        "upstream sent nothing for {}s",
                        limit.as_secs_f64()
                    )
                    .into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    /// A body fed by a channel, frame by frame.
    struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

    impl hyper::body::Body for Fed {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
            self.0
                .poll_recv(cx)
                .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn a_stalled_body_fails_and_a_flowing_one_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let mut body = StallLimited::new(Fed(rx), Duration::from_millis(200));
        // Frames 100 ms apart: each within the limit.
        let feeder = tokio::spawn({
            let tx = tx.clone();
            async move {
                for chunk in ["a", "b", "c"] {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = tx.send(Bytes::from_static(chunk.as_bytes())).await;
                }
            }
        });
        for want in ["a", "b", "c"] {
            let frame = body.frame().await.expect("a frame").expect("no stall");
            assert_eq!(frame.into_data().expect("data"), want);
        }
        feeder.await.expect("feeder");
        // Then nothing, with the sender still open: the limit ends it.
        let stalled = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the stall limit fires");
        assert!(stalled.expect("a frame").is_err());
        drop(tx);
    }
}
