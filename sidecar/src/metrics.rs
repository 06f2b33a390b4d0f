//! The sidecar's Prometheus metrics, served on the admin port at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of an exchange: the Google service (or `git`, `other`) and the decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExchangeLabels {
    pub service: String,
    pub decision: String,
}

/// A masking detector.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectorLabels {
    pub detector: String,
}

/// A brokered credential (`spec.credentials` entry).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub credential: String,
}

/// Direction of recorded bytes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

/// Every metric the sidecar exports.
pub struct Metrics {
    pub registry: Registry,
    pub exchanges: Family<ExchangeLabels, Counter>,
    pub bytes: Family<DirectionLabels, Counter>,
    pub masked: Family<DetectorLabels, Counter>,
    /// Time spent in the sidecar per exchange, upstream time excluded.
    pub added_latency: Histogram,
    pub upstream_latency: Histogram,
    pub connections: Counter,
    pub connections_refused: Counter,
    pub cert_cache_hits: Counter,
    pub cert_cache_misses: Counter,
    pub token_swaps: Counter,
    /// Brokered credentials swapped in, per entry.
    pub credential_swaps: Family<CredentialLabels, Counter>,
    /// Requests that carried a brokered credential's placeholder where it is not swapped.
    pub placeholder_leaks: Family<CredentialLabels, Counter>,
    pub spool_bytes: Gauge,
    pub ship_failures: Counter,
    pub recorded_records: Counter,
    /// Sockets of another process running as the recorder's UID (see `bypass`).
    pub unrecorded_sockets: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cassette_sidecar");
        let exchanges = Family::<ExchangeLabels, Counter>::default();
        registry.register(
            "exchanges",
            "HTTP exchanges handled, by Google service and decision",
            exchanges.clone(),
        );
        let bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "body_bytes",
            "Body bytes proxied, by direction",
            bytes.clone(),
        );
        let masked = Family::<DetectorLabels, Counter>::default();
        registry.register(
            "masked_secrets",
            "Secrets masked in recordings, by detector",
            masked.clone(),
        );
        // 50 µs .. ~1.6 s
        let added_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "added_latency_seconds",
            "Time an exchange spent in the sidecar, excluding the upstream's own time",
            added_latency.clone(),
        );
        let upstream_latency = Histogram::new(exponential_buckets(0.000_5, 2.0, 16));
        registry.register(
            "upstream_latency_seconds",
            "Time from sending a request upstream to its response head",
            upstream_latency.clone(),
        );
        let connections = Counter::default();
        registry.register("connections", "Connections captured", connections.clone());
        let unrecorded_sockets = Counter::default();
        registry.register(
            "unrecorded_sockets",
            "Sockets of a process other than the recorder running as its UID, whose traffic the capture rules let out unrecorded",
            unrecorded_sockets.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections refused (forbidden destination, unknown protocol, upstream TLS failure)",
            connections_refused.clone(),
        );
        let cert_cache_hits = Counter::default();
        registry.register(
            "certificate_cache_hits",
            "Leaf certificates served from the cache",
            cert_cache_hits.clone(),
        );
        let cert_cache_misses = Counter::default();
        registry.register(
            "certificate_cache_misses",
            "Leaf certificates minted",
            cert_cache_misses.clone(),
        );
        let token_swaps = Counter::default();
        registry.register(
            "token_swaps",
            "Requests whose placeholder credential was replaced by a real token",
            token_swaps.clone(),
        );
        let credential_swaps = Family::<CredentialLabels, Counter>::default();
        registry.register(
            "credential_swaps",
            "Brokered credentials swapped in for the agent's placeholder, per spec.credentials entry",
            credential_swaps.clone(),
        );
        let placeholder_leaks = Family::<CredentialLabels, Counter>::default();
        registry.register(
            "placeholder_leaks",
            "Requests carrying a brokered credential's placeholder to a host, connection or presentation it is not swapped for, per entry",
            placeholder_leaks.clone(),
        );
        let spool_bytes = Gauge::default();
        registry.register(
            "spool_bytes",
            "Bytes recorded locally and not yet shipped",
            spool_bytes.clone(),
        );
        let ship_failures = Counter::default();
        registry.register(
            "ship_failures",
            "Failed attempts to ship a segment to the sink",
            ship_failures.clone(),
        );
        let recorded_records = Counter::default();
        registry.register(
            "recorded_records",
            "Records written to the recording",
            recorded_records.clone(),
        );
        Self {
            registry,
            exchanges,
            bytes,
            masked,
            added_latency,
            upstream_latency,
            connections,
            connections_refused,
            unrecorded_sockets,
            cert_cache_hits,
            cert_cache_misses,
            token_swaps,
            credential_swaps,
            placeholder_leaks,
            spool_bytes,
            ship_failures,
            recorded_records,
        }
    }

    /// The text exposition format.
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
