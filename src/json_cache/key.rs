//! The cache key: repository, credential, route, normalised query, the
//! request headers that select the answer and the public base. Also how the
//! cache names a repository, and what the cache policy sees of a request.

use std::io::Write as _;

use http::header::{self, HeaderName, HeaderValue};
use http::{request, Request};

use crate::credential::CredentialId;
use crate::index::{Index, IndexError};
use crate::router::{ArtifactRoute, RepoRef};

/// Request headers that decide the answer, besides path and credential.
pub(super) const VARYING: [HeaderName; 2] = [
    header::ACCEPT,
    HeaderName::from_static("x-github-api-version"),
];

/// Cache key: the repository first (so a DELETE can drop a repository's
/// entries by prefix), then the credential, then what selects the answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key(pub(super) Vec<u8>);

impl Key {
    pub(super) fn new(
        route: &ArtifactRoute,
        credential: CredentialId,
        parts: &request::Parts,
        public_base: &str,
    ) -> Key {
        let (repo, list) = match route {
            ArtifactRoute::ListForRepo { repo } => (repo, Some(false)),
            ArtifactRoute::ListForRun { repo, .. } => (repo, Some(true)),
            ArtifactRoute::Get { repo, .. }
            | ArtifactRoute::Delete { repo, .. }
            | ArtifactRoute::Download { repo, .. } => (repo, None),
        };
        let mut key = Vec::with_capacity(160 + public_base.len());
        push_repo_prefix(&mut key, repo);
        // Raw bytes, length first: 9 (`anonymous`) or 32 (the MAC, which may
        // hold any byte, the separator too).
        let credential = credential.as_bytes();
        key.push(credential.len() as u8);
        key.extend_from_slice(credential);
        key.push(0);
        // Writing to a Vec cannot fail.
        let _ = match route {
            ArtifactRoute::ListForRepo { .. } => key.write_all(b"artifacts"),
            ArtifactRoute::ListForRun { run_id, .. } => write!(key, "runs/{run_id}/artifacts"),
            ArtifactRoute::Get { artifact_id, .. }
            | ArtifactRoute::Delete { artifact_id, .. }
            | ArtifactRoute::Download { artifact_id, .. } => {
                write!(key, "artifacts/{artifact_id}")
            }
        };
        key.push(b'?');
        push_normalized_query(&mut key, parts.uri.query(), list);
        for name in &VARYING {
            key.push(0);
            if let Some(v) = parts.headers.get(name) {
                key.extend_from_slice(v.as_bytes());
            }
        }
        key.push(0);
        key.extend_from_slice(public_base.as_bytes());
        Key(key)
    }
}

/// `n:owner/name\0` or `i:id\0`: what all keys of a repository start with.
pub(super) fn repo_prefix(repo: &RepoRef) -> Vec<u8> {
    let mut prefix = Vec::new();
    push_repo_prefix(&mut prefix, repo);
    prefix
}

/// The key prefixes of a repository's cached JSON: its own form's and, when
/// known, the other path form's (`/repos/o/n` ↔ `/repositories/id`). Shared
/// by a DELETE's purge and `cache purge --repo`.
pub fn repo_prefixes(index: &Index, repo: &RepoRef) -> Result<Vec<Vec<u8>>, IndexError> {
    let mut prefixes = vec![repo_prefix(repo)];
    if let Some(alias) = index.json().alias_get(&repo_id(repo))? {
        let mut prefix = alias.into_bytes();
        prefix.push(0);
        prefixes.push(prefix);
    }
    Ok(prefixes)
}

fn push_repo_prefix(out: &mut Vec<u8>, repo: &RepoRef) {
    push_repo_id(out, repo);
    out.push(0);
}

/// `n:owner/name` or `i:id`: how the cache names a repository (its keys,
/// aliases, and the `repo` of facts and blob records).
pub fn repo_id(repo: &RepoRef) -> String {
    let mut id = Vec::new();
    push_repo_id(&mut id, repo);
    String::from_utf8(id).expect("repository ids are built from strings")
}

