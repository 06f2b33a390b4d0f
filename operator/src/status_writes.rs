//! Who may write what into an AgentSession's status. The key an auditor trusts is a pod's
//! `status.pods[].publicKey`; the sidecar publishes it with the pod's only token, which the
//! kubelet binds to the pod, so the API server authenticates the write as that pod (the
//! `authentication.kubernetes.io/pod-name` and `pod-uid` extras). Anyone else who holds the
//! agent's service account — another pod running as it, a token made with `kubectl create
//! token` — has the same RBAC but not that binding. So:
//! - a pod's key is set only by a request bound to that pod (name and UID as the entry says),
//!   and once set it never changes (the CRD's transition rule says so too);
//! - a service account other than the operator's writes only with a pod-bound token, and only
//!   its own pod's entry and the reviews it holds.
//!
//! People (admins, auditors approving through the spec) are not service accounts: what RBAC
//! gives them stands, except the keys.

use cassette_api::{AgentSessionStatus, PendingReview, PodRecording};
use k8s_openapi::api::authentication::v1::UserInfo;

/// The user-info extra a pod-bound service-account token carries: the pod's name.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// The user-info extra a pod-bound service-account token carries: the pod's UID.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The pod a request is bound to, from its authenticated user.
fn bound_pod(user: &UserInfo) -> Option<(&str, &str)> {
    let extra = user.extra.as_ref()?;
    let one = |key: &str| match extra.get(key).map(Vec::as_slice) {
        Some([value]) => Some(value.as_str()),
        _ => None,
    };
    Some((one(POD_NAME_EXTRA)?, one(POD_UID_EXTRA)?))
}

/// Check an UPDATE of the status from `old` to `new` by `user`; `operator` is the operator's
/// own user name, when it runs as a service account.
pub fn check(
    user: &UserInfo,
    operator: Option<&str>,
    old: &AgentSessionStatus,
    new: &AgentSessionStatus,
) -> Result<(), String> {
    let who = user.username.as_deref().unwrap_or("(anonymous)");
    let bound = bound_pod(user);
    for entry in &new.pods {
        let before = old.pods.iter().find(|p| p.name == entry.name);
        let old_key = before.and_then(|p| p.public_key.as_deref());
        match (old_key, entry.public_key.as_deref()) {
            (Some(was), Some(is)) if was == is => {}
            (Some(_), _) => {
                return Err(format!(
                    "the public key of pod {:?}'s recording is set once, by its own sidecar, and \
                     cannot change or be removed ({who} tried)",
                    entry.name
                ));
            }
            (None, Some(_)) => {
                let own = bound.is_some_and(|(name, uid)| {
                    name == entry.name && entry.uid.as_deref() == Some(uid)
                });
                if !own {
                    return Err(format!(
                        "only pod {:?}'s own sidecar, with the token bound to that pod (name and \
                         UID as the entry gives them), may publish its recording's public key; \
                         the request came from {who}{}",
                        entry.name,
                        bound
                            .map(|(name, _)| format!(", bound to pod {name:?}"))
                            .unwrap_or_default()
                    ));
                }
            }
            (None, None) => {}
        }
    }
    let is_service_account = who.starts_with(SERVICE_ACCOUNT_PREFIX);
    if !is_service_account || operator == Some(who) {
        return Ok(());
    }
    let Some((pod, _)) = bound else {
        return Err(format!(
            "{who} writes a session's status only with the token the kubelet binds to a session \
             pod, and then only that pod's entry; this token is bound to no pod"
        ));
    };
    if without_pod(old, pod) != without_pod(new, pod) {
        return Err(format!(
            "{who}, bound to pod {pod:?}, may write only that pod's entry in status.pods and its \
             own status.pendingReviews; this change touches more"
        ));
    }
    Ok(())
}

/// The status without what `pod` may write: its entry and the reviews it holds.
fn without_pod(status: &AgentSessionStatus, pod: &str) -> AgentSessionStatus {
    let mut rest = status.clone();
    rest.pods.retain(|p: &PodRecording| p.name != pod);
    rest.pending_reviews
        .retain(|r: &PendingReview| r.pod != pod);
    rest
}

#[cfg(test)]
mod tests {
    use super::*;
    use cassette_api::Phase;
    use std::collections::BTreeMap;

    const AGENT_SA: &str = "system:serviceaccount:agents:coding-agent";
    const OPERATOR: &str = "system:serviceaccount:cassette-system:cassette-operator";

    fn user(name: &str, pod: Option<(&str, &str)>) -> UserInfo {
        UserInfo {
            username: Some(name.into()),
            extra: pod.map(|(name, uid)| {
                BTreeMap::from([
                    (POD_NAME_EXTRA.to_string(), vec![name.to_string()]),
                    (POD_UID_EXTRA.to_string(), vec![uid.to_string()]),
                ])
            }),
            ..Default::default()
        }
    }

