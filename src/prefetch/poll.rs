//! Polling, for networks where GHES cannot reach the mirror: each repository
//! in `prefetch_poll_repos` has its completed runs listed every
//! `prefetch_poll_interval` (or GHES's longer `X-Poll-Interval` /
//! `Retry-After`), conditionally with the last ETag so an unchanged list
//! is a free 304. The first answer is the baseline; a run that shows up
//! later is queued.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderValue};
use http::HeaderMap;
use http::StatusCode;

use super::credential::Credential;
use super::fetch::get_with;
use super::queue::{Queue, RunJob};
use crate::metrics::prefetch::PrefetchMetrics;
use crate::upstream::Upstream;

/// Largest runs-list body read.
const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;
/// Longest wait GHES may ask for between polls.
const MAX_WAIT: Duration = Duration::from_secs(3600);

pub struct Poller {
    pub upstream: Upstream,
    pub credential: Arc<Credential>,
    pub api_base: String,
    pub owner: String,
    pub name: String,
    pub interval: Duration,
    pub installation: Option<u64>,
    pub queue: Arc<Queue>,
    pub metrics: Arc<PrefetchMetrics>,
}

impl Poller {
    /// Polls until the task is aborted.
    pub async fn run(self) {
        let path = format!(
            "{}/repos/{}/{}/actions/runs?status=completed&per_page=100",
            self.api_base, self.owner, self.name
        );
        let mut etag: Option<HeaderValue> = None;
        // `None` until the first full answer: that one is the baseline.
        let mut known: Option<HashSet<u64>> = None;
        loop {
            let asked = self.poll(&path, &mut etag, &mut known).await;
            let wait = asked.max(self.interval).min(MAX_WAIT);
            tokio::time::sleep(wait).await;
        }
    }

    /// One poll; answers how long GHES asked to wait (zero if it did not).
    async fn poll(
        &self,
        path: &str,
        etag: &mut Option<HeaderValue>,
        known: &mut Option<HashSet<u64>>,
    ) -> Duration {
        let auth = match self.credential.authorization(self.installation).await {
            Ok(auth) => auth,
            Err(e) => {
                tracing::warn!(error = %e, "prefetch poll: no credential");
                self.metrics.errors.inc();
                return Duration::ZERO;
            }
        };
        let Some(response) =
            get_with(&self.upstream, path, &auth, "prefetch_poll", etag.as_ref()).await
        else {
            self.metrics.errors.inc();
            return Duration::ZERO;
        };
        let asked = asked_wait(response.headers(), SystemTime::now());
        match response.status() {
            StatusCode::NOT_MODIFIED => {}
            StatusCode::OK => {
                let new_etag = response.headers().get(header::ETAG).cloned();
                let Ok(body) =
                    crate::body::collect_limited(response.into_body(), MAX_LIST_BYTES).await
                else {
                    self.metrics.errors.inc();
                    return asked;
                };
                let ids = run_ids(&body);
                if let Some(previous) = known.as_ref() {
                    for &run_id in ids.iter().filter(|id| !previous.contains(id)) {
                        tracing::info!(run = run_id, "poll: completed run queued for prefetch");
                        self.queue.push(RunJob {
                            owner: self.owner.clone(),
                            name: self.name.clone(),
                            run_id,
                            installation: self.installation,
                        });
                    }
                }
                *known = Some(ids);
                *etag = new_etag;
            }
            status => {
                tracing::warn!(%status, repo = %format!("{}/{}", self.owner, self.name), "prefetch poll refused");
                self.metrics.errors.inc();
            }
        }
        asked
    }
}

/// How long GHES asks a poller to wait: the longest of `X-Poll-Interval`,
/// `Retry-After` (seconds or an HTTP date) and, when the primary rate limit
/// is spent (`X-RateLimit-Remaining: 0`), the time to `X-RateLimit-Reset`.
fn asked_wait(headers: &HeaderMap, now: SystemTime) -> Duration {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    let seconds = |name: &str| text(name)?.parse::<u64>().ok().map(Duration::from_secs);
    let until = |t: SystemTime| t.duration_since(now).unwrap_or(Duration::ZERO);
    let retry_after = seconds("retry-after").or_else(|| {
        let date = httpdate::parse_http_date(text("retry-after")?).ok()?;
        Some(until(date))
    });
    let reset = (text("x-ratelimit-remaining") == Some("0"))
        .then(|| text("x-ratelimit-reset")?.parse::<u64>().ok())
        .flatten()
        .map(|t| until(UNIX_EPOCH + Duration::from_secs(t)));
    [seconds("x-poll-interval"), retry_after, reset]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(Duration::ZERO)
}

/// The ids of a runs list (`workflow_runs[].id`).
fn run_ids(body: &[u8]) -> HashSet<u64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("workflow_runs")?
                .as_array()
                .map(|runs| runs.iter().filter_map(|r| r.get("id")?.as_u64()).collect())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_wait_ghes_asks_for_wins() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let wait = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            asked_wait(&h, now).as_secs()
        };
        assert_eq!(wait(&[]), 0);
        assert_eq!(wait(&[("x-poll-interval", "60")]), 60);
        assert_eq!(
            wait(&[("x-poll-interval", "60"), ("retry-after", "120")]),
            120
        );
        let in_90s = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(wait(&[("retry-after", &in_90s)]), 90);
        let reset = (1_700_000_000u64 + 300).to_string();
        assert_eq!(
            wait(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset)
            ]),
            300
        );
        assert_eq!(
            wait(&[
                ("x-ratelimit-remaining", "7"),
                ("x-ratelimit-reset", &reset)
            ]),
            0,
            "a limit not spent asks for nothing"
        );
    }

    #[test]
    fn run_ids_reads_the_list() {
        let ids = run_ids(br#"{"total_count":2,"workflow_runs":[{"id":5},{"id":7}]}"#);
        assert_eq!(ids, [5, 7].into_iter().collect());
        assert!(run_ids(b"nope").is_empty());
    }
}
