//! The blob storage host the download redirect points at (Azure-like).
//!
//! It checks only the URL's signature and expiry, never a token: a client
//! that forwards `Authorization` here is rejected, as real blob stores do.

use crate::server::{empty, full, record, BoxError, CountingBody, RespBody};
use crate::state::State;
use crate::util::{http_date, lock, now_millis, now_unix, query_param, rfc3339};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Body frame size: large zips go out as many frames, never one buffer.
const CHUNK: usize = 64 * 1024;

pub(crate) async fn handle(st: Arc<State>, req: Request<Incoming>) -> Response<RespBody> {
    let (parts, body) = req.into_parts();
    let index = record(&st.blob_log, &parts);
    CountingBody::new(body, st.blob_log.clone(), index)
        .drain()
        .await;
    let is_get = parts.method == Method::GET;
    if is_get {
        st.bump(|c| c.blob_gets += 1);
    }
    if !is_get && parts.method != Method::HEAD {
        return azure_error(
            &st,
            StatusCode::METHOD_NOT_ALLOWED,
            "UnsupportedHttpVerb",
            "The resource doesn't support specified Http Verb.",
            None,
        );
    }
    if parts.headers.contains_key(header::AUTHORIZATION) {
        return azure_error(
            &st,
            StatusCode::BAD_REQUEST,
            "InvalidAuthenticationInfo",
            "Authentication information is not given in the correct format. Check the value of Authorization header.",
            Some("Only one auth mechanism allowed; only the SAS signature of the URL is accepted here."),
        );
    }

    let path = parts.uri.path();
    let Some(id) = parse_path(path) else {
        return azure_error(
            &st,
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "The specified resource does not exist.",
            None,
        );
    };
    let query = parts.uri.query();
    let (Some(se), Some(sig)) = (query_param(query, "se"), query_param(query, "sig")) else {
        return auth_failed(&st, "Signature fields not well formed.");
    };
    if st.sign(path, &se) != sig {
        return auth_failed(&st, "Signature did not match.");
    }
    let Ok(expiry) = se.parse::<u64>() else {
        return auth_failed(&st, "Signature fields not well formed.");
    };
    let resumed = parts.headers.contains_key(header::RANGE);
    if now_millis() > u128::from(expiry) * 1000 || (resumed && st.knobs.take_resume_expiry()) {
        let detail = format!(
            "Signature not valid in the specified time frame: Start [] - Expiry [{}] - Current [{}]",
            http_date(expiry),
            http_date(now_unix())
        );
        return auth_failed(&st, &detail);
    }

    let found = {
        let store = lock(&st.store);
        store
            .get(id)
            .filter(|s| path.ends_with(&format!("/{}.zip", s.artifact.sha256)))
            .map(|s| (s.artifact.clone(), s.zip.clone()))
    };
    let Some((artifact, zip)) = found else {
        return azure_error(
            &st,
            StatusCode::NOT_FOUND,
            "BlobNotFound",
            "The specified blob does not exist.",
            None,
        );
    };

    if is_get {
        if let Some(delay) = st.knobs.take_blob_delay() {
            tokio::time::sleep(delay).await;
        }
    }
    let total = zip.len() as u64;
    let range = parts
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| !(is_get && resumed && st.knobs.take_ignored_range()))
        .map(|v| parse_range(v, total))
        .unwrap_or(RangeReq::Full);

    let mut h = HeaderMap::new();
    let mut put = |name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.append(name, v);
        }
    };
    put(
        header::SERVER,
        "Windows-Azure-Blob/1.0 Microsoft-HTTPAPI/2.0",
    );
    put(HeaderName::from_static("x-ms-request-id"), &st.request_id());
    put(HeaderName::from_static("x-ms-version"), "2021-12-02");
    put(header::ACCEPT_RANGES, "bytes");
    put(
        header::ETAG,
        &format!("\"0x{}\"", artifact.sha256[..16].to_uppercase()),
    );

    let (status, start, end) = match range {
        RangeReq::Unsatisfiable => {
            put(header::CONTENT_RANGE, &format!("bytes */{total}"));
            put(header::CONTENT_LENGTH, "0");
            return respond(StatusCode::RANGE_NOT_SATISFIABLE, h, empty());
        }
        RangeReq::Full => (StatusCode::OK, 0, total),
        RangeReq::Part(a, b) => {
            put(header::CONTENT_RANGE, &format!("bytes {a}-{b}/{total}"));
            (StatusCode::PARTIAL_CONTENT, a, b + 1)
        }
    };
    put(header::CONTENT_TYPE, "application/zip");
    put(header::CONTENT_LENGTH, &(end - start).to_string());
    put(
        header::CONTENT_DISPOSITION,
        &format!(
            "attachment; filename=\"{}.zip\"",
            quote_safe(&artifact.name)
        ),
    );
    put(
        header::LAST_MODIFIED,
        &http_date(now_unix().saturating_sub(3600)),
    );
    put(HeaderName::from_static("x-ms-blob-type"), "BlockBlob");
    put(
        HeaderName::from_static("x-ms-creation-time"),
        &artifact.created_at,
    );
    put(HeaderName::from_static("x-ms-lease-status"), "unlocked");
    put(HeaderName::from_static("x-ms-server-encrypted"), "true");

    if !is_get {
        return respond(status, h, empty());
    }
    // Both bounds are within the zip (checked by parse_range), so these casts fit.
    let mut data = zip.slice(start as usize..end as usize);
    if st.knobs.take_corruption() {
        data = data.iter().map(|b| !b).collect::<Vec<u8>>().into();
    }
    let (cut, pause) = match st.knobs.take_cut() {
        Some((n, pause)) => (Some(usize::try_from(n).unwrap_or(usize::MAX)), pause),
        None => (None, Duration::ZERO),
    };
    let body = ZipBody {
        data,
        pos: 0,
        cut,
        pause,
        stall: None,
        st,
    };
    use http_body_util::BodyExt;
    respond(status, h, body.boxed())
}

