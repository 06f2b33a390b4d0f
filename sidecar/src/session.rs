//! The AgentSession as the sidecar applies it: its policy, evaluated before each request goes
//! upstream, and its masking, applied to everything recorded. Compiled with the shared
//! validation of `cassette-rules`, so a session the operator would refuse stops the sidecar
//! with the field named instead of half-applying.
//!
//! The session is live: [`Live`] holds the version in force, replaced when the AgentSession's
//! policy, masking or expiry changes while the pod runs (the status reporter feeds it what the
//! API server says), and wakes whatever must end when the session does.

use crate::record::Recording;
use anyhow::{Context, Result};
use cassette_api::{AgentSession, AgentSessionSpec, Masking, Policy};
use cassette_recording::record::{Event, SessionChange};
use cassette_rules::mask::Masker;
use cassette_rules::policy::Evaluator;
use jiff::Timestamp;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// How long a held request waits when the session does not say.
const DEFAULT_REVIEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The compiled session.
pub struct Session {
    pub evaluator: Evaluator,
    /// How long a request held for review waits for a decision before it is denied.
    pub review_timeout: std::time::Duration,
    /// Lives as long as the process: body maskers borrow it while bodies stream. A new one is
    /// made only when the masking itself changes.
    pub masker: &'static Masker,
    /// `spec.recording.retention`, for the objects of the recording.
    pub retention: Option<std::time::Duration>,
    /// When the session ends, when known.
    pub expires_at: Option<Timestamp>,
    /// What it was compiled from, to tell what a new version changes.
    policy: Option<Policy>,
    masking: Option<Masking>,
}

impl Session {
    /// Compile `spec_json` (the AgentSession's spec, as JSON; `None`: no policy and the
    /// built-in masking) for session `name`. `expires_at` overrides the spec's own expiry (the
    /// operator computes it from `maxDuration`).
    pub fn load(
        name: &str,
        spec_json: Option<&str>,
        expires_at: Option<&str>,
        fingerprint_key: &[u8],
    ) -> Result<Self> {
        let spec: Option<AgentSessionSpec> = spec_json
            .filter(|s| !s.trim().is_empty())
            .map(serde_json::from_str)
            .transpose()
            .context("CASSETTE_SESSION_SPEC is not an AgentSession spec")?;
        let expires_at = match expires_at.filter(|s| !s.is_empty()) {
            Some(text) => Some(text.parse::<Timestamp>().with_context(|| {
                format!("CASSETTE_EXPIRES_AT {text:?} is not an RFC 3339 time")
            })?),
            None => spec
                .as_ref()
                .and_then(|s| s.expires_at.as_ref())
                .map(|t| t.0),
        };
        Self::compile(name, spec.as_ref(), expires_at, fingerprint_key, None, &[])
    }

    /// Compile `spec` for session `name`, ending at `expires_at`; `masker`, when given, is
    /// used instead of compiling the spec's masking (which it must be compiled from), and a
    /// masker compiled here also masks `secrets` (brokered credentials' values) by value.
    fn compile(
        name: &str,
        spec: Option<&AgentSessionSpec>,
        expires_at: Option<Timestamp>,
        fingerprint_key: &[u8],
        masker: Option<&'static Masker>,
        secrets: &[(String, String)],
    ) -> Result<Self> {
        let policy = spec.and_then(|s| s.policy.clone());
        let masking = spec.and_then(|s| s.masking.clone());
        let evaluator = Evaluator::new(name, policy.as_ref(), expires_at)
            .map_err(|e| anyhow::anyhow!("AgentSession {name:?} has an invalid policy: {e}"))?;
        let masker = match masker {
            Some(m) => m,
            None => {
                let m = Masker::new(masking.as_ref(), fingerprint_key).map_err(|e| {
                    anyhow::anyhow!("AgentSession {name:?} has invalid masking: {e}")
                })?;
                &*Box::leak(Box::new(m.with_secrets(secrets)))
            }
        };
        let review_timeout = match policy.as_ref().and_then(|p| p.review_timeout.as_deref()) {
            Some(text) => cassette_rules::validate::parse_duration(text)
                .map_err(|e| anyhow::anyhow!("spec.policy.reviewTimeout {text:?}: {e}"))?,
            None => DEFAULT_REVIEW_TIMEOUT,
        };
        let retention = match spec.and_then(|s| s.recording.retention.as_deref()) {
            Some(text) => Some(
                cassette_rules::validate::parse_retention(text)
                    .map_err(|e| anyhow::anyhow!("spec.recording.retention {text:?}: {e}"))?,
            ),
            None => None,
        };
        Ok(Self {
            evaluator,
            review_timeout,
            masker,
            retention,
            expires_at,
            policy,
            masking,
        })
    }

