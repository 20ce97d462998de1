//! Polling, for networks where GHES cannot reach the mirror: each repository
//! in `prefetch_poll_repos` has its completed runs listed every
//! `prefetch_poll_interval` (or GHES's longer `X-Poll-Interval` /
//! `Retry-After`), conditionally with the last ETag so an unchanged list
//! is a free 304. The first answer is the baseline; a run that shows up
//! later is queued.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::StatusCode;

use super::credential::Credential;
use super::fetch::get_with;
use super::metrics::PrefetchMetrics;
use super::queue::{Queue, RunJob};
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
        let asked = ["x-poll-interval", "retry-after"]
            .iter()
            .filter_map(|h| {
                response
                    .headers()
                    .get(*h)?
                    .to_str()
                    .ok()?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .map_or(Duration::ZERO, Duration::from_secs);
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
    #[test]
    fn run_ids_reads_the_list() {
        let ids = super::run_ids(br#"{"total_count":2,"workflow_runs":[{"id":5},{"id":7}]}"#);
        assert_eq!(ids, [5, 7].into_iter().collect());
        assert!(super::run_ids(b"nope").is_empty());
    }
}
