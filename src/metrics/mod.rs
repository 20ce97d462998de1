//! Prometheus metrics for `GET /metrics`.
//!
//! One [`Metrics`] per server, with its own registry (prometheus-client),
//! not a process-wide recorder: tests run several mirrors in one process and
//! each must report exactly its own traffic. No label carries token-derived
//! data: routes, cache outcomes, status classes and reasons only.

pub(crate) mod prefetch;
pub(crate) mod shared_store;

use crate::clock::now_secs;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::outcome::{CacheOutcome, Eviction};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    route: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NoLabels {}

/// Figures read from their owners at scrape time rather than mirrored in
/// gauges that could drift.
#[derive(Debug, Default, Clone, Copy)]
pub struct Live {
    pub store_bytes: u64,
    pub store_blobs: u64,
    pub fills_in_flight: u64,
    pub fill_waiters: u64,
}

/// What `/metrics` answers in. Prometheus text 0.0.4 unless the scraper
/// asks for OpenMetrics: it is what every scraper, `promtool check metrics`
/// and a curl-reading operator understand; Prometheus itself asks for
/// OpenMetrics first and gets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Prometheus,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when a media range of `Accept` names it with a non-zero
    /// `q`.
    pub fn negotiate(accept: Option<&http::HeaderValue>) -> Format {
        let accept = accept.and_then(|v| v.to_str().ok()).unwrap_or_default();
        let asks = accept.split(',').any(|range| {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or_default();
            let refused = params.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        });
        if asks {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The commit the binary was built from (`build.rs`), "unknown" outside a
/// git checkout.
pub const COMMIT: &str = env!("ARTIFACT_MIRROR_COMMIT");

/// Running totals since the start, for the status page's figures and its
/// last-hour chart (the deltas between samples).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Answers with a cache outcome: hit, revalidated, miss, coalesced,
    /// bypass, stale (`cache stats`' denominator).
    pub cache_answers: u64,
    /// Of those, hit, revalidated and coalesced.
    pub from_cache: u64,
    pub served_bytes: u64,
    pub fetched_bytes: u64,
}

/// Samples kept: one a minute for an hour, and the one before it.
const HISTORY: usize = 61;

/// Seconds in the window of the lowest `X-RateLimit-Remaining`.
const WINDOW: u64 = 60;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    upstream_rejected: Counter,
    served_from_store: Counter,
    fetched_from_upstream: Counter,
    not_kept: Counter,
    store_bytes: Gauge,
    store_blobs: Gauge,
    evictions: Family<ReasonLabel, Counter>,
    fills_in_flight: Gauge,
    fill_waiters: Gauge,
    rate_limit_saved: Counter,
    rate_limit_lowest: Family<NoLabels, Gauge>,
    log_lines_dropped: Counter,
    /// Lowest remaining per second of the last minute: `(second, lowest)`.
    remaining: Mutex<[(u64, u64); WINDOW as usize]>,
    cache_answers: AtomicU64,
    from_cache: AtomicU64,
    /// `(unix second, totals)`, oldest first, one a minute.
    history: Mutex<VecDeque<(u64, Totals)>>,
    /// Webhook deliveries, prefetched runs and bytes, the prefetch queue.
    prefetch: std::sync::Arc<prefetch::PrefetchMetrics>,
    shared_store: std::sync::Arc<shared_store::SharedStoreMetrics>,
}

