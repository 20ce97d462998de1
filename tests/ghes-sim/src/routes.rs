//! Path → route, and the pagination `Link` header. Pure functions, unit-tested.

use http::Method;

/// How a request names its repository.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum RepoKey {
    /// `/repos/{owner}/{repo}/…`
    Name(String, String),
    /// `/repositories/{repository_id}/…` (the form GitHub's `Link` uses)
    Id(u64),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Route {
    Meta,
    MarkdownRaw,
    Repo(RepoKey),
    ListRepo(RepoKey),
    ListRun(RepoKey, u64),
    /// `GET …/actions/runs` (completed runs only in the sim).
    ListRuns(RepoKey),
    /// `POST /app/installations/{id}/access_tokens` (a GitHub App's JWT).
    AppToken(u64),
    Get(RepoKey, u64),
    Delete(RepoKey, u64),
    /// The last field is the archive format (only `zip` exists).
    Download(RepoKey, u64, String),
    NotFound,
}

/// Which `Counters` field a request counts towards.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Kind {
    ListRepo,
    ListRun,
    ListRuns,
    AppToken,
    Get,
    Delete,
    Download,
    Other,
}

impl Route {
    /// Routes a request. Wrong methods and malformed ids are `NotFound`,
    /// which is what GitHub answers for them.
    pub fn parse(method: &Method, path: &str) -> Route {
        let Some(rest) = path.strip_prefix("/api/v3/") else {
            return Route::NotFound;
        };
        let segs: Vec<&str> = rest.split('/').collect();
        let read = *method == Method::GET || *method == Method::HEAD;
        match segs.as_slice() {
            ["meta"] if read => Route::Meta,
            ["markdown", "raw"] if *method == Method::POST => Route::MarkdownRaw,
            ["app", "installations", id, "access_tokens"] if *method == Method::POST => {
                match id.parse::<u64>() {
                    Ok(id) => Route::AppToken(id),
                    Err(_) => Route::NotFound,
                }
            }
            ["repos", owner, repo, tail @ ..] if !owner.is_empty() && !repo.is_empty() => {
                Self::repo_route(
                    method,
                    RepoKey::Name(owner.to_string(), repo.to_string()),
                    tail,
                )
            }
            ["repositories", id, tail @ ..] => match id.parse::<u64>() {
                Ok(id) => Self::repo_route(method, RepoKey::Id(id), tail),
                Err(_) => Route::NotFound,
            },
            _ => Route::NotFound,
        }
    }

    fn repo_route(method: &Method, key: RepoKey, tail: &[&str]) -> Route {
        let read = *method == Method::GET || *method == Method::HEAD;
        let num = |s: &str| s.parse::<u64>().ok();
        match tail {
            [] if read => Route::Repo(key),
            ["actions", "artifacts"] if read => Route::ListRepo(key),
            ["actions", "runs"] if read => Route::ListRuns(key),
            ["actions", "runs", run, "artifacts"] if read => match num(run) {
                Some(run) => Route::ListRun(key, run),
                None => Route::NotFound,
            },
            ["actions", "artifacts", id] => match (num(id), method.as_str()) {
                (Some(id), "GET" | "HEAD") => Route::Get(key, id),
                (Some(id), "DELETE") => Route::Delete(key, id),
                _ => Route::NotFound,
            },
            ["actions", "artifacts", id, format] if read && !format.is_empty() => match num(id) {
                Some(id) => Route::Download(key, id, format.to_string()),
                None => Route::NotFound,
            },
            _ => Route::NotFound,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Route::ListRepo(_) => Kind::ListRepo,
            Route::ListRun(..) => Kind::ListRun,
            Route::ListRuns(_) => Kind::ListRuns,
            Route::AppToken(_) => Kind::AppToken,
            Route::Get(..) => Kind::Get,
            Route::Delete(..) => Kind::Delete,
            Route::Download(..) => Kind::Download,
            Route::Meta | Route::MarkdownRaw | Route::Repo(_) | Route::NotFound => Kind::Other,
        }
    }
}

/// `per_page`/`page` as GitHub reads them: missing or invalid → defaults,
/// `per_page` capped at 100.
pub(crate) fn paging(per_page: Option<&str>, page: Option<&str>) -> (u64, u64) {
    let per_page = match per_page.and_then(|s| s.parse::<u64>().ok()) {
        Some(0) | None => 30,
        Some(n) => n.min(100),
    };
    let page = match page.and_then(|s| s.parse::<u64>().ok()) {
        Some(0) | None => 1,
        Some(n) => n,
    };
    (per_page, page)
}

