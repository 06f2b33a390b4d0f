//! The AgentSession as the sidecar applies it: its policy, evaluated before each request goes
//! upstream, and its masking, applied to everything recorded. Compiled once at start with the
//! shared validation of `cassette-rules`, so a session the operator would refuse stops the
//! sidecar with the field named instead of half-applying.

use anyhow::{Context, Result};
use cassette_api::AgentSessionSpec;
use cassette_rules::mask::Masker;
use cassette_rules::policy::Evaluator;
use jiff::Timestamp;

/// How long a held request waits when the session does not say.
const DEFAULT_REVIEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The compiled session.
pub struct Session {
    pub evaluator: Evaluator,
    /// How long a request held for review waits for a decision before it is denied.
    pub review_timeout: std::time::Duration,
    /// Lives as long as the process: body maskers borrow it while bodies stream.
    pub masker: &'static Masker,
    /// `spec.recording.retention`, for the objects of the recording.
    pub retention: Option<std::time::Duration>,
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
        let evaluator = Evaluator::new(
            name,
            spec.as_ref().and_then(|s| s.policy.as_ref()),
            expires_at,
        )
        .map_err(|e| anyhow::anyhow!("AgentSession {name:?} has an invalid policy: {e}"))?;
        let masker = Masker::new(
            spec.as_ref().and_then(|s| s.masking.as_ref()),
            fingerprint_key,
        )
        .map_err(|e| anyhow::anyhow!("AgentSession {name:?} has invalid masking: {e}"))?;
        let review_timeout = match spec
            .as_ref()
            .and_then(|s| s.policy.as_ref())
            .and_then(|p| p.review_timeout.as_deref())
        {
            Some(text) => cassette_rules::validate::parse_duration(text)
                .map_err(|e| anyhow::anyhow!("spec.policy.reviewTimeout {text:?}: {e}"))?,
            None => DEFAULT_REVIEW_TIMEOUT,
        };
        let retention = match spec.as_ref().and_then(|s| s.recording.retention.as_deref()) {
            Some(text) => Some(
                cassette_rules::validate::parse_retention(text)
                    .map_err(|e| anyhow::anyhow!("spec.recording.retention {text:?}: {e}"))?,
            ),
            None => None,
        };
        Ok(Self {
            evaluator,
            review_timeout,
            masker: Box::leak(Box::new(masker)),
            retention,
        })
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
