//! The operator's metrics (Prometheus text on `/metrics`) and its health (`/healthz`,
//! `/readyz`), served over plain HTTP on their own port, away from the webhooks.

use bytes_body::full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Which webhook answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Webhook {
    Inject,
    MutateSession,
    ValidateSession,
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

/// Readiness: the webhook server listens and has a certificate to present.
pub struct Health {
    pub webhooks_listening: AtomicBool,
    pub serving: Arc<crate::certs::ServingCert>,
}

impl Health {
    pub fn new(serving: Arc<crate::certs::ServingCert>) -> Self {
        Self {
            webhooks_listening: AtomicBool::new(false),
            serving,
        }
    }

    fn ready(&self) -> bool {
        self.webhooks_listening.load(Ordering::Acquire) && self.serving.is_ready()
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection");
                continue;
            }
        };
        let metrics = metrics.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = answer(&req, &metrics, &health);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(
    req: &Request<Incoming>,
    metrics: &Metrics,
    health: &Health,
) -> Response<bytes_body::Body> {
    let text = |status, body: String, content_type: &str| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(full(body))
            .expect("a valid response")
    };
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET only\n".into(),
            "text/plain",
        );
    }
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" if health.ready() => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the webhook server has no serving certificate yet\n".into(),
            "text/plain",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}

/// Response bodies: whole buffers.
pub mod bytes_body {
    use http_body_util::Full;
    use hyper::body::Bytes;

    pub type Body = Full<Bytes>;

    pub fn full(data: impl Into<Bytes>) -> Body {
        Full::new(data.into())
    }
}
