//! The API host: `/api/v3/...` routes, auth, rate limits, ETags and headers.
//!
//! Order of work per request, mirroring what a client can observe on GHES:
//! record → count → read body → latency knob → failure knob → credentials
//! (401) → rate limit (403) → route → conditional (304) → spend rate limit.

use crate::fixtures::USERS;
use crate::routes::{link_header, paging, RepoKey, Route};
use crate::server::{empty, full, record, CountingBody, RespBody};
use crate::state::{Identity, RateInfo, State};
use crate::store::{Artifact, Repo};
use crate::util::{lock, now_millis, query_param, sha256_hex};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Serialize;
use std::sync::Arc;

const DOCS: &str = "https://docs.github.com/rest";
const DOCS_ARTIFACTS: &str = "https://docs.github.com/rest/actions/artifacts";
/// GitHub's 410 for an expired (or deleted) artifact points here.
const DOCS_DOWNLOAD: &str = "https://docs.github.com/rest/actions/artifacts#download-an-artifact";
const JSON: &str = "application/json; charset=utf-8";

enum Payload {
    /// Serialized JSON: gets `Content-Type`, `Content-Length` and, on 200, an `ETag`.
    Json(Bytes),
    Empty,
    /// A streamed body with its content type (the markdown echo).
    Stream(RespBody, &'static str),
}

/// A handler's answer before the common headers are added.
struct Answer {
    status: StatusCode,
    payload: Payload,
    headers: Vec<(HeaderName, String)>,
}

impl Answer {
    fn json<T: Serialize>(status: StatusCode, value: &T) -> Answer {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Answer {
            status,
            payload: Payload::Json(body.into()),
            headers: Vec::new(),
        }
    }

    fn error(status: StatusCode, message: &str, documentation_url: &str) -> Answer {
        #[derive(Serialize)]
        struct Error<'a> {
            message: &'a str,
            documentation_url: &'a str,
        }
        Answer::json(
            status,
            &Error {
                message,
                documentation_url,
            },
        )
    }

    fn not_found() -> Answer {
        Answer::error(StatusCode::NOT_FOUND, "Not Found", DOCS)
    }

    fn with_header(mut self, name: HeaderName, value: String) -> Answer {
        self.headers.push((name, value));
        self
    }
}

pub(crate) async fn handle(st: Arc<State>, req: Request<Incoming>) -> Response<RespBody> {
    let (parts, body) = req.into_parts();
    let index = record(&st.api_log, &parts);
    let route = Route::parse(&parts.method, parts.uri.path());
    st.bump(|c| {
        use crate::routes::Kind;
        c.api_requests += 1;
        match route.kind() {
            Kind::ListRepo => c.list_repo += 1,
            Kind::ListRun => c.list_run += 1,
            Kind::ListRuns => c.list_runs += 1,
            Kind::AppToken => c.app_token_requests += 1,
            Kind::Get => c.get += 1,
            Kind::Delete => c.delete += 1,
            Kind::Download => c.download += 1,
            Kind::Other => c.other += 1,
        }
    });
    let body = CountingBody::new(body, st.api_log.clone(), index);
    // Only the markdown echo streams its body back; every other route reads
    // it fully first so `RecordedRequest::body_len` is final when it answers.
    let echo = if route == Route::MarkdownRaw {
        Some(body)
    } else {
        body.drain().await;
        None
    };

    let latency = st.knobs.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    if let Route::AppToken(installation) = route {
        // A JWT, not a user's token: checked here, before `identify`.
        let who = Identity::Anonymous;
        let rate = lock(&st.rate).peek(who, who.limit(&st.cfg));
        let auth = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        return finish(&st, who, app_token(&st, auth, installation), rate, None);
    }

    let ident = identify(&parts.headers);
    if let Some(status) = st.knobs.take_failure() {
        let who = ident.unwrap_or(Identity::Anonymous);
        let rate = lock(&st.rate).peek(who, who.limit(&st.cfg));
        return finish(&st, who, injected_failure(status), rate, None);
    }
    let Ok(who) = ident else {
        let who = Identity::Anonymous;
        let rate = lock(&st.rate).peek(who, who.limit(&st.cfg));
        let ans = Answer::error(StatusCode::UNAUTHORIZED, "Bad credentials", DOCS);
        return finish(&st, who, ans, rate, None);
    };
    let limit = who.limit(&st.cfg);
    let rate = lock(&st.rate).peek(who, limit);
    if rate.remaining == 0 {
        return finish(&st, who, rate_limited(who), rate, None);
    }

    let answer = dispatch(&st, who, &route, parts.uri.query(), echo);

    let etag = match &answer.payload {
        Payload::Json(b) if answer.status == StatusCode::OK => Some(etag_for(who, b)),
        _ => None,
    };
    if let Some(tag) = &etag {
        if if_none_match(&parts.headers, tag) {
            st.bump(|c| c.not_modified += 1);
            let rate = lock(&st.rate).peek(who, limit);
            let not_modified = Answer {
                status: StatusCode::NOT_MODIFIED,
                payload: Payload::Empty,
                headers: answer.headers,
            };
            return finish(&st, who, not_modified, rate, etag);
        }
    }
    let rate = lock(&st.rate).consume(who, limit);
    finish(&st, who, answer, rate, etag)
}

