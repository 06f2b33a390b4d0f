//! Why the sidecar refused something, as a type: the cause (its `reason` in the recording),
//! the policy rule if one decided, the status and the words the agent reads.
//!
//! The exchange's answer to a refusal is made in one place, `exchange::answer`; a refused
//! connection has no answer beyond being closed (or the explicit proxy's status line).

use crate::record::Recording;
use cassette_recording::record::Blocked;
use cassette_rules::refusal::Protocol;
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
    /// The request named another host (Host, `:authority`, absolute form) than the one the
    /// connection was verified for.
    Authority,
    /// The request could not be recorded and the session fails closed.
    Recording,
    /// The request named the session's recordings bucket.
    Sink,
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
    pub const ALL: [Cause; 13] = [
        Cause::Destination,
        Cause::Upstream,
        Cause::Authority,
        Cause::Recording,
        Cause::Sink,
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
            Cause::Authority => "authority",
            Cause::Recording => "recording",
            Cause::Sink => "sink",
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

/// One refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub cause: Cause,
    /// The policy rule that decided, in words (`rule "protect-main" (spec.policy.rules[0])`).
    pub rule: Option<String>,
    pub status: StatusCode,
    /// What the agent is told, and the recording keeps.
    pub message: String,
    /// The protocol the answer speaks, when the stage that refused knows better than the
    /// request's kind (a push whose commands were read gets git's per-ref report).
    pub protocol: Option<Protocol>,
}

impl Refusal {
    pub fn new(cause: Cause, status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            cause,
            rule: None,
            status,
            message: message.into(),
            protocol: None,
        }
    }

    /// The rule that decided.
    pub fn by_rule(mut self, rule: Option<String>) -> Self {
        self.rule = rule;
        self
    }

    /// Answer in this protocol.
    pub fn speaking(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// The answer the agent reads, in `protocol` unless the refusal names its own: gRPC
    /// status, Google's JSON error, git's report, or the message as text.
    pub fn answer(&self, protocol: &Protocol) -> cassette_rules::refusal::Refusal {
        cassette_rules::refusal::refuse(
            self.protocol.as_ref().unwrap_or(protocol),
            self.status.as_u16(),
            &format!("cassette: {}", self.message),
        )
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
    fn a_refusal_answers_in_the_clients_protocol() {
        let r = Refusal::new(Cause::Policy, StatusCode::FORBIDDEN, "denied by rule x");
        let text = r.answer(&Protocol::Http);
        assert_eq!(text.status, 403);
        assert_eq!(text.body, b"cassette: denied by rule x\n");
        let grpc = r.answer(&Protocol::Grpc);
        assert_eq!(grpc.status, 200);
        assert!(grpc.headers.contains(&("grpc-status", "7".to_string())));
        assert!(
            grpc.headers
                .iter()
                .any(|(n, v)| *n == "grpc-message" && v.contains("denied by rule x"))
        );
        let rest = r.answer(&Protocol::GoogleRest);
        let json: serde_json::Value = serde_json::from_slice(&rest.body).unwrap();
        assert_eq!(json["error"]["code"], 403);
        assert_eq!(json["error"]["status"], "PERMISSION_DENIED");
        assert!(!Cause::Audit.blocks() && Cause::Expiry.blocks());
    }
}
