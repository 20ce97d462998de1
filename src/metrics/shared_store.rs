//! The shared store's Prometheus series (`shared_store_*`), registered in
//! the server's one registry; all zero when no `shared_store` is set.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Which way blob bytes moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Uploaded to the shared store.
    Up,
    /// Read from it into a local fill.
    Down,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

pub struct SharedStoreMetrics {
    hits: Counter,
    misses: Counter,
    uploads: Counter,
    upload_failures: Counter,
    degraded: Counter,
    bytes: Family<DirectionLabel, Counter>,
    duration: Histogram,
    read_duration: Histogram,
}

impl Default for SharedStoreMetrics {
    fn default() -> Self {
        SharedStoreMetrics {
            hits: Counter::default(),
            misses: Counter::default(),
            uploads: Counter::default(),
            upload_failures: Counter::default(),
            degraded: Counter::default(),
            bytes: Family::default(),
            // 1 ms to ~65 s: a record read to a large upload.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            read_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        }
    }
}

impl SharedStoreMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "shared_store_hits",
            "Local misses served from the shared store",
            self.hits.clone(),
        );
        r.register(
            "shared_store_misses",
            "Local misses the shared store had no record for",
            self.misses.clone(),
        );
        r.register(
            "shared_store_uploads",
            "Blobs uploaded to the shared store",
            self.uploads.clone(),
        );
        r.register(
            "shared_store_upload_failures",
            "Artifacts not published to the shared store: its reference, blob upload or record failed (the download went on)",
            self.upload_failures.clone(),
        );
        r.register(
            "shared_store_degraded",
            "Shared store calls that failed or timed out, answered from GHES or the local disk instead",
            self.degraded.clone(),
        );
        r.register_with_unit(
            "shared_store",
            "Blob bytes moved to (up) or from (down) the shared store",
            Unit::Bytes,
            self.bytes.clone(),
        );
        for d in [Direction::Up, Direction::Down] {
            self.bytes(d, 0);
        }
        r.register_with_unit(
            "shared_store_upload_duration",
            "Time to publish a blob (check, upload, record)",
            Unit::Seconds,
            self.duration.clone(),
        );
        r.register_with_unit(
            "shared_store_read_duration",
            "Time to a record, or to a blob's response head, from the shared store (failures included)",
            Unit::Seconds,
            self.read_duration.clone(),
        );
    }

    pub fn hit(&self) {
        self.hits.inc();
    }

    pub fn miss(&self) {
        self.misses.inc();
    }

    pub fn uploaded(&self, bytes: u64) {
        self.uploads.inc();
        self.bytes(Direction::Up, bytes);
    }

    pub fn upload_failed(&self) {
        self.upload_failures.inc();
    }

    pub fn degraded(&self) {
        self.degraded.inc();
    }

    pub fn bytes(&self, direction: Direction, n: u64) {
        self.bytes
            .get_or_create(&DirectionLabel {
                direction: direction.label(),
            })
            .inc_by(n);
    }

    pub fn observe(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn observe_read(&self, elapsed: Duration) {
        self.read_duration.observe(elapsed.as_secs_f64());
    }
}
