//! One cached answer and its freshness; the shared result of one trip
//! upstream; weak ETag comparison.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_cache_semantics::CachePolicy;

use crate::body::{self, Body};
use crate::clock::{millis, unix_ms};
use crate::error::MirrorError;
use crate::outcome::{CacheOutcome, X_CACHE};

/// One cached answer: upstream's headers and body with URLs rewritten to the
/// mirror, and the policy that says when it must be revalidated.
#[derive(Debug)]
pub(super) struct Entry {
    /// Upstream's headers plus `Content-Length` and an `X-Cache` slot: ready
    /// to be cloned into a response without growing (see [`Entry::respond`]).
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    pub(super) policy: CachePolicy,
    /// Unix milliseconds of the last time upstream confirmed it (200 or 304).
    pub(super) validated_at: u64,
    /// Unix milliseconds until which it may be answered without upstream:
    /// `validated_at + min(policy's time to live then, max_fresh)`.
    pub(super) fresh_until: u64,
    /// Unix milliseconds of the `validated_at` last written to disk.
    pub(super) persisted_at: u64,
}

/// Headers whose change on a 304 is written to disk at once: validators,
/// pagination and what decides freshness. Anything else (rate-limit headers,
/// `Date`) reaches the disk with the next write (see [`PERSIST_EVERY`]).
pub(super) const PERSISTED_ON_CHANGE: [HeaderName; 7] = [
    header::ETAG,
    header::LAST_MODIFIED,
    header::LINK,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::PRAGMA,
    header::VARY,
];

/// A revalidated entry whose headers that matter did not change is written
/// to disk at most this often. The memory tier is always current; after a
/// restart the disk's older `validated_at` (and policy) only make the entry
/// look older than it is, i.e. cost at most one more revalidation sooner.
pub(super) const PERSIST_EVERY: Duration = Duration::from_secs(30);

impl Entry {
    /// `headers` as upstream sent them (URLs rewritten, no `Content-Length`).
    pub(super) fn new(
        mut headers: HeaderMap,
        body: Bytes,
        policy: CachePolicy,
        validated_at: u64,
        persisted_at: u64,
        max_fresh: Duration,
    ) -> Entry {
        let validated = UNIX_EPOCH + Duration::from_millis(validated_at);
        let ttl = millis(policy.time_to_live(validated)).min(millis(max_fresh));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.insert(X_CACHE, CacheOutcome::Hit.x_cache());
        Entry {
            headers,
            body,
            policy,
            validated_at,
            fresh_until: validated_at.saturating_add(ttl),
            persisted_at,
        }
    }