/// `Authorization: token X` or `Bearer X` → a fixture user; no header →
/// anonymous; anything else (unknown token, other scheme) → `Err` (401).
fn identify(headers: &HeaderMap) -> Result<Identity, ()> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Identity::Anonymous);
    };
    let value = value.to_str().map_err(|_| ())?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(())?;
    if !scheme.eq_ignore_ascii_case("token") && !scheme.eq_ignore_ascii_case("bearer") {
        return Err(());
    }
    let token = token.trim();
    USERS
        .iter()
        .find(|u| u.token == token)
        .map(Identity::User)
        .ok_or(())
}

/// The `fail_next` answer. Statuses outside 200..=599 become 500: a 1xx
/// cannot be a final answer.
fn injected_failure(status: u16) -> Answer {
    let status = StatusCode::from_u16(status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = if status.is_server_error() {
        "Server Error"
    } else {
        status.canonical_reason().unwrap_or("Error")
    };
    Answer::error(status, message, DOCS)
}

fn rate_limited(who: Identity) -> Answer {
    let message = match who {
        Identity::Anonymous => "API rate limit exceeded for 127.0.0.1. (But here's the good news: \
                                Authenticated requests get a higher rate limit. Check out the \
                                documentation for more details.)"
            .to_string(),
        Identity::User(u) => format!("API rate limit exceeded for user ID {}.", u.user_id),
    };
    Answer::error(
        StatusCode::FORBIDDEN,
        &message,
        "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
    )
}

fn dispatch(
    st: &State,
    who: Identity,
    route: &Route,
    query: Option<&str>,
    echo: Option<CountingBody>,
) -> Answer {
    match route {
        Route::Meta => Answer::json(
            StatusCode::OK,
            &serde_json::json!({
                "verifiable_password_authentication": false,
                "installed_version": "3.19.0",
            }),
        ),
        Route::MarkdownRaw => match echo {
            Some(body) => Answer {
                status: StatusCode::OK,
                payload: Payload::Stream(
                    body.map_err(Into::into).boxed(),
                    "text/html;charset=utf-8",
                ),
                headers: Vec::new(),
            },
            None => Answer::not_found(),
        },
        Route::Repo(key) => match visible_repo(st, who, key) {
            Ok(repo) => repo_json(st, &repo),
            Err(a) => a,
        },
        Route::ListRepo(key) => match visible_repo(st, who, key) {
            Ok(repo) => list(st, &repo, None, query),
            Err(a) => a,
        },
        Route::ListRuns(key) => match visible_repo(st, who, key) {
            Ok(repo) => list_runs(st, &repo),
            Err(a) => a,
        },
        Route::AppToken(_) => Answer::not_found(),
        Route::ListRun(key, run) => match visible_repo(st, who, key) {
            Ok(repo) => list(st, &repo, Some(*run), query),
            Err(a) => a,
        },
        Route::Get(key, id) => match visible_repo(st, who, key) {
            Ok(repo) => match artifact_in(st, &repo, *id) {
                Some(a) => Answer::json(StatusCode::OK, &ArtifactJson::new(&st.api_base, &a)),
                None => Answer::not_found(),
            },
            Err(a) => a,
        },
        Route::Delete(key, id) => match visible_repo(st, who, key) {
            Ok(repo) => delete(st, who, &repo, *id),
            Err(a) => a,
        },
        Route::Download(key, id, format) => match visible_repo(st, who, key) {
            Ok(repo) => download(st, who, &repo, *id, format),
            Err(a) => a,
        },
        Route::NotFound => Answer::not_found(),
    }
}

/// The repository if it exists and `who` may read it; otherwise the 404
/// GitHub gives for both (it never reveals that a private repo exists).
fn visible_repo(st: &State, who: Identity, key: &RepoKey) -> Result<Repo, Answer> {
    let store = lock(&st.store);
    let repo = match key {
        RepoKey::Name(owner, name) => store.repo_by_name(owner, name),
        RepoKey::Id(id) => store.repo_by_id(*id),
    };
    let readable = |r: &Repo| match who {
        Identity::Anonymous => !r.private,
        Identity::User(u) => u.can_read(r) && !(r.private && st.knobs.is_revoked(u.token)),
    };
    repo.filter(readable).ok_or_else(Answer::not_found)
}

fn artifact_in(st: &State, repo: &Repo, id: u64) -> Option<Artifact> {
    lock(&st.store)
        .get(id)
        .filter(|s| s.artifact.repository_id == repo.id)
        .map(|s| s.artifact.clone())
}

fn repo_json(st: &State, repo: &Repo) -> Answer {
    let full = repo.full_name();
    let host = st.api_base.trim_end_matches("/api/v3");
    Answer::json(
        StatusCode::OK,
        &serde_json::json!({
            "id": repo.id,
            "node_id": crate::util::base64(format!("010:Repository{}", repo.id).as_bytes()),
            "name": repo.name,
            "full_name": full,
            "private": repo.private,
            "visibility": if repo.private { "private" } else { "public" },
            "owner": { "login": repo.owner, "type": "Organization" },
            "html_url": format!("{host}/{full}"),
            "url": format!("{}/repos/{full}", st.api_base),
            "default_branch": "main",
        }),
    )
}

fn list(st: &State, repo: &Repo, run: Option<u64>, query: Option<&str>) -> Answer {
    let per_page = query_param(query, "per_page");
    let page = query_param(query, "page");
    let (per_page, page) = paging(per_page.as_deref(), page.as_deref());
    let mut items = lock(&st.store).list(repo.id, run);
    // Both lists filter by exact name (`artifact-name` in GHES 3.19's
    // description of each operation; @actions/artifact relies on it).
    if let Some(name) = query_param(query, "name") {
        items.retain(|a| a.name == name);
    }
    let ascending = run.is_some() && query_param(query, "direction").as_deref() == Some("asc");
    if !ascending {
        items.reverse();
    }
    let total = items.len() as u64;
    let skip = (page - 1).saturating_mul(per_page);
    let artifacts: Vec<ArtifactJson> = items
        .iter()
        .skip(usize::try_from(skip).unwrap_or(usize::MAX))
        .take(per_page as usize)
        .map(|a| ArtifactJson::new(&st.api_base, a))
        .collect();

    #[derive(Serialize)]
    struct List<'a> {
        total_count: u64,
        artifacts: Vec<ArtifactJson<'a>>,
    }
    let answer = Answer::json(
        StatusCode::OK,
        &List {
            total_count: total,
            artifacts,
        },
    );
    let base = match run {
        None => format!("{}/repositories/{}/actions/artifacts", st.api_base, repo.id),
        Some(r) => format!(
            "{}/repositories/{}/actions/runs/{r}/artifacts",
            st.api_base, repo.id
        ),
    };
    match link_header(&base, query, page, per_page, total) {
        Some(link) => answer.with_header(header::LINK, link),
        None => answer,
    }
}

