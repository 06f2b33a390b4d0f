//! The AgentSession's policy, evaluated: ordered rules (the first match decides), a default
//! action, `enforce` or `audit`, and the session's expiry — into a [`Decision`] that says
//! what happens to a request and why, in words an admin can act on.
//!
//! A push is decided ref by ref: each ref update is matched with the request's other facts,
//! and one refused ref refuses the whole push. The current time is an argument.

use cassette_api::{Action, AgentSession, Policy, PolicyMode};
use jiff::{SignedDuration, Timestamp};

use crate::classify::Classification;
use crate::code_host::RestRef;
use crate::git::{RefRejection, RefUpdate};
use crate::glob::{HostPattern, PermissionPattern, SegmentGlob, normalize_host};
use crate::validate::{self, ValidationErrors};

/// When a session stops admitting pods and requests: `spec.expiresAt`, or the creation time
/// plus `spec.maxDuration`. `None` when neither can be known (the CRD requires one of them).
/// The operator (for the injector and the status) and the sidecar (for a spec that changed
/// while it runs) compute it here, the same way.
pub fn session_expiry(session: &AgentSession) -> Option<Timestamp> {
    if let Some(at) = &session.spec.expires_at {
        return Some(at.0);
    }
    let duration = session.spec.max_duration.as_deref()?;
    let duration = validate::parse_duration(duration).ok()?;
    let created = session.metadata.creation_timestamp.as_ref()?.0;
    created
        .checked_add(SignedDuration::try_from(duration).ok()?)
        .ok()
}

/// The permission recorded for a Google request cassette cannot classify.
pub const UNKNOWN_PERMISSION: &str = "unknown";

/// What policy knows about a request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The host, as sent (any case, maybe with a port).
    pub host: &'a str,
    /// The HTTP method.
    pub method: &'a str,
    /// The path, without the query (normalised and decoded before matching:
    /// [`crate::path::NormalizedPath::matching`]).
    pub path: &'a str,
    /// The Google API, when classified.
    pub service: Option<&'a str>,
    /// The IAM permission, when classified.
    pub permission: Option<&'a str>,
    /// The ref updates of a git push; empty otherwise.
    pub ref_updates: &'a [RefUpdate],
    /// The refs a code-host REST call changes ([`crate::code_host::ref_changes`]); empty
    /// otherwise.
    pub rest_refs: &'a [RestRef],
    /// The path as the recording shows it ([`crate::mask::Masker::mask_target`]), which
    /// reasons (refusal bodies, `status.pendingReviews`, logs) use instead of `path`.
    pub shown_path: Option<&'a str>,
}

impl<'a> Request<'a> {
    /// A request known by its line only.
    pub fn new(host: &'a str, method: &'a str, path: &'a str) -> Self {
        Request {
            host,
            method,
            path,
            service: None,
            permission: None,
            ref_updates: &[],
            rest_refs: &[],
            shown_path: None,
        }
    }

    /// Says how reasons show the path: masked, as recorded, so that a secret in the path
    /// reaches no refusal, review or log line.
    pub fn shown_as(mut self, masked_path: &'a str) -> Self {
        self.shown_path = Some(masked_path);
        self
    }

    /// Adds the refs a code-host REST call changes.
    pub fn changing_refs(mut self, refs: &'a [RestRef]) -> Self {
        self.rest_refs = refs;
        self
    }

    /// A request to the upstream the sidecar verified: the host is `host`, never the
    /// request's own Host header.
    pub fn for_verified(
        host: &'a crate::authority::VerifiedHost,
        method: &'a str,
        path: &'a str,
    ) -> Self {
        Request::new(host.name(), method, path)
    }

    /// Adds what classification found.
    pub fn classified(mut self, c: Option<&'a Classification>) -> Self {
        if let Some(c) = c {
            self.service = Some(&c.service);
            self.permission = c.permission.as_deref();
        }
        self
    }

    /// Adds the ref updates of a push.
    pub fn pushing(mut self, updates: &'a [RefUpdate]) -> Self {
        self.ref_updates = updates;
        self
    }

    /// A Google API request (it has a service) whose permission is not known.
    pub fn is_unclassified_google(&self) -> bool {
        self.service.is_some() && self.permission.is_none()
    }

    /// `DELETE storage.googleapis.com/storage/v1/b/logs (storage.buckets.delete)`; a Google
    /// request whose permission is not known says `(permission unknown)`.
    fn describe(&self) -> String {
        let host = normalize_host(self.host);
        let path = self.shown_path.unwrap_or(self.path);
        match self.permission {
            Some(p) => format!("{} {host}{path} ({p})", self.method),
            None if self.service.is_some() => {
                format!(
                    "{} {host}{path} (permission {UNKNOWN_PERMISSION})",
                    self.method
                )
            }
            None => format!("{} {host}{path}", self.method),
        }
    }
}

/// Why a decision was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// A rule matched.
    Rule {
        /// Its index in `spec.policy.rules`.
        index: usize,
        /// Its name, if it has one.
        name: Option<String>,
    },
    /// No rule matched: `spec.policy.defaultAction` decided.
    Default,
    /// A Google request whose permission is unknown matched no rule:
    /// `spec.policy.unclassified` decided.
    Unclassified,
    /// The session had expired.
    Expired {
        /// When it expired.
        at: Timestamp,
    },
}

