//! The policy stage: the session's rules decide before anything goes upstream. A denied
//! request is refused (a push with git's own report); a `review` rule holds it ([`super::review`]);
//! audit mode records what it would have refused and lets it through.

use super::{Exchange, review};
use crate::conn::ConnCtx;
use crate::http::Body;
use crate::refusal::{Cause, Refusal};
use cassette_rules::git::ReceivePackRequest;
use cassette_rules::git::{GitService, Phase};
use cassette_rules::policy::{self, Outcome};
use cassette_rules::refusal::Protocol;
use http::{Method, StatusCode};
use http_body_util::BodyExt;

/// Decide; on refusal the body is read to its end first (so it is recorded and the agent
/// reads the refusal instead of a reset).
pub async fn decide(
    conn: &ConnCtx,
    ex: &Exchange,
    method: &Method,
    push: Option<&ReceivePackRequest>,
    read: &super::body::Read,
    body: Body,
) -> Result<Body, Refusal> {
    let proxy = &conn.proxy;
    let updates = push.map(|p| p.updates.as_slice()).unwrap_or(&[]);
    let request = policy::Request::for_verified(&ex.verified, method.as_str(), ex.path())
        .classified(ex.classified.google.as_ref())
        .pushing(updates)
        .changing_refs(read.refs())
        .shown_as(&ex.shown_target);
    let now = jiff::Timestamp::now();
    let decision = match &read.batch {
        Some(subs) => batch(proxy, ex, &request, subs, now),
        None => proxy.session.current().evaluator.evaluate(&request, now),
    };
    let rule = decision.would_block().then(|| decision.cause.label());
    ex.ledger.set_rule(rule.clone());
    // The refusal, and the body still to drain.
    let (refusal, unread) = match decision.outcome() {
        Outcome::Forward => {
            if decision.would_block() {
                Refusal::new(
                    Cause::Audit,
                    StatusCode::OK,
                    format!("audit mode, not enforced: {}", decision.reason),
                )
                .by_rule(rule)
                .record(&proxy.recording, Some(ex.id));
            }
            return Ok(body);
        }
        Outcome::Refuse => {
            let cause = match decision.cause {
                policy::Cause::Expired { .. } => Cause::Expiry,
                _ => Cause::Policy,
            };
            let refusal =
                Refusal::new(cause, StatusCode::FORBIDDEN, decision.reason.clone()).by_rule(rule);
            (refusal, Some(body))
        }
        Outcome::Hold => {
            // The approver decides on the whole request: its body is read (and recorded)
            // first, and the approval is bound to its digest.
            let mut body = body;
            match review::read_body(&mut body).await {
                Err(refusal) => (refusal.by_rule(rule), Some(body)),
                Ok(bytes) => match review::hold(proxy, ex, method, &decision, &bytes).await {
                    Ok(()) => return Ok(crate::http::full(bytes)),
                    Err(refusal) => (refusal.by_rule(rule), None),
                },
            }
        }
    };
    if let Some(body) = unread {
        drain(body).await;
    }
    Err(match push {
        // The push's commands were read: git's own report says which ref was refused.
        Some(push) => refusal.speaking(Protocol::Git {
            service: GitService::ReceivePack,
            phase: Phase::Rpc,
            push: Some((push.report_framing(), decision.git_rejections())),
        }),
        None => refusal,
    })
}

/// Read a body to its end (so it is recorded and the sender is not cut off mid-upload).
async fn drain(mut body: Body) {
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
}

/// Decide a batch by its parts (each classified on its own) and record each part's decision.
fn batch(
    proxy: &crate::proxy::Proxy,
    ex: &Exchange,
    request: &policy::Request<'_>,
    subs: &[cassette_rules::batch::SubRequest],
    now: jiff::Timestamp,
) -> policy::Decision {
    use cassette_recording::record::{Batch, BatchPart, Decision as Recorded, Event};
    let masker = proxy.session.current().masker;
    let classified: Vec<Option<cassette_rules::classify::Classification>> =
        subs.iter().map(|s| s.classify(&ex.verified)).collect();
    let shown: Vec<String> = subs
        .iter()
        .map(|s| masker.mask_target(&s.path_and_query).0)
        .collect();
    let paths: Vec<String> = subs.iter().map(|s| s.path().to_string()).collect();
    let parts: Vec<policy::Request<'_>> = subs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            policy::Request::new(
                s.host.as_deref().unwrap_or(ex.verified.name()),
                &s.method,
                &paths[i],
            )
            .classified(classified[i].as_ref())
            .shown_as(&shown[i])
        })
        .collect();
    let decided = proxy
        .session
        .current()
        .evaluator
        .evaluate_batch(request, &parts, now);
    let record = subs
        .iter()
        .zip(&decided.parts)
        .enumerate()
        .map(|(i, (s, d))| BatchPart {
            content_id: s.content_id.clone(),
            method: s.method.clone(),
            target: shown[i].clone(),
            service: classified[i].as_ref().map(|c| c.service.clone()),
            permission: classified[i]
                .as_ref()
                .map(|c| c.recorded_permission().to_string()),
            decision: match d.outcome() {
                Outcome::Forward => Recorded::Allow,
                Outcome::Refuse => Recorded::Deny,
                Outcome::Hold => Recorded::Review,
            },
            rule: d.would_block().then(|| d.cause.label()),
        })
        .collect();
    proxy.recording.emit(Event::Batch(Batch {
        exchange: ex.id,
        parts: record,
    }));
    decided.decision
}