/// The completed runs of a repository, newest first, with GitHub's
/// `X-Poll-Interval`. The body holds nothing time-dependent, so its ETag
/// changes only when a run completes.
fn list_runs(st: &State, repo: &Repo) -> Answer {
    let runs = lock(&st.store).runs(repo.id);
    let body = serde_json::json!({
        "total_count": runs.len(),
        "workflow_runs": runs.iter().map(|r| r.json(&st.api_base)).collect::<Vec<_>>(),
    });
    Answer::json(StatusCode::OK, &body).with_header(
        HeaderName::from_static("x-poll-interval"),
        st.knobs.poll_interval().to_string(),
    )
}

/// `POST /app/installations/{id}/access_tokens`: 201 with a token valid an
/// hour for the configured App's JWT and installation; 401 for a bad JWT,
/// 404 for another installation (or no App).
fn app_token(st: &State, authorization: Option<&str>, installation: u64) -> Answer {
    let Some(app) = *lock(&st.app) else {
        return Answer::not_found();
    };
    if let Err(message) = crate::runs::check_app_jwt(app, authorization) {
        return Answer::error(StatusCode::UNAUTHORIZED, message, DOCS);
    }
    if installation != app.installation_id {
        return Answer::not_found();
    }
    st.bump(|c| c.app_tokens_minted += 1);
    Answer::json(
        StatusCode::CREATED,
        &serde_json::json!({
            "token": crate::fixtures::APP_INSTALLATION_TOKEN,
            "expires_at": crate::util::rfc3339(crate::util::now_unix() + app.token_lifetime),
            "permissions": { "actions": "read", "metadata": "read" },
            "repository_selection": "all",
        }),
    )
}

