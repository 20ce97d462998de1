//! Upstream URLs → the mirror's public URLs, in `Link` headers and JSON.
//!
//! Paginating clients follow `Link` verbatim and `gh` downloads the body's
//! `archive_download_url` verbatim, so both must point at the mirror or the
//! client leaves it (and PyGithub refuses a `Link` off its base). The JSON is
//! rewritten as bytes, not re-serialised: key order and formatting stay
//! exactly upstream's, and only string values that *start* with the upstream
//! base change (the `"` before the base anchors the match at a string's
//! start; GitHub does not escape `/` in JSON).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue, HOST};
use http::uri::Authority;
use http::Response;
use hyper::body::Body as _;

use crate::body::{self, Body};
use crate::error::MirrorError;
use crate::upstream::{X_FORWARDED_HOST, X_FORWARDED_PROTO};

/// Largest forwarded JSON answer rewritten; larger ones stream unchanged.
const MAX_FORWARD_REWRITE: u64 = 4 * 1024 * 1024;

/// Where the mirror's public API base comes from.
#[derive(Debug, Clone)]
pub enum PublicBase {
    /// `public_url`, set by the operator.
    Fixed(String),
    /// From each request's `Host` (or `X-Forwarded-Host`/`-Proto` when the
    /// operator trusts them), plus the API path.
    FromRequest {
        api_path: String,
        trust_forwarded: bool,
    },
}

impl PublicBase {
    pub fn from_settings(settings: &crate::config::Settings) -> PublicBase {
        match &settings.public_url {
            Some(url) => PublicBase::Fixed(url.as_str().trim_end_matches('/').to_owned()),
            None => PublicBase::FromRequest {
                api_path: settings.api_base_path().to_owned(),
                trust_forwarded: settings.trust_forwarded_headers,
            },
        }
    }

    /// The base URL this client reaches the API under.
    pub fn resolve(
        &self,
        headers: &HeaderMap,
        authority: Option<&Authority>,
        tls: bool,
    ) -> Result<String, MirrorError> {
        let (api_path, trust) = match self {
            PublicBase::Fixed(base) => return Ok(base.clone()),
            PublicBase::FromRequest {
                api_path,
                trust_forwarded,
            } => (api_path, *trust_forwarded),
        };
        let first = |name: &HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let forwarded_host = if trust {
            first(&X_FORWARDED_HOST)
        } else {
            None
        };
        let host = forwarded_host
            .or_else(|| first(&HOST))
            .or_else(|| authority.map(Authority::as_str))
            .ok_or_else(|| MirrorError::BadRequest("a Host header is required".into()))?;
        // Anything but a plain host[:port] could smuggle another URL into
        // every rewritten link.
        if !plain_host_port(host) {
            return Err(MirrorError::BadRequest(format!("Invalid Host {host:?}")));
        }
        let forwarded_proto = if trust {
            first(&X_FORWARDED_PROTO)
        } else {
            None
        };
        let proto = match forwarded_proto {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            Some(_) => "http",
            None if tls => "https",
            None => "http",
        };
        Ok(format!("{proto}://{host}{api_path}"))
    }
}

/// `host[:port]`: a DNS name or IPv4 address of unreserved characters, or a
/// bracketed IPv6 literal, and digits for the port. No userinfo, path,
/// query or anything else a rewritten link could be made to carry.
fn plain_host_port(value: &str) -> bool {
    let (host_ok, port) = if let Some(v6) = value.strip_prefix('[') {
        let Some((addr, rest)) = v6.split_once(']') else {
            return false;
        };
        let ok = !addr.is_empty()
            && addr
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        let port = match rest {
            "" => None,
            _ => match rest.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        };
        (ok, port)
    } else {
        let (host, port) = match value.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (value, None),
        };
        let ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        (ok, port)
    };
    host_ok
        && port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewriter {
    /// Upstream API base, no trailing `/`: `https://ghes.example.com/api/v3`.
    from: String,
    /// Public API base of the mirror, no trailing `/`.
    to: String,
}

impl Rewriter {
    pub fn new(upstream_base: &str, public_base: &str) -> Rewriter {
        Rewriter {
            from: upstream_base.trim_end_matches('/').to_owned(),
            to: public_base.trim_end_matches('/').to_owned(),
        }
    }

    /// Rewrites `<URL>` references in a `Link` header value.
    pub fn link(&self, value: &str) -> String {
        self.replace_after(value, '<')
    }

    /// Rewrites every `Link` header value in place.
    pub fn link_headers(&self, headers: &mut HeaderMap) {
        let rewritten: Vec<HeaderValue> = headers
            .get_all(header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| HeaderValue::from_str(&self.link(v)).ok())
            .collect();
        if rewritten.is_empty() {
            return;
        }
        headers.remove(header::LINK);
        for v in rewritten {
            headers.append(header::LINK, v);
        }
    }

