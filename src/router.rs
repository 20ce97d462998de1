//! Request path → [`Route`].
//!
//! Everything the mirror will later cache or serve from disk is keyed by
//! what this module extracts, so it is strict: inside the artifacts path
//! space a path either parses into typed, validated fields or is refused
//! here, before any upstream call. Outside that space it only refuses what
//! would let a path mean something else upstream (dot segments, encoded
//! separators) and forwards the rest untouched.

use http::Method;

/// What a request is, by its method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz`: the process is alive.
    Alive,
    /// `GET /readyz`: the data dir and index are usable.
    Ready,
    /// `GET /metrics`: Prometheus exposition.
    Metrics,
    /// `GET|HEAD /_mirror/blobs/{id}`: a stored zip, by signed URL.
    Blob { artifact_id: u64 },
    /// `GET /_mirror/status`: the operator's HTML page.
    Status,
    /// `POST /_mirror/webhooks/github`: GitHub's webhook deliveries (prefetch).
    Webhook,
    /// One of the five Actions artifacts operations.
    Artifact(ArtifactRoute),
    /// Any other request under the API base path: forwarded as is.
    Forward,
}

impl Route {
    /// Stable name for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Alive => "healthz",
            Route::Ready => "readyz",
            Route::Metrics => "metrics",
            Route::Blob { .. } => "blob",
            Route::Status => "status",
            Route::Webhook => "webhook",
            Route::Artifact(a) => a.name(),
            Route::Forward => "forward",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactRoute {
    ListForRepo { repo: RepoRef },
    ListForRun { repo: RepoRef, run_id: u64 },
    Get { repo: RepoRef, artifact_id: u64 },
    Delete { repo: RepoRef, artifact_id: u64 },
    Download { repo: RepoRef, artifact_id: u64 },
}

impl ArtifactRoute {
    pub fn name(&self) -> &'static str {
        match self {
            ArtifactRoute::ListForRepo { .. } => "list_repo_artifacts",
            ArtifactRoute::ListForRun { .. } => "list_run_artifacts",
            ArtifactRoute::Get { .. } => "get_artifact",
            ArtifactRoute::Delete { .. } => "delete_artifact",
            ArtifactRoute::Download { .. } => "download_artifact",
        }
    }
}

/// A repository as the path names it: GitHub serves the same resources under
/// `/repos/{owner}/{repo}` and `/repositories/{id}` (its `Link` headers use
/// the latter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoRef {
    Named { owner: String, name: String },
    Id(u64),
}

/// Why a path was refused; each maps to a 4xx answer in [`crate::error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("Path must not contain `.` or `..` segments")]
    DotSegment,
    #[error("Path must not contain empty segments (`//` or a trailing `/`)")]
    EmptySegment,
    #[error("Path must not contain encoded `/`, `\\` or control characters")]
    EncodedSeparator,
    #[error("Invalid owner name {0:?}: letters, digits, `-` and `_` only, 1 to 100 characters")]
    BadOwner(String),
    #[error(
        "Invalid repository name {0:?}: letters, digits, `-`, `_` and `.` only, 1 to 100 characters"
    )]
    BadRepo(String),
    #[error("Invalid {what} {value:?}: must be a positive integer that fits in 64 bits")]
    BadId { what: &'static str, value: String },
    #[error("Unsupported archive format {0:?}: artifacts are only available as `zip`")]
    ArchiveFormat(String),
    #[error("Not Found")]
    NotFound,
    #[error("Method not allowed")]
    MethodNotAllowed,
}

/// Longest offending value echoed back in an error message.
const ECHO_MAX: usize = 100;

/// Classifies a request. `api_base` is the API path prefix without a
/// trailing `/` (`/api/v3`, or empty when the API is mounted at the root).
pub fn route(method: &Method, path: &str, api_base: &str) -> Result<Route, RouteError> {
    match path {
        "/healthz" | "/readyz" | "/metrics" | "/_mirror/status"
            if !matches!(*method, Method::GET | Method::HEAD) =>
        {
            return Err(RouteError::MethodNotAllowed)
        }
        "/healthz" => return Ok(Route::Alive),
        "/readyz" => return Ok(Route::Ready),
        "/metrics" => return Ok(Route::Metrics),
        "/_mirror/status" => return Ok(Route::Status),
        _ => {}
    }
    if path == "/_mirror/webhooks/github" {
        return match *method {
            Method::POST => Ok(Route::Webhook),
            _ => Err(RouteError::MethodNotAllowed),
        };
    }
    if let Some(id) = path.strip_prefix("/_mirror/blobs/") {
        if !matches!(*method, Method::GET | Method::HEAD) {
            return Err(RouteError::MethodNotAllowed);
        }
        return Ok(Route::Blob {
            artifact_id: parse_id("artifact id", id)?,
        });
    }
    let rest = match path.strip_prefix(api_base) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => return Err(RouteError::NotFound),
    };
    // The API root itself (`/api/v3/`) is the one trailing `/` upstream
    // gets; anywhere else an empty segment would reach the generic forward
    // route as a path the artifacts routes never see.
    if rest == "/" {
        return Ok(Route::Forward);
    }
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    for segment in &segments {
        check_segment(segment)?;
    }
    match artifact_route(method, &segments)? {
        Some(route) => Ok(Route::Artifact(route)),
        None => Ok(Route::Forward),
    }
}