fn delete(st: &State, who: Identity, repo: &Repo, id: u64) -> Answer {
    match who {
        Identity::Anonymous => {
            return Answer::error(StatusCode::UNAUTHORIZED, "Requires authentication", DOCS)
        }
        Identity::User(u) if !u.can_write => {
            return Answer::error(
                StatusCode::FORBIDDEN,
                "You must have push access to this repository.",
                DOCS_ARTIFACTS,
            )
        }
        Identity::User(_) => {}
    }
    if artifact_in(st, repo, id).is_none() {
        return Answer::not_found();
    }
    lock(&st.store).delete(id);
    Answer {
        status: StatusCode::NO_CONTENT,
        payload: Payload::Empty,
        headers: Vec::new(),
    }
}

fn download(st: &State, who: Identity, repo: &Repo, id: u64, format: &str) -> Answer {
    if matches!(who, Identity::Anonymous) {
        return Answer::error(
            StatusCode::FORBIDDEN,
            "You must have the actions scope to download artifacts.",
            DOCS_ARTIFACTS,
        );
    }
    if format != "zip" {
        return Answer::not_found();
    }
    let Some(artifact) = artifact_in(st, repo, id) else {
        return if lock(&st.store).was_deleted(id) {
            Answer::error(StatusCode::GONE, "Artifact has expired", DOCS_DOWNLOAD)
        } else {
            Answer::not_found()
        };
    };
    if artifact.expired {
        return Answer::error(StatusCode::GONE, "Artifact has expired", DOCS_DOWNLOAD);
    }
    let path = format!("/blobs/{}/{}.zip", artifact.id, artifact.sha256);
    let se = expiry(st).to_string();
    let sig = st.sign(&path, &se);
    let location = format!(
        "{}://{}{path}?se={se}&sig={sig}",
        st.scheme, st.blob_authority
    );
    Answer {
        status: StatusCode::FOUND,
        payload: Payload::Empty,
        headers: vec![(header::LOCATION, location)],
    }
}

/// Unix seconds at which a blob URL made now stops working: rounded up, so a
/// URL lives at least `link_ttl`. A zero TTL makes URLs that are already
/// expired (handy for testing a client's refresh path).
fn expiry(st: &State) -> u64 {
    let now_ms = now_millis();
    let ttl_ms = st.cfg.link_ttl.as_millis();
    if ttl_ms == 0 {
        return u64::try_from(now_ms / 1000)
            .unwrap_or(u64::MAX)
            .saturating_sub(1);
    }
    u64::try_from((now_ms + ttl_ms).div_ceil(1000)).unwrap_or(u64::MAX)
}

/// The artifact object exactly as GitHub renders it (field order included).
#[derive(Serialize)]
struct ArtifactJson<'a> {
    id: u64,
    node_id: &'a str,
    name: &'a str,
    size_in_bytes: u64,
    url: String,
    archive_download_url: String,
    expired: bool,
    created_at: &'a str,
    expires_at: &'a str,
    updated_at: &'a str,
    /// GHES omits the key entirely; only `with_digest` artifacts carry it.
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<&'a str>,
    workflow_run: WorkflowRun<'a>,
}

#[derive(Serialize)]
struct WorkflowRun<'a> {
    id: u64,
    repository_id: u64,
    head_repository_id: u64,
    head_branch: &'a str,
    head_sha: &'a str,
}

impl<'a> ArtifactJson<'a> {
    fn new(api_base: &str, a: &'a Artifact) -> Self {
        let url = format!("{api_base}/repos/{}/actions/artifacts/{}", a.repo, a.id);
        ArtifactJson {
            id: a.id,
            node_id: &a.node_id,
            name: &a.name,
            size_in_bytes: a.size_in_bytes,
            archive_download_url: format!("{url}/zip"),
            url,
            expired: a.expired,
            created_at: &a.created_at,
            expires_at: &a.expires_at,
            updated_at: &a.updated_at,
            digest: a.digest.as_deref(),
            workflow_run: WorkflowRun {
                id: a.run_id,
                repository_id: a.repository_id,
                head_repository_id: a.repository_id,
                head_branch: &a.head_branch,
                head_sha: &a.head_sha,
            },
        }
    }
}

