//! The one HTTP client toward GHES, and the forwarding of a client request.
//!
//! Every request this client sends goes to the configured API host: the URI
//! is always rebuilt from the configured base, so a client's `Authorization`
//! cannot be carried anywhere else. Redirects are never followed; a 302 goes
//! back to the client as upstream sent it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::access_log::UpstreamStatus;
use crate::body::{Body, StallLimited};
use crate::config::Settings;
use crate::credential::CredentialId;
use crate::error::MirrorError;
use crate::metrics::Metrics;

/// `Via` value this proxy adds (RFC 9110 §7.6.3).
const VIA: &str = "1.1 artifact-mirror";

/// Where the request came from, as far as forwarding headers go, and the
/// route it is for (the label of the upstream requests it causes).
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    pub peer: IpAddr,
    /// `http` or `https`: how the client reached the mirror.
    pub tls: bool,
    pub route: &'static str,
    /// Who the request's `Authorization` names; computed once per connection
    /// while the header repeats (`ConnCredential`).
    pub credential: CredentialId,
}

impl ClientInfo {
    /// The same client, on behalf of another route.
    pub fn for_route(self, route: &'static str) -> ClientInfo {
        ClientInfo { route, ..self }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error(transparent)]
    Tls(#[from] crate::tls::ClientTlsError),
    #[error("upstream URL has no usable host: {0}")]
    BadUpstream(String),
}

/// The client for redirect targets (blob storage). Separate from
/// [`Upstream`] on purpose: it builds its requests from a URL and a range
/// only, so no client header, `Authorization` above all, can reach a blob
/// host (blob stores refuse a second auth mechanism, and a token must never
/// leave for another host).
#[derive(Clone)]
pub struct BlobFetcher {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl BlobFetcher {
    pub fn new(settings: &Settings, metrics: Arc<Metrics>) -> Result<Self, UpstreamSetupError> {
        let client = client(settings, true)?;
        Ok(BlobFetcher {
            client,
            timeout: settings.upstream_timeout.0,
            metrics,
        })
    }

    /// GET `uri`, from byte `from` on when resuming. Errors are text: they
    /// end up in logs, which must never see the signed query.
    pub async fn get(&self, uri: &Uri, from: Option<u64>) -> Result<Response<Body>, String> {
        let mut request = Request::get(uri.clone())
            .header(header::USER_AGENT, "artifact-mirror")
            .body(crate::body::empty())
            .map_err(|e| e.to_string())?;
        if let Some(from) = from {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes={from}-")) {
                request.headers_mut().insert(header::RANGE, v);
            }
        }
        let shown = format!(
            "{}{}",
            uri.authority().map_or("", |a| a.as_str()),
            uri.path()
        );
        let started = Instant::now();
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| {
                format!(
                    "blob store {shown} did not answer within {:?}",
                    self.timeout
                )
            })
            .and_then(|r| r.map_err(|e| format!("blob store {shown}: {}", describe(&e))));
        self.metrics.upstream(
            "blob_store",
            response.as_ref().ok().map(|r| r.status().as_u16()),
            started.elapsed().as_secs_f64(),
        );
        let timeout = self.timeout;
        response.map(|r| r.map(|b| StallLimited::new(b, timeout).boxed()))
    }
}

/// The pooled HTTPS-or-HTTP client both use; `need_roots` when TLS is sure
/// to be used (blob stores may redirect anywhere, so they always need them).
fn client(
    settings: &Settings,
    need_roots: bool,
) -> Result<Client<HttpsConnector<HttpConnector>, Body>, UpstreamSetupError> {
    let tls = crate::tls::client_config(settings.ca_file.as_deref(), need_roots)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(settings.connect_timeout.0));
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .build(connector);
    Ok(client)
}

#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    scheme: Scheme,
    authority: Authority,
    host_header: HeaderValue,
    timeout: Duration,
    trust_forwarded: bool,
    slots: Arc<Slots>,
    metrics: Arc<Metrics>,
}

