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

#[cfg(test)]
mod tests {
    use super::super::test_host::{origin, Answer, Host, SIZE};
    use super::*;

    /// Relays `[start, end)` and returns what arrived and how it ended.
    async fn relayed(origin: &Origin, start: u64, end: u64) -> (Vec<u8>, Result<(), String>) {
        let (tx, mut rx) = mpsc::channel(64);
        let ended = tokio::time::timeout(
            Duration::from_secs(20),
            relay(origin, start, end, SIZE, &tx),
        )
        .await
        .expect("the relay ends in time");
        drop(tx);
        let mut got = Vec::new();
        while let Some(chunk) = rx.recv().await {
            got.extend_from_slice(&chunk.expect("only bytes are sent"));
        }
        (got, ended)
    }

    #[tokio::test]
    async fn a_relay_sends_exactly_the_asked_range() {
        let (host, uri) = Host::start(&[]).await;
        let (got, ended) = relayed(&origin(uri, vec![]), 100, 900).await;
        assert_eq!(ended, Ok(()));
        assert_eq!(got, host.zip[100..900]);
        assert_eq!(host.asked(), [Some(100)]);
    }

    #[tokio::test]
    async fn a_cut_answer_is_resumed_from_where_the_client_stands() {
        let (host, uri) = Host::start(&[
            Answer::CutAfter(300),
            Answer::Status(StatusCode::BAD_GATEWAY),
        ])
        .await;
        let (got, ended) = relayed(&origin(uri, vec![]), 100, SIZE).await;
        assert_eq!(ended, Ok(()));
        assert_eq!(got, host.zip[100..]);
        let resumed = [Some(100), Some(400), Some(400)];
        assert_eq!(host.asked(), resumed, "after the cut and the 502");
    }

    #[tokio::test]
    async fn a_refused_location_is_replaced_by_a_fresh_one_or_the_relay_gives_up() {
        let (host, uri) = Host::start(&[Answer::Status(StatusCode::FORBIDDEN)]).await;
        let (got, ended) = relayed(&origin(uri.clone(), vec![uri.clone()]), 0, SIZE).await;
        assert_eq!(ended, Ok(()));
        assert_eq!(got, host.zip[..]);
        assert_eq!(host.asked(), [Some(0), Some(0)]);

        let (host, uri) = Host::start(&[Answer::Status(StatusCode::GONE)]).await;
        let (got, ended) = relayed(&origin(uri, vec![]), 0, SIZE).await;
        let err = ended.expect_err("no fresh location");
        assert!(err.contains("410"), "{err}");
        assert!(got.is_empty());
        assert_eq!(
            host.asked(),
            [Some(0)],
            "not asked again without a fresh location"
        );
    }

    #[tokio::test]
    async fn an_answer_for_other_bytes_or_only_failures_end_in_an_error() {
        let (_, uri) = Host::start(&[Answer::OffByOne]).await;
        let (got, ended) = relayed(&origin(uri, vec![]), 10, SIZE).await;
        let err = ended.expect_err("a misplaced range");
        assert!(err.contains("does not match"), "{err}");
        assert!(got.is_empty());

        let (host, uri) = Host::start(&[Answer::Status(StatusCode::SERVICE_UNAVAILABLE); 5]).await;
        let started = std::time::Instant::now();
        let (got, ended) = relayed(&origin(uri, vec![]), 0, SIZE).await;
        // Backing off 100, 200, 300, 400 ms between tries, not hammering a
        // failing store (a lower bound only: a slow machine takes longer).
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let err = ended.expect_err("five 503s");
        assert!(err.contains("gave up") && err.contains("503"), "{err}");
        assert!(got.is_empty());
        assert_eq!(host.asked().len(), ATTEMPTS as usize);
    }
}