    /// Rewrites a forwarded (uncached) answer: `Link` always, the body when
    /// it is uncompressed JSON of known length up to 4 MiB. Clients build
    /// further URLs from what they get (PyGithub takes a repository's `url`
    /// and asserts it stays on its base), so forwarded JSON must not lead
    /// them off the mirror either. Other bodies stream through untouched.
    pub async fn forwarded(&self, response: Response<Body>) -> Result<Response<Body>, MirrorError> {
        let (mut parts, body) = response.into_parts();
        self.link_headers(&mut parts.headers);
        let json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let small = body
            .size_hint()
            .upper()
            .is_some_and(|n| n <= MAX_FORWARD_REWRITE);
        if !json || !small || parts.headers.contains_key(header::CONTENT_ENCODING) {
            return Ok(Response::from_parts(parts, body));
        }
        let bytes = body::collect_limited(body, MAX_FORWARD_REWRITE as usize)
            .await
            .map_err(|e| MirrorError::UpstreamUnreachable(format!("upstream answer cut: {e}")))?;
        let bytes = self.json(&bytes);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        Ok(Response::from_parts(parts, body::full(bytes)))
    }

    /// Rewrites every JSON string value that is an upstream URL.
    pub fn json(&self, body: &Bytes) -> Bytes {
        match std::str::from_utf8(body) {
            Ok(text) if text.contains(&self.from) => Bytes::from(self.replace_after(text, '"')),
            _ => body.clone(),
        }
    }

    /// Replaces `{opener}{from}` when followed by `/`, `?`, `#` or the
    /// closing delimiter, so `https://ghes/api/v3x` is left alone.
    fn replace_after(&self, text: &str, opener: char) -> String {
        let needle = format!("{opener}{}", self.from);
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find(&needle) {
            let after = &rest[at + needle.len()..];
            out.push_str(&rest[..at]);
            let boundary = after
                .chars()
                .next()
                .is_none_or(|c| matches!(c, '/' | '?' | '#' | '>' | '"'));
            out.push(opener);
            out.push_str(if boundary { &self.to } else { &self.from });
            rest = after;
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Rewriter {
        Rewriter::new(
            "https://ghes.example.com/api/v3",
            "http://mirror:8080/api/v3/",
        )
    }

    #[test]
    fn only_plain_host_and_port_pass() {
        for ok in [
            "mirror",
            "mirror.ci.example.com",
            "127.0.0.1:8080",
            "[::1]:8443",
            "[fe80::1]",
            "a_b-c.d~e:1",
        ] {
            assert!(plain_host_port(ok), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "user@host",
            "host/path",
            "host?x",
            "host:80:81",
            "host:port",
            "host:123456",
            "[::1",
            "[::1]x",
            "[zz]",
            "evil.com#",
            "h%2fx",
        ] {
            assert!(!plain_host_port(bad), "{bad}");
        }
    }

    #[test]
    fn link_header_urls_move_to_the_mirror() {
        let link = "<https://ghes.example.com/api/v3/repositories/1/actions/artifacts?page=2>; rel=\"next\", <https://ghes.example.com/api/v3/repositories/1/actions/artifacts?page=5>; rel=\"last\"";
        assert_eq!(
            r().link(link),
            "<http://mirror:8080/api/v3/repositories/1/actions/artifacts?page=2>; rel=\"next\", <http://mirror:8080/api/v3/repositories/1/actions/artifacts?page=5>; rel=\"last\""
        );
    }

    #[test]
    fn json_urls_move_and_nothing_else_changes() {
        let body = Bytes::from_static(
            br#"{"id":7,"name":"https://ghes.example.com/api/v3 is a name","url":"https://ghes.example.com/api/v3/repos/o/r/actions/artifacts/7","archive_download_url":"https://ghes.example.com/api/v3/repos/o/r/actions/artifacts/7/zip","other":"https://ghes.example.com/api/v3x/y","workflow_run":{"id":1,"html_url":"https://ghes.example.com/o/r/actions/runs/1"}}"#,
        );
        let out = r().json(&body);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"id":7,"name":"https://ghes.example.com/api/v3 is a name","url":"http://mirror:8080/api/v3/repos/o/r/actions/artifacts/7","archive_download_url":"http://mirror:8080/api/v3/repos/o/r/actions/artifacts/7/zip","other":"https://ghes.example.com/api/v3x/y","workflow_run":{"id":1,"html_url":"https://ghes.example.com/o/r/actions/runs/1"}}"#
        );
    }

    #[test]
    fn public_base_from_the_request() {
        let from_request = |trust| PublicBase::FromRequest {
            api_path: "/api/v3".into(),
            trust_forwarded: trust,
        };
        let mut h = HeaderMap::new();
        h.insert(HOST, "mirror:8080".parse().unwrap());
        h.insert("x-forwarded-host", "ci.example.com".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert_eq!(
            from_request(false).resolve(&h, None, false).unwrap(),
            "http://mirror:8080/api/v3"
        );
        assert_eq!(
            from_request(true).resolve(&h, None, false).unwrap(),
            "https://ci.example.com/api/v3"
        );
        h.insert(HOST, "evil.example/x?".parse().unwrap());
        assert!(from_request(false).resolve(&h, None, false).is_err());
        let fixed = PublicBase::Fixed("https://m/api/v3".into());
        assert_eq!(fixed.resolve(&h, None, false).unwrap(), "https://m/api/v3");
    }

    #[test]
    fn bodies_without_upstream_urls_are_shared_not_copied() {
        let body = Bytes::from_static(b"{\"total_count\":0,\"artifacts\":[]}");
        assert_eq!(r().json(&body).as_ptr(), body.as_ptr());
    }
}
