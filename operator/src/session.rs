//! What an AgentSession's spec implies, computed the same way by the injector and the
//! controller: when it expires, where its recordings are, what its pods add up to.

use cassette_api::{AgentSession, PodRecording, Totals};
use k8s_openapi::jiff::Timestamp;

/// When the session stops admitting pods and requests: `spec.expiresAt`, or the creation time
/// plus `spec.maxDuration` (computed as the sidecar computes it).
pub fn expires_at(session: &AgentSession) -> Option<Timestamp> {
    cassette_rules::policy::session_expiry(session)
}

/// Where the session's recordings are: `<sink>/<namespace>/<session>/`, as the sidecar writes.
pub fn recording_uri(sink: &str, namespace: &str, name: &str) -> String {
    format!("{}/{namespace}/{name}/", sink.trim_end_matches('/'))
}

/// The sums over the pods' own reports.
pub fn totals(pods: &[PodRecording]) -> Totals {
    pods.iter().fold(Totals::default(), |t, p| Totals {
        exchanges: t.exchanges.saturating_add(p.exchanges),
        blocked: t.blocked.saturating_add(p.blocked),
        masked: t.masked.saturating_add(p.masked),
        bytes: t.bytes.saturating_add(p.bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cassette_api::{AgentSessionSpec, Durability, OnFailure, Recording};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn session(expires_at: Option<&str>, max_duration: Option<&str>) -> AgentSession {
        let mut s = AgentSession::new(
            "s",
            AgentSessionSpec {
                agent: None,
                requested_by: None,
                expires_at: expires_at.map(|t| Time(t.parse().unwrap())),
                max_duration: max_duration.map(String::from),
                recording: Recording {
                    sink: "file:///r".into(),
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
        s.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        s
    }

    #[test]
    fn expiry_comes_from_expires_at_or_creation_plus_max_duration() {
        let at = |s: &AgentSession| expires_at(s).map(|t| t.to_string());
        assert_eq!(
            at(&session(Some("2026-02-01T00:00:00Z"), None)).as_deref(),
            Some("2026-02-01T00:00:00Z")
        );
        assert_eq!(
            at(&session(None, Some("1h30m"))).as_deref(),
            Some("2026-01-01T01:30:00Z")
        );
        assert_eq!(at(&session(None, Some("soon"))), None);
    }

    #[test]
    fn the_recording_uri_has_one_slash_between_parts() {
        assert_eq!(
            recording_uri("gs://b/agents/", "team", "fix-ci"),
            "gs://b/agents/team/fix-ci/"
        );
        assert_eq!(
            recording_uri("file:///r", "team", "fix-ci"),
            "file:///r/team/fix-ci/"
        );
    }

    #[test]
    fn totals_sum_the_pods() {
        let pod = |n: u64| PodRecording {
            name: format!("p{n}"),
            exchanges: n,
            blocked: 1,
            masked: 2,
            bytes: 10 * n,
            ..Default::default()
        };
        assert_eq!(
            totals(&[pod(3), pod(4)]),
            Totals {
                exchanges: 7,
                blocked: 2,
                masked: 4,
                bytes: 70
            }
        );
    }
}
