//! Prefetch's Prometheus series, registered in the server's one registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// What became of a webhook delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A `workflow_run` `completed`: its run was queued.
    Accepted,
    /// `X-Hub-Signature-256` missing or wrong: 401, nothing done.
    BadSignature,
    /// Signed, but nothing to do (a ping, another event or action).
    Ignored,
    /// A delivery id seen before: answered, not done again.
    Duplicate,
    /// Signed, but not a payload the mirror can read (400), or too large (413).
    Invalid,
}

impl Delivery {
    const ALL: [Delivery; 5] = [
        Delivery::Accepted,
        Delivery::BadSignature,
        Delivery::Ignored,
        Delivery::Duplicate,
        Delivery::Invalid,
    ];

    fn label(self) -> &'static str {
        match self {
            Delivery::Accepted => "accepted",
            Delivery::BadSignature => "bad_signature",
            Delivery::Ignored => "ignored",
            Delivery::Duplicate => "duplicate",
            Delivery::Invalid => "invalid",
        }
    }
}

/// Why an artifact of a completed run was not prefetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not matched by `prefetch_names`.
    Name,
    /// Expired (`"expired": true` or `expires_at` passed).
    Expired,
    /// Over `prefetch_max_bytes` (or what the store keeps).
    Size,
    /// Already stored or being fetched.
    Present,
}

impl Skip {
    const ALL: [Skip; 4] = [Skip::Name, Skip::Expired, Skip::Size, Skip::Present];

    fn label(self) -> &'static str {
        match self {
            Skip::Name => "name",
            Skip::Expired => "expired",
            Skip::Size => "size",
            Skip::Present => "present",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Default)]
pub struct PrefetchMetrics {
    deliveries: Family<OutcomeLabel, Counter>,
    pub runs: Counter,
    pub artifacts: Counter,
    pub bytes: Counter,
    skipped: Family<ReasonLabel, Counter>,
    pub errors: Counter,
    pub queue_depth: Gauge,
    pub dropped: Counter,
}

impl PrefetchMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "webhook_deliveries",
            "GitHub webhook deliveries received, by outcome",
            self.deliveries.clone(),
        );
        for outcome in Delivery::ALL {
            self.delivery(outcome, 0);
        }
        r.register(
            "prefetch_runs",
            "Completed workflow runs whose artifacts were listed for prefetch",
            self.runs.clone(),
        );
        r.register(
            "prefetch_artifacts",
            "Artifacts stored by prefetch",
            self.artifacts.clone(),
        );
        r.register_with_unit(
            "prefetch",
            "Zip bytes stored by prefetch",
            Unit::Bytes,
            self.bytes.clone(),
        );
        r.register(
            "prefetch_skipped",
            "Artifacts of prefetched runs not fetched, by reason",
            self.skipped.clone(),
        );
        for reason in Skip::ALL {
            self.skipped
                .get_or_create(&ReasonLabel {
                    reason: reason.label(),
                })
                .inc_by(0);
        }
        r.register(
            "prefetch_errors",
            "Prefetch steps that failed (credential, run listing, download endpoint, fill)",
            self.errors.clone(),
        );
        r.register(
            "prefetch_queue_depth",
            "Runs waiting to be prefetched",
            self.queue_depth.clone(),
        );
        r.register(
            "prefetch_dropped",
            "Runs dropped from a full prefetch queue (the oldest first)",
            self.dropped.clone(),
        );
    }

    pub fn delivery(&self, outcome: Delivery, n: u64) {
        self.deliveries
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .inc_by(n);
    }

    pub fn skipped(&self, reason: Skip) {
        self.skipped
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }
}
