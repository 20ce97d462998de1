//! `POST /_mirror/webhooks/github`: GitHub's webhook deliveries, checked as
//! GitHub documents them, turned into runs to prefetch.
//!
//! Order of checks: size (413), signature (401, before anything in the body
//! is believed), JSON (400), event. A `workflow_run` `completed` is queued
//! and answered 202 at once: GitHub gives a hook 10 s before it calls the
//! delivery failed, and a run's zips take longer than that.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;

use super::queue::{Queue, RunJob};
use crate::body::{self, Body};
pub use crate::error::WebhookError;
use crate::metrics::prefetch::{Delivery, PrefetchMetrics};
use crate::router::{parse_full_name, RepoRef};

/// GitHub caps a delivery's payload at 25 MB.
pub const MAX_BODY: usize = 25 * 1024 * 1024;

/// Deliveries read at once. Bodies are read whole (the signature covers
/// all of it) before anyone is authenticated, so this bounds what unsigned
/// posts can make the mirror hold: 8 × 25 MB. GitHub sends a hook's
/// deliveries one by one; a ninth at once gets 503 and `Retry-After`.
const READING: usize = 8;

/// Time a delivery's whole body may take: a sender that stalls must not
/// hold one of the [`READING`] slots for longer.
const BODY_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Delivery ids remembered for the replay check. GitHub redelivers by hand
/// or on failure, within minutes: a few thousand ids cover that window.
const REMEMBERED: usize = 4096;

/// The fields of a delivery the mirror reads.
#[derive(Deserialize)]
struct Payload {
    action: Option<String>,
    workflow_run: Option<RunField>,
    repository: Option<RepoField>,
    installation: Option<InstallationField>,
}

#[derive(Deserialize)]
struct RunField {
    id: u64,
}

#[derive(Deserialize)]
struct RepoField {
    full_name: String,
}

#[derive(Deserialize)]
struct InstallationField {
    id: u64,
}

pub struct Receiver {
    secret: Vec<u8>,
    seen: Mutex<Seen>,
    reading: tokio::sync::Semaphore,
    queue: Arc<Queue>,
    metrics: Arc<PrefetchMetrics>,
}

/// The last [`REMEMBERED`] delivery ids.
#[derive(Default)]
struct Seen {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl Seen {
    /// Remembers `id`; whether it was new.
    fn insert(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() >= REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.order.push_back(id.to_owned());
        self.ids.insert(id.to_owned());
        true
    }
}

impl Receiver {
    pub fn new(secret: Vec<u8>, queue: Arc<Queue>, metrics: Arc<PrefetchMetrics>) -> Receiver {
        Receiver {
            secret,
            seen: Mutex::new(Seen::default()),
            reading: tokio::sync::Semaphore::new(READING),
            queue,
            metrics,
        }
    }

    pub async fn receive(&self, request: Request<Body>) -> Result<Response<Body>, WebhookError> {
        let Ok(_reading) = self.reading.try_acquire() else {
            return Err(WebhookError::Busy);
        };
        let outcome = self.check(request).await;
        let counted = match &outcome {
            Ok((delivery, _)) => *delivery,
            Err(WebhookError::BadSignature) => Delivery::BadSignature,
            Err(_) => Delivery::Invalid,
        };
        self.metrics.delivery(counted, 1);
        let (delivery, status) = outcome?;
        let message = match delivery {
            Delivery::Accepted => "Accepted: the run's artifacts will be prefetched",
            Delivery::Duplicate => "Already received: not done again",
            _ => "Ignored: only completed workflow runs are prefetched",
        };
        Ok(answer(status, message))
    }

    async fn check(&self, request: Request<Body>) -> Result<(Delivery, StatusCode), WebhookError> {
        let (parts, body) = request.into_parts();
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(WebhookError::TooLarge {
                max_mb: MAX_BODY / (1024 * 1024),
            });
        }
        let body = tokio::time::timeout(BODY_TIME, read_body(body))
            .await
            .map_err(|_| WebhookError::Slow {
                seconds: BODY_TIME.as_secs(),
            })??;
        verify(&self.secret, &parts.headers, &body)?;
        let payload: Payload = serde_json::from_slice(&body)
            .map_err(|e| WebhookError::Malformed(format!("not JSON of a GitHub event: {e}")))?;
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        match header("x-github-event") {
            "ping" => Ok((Delivery::Ignored, StatusCode::OK)),
            "workflow_run" if payload.action.as_deref() == Some("completed") => {
                let job = run_job(&payload)?;
                let delivery = header("x-github-delivery");
                let new = delivery.is_empty()
                    || self
                        .seen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(delivery);
                if !new {
                    return Ok((Delivery::Duplicate, StatusCode::ACCEPTED));
                }
                tracing::info!(
                    run = job.run_id,
                    delivery,
                    "webhook: completed run queued for prefetch"
                );
                self.queue.push(job);
                Ok((Delivery::Accepted, StatusCode::ACCEPTED))
            }
            _ => Ok((Delivery::Ignored, StatusCode::ACCEPTED)),
        }
    }
}

