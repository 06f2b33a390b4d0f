//! Requests held for review. A held request waits here until an approval for its id appears
//! in the AgentSession's `spec.approvals` (written by `kubectl cassette approve|deny`), or
//! until the review timeout denies it. The status reporter publishes what is pending and
//! hands back the approvals it reads.

use cassette_api::{Approval, PendingReview, ReviewDecision};
use std::collections::BTreeMap;
use std::sync::Mutex;
use tokio::sync::{Notify, oneshot};

/// How a review ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approved { by: Option<String> },
    Denied { by: Option<String> },
}

struct Held {
    review: PendingReview,
    answer: oneshot::Sender<Verdict>,
}

/// The requests waiting for a decision.
pub struct Reviews {
    /// The pod's name: review ids are `<pod>-<start>-<exchange>`, unique across the session.
    pod: String,
    /// Random per start of the sidecar: a pod of the same name later (a StatefulSet's), or a
    /// recorder that lost its spool, never hands out an id an earlier approval names.
    start: String,
    held: Mutex<BTreeMap<String, Held>>,
    /// Woken when a request is held or released, so the status is updated at once.
    pub changed: Notify,
}

impl Reviews {
    pub fn new(pod: &str) -> Self {
        use ring::rand::SecureRandom;
        let mut nonce = [0u8; 4];
        // The system's random source; should it fail, the clock still tells starts apart.
        if ring::rand::SystemRandom::new().fill(&mut nonce).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
                .unwrap_or_default();
            nonce = nanos.to_be_bytes();
        }
        Self {
            pod: pod.to_string(),
            start: nonce.iter().map(|b| format!("{b:02x}")).collect(),
            held: Mutex::default(),
            changed: Notify::new(),
        }
    }

    /// The pod this sidecar records.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// The review id of an exchange.
    pub fn id(&self, exchange: u64) -> String {
        format!("{}-{}-{exchange}", self.pod, self.start)
    }

    /// `sha256:<hex>` of `what`: a held request is listed with the digest of its line as
    /// shown and its body's keyed digest.
    pub fn digest(request: &str) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, request.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hold a request; the receiver gets the verdict.
    pub fn hold(&self, review: PendingReview) -> oneshot::Receiver<Verdict> {
        let (answer, verdict) = oneshot::channel();
        self.lock()
            .insert(review.id.clone(), Held { review, answer });
        self.changed.notify_one();
        verdict
    }

    /// Stop holding `id` (it timed out, or its client went away).
    pub fn release(&self, id: &str) {
        if self.lock().remove(id).is_some() {
            self.changed.notify_one();
        }
    }

    /// What is waiting, for `status.pendingReviews`.
    pub fn pending(&self) -> Vec<PendingReview> {
        self.lock().values().map(|h| h.review.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Answer every held request that `approvals` decides.
    pub fn decide(&self, approvals: &[Approval]) {
        let mut held = self.lock();
        let mut released = false;
        for approval in approvals {
            let Some(waiting) = held.get(&approval.id) else {
                continue;
            };
            if approval.digest != waiting.review.digest {
                tracing::warn!(
                    id = approval.id, approved = ?approval.digest, held = ?waiting.review.digest,
                    "a decision names another request than the one held under its id; it is ignored"
                );
                continue;
            }
            if let Some(h) = held.remove(&approval.id) {
                let by = approval.by.clone();
                let verdict = match approval.decision {
                    ReviewDecision::Approve => Verdict::Approved { by },
                    ReviewDecision::Deny => Verdict::Denied { by },
                };
                let _ = h.answer.send(verdict);
                released = true;
            }
        }
        drop(held);
        if released {
            self.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &str = "DELETE storage.googleapis.com/storage/v1/b/logs";

    fn pending(id: &str) -> PendingReview {
        PendingReview {
            id: id.into(),
            pod: "agent-0".into(),
            request: REQUEST.into(),
            digest: Some(Reviews::digest(REQUEST)),
            ..Default::default()
        }
    }

    fn approval(id: &str, decision: ReviewDecision) -> Approval {
        Approval {
            id: id.into(),
            decision,
            by: Some("bob".into()),
            at: None,
            reason: None,
            digest: Some(Reviews::digest(REQUEST)),
        }
    }

    #[test]
    fn ids_differ_between_starts_of_the_same_pod() {
        // A crash, or a StatefulSet's next pod of the same name: exchange 1 again.
        let (before, after) = (Reviews::new("agent-0"), Reviews::new("agent-0"));
        assert_ne!(before.id(1), after.id(1));
        assert!(before.id(1).starts_with("agent-0-") && before.id(1).ends_with("-1"));
    }

    #[tokio::test]
    async fn an_approval_of_another_request_releases_nothing() {
        let reviews = Reviews::new("agent-0");
        let mut held = reviews.hold(pending("a"));
        let mut other = approval("a", ReviewDecision::Approve);
        other.digest = Some(Reviews::digest(
            "GET storage.googleapis.com/storage/v1/b/logs",
        ));
        reviews.decide(&[other]);
        let mut unbound = approval("a", ReviewDecision::Approve);
        unbound.digest = None;
        reviews.decide(&[unbound]);
        assert!(held.try_recv().is_err(), "still held");
        reviews.decide(&[approval("a", ReviewDecision::Approve)]);
        assert!(matches!(held.await, Ok(Verdict::Approved { .. })));
    }

    #[tokio::test]
    async fn approvals_release_exactly_their_request() {
        let reviews = Reviews::new("agent-0");
        let a = reviews.hold(pending("a"));
        let mut b = reviews.hold(pending("b"));
        assert_eq!(reviews.pending().len(), 2);
        reviews.decide(&[
            approval("a", ReviewDecision::Approve),
            approval("zzz", ReviewDecision::Deny),
        ]);
        assert_eq!(
            a.await.unwrap(),
            Verdict::Approved {
                by: Some("bob".into())
            }
        );
        assert!(b.try_recv().is_err(), "b is still held");
        assert_eq!(reviews.pending().len(), 1);
        reviews.decide(&[approval("b", ReviewDecision::Deny)]);
        assert_eq!(
            b.await.unwrap(),
            Verdict::Denied {
                by: Some("bob".into())
            }
        );
        assert!(reviews.is_empty());
    }

    #[test]
    fn released_requests_are_no_longer_pending() {
        let reviews = Reviews::new("agent-0");
        let _answer = reviews.hold(pending("a"));
        reviews.release("a");
        assert!(reviews.pending().is_empty());
    }
}
