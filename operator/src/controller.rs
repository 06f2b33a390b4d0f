//! The AgentSession controller: for each session, the phase, conditions, expiry, recording URI
//! and totals (summed from the entries the sidecars write into `status.pods`), written with
//! server-side apply by one field manager; a retention sweep of the session's recordings from
//! `apply` (see `retention`), at most once an interval; and a finalizer that keeps the session
//! until its pods have stopped recording. Deleting a session never deletes recordings.
//!
//! Read top to bottom: `run` → `reconcile` → `apply` (→ `expire_recordings`) / `cleanup` →
//! `desired` (pure).

use crate::metrics::{Metrics, ReconcileLabels, RetentionLabels};
use crate::{retention, session};
use cassette_api::names::SESSION_LABEL;
use cassette_api::{AgentSession, AgentSessionStatus, Phase};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// The field manager of everything the operator writes into status.
pub const MANAGER: &str = "cassette-operator";
/// Held while pods may still report into the session.
pub const FINALIZER: &str = "cassette.dev/recordings";
/// The longest a session goes without being looked at.
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Finalizer(String),
    #[error("{count} pod(s) still record into AgentSession {name:?}; it is deleted once they end")]
    PodsStillRecording { name: String, count: usize },
}

/// What reconciliations share.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub retention: retention::Settings,
    pub sweeps: retention::Schedule,
    /// The recording keys already announced (namespace/session/pod/key).
    pub announced: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Run the controller until `stop` resolves (leadership lost or shutdown).
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    retention: retention::Settings,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let sessions: Api<AgentSession> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let context = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        client,
        metrics,
        sweeps: retention::Schedule::new(retention.every),
        retention,
        announced: Default::default(),
    });
    Controller::new(sessions, watcher::Config::default())
        // A pod starting or ending changes its session's phase.
        .watches(
            pods,
            watcher::Config::default().labels(SESSION_LABEL),
            |pod| {
                let name = pod.labels().get(SESSION_LABEL)?.clone();
                Some(ObjectRef::<AgentSession>::new(&name).within(&pod.namespace()?))
            },
        )
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
}

