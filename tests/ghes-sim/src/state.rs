//! Shared state of one running simulator: data, counters, logs, rate limits.

use crate::fixtures::User;
use crate::knobs::Knobs;
use crate::server::Log;
use crate::store::Store;
use crate::util::{lock, now_unix, sha256_hex};
use crate::{Counters, SimConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Unauthenticated callers share one bucket, like GitHub's per-IP limit.
pub(crate) const ANONYMOUS_LIMIT: u32 = 60;
const WINDOW_SECS: u64 = 3600;

pub(crate) struct State {
    pub cfg: SimConfig,
    pub api_addr: SocketAddr,
    pub blob_addr: SocketAddr,
    pub api_base: String,
    /// "https" with `SimConfig::tls`, else "http".
    pub scheme: &'static str,
    /// `host:port` of the blob listener as put in download redirects.
    pub blob_authority: String,
    pub store: Mutex<Store>,
    /// `rate_limit_used` stays empty here; it is filled from `rate` on snapshot.
    pub counters: Mutex<Counters>,
    pub rate: Mutex<RateLimits>,
    pub knobs: Knobs,
    pub api_log: Log,
    pub blob_log: Log,
    /// Where completed runs are announced (`Sim::set_webhook`).
    pub hook: Mutex<Option<crate::runs::Hook>>,
    /// The GitHub App whose JWTs the token endpoint accepts.
    pub app: Mutex<Option<crate::runs::App>>,
    /// Signs blob URLs; random per instance so URLs of another run never work.
    secret: String,
    seq: AtomicU64,
}

impl State {
    pub fn new(cfg: SimConfig, api_addr: SocketAddr, blob_addr: SocketAddr) -> State {
        let secret = sha256_hex(&[
            format!("{:?}", std::time::SystemTime::now()).as_bytes(),
            api_addr.to_string().as_bytes(),
            std::process::id().to_string().as_bytes(),
        ]);
        let authority = |addr: SocketAddr| match &cfg.advertise_host {
            Some(host) => format!("{host}:{}", addr.port()),
            None => addr.to_string(),
        };
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        let api_base = format!("{scheme}://{}/api/v3", authority(api_addr));
        let blob_authority = authority(blob_addr);
        State {
            store: Mutex::new(Store::new(cfg.seed_artifacts)),
            cfg,
            api_addr,
            blob_addr,
            api_base,
            scheme,
            blob_authority,
            counters: Mutex::new(Counters::default()),
            rate: Mutex::new(RateLimits::default()),
            knobs: Knobs::default(),
            api_log: Log::default(),
            blob_log: Log::default(),
            hook: Mutex::new(None),
            app: Mutex::new(None),
            secret,
            seq: AtomicU64::new(0),
        }
    }

    pub fn bump(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut lock(&self.counters));
    }

    /// A fresh UUID-looking id (GHES sends a UUID in `X-GitHub-Request-Id`).
    pub fn request_id(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let h = sha256_hex(&[self.secret.as_bytes(), b"rid", &n.to_le_bytes()]);
        format!(
            "{}-{}-4{}-a{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    }

    /// The `sig` of a blob URL: sha256 over (secret, path, expiry).
    pub fn sign(&self, path: &str, se: &str) -> String {
        sha256_hex(&[
            self.secret.as_bytes(),
            b"\n",
            path.as_bytes(),
            b"\n",
            se.as_bytes(),
        ])
    }

    pub fn snapshot(&self) -> Counters {
        let mut c = lock(&self.counters).clone();
        c.rate_limit_used = lock(&self.rate).used_map();
        c
    }

    pub fn reset_counters(&self) {
        *lock(&self.counters) = Counters::default();
        *lock(&self.rate) = RateLimits::default();
    }
}

/// Who is calling: a fixture user or nobody.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Identity {
    Anonymous,
    User(&'static User),
}

impl Identity {
    pub fn key(self) -> &'static str {
        match self {
            Identity::Anonymous => "anonymous",
            Identity::User(u) => u.name,
        }
    }

    /// What the ETag is keyed on besides the body.
    pub fn token(self) -> &'static str {
        match self {
            Identity::Anonymous => "",
            Identity::User(u) => u.token,
        }
    }

    pub fn limit(self, cfg: &SimConfig) -> u32 {
        match self {
            Identity::Anonymous => ANONYMOUS_LIMIT.min(cfg.rate_limit),
            Identity::User(_) => cfg.rate_limit,
        }
    }
}

/// The numbers behind the `X-RateLimit-*` headers of one answer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    pub used: u32,
    pub reset: u64,
}

#[derive(Debug)]
struct Bucket {
    used: u32,
    reset: u64,
}

/// Hourly windows per identity, each starting at its first request.
#[derive(Debug, Default)]
pub(crate) struct RateLimits {
    buckets: BTreeMap<&'static str, Bucket>,
}

impl RateLimits {
    fn bucket(&mut self, key: &'static str) -> &mut Bucket {
        let now = now_unix();
        let b = self.buckets.entry(key).or_insert(Bucket {
            used: 0,
            reset: now + WINDOW_SECS,
        });
        if now >= b.reset {
            b.used = 0;
            b.reset = now + WINDOW_SECS;
        }
        b
    }

    /// Current numbers without spending a unit (304s, 401s, injected failures).
    pub fn peek(&mut self, who: Identity, limit: u32) -> RateInfo {
        let b = self.bucket(who.key());
        info(b, limit)
    }

    /// Spends one unit (saturating at the limit).
    pub fn consume(&mut self, who: Identity, limit: u32) -> RateInfo {
        let b = self.bucket(who.key());
        if b.used < limit {
            b.used += 1;
        }
        info(b, limit)
    }

    pub fn used_map(&self) -> BTreeMap<String, u32> {
        self.buckets
            .iter()
            .map(|(k, b)| (k.to_string(), b.used))
            .collect()
    }
}

fn info(b: &Bucket, limit: u32) -> RateInfo {
    RateInfo {
        limit,
        remaining: limit.saturating_sub(b.used),
        used: b.used,
        reset: b.reset,
    }
}
