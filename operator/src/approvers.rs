//! Four eyes on approvals: a request held for review is approved by someone other than the
//! person who asked for the session, and never by the agent or any workload. Denying stays
//! open to anyone who may edit the session. Pure: the webhook passes the specs and the user.

use crate::status_writes::POD_NAME_EXTRA;
use cassette_api::{AgentSessionSpec, ReviewDecision};
use k8s_openapi::api::authentication::v1::UserInfo;

/// Check the approvals `new` adds over `old` (on create, all of them) against who adds them.
pub fn check(
    namespace: &str,
    old: Option<&AgentSessionSpec>,
    new: &AgentSessionSpec,
    user: &UserInfo,
) -> Result<(), String> {
    let who = user.username.as_deref().unwrap_or("");
    let added = new.approvals.iter().filter(|a| {
        a.decision == ReviewDecision::Approve
            && !old.is_some_and(|o| {
                o.approvals
                    .iter()
                    .any(|p| p.id == a.id && p.decision == a.decision)
            })
    });
    for approval in added {
        let id = &approval.id;
        if new
            .requested_by
            .as_ref()
            .is_some_and(|r| !who.is_empty() && r.username == who)
        {
            return Err(format!(
                "spec.approvals: {who} requested this session and cannot also approve its review \
                 {id:?}; someone else must approve it (kubectl cassette approve), or deny it"
            ));
        }
        let agent = new
            .agent
            .as_ref()
            .and_then(|a| a.service_account.as_deref())
            .unwrap_or("default");
        let bound = user
            .extra
            .as_ref()
            .is_some_and(|e| e.contains_key(POD_NAME_EXTRA));
        if who == format!("system:serviceaccount:{namespace}:{agent}") || bound {
            return Err(format!(
                "spec.approvals: review {id:?} cannot be approved by {who}, {}; a person approves \
                 (kubectl cassette approve)",
                if bound {
                    "a pod's token"
                } else {
                    "the agent's own service account"
                }
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cassette_api::{Agent, Approval, RequestedBy};
    use std::collections::BTreeMap;

    fn spec(approvals: &[(&str, ReviewDecision)]) -> AgentSessionSpec {
        let mut spec: AgentSessionSpec = serde_json::from_value(serde_json::json!({
            "maxDuration": "2h",
            "recording": {"sink": "gs://b/p"}
        }))
        .unwrap();
        spec.requested_by = Some(RequestedBy {
            username: "alice".into(),
            uid: None,
            groups: vec![],
        });
        spec.agent = Some(Agent {
            service_account: Some("coding-agent".into()),
            ..Default::default()
        });
        spec.approvals = approvals
            .iter()
            .map(|(id, decision)| Approval {
                id: id.to_string(),
                decision: *decision,
                by: None,
                at: None,
                reason: None,
                digest: None,
            })
            .collect();
        spec
    }

    fn user(name: &str, pod: bool) -> UserInfo {
        UserInfo {
            username: Some(name.into()),
            extra: pod.then(|| BTreeMap::from([(POD_NAME_EXTRA.into(), vec!["agent-0".into()])])),
            ..Default::default()
        }
    }

    #[test]
    fn the_requester_the_agent_and_pods_do_not_approve() {
        let old = spec(&[]);
        let approve = spec(&[("agent-0-x-1", ReviewDecision::Approve)]);
        let deny = spec(&[("agent-0-x-1", ReviewDecision::Deny)]);
        check("agents", Some(&old), &approve, &user("bob", false)).unwrap();
        // The requester may deny, not approve.
        check("agents", Some(&old), &deny, &user("alice", false)).unwrap();
        let refused = |u: UserInfo, expected: &str| {
            let message = check("agents", Some(&old), &approve, &u).unwrap_err();
            assert!(message.contains(expected), "{message}");
        };
        refused(
            user("alice", false),
            "alice requested this session and cannot also approve",
        );
        refused(
            user("system:serviceaccount:agents:coding-agent", false),
            "the agent's own service account",
        );
        refused(
            user("system:serviceaccount:other:robot", true),
            "a pod's token",
        );
        // An approval already there is not re-judged when someone else edits the session.
        check("agents", Some(&approve), &approve, &user("alice", false)).unwrap();
    }
}
