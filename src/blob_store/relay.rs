//! A zip the disk could not hold (ENOSPC or a disk quota while staging):
//! each of its clients is sent the bytes straight from upstream, from where
//! its answer stands, and nothing is kept. The fill's [`Origin`] (the
//! current signed location and how to get a fresh one) is shared with these
//! readers.
//!
//! Checked as a fill is, except the digest: every answer must be a 206 whose
//! `Content-Range` starts where the reader stands and whose total is the
//! zip's size, and the stream must reach the answer's end, or the client's
//! stream ends in an error (never a short 200). The digest is not checked:
//! a relayed client may have read its first bytes from the staged file
//! (GHES gives no digest anyway; api.github.com does).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};
use hyper::body::Body as HttpBody;
use tokio::sync::mpsc;

use crate::body::BoxError;
use crate::metrics::Metrics;
use crate::upstream::BlobFetcher;

use super::fill::Relocate;
use super::transfer::content_range;

/// Attempts per relayed answer (the first and the resumes after a cut).
const ATTEMPTS: u32 = 5;

/// Where a fill's bytes come from: shared by the fill and, when the zip is
/// not kept, by every reader relaying it.
pub struct Origin {
    location: Mutex<Uri>,
    relocate: Relocate,
    pub(super) fetcher: BlobFetcher,
    metrics: Arc<Metrics>,
}

impl Origin {
    pub fn new(
        location: Uri,
        relocate: Relocate,
        fetcher: BlobFetcher,
        metrics: Arc<Metrics>,
    ) -> Origin {
        Origin {
            location: Mutex::new(location),
            relocate,
            fetcher,
            metrics,
        }
    }

    pub fn location(&self) -> Uri {
        self.location
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the download endpoint for a fresh location; `false` if none.
    pub async fn relocate(&self) -> bool {
        match (self.relocate)().await {
            Some(fresh) => {
                *self.location.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
                true
            }
            None => false,
        }
    }
}

/// Sends `[pos, end)` of a zip of `size` bytes from upstream to `tx`.
pub(super) async fn relay(
    origin: &Origin,
    mut pos: u64,
    end: u64,
    size: u64,
    tx: &mpsc::Sender<Result<Bytes, BoxError>>,
) -> Result<(), String> {
    let mut last = String::from("no answer");
    for attempt in 0..ATTEMPTS {
        if pos >= end {
            return Ok(());
        }
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
        }
        let response = match origin.fetcher.get(&origin.location(), Some(pos)).await {
            Ok(r) => r,
            Err(e) => {
                last = e;
                continue;
            }
        };
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::BAD_REQUEST
            | StatusCode::FORBIDDEN
            | StatusCode::NOT_FOUND
            | StatusCode::GONE => {
                last = format!("the blob store answered {}", response.status());
                if !origin.relocate().await {
                    break;
                }
                continue;
            }
            other => {
                last = format!("the blob store answered {other}");
                continue;
            }
        }
        if content_range(response.headers()) != Some((pos, size)) {
            return Err("the blob store's range does not match the zip".into());
        }
        let mut body = response.into_body();
        while let Some(frame) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            let data = match frame.map(|f| f.into_data()) {
                Ok(Ok(data)) => data,
                Ok(Err(_)) => continue,
                Err(e) => {
                    last = e.to_string();
                    break;
                }
            };
            // `end - pos` fits: `data.len()` bounds it.
            let take = usize::try_from(end - pos).map_or(data.len(), |n| n.min(data.len()));
            if take == 0 {
                break;
            }
            pos += take as u64;
            origin.metrics.fetched_from_upstream(take as u64);
            if tx.send(Ok(data.slice(..take))).await.is_err() {
                return Ok(()); // The client went away.
            }
            if pos >= end {
                return Ok(());
            }
        }
    }
    Err(format!("relayed from upstream, gave up: {last}"))
}
