//! The review stage: a request a `review` rule holds waits, published in
//! `status.pendingReviews`, until an approver decides or the review times out. Each turn is a
//! `review` record; a refusal says which. The held request's body is read (and so recorded)
//! before it is published, and the digest an approval names covers it: an approval releases
//! the request the approver saw, body and all.

use super::Exchange;
use crate::http::Body;
use crate::proxy::Proxy;
use crate::refusal::{Cause, Refusal};
use crate::review::{Reviews, Verdict};
use bytes::Bytes;
use cassette_recording::record::{Event, Review, ReviewState};
use http::{Method, StatusCode};

/// The most of a held request's body read before it is published for review; a larger one
/// is refused, since it could not be shown or bound to the approval whole.
pub const MAX_REVIEW_BODY: usize = 1 << 20;

/// A held request's body, read whole up to [`MAX_REVIEW_BODY`].
pub async fn read_body(body: &mut Body) -> Result<Bytes, Refusal> {
    super::body::whole(body, MAX_REVIEW_BODY).await.map_err(|e| {
        let why = match e {
            super::body::ReadError::TooLarge(limit) => format!(
                "the request is held for review, but its body is over {limit} bytes, more than a review holds to show and bind to an approval, so it is denied; send it in smaller requests, or ask for a rule that allows or denies it without review"
            ),
            super::body::ReadError::Read(e) => {
                format!("reading the body of a request held for review: {e}")
            }
        };
        Refusal::new(Cause::Review, StatusCode::FORBIDDEN, why)
    })
}

/// Hold the request until it is approved (`Ok`) or refused.
pub async fn hold(
    proxy: &Proxy,
    ex: &Exchange,
    method: &Method,
    decision: &cassette_rules::policy::Decision,
    body: &[u8],
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
    let mut request = format!("{method} {}{}", ex.verified.name(), ex.shown_target);
    if !body.is_empty() {
        request.push_str(&format!(" ({} byte body)", body.len()));
    }
    // The body by its keyed digest, the one its `body` record keeps: bound, and not guessable
    // from the status by whoever cannot read the recording.
    let body_digest = cassette_recording::body::body_digest(proxy.session.fingerprint_key(), body);
    let answer = reviews.hold(cassette_api::PendingReview {
        id: id.clone(),
        pod: reviews.pod().to_string(),
        digest: Some(Reviews::digest(&format!("{request}\n{body_digest}"))),
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
