//! One structured log line per request, written when the response body has
//! been sent (or abandoned), so it carries the real duration and byte count.
//!
//! Only the path is logged, never the query (later: signed blob URLs carry
//! their signature there) and never a header value (tokens).

use std::io::BufWriter;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

use crate::body::{Body, BoxError};
use crate::config::{LogFormat, Settings};
use crate::metrics::Metrics;

/// Lines the writer thread had no room for, process-wide (the subscriber
/// is), read by `/metrics`; unset until [`init_subscriber`] runs.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped because the queue to the writer thread was full.
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |c| u64::try_from(c.dropped_lines()).unwrap_or(u64::MAX))
}

/// How long shutdown waits for the writer thread to write what is queued.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Installs the process-wide subscriber: `log_level` as the filter (RUST_LOG
/// wins when set), `log_format` for the line shape, lines to stderr. A
/// subscriber installed already (an embedding program's) is left in place.
///
/// Lines are formatted on the request's thread, then queued (at most
/// `log_queue_lines`) to a writer thread that writes them in batches: a slow
/// reader of stderr stalls that thread only. A line that finds the queue full
/// is dropped and counted ([`dropped_lines`]), never waited for. Keep the
/// guard until the end: dropping it writes what is queued.
pub fn init_subscriber(settings: &Settings) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&settings.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Stderr is unbuffered: the buffer makes one write of each batch the
    // worker drains from the queue (it flushes when the queue is empty).
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(settings.log_queue_lines)
        .thread_name("log-writer")
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let _first = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _already_set = match settings.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.try_init(),
    };
    LogGuard(Some(guard))
}

/// Writes the queued lines when dropped, waiting [`FLUSH_WAIT`] at most: a
/// stalled reader must not hold up the exit. (The worker guard itself can
/// block: with the queue full it reports so on stdout, which may be the same
/// stalled pipe.)
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard(Option<WorkerGuard>);

impl Drop for LogGuard {
    fn drop(&mut self) {
        let Some(guard) = self.0.take() else { return };
        let (done, flushed) = std::sync::mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || {
                drop(guard);
                let _ = done.send(());
            });
        if spawned.is_ok() {
            let _ = flushed.recv_timeout(FLUSH_WAIT);
        }
    }
}

/// Set by whoever called upstream, as a response extension, so the log line
/// can say what upstream answered.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamStatus(pub StatusCode);

/// What is known of a request once its response head exists.
#[derive(Debug)]
pub struct Entry {
    pub method: Method,
    pub route: &'static str,
    pub path: String,
    pub peer: IpAddr,
    pub status: StatusCode,
    pub upstream_status: Option<StatusCode>,
    pub started: Instant,
}

/// A response body that writes the request's log line when it ends.
pub struct LoggedBody {
    inner: Body,
    entry: Option<Entry>,
    bytes: u64,
    /// The body's exact length when known: hyper stops polling (and drops
    /// the body) once that many bytes went out, without a final `None`.
    length: Option<u64>,
    /// Where the bytes sent are counted as served from the store.
    served: Option<Arc<Metrics>>,
}

impl LoggedBody {
    pub fn new(inner: Body, entry: Entry, served: Option<Arc<Metrics>>) -> Self {
        LoggedBody {
            length: inner.size_hint().exact(),
            inner,
            entry: Some(entry),
            bytes: 0,
            served,
        }
    }

    fn finish(&mut self, outcome: &'static str) {
        let Some(e) = self.entry.take() else { return };
        if let Some(metrics) = &self.served {
            metrics.served_from_store(self.bytes);
        }
        tracing::info!(
            target: "access",
            method = %e.method,
            route = e.route,
            path = %e.path,
            peer = %e.peer,
            status = e.status.as_u16(),
            upstream_status = e.upstream_status.map(|s| s.as_u16()),
            duration_ms = e.started.elapsed().as_micros() as f64 / 1000.0,
            bytes = self.bytes,
            outcome,
        );
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish("body_error"),
            Poll::Ready(None) => self.finish("complete"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // Bodies hyper never polls (HEAD, 304) end here too, and so do
        // bodies of a known length once all of it was sent.
        let whole = self.length.is_some_and(|n| self.bytes >= n);
        let outcome = if whole || self.inner.is_end_stream() {
            "complete"
        } else {
            "client_gone"
        };
        self.finish(outcome);
    }
}