fn duration_histogram() -> Histogram {
    // 1 ms to ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn prefetch(&self) -> &std::sync::Arc<prefetch::PrefetchMetrics> {
        &self.prefetch
    }

    pub fn shared_store(&self) -> &std::sync::Arc<shared_store::SharedStoreMetrics> {
        &self.shared_store
    }

    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("artifact_mirror"),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            upstream_requests: Family::default(),
            upstream_duration: Family::new_with_constructor(duration_histogram),
            upstream_rejected: Counter::default(),
            served_from_store: Counter::default(),
            fetched_from_upstream: Counter::default(),
            not_kept: Counter::default(),
            store_bytes: Gauge::default(),
            store_blobs: Gauge::default(),
            evictions: Family::default(),
            fills_in_flight: Gauge::default(),
            fill_waiters: Gauge::default(),
            rate_limit_saved: Counter::default(),
            rate_limit_lowest: Family::default(),
            log_lines_dropped: Counter::default(),
            remaining: Mutex::new([(0, 0); WINDOW as usize]),
            cache_answers: AtomicU64::new(0),
            from_cache: AtomicU64::new(0),
            // The start, so the first minute's chart has a baseline.
            history: Mutex::new(VecDeque::from([(now_secs(), Totals::default())])),
            prefetch: std::sync::Arc::default(),
            shared_store: std::sync::Arc::default(),
        };
        m.prefetch.register(&mut m.registry);
        m.shared_store.register(&mut m.registry);
        let r = &mut m.registry;
        r.register(
            "requests",
            "Requests answered, by route and cache outcome",
            m.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from a request's head to its response head (a zip's bytes follow), by route and cache outcome",
            Unit::Seconds,
            m.request_duration.clone(),
        );
        r.register(
            "build",
            "Version and git commit of the running binary",
            Info::new([("version", env!("CARGO_PKG_VERSION")), ("commit", COMMIT)]),
        );
        r.register(
            "upstream_requests",
            "Requests sent to GHES or a blob store, by route and status class",
            m.upstream_requests.clone(),
        );
        r.register_with_unit(
            "upstream_duration",
            "Time to upstream's response head",
            Unit::Seconds,
            m.upstream_duration.clone(),
        );
        r.register(
            "upstream_rejected",
            "Requests answered 503 because the upstream concurrency bound and its queue were full",
            m.upstream_rejected.clone(),
        );
        r.register_with_unit(
            "served_from_store",
            "Blob bytes sent to clients from the store (or a fill in progress)",
            Unit::Bytes,
            m.served_from_store.clone(),
        );
        r.register_with_unit(
            "fetched_from_upstream",
            "Blob bytes fetched from the blob store",
            Unit::Bytes,
            m.fetched_from_upstream.clone(),
        );
        r.register(
            "fills_not_kept",
            "Zips streamed to their clients but not stored: over max_blob_bytes or the quota, or the disk full",
            m.not_kept.clone(),
        );
        r.register_with_unit(
            "store",
            "Bytes of blobs in the store",
            Unit::Bytes,
            m.store_bytes.clone(),
        );
        r.register(
            "store_blobs",
            "Artifacts with a stored blob",
            m.store_blobs.clone(),
        );
        r.register(
            "evictions",
            "Blobs removed from the store, by reason",
            m.evictions.clone(),
        );
        // Every reason from the start: a dashboard sees 0, not nothing.
        for reason in [Eviction::Quota, Eviction::Expired, Eviction::Deleted] {
            m.evictions
                .get_or_create(&ReasonLabel {
                    reason: reason.label(),
                })
                .inc_by(0);
        }
        r.register(
            "fills_in_flight",
            "Blob fills under way",
            m.fills_in_flight.clone(),
        );
        r.register(
            "fill_waiters",
            "Client responses streaming from a fill in progress",
            m.fill_waiters.clone(),
        );
        r.register(
            "rate_limit_units_saved",
            "Calls a direct client would have paid for that the mirror answered with a fresh entry, a free 304 or a shared call",
            m.rate_limit_saved.clone(),
        );
        r.register(
            "rate_limit_remaining_lowest",
            "Lowest X-RateLimit-Remaining seen from GHES in the last minute (absent when none)",
            m.rate_limit_lowest.clone(),
        );
        r.register(
            "log_lines_dropped",
            "Log lines dropped because the log writer's queue was full (a slow reader of stderr); process-wide",
            m.log_lines_dropped.clone(),
        );
        m
    }

    /// One answered request whose response head was ready after `seconds`;
    /// `outcome` is `None` on routes without a cache.
    pub fn request(&self, route: &'static str, outcome: Option<CacheOutcome>, seconds: f64) {
        let cache = outcome.map_or("none", CacheOutcome::label);
        let labels = RequestLabels { route, cache };
        self.request_duration
            .get_or_create(&labels)
            .observe(seconds);
        self.requests.get_or_create(&labels).inc();
        if let Some(from_cache) = outcome.and_then(CacheOutcome::answered_by_cache) {
            self.cache_answers.fetch_add(1, Ordering::Relaxed);
            if from_cache {
                self.from_cache.fetch_add(1, Ordering::Relaxed);
            }
        }
        if outcome.is_some_and(CacheOutcome::saves_rate_limit) && route != "blob" {
            self.rate_limit_saved.inc();
        }
    }

    /// One upstream answer (or failure: `status` `None`) after `seconds`.
    pub fn upstream(&self, route: &'static str, status: Option<u16>, seconds: f64) {
        let status = match status {
            Some(100..=199) => "1xx",
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            _ => "error",
        };
        self.upstream_requests
            .get_or_create(&UpstreamLabels { route, status })
            .inc();
        self.upstream_duration
            .get_or_create(&RouteLabel { route })
            .observe(seconds);
    }

    pub fn upstream_rejected(&self) {
        self.upstream_rejected.inc();
    }

    pub fn served_from_store(&self, bytes: u64) {
        self.served_from_store.inc_by(bytes);
    }

    pub fn fetched_from_upstream(&self, bytes: u64) {
        self.fetched_from_upstream.inc_by(bytes);
    }

    pub fn not_kept(&self) {
        self.not_kept.inc();
    }

    pub fn evicted(&self, reason: Eviction) {
        self.evictions
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    /// Notes an `X-RateLimit-Remaining` value from GHES.
    pub fn rate_limit_remaining(&self, remaining: u64) {
        let now = now_secs();
        let mut window = self.remaining.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut window[(now % WINDOW) as usize];
        if slot.0 != now {
            *slot = (now, remaining);
        } else {
            slot.1 = slot.1.min(remaining);
        }
    }

    /// The totals now.
    pub fn totals(&self) -> Totals {
        Totals {
            cache_answers: self.cache_answers.load(Ordering::Relaxed),
            from_cache: self.from_cache.load(Ordering::Relaxed),
            served_bytes: self.served_from_store.get(),
            fetched_bytes: self.fetched_from_upstream.get(),
        }
    }

    /// Adds a sample of the totals to the last hour's history; called once
    /// a minute.
    pub fn sample(&self) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back((now_secs(), self.totals()));
    }

    /// The samples, oldest first.
    pub fn history(&self) -> Vec<(u64, Totals)> {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history.iter().copied().collect()
    }

    /// Lowest `X-RateLimit-Remaining` of the last minute.
    pub fn lowest_remaining(&self) -> Option<u64> {
        let now = now_secs();
        let window = self.remaining.lock().unwrap_or_else(|p| p.into_inner());
        window
            .iter()
            .filter(|(at, _)| *at != 0 && now.saturating_sub(*at) < WINDOW)
            .map(|(_, v)| *v)
            .min()
    }

    /// Raises the dropped-lines counter to `total`, the log writer's own
    /// count (the caller reads it at scrape time, so the two cannot drift).
    pub(crate) fn log_dropped_lines(&self, total: u64) {
        self.log_lines_dropped
            .inner()
            .fetch_max(total, Ordering::Relaxed);
    }

    /// The exposition in `format`.
    pub fn render(&self, live: Live, format: Format) -> String {
        let gauge = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        gauge(&self.store_bytes, live.store_bytes);
        gauge(&self.store_blobs, live.store_blobs);
        gauge(&self.fills_in_flight, live.fills_in_flight);
        gauge(&self.fill_waiters, live.fill_waiters);
        match self.lowest_remaining() {
            Some(v) => gauge(&self.rate_limit_lowest.get_or_create(&NoLabels {}), v),
            None => self.rate_limit_lowest.clear(),
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
        };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn counts_by_route_and_outcome_and_saves_only_for_api_routes() {
        let m = Metrics::new();
        m.request(
            "list_repo_artifacts",
            Some(CacheOutcome::Revalidated),
            0.002,
        );
        m.request(
            "list_repo_artifacts",
            Some(CacheOutcome::Revalidated),
            0.002,
        );
        m.request("list_repo_artifacts", Some(CacheOutcome::Miss), 0.2);
        m.request("blob", Some(CacheOutcome::Hit), 0.001);
        m.request("forward", None, 0.05);
        let text = m.render(Live::default(), Format::OpenMetrics);
        assert_eq!(
            line(&text, "artifact_mirror_requests_total{route=\"list_repo_artifacts\",cache=\"revalidated\"}"),
            Some("artifact_mirror_requests_total{route=\"list_repo_artifacts\",cache=\"revalidated\"} 2")
        );
        assert!(text.contains("route=\"forward\",cache=\"none\"} 1"));
        assert!(text.contains("artifact_mirror_rate_limit_units_saved_total 2\n"));
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains(
            "artifact_mirror_request_duration_seconds_count{route=\"list_repo_artifacts\",cache=\"revalidated\"} 2\n"
        ), "{text}");
        assert!(text.contains(
            "artifact_mirror_request_duration_seconds_bucket{le=\"0.256\",route=\"list_repo_artifacts\",cache=\"miss\"} 1\n"
        ), "{text}");
        assert!(
            text.contains(&format!(
                "artifact_mirror_build_info{{version=\"{}\",commit=\"{COMMIT}\"}} 1\n",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
    }

    #[test]
    fn prometheus_text_unless_openmetrics_is_asked_for() {
        let negotiate =
            |accept: &str| Format::negotiate(Some(&http::HeaderValue::from_str(accept).unwrap()));
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(negotiate("*/*"), Format::Prometheus);
        assert_eq!(negotiate("text/plain;version=0.0.4"), Format::Prometheus);
        assert_eq!(
            negotiate("application/openmetrics-text;version=1.0.0;q=0"),
            Format::Prometheus
        );
        // What Prometheus 2.x sends.
        assert_eq!(
            negotiate("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
            Format::OpenMetrics
        );
        let m = Metrics::new();
        m.request("forward", None, 0.01);
        let text = m.render(Live::default(), Format::Prometheus);
        assert!(
            text.contains("# TYPE artifact_mirror_requests_total counter\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn lowest_remaining_is_absent_until_seen() {
        let m = Metrics::new();
        assert!(!m
            .render(Live::default(), Format::Prometheus)
            .contains("\nartifact_mirror_rate_limit_remaining_lowest "));
        m.rate_limit_remaining(4000);
        m.rate_limit_remaining(3990);
        m.rate_limit_remaining(4500);
        let text = m.render(
            Live {
                store_bytes: 10,
                ..Live::default()
            },
            Format::Prometheus,
        );
        assert!(
            text.contains("artifact_mirror_rate_limit_remaining_lowest 3990\n"),
            "{text}"
        );
        assert!(text.contains("artifact_mirror_store_bytes 10\n"), "{text}");
    }

    #[test]
    fn dropped_log_lines_follow_the_writer_count() {
        let m = Metrics::new();
        let text = m.render(Live::default(), Format::Prometheus);
        assert!(
            text.contains("\nartifact_mirror_log_lines_dropped_total 0\n"),
            "{text}"
        );
        m.log_dropped_lines(7);
        m.log_dropped_lines(3);
        let text = m.render(Live::default(), Format::Prometheus);
        assert!(
            text.contains("\nartifact_mirror_log_lines_dropped_total 7\n"),
            "{text}"
        );
    }
}
