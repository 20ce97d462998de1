//! A blob host on loopback for the unit tests of the transfer and the
//! relay: one zip, answered request by request as a script says, each
//! request's `Range` noted.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Frame;

use crate::body::{Body, BoxError};
use crate::config::{Layer, Settings};
use crate::metrics::Metrics;
use crate::upstream::BlobFetcher;

use super::fill::Relocate;
use super::relay::Origin;

/// The zip's size.
pub const SIZE: u64 = 1000;
/// Bytes per frame the host sends: a cut at 300 bytes falls inside one.
const FRAME: usize = 256;
/// The zip's ETag; [`Answer::OtherETag`] and [`Answer::WholeOther`] send
/// another.
const ETAG: &str = "\"v1\"";

/// How the host answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// As a blob store does: a 206 from the asked byte, or a 200 with the
    /// whole zip when no `Range` was asked.
    Range,
    /// That answer, cut (the connection closed) after this many bytes.
    CutAfter(usize),
    /// That answer with another ETag (the blob changed upstream).
    OtherETag,
    /// A 200 with the whole zip whatever was asked (a store that ignores
    /// `Range`).
    Whole,
    /// A 200 with other content of the same size, and another ETag.
    WholeOther,
    /// A 206 whose `Content-Range` starts one byte after the asked one.
    OffByOne,
    /// A 206 whose `Content-Range` announces half the zip's size.
    Overlong,
    Status(StatusCode),
}

pub struct Host {
    pub zip: Bytes,
    answers: Mutex<VecDeque<Answer>>,
    asked: Mutex<Vec<Option<u64>>>,
}

impl Host {
    /// A host answering `answers` in turn, then [`Answer::Range`]; and the
    /// zip's URL on it.
    pub async fn start(answers: &[Answer]) -> (Arc<Host>, Uri) {
        let host = Arc::new(Host {
            zip: zip(),
            answers: Mutex::new(answers.iter().copied().collect()),
            asked: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let uri = format!("http://{}/zip", listener.local_addr().expect("bound"))
            .parse()
            .expect("a uri");
        let serving = host.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let host = serving.clone();
                let service = hyper::service::service_fn(move |r| {
                    let answer = host.answer(&r);
                    async move { Ok::<_, Infallible>(answer) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        (host, uri)
    }

    /// The `Range` start of each request so far (`None`: the whole zip).
    pub fn asked(&self) -> Vec<Option<u64>> {
        self.asked.lock().expect("lock").clone()
    }

    fn answer(&self, request: &http::Request<hyper::body::Incoming>) -> http::Response<Body> {
        let range = request.headers().get(header::RANGE).and_then(|v| {
            v.to_str()
                .ok()?
                .strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse()
                .ok()
        });
        self.asked.lock().expect("lock").push(range);
        let answer = self
            .answers
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or(Answer::Range);
        let from = range.unwrap_or(0);
        let rest = self.zip.slice(usize::try_from(from).expect("small")..);
        let partial = match range {
            Some(_) => StatusCode::PARTIAL_CONTENT,
            None => StatusCode::OK,
        };
        // Status, where the bytes start and the total they announce, ETag,
        // the bytes, and after how many of them the connection closes.
        let (status, start, total, etag, bytes, cut_after) = match answer {
            Answer::Status(status) => {
                return http::Response::builder()
                    .status(status)
                    .body(crate::body::empty())
                    .expect("a response")
            }
            Answer::Range => (partial, from, SIZE, ETAG, rest, None),
            Answer::CutAfter(n) => (partial, from, SIZE, ETAG, rest, Some(n)),
            Answer::OtherETag => (partial, from, SIZE, "\"v2\"", rest, None),
            Answer::Whole => (StatusCode::OK, 0, SIZE, ETAG, self.zip.clone(), None),
            Answer::WholeOther => (StatusCode::OK, 0, SIZE, "\"v2\"", content(1), None),
            Answer::OffByOne => {
                let status = StatusCode::PARTIAL_CONTENT;
                (status, from + 1, SIZE, ETAG, rest.slice(1..), None)
            }
            Answer::Overlong => (
                StatusCode::PARTIAL_CONTENT,
                from,
                SIZE / 2,
                ETAG,
                rest,
                None,
            ),
        };
        let mut response = http::Response::builder()
            .status(status)
            .header(header::ETAG, etag)
            .header(header::CONTENT_DISPOSITION, "attachment; filename=dist.zip")
            .header(header::CONTENT_LENGTH, bytes.len());
        if status == StatusCode::PARTIAL_CONTENT {
            response = response.header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{total}", total - 1),
            );
        }
        response.body(framed(bytes, cut_after)).expect("a response")
    }
}

/// The zip every host serves.
pub fn zip() -> Bytes {
    content(0)
}

/// [`SIZE`] bytes; `seed` tells contents apart.
fn content(seed: u8) -> Bytes {
    (0..SIZE)
        .map(|i| (i % 251) as u8 ^ seed)
        .collect::<Vec<_>>()
        .into()
}

/// `bytes` in frames of [`FRAME`] bytes a few milliseconds apart (so the
/// client reads them one by one, as from a real store). With `cut`, only
/// that many bytes go, then the connection closes; the close waits, so the
/// bytes before it reach the client.
fn framed(bytes: Bytes, cut: Option<usize>) -> Body {
    let sent = bytes.slice(..cut.unwrap_or(bytes.len()));
    let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = (0..sent.len())
        .step_by(FRAME)
        .map(|i| Ok(Frame::data(sent.slice(i..(i + FRAME).min(sent.len())))))
        .collect();
    if cut.is_some() {
        frames.push(Err("reset".into()));
    }
    let stream =
        futures_util::StreamExt::then(futures_util::stream::iter(frames), |frame| async move {
            let gap = if frame.is_err() { 250 } else { 5 };
            tokio::time::sleep(Duration::from_millis(gap)).await;
            frame
        });
    http_body_util::StreamBody::new(stream).boxed()
}

/// A fetcher as the server builds one (its upstream is never asked here).
pub fn fetcher(metrics: Arc<Metrics>) -> BlobFetcher {
    let settings = Settings::resolve(Layer {
        upstream: Some("http://127.0.0.1:9/api/v3".parse().expect("a url")),
        ..Layer::default()
    })
    .expect("settings");
    BlobFetcher::new(&settings, metrics).expect("a fetcher")
}

/// An origin at `location` whose download endpoint hands out `fresh`
/// locations in turn, then none.
pub fn origin(location: Uri, fresh: Vec<Uri>) -> Origin {
    let metrics = Arc::new(Metrics::new());
    let fresh = Arc::new(Mutex::new(VecDeque::from(fresh)));
    let relocate: Relocate = Box::new(move || {
        let next = fresh.lock().expect("lock").pop_front();
        Box::pin(async move { next })
    });
    Origin::new(location, relocate, fetcher(metrics.clone()), metrics)
}
