//! The pod's entry in its AgentSession's status: the recording's public key and counts, the
//! last shipped segment, the spool. Written by server-side apply on the status subresource
//! with this pod's own field manager, so every sidecar owns its entry of `status.pods` and
//! nothing else (RBAC grants the sidecar `agentsessions/status` patch, and the status webhook
//! admits only this pod's entry from this pod's token).
//!
//! The same connection follows the AgentSession itself, so that a change to its policy,
//! masking or expiry reaches the running sidecar: a watch of the one object (RBAC: `get`,
//! `watch` on agentsessions), and, should the watch be refused or broken, the object the
//! answer to each status report carries.

use crate::record::Recording;
use crate::review::Reviews;
use crate::session::Live;
use anyhow::{Context, Result};
use cassette_api::{AgentSession, PodRecording};
use futures::TryStreamExt;
use kube::api::{Api, Patch, PatchParams, WatchEvent, WatchParams};
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
    live: Arc<Live>,
}

impl Reporter {
    /// A reporter when the sidecar can reach the API server: in a cluster (the service
    /// account token the injector mounts), or through `kubeconfig`. `None` outside both.
    pub async fn connect(
        args: &crate::RunArgs,
        recording: Recording,
        writer: cassette_recording::Recorder,
        reviews: Arc<Reviews>,
        live: Arc<Live>,
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
            live,
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
    /// so approvals need no right to read AgentSessions. Returns the AgentSession as the
    /// answer carried it.
    pub async fn report(&self) -> Result<AgentSession> {
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
        Ok(session)
    }

    /// Follow the AgentSession while the sidecar runs: every version the API server has is
    /// handed to the session in force, and a deleted AgentSession ends the session.
    pub async fn follow(self: Arc<Self>) {
        let mut failures = 0u32;
        loop {
            match self.watch_once().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    // The status reports still bring the AgentSession every 10 s.
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %format!("{e:#}"), failures, "watching the AgentSession failed; retrying (status reports still bring its changes)");
                    }
                }
            }
            let backoff = Duration::from_secs(u64::from(failures.min(5)));
            tokio::time::sleep(backoff.max(Duration::from_millis(200))).await;
        }
    }

    /// Read the AgentSession once and apply it; its resource version, `None` when it is gone.
    /// Called before any listener opens too: a sidecar restarted mid-session must not carry
    /// traffic under the spec frozen into its environment at injection.
    pub async fn refresh(&self) -> Result<Option<String>> {
        match self.api.get_opt(&self.session).await? {
            Some(session) => {
                self.live.apply(&session);
                Ok(Some(session.metadata.resource_version.unwrap_or_default()))
            }
            None => {
                self.live.deleted();
                Ok(None)
            }
        }
    }

    /// Read the AgentSession, then watch it from there until the watch ends.
    async fn watch_once(&self) -> Result<()> {
        let Some(version) = self.refresh().await? else {
            return Ok(());
        };
        let params = WatchParams::default()
            .fields(&format!("metadata.name={}", self.session))
            .timeout(290);
        let mut events = Box::pin(self.api.watch(&params, &version).await?);
        while let Some(event) = events.try_next().await? {
            match event {
                WatchEvent::Added(s) | WatchEvent::Modified(s) => self.live.apply(&s),
                WatchEvent::Deleted(_) => self.live.deleted(),
                WatchEvent::Bookmark(_) => {}
                // Typically 410 Gone: the version is too old; read again and watch on.
                WatchEvent::Error(e) => {
                    tracing::debug!(code = e.code, message = %e.message, "the AgentSession watch ended");
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Report every 10 s, every second while requests are held, and at once when a request
    /// is held or released; failures are logged and retried.
    pub async fn run(self: Arc<Self>) {
        loop {
            match self.report().await {
                Ok(session) => self.live.apply(&session),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "status report failed; retrying")
                }
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
