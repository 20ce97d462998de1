//! Single flight: concurrent callers with the same key share one run of the
//! work. The first caller runs it; the others wait for its result. If the
//! running caller goes away mid-way (its client hung up), a waiting caller
//! runs the work itself instead of waiting for nothing.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

pub struct Flights<K, V> {
    running: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            running: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Flights<K, V> {
    /// Runs `work` unless a run for `key` is under way, in which case its
    /// result is shared. Returns the value and whether it was shared.
    pub async fn run<F, Fut>(&self, key: &K, work: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = self
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let mut ran = false;
        let value = cell
            .get_or_init(|| {
                ran = true;
                work()
            })
            .await
            .clone();
        let mut running = self.lock();
        if running.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            running.remove(key);
        }
        (value, !ran)
    }

    /// Runs in flight now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<OnceCell<V>>>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single inserts and removes), so a poisoned lock is still usable.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights = Arc::new(Flights::<u8, usize>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (flights, runs) = (flights.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                flights
                    .run(&1, || async {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        runs.fetch_add(1, Ordering::SeqCst) + 100
                    })
                    .await
            }));
        }
        let mut shared = 0;
        for t in tasks {
            let (v, joined) = t.await.unwrap();
            assert_eq!(v, 100);
            shared += usize::from(joined);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(shared, 19);
        assert!(flights.is_empty());
        // Done runs are not reused.
        let (v, joined) = flights.run(&1, || async { 7 }).await;
        assert_eq!((v, joined), (7, false));
    }

    #[tokio::test]
    async fn a_waiter_takes_over_when_the_runner_goes_away() {
        let flights = Arc::new(Flights::<u8, &'static str>::default());
        let f = flights.clone();
        let first =
            tokio::spawn(async move { f.run(&1, std::future::pending::<&'static str>).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let f = flights.clone();
        let second = tokio::spawn(async move { f.run(&1, || async { "second" }).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        first.abort();
        let (v, _) = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the waiter finishes")
            .unwrap();
        assert_eq!(v, "second");
    }
}
