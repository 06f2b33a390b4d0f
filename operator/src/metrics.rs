//! The operator's metrics registry: what it counts and measures, in the Prometheus text
//! format. Serving it (with the health probes) is `admin`'s.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which webhook answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Webhook {
    Inject,
    Guard,
    Connect,
    MutateSession,
    ValidateSession,
    ValidateStatus,
}

/// How it answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Verdict {
    /// Admitted with changes.
    Patched,
    /// Admitted as it was.
    Allowed,
    /// Refused.
    Denied,
    /// The request could not be read or a lookup failed (also refused: fail closed).
    Error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub webhook: Webhook,
    pub verdict: Verdict,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetentionLabels {
    /// `deleted`, or `held` (kept by a hold, retention or the sink's refusal).
    pub outcome: &'static str,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    pub admissions: Family<AdmissionLabels, Counter>,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_seconds: Histogram,
    pub leader: Gauge,
    pub serving_cert_expiry: Gauge,
    pub retention_sweeps: Family<ReconcileLabels, Counter>,
    pub retention_objects: Family<RetentionLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cassette_operator");
        let admissions = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admissions",
            "Admission reviews answered, by webhook and verdict",
            admissions.clone(),
        );
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "AgentSession reconciliations, by result",
            reconciles.clone(),
        );
        let reconcile_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "reconcile_duration_seconds",
            "Time to reconcile one AgentSession",
            reconcile_seconds.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the lease and runs the controller",
            leader.clone(),
        );
        let serving_cert_expiry = Gauge::default();
        registry.register(
            "webhook_certificate_expiry_timestamp_seconds",
            "When the webhook serving certificate expires (Unix time)",
            serving_cert_expiry.clone(),
        );
        let retention_sweeps = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "retention_sweeps",
            "Retention sweeps of one session's recordings, by result",
            retention_sweeps.clone(),
        );
        let retention_objects = Family::<RetentionLabels, Counter>::default();
        registry.register(
            "retention_objects",
            "Recording objects older than their session's retention, per sweep: deleted, or held (kept by a hold, retention or the sink's refusal; counted again by every sweep that finds them held)",
            retention_objects.clone(),
        );
        Self {
            registry,
            retention_sweeps,
            retention_objects,
            admissions,
            reconciles,
            reconcile_seconds,
            leader,
            serving_cert_expiry,
        }
    }

    /// Count one admission review.
    pub fn admission(&self, webhook: Webhook, verdict: Verdict) {
        self.admissions
            .get_or_create(&AdmissionLabels { webhook, verdict })
            .inc();
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
