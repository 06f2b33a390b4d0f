//! The policy stage: the session's rules decide before anything goes upstream. A denied
//! request is refused (a push with git's own report); a `review` rule holds it ([`super::review`]);
//! audit mode records what it would have refused and lets it through.

use super::{Exchange, review};
use crate::conn::ConnCtx;
use crate::http::Body;
use crate::refusal::{Answer, Cause, Refusal};
use cassette_rules::git::ReceivePackRequest;
use cassette_rules::policy::{self, Outcome};
use http::{Method, StatusCode};
use http_body_util::BodyExt;

/// Decide; on refusal the body is read to its end first (so it is recorded and the agent
/// reads the refusal instead of a reset).
pub async fn decide(
    conn: &ConnCtx,
    ex: &Exchange,
    method: &Method,
    push: Option<&ReceivePackRequest>,
    body: Body,
) -> Result<Body, Refusal> {
    let proxy = &conn.proxy;
    let host = conn
        .route
        .host
        .clone()
        .unwrap_or_else(|| ex.authority.clone());
    let updates = push.map(|p| p.updates.as_slice()).unwrap_or(&[]);
    let mut request = policy::Request::new(&host, method.as_str(), ex.path()).pushing(updates);
    request.service = ex.classified.service();
    request.permission = ex.classified.permission();
    let decision = proxy
        .session
        .evaluator
        .evaluate(&request, jiff::Timestamp::now());
    let rule = decision.would_block().then(|| decision.cause.label());
    ex.ledger.set_rule(rule.clone());
    let refusal = match decision.outcome() {
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
            Refusal::new(cause, StatusCode::FORBIDDEN, decision.reason.clone()).by_rule(rule)
        }
        Outcome::Hold => match review::hold(proxy, ex, method, &decision).await {
            Ok(()) => return Ok(body),
            Err(refusal) => refusal.by_rule(rule),
        },
    };
    drain(body).await;
    Err(match push {
        Some(push) => {
            let report = cassette_rules::git::refuse_push(
                push.report_framing(),
                &decision.git_rejections(),
                &format!("cassette: {}", refusal.message),
            );
            let status = StatusCode::from_u16(report.status).unwrap_or(StatusCode::FORBIDDEN);
            refusal.answering(
                status,
                Answer {
                    content_type: report.content_type,
                    body: report.body,
                },
            )
        }
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
