//! The download route and the blob endpoint.
//!
//! `GET …/artifacts/{id}/zip` never hands out bytes itself: it decides
//! whether this credential may have the artifact — upstream's 302, or a grant
//! renewed by a free conditional metadata request — and answers 302 to the
//! mirror's own signed blob URL. `GET /_mirror/blobs/{id}?exp&sig` serves
//! the zip from the store, or from the fill under way, to whoever holds a
//! valid signature.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::header::{self, HeaderValue};
use http::{request, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::access::{Access, Standing};
use crate::blob_store::{self, Available, BlobStore, FillState, Relocate, Source};
use crate::body::{self, Body};
use crate::clock::now_ms;
use crate::config::Settings;
use crate::credential::InstanceSecret;
use crate::error::FillError;
use crate::error::MirrorError;
use crate::index::Facts;
use crate::index::Index;
use crate::json_cache::{JsonCache, Verdict};
use crate::outcome::{CacheOutcome, Eviction, X_CACHE};
use crate::rewrite::PublicBase;
use crate::router::RepoRef;
use crate::signing::Signer;
use crate::upstream::{ClientInfo, Upstream};

/// How long a blob request waits for a fill to learn the zip's size.
const SIZE_WAIT: Duration = Duration::from_secs(60);

pub struct Downloads {
    upstream: Upstream,
    json: Arc<JsonCache>,
    blobs: Arc<BlobStore>,
    /// Facts, for a cold fill.
    index: Index,
    access: Access,
    signer: Signer,
    public: PublicBase,
    api_base: String,
}

/// What renewing a grant said.
enum Renewal {
    /// How the JSON cache answered the renewal (a 304 and a young grant are
    /// free; a full 200 cost a unit), and whether upstream said yes just now
    /// (a 200 or 304), as opposed to a young grant or a fresh cached answer
    /// standing in for it.
    Allowed {
        outcome: CacheOutcome,
        confirmed: bool,
    },
    /// Upstream says no (404/410/401/403): the grant ends, its answer goes back.
    Denied(Response<Body>),
    /// Upstream failed: its answer goes back, the grant stays.
    Failed(Response<Body>),
}

impl Downloads {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: &Settings,
        upstream: Upstream,
        json: Arc<JsonCache>,
        blobs: Arc<BlobStore>,
        index: Index,
        secret: InstanceSecret,
        public: PublicBase,
    ) -> Downloads {
        Downloads {
            signer: Signer::new(secret, settings.blob_url_ttl.0),
            upstream,
            json,
            blobs,
            access: Access::new(&index, settings),
            index,
            public,
            api_base: settings.api_base_path().to_owned(),
        }
    }

    pub fn blobs(&self) -> &Arc<BlobStore> {
        &self.blobs
    }

    /// `GET …/actions/artifacts/{id}/zip`.
    pub async fn download(
        &self,
        repo: &RepoRef,
        artifact: u64,
        request: Request<Body>,
        client: ClientInfo,
    ) -> Result<Response<Body>, MirrorError> {
        let (parts, _) = request.into_parts();
        let public = self
            .public
            .resolve(&parts.headers, parts.uri.authority(), client.tls)?;
        let origin = public
            .strip_suffix(&self.api_base)
            .unwrap_or(&public)
            .to_owned();
        let credential = client.credential;
        let now = now_ms();

        let standing = self.access.standing(artifact, credential, now);
        if standing != Standing::Unknown {
            let renewal = if standing == Standing::Young {
                Renewal::Allowed {
                    outcome: CacheOutcome::Hit,
                    confirmed: false,
                }
            } else {
                self.renew(repo, artifact, &parts, &public, client).await?
            };
            match renewal {
                Renewal::Allowed {
                    outcome: renewed,
                    confirmed,
                } => {
                    self.refuse_if_expired(artifact).await?;
                    if confirmed {
                        self.access.allow(artifact, credential, now);
                    }
                    let status = match self
                        .blobs
                        .lookup_shared(artifact, self.facts(artifact))
                        .await
                    {
                        Some(Available::Stored(..)) => Some(CacheOutcome::Hit),
                        Some(Available::Filling(_)) => Some(CacheOutcome::Coalesced),
                        Some(Available::Failed(_)) | None => None,
                    };
                    if let Some(status) = status {
                        let mut response = self.redirect(&origin, artifact, status, None);
                        response.extensions_mut().insert(renewed);
                        return Ok(response);
                    }
                    // Allowed, but nothing stored to point at: a fresh
                    // Location is needed, from the download endpoint.
                }
                Renewal::Denied(response) => {
                    self.access.deny(artifact, credential);
                    return Ok(response);
                }
                Renewal::Failed(response) => return Ok(response),
            }
        }

        let authorization = parts.headers.get(header::AUTHORIZATION).cloned();
        let path = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
        let response = self
            .upstream
            .forward(Request::from_parts(parts, body::empty()), client)
            .await?;
        match response.status() {
            StatusCode::FOUND => {
                let location =
                    crate::upstream::blob_location(response.headers()).ok_or_else(|| {
                        MirrorError::UpstreamUnreachable(
                            "the download endpoint's redirect has no usable Location".into(),
                        )
                    })?;
                self.refuse_if_expired(artifact).await?;
                self.access.allow(artifact, credential, now);
                let status = match self
                    .blobs
                    .lookup_shared(artifact, self.facts(artifact))
                    .await
                {
                    Some(Available::Stored(..)) => CacheOutcome::Hit,
                    Some(Available::Filling(_)) => CacheOutcome::Coalesced,
                    Some(Available::Failed(_)) | None => {
                        let mut facts = self.facts(artifact);
                        facts.repo = Some(crate::json_cache::repo_id(repo));
                        let relocate = self.relocator(path, authorization, client);
                        let (_, joined) = self.blobs.fill(artifact, location, facts, relocate);
                        if joined {
                            CacheOutcome::Coalesced
                        } else {
                            CacheOutcome::Miss
                        }
                    }
                };
                let mut response = self.redirect(&origin, artifact, status, Some(response));
                response.extensions_mut().insert(CacheOutcome::Miss);
                Ok(response)
            }
            StatusCode::GONE => {
                self.blobs.remove(artifact, Eviction::Expired).await;
                Ok(response)
            }
            _ => Ok(response),
        }
    }

    /// Renews a grant with the JSON cache's typed revalidation of the
    /// artifact's metadata (free when it is a 304).
    async fn renew(
        &self,
        repo: &RepoRef,
        artifact: u64,
        download: &request::Parts,
        public: &str,
        client: ClientInfo,
    ) -> Result<Renewal, MirrorError> {
        let revalidation = self
            .json
            .revalidate(repo, artifact, download, public, client)
            .await?;
        let confirmed = revalidation.confirmed();
        Ok(match revalidation.verdict {
            Verdict::Allowed => Renewal::Allowed {
                outcome: revalidation.outcome,
                confirmed,
            },
            Verdict::Stale => {
                // `stale_if_error` may answer JSON from the credential's own
                // entry, but zip bytes need upstream's yes (or a young grant).
                let said = revalidation
                    .upstream
                    .map_or_else(|| "no answer".to_owned(), |s| s.to_string());
                return Err(MirrorError::UpstreamUnreachable(format!(
                    "access to artifact {artifact} could not be renewed: upstream gave {said}"
                )));
            }
            Verdict::Denied(response) => Renewal::Denied(response),
            Verdict::Failed(response) => Renewal::Failed(response),
        })
    }

    /// Upstream's yes (a 302, a renewal's 200 or 304, a young grant) does
    /// not cover an artifact that any JSON showed expired, `"expired": true`
    /// or an `expires_at` passed: its grants end, its zip goes, and the
    /// answer is the download endpoint's own 410.
    async fn refuse_if_expired(&self, artifact: u64) -> Result<(), MirrorError> {
        if !self.blobs.is_expired(artifact) {
            return Ok(());
        }
        self.blobs.expire(vec![artifact]).await;
        Err(MirrorError::ArtifactExpired)
    }

    fn facts(&self, artifact: u64) -> Facts {
        self.index
            .facts()
            .get(artifact)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// A fresh `Location` from the download endpoint, with the credential
    /// that started the fill (kept in this closure, in memory only).
    fn relocator(
        &self,
        path: String,
        authorization: Option<HeaderValue>,
        client: ClientInfo,
    ) -> Relocate {
        let upstream = self.upstream.clone();
        Box::new(move || {
            let upstream = upstream.clone();
            let path = path.clone();
            let authorization = authorization.clone();
            Box::pin(async move {
                let mut request = Request::get(path).body(body::empty()).ok()?;
                if let Some(auth) = authorization {
                    request.headers_mut().insert(header::AUTHORIZATION, auth);
                }
                let response = upstream.forward(request, client).await.ok()?;
                if response.status() != StatusCode::FOUND {
                    return None;
                }
                crate::upstream::blob_location(response.headers())
            })
        })
    }

    /// 302 to the signed blob URL, keeping upstream's other headers (rate
    /// limit, request id) when there was an upstream answer.
    fn redirect(
        &self,
        origin: &str,
        artifact: u64,
        status: CacheOutcome,
        upstream: Option<Response<Body>>,
    ) -> Response<Body> {
        let location = format!(
            "{origin}/_mirror/blobs/{artifact}?{}",
            self.signer.query(artifact, crate::clock::now())
        );
        let mut response = match upstream {
            Some(r) => r.map(|_| body::empty()),
            None => Response::new(body::empty()),
        };
        *response.status_mut() = StatusCode::FOUND;
        let headers = response.headers_mut();
        headers.remove(header::CONTENT_TYPE);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        if let Ok(v) = HeaderValue::from_str(&location) {
            headers.insert(header::LOCATION, v);
        }
        headers.insert(X_CACHE, status.x_cache());
        response
    }

    /// `GET|HEAD /_mirror/blobs/{id}?exp=…&sig=…`.
    pub async fn serve_blob(
        &self,
        artifact: u64,
        request: Request<Body>,
    ) -> Result<Response<Body>, MirrorError> {
        let (parts, _) = request.into_parts();
        self.signer
            .verify(artifact, parts.uri.query(), crate::clock::now())
            .map_err(MirrorError::Signature)?;
        // A URL handed out before the artifact expired gets the 410 the
        // download endpoint now gives, not a "never fetched" 404.
        self.refuse_if_expired(artifact).await?;
        let (total, name, etag, modified, source, cache) = match self
            .blobs
            .lookup_shared(artifact, self.facts(artifact))
            .await
        {
            Some(Available::Stored(record)) => {
                // Opened now, so an eviction from here on cannot cut the
                // answer short; a record whose file is gone is dropped.
                let file = match self.blobs.open_blob(&record).await {
                    Ok(file) => file,
                    Err(e) => {
                        tracing::warn!(artifact, error = %e, "blob file missing; record dropped");
                        self.blobs.remove(artifact, Eviction::Deleted).await;
                        return Err(MirrorError::BlobUnavailable);
                    }
                };
                self.blobs.touch(artifact);
                (
                    record.size,
                    record.name,
                    Some(record.sha256),
                    Some(record.stored_at),
                    Source::Stored(file),
                    CacheOutcome::Hit,
                )
            }
            Some(Available::Failed(e)) => return Err(MirrorError::Fill(e)),
            Some(Available::Filling(fill)) => {
                let mut state = fill.state();
                let known =
                    match tokio::time::timeout(SIZE_WAIT, state.wait_for(FillState::size_known))
                        .await
                    {
                        Ok(Ok(s)) => s.clone(),
                        _ => return Err(MirrorError::Fill(Arc::new(FillError::NoAnswer))),
                    };
                let running = !known.ended();
                let (mut total, name) = match known {
                    FillState::Failed(e) => return Err(MirrorError::Fill(e)),
                    FillState::Verified(record) => (record.size, Some(record.name)),
                    FillState::Unkept { size, name } => (size, name),
                    FillState::Running { total, name, .. } => (total.unwrap_or(0), name),
                };
                if total == 0 && running {
                    // An empty answer carries no last byte to hold back
                    // (see `blob_store::staging::pump_file`): once sent, "0 bytes" is
                    // complete. So it waits for the verdict; a size taken
                    // from JSON may yet prove wrong.
                    let verdict = state
                        .wait_for(FillState::ended)
                        .await
                        .map_err(|_| MirrorError::Fill(Arc::new(FillError::Stopped)))?
                        .clone();
                    match verdict {
                        FillState::Verified(record) => total = record.size,
                        FillState::Unkept { size, .. } => total = size,
                        FillState::Failed(e) => return Err(MirrorError::Fill(e)),
                        FillState::Running { .. } => {
                            return Err(MirrorError::Fill(Arc::new(FillError::Stopped)))
                        }
                    }
                }
                let name = name.unwrap_or_else(|| format!("artifact-{artifact}"));
                (
                    total,
                    name,
                    None,
                    None,
                    Source::Filling(fill),
                    CacheOutcome::Filling,
                )
            }
            None => return Err(MirrorError::BlobUnavailable),
        };

        let range = parts
            .headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map_or(ByteRange::Whole, |v| ByteRange::parse(v, total));
        let (status, start, end) = match range {
            ByteRange::Whole => (StatusCode::OK, 0, total),
            ByteRange::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
            ByteRange::Unsatisfiable => {
                let mut r = Response::new(body::empty());
                *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(r);
            }
        };
        let body = if parts.method == Method::HEAD {
            body::empty()
        } else {
            blob_store::read_range(source, start, end).boxed()
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        response.extensions_mut().insert(cache);
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/zip"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Some(v) = content_disposition(&name) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
        if let Some(sha) = etag {
            if let Ok(v) = HeaderValue::from_str(&format!("\"{sha}\"")) {
                h.insert(header::ETAG, v);
            }
        }
        if let Some(at) = modified {
            let t = UNIX_EPOCH + Duration::from_secs(at);
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(t)) {
                h.insert(header::LAST_MODIFIED, v);
            }
        }
        if status == StatusCode::PARTIAL_CONTENT {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{total}", end - 1)) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        Ok(response)
    }
}

/// What RFC 8187's `attr-char` leaves out: everything but letters, digits
/// and `!#$&+-.^_`|~` is percent-encoded in `filename*`.
const NOT_ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `attachment; filename="<name>.zip"`. A header value is ASCII, so a name
/// that is not gets `_` in place of each other character there, and is
/// sent whole as `filename*=UTF-8''…` (RFC 6266 §4.3), which clients that
/// know it prefer.
fn content_disposition(name: &str) -> Option<HeaderValue> {
    let plain: String = name
        .chars()
        .map(|c| match c {
            '"' | '\\' => '_',
            c if c.is_ascii() && !c.is_ascii_control() => c,
            _ => '_',
        })
        .collect();
    let mut value = format!("attachment; filename=\"{plain}.zip\"");
    if !name.is_ascii() {
        value.push_str("; filename*=UTF-8''");
        value.extend(utf8_percent_encode(name, NOT_ATTR_CHAR));
        value.push_str(".zip");
    }
    HeaderValue::from_str(&value).ok()
}

/// A single `Range: bytes=…` against a blob of `total` bytes. Several ranges
/// or a malformed header are ignored (RFC 9110 §14.2 allows that): the
/// whole blob is sent.
#[derive(Debug, PartialEq, Eq)]
enum ByteRange {
    Whole,
    /// Inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

impl ByteRange {
    fn parse(value: &str, total: u64) -> ByteRange {
        // Range units are case-insensitive (RFC 9110 §14.1).
        let value = value.trim();
        let Some(spec) = value
            .get(..6)
            .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
            .map(|_| &value[6..])
        else {
            return ByteRange::Whole;
        };
        if spec.contains(',') {
            return ByteRange::Whole;
        }
        let Some((a, b)) = spec.trim().split_once('-') else {
            return ByteRange::Whole;
        };
        let (a, b) = (a.trim(), b.trim());
        let parsed = match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(a), Ok(b)) if a <= b => Some((a, b.min(total.saturating_sub(1)))),
            (Ok(a), Err(_)) if b.is_empty() => Some((a, total.saturating_sub(1))),
            (Err(_), Ok(n)) if a.is_empty() => {
                if n == 0 {
                    return ByteRange::Unsatisfiable;
                }
                Some((total.saturating_sub(n), total.saturating_sub(1)))
            }
            _ => None,
        };
        match parsed {
            None => ByteRange::Whole,
            Some((a, _)) if a >= total => ByteRange::Unsatisfiable,
            Some((a, b)) => ByteRange::Part(a, b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::content_disposition;
    use super::ByteRange::{self, *};

    #[test]
    fn ranges() {
        let p = |v| ByteRange::parse(v, 1000);
        assert_eq!(p("bytes=0-99"), Part(0, 99));
        assert_eq!(p("BYTES=0-99"), Part(0, 99));
        assert_eq!(p(" Bytes=900-"), Part(900, 999));
        assert_eq!(p("bytes=900-"), Part(900, 999));
        assert_eq!(p("bytes=-100"), Part(900, 999));
        assert_eq!(p("bytes=-5000"), Part(0, 999));
        assert_eq!(p("bytes=990-2000"), Part(990, 999));
        assert_eq!(p("bytes=1000-"), Unsatisfiable);
        assert_eq!(p("bytes=-0"), Unsatisfiable);
        assert_eq!(p("bytes=5-1"), Whole);
        assert_eq!(p("bytes=0-1,5-6"), Whole);
        assert_eq!(p("items=0-1"), Whole);
        assert_eq!(p("byte"), Whole);
        // One side a number, the other neither a number nor empty.
        assert_eq!(p("bytes=5-x"), Whole);
        assert_eq!(p("bytes=x-5"), Whole);
    }

    #[test]
    fn a_name_that_is_not_ascii_goes_out_in_filename_star() {
        let v = |name| content_disposition(name).unwrap();
        assert_eq!(v("dist"), "attachment; filename=\"dist.zip\"");
        assert_eq!(v("a\"b\\c\td"), "attachment; filename=\"a_b_c_d.zip\"");
        assert_eq!(
            v("résumé 1"),
            "attachment; filename=\"r_sum_ 1.zip\"; filename*=UTF-8''r%C3%A9sum%C3%A9%201.zip"
        );
    }
}
