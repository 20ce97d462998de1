//! Fault injection that tests flip at run time, without restarting the sim.

use crate::util::lock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A short pause before an injected cut, so hyper flushes the headers and
/// the bytes already sent: the client sees a started, truncated answer.
const CUT_PAUSE: Duration = Duration::from_millis(50);

/// Run-time fault injection. All methods take `&self`.
#[derive(Debug, Default)]
pub struct Knobs {
    latency_nanos: AtomicU64,
    /// (remaining count, status)
    fail: Mutex<(u32, u16)>,
    /// (body bytes before the cut, remaining count, pause before the cut)
    cut: Mutex<(u64, u32, Duration)>,
    /// Remaining resumed (`Range`) blob GETs to refuse as expired.
    expire_on_resume: Mutex<u32>,
    /// Tokens whose read access to private repositories was taken away.
    revoked: Mutex<Vec<String>>,
    /// (remaining count, delay) of blob GETs answered late.
    blob_delay: Mutex<(u32, Duration)>,
    /// Remaining blob GETs whose body bytes are sent inverted.
    corrupt: Mutex<u32>,
    /// Remaining resumed (`Range`) blob GETs answered 200 with the whole zip.
    ignore_range: Mutex<u32>,
    /// `X-Poll-Interval` of the runs list, seconds; 0 means the default, 1.
    poll_interval: AtomicU64,
}

impl Knobs {
    /// Delay before every API answer (0 = none). Not applied to the blob host.
    pub fn set_latency(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.latency_nanos.store(nanos, Ordering::Relaxed);
    }

    /// The next `n` API requests answer `status` with a GitHub-style JSON
    /// error body, before any routing or authentication.
    pub fn fail_next(&self, n: u32, status: u16) {
        *lock(&self.fail) = (n, status);
    }

    /// The next `times` blob GETs that would send a zip body send their
    /// headers as usual (with the full `Content-Length`), then drop the
    /// connection after `bytes` body bytes.
    pub fn cut_blob_after(&self, bytes: u64, times: u32) {
        *lock(&self.cut) = (bytes, times, CUT_PAUSE);
    }

    /// Like [`Knobs::cut_blob_after`], but after `bytes` the body stalls: the
    /// connection stays open and silent for a minute before it is cut, as a
    /// hung blob store does.
    pub fn stall_blob_after(&self, bytes: u64, times: u32) {
        *lock(&self.cut) = (bytes, times, Duration::from_secs(60));
    }

    /// The next `n` blob GETs that carry a `Range` (a client resuming) are
    /// refused as if their signed URL had expired (403), as happens when a
    /// transfer is cut late in a link's minute: the client must ask the
    /// download endpoint for a fresh `Location`.
    pub fn expire_blob_links_on_resume(&self, n: u32) {
        *lock(&self.expire_on_resume) = n;
    }

    /// The next `n` blob GETs wait `delay` before answering at all (a slow
    /// blob store: no headers yet).
    pub fn delay_blob_answers(&self, delay: Duration, n: u32) {
        *lock(&self.blob_delay) = (n, delay);
    }

    /// The next `n` blob GETs that send a zip body send every byte of it
    /// inverted (headers as usual): content that differs from the zip.
    pub fn corrupt_blob_bodies(&self, n: u32) {
        *lock(&self.corrupt) = n;
    }

    /// The next `n` blob GETs that carry a `Range` ignore it and answer 200
    /// with the whole zip, as RFC 9110 allows a server to.
    pub fn ignore_blob_ranges(&self, n: u32) {
        *lock(&self.ignore_range) = n;
    }

    /// The user of `token` loses read access to every private repository
    /// (removed from the team), as upstream would say from now on: 404.
    pub fn revoke_private_access(&self, token: &str) {
        lock(&self.revoked).push(token.to_owned());
    }

    /// The runs list's `X-Poll-Interval` (GitHub: 60; the sim's default is
    /// 1 s so polling tests stay short).
    pub fn set_poll_interval(&self, seconds: u64) {
        self.poll_interval.store(seconds, Ordering::Relaxed);
    }

    pub(crate) fn poll_interval(&self) -> u64 {
        self.poll_interval.load(Ordering::Relaxed).max(1)
    }

    /// Back to normal: no latency, no failures, no cuts, no revocations.
    pub fn clear(&self) {
        self.set_latency(Duration::ZERO);
        self.fail_next(0, 0);
        self.cut_blob_after(0, 0);
        self.expire_blob_links_on_resume(0);
        self.delay_blob_answers(Duration::ZERO, 0);
        self.corrupt_blob_bodies(0);
        self.ignore_blob_ranges(0);
        self.set_poll_interval(0);
        lock(&self.revoked).clear();
    }

    pub(crate) fn is_revoked(&self, token: &str) -> bool {
        lock(&self.revoked).iter().any(|t| t == token)
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed))
    }

    /// Takes one injected failure, if any are left.
    pub(crate) fn take_failure(&self) -> Option<u16> {
        let mut f = lock(&self.fail);
        (f.0 > 0).then(|| {
            f.0 -= 1;
            f.1
        })
    }

    /// Takes one injected answer delay, if any are left.
    pub(crate) fn take_blob_delay(&self) -> Option<Duration> {
        let mut d = lock(&self.blob_delay);
        (d.0 > 0).then(|| {
            d.0 -= 1;
            d.1
        })
    }

    /// Takes one injected corruption, if any are left.
    pub(crate) fn take_corruption(&self) -> bool {
        take_one(&self.corrupt)
    }

    /// Takes one ignored `Range`, if any are left.
    pub(crate) fn take_ignored_range(&self) -> bool {
        take_one(&self.ignore_range)
    }

    /// Takes one injected expiry for a resumed GET, if any are left.
    pub(crate) fn take_resume_expiry(&self) -> bool {
        let mut n = lock(&self.expire_on_resume);
        let take = *n > 0;
        if take {
            *n -= 1;
        }
        take
    }

    /// Takes one injected cut, if any are left: the byte count to send and
    /// the pause before cutting.
    pub(crate) fn take_cut(&self) -> Option<(u64, Duration)> {
        let mut c = lock(&self.cut);
        (c.1 > 0).then(|| {
            c.1 -= 1;
            (c.0, c.2)
        })
    }
}

/// Counts one down; whether there was one to take.
fn take_one(count: &Mutex<u32>) -> bool {
    let mut n = lock(count);
    let take = *n > 0;
    if take {
        *n -= 1;
    }
    take
}
