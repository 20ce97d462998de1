//! Per-connection time limits: the header-read timeout (408), the idle
//! keep-alive timeout and the stalled-reader timeout, from one timer per
//! connection.
//!
//! hyper's own HTTP/1 header-read timeout arms a fresh timer for every
//! request head, which measured as the largest single cost of a cached
//! answer (see the README's performance section), and it closes the
//! connection without a 408. Here the connection's IO is wrapped instead:
//! the service marks requests begun and ended (two atomics), the wrapper
//! notes when a new head's first bytes arrive, and a single sleep, reset
//! only when it fires, checks the deadline that applies:
//!
//! - no request in flight, head bytes arriving: `header_read_timeout` from
//!   the head's first byte (or from accept for the first request) → 408 and
//!   close (HTTP/1);
//! - HTTP/2, no request yet: `header_read_timeout` from accept → GOAWAY;
//! - no request in flight, nothing arriving: `idle_timeout` from the last
//!   response's end → close (HTTP/1), GOAWAY (HTTP/2);
//! - a request in flight whose client stopped reading the response (writes
//!   pending) for `idle_timeout` → close.
//!
//! A request in flight that is waiting for upstream is not limited here:
//! the upstream timeout bounds it.
//!
//! HTTP/2 is not ended from here by end-of-stream: that would close without
//! the GOAWAY a client needs to tell "retry elsewhere" from a broken
//! connection. The wrapper asks the connection's task instead
//! ([`ConnState::goaway_asked`]), which starts hyper's graceful shutdown
//! and bounds how long it may take.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::error::error_body;

/// The HTTP/2 connection preface: such a connection gets no 408 bytes.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read: Duration,
    pub idle: Duration,
}

/// What the service and the IO wrapper of one connection share.
#[derive(Debug)]
pub struct ConnState {
    epoch: Instant,
    in_flight: AtomicU32,
    /// Requests begun so far: a head noted under an older count is done.
    begun: AtomicU64,
    /// When the last response ended, in ms since `epoch`.
    idle_since_ms: AtomicU64,
    /// An HTTP/2 connection passed a limit: its task is to send GOAWAY.
    goaway: Notify,
}

impl ConnState {
    pub fn new() -> Arc<ConnState> {
        Arc::new(ConnState {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            begun: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            goaway: Notify::new(),
        })
    }

    /// Resolves once the connection is HTTP/2 and past its header-read or
    /// idle limit.
    pub async fn goaway_asked(&self) {
        self.goaway.notified().await;
    }

    /// A request head was read: the service is called.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.begun.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn idle_since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }
}

/// One request in flight; ends when dropped (its response body is done or
/// abandoned).
#[derive(Debug)]
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = self.0.epoch.elapsed().as_millis();
        self.0
            .idle_since_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its request's [`InFlight`] until it ends.
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Tracked {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// A request head took too long: 408 (HTTP/1), then close.
    Head,
    /// Idle, or the client stopped reading: close.
    Idle,
}

/// The connection's IO with its time limits.
pub struct Guarded<IO> {
    io: IO,
    state: Arc<ConnState>,
    limits: Limits,
    sleep: Pin<Box<Sleep>>,
    /// When the current head's first bytes came, and the `begun` count then.
    head: Option<(Instant, u64)>,
    /// Since when writes have been refused (the client is not reading).
    write_blocked: Option<Instant>,
    h2: bool,
    first_read: bool,
    expired: Option<Expired>,
    /// GOAWAY was asked for (HTTP/2): the connection's task bounds the rest.
    goaway_asked: bool,
}

impl<IO> Guarded<IO> {
    /// `h2` when ALPN already chose HTTP/2.
    pub fn new(io: IO, state: Arc<ConnState>, limits: Limits, h2: bool) -> Self {
        let now = Instant::now();
        Guarded {
            io,
            state,
            limits,
            sleep: Box::pin(tokio::time::sleep_until(now + limits.header_read)),
            // The first request must arrive within the header-read timeout.
            head: Some((now, 0)),
            write_blocked: None,
            h2,
            first_read: true,
            expired: None,
            goaway_asked: false,
        }
    }

