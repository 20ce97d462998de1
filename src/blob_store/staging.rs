//! Reading a blob for a client: a stored one, or the staged file of a fill
//! in progress, whose bytes are released as the fill writes them (and the
//! last one only once the fill is verified). The reader pump runs on its
//! own task; chunks are read on the blocking pool.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{mpsc, watch};

use crate::body::BoxError;

use super::backend::StoredBlob;
use super::fill::{Fill, FillState};
use super::relay::{relay, Origin};

/// Bytes per frame sent to clients. Each stream holds about two (one
/// queued, one being read): 200 streams of a stored zip peaked at 53–55 MiB
/// of anonymous memory with 128 KiB against 87–94 MiB with 256 KiB, at the
/// same throughput within noise; 64 KiB cost a fifth of it (see
/// `examples/stream_memory.rs`).
const CHUNK: usize = 128 * 1024;

/// Counts a client in [`Fill::readers`] for as long as it streams.
pub(super) struct Reading<'a>(&'a Fill);

impl<'a> Reading<'a> {
    pub(super) fn new(fill: &'a Fill) -> Self {
        fill.readers.fetch_add(1, Ordering::Relaxed);
        Reading(fill)
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads bytes `[start, end)` of a stored blob or a fill in progress,
/// waiting for a fill to write them. Memory stays at two chunks per client
/// (one queued, one being read).
pub fn read_range(source: Source, start: u64, end: u64) -> ChannelBody {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        if let Err(e) = pump(source, start, end, &tx).await {
            let _ = tx.send(Err(e.into())).await;
        }
    });
    ChannelBody {
        rx,
        remaining: end.saturating_sub(start),
    }
}

pub enum Source {
    /// Opened before the answer starts: a blob evicted after that stays
    /// readable through the handle.
    Stored(Arc<dyn StoredBlob>),
    Filling(Arc<Fill>),
}

async fn pump(
    source: Source,
    start: u64,
    end: u64,
    tx: &mpsc::Sender<Result<Bytes, BoxError>>,
) -> Result<(), String> {
    let fill = match source {
        Source::Stored(file) => return pump_file(file, None, start, end, tx).await,
        Source::Filling(fill) => fill,
    };
    let _reading = Reading::new(&fill);
    let mut state = fill.state();
    let file = match open_staged(&fill).await {
        Ok(f) => f,
        // The fill finished and renamed its file in between: wait for its
        // verdict (the record is written right after the rename).
        Err(_) => {
            let ended = state
                .wait_for(FillState::ended)
                .await
                .map_err(|_| "the fill stopped".to_owned())?
                .clone();
            match ended {
                FillState::Verified(record) => {
                    let backend = fill.backend.clone();
                    tokio::task::spawn_blocking(move || backend.open(&record))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?
                }
                FillState::Unkept { size, .. } => {
                    return match &fill.origin {
                        Some(origin) => relay(origin, start, end, size, tx).await,
                        None => Err("not kept, and no upstream to relay".into()),
                    }
                }
                FillState::Failed(e) => return Err(e.to_string()),
                FillState::Running { .. } => return Err("stored blob not found".into()),
            }
        }
    };
    pump_file(file, Some((state, fill.origin.as_deref())), start, end, tx).await
}

/// Sends `[start, end)` of `file`; with `state`, no further than the fill
/// has written (and byte `end - 1` only once the fill is verified); when
/// the disk could not hold the fill, the rest comes from its `Origin`.
async fn pump_file(
    file: Arc<dyn StoredBlob>,
    mut state: Option<(watch::Receiver<FillState>, Option<&Origin>)>,
    start: u64,
    end: u64,
    tx: &mpsc::Sender<Result<Bytes, BoxError>>,
) -> Result<(), String> {
    let mut pos = start;
    while pos < end {
        let available = match &mut state {
            None => end,
            Some((rx, origin)) => loop {
                let now = match &*rx.borrow_and_update() {
                    FillState::Running { written, .. } => Now::Writing(*written),
                    FillState::Verified(record) => Now::Whole(record.size),
                    FillState::Unkept { size, .. } => Now::Relay(*size),
                    FillState::Failed(e) => Now::Failed(e.to_string()),
                };
                // The last byte of this answer (not only of the zip: a
                // range is an answer too) waits for the fill's verdict
                // (size, digest): a client must never see bytes the fill
                // goes on to reject end as complete.
                match now {
                    Now::Failed(e) => return Err(e),
                    Now::Relay(size) => {
                        return match origin {
                            Some(origin) => relay(origin, pos, end, size, tx).await,
                            None => Err("not kept, and no upstream to relay".into()),
                        }
                    }
                    Now::Whole(size) => break size,
                    Now::Writing(written) if written.min(end.saturating_sub(1)) > pos => {
                        break written.min(end.saturating_sub(1))
                    }
                    Now::Writing(_) => {
                        if rx.changed().await.is_err() {
                            return Err("the fill stopped".into());
                        }
                    }
                }
            },
        };
        let want = (available.min(end) - pos).min(CHUNK as u64) as usize;
        let chunk = read_at(&file, pos, want).await.map_err(|e| e.to_string())?;
        if chunk.is_empty() {
            return Err("blob file shorter than announced".into());
        }
        pos += chunk.len() as u64;
        if tx.send(Ok(chunk)).await.is_err() {
            return Ok(()); // The client went away.
        }
    }
    Ok(())
}

