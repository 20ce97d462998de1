//! Errors of the mirror itself, and the one place they become responses.
//!
//! Upstream's own errors never pass through here: they reach the client
//! unchanged. What the mirror answers on its own looks like GitHub's errors
//! (`{"message", "documentation_url"}`) so clients report them the same way.

use http::header::{self, HeaderMap, HeaderValue};
use std::io;
use std::path::{Path, PathBuf};

use http::{Response, StatusCode};

use crate::body::{self, Body};
use crate::router::RouteError;

/// Where GitHub-style error bodies point.
pub const DOCUMENTATION_URL: &str =
    "https://docs.github.com/enterprise-server/rest/actions/artifacts";

/// Where GitHub's own 410 for an expired artifact points.
pub const DOWNLOAD_DOCUMENTATION_URL: &str =
    "https://docs.github.com/rest/actions/artifacts#download-an-artifact";

/// Why a fill ended without a blob. The log line gets the whole text
/// (local paths included, for the operator); what a client is told is
/// decided below, and names no local path.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    #[error("the blob store answered {0}")]
    UpstreamStatus(StatusCode),
    /// An expired or refused signed URL, and no fresh one to be had.
    #[error("the blob store answered {0}; no fresh location")]
    NoFreshLocation(StatusCode),
    /// The fetcher's text: the blob host and path, never the signed query.
    #[error("{0}")]
    Unreachable(String),
    #[error("the blob store's answer is unusable: {0}")]
    BadAnswer(String),
    #[error("the transfer was cut: {0}")]
    Cut(String),
    #[error("size mismatch: expected {expected} bytes, the blob store has {got}")]
    SizeMismatch { expected: u64, got: u64 },
    #[error("digest mismatch: expected sha256:{expected}, got sha256:{got}")]
    DigestMismatch { expected: String, got: String },
    /// The local disk failed; `op` says at what.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the blob was not recorded: {0}")]
    Index(String),
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: Box<FillError> },
    #[error("the blob store did not answer")]
    NoAnswer,
    #[error("the fill stopped")]
    Stopped,
}

impl FillError {
    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FillError {
        let path = path.to_owned();
        move |source| FillError::Io { op, path, source }
    }

    /// Whether the local disk ran out of space (or of the user's disk
    /// quota): the zip cannot be kept, but can still be relayed.
    pub(crate) fn is_no_space(&self) -> bool {
        match self {
            FillError::Io { source, .. } => {
                matches!(
                    source.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                ) || matches!(source.raw_os_error(), Some(28 | 122))
            }
            FillError::GaveUp { last, .. } => last.is_no_space(),
            _ => false,
        }
    }
}

/// Why a delivery was refused; [`WebhookError::status`] is its status.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("Webhook payload over {max_mb} MB")]
    TooLarge { max_mb: usize },
    #[error("X-Hub-Signature-256 is missing or does not match the payload and the webhook secret")]
    BadSignature,
    #[error("Webhook payload is not valid: {0}")]
    Malformed(String),
    #[error("Too many webhook deliveries at once")]
    Busy,
    #[error("Webhook payload not received within {seconds} s")]
    Slow { seconds: u64 },
}

impl WebhookError {
    pub fn status(&self) -> StatusCode {
        match self {
            WebhookError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            WebhookError::BadSignature => StatusCode::UNAUTHORIZED,
            WebhookError::Malformed(_) => StatusCode::BAD_REQUEST,
            WebhookError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            WebhookError::Slow { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("Upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    #[error("Upstream did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    #[error("Invalid request: {0}")]
    BadRequest(String),
    #[error("{0}")]
    Signature(#[from] crate::signing::SignatureError),
    #[error(
        "Blob not available (evicted or never fetched): request the artifact's download URL again"
    )]
    BlobUnavailable,
    /// Upstream showed the artifact expired: the mirror answers with the
    /// download endpoint's own 410, word for word.
    #[error("Artifact has expired")]
    ArtifactExpired,
    #[error(
        "Artifact could not be fetched from the blob store: {}",
        fill_message(.0)
    )]
    Fill(std::sync::Arc<FillError>),
    /// The upstream concurrency bound and its queue are full: the client
    /// should come back shortly rather than pile onto GHES.
    #[error("The mirror has too many requests waiting for GHES; retry in {0} s")]
    Overloaded(u64),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
}

impl MirrorError {
    pub fn status(&self) -> StatusCode {
        match self {
            MirrorError::Route(RouteError::NotFound) => StatusCode::NOT_FOUND,
            MirrorError::Route(RouteError::MethodNotAllowed) => StatusCode::METHOD_NOT_ALLOWED,
            MirrorError::Route(_) | MirrorError::BadRequest(_) => StatusCode::BAD_REQUEST,
            MirrorError::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            MirrorError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            MirrorError::Signature(_) => StatusCode::FORBIDDEN,
            MirrorError::BlobUnavailable => StatusCode::NOT_FOUND,
            MirrorError::ArtifactExpired => StatusCode::GONE,
            MirrorError::Fill(_) => StatusCode::BAD_GATEWAY,
            MirrorError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            MirrorError::Webhook(e) => e.status(),
        }
    }

