//! The running server's `/metrics`, read by `cache stats`: the hit ratio
//! since the server started and its view of the store. The Prometheus text
//! format is parsed just enough for three metric families; a server without
//! the endpoint (404) makes the ratio "unavailable", not an error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

/// Cache outcomes of `artifact_mirror_requests_total{cache="…"}`; the
/// first three are answers the cache gave without a body from upstream.
pub const SERVED_BY_CACHE: [&str; 3] = ["hit", "revalidated", "coalesced"];
pub const OUTCOMES: [&str; 6] = ["hit", "revalidated", "miss", "coalesced", "bypass", "stale"];

/// Largest `/metrics` answer read.
const MAX_BYTES: usize = 8 * 1024 * 1024;

/// What `cache stats` shows from `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Requests per cache outcome, summed over routes.
    pub outcomes: BTreeMap<String, f64>,
    /// `(hit + revalidated + coalesced) / all outcomes`; `None` before any.
    pub hit_ratio: Option<f64>,
    pub store_bytes: Option<f64>,
    pub store_blobs: Option<f64>,
}

/// Reads the three families out of Prometheus text.
pub fn parse(text: &str) -> Figures {
    let mut figures = Figures::default();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        match name {
            "artifact_mirror_requests_total" => {
                let cache = labels
                    .iter()
                    .find(|(k, _)| k == "cache")
                    .map(|(_, v)| v.as_str());
                if let Some(cache) = cache.filter(|c| OUTCOMES.contains(c)) {
                    *figures.outcomes.entry(cache.to_owned()).or_default() += value;
                }
            }
            "artifact_mirror_store_bytes" => figures.store_bytes = Some(value),
            "artifact_mirror_store_blobs" => figures.store_blobs = Some(value),
            _ => {}
        }
    }
    let total: f64 = figures.outcomes.values().sum();
    let served: f64 = SERVED_BY_CACHE
        .iter()
        .filter_map(|c| figures.outcomes.get(*c))
        .sum();
    figures.hit_ratio = (total > 0.0).then(|| served / total);
    figures
}

/// A sample's label pairs, in order.
type Labels = Vec<(String, String)>;

/// `name{k="v",…} value [timestamp]` → parts; `None` for what it cannot read.
fn sample(line: &str) -> Option<(&str, Labels, f64)> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// Parses `k="v",…}`; returns the pairs and what follows the `}`.
fn label_set(mut s: &str) -> Option<(Labels, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = s.split_once('=')?;
        let mut chars = after.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_owned(), value));
        s = &after[end + 2..];
    }
}

/// GET `http://addr/metrics` within `limit`; the error is the reason the
/// figures are unavailable, ready for a message.
pub async fn fetch(addr: SocketAddr, limit: Duration) -> Result<Figures, String> {
    let url = format!("http://{addr}/metrics");
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = Request::get(url.as_str())
        .header(http::header::ACCEPT, "text/plain")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(format!(
                    "the server has no /metrics (GET {url} answered 404)"
                ))
            }
            other => return Err(format!("GET {url} answered {other}")),
        }
        let mut body = response.into_body();
        let mut text = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("GET {url}: {e}"))?;
            if let Ok(data) = frame.into_data() {
                if text.len() + data.len() > MAX_BYTES {
                    return Err(format!("GET {url}: answer larger than {MAX_BYTES} bytes"));
                }
                text.extend_from_slice(&data);
            }
        }
        Ok(parse(&String::from_utf8_lossy(&text)))
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| format!("GET {url}: no answer within {limit:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_ratio_sums_outcomes_over_routes() {
        let text = r#"
# HELP artifact_mirror_requests_total Requests by route and cache outcome.
# TYPE artifact_mirror_requests_total counter
artifact_mirror_requests_total{route="list_repo_artifacts",cache="hit"} 4
artifact_mirror_requests_total{route="list_repo_artifacts",cache="revalidated"} 3
artifact_mirror_requests_total{route="get_artifact",cache="miss"} 5
artifact_mirror_requests_total{cache="coalesced",route="download_artifact"} 1 1700000000000
artifact_mirror_requests_total{route="download_artifact",cache="hit"} 2
artifact_mirror_requests_total{route="get_artifact",cache="bypass"} 3
artifact_mirror_requests_total{route="get_artifact",cache="stale"} 2
artifact_mirror_requests_total{route="forward",cache=""} 100
artifact_mirror_requests_total{route="healthz"} 7
artifact_mirror_requests_other{route="x",cache="hit"} 1000
artifact_mirror_store_bytes 123456
artifact_mirror_store_blobs 3
garbage line
"#;
        let f = parse(text);
        assert_eq!(f.outcomes["hit"], 6.0);
        assert_eq!(f.outcomes.values().sum::<f64>(), 20.0);
        assert_eq!(f.hit_ratio, Some(0.5));
        assert_eq!(f.store_bytes, Some(123_456.0));
        assert_eq!(f.store_blobs, Some(3.0));
    }

    #[test]
    fn no_outcomes_no_ratio_and_escapes_parse() {
        let f = parse("artifact_mirror_requests_total{route=\"a\\\"b,c\",cache=\"miss\"} 0\n");
        assert_eq!(f.outcomes["miss"], 0.0);
        assert_eq!(f.hit_ratio, None);
        assert_eq!(parse("").hit_ratio, None);
        let (_, labels, _) = sample(r#"m{route="a\"b,c",cache="hit"} 1"#).unwrap();
        assert_eq!(labels[0].1, "a\"b,c");
        assert_eq!(labels[1], ("cache".into(), "hit".into()));
    }
}