/// The `Link` header for a list answer, or `None` when everything fits on
/// page 1. `base` is the absolute URL without query, in the
/// `/repositories/{id}/…` form; every query parameter but `page` is kept
/// verbatim and in order, and `page` goes last.
pub(crate) fn link_header(
    base: &str,
    raw_query: Option<&str>,
    page: u64,
    per_page: u64,
    total: u64,
) -> Option<String> {
    let last = total.div_ceil(per_page).max(1);
    if last <= 1 && page <= 1 {
        return None;
    }
    let kept: Vec<&str> = raw_query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| p.split('=').next() != Some("page"))
        .collect();
    let url = |n: u64| {
        let mut q = kept.join("&");
        if !q.is_empty() {
            q.push('&');
        }
        format!("<{base}?{q}page={n}>")
    };
    let mut rels = Vec::new();
    if page > 1 {
        rels.push(format!("{}; rel=\"prev\"", url(page - 1)));
    }
    if page < last {
        rels.push(format!("{}; rel=\"next\"", url(page + 1)));
        rels.push(format!("{}; rel=\"last\"", url(last)));
    }
    if page > 1 {
        rels.push(format!("{}; rel=\"first\"", url(1)));
    }
    Some(rels.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> RepoKey {
        RepoKey::Name("o".into(), "r".into())
    }

    #[test]
    fn parses_both_forms() {
        let g = Method::GET;
        assert_eq!(
            Route::parse(&g, "/api/v3/repos/o/r/actions/artifacts"),
            Route::ListRepo(name())
        );
        assert_eq!(
            Route::parse(&g, "/api/v3/repositories/1001/actions/runs/5/artifacts"),
            Route::ListRun(RepoKey::Id(1001), 5)
        );
        assert_eq!(
            Route::parse(&g, "/api/v3/repos/o/r/actions/artifacts/9"),
            Route::Get(name(), 9)
        );
        assert_eq!(
            Route::parse(&Method::DELETE, "/api/v3/repos/o/r/actions/artifacts/9"),
            Route::Delete(name(), 9)
        );
        assert_eq!(
            Route::parse(&g, "/api/v3/repos/o/r/actions/artifacts/9/tar"),
            Route::Download(name(), 9, "tar".into())
        );
        assert_eq!(Route::parse(&g, "/api/v3/repos/o/r"), Route::Repo(name()));
        assert_eq!(Route::parse(&g, "/api/v3/meta"), Route::Meta);
        assert_eq!(
            Route::parse(&Method::POST, "/api/v3/markdown/raw"),
            Route::MarkdownRaw
        );
    }

    #[test]
    fn rejects_malformed() {
        let g = Method::GET;
        for p in [
            "/api/v3/repos/o/r/actions/artifacts/x",
            "/api/v3/repos/o/r/actions/artifacts/-1",
            "/api/v3/repos/o/r/actions/runs/abc/artifacts",
            "/api/v3/repositories/abc/actions/artifacts",
            "/api/v3/repos//r/actions/artifacts",
            "/api/v3/repos/o/r/actions/artifacts/",
            "/api/v4/meta",
            "/meta",
        ] {
            assert_eq!(Route::parse(&g, p), Route::NotFound, "{p}");
        }
        assert_eq!(
            Route::parse(&Method::POST, "/api/v3/repos/o/r/actions/artifacts"),
            Route::NotFound
        );
        assert_eq!(
            Route::parse(&Method::DELETE, "/api/v3/repos/o/r/actions/artifacts/1/zip"),
            Route::NotFound
        );
    }

    #[test]
    fn paging_defaults() {
        assert_eq!(paging(None, None), (30, 1));
        assert_eq!(paging(Some("500"), Some("0")), (100, 1));
        assert_eq!(paging(Some("abc"), Some("-2")), (30, 1));
        assert_eq!(paging(Some("2"), Some("3")), (2, 3));
    }

    #[test]
    fn link_first_page() {
        let base = "http://127.0.0.1:1/api/v3/repositories/1001/actions/artifacts";
        let l = link_header(base, Some("per_page=2"), 1, 2, 5).unwrap();
        assert_eq!(
            l,
            format!("<{base}?per_page=2&page=2>; rel=\"next\", <{base}?per_page=2&page=3>; rel=\"last\"")
        );
    }

    #[test]
    fn link_middle_and_last_keep_params() {
        let base = "http://h/api/v3/repositories/1/actions/runs/7/artifacts";
        let l = link_header(
            base,
            Some("page=2&name=a%20b&per_page=1&direction=asc"),
            2,
            1,
            3,
        )
        .unwrap();
        let q = "name=a%20b&per_page=1&direction=asc";
        assert_eq!(
            l,
            format!(
                "<{base}?{q}&page=1>; rel=\"prev\", <{base}?{q}&page=3>; rel=\"next\", \
                 <{base}?{q}&page=3>; rel=\"last\", <{base}?{q}&page=1>; rel=\"first\""
            )
        );
        let last = link_header(base, Some("per_page=1"), 3, 1, 3).unwrap();
        assert_eq!(last, format!("<{base}?per_page=1&page=2>; rel=\"prev\", <{base}?per_page=1&page=1>; rel=\"first\""));
    }

    #[test]
    fn no_link_when_one_page() {
        assert_eq!(link_header("http://h/x", None, 1, 30, 5), None);
        assert_eq!(link_header("http://h/x", None, 1, 30, 0), None);
        assert!(link_header("http://h/x", None, 2, 30, 0).is_some());
    }
}