/// `X-Hub-Signature-256: sha256=<hex>` against HMAC-SHA256 of the raw body,
/// compared in constant time (`Mac::verify_slice`).
fn verify(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), WebhookError> {
    let given = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("sha256="))
        .and_then(|h| hex::decode(h).ok())
        .ok_or(WebhookError::BadSignature)?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret)
        .map_err(|_| WebhookError::BadSignature)?;
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| WebhookError::BadSignature)
}

/// The run a `workflow_run` payload names, checked like a path would be.
fn run_job(payload: &Payload) -> Result<RunJob, WebhookError> {
    let run_id = payload
        .workflow_run
        .as_ref()
        .map(|r| r.id)
        .ok_or_else(|| WebhookError::Malformed("`workflow_run.id` is missing".into()))?;
    let full_name = payload
        .repository
        .as_ref()
        .map(|r| r.full_name.as_str())
        .ok_or_else(|| WebhookError::Malformed("`repository.full_name` is missing".into()))?;
    let RepoRef::Named { owner, name } =
        parse_full_name(full_name).map_err(|e| WebhookError::Malformed(e.to_string()))?
    else {
        return Err(WebhookError::Malformed(
            "`repository.full_name` is not owner/name".into(),
        ));
    };
    Ok(RunJob {
        owner,
        name,
        run_id,
        installation: payload.installation.as_ref().map(|i| i.id),
    })
}

/// The whole body, refused past [`MAX_BODY`] (as soon as it passes it).
async fn read_body(mut body: Body) -> Result<Bytes, WebhookError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| WebhookError::Malformed(format!("the body could not be read: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                return Err(WebhookError::TooLarge {
                    max_mb: MAX_BODY / (1024 * 1024),
                });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

fn answer(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::to_vec(&serde_json::json!({ "message": message })).unwrap_or_default();
    let mut response = Response::new(body::full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-hub-signature-256", sig.parse().unwrap());
        h
    }

    /// GitHub's documented example pair.
    #[test]
    fn signature_matches_githubs_example() {
        let secret = b"It's a Secret to Everybody";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify(secret, &headers(good), b"Hello, World!").is_ok());
        assert!(verify(secret, &headers(good), b"Hello, World?").is_err());
        assert!(verify(b"other", &headers(good), b"Hello, World!").is_err());
        assert!(verify(secret, &headers("sha1=abc"), b"Hello, World!").is_err());
        assert!(verify(secret, &headers("sha256=zz"), b"Hello, World!").is_err());
        assert!(verify(secret, &HeaderMap::new(), b"Hello, World!").is_err());
    }

    #[test]
    fn seen_ids_are_bounded() {
        let mut seen = Seen::default();
        assert!(seen.insert("a"));
        assert!(!seen.insert("a"));
        for i in 0..REMEMBERED {
            seen.insert(&i.to_string());
        }
        assert_eq!(seen.ids.len(), REMEMBERED);
        assert!(seen.insert("a"), "the oldest id was forgotten");
    }

    #[test]
    fn a_completed_payload_names_its_run() {
        let p: Payload = serde_json::from_str(
            r#"{"action":"completed","workflow_run":{"id":9},"repository":{"full_name":"o/r"},"installation":{"id":3}}"#,
        )
        .unwrap();
        let job = run_job(&p).unwrap();
        assert_eq!(
            (
                job.owner.as_str(),
                job.name.as_str(),
                job.run_id,
                job.installation
            ),
            ("o", "r", 9, Some(3))
        );
        let bad: Payload = serde_json::from_str(
            r#"{"action":"completed","workflow_run":{"id":9},"repository":{"full_name":"../x"}}"#,
        )
        .unwrap();
        assert!(run_job(&bad).is_err());
    }
}