impl Cause {
    /// `rule "protect-main" (spec.policy.rules[0])`, `spec.policy.defaultAction`, `expiry`.
    pub fn label(&self) -> String {
        match self {
            Cause::Rule {
                index,
                name: Some(name),
            } => format!("rule {name:?} (spec.policy.rules[{index}])"),
            Cause::Rule { index, name: None } => format!("spec.policy.rules[{index}]"),
            Cause::Default => "spec.policy.defaultAction".to_owned(),
            Cause::Unclassified => "spec.policy.unclassified".to_owned(),
            Cause::Expired { at } => format!("expiry at {at}"),
        }
    }
}

/// The decision on one ref of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefDecision {
    /// The full ref name.
    pub name: String,
    /// What the policy says for it.
    pub action: Action,
    /// Why.
    pub cause: Cause,
}

/// What happens to the request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Send it upstream.
    Forward,
    /// Refuse it (403, or a git report for a push) and record it as blocked.
    Refuse,
    /// Hold it until an approver decides or the review times out.
    Hold,
}

/// A policy decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What the policy says: allow, deny or review. In audit mode the request is forwarded
    /// whatever this says; the recording keeps it.
    pub action: Action,
    /// The session's mode.
    pub mode: PolicyMode,
    /// Why (for a push: the first refused ref's cause).
    pub cause: Cause,
    /// One sentence for the refusal body, the recording and the logs.
    pub reason: String,
    /// For a push, the decision on each ref update, in order.
    pub refs: Vec<RefDecision>,
    session: String,
}

impl Decision {
    /// What the sidecar does. Expiry refuses in either mode; audit mode forwards everything
    /// else.
    pub fn outcome(&self) -> Outcome {
        if matches!(self.cause, Cause::Expired { .. }) {
            return Outcome::Refuse;
        }
        match (self.mode, self.action) {
            (PolicyMode::Audit, _) | (_, Action::Allow) => Outcome::Forward,
            (PolicyMode::Enforce, Action::Deny) => Outcome::Refuse,
            (PolicyMode::Enforce, Action::Review) => Outcome::Hold,
        }
    }

    /// Whether an enforcing policy would not have let the request straight through: what
    /// audit mode records as "would have been refused".
    pub fn would_block(&self) -> bool {
        self.action != Action::Allow
    }

    /// The `ng` lines for a refused push: refused refs say which session protects them;
    /// the others say they were held back with them.
    pub fn git_rejections(&self) -> Vec<RefRejection> {
        let session = &self.session;
        self.refs
            .iter()
            .map(|r| {
                let reason = match (&r.cause, r.action) {
                    (Cause::Expired { at }, _) => {
                        format!("AgentSession {session:?} expired at {at}")
                    }
                    (_, Action::Deny) => format!("protected by AgentSession {session:?}"),
                    (_, Action::Review) => {
                        format!("held for review by AgentSession {session:?}")
                    }
                    (_, Action::Allow) => format!(
                        "not updated: another ref in this push is protected by AgentSession {session:?}"
                    ),
                };
                RefRejection {
                    name: r.name.clone(),
                    reason,
                }
            })
            .collect()
    }
}

/// The decision on a Google batch and on each of its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchDecision {
    /// What happens to the batch: refused when any part is refused.
    pub decision: Decision,
    /// Each sub-request's own decision, in order.
    pub parts: Vec<Decision>,
}

/// A rule, compiled.
#[derive(Debug, Clone)]
struct Rule {
    index: usize,
    name: Option<String>,
    action: Action,
    host: Option<HostPattern>,
    method: Option<String>,
    path: Option<SegmentGlob>,
    service: Option<String>,
    permission: Option<PermissionPattern>,
    git_ref: Option<SegmentGlob>,
}

impl Rule {
    fn cause(&self) -> Cause {
        Cause::Rule {
            index: self.index,
            name: self.name.clone(),
        }
    }

    /// Whether every condition given matches. `git_ref` is the ref being decided, for a push.
    fn matches(&self, r: &Request<'_>, decoded_path: &str, git_ref: Option<&str>) -> bool {
        self.matches_but_ref(r, decoded_path)
            && self
                .git_ref
                .as_ref()
                .is_none_or(|g| git_ref.is_some_and(|name| g.matches(name)))
    }

    /// Whether every condition but `gitRef` matches.
    fn matches_but_ref(&self, r: &Request<'_>, decoded_path: &str) -> bool {
        self.host.as_ref().is_none_or(|h| h.matches(r.host))
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.eq_ignore_ascii_case(r.method))
            && self.path.as_ref().is_none_or(|p| p.matches(decoded_path))
            && self
                .service
                .as_ref()
                .is_none_or(|s| r.service == Some(s.as_str()))
            && self
                .permission
                .as_ref()
                .is_none_or(|p| r.permission.is_some_and(|perm| p.matches(perm)))
    }
}

/// A session's policy, compiled once and evaluated for every request.
#[derive(Debug, Clone)]
pub struct Evaluator {
    session: String,
    expires_at: Option<Timestamp>,
    mode: PolicyMode,
    default_action: Action,
    unclassified: Option<Action>,
    rules: Vec<Rule>,
}

