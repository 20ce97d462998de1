//! The bounded queue of runs waiting to be prefetched.
//!
//! A burst of completed runs (a release pipeline fanning out, a poller
//! catching up) must not grow memory without bound: past `prefetch_queue`
//! the oldest waiting run is dropped and counted. Dropping the oldest rather
//! than refusing the newest keeps the runs most likely to be downloaded soon.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::metrics::prefetch::PrefetchMetrics;

/// A run to prefetch: its repository, id, and the App installation that
/// announced it (from a webhook payload), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunJob {
    pub owner: String,
    pub name: String,
    pub run_id: u64,
    pub installation: Option<u64>,
}

pub struct Queue {
    items: Mutex<VecDeque<RunJob>>,
    capacity: usize,
    ready: Notify,
    metrics: Arc<PrefetchMetrics>,
}

impl Queue {
    pub fn new(capacity: usize, metrics: Arc<PrefetchMetrics>) -> Queue {
        Queue {
            items: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity: capacity.max(1),
            ready: Notify::new(),
            metrics,
        }
    }

    /// Adds a run; when full, the oldest waiting run makes room.
    pub fn push(&self, job: RunJob) {
        let mut items = self.lock();
        if items.len() >= self.capacity {
            if let Some(dropped) = items.pop_front() {
                tracing::warn!(
                    run = dropped.run_id,
                    "prefetch queue full: oldest waiting run dropped"
                );
                self.metrics.dropped.inc();
            }
        }
        items.push_back(job);
        self.metrics.queue_depth.set(items.len() as i64);
        drop(items);
        self.ready.notify_one();
    }

    /// The oldest waiting run, waiting for one if there is none.
    pub async fn pop(&self) -> RunJob {
        loop {
            let notified = self.ready.notified();
            if let Some(job) = self.take() {
                return job;
            }
            notified.await;
        }
    }

    fn take(&self) -> Option<RunJob> {
        let mut items = self.lock();
        let job = items.pop_front();
        self.metrics.queue_depth.set(items.len() as i64);
        if job.is_some() && !items.is_empty() {
            // Another worker may be waiting for the rest.
            self.ready.notify_one();
        }
        job
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<RunJob>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(run_id: u64) -> RunJob {
        RunJob {
            owner: "o".into(),
            name: "r".into(),
            run_id,
            installation: None,
        }
    }

    #[tokio::test]
    async fn full_queue_drops_the_oldest_and_counts_it() {
        let metrics = Arc::new(PrefetchMetrics::default());
        let q = Queue::new(2, metrics.clone());
        for id in 1..=3 {
            q.push(job(id));
        }
        assert_eq!(metrics.dropped.get(), 1);
        assert_eq!(metrics.queue_depth.get(), 2);
        assert_eq!(q.pop().await.run_id, 2);
        assert_eq!(q.pop().await.run_id, 3);
        assert_eq!(metrics.queue_depth.get(), 0);
    }

    #[tokio::test]
    async fn a_waiting_worker_wakes_on_push() {
        let q = Arc::new(Queue::new(4, Arc::default()));
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await }
        });
        tokio::task::yield_now().await;
        q.push(job(7));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(got.run_id, 7);
    }
}