    /// Why the session is over at `now`, in the words connections are ended with.
    pub fn ended(&self, now: Timestamp) -> Option<String> {
        self.expires_at
            .filter(|at| now >= *at)
            .map(|at| format!("the session expired at {at}"))
    }
}

/// The session in force, replaced while the pod runs when its AgentSession changes.
pub struct Live {
    name: String,
    fingerprint_key: Vec<u8>,
    current: watch::Sender<Arc<Session>>,
    /// The highest `metadata.generation` applied (0: only what the pod started with).
    generation: AtomicI64,
    recording: Recording,
    /// The brokered credentials' values seen so far (every version: a rotated-out value may
    /// still turn up), masked by value. Held while the session is replaced, so that no
    /// replacement drops one.
    secrets: Mutex<Vec<(String, String)>>,
}

impl Live {
    pub fn new(
        name: &str,
        session: Session,
        fingerprint_key: Vec<u8>,
        recording: Recording,
    ) -> Self {
        Self {
            name: name.to_string(),
            fingerprint_key,
            current: watch::channel(Arc::new(session)).0,
            generation: AtomicI64::new(0),
            recording,
            secrets: Mutex::new(Vec::new()),
        }
    }

    /// The session as it stands now.
    /// The session's fingerprint key (masks, body digests, review digests).
    pub fn fingerprint_key(&self) -> &[u8] {
        &self.fingerprint_key
    }

    pub fn current(&self) -> Arc<Session> {
        self.current.borrow().clone()
    }

