//! Log lines off the request path. A formatted line is appended to a
//! bounded in-memory batch; one writer thread takes the whole batch every
//! [`TICK`] (sooner once half the bound is reached) and writes it with one
//! `write`. A slow reader (a full pipe, a stalled journald or container log
//! driver) stalls that thread only: lines that find the batch full are
//! dropped and counted, never waited for.
//!
//! Not `tracing-appender`'s non-blocking writer: it wakes its thread for
//! every line, and on a busy 2-core server the wake-ups and context switches
//! cost more than the line (measured: +8 µs of CPU per request, the mirror's
//! whole fresh hit being ~11 µs without a log; see benches/nginx.sh).

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The longest a line waits in the batch while the reader keeps up.
const TICK: Duration = Duration::from_millis(50);

/// How long dropping the [`Flush`] guard waits for the last batch.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// The producers' side: a `MakeWriter` for tracing-subscriber's formatter,
/// which writes each event as one `write_all` of a whole line.
#[derive(Clone)]
pub struct LogQueue(Arc<Shared>);

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Lines the batch holds at most.
    limit: usize,
    dropped: AtomicU64,
}

struct Pending {
    batch: Vec<u8>,
    lines: usize,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The process is ending: write what is there and stop.
    Closing,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts the writer thread over `sink`, with room for `limit` lines.
pub fn start<W: Write + Send + 'static>(sink: W, limit: usize) -> io::Result<(LogQueue, Flush)> {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending {
            batch: Vec::new(),
            lines: 0,
            state: State::Open,
        }),
        wake: Condvar::new(),
        limit,
        dropped: AtomicU64::new(0),
    });
    let (done, finished) = sync_channel(1);
    let writer = shared.clone();
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            write_batches(&writer, sink);
            let _ = done.send(());
        })?;
    Ok((LogQueue(shared.clone()), Flush { shared, finished }))
}

fn write_batches<W: Write>(shared: &Shared, mut sink: W) {
    let mut taken = Vec::new();
    loop {
        let state = {
            let mut pending = shared.pending();
            if pending.state == State::Open && pending.lines < shared.limit.div_ceil(2) {
                pending = shared
                    .wake
                    .wait_timeout(pending, TICK)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            std::mem::swap(&mut pending.batch, &mut taken);
            pending.lines = 0;
            pending.state
        };
        if !taken.is_empty() {
            // Nowhere to report a failed write but the stream that failed.
            let _ = sink.write_all(&taken).and_then(|()| sink.flush());
            taken.clear();
        }
        if state == State::Closing {
            return;
        }
    }
}

impl LogQueue {
    /// Lines dropped so far because the batch was full.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

impl Write for LogQueue {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let shared = &self.0;
        let mut pending = shared.pending();
        if pending.lines >= shared.limit {
            drop(pending);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            pending.batch.extend_from_slice(line);
            pending.lines += 1;
            if pending.lines == shared.limit.div_ceil(2) {
                shared.wake.notify_one();
            }
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogQueue {
    type Writer = LogQueue;

    fn make_writer(&'a self) -> LogQueue {
        self.clone()
    }
}

/// Dropped at the end of the process: the writer thread writes the last
/// batch and stops. Waits [`FLUSH_WAIT`] at most, so a stalled reader
/// cannot hold up the exit.
#[must_use = "dropping it stops the log writer"]
pub struct Flush {
    shared: Arc<Shared>,
    finished: Receiver<()>,
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.shared.pending().state = State::Closing;
        self.shared.wake.notify_one();
        let _ = self.finished.recv_timeout(FLUSH_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test reads, and can hold shut like a stalled pipe.
    #[derive(Clone, Default)]
    struct Sink {
        written: Arc<Mutex<Vec<Vec<u8>>>>,
        stalled: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _wait = self.stalled.lock().unwrap();
            self.written.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_in_batches_and_the_last_at_the_flush() {
        let sink = Sink::default();
        let (mut queue, flush) = start(sink.clone(), 100).unwrap();
        for i in 0..10 {
            queue.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(flush);
        let written = sink.written.lock().unwrap().clone();
        let text: String = written
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let expected: String = (0..10).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, expected);
        assert!(written.len() < 10, "{} writes for 10 lines", written.len());
        assert_eq!(queue.dropped(), 0);
    }

    #[test]
    fn a_stalled_sink_drops_lines_past_the_bound_and_never_blocks() {
        let sink = Sink::default();
        let stall = sink.stalled.clone();
        let held = stall.lock().unwrap();
        let (mut queue, flush) = start(sink.clone(), 4).unwrap();
        // The writer thread takes at most one batch and blocks in the sink;
        // every write here returns at once whatever it does.
        for i in 0..100 {
            queue.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        let dropped = queue.dropped();
        assert!((100 - 8..=100 - 4).contains(&dropped), "{dropped} dropped");
        drop(held);
        drop(flush);
        let lines: usize = sink
            .written
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.iter().filter(|c| **c == b'\n').count())
            .sum();
        assert_eq!(lines as u64 + dropped, 100);
    }
}