/// Refuses segments that upstream (or a proxy in between) could decode into
/// a different path than the one the mirror routed.
fn check_segment(segment: &str) -> Result<(), RouteError> {
    // Without `%` or `\\` nothing can decode into something else: the common
    // case, checked without allocating.
    if !segment.bytes().any(|b| b == b'%' || b == b'\\') {
        return match segment {
            "" => Err(RouteError::EmptySegment),
            "." | ".." => Err(RouteError::DotSegment),
            _ => Ok(()),
        };
    }
    let lower = segment.to_ascii_lowercase();
    if lower.contains("%2f")
        || lower.contains("%5c")
        || segment.contains('\\')
        || has_encoded_control(&lower)
    {
        return Err(RouteError::EncodedSeparator);
    }
    let decoded_dots = lower.replace("%2e", ".");
    if decoded_dots == "." || decoded_dots == ".." {
        return Err(RouteError::DotSegment);
    }
    Ok(())
}

/// `%00`–`%1f` and `%7f`.
fn has_encoded_control(lower: &str) -> bool {
    lower.match_indices('%').any(|(i, _)| {
        let hex = lower.get(i + 1..i + 3).unwrap_or("");
        matches!(u8::from_str_radix(hex, 16), Ok(b) if b < 0x20 || b == 0x7f)
    })
}

/// `Ok(None)` when the path is outside the artifacts path space.
fn artifact_route(method: &Method, segments: &[&str]) -> Result<Option<ArtifactRoute>, RouteError> {
    // Split off the repository part: `repos/{owner}/{repo}` or `repositories/{id}`.
    let (repo, rest) = match segments {
        ["repos", owner, name, "actions", rest @ ..] if in_space(rest) => {
            (named_repo(owner, name)?, rest)
        }
        ["repositories", id, "actions", rest @ ..] if in_space(rest) => {
            (RepoRef::Id(parse_id("repository id", id)?), rest)
        }
        _ => return Ok(None),
    };
    let readable = matches!(*method, Method::GET | Method::HEAD);
    let route = match rest {
        ["artifacts"] if readable => ArtifactRoute::ListForRepo { repo },
        ["runs", run, "artifacts"] => {
            let run_id = parse_id("run id", run)?;
            if !readable {
                return Ok(None);
            }
            ArtifactRoute::ListForRun { repo, run_id }
        }
        ["artifacts", id] => {
            let artifact_id = parse_id("artifact id", id)?;
            match *method {
                Method::GET | Method::HEAD => ArtifactRoute::Get { repo, artifact_id },
                Method::DELETE => ArtifactRoute::Delete { repo, artifact_id },
                _ => return Ok(None),
            }
        }
        ["artifacts", id, format] => {
            let artifact_id = parse_id("artifact id", id)?;
            if *format != "zip" {
                return Err(RouteError::ArchiveFormat(echo(format)));
            }
            if !readable {
                return Ok(None);
            }
            ArtifactRoute::Download { repo, artifact_id }
        }
        // Another method on a list path: upstream says what it says.
        ["artifacts"] => return Ok(None),
        _ => return Err(RouteError::NotFound),
    };
    Ok(Some(route))
}

/// Whether the part after `actions/` belongs to the artifacts path space.
fn in_space(rest: &[&str]) -> bool {
    matches!(rest, ["artifacts", ..] | ["runs", _, "artifacts", ..])
}

/// `owner/name` as an operator types it (`cache purge --repo`), held to the
/// same rules as a path, so the command finds exactly what requests stored.
pub fn parse_full_name(s: &str) -> Result<RepoRef, RouteError> {
    let (owner, name) = s
        .split_once('/')
        .ok_or_else(|| RouteError::BadRepo(echo(s)))?;
    named_repo(owner, name)
}

/// An artifact id as an operator types it, held to the rules of a path.
pub fn parse_artifact_id(s: &str) -> Result<u64, RouteError> {
    parse_id("artifact id", s)
}

