//! The review stage: a request a `review` rule holds waits, published in
//! `status.pendingReviews`, until an approver decides or the review times out. Each turn is a
//! `review` record; a refusal says which.

use super::Exchange;
use crate::proxy::Proxy;
use crate::refusal::{Cause, Refusal};
use crate::review::{Reviews, Verdict};
use cassette_recording::record::{Event, Review, ReviewState};
use http::{Method, StatusCode};

/// Hold the request until it is approved (`Ok`) or refused.
pub async fn hold(
    proxy: &Proxy,
    ex: &Exchange,
    method: &Method,
    decision: &cassette_rules::policy::Decision,
) -> Result<(), Refusal> {
    let record = |id: &str, state: ReviewState, by: Option<String>| {
        proxy.recording.emit(Event::Review(Review {
            exchange: ex.id,
            id: id.to_string(),
            state,
            by,
        }));
    };
    let refused = |message: String| Refusal::new(Cause::Review, StatusCode::FORBIDDEN, message);
    let Some(reviews) = &proxy.reviews else {
        record(&ex.id.to_string(), ReviewState::Denied, None);
        return Err(refused(format!(
            "{} (held for review, but this sidecar cannot reach its AgentSession to receive approvals, so it is denied)",
            decision.reason
        )));
    };
    let id = reviews.id(ex.id);
    record(&id, ReviewState::Pending, None);
    let request = format!("{method} {}{}", ex.verified.name(), ex.shown_target);
    let answer = reviews.hold(cassette_api::PendingReview {
        id: id.clone(),
        pod: reviews.pod().to_string(),
        digest: Some(Reviews::digest(&request)),
        request,
        permission: ex.classified.permission().map(str::to_string),
        rule: Some(decision.cause.label()),
        requested_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        )),
    });
    let _release = Release(reviews, &id);
    let timeout = proxy.session.current().review_timeout;
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(Verdict::Approved { by })) => {
            record(&id, ReviewState::Approved, by);
            Ok(())
        }
        Ok(Ok(Verdict::Denied { by })) => {
            let who = by
                .as_deref()
                .map(|b| format!(" by {b}"))
                .unwrap_or_default();
            record(&id, ReviewState::Denied, by.clone());
            Err(refused(format!(
                "{} (review {id} denied{who})",
                decision.reason
            )))
        }
        _ => {
            record(&id, ReviewState::TimedOut, None);
            Err(refused(format!(
                "{} (review {id}: no decision within {}s, so it is denied)",
                decision.reason,
                timeout.as_secs()
            )))
        }
    }
}

/// Releases the hold however the wait ends (the agent may hang up first).
struct Release<'a>(&'a Reviews, &'a str);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}
