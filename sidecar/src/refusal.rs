//! Why the sidecar refused something, as a type: the cause (its `reason` in the recording),
//! the policy rule if one decided, the status and the words the agent reads.
//!
//! The exchange's answer to a refusal is made in one place, `exchange::answer`; a refused
//! connection has no answer beyond being closed (or the explicit proxy's status line).

use crate::record::Recording;
use cassette_recording::record::Blocked;
use http::StatusCode;

/// What a refusal was for. Its `as_str` is the `reason` of the `blocked` record; FORMAT.md
/// lists exactly these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The destination may not be reached through the sidecar (the metadata server,
    /// loopback, link-local), cannot be resolved, or the connection carried something the
    /// recorder cannot read (not TLS, not HTTP, a broken handshake).
    Destination,
    /// The upstream could not be reached safely (connection or certificate failure).
    Upstream,
    /// The request could not be recorded and the session fails closed.
    Recording,
    /// A git request that could not be understood.
    Git,
    /// A policy rule (or the default action) denied the request.
    Policy,
    /// A held request was denied by a reviewer, timed out, or could not be held.
    Review,
    /// No real credential could be obtained for the swap.
    Credentials,
    /// The session had expired.
    Expiry,
    /// The metadata shim refused a request.
    Metadata,
    /// An upgrade (or a tunnel) to a protocol the recorder cannot read.
    Upgrade,
    /// Audit mode: what an enforcing policy would have refused (the request went on).
    Audit,
}

impl Cause {
    /// Every cause, in the order FORMAT.md lists them.
    #[cfg(test)]
    pub const ALL: [Cause; 11] = [
        Cause::Destination,
        Cause::Upstream,
        Cause::Recording,
        Cause::Git,
        Cause::Policy,
        Cause::Review,
        Cause::Credentials,
        Cause::Expiry,
        Cause::Metadata,
        Cause::Upgrade,
        Cause::Audit,
    ];

    /// The `reason` written in the `blocked` record.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Destination => "destination",
            Cause::Upstream => "upstream",
            Cause::Recording => "recording",
            Cause::Git => "git",
            Cause::Policy => "policy",
            Cause::Review => "review",
            Cause::Credentials => "credentials",
            Cause::Expiry => "expiry",
            Cause::Metadata => "metadata",
            Cause::Upgrade => "upgrade",
            Cause::Audit => "audit",
        }
    }

    /// Whether the refusal counts as blocked (audit records only say what would have been).
    pub fn blocks(self) -> bool {
        self != Cause::Audit
    }
}

/// A body of the sidecar's own making, for refusals a client reads in its own protocol
/// (a git report).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// One refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub cause: Cause,
    /// The policy rule that decided, in words (`rule "protect-main" (spec.policy.rules[0])`).
    pub rule: Option<String>,
    pub status: StatusCode,
    /// What the agent is told, and the recording keeps.
    pub message: String,
    /// The body the agent gets, when not the message as text.
    pub answer: Option<Answer>,
}

impl Refusal {
    pub fn new(cause: Cause, status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            cause,
            rule: None,
            status,
            message: message.into(),
            answer: None,
        }
    }

    /// The rule that decided.
    pub fn by_rule(mut self, rule: Option<String>) -> Self {
        self.rule = rule;
        self
    }

    /// Answer with a body of this shape instead of the message as text.
    pub fn answering(mut self, status: StatusCode, answer: Answer) -> Self {
        self.status = status;
        self.answer = Some(answer);
        self
    }

    /// The body the agent reads.
    pub fn body(&self) -> (&'static str, Vec<u8>) {
        match &self.answer {
            Some(a) => (a.content_type, a.body.clone()),
            None => (
                "text/plain; charset=utf-8",
                format!("cassette: {}\n", self.message).into_bytes(),
            ),
        }
    }

    /// Make the `blocked` record (counted unless it is an audit note).
    pub fn record(&self, recording: &Recording, exchange: Option<u64>) {
        recording.blocked(
            Blocked {
                exchange,
                reason: self.cause.as_str().into(),
                rule: self.rule.clone(),
                message: self.message.clone(),
            },
            self.cause.blocks(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reasons FORMAT.md documents are exactly the ones the sidecar writes.
    #[test]
    fn format_md_lists_exactly_the_reasons_written() {
        let format = include_str!("../../recording/FORMAT.md");
        let start = format
            .find("<!-- blocked reasons -->")
            .expect("FORMAT.md marks the list of blocked reasons");
        let end = format[start..]
            .find("<!-- end blocked reasons -->")
            .expect("FORMAT.md ends the list of blocked reasons")
            + start;
        let documented: Vec<&str> = format[start..end]
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let written: Vec<&str> = Cause::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(documented, written);
    }

    #[test]
    fn a_refusal_answers_in_words_unless_it_has_a_body_of_its_own() {
        let r = Refusal::new(Cause::Policy, StatusCode::FORBIDDEN, "denied by rule x");
        assert_eq!(
            r.body(),
            (
                "text/plain; charset=utf-8",
                b"cassette: denied by rule x\n".to_vec()
            )
        );
        let git = r.clone().answering(
            StatusCode::OK,
            Answer {
                content_type: "application/x-git-receive-pack-result",
                body: b"0019unpack ok\n".to_vec(),
            },
        );
        assert_eq!(git.status, StatusCode::OK);
        assert_eq!(git.body().0, "application/x-git-receive-pack-result");
        assert!(!Cause::Audit.blocks() && Cause::Expiry.blocks());
    }
}