    /// Take in the AgentSession as the API server has it. A newer generation whose policy,
    /// masking or expiry differs from the session in force replaces it (and is recorded);
    /// a spec that does not compile is logged and the session in force stays.
    pub fn apply(&self, object: &AgentSession) {
        let generation = object.metadata.generation.unwrap_or(0);
        if self.generation.fetch_max(generation, Ordering::AcqRel) >= generation {
            return;
        }
        let spec = &object.spec;
        let expires_at = cassette_rules::policy::session_expiry(object);
        let old = self.current();
        let mut changed = Vec::new();
        if spec.policy != old.policy {
            changed.push("policy".to_string());
        }
        if spec.masking != old.masking {
            changed.push("masking".to_string());
        }
        if expires_at != old.expires_at {
            changed.push("expiry".to_string());
        }
        if changed.is_empty() {
            return;
        }
        let secrets = self.secrets.lock().unwrap_or_else(PoisonError::into_inner);
        // Read again under the lock: a brokered credential may have replaced the masker.
        let old = self.current();
        let masker = (spec.masking == old.masking).then_some(old.masker);
        let session = match Session::compile(
            &self.name,
            Some(spec),
            expires_at,
            &self.fingerprint_key,
            masker,
            &secrets,
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), generation, "the AgentSession changed, but its new spec does not compile: the session in force stays");
                return;
            }
        };
        tracing::info!(generation, ?changed, expires_at = ?expires_at.map(|t| t.to_string()), "the AgentSession changed: applying it");
        self.recording.emit(Event::SessionChange(SessionChange {
            generation,
            changed,
            expires_at: expires_at.map(|t| t.to_string()),
            deleted: false,
        }));
        self.current.send_replace(Arc::new(session));
    }

    /// The AgentSession is gone: the session ends now.
    pub fn deleted(&self) {
        let _secrets = self.secrets.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.current();
        let now = Timestamp::now();
        if old.ended(now).is_some() {
            return;
        }
        let session = match Session::compile(
            &self.name,
            None,
            Some(now),
            &self.fingerprint_key,
            Some(old.masker),
            &[],
        ) {
            Ok(s) => Session {
                policy: old.policy.clone(),
                masking: old.masking.clone(),
                ..s
            },
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot end the session");
                return;
            }
        };
        tracing::warn!("the AgentSession was deleted: the session ends now");
        self.recording.emit(Event::SessionChange(SessionChange {
            generation: self.generation.load(Ordering::Acquire),
            changed: vec!["expiry".to_string()],
            expires_at: Some(now.to_string()),
            deleted: true,
        }));
        self.current.send_replace(Arc::new(session));
    }

    /// Mask `value`, the real value of brokered credential `name`, wherever it appears from
    /// now on (before it is first sent upstream, so that an echo of it is masked too). A value
    /// already masked changes nothing.
    pub fn mask_secret(&self, name: &str, value: &str) {
        let mut secrets = self.secrets.lock().unwrap_or_else(PoisonError::into_inner);
        if value.is_empty() || secrets.iter().any(|(n, v)| n == name && v == value) {
            return;
        }
        secrets.push((name.to_owned(), value.to_owned()));
        let old = self.current();
        let masker = match Masker::new(old.masking.as_ref(), &self.fingerprint_key) {
            Ok(m) => &*Box::leak(Box::new(m.with_secrets(&secrets))),
            Err(e) => {
                // The masking in force compiled before; it cannot fail now.
                tracing::error!(error = %e, "cannot recompile the masking for a brokered credential");
                return;
            }
        };
        self.current.send_replace(Arc::new(Session {
            evaluator: old.evaluator.clone(),
            review_timeout: old.review_timeout,
            masker,
            retention: old.retention,
            expires_at: old.expires_at,
            policy: old.policy.clone(),
            masking: old.masking.clone(),
        }));
    }

    /// Resolves with the reason once the session ends, following every change to it. A
    /// connection opened after the end is not ended by it (this never resolves): each of its
    /// requests is refused, and what comes in is recorded (the kubelet's probes still work).
    pub async fn ended(&self) -> String {
        self.until(|_| None).await
    }

    /// Resolves with the reason once the session ends or `stop` says what it carries is no
    /// longer allowed by the session in force; both are checked again on every change.
    pub async fn until(&self, mut stop: impl FnMut(&Session) -> Option<String>) -> String {
        let mut rx = self.current.subscribe();
        if rx.borrow().ended(Timestamp::now()).is_some() {
            return std::future::pending().await;
        }
        loop {
            let session = rx.borrow_and_update().clone();
            if let Some(why) = session.ended(Timestamp::now()).or_else(|| stop(&session)) {
                return why;
            }
            let expiry = async {
                match session.expires_at {
                    Some(at) => {
                        let left = Timestamp::now().duration_until(at);
                        let left = std::time::Duration::try_from(left).unwrap_or_default();
                        // Wake a little after, never before: the check above uses the clock.
                        tokio::time::sleep(left + std::time::Duration::from_millis(5)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    std::future::pending::<()>().await;
                },
                () = expiry => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cassette_rules::policy::{Outcome, Request};

    #[test]
    fn a_session_spec_compiles_into_policy_and_masking() {
        let spec = serde_json::json!({
            "maxDuration": "2h",
            "recording": {"sink": "file:///tmp/x"},
            "policy": {"rules": [
                {"name": "protect-main", "action": "deny", "match": {"gitRef": "refs/heads/main"}},
                {"action": "deny", "match": {"permission": "storage.buckets.delete"}}
            ]},
            "masking": {"patterns": [{"name": "internal", "regex": "acme_[a-z]{8}"}]}
        });
        let s = Session::load(
            "fix-ci",
            Some(&spec.to_string()),
            Some("2999-01-01T00:00:00Z"),
            b"k",
        )
        .unwrap();
        let now = Timestamp::now();
        let get = Request::new("storage.googleapis.com", "GET", "/storage/v1/b/x/o/y");
        assert_eq!(s.evaluator.evaluate(&get, now).outcome(), Outcome::Forward);
        let mut delete = Request::new("storage.googleapis.com", "DELETE", "/storage/v1/b/x");
        delete.permission = Some("storage.buckets.delete");
        assert_eq!(
            s.evaluator.evaluate(&delete, now).outcome(),
            Outcome::Refuse
        );
        let (masked, summary) = s.masker.mask(
            cassette_rules::mask::BodyKind::Other,
            b"token acme_abcdefgh here",
        );
        assert_eq!(summary.total(), 1);
        assert!(
            String::from_utf8(masked)
                .unwrap()
                .contains("«masked:internal:")
        );
    }

    fn object(generation: i64, spec: serde_json::Value) -> AgentSession {
        let mut o: AgentSession = serde_json::from_value(serde_json::json!({
            "apiVersion": "cassette.dev/v1alpha1",
            "kind": "AgentSession",
            "metadata": {"name": "fix-ci", "generation": generation,
                         "creationTimestamp": "2090-01-01T00:00:00Z"},
            "spec": spec,
        }))
        .unwrap();
        o.metadata.generation = Some(generation);
        o
    }

    fn open_spec() -> serde_json::Value {
        serde_json::json!({"maxDuration": "8760h", "recording": {"sink": "file:///tmp/x"}})
    }

    fn live() -> (Arc<crate::record::memory::MemorySink>, Live) {
        let (sink, recording) = crate::record::memory::MemorySink::recording();
        let spec = open_spec().to_string();
        // As the operator computes it: creation plus maxDuration.
        let expiry = Some("2091-01-01T00:00:00Z");
        let session = Session::load("fix-ci", Some(&spec), expiry, b"k").unwrap();
        (sink, Live::new("fix-ci", session, b"k".to_vec(), recording))
    }

    fn outcome(live: &Live, host: &str) -> Outcome {
        let get = Request::new(host, "GET", "/");
        live.current()
            .evaluator
            .evaluate(&get, Timestamp::now())
            .outcome()
    }

    #[test]
    fn a_new_policy_applies_at_once_and_is_recorded() {
        let (sink, live) = live();
        let masker = live.current().masker as *const Masker;
        assert_eq!(outcome(&live, "evil.test"), Outcome::Forward);
        let mut spec = open_spec();
        spec["policy"] = serde_json::json!({"rules": [
            {"name": "no-evil", "action": "deny", "match": {"host": "evil.test"}}
        ]});
        live.apply(&object(2, spec.clone()));
        assert_eq!(outcome(&live, "evil.test"), Outcome::Refuse);
        assert_eq!(outcome(&live, "good.test"), Outcome::Forward);
        let changes = sink.kind("session_change");
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0]["generation"], 2);
        assert_eq!(changes[0]["changed"], serde_json::json!(["policy"]));
        assert_eq!(
            live.current().masker as *const Masker,
            masker,
            "masking did not change: the masker is kept"
        );
        // An older or equal generation, or one that changes nothing of these, is not applied.
        live.apply(&object(1, open_spec()));
        live.apply(&object(2, open_spec()));
        assert_eq!(outcome(&live, "evil.test"), Outcome::Refuse);
        spec["approvals"] = serde_json::json!([]);
        live.apply(&object(3, spec));
        assert_eq!(sink.kind("session_change").len(), 1);
    }

    #[test]
    fn a_brokered_secret_stays_masked_when_the_masking_changes() {
        use cassette_rules::mask::BodyKind;
        let (_sink, live) = live();
        let secret = "cht-real-value-1234";
        let masked = |live: &Live| {
            let (out, _) = live
                .current()
                .masker
                .mask(BodyKind::Other, format!("echo {secret}").as_bytes());
            String::from_utf8(out).unwrap()
        };
        assert!(masked(&live).contains(secret));
        live.mask_secret("code", secret);
        assert!(masked(&live).contains("«masked:credential-code:"));
        // A new masking compiles a new masker: the brokered value is in it too.
        let mut spec = open_spec();
        spec["masking"] =
            serde_json::json!({"patterns": [{"name": "internal", "regex": "acme_[a-z]{8}"}]});
        live.apply(&object(2, spec));
        let text = masked(&live);
        assert!(!text.contains(secret), "{text}");
        // And the policy in force survives a new secret.
        let mut spec = open_spec();
        spec["policy"] = serde_json::json!({"rules": [
            {"name": "no-evil", "action": "deny", "match": {"host": "evil.test"}}
        ]});
        live.apply(&object(3, spec));
        live.mask_secret("code", "cht-rotated-5678");
        assert_eq!(outcome(&live, "evil.test"), Outcome::Refuse);
        assert!(!masked(&live).contains(secret));
    }

    #[test]
    fn a_spec_that_does_not_compile_leaves_the_session_in_force() {
        let (sink, live) = live();
        let mut spec = open_spec();
        spec["masking"] =
            serde_json::json!({"patterns": [{"name": "broken", "regex": "(unclosed"}]});
        live.apply(&object(2, spec));
        assert!(sink.kind("session_change").is_empty());
        assert_eq!(outcome(&live, "good.test"), Outcome::Forward);
    }

    #[tokio::test]
    async fn what_waits_for_the_end_wakes_when_the_expiry_is_moved_closer() {
        let (sink, live) = live();
        let live = Arc::new(live);
        let waiting = tokio::spawn({
            let live = live.clone();
            async move { live.ended().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the session runs for a year");
        let soon = Timestamp::now() + jiff::SignedDuration::from_millis(300);
        let mut spec = open_spec();
        spec["expiresAt"] = serde_json::json!(soon.to_string());
        spec.as_object_mut().unwrap().remove("maxDuration");
        live.apply(&object(2, spec));
        assert_eq!(
            sink.kind("session_change")[0]["changed"],
            serde_json::json!(["expiry"])
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "not before the new expiry");
        let why = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken at the new expiry")
            .unwrap();
        assert!(why.contains("expired"), "{why}");
        assert!(Timestamp::now() >= soon);
        assert_eq!(outcome(&live, "good.test"), Outcome::Refuse);
    }

    #[tokio::test]
    async fn a_deleted_session_ends_now() {
        let (sink, live) = live();
        let live = Arc::new(live);
        let waiting = tokio::spawn({
            let live = live.clone();
            async move { live.ended().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        live.deleted();
        assert_eq!(outcome(&live, "good.test"), Outcome::Refuse);
        let why = tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("ended at once")
            .unwrap();
        assert!(why.contains("expired"), "{why}");
        assert_eq!(sink.kind("session_change")[0]["deleted"], true);
        // Opened after the end: not ended by it.
        let after = tokio::time::timeout(std::time::Duration::from_millis(100), live.ended());
        assert!(after.await.is_err());
    }

    #[test]
    fn an_expired_session_refuses_everything() {
        let s = Session::load("old", None, Some("2020-01-01T00:00:00Z"), b"k").unwrap();
        let get = Request::new("example.com", "GET", "/");
        let decision = s.evaluator.evaluate(&get, Timestamp::now());
        assert_eq!(decision.outcome(), Outcome::Refuse);
        assert!(decision.reason.contains("expired"), "{}", decision.reason);
    }

    #[test]
    fn a_bad_spec_is_refused_with_the_field_named() {
        let spec = serde_json::json!({
            "maxDuration": "2h",
            "recording": {"sink": "file:///tmp/x"},
            "masking": {"patterns": [{"name": "broken", "regex": "(unclosed"}]}
        });
        let err = Session::load("bad", Some(&spec.to_string()), None, b"k")
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("spec.masking.patterns[0].regex"),
            "{err:#}"
        );
    }
}