    /// The answer's headers: JSON, and `Retry-After` where there is one.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        if let MirrorError::Overloaded(seconds) = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
        }
        headers
    }

    /// The GitHub-style JSON body.
    pub fn body(&self) -> bytes::Bytes {
        let documentation_url = match self {
            MirrorError::ArtifactExpired => DOWNLOAD_DOCUMENTATION_URL,
            _ => DOCUMENTATION_URL,
        };
        documented_error_body(&self.to_string(), documentation_url)
    }

    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(body::full(self.body()));
        *response.status_mut() = self.status();
        *response.headers_mut() = self.headers();
        response
    }
}

/// What a client is told of a failed fill. The mirror's own disk and index
/// failures (which name local paths) and the blob host's address stay in
/// the fill's log line.
fn fill_message(error: &FillError) -> String {
    match error {
        FillError::Io { .. } | FillError::Index(_) => {
            "the mirror could not store it on its disk".to_owned()
        }
        FillError::Unreachable(_) => "the blob store could not be reached".to_owned(),
        FillError::GaveUp { attempts, last } => {
            format!("gave up after {attempts} attempts: {}", fill_message(last))
        }
        other => other.to_string(),
    }
}

/// GitHub's error shape, fields in GitHub's order.
#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    documentation_url: &'a str,
}

/// The bytes of a GitHub-style JSON error body.
pub fn error_body(message: &str) -> bytes::Bytes {
    documented_error_body(message, DOCUMENTATION_URL)
}

fn documented_error_body(message: &str, documentation_url: &str) -> bytes::Bytes {
    serde_json::to_vec(&ErrorBody {
        message,
        documentation_url,
    })
    .unwrap_or_default()
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_are_github_shaped() {
        let r = MirrorError::UpstreamTimeout(std::time::Duration::from_secs(2)).into_response();
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["message"], "Upstream did not answer within 2s");
        assert_eq!(v["documentation_url"], DOCUMENTATION_URL);
    }

    /// Byte for byte what GitHub's download endpoint answers.
    #[tokio::test]
    async fn expired_is_githubs_own_410() {
        let r = MirrorError::ArtifactExpired.into_response();
        assert_eq!(r.status(), StatusCode::GONE);
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            bytes,
            r#"{"message":"Artifact has expired","documentation_url":"https://docs.github.com/rest/actions/artifacts#download-an-artifact"}"#
        );
    }

    #[test]
    fn overload_says_when_to_retry() {
        let r = MirrorError::Overloaded(1).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert!(r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
    }

    #[tokio::test]
    async fn fill_errors_name_no_local_path() {
        let tmp = "/var/lib/artifact-mirror/tmp/7-0011223344556677.part";
        let io = || FillError::Io {
            op: "create",
            path: tmp.into(),
            source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
        };
        let gave_up = FillError::GaveUp {
            attempts: 5,
            last: Box::new(io()),
        };
        for error in [io(), gave_up] {
            // The log line keeps the path.
            assert!(error.to_string().contains(tmp), "{error}");
            let r = MirrorError::Fill(std::sync::Arc::new(error)).into_response();
            assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
            let bytes = r.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["documentation_url"], DOCUMENTATION_URL);
            let message = v["message"].as_str().unwrap();
            assert!(
                message.starts_with("Artifact could not be fetched"),
                "{message}"
            );
            assert!(
                !message.contains("/var/lib"),
                "a local path reached the client: {message}"
            );
        }
    }

    #[test]
    fn route_errors_are_client_errors() {
        assert_eq!(
            MirrorError::from(RouteError::DotSegment).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            MirrorError::from(RouteError::NotFound).status(),
            StatusCode::NOT_FOUND
        );
    }
}
