//! The pod's entry in its AgentSession's status: the recording's public key and counts, the
//! last shipped segment, the spool. Written by server-side apply on the status subresource
//! with this pod's own field manager, so every sidecar owns its entry of `status.pods` and
//! nothing else (RBAC grants the sidecar only `agentsessions/status` patch).

use crate::record::Recording;
use crate::review::Reviews;
use anyhow::{Context, Result};
use cassette_api::{AgentSession, PodRecording};
use kube::api::{Api, Patch, PatchParams};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often the entry is refreshed while the sidecar runs.
const INTERVAL: Duration = Duration::from_secs(10);

/// Writes this pod's status entry.
pub struct Reporter {
    api: Api<AgentSession>,
    session: String,
    pod: String,
    pod_uid: String,
    recording: Recording,
    writer: cassette_recording::Recorder,
    reviews: Arc<Reviews>,
}

impl Reporter {
    /// A reporter when the sidecar can reach the API server: in a cluster (the service
    /// account token the injector mounts), or through `kubeconfig`. `None` outside both.
    pub async fn connect(
        args: &crate::RunArgs,
        recording: Recording,
        writer: cassette_recording::Recorder,
        reviews: Arc<Reviews>,
    ) -> Result<Option<Self>> {
        let kubeconfig = args.kubeconfig.clone();
        let config = match kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &Default::default()).await?
            }
            None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                kube::Config::incluster().context("reading the in-cluster configuration")?
            }
            None => return Ok(None),
        };
        let client = kube::Client::try_from(config)?;
        Ok(Some(Self {
            api: Api::namespaced(client, &args.namespace),
            session: args.session.clone(),
            pod: args.pod.clone(),
            pod_uid: args.pod_uid.clone(),
            recording,
            writer,
            reviews,
        }))
    }

    /// This pod's entry as it stands.
    fn entry(&self) -> PodRecording {
        let counts = &self.recording.counts;
        let stats = self.writer.stats();
        PodRecording {
            name: self.pod.clone(),
            uid: Some(self.pod_uid.clone()),
            public_key: Some(self.writer.public_key()),
            exchanges: counts.exchanges.load(Ordering::Relaxed),
            blocked: counts.blocked.load(Ordering::Relaxed),
            masked: counts.masked.load(Ordering::Relaxed),
            bytes: stats.bytes,
            last_shipped_segment: stats.last_shipped_segment,
            last_shipped_at: stats
                .last_shipped_at
                .and_then(|t| t.parse().ok())
                .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
            spool_bytes: stats.spool_bytes,
        }
    }

    /// Apply the entry (and the requests held for review) once, and pass the approvals the
    /// AgentSession holds to the held requests: the answer of the status patch carries them,
    /// so the sidecar needs no right to read AgentSessions.
    pub async fn report(&self) -> Result<()> {
        let patch = serde_json::json!({
            "apiVersion": "cassette.dev/v1alpha1",
            "kind": "AgentSession",
            "status": {
                "pods": [self.entry()],
                "pendingReviews": self.reviews.pending(),
            },
        });
        let manager = format!("cassette-sidecar-{}", self.pod);
        let session = self
            .api
            .patch_status(
                &self.session,
                &PatchParams::apply(&manager).force(),
                &Patch::Apply(&patch),
            )
            .await
            .with_context(|| format!("reporting to AgentSession {:?}", self.session))?;
        self.reviews.decide(&session.spec.approvals);
        Ok(())
    }

    /// Report every 10 s, every second while requests are held, and at once when a request
    /// is held or released; failures are logged and retried.
    pub async fn run(self: Arc<Self>) {
        loop {
            if let Err(e) = self.report().await {
                tracing::warn!(error = %format!("{e:#}"), "status report failed; retrying");
            }
            let interval = if self.reviews.is_empty() {
                INTERVAL
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = self.reviews.changed.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}