/// The bound on requests to GHES in flight, and on those waiting for one.
struct Slots {
    running: Semaphore,
    waiting: AtomicUsize,
    queue: usize,
    /// Longest wait in the queue (the upstream timeout).
    wait: Duration,
}

impl Slots {
    /// A slot, once one is free; `None` when the queue is full already.
    async fn acquire(&self) -> Option<SemaphorePermit<'_>> {
        if let Ok(permit) = self.running.try_acquire() {
            return Some(permit);
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let permit = if queued < self.queue {
            tokio::time::timeout(self.wait, self.running.acquire())
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        permit
    }
}

impl Upstream {
    pub fn new(settings: &Settings, metrics: Arc<Metrics>) -> Result<Self, UpstreamSetupError> {
        let url = &settings.upstream;
        let bad = || UpstreamSetupError::BadUpstream(url.to_string());
        let authority: Authority = url[url::Position::BeforeHost..url::Position::AfterPort]
            .parse()
            .map_err(|_| bad())?;
        let scheme: Scheme = url.scheme().parse().map_err(|_| bad())?;
        let host_header = HeaderValue::from_str(authority.as_str()).map_err(|_| bad())?;

        let client = client(settings, scheme == Scheme::HTTPS)?;
        Ok(Upstream {
            client,
            scheme,
            authority,
            host_header,
            timeout: settings.upstream_timeout.0,
            trust_forwarded: settings.trust_forwarded_headers,
            slots: Arc::new(Slots {
                running: Semaphore::new(settings.max_upstream_requests),
                waiting: AtomicUsize::new(0),
                queue: settings.upstream_queue,
                wait: settings.upstream_timeout.0,
            }),
            metrics,
        })
    }

    /// Sends the client's request to the same path upstream and hands back
    /// upstream's answer, bodies streamed both ways.
    pub async fn forward(
        &self,
        request: Request<Body>,
        client: ClientInfo,
    ) -> Result<Response<Body>, MirrorError> {
        let (mut parts, body) = request.into_parts();
        parts.uri = self.uri_for(parts.uri.path_and_query())?;
        // Toward GHES always HTTP/1.1 semantics on the request line; the
        // connector negotiates h2 by ALPN on its own.
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(header::HOST, self.host_header.clone());
        add_forwarding(&mut parts.headers, client, self.trust_forwarded);
        parts
            .headers
            .append(header::VIA, HeaderValue::from_static(VIA));

        let request = Request::from_parts(parts, body);
        // The slot is held until upstream's answer head: bodies toward the
        // client (JSON, small) stream on without one.
        let Some(_slot) = self.slots.acquire().await else {
            self.metrics.upstream_rejected();
            return Err(MirrorError::Overloaded(1));
        };
        let started = Instant::now();
        let response = match tokio::time::timeout(self.timeout, self.client.request(request)).await
        {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(MirrorError::UpstreamUnreachable(describe(&e))),
            Err(_) => Err(MirrorError::UpstreamTimeout(self.timeout)),
        };
        self.metrics.upstream(
            client.route,
            response.as_ref().ok().map(|r| r.status().as_u16()),
            started.elapsed().as_secs_f64(),
        );
        let response = response?;
        if let Some(remaining) = response
            .headers()
            .get("x-ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
        {
            self.metrics.rate_limit_remaining(remaining);
        }

        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .append(header::VIA, HeaderValue::from_static(VIA));
        parts.extensions.insert(UpstreamStatus(parts.status));
        parts.version = http::Version::HTTP_11;
        Ok(Response::from_parts(
            parts,
            StallLimited::new(body, self.timeout).boxed(),
        ))
    }

    fn uri_for(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, MirrorError> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query.map_or("/", PathAndQuery::as_str))
            .build()
            .map_err(|e| MirrorError::BadRequest(e.to_string()))
    }
}

/// Forwarding headers: with `trust_forwarded_headers` the hop in front
/// of the mirror vouches for the client's, so the chain is kept and this
/// hop appended; otherwise every one the client wrote is dropped (any of
/// them could make GHES's audit log or rate limiter name someone else)
/// and only the mirror's own `X-Forwarded-For`/`-Proto` go upstream.
fn add_forwarding(headers: &mut HeaderMap, client: ClientInfo, trusted: bool) {
    let proto = if client.tls { "https" } else { "http" };
    let peer = client.peer.to_string();
    let (xff, forwarded) = if trusted {
        let chain = |name: &HeaderName| {
            let values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(", "))
        };
        // RFC 7239 §6: an IPv6 node is quoted and bracketed.
        let node = match client.peer {
            IpAddr::V4(_) => peer.clone(),
            IpAddr::V6(_) => format!("\"[{peer}]\""),
        };
        (
            chain(&X_FORWARDED_FOR).map_or_else(|| peer.clone(), |c| format!("{c}, {peer}")),
            chain(&FORWARDED).map(|c| format!("{c}, for={node};proto={proto}")),
        )
    } else {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|name| is_forwarding(name))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
        (peer, None)
    };
    for (name, value) in [(X_FORWARDED_FOR, Some(xff)), (FORWARDED, forwarded)] {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(name, value);
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
}

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Whether `name` says who the client is or how it reached a proxy: every
/// `X-Forwarded-*`, and the others that GHES's stack (Rails, Rack, nginx)
/// or a CDN reads for the client's address, scheme, host or port. The one
/// list of them, so none is forgotten by one caller.
fn is_forwarding(name: &HeaderName) -> bool {
    const OTHERS: &[&str] = &[
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "client-ip",
        "true-client-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "front-end-https",
        "x-url-scheme",
    ];
    name.as_str().starts_with("x-forwarded-") || OTHERS.contains(&name.as_str())
}