fn named_repo(owner: &str, name: &str) -> Result<RepoRef, RouteError> {
    let owner_ok = valid_name(owner, |b| {
        b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
    });
    if !owner_ok {
        return Err(RouteError::BadOwner(echo(owner)));
    }
    let name_ok = valid_name(name, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
    });
    if !name_ok {
        return Err(RouteError::BadRepo(echo(name)));
    }
    Ok(RepoRef::Named {
        owner: owner.to_owned(),
        name: name.to_owned(),
    })
}

fn valid_name(s: &str, allowed: impl Fn(u8) -> bool) -> bool {
    (1..=100).contains(&s.len()) && s.bytes().all(allowed)
}

fn parse_id(what: &'static str, s: &str) -> Result<u64, RouteError> {
    let bad = || RouteError::BadId {
        what,
        value: echo(s),
    };
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match s.parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(bad()),
    }
}

fn echo(s: &str) -> String {
    s.chars().take(ECHO_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "/api/v3";

    fn get(path: &str) -> Result<Route, RouteError> {
        route(&Method::GET, path, BASE)
    }

    fn named(owner: &str, name: &str) -> RepoRef {
        RepoRef::Named {
            owner: owner.into(),
            name: name.into(),
        }
    }

    #[test]
    fn five_routes_in_both_forms() {
        let r = named("octo-org", "hello.world");
        let p = "/api/v3/repos/octo-org/hello.world/actions";
        assert_eq!(
            get(&format!("{p}/artifacts")),
            Ok(Route::Artifact(ArtifactRoute::ListForRepo {
                repo: r.clone()
            }))
        );
        assert_eq!(
            get(&format!("{p}/runs/42/artifacts")),
            Ok(Route::Artifact(ArtifactRoute::ListForRun {
                repo: r.clone(),
                run_id: 42
            }))
        );
        assert_eq!(
            get(&format!("{p}/artifacts/7")),
            Ok(Route::Artifact(ArtifactRoute::Get {
                repo: r.clone(),
                artifact_id: 7
            }))
        );
        assert_eq!(
            route(&Method::DELETE, &format!("{p}/artifacts/7"), BASE),
            Ok(Route::Artifact(ArtifactRoute::Delete {
                repo: r.clone(),
                artifact_id: 7
            }))
        );
        assert_eq!(
            get(&format!("{p}/artifacts/7/zip")),
            Ok(Route::Artifact(ArtifactRoute::Download {
                repo: r,
                artifact_id: 7
            }))
        );
        assert_eq!(
            get("/api/v3/repositories/1001/actions/artifacts/7/zip"),
            Ok(Route::Artifact(ArtifactRoute::Download {
                repo: RepoRef::Id(1001),
                artifact_id: 7
            }))
        );
        assert_eq!(
            get("/api/v3/repositories/1001/actions/runs/9/artifacts"),
            Ok(Route::Artifact(ArtifactRoute::ListForRun {
                repo: RepoRef::Id(1001),
                run_id: 9
            }))
        );
    }

    #[test]
    fn health_and_forward() {
        assert_eq!(get("/healthz"), Ok(Route::Alive));
        assert_eq!(get("/metrics"), Ok(Route::Metrics));
        assert_eq!(
            get("/_mirror/blobs/42"),
            Ok(Route::Blob { artifact_id: 42 })
        );
        assert!(matches!(
            get("/_mirror/blobs/4/2"),
            Err(RouteError::BadId { .. })
        ));
        assert_eq!(
            route(&Method::PUT, "/_mirror/blobs/42", BASE),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(get("/readyz"), Ok(Route::Ready));
        assert_eq!(get("/_mirror/status"), Ok(Route::Status));
        assert_eq!(
            route(&Method::POST, "/_mirror/status", BASE),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(
            route(&Method::POST, "/healthz", BASE),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(get("/api/v3"), Ok(Route::Forward));
        assert_eq!(get("/api/v3/meta"), Ok(Route::Forward));
        assert_eq!(get("/api/v3/repos/o/r/actions/runs/1"), Ok(Route::Forward));
        // Names GitHub would refuse are upstream's business outside the space.
        assert_eq!(get("/api/v3/repos/a$b/r/issues"), Ok(Route::Forward));
        assert_eq!(
            route(&Method::POST, "/api/v3/repos/o/r/actions/artifacts", BASE),
            Ok(Route::Forward)
        );
        assert_eq!(get("/api/v3x/meta"), Err(RouteError::NotFound));
        assert_eq!(get("/other"), Err(RouteError::NotFound));
        assert_eq!(route(&Method::GET, "/meta", ""), Ok(Route::Forward));
        // The API root keeps its trailing `/`; no other path does.
        assert_eq!(get("/api/v3/"), Ok(Route::Forward));
        assert_eq!(route(&Method::GET, "/", ""), Ok(Route::Forward));
        assert_eq!(
            route(&Method::DELETE, "//repos/o/r/actions/artifacts/1", ""),
            Err(RouteError::EmptySegment)
        );
    }

    #[test]
    fn malformed_paths_are_refused() {
        type Expect = fn(&RouteError) -> bool;
        let cases: &[(&str, Expect)] = &[
            ("/api/v3/repos/o/r/../../meta", |e| {
                *e == RouteError::DotSegment
            }),
            ("/api/v3/repos/o/%2e%2E/actions/artifacts", |e| {
                *e == RouteError::DotSegment
            }),
            ("/api/v3/./meta", |e| *e == RouteError::DotSegment),
            ("/api/v3/repos/o%2Fx/r/actions/artifacts", |e| {
                *e == RouteError::EncodedSeparator
            }),
            ("/api/v3/repos/o/r%5c/actions/artifacts", |e| {
                *e == RouteError::EncodedSeparator
            }),
            ("/api/v3/repos/o/r%00/issues", |e| {
                *e == RouteError::EncodedSeparator
            }),
            ("/api/v3/repos/o$/r/actions/artifacts", |e| {
                matches!(e, RouteError::BadOwner(_))
            }),
            ("/api/v3/repos/o/r%20x/actions/artifacts", |e| {
                matches!(e, RouteError::BadRepo(_))
            }),
            ("/api/v3/repos//r/actions/artifacts", |e| {
                *e == RouteError::EmptySegment
            }),
            ("/api/v3/repos/o/r/actions/artifacts/abc", |e| {
                matches!(e, RouteError::BadId { .. })
            }),
            ("/api/v3/repos/o/r/actions/artifacts/-1", |e| {
                matches!(e, RouteError::BadId { .. })
            }),
            ("/api/v3/repos/o/r/actions/artifacts/0", |e| {
                matches!(e, RouteError::BadId { .. })
            }),
            (
                "/api/v3/repos/o/r/actions/artifacts/18446744073709551616",
                |e| matches!(e, RouteError::BadId { .. }),
            ),
            ("/api/v3/repos/o/r/actions/runs/x1/artifacts", |e| {
                matches!(e, RouteError::BadId { .. })
            }),
            ("/api/v3/repositories/12a/actions/artifacts", |e| {
                matches!(e, RouteError::BadId { .. })
            }),
            ("/api/v3/repos/o/r/actions/artifacts/1/tar", |e| {
                matches!(e, RouteError::ArchiveFormat(_))
            }),
            ("/api/v3/repos/o/r/actions/artifacts/1/zip/x", |e| {
                *e == RouteError::NotFound
            }),
            ("/api/v3/repos/o/r/actions/artifacts/", |e| {
                *e == RouteError::EmptySegment
            }),
            ("/api/v3/repos/o/r//actions/artifacts/1/zip", |e| {
                *e == RouteError::EmptySegment
            }),
            ("/api/v3//repos/o/r/actions/artifacts", |e| {
                *e == RouteError::EmptySegment
            }),
            ("/api/v3/repos/o/r/actions//artifacts", |e| {
                *e == RouteError::EmptySegment
            }),
            ("/api/v3/meta/", |e| *e == RouteError::EmptySegment),
            ("/api/v3/repos/o/r/issues//1", |e| {
                *e == RouteError::EmptySegment
            }),
        ];
        for (path, expected) in cases {
            match get(path) {
                Err(e) if expected(&e) => {}
                other => panic!("{path}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn largest_id_is_accepted() {
        assert!(matches!(
            get("/api/v3/repos/o/r/actions/artifacts/18446744073709551615"),
            Ok(Route::Artifact(ArtifactRoute::Get {
                artifact_id: u64::MAX,
                ..
            }))
        ));
    }

    #[test]
    fn operator_input_is_held_to_the_path_rules() {
        assert_eq!(
            parse_full_name("Octo-Org/app.js"),
            Ok(named("Octo-Org", "app.js"))
        );
        for bad in ["octo", "/app", "octo/", "a/b/c", "o o/r", "../x"] {
            assert!(parse_full_name(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_artifact_id("42"), Ok(42));
        for bad in ["0", "-1", "x", "", "18446744073709551616", "+5"] {
            assert!(parse_artifact_id(bad).is_err(), "{bad}");
        }
    }
}
