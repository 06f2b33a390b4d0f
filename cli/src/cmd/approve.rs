//! `approve` and `deny`: decide a request the sidecar holds for review. The decision is added
//! to the AgentSession's `spec.approvals`; cassette's admission webhook stamps who decided and
//! when, and RBAC on AgentSessions decides who may. The sidecar reads it with its next status
//! report and lets the request through or refuses it.

use anyhow::{Context, Result, bail};
use cassette_api::{AgentSession, Approval, ReviewDecision};
use kube::api::{Api, Patch, PatchParams};

use crate::locate::Access;

pub async fn run(
    access: &Access,
    session: &str,
    id: &str,
    decision: ReviewDecision,
    reason: Option<String>,
) -> Result<()> {
    let cluster = access.cluster().await?;
    let api: Api<AgentSession> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let current = api
        .get(session)
        .await
        .with_context(|| format!("reading AgentSession {session:?} in {}", cluster.namespace))?;
    let status = current.status.clone().unwrap_or_default();
    let Some(held) = status.pending_reviews.iter().find(|r| r.id == id) else {
        let pending: Vec<&str> = status
            .pending_reviews
            .iter()
            .map(|r| r.id.as_str())
            .collect();
        bail!(
            "no request {id:?} is waiting for review in AgentSession {session:?} (pending: {})",
            if pending.is_empty() {
                "none".to_string()
            } else {
                pending.join(", ")
            }
        );
    };
    if let Some(earlier) = current.spec.approvals.iter().find(|a| a.id == id) {
        bail!("request {id:?} was already decided: {:?}", earlier.decision);
    }
    let mut approvals = current.spec.approvals.clone();
    approvals.push(Approval {
        id: id.to_string(),
        decision,
        by: None,
        at: None,
        reason,
        // The request decided is the one listed: a request held later under another id, or
        // listed differently, is not released by this decision.
        digest: held.digest.clone(),
    });
    // The resourceVersion makes this a compare-and-swap: a concurrent decision fails it
    // instead of being overwritten.
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": current.metadata.resource_version},
        "spec": {"approvals": approvals},
    });
    api.patch(session, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("recording the decision on AgentSession {session:?}"))?;
    let verb = match decision {
        ReviewDecision::Approve => "approved",
        ReviewDecision::Deny => "denied",
    };
    println!(
        "{verb} {id} in AgentSession {}/{session}",
        cluster.namespace
    );
    Ok(())
}