fn push_repo_id(out: &mut Vec<u8>, repo: &RepoRef) {
    match repo {
        // GitHub names are case-insensitive.
        RepoRef::Named { owner, name } => {
            out.extend_from_slice(b"n:");
            out.extend(owner.bytes().map(|b| b.to_ascii_lowercase()));
            out.push(b'/');
            out.extend(name.bytes().map(|b| b.to_ascii_lowercase()));
        }
        RepoRef::Id(id) => {
            let _ = write!(out, "i:{id}");
        }
    }
}

/// Longest `name` value the cache keys on: GitHub's artifact names are far
/// shorter, and a longer value is forwarded without being stored.
const MAX_NAME_PARAM: usize = 256;

/// Whether an answer to this query may be stored: only the parameters the
/// route documents (`per_page`, `page`, `name`; `direction` on a run's list;
/// none on a get), each once, with a value of their form. Anything else is
/// forwarded uncached (`BYPASS`): GHES still decides what it means, but an
/// arbitrary parameter cannot add cache entries or spend rate limit on
/// answers no one else will ask for.
pub(super) fn cacheable_query(route: &ArtifactRoute, query: Option<&str>) -> bool {
    let known: &[&str] = match route {
        ArtifactRoute::ListForRepo { .. } => &["per_page", "page", "name"],
        ArtifactRoute::ListForRun { .. } => &["per_page", "page", "name", "direction"],
        _ => &[],
    };
    let digits =
        |v: &str, max: usize| (1..=max).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit());
    let mut seen = [false; 4];
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .all(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(i) = known.iter().position(|k| *k == name) else {
                return false;
            };
            if std::mem::replace(&mut seen[i], true) {
                return false; // Repeated: which one upstream takes is its business.
            }
            match name {
                "per_page" => digits(value, 3) && matches!(value.parse(), Ok(1..=100u8)),
                "page" => digits(value, 6),
                "direction" => matches!(value, "asc" | "desc"),
                _ => (1..=MAX_NAME_PARAM).contains(&value.len()),
            }
        })
}

/// Sorted pairs with GitHub's defaults made explicit, so `?page=1&per_page=30`
/// and no query share an entry. `list` is `Some(is_run_list)` for lists.
#[cfg(test)]
fn normalized_query(query: Option<&str>, list: Option<bool>) -> String {
    let mut out = Vec::new();
    push_normalized_query(&mut out, query, list);
    String::from_utf8(out).expect("built from a str")
}

/// [`normalized_query`] appended to `out`.
fn push_normalized_query(out: &mut Vec<u8>, query: Option<&str>, list: Option<bool>) {
    let mut pairs: Vec<(&str, &str)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    if let Some(run_list) = list {
        let defaults: &[(&str, &str)] = if run_list {
            &[("per_page", "30"), ("page", "1"), ("direction", "desc")]
        } else {
            &[("per_page", "30"), ("page", "1")]
        };
        for &(name, value) in defaults {
            if !pairs.iter().any(|(n, _)| *n == name) {
                pairs.push((name, value));
            }
        }
    }
    pairs.sort_unstable();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
    }
}

/// What the cache policy sees of a request: the path, the headers that
/// select the answer and, instead of the raw `Authorization`, the credential
/// id — the policy is stored on disk, and a token must never be.
pub(super) fn policy_request(parts: &request::Parts, credential: CredentialId) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    let headers = request.headers_mut();
    for name in &VARYING {
        if let Some(v) = parts.headers.get(name) {
            headers.insert(name.clone(), v.clone());
        }
    }
    headers.insert(header::AUTHORIZATION, credential_header(credential));
    request
}