async fn reconcile(session: Arc<AgentSession>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let namespace = session.namespace().unwrap_or_default();
    let api: Api<AgentSession> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, session, |event| async {
        match event {
            Finalizer::Apply(session) => apply(&session, &ctx).await,
            Finalizer::Cleanup(session) => cleanup(&session, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics
        .reconciles
        .get_or_create(&ReconcileLabels {
            result: if result.is_ok() { "ok" } else { "error" },
        })
        .inc();
    result
}

fn error_policy(session: Arc<AgentSession>, error: &Error, _ctx: Arc<Context>) -> Action {
    match error {
        Error::PodsStillRecording { .. } => {
            tracing::info!(session = %session.name_any(), "{error}")
        }
        _ => tracing::warn!(session = %session.name_any(), error = %error, "reconcile failed"),
    }
    Action::requeue(Duration::from_secs(10))
}

/// Bring the status in line with the spec, the clock and the pods.
async fn apply(session: &AgentSession, ctx: &Arc<Context>) -> Result<Action, Error> {
    let name = session.name_any();
    let namespace = session.namespace().unwrap_or_default();
    let pods = live_pods(&ctx.client, &namespace, &name).await?;
    let live: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    announce_keys(session, ctx).await;
    if session.fingerprint_key_is_made() {
        ensure_fingerprint_secret(session, ctx).await;
    }
    let now = Timestamp::now();
    let status = desired(session, &live, now);
    let api: Api<AgentSession> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": "cassette.dev/v1alpha1",
        "kind": "AgentSession",
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    // The sweep lists and deletes in the background: a large bucket must not hold up this
    // session's status.
    if session.spec.recording.retention.is_some()
        && let Some(sweeping) = ctx
            .sweeps
            .start(&format!("{namespace}/{name}"), std::time::Instant::now())
    {
        let (session, ctx, live) = (session.clone(), ctx.clone(), recording_dirs(&pods));
        tokio::spawn(async move {
            expire_recordings(&session, &ctx, &live).await;
            drop(sweeping);
        });
    }
    // Look again right after the session expires, so its phase turns on time.
    let requeue = match session::expires_at(session) {
        Some(at) if at > now => Duration::try_from(at.duration_since(now))
            .unwrap_or(RESYNC)
            .saturating_add(Duration::from_secs(1))
            .min(RESYNC),
        _ => RESYNC,
    };
    Ok(Action::requeue(requeue))
}

/// Delete the session's recordings older than its retention (the caller keeps it to once an
/// interval). A failure is reported (log, event, metric) and retried next interval; it never
/// fails the reconcile, whose status is already written.
async fn expire_recordings(session: &AgentSession, ctx: &Context, live: &[String]) {
    let name = session.name_any();
    let namespace = session.namespace().unwrap_or_default();
    let uri = session::recording_uri(&session.spec.recording.sink, &namespace, &name);
    let retention = session
        .spec
        .recording
        .retention
        .as_deref()
        .unwrap_or_default();
    let result = match retention::open_sink(session, &ctx.retention).await {
        Ok(sink) => retention::sweep(&sink, session, std::time::SystemTime::now(), live).await,
        Err(e) => Err(e),
    };
    let sweeps = |result| {
        ctx.metrics
            .retention_sweeps
            .get_or_create(&ReconcileLabels { result })
            .inc()
    };
    let outcome = match result {
        Ok(outcome) => {
            sweeps("ok");
            outcome
        }
        Err(e) => {
            sweeps("error");
            let note = format!(
                "could not apply the retention ({retention}) to the recordings at {uri}: {e}; \
                 trying again in {}s",
                ctx.retention.every.as_secs()
            );
            tracing::warn!(session = %name, namespace, "{note}");
            publish(ctx, session, EventType::Warning, "RetentionFailed", note).await;
            return;
        }
    };
    let objects = |outcome| {
        ctx.metrics
            .retention_objects
            .get_or_create(&RetentionLabels { outcome })
    };
    if !outcome.unclaimed.is_empty() || !outcome.ignored.is_empty() {
        // Not this session's to delete: an earlier session of the same name, or strays.
        tracing::info!(
            session = %name,
            namespace,
            unclaimed = ?outcome.unclaimed,
            ignored = ?outcome.ignored,
            "left alone by the retention: not this session's recordings (a pod its status does not name, or not a segment or manifest stamped with its UID)"
        );
    }
    objects("deleted").inc_by(outcome.deleted);
    objects("held").inc_by(outcome.kept_objects());
    if outcome.deleted > 0 {
        let note = format!(
            "deleted {} object(s) of {} recording(s) older than {retention} at {uri}",
            outcome.deleted,
            outcome.recordings.len(),
        );
        tracing::info!(session = %name, namespace, recordings = ?outcome.recordings, "{note}");
        publish(ctx, session, EventType::Normal, "RecordingsExpired", note).await;
    }
    if !outcome.held.is_empty() {
        let first = &outcome.held[0];
        let (key, why) = first.kept.first().cloned().unwrap_or_default();
        let note = format!(
            "kept {} object(s) in {} recording(s) older than {retention} at {uri} under a \
             hold or retention, such as {key}: {why}",
            outcome.kept_objects(),
            outcome.held.len(),
        );
        tracing::info!(session = %name, namespace, held = ?outcome.held, "{note}");
        publish(ctx, session, EventType::Normal, "RecordingsHeld", note).await;
    }
}

async fn publish(
    ctx: &Context,
    session: &AgentSession,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Retention".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &session.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "publishing an event");
    }
}

/// Make the session's fingerprint Secret when its spec names none: 32 random bytes, made
/// once and never rotated (every pod of the session fingerprints with it, and auditors search
/// with it). It is not owned by the session, so it outlives it with the recordings. A failure
/// is a warning Event; pods of the session wait for the Secret, as the kubelet does.
async fn ensure_fingerprint_secret(session: &AgentSession, ctx: &Context) {
    use k8s_openapi::api::core::v1::Secret;
    use ring::rand::SecureRandom;
    let namespace = session.namespace().unwrap_or_default();
    let key = session.fingerprint_key();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    match secrets.get_metadata_opt(&key.name).await {
        Ok(Some(_)) => return,
        Ok(None) => {}
        Err(e) => {
            tracing::debug!(error = %e, "reading the fingerprint Secret's metadata; creating it");
        }
    }
    let mut bytes = [0u8; 32];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        tracing::error!("the system random source failed; no fingerprint key made");
        return;
    }
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(key.name.clone()),
            labels: Some([(SESSION_LABEL.to_string(), session.name_any())].into()),
            annotations: Some(
                [(
                    "cassette.dev/purpose".to_string(),
                    "The fingerprint key of the session's masks and body digests: auditors \
                     search with it (kubectl cassette search); agents never read it. Kept \
                     after the session is deleted, for as long as its recordings."
                        .to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some([(key.key.clone(), k8s_openapi::ByteString(bytes.to_vec()))].into()),
        immutable: Some(true),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(
                namespace,
                session = session.name_any(),
                secret = key.name,
                "made the session's fingerprint key"
            );
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => {
            let note = format!(
                "could not make the session's fingerprint key, Secret {:?}: {e}; its pods wait \
                 for it (the operator needs create on secrets here: list the namespace in the \
                 chart's agentNamespaces), or name a Secret in spec.masking.fingerprintKey",
                key.name
            );
            tracing::warn!(namespace, session = session.name_any(), "{note}");
            let event = Event {
                type_: EventType::Warning,
                reason: "FingerprintKeyMissing".into(),
                note: Some(note),
                action: "MakeFingerprintKey".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &session.object_ref(&())).await {
                tracing::warn!(error = %e, "publishing an event");
            }
        }
    }
}

/// Say each pod's recording key once, in the operator's log and as an Event on the session,
/// so a copy of what an auditor trusts lives outside the AgentSession object.
async fn announce_keys(session: &AgentSession, ctx: &Context) {
    let namespace = session.namespace().unwrap_or_default();
    let name = session.name_any();
    for pod in session.status.iter().flat_map(|s| &s.pods) {
        let Some(key) = &pod.public_key else { continue };
        let id = format!("{namespace}/{name}/{}/{key}", pod.name);
        if !ctx.announced.lock().expect("not poisoned").insert(id) {
            continue;
        }
        let fingerprint = key_fingerprint(key);
        tracing::info!(
            namespace, session = name, pod = pod.name, pod_uid = ?pod.uid, public_key = key,
            fingerprint, "a pod's recording key"
        );
        let event = Event {
            type_: EventType::Normal,
            reason: "RecordingKey".into(),
            note: Some(format!(
                "pod {} (uid {}) signs its recording with Ed25519 key {key} ({fingerprint})",
                pod.name,
                pod.uid.as_deref().unwrap_or("unknown")
            )),
            action: "Verify".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &session.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing the recording key's event");
        }
    }
}

/// `SHA256:` and the unpadded base64 of the SHA-256 of the raw key, as `ssh-keygen -l` prints.
fn key_fingerprint(key: &str) -> String {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap_or_else(|_| key.as_bytes().to_vec());
    let digest = ring::digest::digest(&ring::digest::SHA256, &raw);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest.as_ref())
    )
}

/// The session is being deleted: wait while pods still record into it, then let it go. The
/// recordings stay where they are; an event says where, for whoever looks for them later.
async fn cleanup(session: &AgentSession, ctx: &Context) -> Result<Action, Error> {
    let name = session.name_any();
    let namespace = session.namespace().unwrap_or_default();
    let live = live_pods(&ctx.client, &namespace, &name).await?;
    if !live.is_empty() {
        return Err(Error::PodsStillRecording {
            name,
            count: live.len(),
        });
    }
    let uri = session::recording_uri(&session.spec.recording.sink, &namespace, &name);
    let kept = match &session.spec.recording.retention {
        // The sweep runs only while the session exists: from here on the bucket decides.
        Some(r) => format!(
            "kept; the operator no longer applies their retention ({r}), the bucket's own \
             lifecycle removes them"
        ),
        None => "kept until the bucket's own lifecycle removes them".into(),
    };
    let note = format!("AgentSession deleted; its recordings at {uri} are {kept}");
    if let Err(e) = ctx
        .recorder
        .publish(
            &Event {
                type_: EventType::Normal,
                reason: "RecordingsKept".into(),
                note: Some(note.clone()),
                action: "Delete".into(),
                secondary: None,
            },
            &session.object_ref(&()),
        )
        .await
    {
        tracing::warn!(error = %e, "publishing the RecordingsKept event");
    }
    tracing::info!(session = %name, namespace, "{note}");
    Ok(Action::await_change())
}

/// The names of the session's pods that have not ended.
async fn live_pods(client: &Client, namespace: &str, name: &str) -> Result<Vec<Pod>, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&format!("{SESSION_LABEL}={name}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .collect())
}

/// The recording directories (`<pod>-<uid>`) of running pods: never swept.
fn recording_dirs(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .filter_map(|p| Some(format!("{}-{}", p.name_any(), p.uid()?)))
        .collect()
}

/// The status the operator owns (everything but `pods`, which the sidecars write), from the
/// session as stored, its live pods and the time.
pub fn desired(session: &AgentSession, live_pods: &[String], now: Timestamp) -> AgentSessionStatus {
    let current = session.status.clone().unwrap_or_default();
    let namespace = session.namespace().unwrap_or_default();
    let name = session.name_any();
    let expires_at = session::expires_at(session);
    let expired = expires_at.is_some_and(|at| now >= at);
    let invalid = cassette_rules::validate::agent_session(&session.spec).err();
    let reported = &current.pods;
    let unshipped: Vec<&str> = reported
        .iter()
        .filter(|p| p.spool_bytes > 0 && !live_pods.contains(&p.name))
        .map(|p| p.name.as_str())
        .collect();

    let phase = if invalid.is_some() {
        Phase::Failed
    } else if expired {
        Phase::Expired
    } else if reported.is_empty() {
        Phase::Pending
    } else if !live_pods.is_empty() {
        Phase::Active
    } else if unshipped.is_empty() {
        Phase::Completed
    } else {
        Phase::Failed
    };

    let generation = session.meta().generation;
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        // A condition's transition time moves only when its status does.
        let since = current
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(now));
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: generation,
        }
    };
    let until = expires_at.map_or_else(|| "no expiry".into(), |at| at.to_string());
    let conditions = vec![
        match &invalid {
            Some(errors) => condition("Ready", false, "InvalidSpec", errors.to_string()),
            None if expired => condition(
                "Ready",
                false,
                "Expired",
                format!("expired at {until}; pods can no longer join it"),
            ),
            None => condition(
                "Ready",
                true,
                "Accepted",
                format!(
                    "pods labelled {SESSION_LABEL}={name} record into this session until {until}"
                ),
            ),
        },
        // A loss stays in sight while other pods go on recording.
        if !unshipped.is_empty() {
            let still = if live_pods.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} pod(s) still record into this session",
                    live_pods.len()
                )
            };
            condition(
                "Recording",
                false,
                "Unshipped",
                format!(
                    "pod(s) {} ended with records not shipped to the sink{still}",
                    unshipped.join(", ")
                ),
            )
        } else if live_pods.is_empty() {
            condition(
                "Recording",
                false,
                "NoPods",
                "no pod records into this session".into(),
            )
        } else {
            condition(
                "Recording",
                true,
                "PodsRecording",
                format!("{} pod(s) record into this session", live_pods.len()),
            )
        },
        if expired {
            condition("Expired", true, "Expired", format!("expired at {until}"))
        } else {
            condition(
                "Expired",
                false,
                "NotExpired",
                format!("expires at {until}"),
            )
        },
    ];

    AgentSessionStatus {
        phase: Some(phase),
        conditions,
        observed_generation: generation,
        expires_at: expires_at.map(Time),
        recording_uri: Some(session::recording_uri(
            &session.spec.recording.sink,
            &namespace,
            &name,
        )),
        totals: Some(session::totals(reported)),
        // Sidecars own their entries; reviews are theirs too.
        pods: Vec::new(),
        pending_reviews: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cassette_api::{AgentSessionSpec, Durability, OnFailure, PodRecording, Recording};

    fn session() -> AgentSession {
        let mut s = AgentSession::new(
            "fix-ci",
            AgentSessionSpec {
                agent: None,
                requested_by: None,
                expires_at: None,
                max_duration: Some("2h".into()),
                recording: Recording {
                    sink: "gs://recordings/agents".into(),
                    max_body_bytes: 1024,
                    retention: None,
                    durability: Durability::Batched,
                    on_failure: OnFailure::Closed,
                },
                masking: None,
                policy: None,
                approvals: vec![],
                credentials: vec![],
            },
        );
        s.metadata.namespace = Some("team".into());
        s.metadata.generation = Some(3);
        s.metadata.creation_timestamp = Some(Time("2026-11-25T08:00:00Z".parse().unwrap()));
        s
    }

    fn at(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    fn with_pods(mut s: AgentSession, pods: &[(&str, u64, u64)]) -> AgentSession {
        s.status = Some(AgentSessionStatus {
            pods: pods
                .iter()
                .map(|(name, exchanges, spool)| PodRecording {
                    name: name.to_string(),
                    exchanges: *exchanges,
                    blocked: 1,
                    spool_bytes: *spool,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        s
    }

    fn condition<'a>(s: &'a AgentSessionStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_new_session_is_pending_with_its_expiry_and_recording_uri() {
        let status = desired(&session(), &[], at("2026-11-25T09:00:00Z"));
        assert_eq!(status.phase, Some(Phase::Pending));
        assert_eq!(
            status.expires_at.as_ref().unwrap().0.to_string(),
            "2026-11-25T10:00:00Z"
        );
        assert_eq!(
            status.recording_uri.as_deref(),
            Some("gs://recordings/agents/team/fix-ci/")
        );
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(condition(&status, "Ready").status, "True");
        assert_eq!(condition(&status, "Expired").status, "False");
    }

    #[test]
    fn phases_follow_the_pods_reports_and_the_clock() {
        let now = at("2026-11-25T09:00:00Z");
        let reporting = with_pods(session(), &[("a", 5, 0), ("b", 7, 0)]);
        let live = ["a".to_string()];
        let status = desired(&reporting, &live, now);
        assert_eq!(status.phase, Some(Phase::Active));
        let totals = status.totals.unwrap();
        assert_eq!((totals.exchanges, totals.blocked), (12, 2));

        assert_eq!(desired(&reporting, &[], now).phase, Some(Phase::Completed));

        let lost = with_pods(session(), &[("a", 5, 4096)]);
        let status = desired(&lost, &[], now);
        assert_eq!(status.phase, Some(Phase::Failed));
        assert_eq!(condition(&status, "Recording").reason, "Unshipped");

        // Another pod still recording does not hide the loss (issue 14.8).
        let lost_beside = with_pods(session(), &[("a", 5, 4096), ("b", 7, 0)]);
        let status = desired(&lost_beside, &["b".to_string()], now);
        assert_eq!(status.phase, Some(Phase::Active));
        let recording = condition(&status, "Recording");
        assert_eq!(
            (recording.status.as_str(), recording.reason.as_str()),
            ("False", "Unshipped")
        );
        assert!(
            recording.message.contains("pod(s) a ended"),
            "{}",
            recording.message
        );

        let status = desired(&reporting, &live, at("2026-11-25T10:00:00Z"));
        assert_eq!(status.phase, Some(Phase::Expired));
        assert_eq!(condition(&status, "Expired").status, "True");
        assert!(
            condition(&status, "Ready")
                .message
                .contains("expired at 2026-11-25T10:00:00Z")
        );
    }

    #[test]
    fn an_invalid_spec_fails_with_the_field_named() {
        let mut s = session();
        s.spec.masking = Some(cassette_api::Masking {
            patterns: vec![cassette_api::MaskPattern {
                name: "broken".into(),
                regex: "(unclosed".into(),
            }],
            ..Default::default()
        });
        let status = desired(&s, &[], at("2026-11-25T09:00:00Z"));
        assert_eq!(status.phase, Some(Phase::Failed));
        let ready = condition(&status, "Ready");
        assert_eq!(ready.reason, "InvalidSpec");
        assert!(
            ready.message.contains("spec.masking.patterns[0].regex"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn transition_times_move_only_when_a_condition_changes() {
        let first = desired(&session(), &[], at("2026-11-25T09:00:00Z"));
        let mut s = session();
        s.status = Some(first.clone());
        let second = desired(&s, &[], at("2026-11-25T09:30:00Z"));
        assert_eq!(
            condition(&second, "Ready").last_transition_time,
            condition(&first, "Ready").last_transition_time
        );
        s.status = Some(second);
        let expired = desired(&s, &[], at("2026-11-25T10:30:00Z"));
        assert_eq!(
            condition(&expired, "Expired")
                .last_transition_time
                .0
                .to_string(),
            "2026-11-25T10:30:00Z"
        );
    }
}
