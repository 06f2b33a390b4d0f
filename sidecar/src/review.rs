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
    /// The pod's name: review ids are `<pod>-<exchange>`, unique across the session.
    pod: String,
    held: Mutex<BTreeMap<String, Held>>,
    /// Woken when a request is held or released, so the status is updated at once.
    pub changed: Notify,
}

impl Reviews {
    pub fn new(pod: &str) -> Self {
        Self {
            pod: pod.to_string(),
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
        format!("{}-{exchange}", self.pod)
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

    fn pending(id: &str) -> PendingReview {
        PendingReview {
            id: id.into(),
            pod: "agent-0".into(),
            request: "DELETE storage.googleapis.com/storage/v1/b/logs".into(),
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
        }
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