    fn entry(name: &str, uid: &str, key: Option<&str>) -> PodRecording {
        PodRecording {
            name: name.into(),
            uid: Some(uid.into()),
            public_key: key.map(String::from),
            ..Default::default()
        }
    }

    fn status(pods: Vec<PodRecording>) -> AgentSessionStatus {
        AgentSessionStatus {
            pods,
            ..Default::default()
        }
    }

    fn refused(result: Result<(), String>, expected: &str) {
        match result {
            Err(m) => assert!(m.contains(expected), "{m}\nlacks {expected:?}"),
            Ok(()) => panic!("allowed; expected {expected:?}"),
        }
    }

    #[test]
    fn a_pod_publishes_its_own_key_once() {
        let empty = status(vec![]);
        let published = status(vec![entry("agent-0", "u0", Some("K0"))]);
        let sidecar = user(AGENT_SA, Some(("agent-0", "u0")));
        check(&sidecar, Some(OPERATOR), &empty, &published).unwrap();

        // Its later reports keep the key and move the counts.
        let mut later = published.clone();
        later.pods[0].exchanges = 9;
        check(&sidecar, Some(OPERATOR), &published, &later).unwrap();

        // Nobody changes it afterwards: not the pod, not an admin, not the operator.
        let swapped = status(vec![entry("agent-0", "u0", Some("FORGED"))]);
        for who in [sidecar.clone(), user("admin", None), user(OPERATOR, None)] {
            refused(
                check(&who, Some(OPERATOR), &published, &swapped),
                "is set once, by its own sidecar, and cannot change",
            );
        }
        refused(
            check(
                &sidecar,
                Some(OPERATOR),
                &published,
                &status(vec![entry("agent-0", "u0", None)]),
            ),
            "cannot change or be removed",
        );
    }

    #[test]
    fn nobody_else_publishes_a_pods_key() {
        let empty = status(vec![]);
        let forged = status(vec![entry("agent-0", "u0", Some("FORGED"))]);
        // A token of the agent's service account bound to no pod (kubectl create token).
        refused(
            check(&user(AGENT_SA, None), Some(OPERATOR), &empty, &forged),
            "the request came from system:serviceaccount:agents:coding-agent",
        );
        // Another pod running as the same service account.
        refused(
            check(
                &user(AGENT_SA, Some(("other", "u9"))),
                Some(OPERATOR),
                &empty,
                &forged,
            ),
            "bound to pod \"other\"",
        );
        // A pod of the same name from before (its UID differs).
        refused(
            check(
                &user(AGENT_SA, Some(("agent-0", "old-uid"))),
                Some(OPERATOR),
                &empty,
                &forged,
            ),
            "may publish its recording's public key",
        );
        // An admin.
        refused(
            check(&user("admin", None), Some(OPERATOR), &empty, &forged),
            "the request came from admin",
        );
    }

    #[test]
    fn a_pod_writes_only_its_own_parts() {
        let old = status(vec![
            entry("agent-0", "u0", Some("K0")),
            entry("agent-1", "u1", Some("K1")),
        ]);
        let sidecar = user(AGENT_SA, Some(("agent-1", "u1")));
        // Another pod's counts.
        let mut other = old.clone();
        other.pods[0].exchanges = 0;
        other.pods[0].blocked = 99;
        refused(
            check(&sidecar, Some(OPERATOR), &old, &other),
            "may write only that pod's entry in status.pods and its own status.pendingReviews",
        );
        // The phase, which is the operator's.
        let mut phase = old.clone();
        phase.phase = Some(Phase::Completed);
        refused(
            check(&sidecar, Some(OPERATOR), &old, &phase),
            "touches more",
        );
        // Its own reviews are its own.
        let mut reviews = old.clone();
        reviews.pending_reviews.push(PendingReview {
            id: "agent-1-1".into(),
            pod: "agent-1".into(),
            request: "DELETE storage.googleapis.com/storage/v1/b/logs".into(),
            ..Default::default()
        });
        check(&sidecar, Some(OPERATOR), &old, &reviews).unwrap();
        // An unbound token writes nothing at all.
        refused(
            check(&user(AGENT_SA, None), Some(OPERATOR), &old, &phase),
            "this token is bound to no pod",
        );
        // The operator and admins keep the rest of the status.
        check(&user(OPERATOR, None), Some(OPERATOR), &old, &phase).unwrap();
        check(&user("admin", None), None, &old, &phase).unwrap();
    }
}