/// `W/"<sha256 of token and body>"`: the same body gets a different ETag per
/// token, as on GitHub, so a client cannot revalidate with another's ETag.
pub(crate) fn etag_for(who: Identity, body: &[u8]) -> String {
    format!(
        "W/\"{}\"",
        sha256_hex(&[who.token().as_bytes(), b"\0", body])
    )
}

/// Weak comparison of `If-None-Match` (all header lines, comma lists, `*`)
/// against our ETag.
pub(crate) fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    let ours = etag.trim_start_matches("W/");
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == ours)
}

/// Adds the headers every GHES answer carries and builds the response.
fn finish(
    st: &State,
    who: Identity,
    answer: Answer,
    rate: RateInfo,
    etag: Option<String>,
) -> Response<RespBody> {
    let status = answer.status;
    let mut h = HeaderMap::new();
    let mut put = |name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.append(name, v);
        }
    };
    put(header::SERVER, "GitHub.com");
    let (body, content_type) = match answer.payload {
        Payload::Json(bytes) => {
            put(header::CONTENT_LENGTH, &bytes.len().to_string());
            (full(bytes), Some(JSON))
        }
        // A 304 stands for a JSON answer; it keeps the content type, no length.
        Payload::Empty if status == StatusCode::NOT_MODIFIED => (empty(), Some(JSON)),
        Payload::Empty => (empty(), None),
        Payload::Stream(body, ct) => (body, Some(ct)),
    };
    if let Some(ct) = content_type {
        put(header::CONTENT_TYPE, ct);
    }
    // Cache-Control only on answers a cache may keep (GitHub's errors carry none).
    if status.is_success() || status == StatusCode::NOT_MODIFIED {
        let scope = match who {
            Identity::Anonymous => "public",
            Identity::User(_) => "private",
        };
        put(
            header::CACHE_CONTROL,
            &format!("{scope}, max-age=60, s-maxage=60"),
        );
    }
    put(header::VARY, "Accept, Authorization, Cookie, X-GitHub-OTP");
    put(header::VARY, "Accept-Encoding, Accept, X-Requested-With");
    if let Some(tag) = &etag {
        put(header::ETAG, tag);
    }
    for (name, value) in &answer.headers {
        put(name.clone(), value);
    }
    put(
        HeaderName::from_static("x-github-media-type"),
        "github.v3; format=json",
    );
    put(
        HeaderName::from_static("x-github-api-version-selected"),
        "2022-11-28",
    );
    put(
        HeaderName::from_static("x-github-enterprise-version"),
        "3.19.0",
    );
    put(
        HeaderName::from_static("x-ratelimit-limit"),
        &rate.limit.to_string(),
    );
    put(
        HeaderName::from_static("x-ratelimit-remaining"),
        &rate.remaining.to_string(),
    );
    put(
        HeaderName::from_static("x-ratelimit-reset"),
        &rate.reset.to_string(),
    );
    put(
        HeaderName::from_static("x-ratelimit-used"),
        &rate.used.to_string(),
    );
    put(HeaderName::from_static("x-ratelimit-resource"), "core");
    put(HeaderName::from_static("x-content-type-options"), "nosniff");
    put(
        HeaderName::from_static("x-github-request-id"),
        &st.request_id(),
    );

    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = h;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::USERS;

    #[test]
    fn etag_differs_per_token_and_body() {
        let body = br#"{"total_count":0,"artifacts":[]}"#;
        let admin = etag_for(Identity::User(&USERS[0]), body);
        let reader = etag_for(Identity::User(&USERS[1]), body);
        let anon = etag_for(Identity::Anonymous, body);
        assert_ne!(admin, reader);
        assert_ne!(admin, anon);
        assert_eq!(admin, etag_for(Identity::User(&USERS[0]), body));
        assert_ne!(admin, etag_for(Identity::User(&USERS[0]), b"{}"));
        assert!(admin.starts_with("W/\"") && admin.ends_with('"'));
        assert_eq!(admin.len(), 2 + 1 + 64 + 1);
    }

    #[test]
    fn if_none_match_is_weak_and_handles_lists() {
        let tag = "W/\"abc\"";
        let check = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            }
            if_none_match(&h, tag)
        };
        assert!(check(&["\"abc\""]));
        assert!(check(&["W/\"abc\""]));
        assert!(check(&["\"x\", W/\"abc\""]));
        assert!(check(&["\"x\"", "\"abc\""]));
        assert!(check(&["*"]));
        assert!(!check(&["\"abcd\""]));
        assert!(!check(&[]));
    }
}