fn respond(status: StatusCode, headers: HeaderMap, body: RespBody) -> Response<RespBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// `/blobs/{id}/{64 hex}.zip` → id.
fn parse_path(path: &str) -> Option<u64> {
    let rest = path.strip_prefix("/blobs/")?;
    let (id, file) = rest.split_once('/')?;
    let sha = file.strip_suffix(".zip")?;
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    id.parse().ok()
}

fn quote_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

fn auth_failed(st: &State, detail: &str) -> Response<RespBody> {
    azure_error(
        st,
        StatusCode::FORBIDDEN,
        "AuthenticationFailed",
        "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
        Some(detail),
    )
}

/// Azure Storage's XML error shape.
fn azure_error(
    st: &State,
    status: StatusCode,
    code: &str,
    message: &str,
    detail: Option<&str>,
) -> Response<RespBody> {
    let rid = st.request_id();
    let detail = detail
        .map(|d| {
            format!(
                "<AuthenticationErrorDetail>{}</AuthenticationErrorDetail>",
                xml_escape(d)
            )
        })
        .unwrap_or_default();
    let xml = format!(
        "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{}\nRequestId:{rid}\nTime:{}</Message>{detail}</Error>",
        xml_escape(message),
        rfc3339(now_unix()),
    );
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(xml.len()));
    h.insert(
        header::SERVER,
        HeaderValue::from_static("Microsoft-HTTPAPI/2.0"),
    );
    if let Ok(v) = HeaderValue::from_str(&rid) {
        h.insert(HeaderName::from_static("x-ms-request-id"), v);
    }
    h.insert(
        HeaderName::from_static("x-ms-error-code"),
        HeaderValue::from_str(code).unwrap_or(HeaderValue::from_static("Error")),
    );
    respond(status, h, full(xml))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[derive(Debug, PartialEq)]
pub(crate) enum RangeReq {
    Full,
    /// Inclusive byte positions, both within the blob.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range (RFC 9110 §14.1.2). Anything the sim does not support
/// (other units, several ranges, bad syntax) is ignored, which per the RFC
/// means answering with the whole blob.
pub(crate) fn parse_range(header: &str, total: u64) -> RangeReq {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeReq::Full;
    };
    let spec = spec.trim();
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        // Overlong numbers are just "very large".
        Some(s.parse().unwrap_or(u64::MAX))
    };
    match (a.is_empty(), num(a), num(b)) {
        // "-n": the last n bytes.
        (true, _, Some(n)) => {
            if n == 0 || total == 0 {
                RangeReq::Unsatisfiable
            } else {
                RangeReq::Part(total - n.min(total), total - 1)
            }
        }
        // "a-" or "a-b"
        (false, Some(first), last) if b.is_empty() || last.is_some() => {
            if let Some(last) = last {
                if last < first {
                    return RangeReq::Full;
                }
            }
            if first >= total {
                return RangeReq::Unsatisfiable;
            }
            let last = last.unwrap_or(u64::MAX).min(total - 1);
            RangeReq::Part(first, last)
        }
        _ => RangeReq::Full,
    }
}

/// Streams a zip slice in `CHUNK` frames, counting what it hands to hyper,
/// and implements the `cut_blob_after` knob.
struct ZipBody {
    data: Bytes,
    pos: usize,
    /// Body bytes to send before failing the stream (which makes hyper drop
    /// the connection, leaving the client short of `Content-Length`).
    cut: Option<usize>,
    /// How long the body stays silent before the cut (short for a cut, long
    /// for a stall).
    pause: Duration,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    st: Arc<State>,
}

impl Body for ZipBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let len = this.data.len();
        let limit = this.cut.map_or(len, |c| c.min(len));
        if this.pos >= limit {
            if this.cut.is_none() || this.pos >= len {
                return Poll::Ready(None);
            }
            let pause = this.pause;
            let stall = this
                .stall
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
            if stall.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.cut = Some(0);
            this.pos = len; // ends the stream if hyper polls again
            return Poll::Ready(Some(Err("ghes-sim: injected connection cut".into())));
        }
        let end = (this.pos + CHUNK).min(limit);
        let chunk = this.data.slice(this.pos..end);
        this.pos = end;
        let n = chunk.len() as u64;
        this.st.bump(|c| c.blob_bytes += n);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.cut.is_none() && self.pos >= self.data.len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.data.len() - self.pos.min(self.data.len())) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeReq::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=90-500", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-500", 100), Part(0, 99));
        assert_eq!(parse_range("bytes=99-99", 100), Part(99, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(
            parse_range("bytes=99999999999999999999999-", 100),
            Unsatisfiable
        );
        // ignored → whole blob
        assert_eq!(parse_range("bytes=5-1", 100), Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=a-b", 100), Full);
        assert_eq!(parse_range("bytes=-", 100), Full);
        assert_eq!(parse_range("bytes=1-x", 100), Full);
    }

    #[test]
    fn blob_paths() {
        let sha = "a".repeat(64);
        assert_eq!(parse_path(&format!("/blobs/12/{sha}.zip")), Some(12));
        assert_eq!(parse_path("/blobs/12/abc.zip"), None);
        assert_eq!(parse_path(&format!("/blobs/x/{sha}.zip")), None);
        assert_eq!(parse_path(&format!("/blobs/12/{sha}")), None);
    }
}
