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