    fn head_current(&self) -> Option<Instant> {
        let begun = self.state.begun.load(Ordering::Acquire);
        self.head.filter(|(_, at)| *at == begun).map(|(t, _)| t)
    }

    /// The deadline that applies now, and what passing it means.
    fn deadline(&self, now: Instant) -> (Instant, Option<Expired>) {
        if self.state.in_flight.load(Ordering::Acquire) > 0 {
            return match self.write_blocked {
                Some(since) => (since + self.limits.idle, Some(Expired::Idle)),
                // Busy: nothing to enforce; look again later.
                None => (now + self.limits.idle.min(self.limits.header_read), None),
            };
        }
        // HTTP/2 frames between requests (pings, settings) are no request
        // head: only the first request is timed like one.
        let first = self.state.begun.load(Ordering::Acquire) == 0;
        match self.head_current() {
            Some(since) if !self.h2 || first => {
                (since + self.limits.header_read, Some(Expired::Head))
            }
            _ => (
                self.state.idle_since() + self.limits.idle,
                Some(Expired::Idle),
            ),
        }
    }

    /// Polls the timer; when it fired, checks the deadline that applies and
    /// either expires the connection or re-arms for that deadline.
    fn check(&mut self, cx: &mut Context<'_>) -> Option<Expired> {
        if self.goaway_asked {
            return None;
        }
        // Bounded: a re-armed timer lies in the future, so the second poll
        // is pending unless the clock jumped; a third is never needed.
        for _ in 0..3 {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            let (deadline, on_pass) = self.deadline(now);
            if deadline <= now {
                if let Some(expired) = on_pass {
                    // A client that stopped reading would never see a
                    // GOAWAY: that connection just ends.
                    if self.h2 && self.write_blocked.is_none() {
                        // IO goes on: hyper writes the GOAWAY and reads
                        // the client's answer to its PING.
                        self.goaway_asked = true;
                        self.state.goaway.notify_one();
                        return None;
                    }
                    self.expired = Some(expired);
                    return Some(expired);
                }
            }
            self.sleep
                .as_mut()
                .reset(deadline.max(now + Duration::from_millis(1)));
        }
        None
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Guarded<IO> {
    /// Ends the connection for `expired`: a best-effort 408 first when a
    /// request head is late on HTTP/1, then end-of-stream to hyper.
    fn close_read(&mut self, cx: &mut Context<'_>, expired: Expired) -> Poll<io::Result<()>> {
        if expired == Expired::Head && !self.h2 {
            let answer = request_timeout();
            let _ = Pin::new(&mut self.io).poll_write(cx, &answer);
            let _ = Pin::new(&mut self.io).poll_flush(cx);
            tracing::debug!("request head not received in time: 408");
        }
        // The 408 once only: plain end-of-stream from now on.
        self.expired = Some(Expired::Idle);
        Poll::Ready(Ok(()))
    }
}

/// `408` with a GitHub-style body, closing the connection.
fn request_timeout() -> Vec<u8> {
    let body = error_body("Request head not received in time");
    let mut out = format!(
        "HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\
         content-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(expired) = this.expired {
            return this.close_read(cx, expired);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    if this.first_read {
                        this.first_read = false;
                        let n = read.len().min(H2_PREFACE.len());
                        this.h2 |= read[..n] == H2_PREFACE[..n];
                    }
                    if this.state.in_flight.load(Ordering::Acquire) == 0
                        && this.head_current().is_none()
                    {
                        let begun = this.state.begun.load(Ordering::Acquire);
                        this.head = Some((Instant::now(), begun));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.check(cx) {
                Some(expired) => this.close_read(cx, expired),
                None => Poll::Pending,
            },
            ready => ready,
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Guarded<IO> {
    fn on_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => {
                if self.write_blocked.is_none() {
                    self.write_blocked = Some(Instant::now());
                }
                match self.check(cx) {
                    Some(_) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    ))),
                    None => Poll::Pending,
                }
            }
            ready => {
                self.write_blocked = None;
                ready
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.on_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.on_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.on_write(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