impl Evaluator {
    /// Compiles the policy of session `session` (its name, for messages). `expires_at` is
    /// when the session stops admitting requests (from `spec.expiresAt`, or creation plus
    /// `spec.maxDuration`). No policy allows everything until expiry.
    pub fn new(
        session: &str,
        policy: Option<&Policy>,
        expires_at: Option<Timestamp>,
    ) -> Result<Evaluator, ValidationErrors> {
        let default = Policy::default();
        let policy = policy.unwrap_or(&default);
        let mut errors = Vec::new();
        validate::policy(policy, &mut errors);
        if !errors.is_empty() {
            return Err(ValidationErrors(errors));
        }
        let rules = policy
            .rules
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let m = &r.matches;
                // Validated above, so these parse.
                Rule {
                    index,
                    name: r.name.clone(),
                    action: r.action,
                    host: m.host.as_ref().and_then(|h| HostPattern::parse(&h.0).ok()),
                    method: m.method.clone(),
                    path: m.path.as_deref().and_then(|p| SegmentGlob::parse(p).ok()),
                    service: m.service.clone(),
                    permission: m
                        .permission
                        .as_deref()
                        .and_then(|p| PermissionPattern::parse(p).ok()),
                    git_ref: m
                        .git_ref
                        .as_deref()
                        .and_then(|g| SegmentGlob::parse(g).ok()),
                }
            })
            .collect();
        Ok(Evaluator {
            session: session.to_owned(),
            expires_at,
            mode: policy.mode,
            default_action: policy.default_action,
            unclassified: policy.unclassified.map(Action::from),
            rules,
        })
    }

    /// Whether any rule names a `gitRef`: then a push (or a code-host ref change) whose refs
    /// cannot be read — a Content-Encoding that does not decode, an ambiguous path
    /// ([`crate::path::NormalizedPath::is_ambiguous`]), a body over the bound — must be
    /// refused rather than forwarded unread.
    pub fn guards_refs(&self) -> bool {
        self.rules.iter().any(|r| r.git_ref.is_some())
    }

    /// Decides `request` at time `now`.
    pub fn evaluate(&self, request: &Request<'_>, now: Timestamp) -> Decision {
        let session = &self.session;
        let what = request.describe();
        if let Some(at) = self.expires_at
            && now >= at
        {
            let cause = Cause::Expired { at };
            return Decision {
                action: Action::Deny,
                mode: self.mode,
                refs: request
                    .ref_updates
                    .iter()
                    .map(|u| RefDecision {
                        name: u.name.clone(),
                        action: Action::Deny,
                        cause: cause.clone(),
                    })
                    .collect(),
                cause,
                reason: format!(
                    "AgentSession {session:?} expired at {at}; the request was blocked and recorded"
                ),
                session: session.clone(),
            };
        }
        let path = crate::path::normalize_path(request.path).matching();
        if request.ref_updates.is_empty() && !request.rest_refs.is_empty() {
            return self.evaluate_rest_refs(request, &path, &what);
        }
        if request.ref_updates.is_empty() {
            let (action, cause) = self.first_match(request, &path, None);
            let reason = self.reason(action, &cause, &what);
            return self.decision(action, cause, reason, Vec::new());
        }
        let refs: Vec<RefDecision> = request
            .ref_updates
            .iter()
            .map(|u| {
                let (action, cause) = self.first_match(request, &path, Some(&u.name));
                RefDecision {
                    name: u.name.clone(),
                    action,
                    cause,
                }
            })
            .collect();
        // One refused ref refuses the push; a ref held for review holds it.
        let deciding = refs
            .iter()
            .position(|r| r.action == Action::Deny)
            .or_else(|| refs.iter().position(|r| r.action == Action::Review));
        let (action, cause, reason) = match deciding {
            Some(i) => {
                let r = &refs[i];
                let what = format!(
                    "the push to {} ({})",
                    r.name,
                    request.ref_updates[i].change()
                );
                (
                    r.action,
                    r.cause.clone(),
                    self.reason(r.action, &r.cause, &what),
                )
            }
            None => {
                let (action, cause) = (refs[0].action, refs[0].cause.clone());
                let what = format!("the push of {} ref update(s) to {what}", refs.len());
                (action, cause.clone(), self.reason(action, &cause, &what))
            }
        };
        self.decision(action, cause, reason, refs)
    }

    /// Decides a DNS lookup of `name` at time `now`: the host rules applied to a name alone.
    /// A name is refused only when no request to that host could pass: the first rule whose
    /// host matches decides when it has no other condition; a matching rule with other
    /// conditions that allows (or holds for review) lets the name resolve, one that denies is
    /// passed over (other requests to the host may still pass); then the default action. A
    /// review is never held for a lookup: the requests that follow it are.
    pub fn evaluate_name(&self, name: &str, now: Timestamp) -> Decision {
        let session = &self.session;
        let what = format!("the DNS lookup of {}", normalize_host(name));
        if let Some(at) = self.expires_at
            && now >= at
        {
            return self.decision(
                Action::Deny,
                Cause::Expired { at },
                format!(
                    "AgentSession {session:?} expired at {at}; the DNS lookup of {} was refused and recorded",
                    normalize_host(name)
                ),
                Vec::new(),
            );
        }
        let request = Request::new(name, "", "/");
        let mut decided = None;
        for rule in &self.rules {
            if !rule.host.as_ref().is_none_or(|h| h.matches(request.host)) {
                continue;
            }
            let conditional = rule.method.is_some()
                || rule.path.is_some()
                || rule.service.is_some()
                || rule.permission.is_some()
                || rule.git_ref.is_some();
            match (conditional, rule.action) {
                (false, action) => decided = Some((action, rule.cause())),
                (true, Action::Allow | Action::Review) => {
                    decided = Some((Action::Allow, rule.cause()))
                }
                (true, Action::Deny) => continue,
            }
            break;
        }
        let (action, cause) = decided.unwrap_or((self.default_action, Cause::Default));
        let action = match action {
            Action::Review => Action::Allow,
            other => other,
        };
        let reason = self.reason(action, &cause, &what);
        self.decision(action, cause, reason, Vec::new())
    }

    /// Decides a Google batch ([`crate::batch`]): the batch request itself, then each of its
    /// sub-requests as a request of its own (classified on its own). The first refused one
    /// refuses the whole batch, else the first held one holds it; `parts` has every
    /// sub-request's decision, in order, for the recording.
    pub fn evaluate_batch(
        &self,
        batch: &Request<'_>,
        parts: &[Request<'_>],
        now: Timestamp,
    ) -> BatchDecision {
        let whole = self.evaluate(batch, now);
        let decisions: Vec<Decision> = parts.iter().map(|p| self.evaluate(p, now)).collect();
        if whole.action == Action::Deny || matches!(whole.cause, Cause::Expired { .. }) {
            return BatchDecision {
                decision: whole,
                parts: decisions,
            };
        }
        let deciding = decisions
            .iter()
            .position(|d| d.action == Action::Deny)
            .or_else(|| decisions.iter().position(|d| d.action == Action::Review));
        let decision = match deciding {
            Some(i) => {
                let d = &decisions[i];
                Decision {
                    reason: format!(
                        "part {} of {} of the batch {}: {}",
                        i + 1,
                        decisions.len(),
                        batch.describe(),
                        d.reason
                    ),
                    ..d.clone()
                }
            }
            None => whole,
        };
        BatchDecision {
            decision,
            parts: decisions,
        }
    }

    /// A REST call that moves refs: each ref as a push's ref update would be decided. A ref
    /// the request does not name is decided as if every `gitRef` rule that denies or holds
    /// matched it (what cannot be read is refused under such a rule), and no `gitRef` rule
    /// that allows.
    fn evaluate_rest_refs(&self, request: &Request<'_>, path: &str, what: &str) -> Decision {
        let refs: Vec<RefDecision> = request
            .rest_refs
            .iter()
            .map(|r| {
                let (action, cause) = match &r.name {
                    Some(name) => self.first_match(request, path, Some(name)),
                    None => self.first_match_unknown_ref(request, path),
                };
                RefDecision {
                    name: r.name.clone().unwrap_or_else(|| {
                        format!("(unknown ref: {})", r.why.as_deref().unwrap_or("not named"))
                    }),
                    action,
                    cause,
                }
            })
            .collect();
        let deciding = refs
            .iter()
            .position(|r| r.action == Action::Deny)
            .or_else(|| refs.iter().position(|r| r.action == Action::Review))
            .unwrap_or(0);
        let r = &refs[deciding];
        let what = format!("{what}, which changes {}", r.name);
        let reason = self.reason(r.action, &r.cause, &what);
        let (action, cause) = (r.action, r.cause.clone());
        self.decision(action, cause, reason, refs)
    }

    fn first_match_unknown_ref(&self, r: &Request<'_>, path: &str) -> (Action, Cause) {
        let otherwise = (self.default_action, Cause::Default);
        self.rules
            .iter()
            .find(|rule| match &rule.git_ref {
                Some(_) if rule.action == Action::Allow => false,
                Some(_) => rule.matches_but_ref(r, path),
                None => rule.matches(r, path, None),
            })
            .map_or(otherwise, |rule| (rule.action, rule.cause()))
    }

    fn decision(
        &self,
        action: Action,
        cause: Cause,
        reason: String,
        refs: Vec<RefDecision>,
    ) -> Decision {
        Decision {
            action,
            mode: self.mode,
            cause,
            reason,
            refs,
            session: self.session.clone(),
        }
    }

    fn first_match(&self, r: &Request<'_>, path: &str, git_ref: Option<&str>) -> (Action, Cause) {
        let otherwise = match self.unclassified {
            Some(action) if r.is_unclassified_google() => (action, Cause::Unclassified),
            _ => (self.default_action, Cause::Default),
        };
        self.rules
            .iter()
            .find(|rule| rule.matches(r, path, git_ref))
            .map_or(otherwise, |rule| (rule.action, rule.cause()))
    }

    fn reason(&self, action: Action, cause: &Cause, what: &str) -> String {
        let session = &self.session;
        let by = match cause {
            Cause::Default => format!(
                "no rule matches and spec.policy.defaultAction is {}",
                action_name(action)
            ),
            Cause::Unclassified => format!(
                "its IAM permission is unknown to cassette, no rule matches, and \
                 spec.policy.unclassified is {}",
                action_name(action)
            ),
            other => format!("by {}", other.label()),
        };
        match (action, self.mode) {
            (Action::Allow, _) => format!("AgentSession {session:?} allows {what} {by}"),
            (Action::Deny, PolicyMode::Enforce) => format!(
                "AgentSession {session:?} denies {what} {by}; the request was blocked and recorded"
            ),
            (Action::Review, PolicyMode::Enforce) => format!(
                "AgentSession {session:?} holds {what} for review {by}; it waits for kubectl cassette approve or deny, or is denied when the review times out"
            ),
            (Action::Deny, PolicyMode::Audit) => format!(
                "AgentSession {session:?} would deny {what} {by}; the policy is in audit mode, so the request was allowed and recorded"
            ),
            (Action::Review, PolicyMode::Audit) => format!(
                "AgentSession {session:?} would hold {what} for review {by}; the policy is in audit mode, so the request was allowed and recorded"
            ),
        }
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Allow => "allow",
        Action::Deny => "deny",
        Action::Review => "review",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{HttpRequest, classify};
    use crate::git::{self, ReportFraming, SideBand};
    use cassette_api::{HostPattern as ApiHost, PolicyRule, RuleMatch};

    const T0: &str = "2026-11-25T09:00:00Z";

    fn now() -> Timestamp {
        T0.parse().unwrap()
    }

    fn rule(name: &str, action: Action, m: RuleMatch) -> PolicyRule {
        PolicyRule {
            name: Some(name.into()),
            action,
            matches: m,
        }
    }

    /// The policy of the e2e scenario: main is protected, bucket deletion is refused,
    /// secrets need review, everything else passes.
    fn policy() -> Policy {
        Policy {
            mode: PolicyMode::Enforce,
            default_action: Action::Allow,
            rules: vec![
                rule(
                    "protect-main",
                    Action::Deny,
                    RuleMatch {
                        git_ref: Some("refs/heads/main".into()),
                        ..Default::default()
                    },
                ),
                rule(
                    "no-bucket-deletes",
                    Action::Deny,
                    RuleMatch {
                        permission: Some("storage.buckets.delete".into()),
                        ..Default::default()
                    },
                ),
                rule(
                    "secrets-need-review",
                    Action::Review,
                    RuleMatch {
                        host: Some(ApiHost("*.googleapis.com".into())),
                        service: Some("secretmanager".into()),
                        ..Default::default()
                    },
                ),
                rule(
                    "release-tags",
                    Action::Deny,
                    RuleMatch {
                        git_ref: Some("refs/tags/*".into()),
                        method: Some("POST".into()),
                        ..Default::default()
                    },
                ),
                rule(
                    "no-logs-writes",
                    Action::Deny,
                    RuleMatch {
                        path: Some("/storage/v1/b/logs/**".into()),
                        method: Some("DELETE".into()),
                        ..Default::default()
                    },
                ),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_name_is_refused_only_when_no_request_to_its_host_could_pass() {
        let host = |h: &str| RuleMatch {
            host: Some(ApiHost(h.into())),
            ..Default::default()
        };
        let p = Policy {
            mode: PolicyMode::Enforce,
            default_action: Action::Deny,
            rules: vec![
                rule("no-pastebin", Action::Deny, host("*.pastebin.example")),
                rule(
                    "no-deletes",
                    Action::Deny,
                    RuleMatch {
                        method: Some("DELETE".into()),
                        ..host("storage.googleapis.com")
                    },
                ),
                rule(
                    "reads",
                    Action::Allow,
                    RuleMatch {
                        method: Some("GET".into()),
                        ..host("storage.googleapis.com")
                    },
                ),
                rule("git", Action::Review, host("git.test")),
            ],
            ..Default::default()
        };
        let e = evaluator(&p);
        let refused = e.evaluate_name("x.pastebin.example", now());
        assert_eq!(refused.outcome(), Outcome::Refuse);
        assert_eq!(
            refused.cause.label(),
            "rule \"no-pastebin\" (spec.policy.rules[0])"
        );
        assert!(
            refused
                .reason
                .contains("denies the DNS lookup of x.pastebin.example"),
            "{}",
            refused.reason
        );
        // A deny with a method passes over the name; the allow after it lets it resolve.
        let storage = e.evaluate_name("Storage.GoogleAPIs.com.", now());
        assert_eq!(storage.outcome(), Outcome::Forward);
        assert_eq!(
            storage.cause.label(),
            "rule \"reads\" (spec.policy.rules[2])"
        );
        // Review holds requests, not lookups.
        assert_eq!(
            e.evaluate_name("git.test", now()).outcome(),
            Outcome::Forward
        );
        // Nothing matches: the default action.
        let other = e.evaluate_name("attacker.tld", now());
        assert_eq!(other.outcome(), Outcome::Refuse);
        assert_eq!(other.cause, Cause::Default);
        // Expired: every lookup is refused.
        let later: Timestamp = "2026-11-25T11:00:00Z".parse().unwrap();
        let expired = e.evaluate_name("git.test", later);
        assert_eq!(expired.outcome(), Outcome::Refuse);
        assert!(matches!(expired.cause, Cause::Expired { .. }));
    }

    fn evaluator(p: &Policy) -> Evaluator {
        let expires: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        Evaluator::new("fix-ci", Some(p), Some(expires)).unwrap()
    }

    fn decide(e: &Evaluator, host: &str, method: &str, target: &str) -> Decision {
        let c = classify(&HttpRequest::from_target(host, method, target, None));
        let path = target.split('?').next().unwrap();
        e.evaluate(
            &Request::new(host, method, path).classified(c.as_ref()),
            now(),
        )
    }

    fn update(name: &str, old: char, new: char) -> RefUpdate {
        RefUpdate {
            old: old.to_string().repeat(40),
            new: new.to_string().repeat(40),
            name: name.into(),
        }
    }

    #[test]
    fn rules_in_order_first_match_decides() {
        let p = policy();
        let e = evaluator(&p);
        let cases = [
            (
                "storage.googleapis.com",
                "DELETE",
                "/storage/v1/b/bkt",
                Action::Deny,
                Some(1),
            ),
            (
                "storage.googleapis.com",
                "GET",
                "/storage/v1/b/bkt/o/obj?alt=media",
                Action::Allow,
                None,
            ),
            (
                "secretmanager.googleapis.com",
                "GET",
                "/v1/projects/p/secrets/s/versions/latest:access",
                Action::Review,
                Some(2),
            ),
            (
                "storage.googleapis.com",
                "DELETE",
                "/storage/v1/b/logs/o/x",
                Action::Deny,
                Some(4),
            ),
            // Encoded paths are matched decoded: no way around a path rule by escaping.
            (
                "storage.googleapis.com",
                "DELETE",
                "/storage/v1/b/lo%67s/o/x",
                Action::Deny,
                Some(4),
            ),
            (
                "storage.googleapis.com",
                "delete",
                "/storage/v1/b/logs/o/x",
                Action::Deny,
                Some(4),
            ),
            (
                "github.com",
                "GET",
                "/org/repo.git/info/refs",
                Action::Allow,
                None,
            ),
        ];
        for (host, method, target, action, rule) in cases {
            let d = decide(&e, host, method, target);
            assert_eq!(d.action, action, "{method} {host}{target}: {}", d.reason);
            let index = match d.cause {
                Cause::Rule { index, .. } => Some(index),
                _ => None,
            };
            assert_eq!(index, rule, "{method} {host}{target}");
        }
    }

    /// The attacker's spellings of a path a rule denies: dot segments, doubled slashes and
    /// escaped unreserved characters name the same path to the server, so to the rule too.
    #[test]
    fn path_rules_hold_for_every_spelling_of_the_path() {
        let p = policy();
        let e = evaluator(&p);
        for target in [
            "/storage/v1/b/x/../logs/o/y",
            "//storage/v1/b/logs/o/y",
            "/storage/v1/b/./logs/o/y",
            "/storage/v1/b/x/%2E%2E/logs/o/y",
            "/storage/v1//b/logs//o/y",
        ] {
            let d = decide(&e, "storage.googleapis.com", "DELETE", target);
            assert_eq!(d.action, Action::Deny, "{target}: {}", d.reason);
        }
    }

    /// A batch (or any method cassette cannot classify) matches no permission rule; the
    /// session's `unclassified` field decides it instead of the default.
    #[test]
    fn unclassified_google_requests_are_decided_by_their_own_field() {
        let mut p = policy();
        p.unclassified = Some(cassette_api::Unclassified::Deny);
        let e = evaluator(&p);
        let d = decide(&e, "storage.googleapis.com", "POST", "/batch/storage/v1");
        assert_eq!(d.outcome(), Outcome::Refuse, "{}", d.reason);
        assert_eq!(d.cause, Cause::Unclassified);
        assert!(
            d.reason
                .contains("POST storage.googleapis.com/batch/storage/v1 (permission unknown)")
                && d.reason.contains("spec.policy.unclassified is deny"),
            "{}",
            d.reason
        );
        // Classified Google requests and other hosts keep the default.
        let d = decide(&e, "storage.googleapis.com", "GET", "/storage/v1/b/bkt/o/x");
        assert_eq!(d.outcome(), Outcome::Forward);
        assert_eq!(
            decide(&e, "github.com", "POST", "/x").outcome(),
            Outcome::Forward
        );
        // A rule that matches without a permission still decides first.
        p.rules.insert(
            0,
            rule(
                "batch-ok",
                Action::Allow,
                RuleMatch {
                    path: Some("/batch/**".into()),
                    ..Default::default()
                },
            ),
        );
        let e = evaluator(&p);
        let d = decide(&e, "storage.googleapis.com", "POST", "/batch/storage/v1");
        assert_eq!(d.outcome(), Outcome::Forward);
        // Unset: the default decides, as before.
        let e = evaluator(&policy());
        let d = decide(&e, "storage.googleapis.com", "POST", "/batch/storage/v1");
        assert_eq!((d.outcome(), d.cause), (Outcome::Forward, Cause::Default));
    }

    /// A delete inside a storage batch is a delete: the batch is refused as a whole.
    #[test]
    fn a_denied_part_refuses_the_batch() {
        let p = Policy {
            rules: vec![rule(
                "no-object-deletes",
                Action::Deny,
                RuleMatch {
                    permission: Some("storage.objects.delete".into()),
                    ..Default::default()
                },
            )],
            ..Default::default()
        };
        let e = evaluator(&p);
        let host = "storage.googleapis.com";
        // What main did: the batch is one unclassified request, which the default passes.
        let whole = decide(&e, host, "POST", "/batch/storage/v1");
        assert_eq!(whole.outcome(), Outcome::Forward);
        let body = b"--b\r\nContent-Type: application/http\r\n\r\nGET /storage/v1/b/bkt/o/a HTTP/1.1\r\n\r\n\r\n--b\r\nContent-Type: application/http\r\n\r\nDELETE /storage/v1/b/bkt/o/b HTTP/1.1\r\n\r\n\r\n--b--\r\n";
        let subs = crate::batch::parse_batch("multipart/mixed; boundary=b", body).unwrap();
        let verified = crate::authority::VerifiedHost::new(host, 443).unwrap();
        let classes: Vec<_> = subs.iter().map(|s| s.classify(&verified)).collect();
        let parts: Vec<Request<'_>> = subs
            .iter()
            .zip(&classes)
            .map(|(s, c)| Request::new(host, &s.method, s.path()).classified(c.as_ref()))
            .collect();
        let batch = Request::new(host, "POST", "/batch/storage/v1");
        let d = e.evaluate_batch(&batch, &parts, now());
        assert_eq!(
            d.decision.outcome(),
            Outcome::Refuse,
            "{}",
            d.decision.reason
        );
        assert_eq!(d.parts.len(), 2);
        assert_eq!(d.parts[0].outcome(), Outcome::Forward);
        assert!(
            d.decision.reason.starts_with("part 2 of 2 of the batch POST storage.googleapis.com/batch/storage/v1: AgentSession \"fix-ci\" denies DELETE storage.googleapis.com/storage/v1/b/bkt/o/b (storage.objects.delete)"),
            "{}",
            d.decision.reason
        );
    }

    /// The branch a gitRef rule protects from pushes is protected from the code host's REST
    /// API too: a contents update on it, a refs API call, and a pull-request merge whose base
    /// cannot be known from the request.
    #[test]
    fn git_ref_rules_hold_for_code_host_rest_calls() {
        use crate::code_host::ref_changes;
        let p = policy();
        let e = evaluator(&p);
        let cases = [
            (
                "PUT",
                "/repos/o/r/contents/src/lib.rs",
                r#"{"branch":"main","content":"eA=="}"#,
                Outcome::Refuse,
            ),
            (
                "PATCH",
                "/repos/o/r/git/refs/heads/main",
                r#"{"sha":"abc","force":true}"#,
                Outcome::Refuse,
            ),
            ("PUT", "/repos/o/r/pulls/7/merge", "{}", Outcome::Refuse),
            (
                "PUT",
                "/api/v4/projects/1/merge_requests/3/merge",
                "",
                Outcome::Refuse,
            ),
            (
                "PUT",
                "/repos/o/r/contents/src/lib.rs",
                r#"{"branch":"agent/fix"}"#,
                Outcome::Forward,
            ),
        ];
        for (method, path, body, want) in cases {
            // What main did: the REST call is an ordinary request, which no gitRef rule matches.
            let plain = e.evaluate(&Request::new("api.github.com", method, path), now());
            assert_eq!(plain.outcome(), Outcome::Forward, "{method} {path}");
            let change = ref_changes(method, path, None, Some(body.as_bytes())).unwrap();
            let r = Request::new("api.github.com", method, path).changing_refs(&change.refs);
            let d = e.evaluate(&r, now());
            assert_eq!(d.outcome(), want, "{method} {path}: {}", d.reason);
        }
        let change = ref_changes("PUT", "/repos/o/r/pulls/7/merge", None, None).unwrap();
        let d = e.evaluate(
            &Request::new("api.github.com", "PUT", "/repos/o/r/pulls/7/merge")
                .changing_refs(&change.refs),
            now(),
        );
        assert!(
            d.reason
                .contains("which changes (unknown ref: a pull-request merge moves its base branch")
                && d.reason.contains("rule \"protect-main\""),
            "{}",
            d.reason
        );
    }

    #[test]
    fn refusal_messages_say_what_and_why() {
        let p = policy();
        let e = evaluator(&p);
        let d = decide(&e, "storage.googleapis.com", "DELETE", "/storage/v1/b/bkt");
        assert_eq!(d.outcome(), Outcome::Refuse);
        assert_eq!(
            d.reason,
            "AgentSession \"fix-ci\" denies DELETE storage.googleapis.com/storage/v1/b/bkt (storage.buckets.delete) by rule \"no-bucket-deletes\" (spec.policy.rules[1]); the request was blocked and recorded"
        );
        let d = decide(
            &e,
            "secretmanager.googleapis.com",
            "GET",
            "/v1/projects/p/secrets/s/versions/1:access",
        );
        assert_eq!(d.outcome(), Outcome::Hold);
        assert!(d.reason.contains("holds GET secretmanager.googleapis.com/v1/projects/p/secrets/s/versions/1:access (secretmanager.versions.access) for review by rule \"secrets-need-review\""), "{}", d.reason);
    }

    #[test]
    fn default_action_decides_when_nothing_matches() {
        let p = Policy {
            default_action: Action::Deny,
            rules: vec![rule(
                "reads",
                Action::Allow,
                RuleMatch {
                    method: Some("GET".into()),
                    ..Default::default()
                },
            )],
            ..Default::default()
        };
        let e = evaluator(&p);
        assert_eq!(
            decide(&e, "example.com", "GET", "/").outcome(),
            Outcome::Forward
        );
        let d = decide(&e, "example.com", "POST", "/upload");
        assert_eq!(d.outcome(), Outcome::Refuse);
        assert_eq!(d.cause, Cause::Default);
        assert!(
            d.reason
                .contains("no rule matches and spec.policy.defaultAction is deny"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn audit_mode_records_but_forwards() {
        let mut p = policy();
        p.mode = PolicyMode::Audit;
        let e = evaluator(&p);
        let d = decide(&e, "storage.googleapis.com", "DELETE", "/storage/v1/b/bkt");
        assert_eq!(d.action, Action::Deny);
        assert_eq!(d.outcome(), Outcome::Forward);
        assert!(d.would_block());
        assert!(d.reason.contains("would deny"), "{}", d.reason);
        assert!(
            d.reason
                .contains("audit mode, so the request was allowed and recorded")
        );
        let d = decide(
            &e,
            "secretmanager.googleapis.com",
            "GET",
            "/v1/projects/p/secrets",
        );
        assert_eq!(d.outcome(), Outcome::Forward);
        assert!(d.would_block());
    }

    #[test]
    fn expiry_refuses_everything_in_any_mode() {
        for mode in [PolicyMode::Enforce, PolicyMode::Audit] {
            let p = Policy {
                mode,
                ..Default::default()
            };
            let e = evaluator(&p);
            let later: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
            let d = e.evaluate(&Request::new("example.com", "GET", "/"), later);
            assert_eq!(d.outcome(), Outcome::Refuse);
            assert_eq!(
                d.reason,
                "AgentSession \"fix-ci\" expired at 2026-11-25T10:00:00Z; the request was blocked and recorded"
            );
            let before: Timestamp = "2026-11-25T09:59:59Z".parse().unwrap();
            let d = e.evaluate(&Request::new("example.com", "GET", "/"), before);
            assert_eq!(d.outcome(), Outcome::Forward);
        }
        // No expiry and no policy: everything passes.
        let e = Evaluator::new("open", None, None).unwrap();
        let d = e.evaluate(&Request::new("example.com", "DELETE", "/x"), now());
        assert_eq!(d.outcome(), Outcome::Forward);
    }

    #[test]
    fn one_protected_ref_refuses_the_push() {
        let p = policy();
        let e = evaluator(&p);
        let updates = vec![
            update("refs/heads/feature", '0', 'b'),
            update("refs/heads/main", 'a', 'b'),
        ];
        let r =
            Request::new("github.com", "POST", "/org/repo.git/git-receive-pack").pushing(&updates);
        let d = e.evaluate(&r, now());
        assert_eq!(d.outcome(), Outcome::Refuse);
        assert_eq!(d.refs.len(), 2);
        assert_eq!(d.refs[0].action, Action::Allow);
        assert_eq!(d.refs[1].action, Action::Deny);
        assert!(
            d.reason.starts_with("AgentSession \"fix-ci\" denies the push to refs/heads/main (update aaaaaaaaaaaa -> bbbbbbbbbbbb) by rule \"protect-main\" (spec.policy.rules[0])"),
            "{}",
            d.reason
        );
        let rejections = d.git_rejections();
        assert_eq!(rejections[1].reason, "protected by AgentSession \"fix-ci\"");
        assert!(rejections[0].reason.starts_with("not updated: another ref"));
        // And the report git reads: `! [remote rejected] main (protected by AgentSession "fix-ci")`.
        let response = git::refuse_push(
            ReportFraming {
                status: true,
                band: Some(SideBand::Large),
            },
            &rejections,
            &d.reason,
        );
        let body = String::from_utf8_lossy(&response.body);
        assert!(body.contains("ng refs/heads/main protected by AgentSession \"fix-ci\"\n"));
    }

    /// A secret in the path reaches no reason: refusal bodies, pendingReviews and logs show
    /// the path as recorded, masked.
    #[test]
    fn reasons_show_the_masked_path() {
        let p = Policy {
            default_action: Action::Deny,
            ..Default::default()
        };
        let e = evaluator(&p);
        let key = "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW";
        let path = format!("/v1/keys/{key}:lookup");
        // What main wrote: the key, in the reason.
        let d = e.evaluate(&Request::new("apikeys.googleapis.com", "GET", &path), now());
        assert!(d.reason.contains(key));
        let masker = crate::mask::Masker::new(None, b"k").unwrap();
        let (shown, _) = masker.mask_target(&path);
        let d = e.evaluate(
            &Request::new("apikeys.googleapis.com", "GET", &path).shown_as(&shown),
            now(),
        );
        assert!(!d.reason.contains(key), "{}", d.reason);
        assert!(
            d.reason
                .contains("GET apikeys.googleapis.com/v1/keys/«masked:google-api-key:"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn sessions_with_git_ref_rules_guard_refs() {
        assert!(evaluator(&policy()).guards_refs());
        assert!(!evaluator(&Policy::default()).guards_refs());
    }

    #[test]
    fn branch_pushes_pass_and_tag_rules_apply_per_ref() {
        let p = policy();
        let e = evaluator(&p);
        let branch = vec![update("refs/heads/agent/fix", 'a', 'b')];
        let r =
            Request::new("github.com", "POST", "/org/repo.git/git-receive-pack").pushing(&branch);
        assert_eq!(e.evaluate(&r, now()).outcome(), Outcome::Forward);
        let tag = vec![update("refs/tags/v1.0", '0', 'c')];
        let r = Request::new("github.com", "POST", "/org/repo.git/git-receive-pack").pushing(&tag);
        let d = e.evaluate(&r, now());
        assert_eq!(d.outcome(), Outcome::Refuse);
        assert_eq!(
            d.cause.label(),
            "rule \"release-tags\" (spec.policy.rules[3])"
        );
        // gitRef rules never match requests that are not pushes.
        let d = decide(&e, "github.com", "GET", "/refs/heads/main");
        assert_eq!(d.outcome(), Outcome::Forward);
    }

    #[test]
    fn expired_push_reports_expiry_on_every_ref() {
        let p = policy();
        let e = evaluator(&p);
        let updates = vec![update("refs/heads/feature", 'a', 'b')];
        let r = Request::new("github.com", "POST", "/r/git-receive-pack").pushing(&updates);
        let later: Timestamp = "2026-11-26T00:00:00Z".parse().unwrap();
        let d = e.evaluate(&r, later);
        assert_eq!(
            d.git_rejections()[0].reason,
            "AgentSession \"fix-ci\" expired at 2026-11-25T10:00:00Z"
        );
    }

    #[test]
    fn invalid_policies_are_refused_with_their_field() {
        let p = Policy {
            rules: vec![rule(
                "bad",
                Action::Deny,
                RuleMatch {
                    path: Some("/a/b**".into()),
                    ..Default::default()
                },
            )],
            ..Default::default()
        };
        let err = Evaluator::new("s", Some(&p), None).unwrap_err();
        assert_eq!(err.0[0].path, "spec.policy.rules[0].match.path");
    }
}