/// The credential id as `Display` writes it (hex of the MAC, or
/// `anonymous`), without going through `fmt` byte by byte.
fn credential_header(credential: CredentialId) -> HeaderValue {
    match credential {
        CredentialId::Anonymous => HeaderValue::from_static("anonymous"),
        CredentialId::Token(mac) => {
            let mut hex = [0u8; 64];
            hex::encode_to_slice(mac, &mut hex).expect("64 digits for 32 bytes");
            HeaderValue::from_bytes(&hex).expect("hex digits are a valid header value")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_normalise_with_defaults() {
        assert_eq!(normalized_query(None, Some(false)), "page=1&per_page=30");
        assert_eq!(
            normalized_query(Some("per_page=30&page=1"), Some(false)),
            normalized_query(Some(""), Some(false))
        );
        assert_eq!(
            normalized_query(Some("name=x&page=2"), Some(true)),
            "direction=desc&name=x&page=2&per_page=30"
        );
        assert_eq!(normalized_query(Some("b=1&a"), None), "a=&b=1");
    }

    #[test]
    fn only_known_parameters_of_their_form_are_cacheable() {
        let repo = RepoRef::Id(1);
        let list = ArtifactRoute::ListForRepo { repo: repo.clone() };
        let run = ArtifactRoute::ListForRun {
            repo: repo.clone(),
            run_id: 2,
        };
        let get = ArtifactRoute::Get {
            repo,
            artifact_id: 3,
        };
        for q in [None, Some(""), Some("per_page=100&page=2&name=dist")] {
            assert!(cacheable_query(&list, q), "{q:?}");
        }
        assert!(cacheable_query(&run, Some("direction=asc&per_page=1")));
        assert!(cacheable_query(&get, None));
        let long_name = format!("name={}", "x".repeat(MAX_NAME_PARAM + 1));
        for q in [
            "junk=1",
            "page=1&junk",
            "direction=asc",
            "per_page=101",
            "per_page=0",
            "per_page=ten",
            "per_page=+5",
            "page=1234567",
            "page=",
            "name=",
            "page=1&page=2",
            long_name.as_str(),
        ] {
            assert!(!cacheable_query(&list, Some(q)), "{q}");
        }
        assert!(!cacheable_query(&run, Some("direction=up")));
        assert!(!cacheable_query(&get, Some("per_page=1")));
    }

    #[test]
    fn credential_header_is_the_display_form() {
        for id in [CredentialId::Anonymous, CredentialId::Token([0xa7; 32])] {
            assert_eq!(credential_header(id), id.to_string().as_str());
        }
    }

    #[test]
    fn key_starts_with_the_repo_prefix_and_separates_credentials() {
        let (parts, ()) = Request::get("/api/v3/repos/O/R/actions/artifacts")
            .body(())
            .unwrap()
            .into_parts();
        let repo = RepoRef::Named {
            owner: "O".into(),
            name: "R".into(),
        };
        let route = ArtifactRoute::ListForRepo { repo: repo.clone() };
        let anon = Key::new(&route, CredentialId::Anonymous, &parts, "http://m");
        let token = Key::new(&route, CredentialId::Token([0; 32]), &parts, "http://m");
        assert!(anon.0.starts_with(&repo_prefix(&repo)));
        assert!(anon.0.starts_with(b"n:o/r\0"));
        assert!(token.0.starts_with(&repo_prefix(&repo)));
        assert_ne!(anon, token);
    }

    #[test]
    fn policy_request_never_holds_the_token() {
        let (parts, ()) = Request::get("/api/v3/repos/o/r/actions/artifacts")
            .header("authorization", "token ghp_secret")
            .header("accept", "application/vnd.github+json")
            .header("cookie", "session=1")
            .body(())
            .unwrap()
            .into_parts();
        let r = policy_request(&parts, CredentialId::Token([7; 32]));
        let all = format!("{:?}", r.headers());
        assert!(!all.contains("ghp_secret"), "{all}");
        assert!(!all.contains("session"), "{all}");
        assert_eq!(r.headers()["accept"], "application/vnd.github+json");
    }
}