/// Where a fill stands for a reader.
enum Now {
    Writing(u64),
    Whole(u64),
    /// The disk could not hold it: the rest comes from upstream.
    Relay(u64),
    Failed(String),
}

/// Opens a fill's staged file for reading, off the async threads.
async fn open_staged(fill: &Fill) -> std::io::Result<Arc<dyn StoredBlob>> {
    let path = fill.tmp.clone();
    let file = tokio::task::spawn_blocking(move || std::fs::File::open(path))
        .await
        .map_err(std::io::Error::other)??;
    Ok(Arc::new(file))
}

/// Up to `len` bytes of `blob` from `pos`, read on the blocking pool
/// straight into the buffer that is sent (one copy, one thread hop per
/// chunk; positional, so no seek state is shared).
async fn read_at(blob: &Arc<dyn StoredBlob>, pos: u64, len: usize) -> std::io::Result<Bytes> {
    let blob = blob.clone();
    tokio::task::spawn_blocking(move || blob.read_at(pos, len))
        .await
        .map_err(std::io::Error::other)?
}

/// A response body fed by [`pump`].
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
    remaining: u64,
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => {
                self.remaining = self.remaining.saturating_sub(data.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) if self.remaining > 0 => {
                Poll::Ready(Some(Err("blob stream ended early".into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FillError;
    use crate::index::{BlobRecord, Index};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::time::{Duration, Instant};

    use super::super::backend::Backend;
    use super::super::local::repair::{RepairError, Report};

    /// How long a test waits for a frame that must come.
    const WAIT: Duration = Duration::from_secs(5);

    /// A backend whose committed blob is these bytes; nothing else is
    /// asked of it here.
    struct Committed(Bytes);

    impl Backend for Committed {
        fn commit(&self, _: &Path, _: u64, _: &BlobRecord) -> Result<(), FillError> {
            Err(FillError::BadAnswer("no commit in these tests".into()))
        }
        fn open(&self, _: &BlobRecord) -> std::io::Result<Arc<dyn StoredBlob>> {
            Ok(stored(&self.0))
        }
        fn delete(&self, _: u64, _: &BlobRecord) {}
        fn scan(&self, _: &Index, _: bool) -> Result<Report, RepairError> {
            Ok(Report::default())
        }
    }

    /// A fill of artifact 1 staged at `tmp`, whose committed blob is `bytes`.
    fn fill(tmp: PathBuf, bytes: &Bytes, state: watch::Receiver<FillState>) -> Arc<Fill> {
        Arc::new(Fill {
            artifact: 1,
            repo: None,
            started: Instant::now(),
            started_unix: 0,
            tmp,
            backend: Arc::new(Committed(bytes.clone())),
            origin: None,
            state,
            readers: AtomicU64::new(0),
            transient: AtomicBool::new(false),
        })
    }

    fn zip(len: usize) -> Bytes {
        (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
    }

    fn stored(bytes: &Bytes) -> Arc<dyn StoredBlob> {
        Arc::new(bytes.clone())
    }

    fn running(written: u64) -> FillState {
        FillState::Running {
            written,
            total: None,
            name: None,
        }
    }

    fn verified(size: u64) -> FillState {
        FillState::Verified(BlobRecord {
            sha256: "00".into(),
            size,
            name: "dist".into(),
            expires_at: None,
            stored_at: 0,
            repo: None,
        })
    }

    /// Every frame of `body` until it ends: `Err` with the error's text if
    /// it ends in one.
    async fn frames(mut body: ChannelBody) -> Result<Vec<Bytes>, String> {
        use http_body_util::BodyExt;
        let mut got = Vec::new();
        loop {
            let frame = tokio::time::timeout(WAIT, body.frame())
                .await
                .expect("the body ends in time");
            match frame {
                None => return Ok(got),
                Some(Ok(f)) => got.push(f.into_data().expect("a data frame")),
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
    }

    /// The next frame a pump sends, or `None` if none comes within `wait`.
    async fn next(
        rx: &mut mpsc::Receiver<Result<Bytes, BoxError>>,
        wait: Duration,
    ) -> Option<Bytes> {
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(Ok(b))) => Some(b),
            Ok(Some(Err(e))) => panic!("the pump failed: {e}"),
            Ok(None) | Err(_) => None,
        }
    }

    #[tokio::test]
    async fn a_stored_range_comes_whole_in_chunks_of_the_frame_size() {
        let bytes = zip(3 * CHUNK + 17);
        let (start, end) = (5, bytes.len() as u64 - 3);
        let body = read_range(Source::Stored(stored(&bytes)), start, end);
        assert_eq!(body.size_hint().exact(), Some(end - start));
        let got = frames(body).await.expect("a whole answer");
        let sizes: Vec<usize> = got.iter().map(Bytes::len).collect();
        let k128 = 128 * 1024;
        assert_eq!(sizes, [k128, k128, k128, 9], "128 KiB frames");
        assert_eq!(got.concat(), bytes[5..bytes.len() - 3]);
    }

    #[tokio::test]
    async fn a_blob_shorter_than_announced_ends_the_answer_in_an_error() {
        let body = read_range(Source::Stored(stored(&zip(10))), 0, 20);
        let err = frames(body).await.expect_err("never a short answer");
        assert!(err.contains("shorter than announced"), "{err}");
    }

    #[tokio::test]
    async fn a_body_whose_sender_stops_early_ends_in_an_error_not_a_short_answer() {
        // A body announcing `remaining` bytes whose sender sent "abc" and
        // stopped.
        let after_abc = |remaining| async move {
            let (tx, rx) = mpsc::channel(2);
            tx.send(Ok(Bytes::from_static(b"abc")))
                .await
                .expect("queued");
            drop(tx);
            frames(ChannelBody { rx, remaining }).await
        };
        let err = after_abc(5).await.expect_err("2 bytes missing");
        assert!(err.contains("ended early"), "{err}");
        assert_eq!(after_abc(3).await.expect("whole").concat(), b"abc");
    }

    /// A reader of a fill gets what the fill has written as it is written,
    /// and the last byte of its answer only once the fill is verified: a
    /// client must never see an answer end whole that the fill rejects.
    #[tokio::test]
    async fn a_reader_follows_the_fill_and_its_last_byte_waits_for_the_verdict() {
        let bytes = zip(1000);
        let (state, rx) = watch::channel(running(0));
        let (tx, mut out) = mpsc::channel(8);
        let file = stored(&bytes);
        let pump =
            tokio::spawn(async move { pump_file(file, Some((rx, None)), 0, 1000, &tx).await });
        assert_eq!(next(&mut out, Duration::from_millis(200)).await, None);
        state.send_replace(running(100));
        assert_eq!(next(&mut out, WAIT).await.as_deref(), Some(&bytes[..100]));
        state.send_replace(running(1000));
        assert_eq!(
            next(&mut out, WAIT).await.as_deref(),
            Some(&bytes[100..999])
        );
        assert_eq!(
            next(&mut out, Duration::from_millis(200)).await,
            None,
            "held"
        );
        state.send_replace(verified(1000));
        assert_eq!(next(&mut out, WAIT).await.as_deref(), Some(&bytes[999..]));
        assert_eq!(pump.await.expect("joined"), Ok(()));
    }

    #[tokio::test]
    async fn a_reader_of_a_fill_that_fails_or_is_not_kept_without_an_origin_gets_an_error() {
        let cases = [
            (
                FillState::Failed(Arc::new(FillError::Cut("reset".into()))),
                "cut",
            ),
            (
                FillState::Unkept {
                    size: 1000,
                    name: None,
                },
                "not kept",
            ),
        ];
        for (ended, says) in cases {
            let (state, rx) = watch::channel(running(10));
            let (tx, mut out) = mpsc::channel(8);
            let file = stored(&zip(1000));
            let pump =
                tokio::spawn(async move { pump_file(file, Some((rx, None)), 0, 1000, &tx).await });
            assert_eq!(next(&mut out, WAIT).await.map(|b| b.len()), Some(10));
            state.send_replace(ended);
            let err = pump.await.expect("joined").expect_err("an error");
            assert!(err.contains(says), "{err}");
        }
    }

    /// A client of a fill reads its staged file, and counts as a reader (the
    /// `fill_waiters` gauge) exactly while it streams.
    #[tokio::test]
    async fn a_fills_client_reads_the_staged_file_and_counts_while_it_streams() {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let bytes = zip(1000);
        let tmp = dir.path().join("1.part");
        std::fs::write(&tmp, &bytes).expect("staged");
        let (state, rx) = watch::channel(running(0));
        let fill = fill(tmp, &zip(7), rx);
        let body = read_range(Source::Filling(fill.clone()), 0, 1000);
        let deadline = Instant::now() + WAIT;
        while fill.readers.load(Ordering::Relaxed) != 1 {
            assert!(Instant::now() < deadline, "the reader is counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        state.send_replace(running(1000));
        state.send_replace(verified(1000));
        assert_eq!(frames(body).await.expect("whole").concat(), bytes);
        assert_eq!(fill.readers.load(Ordering::Relaxed), 0, "and uncounted");
    }

    /// The fill finished and renamed its staged file away before the client
    /// opened it: the client reads the committed blob.
    #[tokio::test]
    async fn a_client_that_finds_the_staged_file_gone_reads_the_committed_blob() {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let bytes = zip(1000);
        let (_state, rx) = watch::channel(verified(1000));
        let fill = fill(dir.path().join("renamed.part"), &bytes, rx);
        let body = read_range(Source::Filling(fill), 10, 1000);
        assert_eq!(frames(body).await.expect("whole").concat(), bytes[10..]);
    }
}