    pub(super) fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(header::ETAG)
    }

    /// The headers as stored on disk: upstream's, without what `new` adds.
    pub(super) fn stored_headers(&self) -> HeaderMap {
        let mut headers = self.headers.clone();
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(X_CACHE);
        headers
    }

    /// Fresh by upstream's policy (capped by `max_fresh`), computed when the
    /// entry was validated, unless the request asks for revalidation. The
    /// key holds the credential, `Accept` and `X-GitHub-Api-Version` (all
    /// the policy's request sees), so `Vary` needs no check here.
    pub(super) fn is_fresh(&self, request_headers: &HeaderMap, now: SystemTime) -> bool {
        unix_ms(now) < self.fresh_until && !self.request_refuses(request_headers, now)
    }

    /// Request directives that rule this entry out (RFC 9111 §5.2.1, as
    /// `http-cache-semantics` reads them): `no-cache` (or `Pragma:
    /// no-cache`), `max-age` the entry is older than, `min-fresh` beyond its
    /// time to live. `max-stale` is not honoured: a stale entry revalidates.
    fn request_refuses(&self, request_headers: &HeaderMap, now: SystemTime) -> bool {
        let pragma_no_cache = request_headers
            .get_all(header::PRAGMA)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains("no-cache")));
        if pragma_no_cache {
            return true;
        }
        let seconds = |v: Option<&str>| {
            v.map(|v| v.trim().trim_matches('"'))
                .and_then(|v| v.parse().ok())
                .map(Duration::from_secs)
        };
        let directives = request_headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for directive in directives {
            let (name, value) = match directive.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value)),
                None => (directive.trim(), None),
            };
            if name.eq_ignore_ascii_case("no-cache") {
                return true;
            }
            if name.eq_ignore_ascii_case("max-age") {
                if let Some(max_age) = seconds(value) {
                    if self.policy.age(now) > max_age {
                        return true;
                    }
                }
            }
            if name.eq_ignore_ascii_case("min-fresh") {
                if let Some(min_fresh) = seconds(value) {
                    if self.policy.time_to_live(now) < min_fresh {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// The entry as an answer, its outcome in `X-Cache` and as the
    /// extension the request is counted by.
    pub(super) fn respond(
        &self,
        status: CacheOutcome,
        if_none_match: Option<&HeaderValue>,
    ) -> Response<Body> {
        let not_modified = match (if_none_match, self.etag()) {
            (Some(wanted), Some(etag)) => etag_matches(wanted, etag),
            _ => false,
        };
        // A clone of a map that already holds every header: no growth, no
        // rehash; the `X-Cache` slot is overwritten in place.
        let mut headers = self.headers.clone();
        if status != CacheOutcome::Hit {
            if let Some(slot) = headers.get_mut(X_CACHE) {
                *slot = status.x_cache();
            }
        }
        let mut response = if not_modified {
            headers.remove(header::CONTENT_LENGTH);
            let mut response = Response::new(body::empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            Response::new(body::full(self.body.clone()))
        };
        *response.headers_mut() = headers;
        response.extensions_mut().insert(status);
        response
    }
}

/// Whether any of `names` has other values in `a` than in `b`.
pub(super) fn any_changed(a: &HeaderMap, b: &HeaderMap, names: &[HeaderName]) -> bool {
    names
        .iter()
        .any(|name| !a.get_all(name).iter().eq(b.get_all(name).iter()))
}

/// Headers a 304 must not change: they describe the stored body (as
/// `http-cache-semantics` has them).
const KEPT_ON_REVALIDATION: [HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::CONTENT_RANGE,
];

/// The headers of a revalidated entry with every value of each field.
/// `http-cache-semantics` merges a 304 into the stored headers keeping one
/// value per name: GitHub's two `Vary` lines became one, so the first 304
/// after each 200 looked like a change (written to disk at once) and
/// clients lost the second line. `merged` decides which names stay; each
/// takes all its values from the 304 when it sent that name (RFC 9111
/// §4.3.4), else from the stored entry.
pub(super) fn every_value(
    stored: &HeaderMap,
    not_modified: &HeaderMap,
    merged: HeaderMap,
) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(merged.len());
    for name in merged.keys() {
        let source = if KEPT_ON_REVALIDATION.contains(name) {
            &merged
        } else if not_modified.contains_key(name) {
            not_modified
        } else if stored.contains_key(name) {
            stored
        } else {
            &merged
        };
        for value in source.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// A whole upstream (or mirror) answer kept so coalesced callers can share it.
#[derive(Debug)]
pub(super) struct Buffered {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl Buffered {
    pub(super) fn error(e: &MirrorError) -> Buffered {
        Buffered {
            status: e.status(),
            headers: e.headers(),
            body: e.body(),
        }
    }

    pub(super) fn respond(&self) -> Response<Body> {
        let mut response = Response::new(body::full(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
            .headers_mut()
            .insert(X_CACHE, CacheOutcome::Bypass.x_cache());
        response.extensions_mut().insert(CacheOutcome::Bypass);
        response
    }
}

/// The result of one trip upstream, shared by every coalesced caller.
#[derive(Debug)]
pub(super) enum Outcome {
    Entry {
        entry: Arc<Entry>,
        status: CacheOutcome,
        upstream: Option<StatusCode>,
    },
    Passthrough(Buffered),
}

/// Weak comparison (RFC 9110 §8.8.3.2): GitHub flips between `W/"x"` and
/// `"x"` for one representation. Handles lists and `*`.
pub fn etag_matches(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let (Ok(wanted), Ok(etag)) = (if_none_match.to_str(), etag.to_str()) else {
        return false;
    };
    let etag = opaque(etag);
    wanted
        .split(',')
        .any(|w| w.trim() == "*" || opaque(w) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revalidation_keeps_every_value_of_a_field() {
        let map = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            m
        };
        let stored = map(&[
            ("vary", "a"),
            ("vary", "b"),
            ("link", "<1>"),
            ("link", "<2>"),
        ]);
        let not_modified = map(&[("vary", "c"), ("vary", "d")]);
        // As `http-cache-semantics` merges them: one value per name.
        let merged = map(&[("vary", "c"), ("link", "<2>"), ("age", "0")]);
        let headers = every_value(&stored, &not_modified, merged);
        let all = |name: &str| headers.get_all(name).iter().collect::<Vec<_>>();
        assert_eq!(all("vary"), ["c", "d"]);
        assert_eq!(all("link"), ["<1>", "<2>"]);
        assert_eq!(all("age"), ["0"]);
    }

    /// Validated at `T0` with `max-age=60`, as the JSON cache stores an
    /// answer (a private cache).
    const T0: Duration = Duration::from_secs(1_700_000_000);

    fn entry() -> Entry {
        let request = http::Request::get("/").body(()).unwrap();
        let response = http::Response::builder()
            .header("cache-control", "private, max-age=60")
            .body(())
            .unwrap();
        let options = http_cache_semantics::CacheOptions {
            shared: false,
            ..Default::default()
        };
        let policy = CachePolicy::new_options(&request, &response, UNIX_EPOCH + T0, options);
        let at = millis(T0);
        Entry::new(
            HeaderMap::new(),
            Bytes::new(),
            policy,
            at,
            at,
            Duration::from_secs(3_600),
        )
    }

    fn asking(cache_control: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_str(cache_control).unwrap(),
        );
        headers
    }

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + T0 + Duration::from_millis(ms)
    }

    #[test]
    fn fresh_up_to_but_not_at_its_time_to_live() {
        let e = entry();
        assert!(e.is_fresh(&HeaderMap::new(), at(59_999)));
        assert!(!e.is_fresh(&HeaderMap::new(), at(60_000)));
    }

    /// RFC 9111 §5.2.1.1: `max-age=N` accepts an answer whose age is N.
    #[test]
    fn a_request_max_age_accepts_an_entry_exactly_that_old() {
        let e = entry();
        assert!(e.is_fresh(&asking("max-age=10"), at(10_000)));
        assert!(!e.is_fresh(&asking("max-age=10"), at(11_000)));
    }

    /// RFC 9111 §5.2.1.3: `min-fresh=N` wants at least N seconds left.
    #[test]
    fn a_request_min_fresh_accepts_an_entry_with_exactly_that_left() {
        let e = entry();
        // 50 s left.
        assert!(e.is_fresh(&asking("min-fresh=49"), at(10_000)));
        assert!(e.is_fresh(&asking("min-fresh=50"), at(10_000)));
        assert!(!e.is_fresh(&asking("min-fresh=51"), at(10_000)));
    }

    /// What decides whether a 304 is written to disk at once.
    #[test]
    fn a_change_is_a_listed_field_with_other_values() {
        let map = |pairs: &[(HeaderName, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(k.clone(), HeaderValue::from_str(v).unwrap());
            }
            m
        };
        let names = [header::ETAG, header::VARY];
        let stored = map(&[(header::ETAG, "\"a\""), (header::DATE, "x")]);
        let same = map(&[(header::ETAG, "\"a\""), (header::DATE, "y")]);
        assert!(!any_changed(&stored, &same, &names), "an unlisted field");
        let etag = map(&[(header::ETAG, "\"b\"")]);
        assert!(any_changed(&stored, &etag, &names));
        let vary = map(&[(header::ETAG, "\"a\""), (header::VARY, "accept")]);
        assert!(any_changed(&stored, &vary, &names), "a field added");
    }

    #[test]
    fn etags_compare_weakly() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(etag_matches(&v("\"abc\""), &v("W/\"abc\"")));
        assert!(etag_matches(&v("W/\"x\", W/\"abc\""), &v("\"abc\"")));
        assert!(etag_matches(&v("*"), &v("\"abc\"")));
        assert!(!etag_matches(&v("\"abd\""), &v("\"abc\"")));
    }
}
