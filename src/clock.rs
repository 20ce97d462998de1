//! Wall-clock time as the Unix numbers the index stores and URLs carry.
//!
//! Every wall-clock read in the product goes through [`now`], so tests can
//! move the mirror's time forward ([`advance`]) instead of sleeping while
//! grants age, cache entries go stale or signed URLs expire. Monotonic
//! timers (tokio's, for timeouts) do not read this clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far tests have moved the clock, in milliseconds; 0 in production.
static OFFSET_MS: AtomicU64 = AtomicU64::new(0);

/// The current wall-clock time: the system's, plus what tests advanced.
pub fn now() -> SystemTime {
    SystemTime::now() + Duration::from_millis(OFFSET_MS.load(Ordering::Relaxed))
}

/// Moves this process's clock forward by `by`, for tests: one clock per
/// process, so a test that advances it must not run beside tests it would
/// disturb.
#[doc(hidden)]
pub fn advance(by: Duration) {
    OFFSET_MS.fetch_add(millis(by), Ordering::Relaxed);
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, millis)
}

/// Seconds since the Unix epoch (0 for times before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub fn now_ms() -> u64 {
    unix_ms(now())
}

pub fn now_secs() -> u64 {
    unix_secs(now())
}

/// A duration in whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