/// Removes the headers that describe one connection rather than the message
/// (RFC 9110 §7.6.1), including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// The error chain in one line; hyper's top-level message alone ("client
/// error (Connect)") does not say what went wrong.
fn describe(error: &hyper_util::client::legacy::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The blob store URL a download endpoint's 302 points at: only an
/// absolute `Location` (scheme and host) can be fetched from elsewhere.
pub(crate) fn blob_location(headers: &HeaderMap) -> Option<Uri> {
    headers
        .get(header::LOCATION)?
        .to_str()
        .ok()?
        .parse::<Uri>()
        .ok()
        .filter(|u| u.scheme().is_some() && u.authority().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, X-Secret-Hop".parse().unwrap(),
        );
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        h.insert(header::PROXY_AUTHORIZATION, "Basic eA==".parse().unwrap());
        h.insert(header::AUTHORIZATION, "token x".parse().unwrap());
        h.insert(header::ETAG, "W/\"1\"".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "etag"]);
    }

    #[test]
    fn forwarding_headers_are_dropped_unless_trusted() {
        let forged = || {
            let mut h = HeaderMap::new();
            for (name, value) in [
                ("forwarded", "for=198.51.100.7"),
                ("x-forwarded-for", "198.51.100.7"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-anything", "1"),
                ("x-real-ip", "198.51.100.7"),
                ("client-ip", "198.51.100.7"),
                ("via", "1.1 lb"),
            ] {
                h.insert(name, value.parse().unwrap());
            }
            h
        };
        let client = ClientInfo {
            peer: "2001:db8::1".parse().unwrap(),
            tls: false,
            route: "",
            credential: CredentialId::Anonymous,
        };
        let mut h = forged();
        add_forwarding(&mut h, client, false);
        let mut left: Vec<_> = h.iter().map(|(k, v)| format!("{k}: {v:?}")).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                r#"via: "1.1 lb""#,
                r#"x-forwarded-for: "2001:db8::1""#,
                r#"x-forwarded-proto: "http""#,
            ]
        );

        let mut h = forged();
        add_forwarding(&mut h, client, true);
        assert_eq!(h["x-forwarded-for"], "198.51.100.7, 2001:db8::1");
        assert_eq!(
            h["forwarded"],
            r#"for=198.51.100.7, for="[2001:db8::1]";proto=http"#
        );
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-real-ip"], "198.51.100.7");
    }
}
