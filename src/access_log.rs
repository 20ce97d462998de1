//! One structured log line per request, written when the response body has
//! been sent (or abandoned), so it carries the real duration and byte count.
//!
//! Only the path is logged, never the query (later: signed blob URLs carry
//! their signature there) and never a header value (tokens).

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{Body, BoxError};
use crate::config::{LogFormat, Settings};
use crate::log_queue::{self, Flush, LogQueue};
use crate::metrics::Metrics;

/// The installed queue, process-wide (the subscriber is), read by
/// `/metrics`; unset until [`init_subscriber`] runs.
static QUEUE: OnceLock<LogQueue> = OnceLock::new();

/// Where access lines go when the format is JSON and the writer thread
/// runs: formatted by [`JsonLine`] straight into the queue. tracing's JSON
/// formatter (visitor, dynamic dispatch per field, a fresh buffer) cost
/// about a tenth of a fresh hit's CPU; this writes the same object, field
/// for field (a unit test compares the two). Unset: through tracing.
static JSON_ACCESS: OnceLock<LogQueue> = OnceLock::new();

/// Log lines dropped because the writer thread's batch was full.
pub fn dropped_lines() -> u64 {
    QUEUE.get().map_or(0, LogQueue::dropped)
}

/// Installs the process-wide subscriber: `log_level` as the filter (RUST_LOG
/// wins when set), `log_format` for the line shape, lines to stderr. A
/// subscriber installed already (an embedding program's) is left in place.
///
/// Lines are formatted on the request's thread and handed to a writer
/// thread (src/log_queue.rs) that writes them in batches, at most
/// `log_queue_lines` waiting: a slow reader of stderr stalls that thread
/// only, and a line with no room is dropped and counted ([`dropped_lines`]),
/// never waited for. Keep the guard until the end: dropping it writes what
/// is waiting.
pub fn init_subscriber(settings: &Settings) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&settings.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let (queue, flush) = match log_queue::start(std::io::stderr(), settings.log_queue_lines) {
        Ok(started) => started,
        Err(e) => {
            // No thread to spare: lines are written on the request's thread.
            eprintln!("artifact-mirror: no log writer thread ({e}); logging directly to stderr");
            let builder = builder.with_writer(std::io::stderr);
            let _already_set = match settings.log_format {
                LogFormat::Json => builder.json().flatten_event(true).try_init(),
                LogFormat::Human => builder.try_init(),
            };
            return LogGuard { _flush: None };
        }
    };
    let _first = QUEUE.set(queue.clone());
    if settings.log_format == LogFormat::Json {
        let _first = JSON_ACCESS.set(queue.clone());
    }
    let builder = builder.with_writer(queue);
    let _already_set = match settings.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.try_init(),
    };
    LogGuard {
        _flush: Some(flush),
    }
}

/// Writes the waiting lines when dropped (2 s at most: a stalled reader
/// must not hold up the exit).
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _flush: Option<Flush>,
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
        let direct = JSON_ACCESS.get();
        // Filtered out (`log_level` above info): no line to build.
        if direct.is_some() && !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        let duration_ms = e.started.elapsed().as_micros() as f64 / 1000.0;
        let line = JsonLine::new(&e, self.bytes, outcome, duration_ms);
        match direct {
            Some(queue) => write_json(queue.clone(), &line),
            None => line.trace(),
        }
    }
}

/// An access line as tracing's JSON formatter (`flatten_event`) writes it:
/// the same keys in the same order, an absent upstream status left out.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    #[serde(serialize_with = "display")]
    timestamp: humantime::Rfc3339Timestamp,
    level: &'static str,
    method: &'a str,
    route: &'static str,
    path: &'a str,
    peer: IpAddr,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_status: Option<u16>,
    duration_ms: f64,
    bytes: u64,
    outcome: &'static str,
    target: &'static str,
}

impl<'a> JsonLine<'a> {
    fn new(e: &'a Entry, bytes: u64, outcome: &'static str, duration_ms: f64) -> Self {
        JsonLine {
            timestamp: humantime::format_rfc3339_micros(crate::clock::now()),
            level: "INFO",
            method: e.method.as_str(),
            route: e.route,
            path: &e.path,
            peer: e.peer,
            status: e.status.as_u16(),
            upstream_status: e.upstream_status.map(|s| s.as_u16()),
            duration_ms,
            bytes,
            outcome,
            target: "access",
        }
    }

    /// The same line through tracing: the human format, or a subscriber
    /// someone else installed.
    fn trace(&self) {
        tracing::info!(
            target: "access",
            method = %self.method,
            route = self.route,
            path = %self.path,
            peer = %self.peer,
            status = self.status,
            upstream_status = self.upstream_status,
            duration_ms = self.duration_ms,
            bytes = self.bytes,
            outcome = self.outcome,
        );
    }
}

fn display<S: serde::Serializer>(
    value: &humantime::Rfc3339Timestamp,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

thread_local! {
    /// One line's bytes, reused: the queue copies them into its batch.
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn write_json(mut queue: impl std::io::Write, line: &JsonLine<'_>) {
    LINE.with_borrow_mut(|buf| {
        buf.clear();
        if serde_json::to_writer(&mut *buf, line).is_ok() {
            buf.push(b'\n');
            // The queue never fails: a full one drops and counts the line.
            let _ = queue.write_all(buf);
        }
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The line, with its timestamp checked and taken out.
    fn written(buf: &Buf) -> String {
        let line = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            line.ends_with('\n') && line.lines().count() == 1,
            "{line:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let stamp = v["timestamp"].as_str().expect("a timestamp");
        humantime::parse_rfc3339(stamp).expect("RFC 3339");
        line.replacen(stamp, "", 1)
    }

    /// The line written directly is the object tracing's JSON formatter
    /// writes for the same request, keys in the same order.
    #[test]
    fn the_direct_json_line_is_tracings() {
        for upstream in [Some(StatusCode::NOT_MODIFIED), None] {
            let e = Entry {
                method: Method::GET,
                route: "list",
                path: "/api/v3/repos/o/r/actions/artifacts \"quoted\"\\".into(),
                peer: "::1".parse().unwrap(),
                status: StatusCode::OK,
                upstream_status: upstream,
                started: Instant::now(),
            };
            let line = JsonLine::new(&e, 66_000, "complete", 0.125);
            let direct = Buf::default();
            write_json(direct.clone(), &line);
            let traced = Buf::default();
            let writer = traced.clone();
            let subscriber = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, || line.trace());
            let (direct, traced) = (written(&direct), written(&traced));
            assert_eq!(direct, traced);
            assert_eq!(direct.contains("upstream_status"), upstream.is_some());
        }
    }
}
