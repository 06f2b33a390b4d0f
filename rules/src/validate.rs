//! One check of an AgentSession spec — rules, globs, host patterns, regexes, JSON field
//! paths, durations — for what the CRD's schema and CEL rules cannot check. The operator's
//! validating webhook refuses a bad session with it; the sidecar runs it again at start.
//!
//! Every error names the JSON path of the bad field and says how to fix it.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use cassette_api::{AgentSessionSpec, Credential, Masking, Policy, PolicyRule, Presentation};

use crate::credential::CredentialHost;
use crate::glob::{HostPattern, PermissionPattern, SegmentGlob};
use crate::mask::{self, BUILT_IN_NAMES};

/// One bad field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The JSON path: `spec.masking.patterns[2].regex`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every bad field of a spec, in spec order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Validates a whole AgentSession spec.
pub fn agent_session(spec: &AgentSessionSpec) -> Result<(), ValidationErrors> {
    let mut errors = Vec::new();
    if spec.expires_at.is_some() == spec.max_duration.is_some() {
        errors.push(FieldError::new(
            "spec",
            "set exactly one of spec.expiresAt (an RFC 3339 time) or spec.maxDuration (such as 2h)",
        ));
    }
    if let Some(d) = &spec.max_duration {
        check_duration(
            "spec.maxDuration",
            d,
            Duration::from_secs(60),
            Duration::from_secs(8760 * 3600),
            &mut errors,
        );
    }
    recording(spec, &mut errors);
    if let Some(m) = &spec.masking {
        masking(m, &mut errors);
    }
    if let Some(p) = &spec.policy {
        policy(p, &mut errors);
    }
    credentials(&spec.credentials, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(errors))
    }
}

fn recording(spec: &AgentSessionSpec, errors: &mut Vec<FieldError>) {
    let r = &spec.recording;
    let sink_ok = match (
        r.sink.strip_prefix("gs://"),
        r.sink.strip_prefix("file:///"),
    ) {
        (Some(rest), _) => {
            let bucket = rest.split('/').next().unwrap_or("");
            (3..=222).contains(&bucket.len())
                && bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        }
        (None, Some(_)) => true,
        (None, None) => false,
    };
    if !sink_ok || r.sink.contains(char::is_whitespace) {
        errors.push(FieldError::new(
            "spec.recording.sink",
            format!(
                "{:?} is not a sink: use gs://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH",
                r.sink
            ),
        ));
    }
    if !(1024..=67_108_864).contains(&r.max_body_bytes) {
        errors.push(FieldError::new(
            "spec.recording.maxBodyBytes",
            format!("{} is out of range: use 1024 to 67108864", r.max_body_bytes),
        ));
    }
    if let Some(Err(message)) = r.retention.as_deref().map(parse_retention) {
        errors.push(FieldError::new("spec.recording.retention", message));
    }
}

/// Parses a retention as the CRD admits it: whole days or hours, such as `90d` or `36h`.
pub fn parse_retention(text: &str) -> Result<Duration, String> {
    let refuse =
        || format!("{text:?} is not a retention: use whole days or hours, such as 90d or 36h");
    let (digits, hours) = match (text.strip_suffix('d'), text.strip_suffix('h')) {
        (Some(digits), _) => (digits, 24),
        (_, Some(digits)) => (digits, 1),
        _ => return Err(refuse()),
    };
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse());
    }
    let n: u64 = digits.parse().map_err(|_| refuse())?;
    n.checked_mul(hours * 3600)
        .map(Duration::from_secs)
        .ok_or_else(refuse)
}

/// What is allowed but probably not meant, as admission warnings (`kubectl apply` prints
/// them): a policy with permission rules whose unclassified Google requests (batches, methods
/// cassette does not know) would pass by an allowing default.
pub fn warnings(spec: &AgentSessionSpec) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(p) = &spec.policy
        && p.unclassified.is_none()
        && p.default_action == cassette_api::Action::Allow
        && p.rules
            .iter()
            .any(|r| r.action != cassette_api::Action::Allow && r.matches.permission.is_some())
    {
        out.push(
            "spec.policy has rules on IAM permissions, but spec.policy.unclassified is unset: a \
             Google request whose permission cassette cannot tell (a batch, a method it does not \
             know) matches none of them and passes by spec.policy.defaultAction allow; set \
             spec.policy.unclassified to deny or review"
                .to_owned(),
        );
    }
    out
}

/// Checks a change to a session's spec that each spec alone cannot show wrong: whoever may
/// edit a session must not be able to make the operator delete what it recorded. The sink
/// cannot change (recordings already written stay where the session says they are), and the
/// retention can be lengthened or removed (removing it keeps recordings until the bucket's
/// lifecycle removes them) but neither shortened nor added.
pub fn agent_session_update(
    old: &AgentSessionSpec,
    new: &AgentSessionSpec,
) -> Result<(), ValidationErrors> {
    let mut errors = Vec::new();
    if old.recording.sink != new.recording.sink {
        errors.push(FieldError::new(
            "spec.recording.sink",
            format!(
                "cannot change from {:?}: the session's recordings are there; create a new \
                 AgentSession to record elsewhere",
                old.recording.sink
            ),
        ));
    }
    fn retention(r: &Option<String>) -> Option<(&str, Result<Duration, String>)> {
        r.as_deref().map(|t| (t, parse_retention(t)))
    }
    match (
        retention(&old.recording.retention),
        retention(&new.recording.retention),
    ) {
        (None, Some((new, _))) => errors.push(FieldError::new(
            "spec.recording.retention",
            format!(
                "cannot be set to {new:?} after creation: the session's recordings are kept \
                 until the bucket's lifecycle removes them; create a new AgentSession for a \
                 shorter retention"
            ),
        )),
        (Some((old, Ok(before))), Some((new, Ok(after)))) if after < before => {
            errors.push(FieldError::new(
                "spec.recording.retention",
                format!(
                    "cannot be shortened from {old:?} to {new:?}: it may only grow, or be \
                     removed to keep recordings until the bucket's lifecycle removes them"
                ),
            ))
        }
        _ => {}
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(errors))
    }
}

/// Validates `spec.masking`.
pub(crate) fn masking(m: &Masking, errors: &mut Vec<FieldError>) {
    let mut names = HashSet::new();
    for (i, p) in m.patterns.iter().enumerate() {
        let at = format!("spec.masking.patterns[{i}]");
        if !is_dns_label(&p.name) {
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!("{:?} is not a pattern name: use lowercase letters, digits and dashes, such as internal-token", p.name),
            ));
        } else if BUILT_IN_NAMES.contains(&p.name.as_str()) {
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!(
                    "{:?} is the name of a built-in detector; choose another name",
                    p.name
                ),
            ));
        } else if !names.insert(p.name.as_str()) {
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!(
                    "{:?} is used by an earlier pattern; names must be unique",
                    p.name
                ),
            ));
        }
        if p.regex.is_empty() {
            errors.push(FieldError::new(format!("{at}.regex"), "is empty"));
        } else if let Err(message) = mask::compile_pattern(&p.regex) {
            errors.push(FieldError::new(format!("{at}.regex"), message));
        }
    }
    for (i, p) in m.secret_parameters.iter().enumerate() {
        let name = &p.0;
        if name.is_empty()
            || name.len() > 128
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.~-".contains(&b))
        {
            errors.push(FieldError::new(
                format!("spec.masking.secretParameters[{i}]"),
                format!("{name:?} is not a parameter name: use letters, digits and _ . ~ -, such as X-Internal-Ticket"),
            ));
        }
    }
    for (i, f) in m.json_fields.iter().enumerate() {
        if let Err(message) = mask::parse_field_path(&f.path) {
            errors.push(FieldError::new(
                format!("spec.masking.jsonFields[{i}].path"),
                message,
            ));
        }
    }
}

/// Validates `spec.policy`.
pub(crate) fn policy(p: &Policy, errors: &mut Vec<FieldError>) {
    let mut names = HashSet::new();
    for (i, rule) in p.rules.iter().enumerate() {
        policy_rule(i, rule, &mut names, errors);
    }
    for (i, host) in p.passthrough.iter().enumerate() {
        if let Err(e) = HostPattern::parse(&host.0) {
            errors.push(FieldError::new(
                format!("spec.policy.passthrough[{i}]"),
                e.0,
            ));
        }
    }
    if let Some(t) = &p.review_timeout {
        check_duration(
            "spec.policy.reviewTimeout",
            t,
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
            errors,
        );
    }
}

fn policy_rule<'a>(
    i: usize,
    rule: &'a PolicyRule,
    names: &mut HashSet<&'a str>,
    errors: &mut Vec<FieldError>,
) {
    let at = format!("spec.policy.rules[{i}]");
    if let Some(name) = &rule.name {
        if name.is_empty() || name.len() > 63 {
            errors.push(FieldError::new(
                format!("{at}.name"),
                "must be 1 to 63 characters",
            ));
        } else if !names.insert(name.as_str()) {
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!("{name:?} is used by an earlier rule; refusals name the rule, so names must be unique"),
            ));
        }
    }
    let m = &rule.matches;
    let at = format!("{at}.match");
    if m.host.is_none()
        && m.method.is_none()
        && m.path.is_none()
        && m.service.is_none()
        && m.permission.is_none()
        && m.git_ref.is_none()
    {
        errors.push(FieldError::new(
            at.clone(),
            "a rule's match needs at least one of host, method, path, service, permission or gitRef",
        ));
    }
    if let Some(host) = &m.host
        && let Err(e) = HostPattern::parse(&host.0)
    {
        errors.push(FieldError::new(format!("{at}.host"), e.0));
    }
    if let Some(method) = &m.method
        && (method.is_empty()
            || method.len() > 16
            || !method.bytes().all(|b| b.is_ascii_uppercase()))
    {
        errors.push(FieldError::new(
            format!("{at}.method"),
            format!(
                "{method:?} is not a method: use an upper-case HTTP method such as GET or DELETE"
            ),
        ));
    }
    if let Some(path) = &m.path {
        if !path.starts_with('/') {
            errors.push(FieldError::new(
                format!("{at}.path"),
                format!("{path:?} must start with /, such as /storage/v1/b/**"),
            ));
        } else if let Err(e) = SegmentGlob::parse(path) {
            errors.push(FieldError::new(format!("{at}.path"), e.0));
        }
    }
    if let Some(service) = &m.service {
        let ok = service
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_lowercase)
            && service.len() <= 63
            && service
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok {
            errors.push(FieldError::new(
                format!("{at}.service"),
                format!("{service:?} is not a service: use a Google API name such as storage, pubsub or secretmanager"),
            ));
        }
    }
    if let Some(permission) = &m.permission
        && let Err(e) = PermissionPattern::parse(permission)
    {
        errors.push(FieldError::new(format!("{at}.permission"), e.0));
    }
    if let Some(git_ref) = &m.git_ref {
        if !git_ref.starts_with("refs/") {
            errors.push(FieldError::new(
                format!("{at}.gitRef"),
                format!("{git_ref:?} must be a full ref such as refs/heads/main or refs/tags/*"),
            ));
        } else if let Err(e) = SegmentGlob::parse(git_ref) {
            errors.push(FieldError::new(format!("{at}.gitRef"), e.0));
        }
    }
}

/// Headers a credential cannot be presented in: they frame or route the request, or the
/// sidecar itself sets them.
const NOT_CREDENTIAL_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "content-type",
    "content-encoding",
];

/// Validates `spec.credentials`.
pub(crate) fn credentials(entries: &[Credential], errors: &mut Vec<FieldError>) {
    let mut names = HashSet::new();
    let mut envs = HashSet::new();
    for (i, c) in entries.iter().enumerate() {
        let at = format!("spec.credentials[{i}]");
        if !is_dns_label(&c.name) || c.name.len() > 40 {
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!("{:?} is not a credential name: use up to 40 lowercase letters, digits and dashes, such as github", c.name),
            ));
        } else if !names.insert(c.name.as_str()) {
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!(
                    "{:?} is used by an earlier credential; names must be unique",
                    c.name
                ),
            ));
        }
        if c.hosts.is_empty() {
            errors.push(FieldError::new(
                format!("{at}.hosts"),
                "lists no host: name the hosts the secret is for, such as api.github.com",
            ));
        }
        for (j, host) in c.hosts.iter().enumerate() {
            if let Err(e) = CredentialHost::parse(&host.0) {
                errors.push(FieldError::new(format!("{at}.hosts[{j}]"), e.0));
            }
        }
        if !is_dns_subdomain(&c.secret_ref.name) {
            errors.push(FieldError::new(
                format!("{at}.secretRef.name"),
                format!(
                    "{:?} is not a Secret name: use lowercase letters, digits, - and .",
                    c.secret_ref.name
                ),
            ));
        }
        let key_ok = !c.secret_ref.key.is_empty()
            && c.secret_ref.key.len() <= 253
            && c.secret_ref
                .key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !key_ok {
            errors.push(FieldError::new(
                format!("{at}.secretRef.key"),
                format!(
                    "{:?} is not a Secret key: use letters, digits, -, _ and .",
                    c.secret_ref.key
                ),
            ));
        }
        match (c.presentation, &c.header) {
            (Presentation::Header, None) => errors.push(FieldError::new(
                format!("{at}.header"),
                "is required when presentation is Header: name the header, such as PRIVATE-TOKEN or x-api-key",
            )),
            (Presentation::Header, Some(h)) => {
                let ok = !h.is_empty()
                    && h.len() <= 128
                    && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
                if !ok {
                    errors.push(FieldError::new(
                        format!("{at}.header"),
                        format!("{h:?} is not a header name: use letters, digits, - and _, such as PRIVATE-TOKEN"),
                    ));
                } else if NOT_CREDENTIAL_HEADERS.contains(&h.to_ascii_lowercase().as_str()) {
                    errors.push(FieldError::new(
                        format!("{at}.header"),
                        format!("{h:?} frames or routes the request and cannot carry a credential; name the header the service reads it from, such as PRIVATE-TOKEN"),
                    ));
                }
            }
            (_, Some(_)) => errors.push(FieldError::new(
                format!("{at}.header"),
                "is only for presentation Header: remove it, or set presentation: Header",
            )),
            (_, None) => {}
        }
        let env_ok = c
            .env
            .as_bytes()
            .first()
            .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
            && c.env.len() <= 253
            && c.env
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !env_ok {
            errors.push(FieldError::new(
                format!("{at}.env"),
                format!("{:?} is not an environment variable name: use letters, digits and _, such as GITHUB_TOKEN", c.env),
            ));
        } else if cassette_api::names::CA_BUNDLE_ENV.contains(&c.env.as_str()) {
            errors.push(FieldError::new(
                format!("{at}.env"),
                format!("{:?} points the agent's tools at the session CA; choose the variable the agent reads its token from, such as GITHUB_TOKEN", c.env),
            ));
        } else if !envs.insert(c.env.as_str()) {
            errors.push(FieldError::new(
                format!("{at}.env"),
                format!("{:?} is filled by an earlier credential; each credential needs its own variable", c.env),
            ));
        }
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && !name.is_empty() && name.split('.').all(is_dns_label)
}

fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn check_duration(
    path: &str,
    text: &str,
    min: Duration,
    max: Duration,
    errors: &mut Vec<FieldError>,
) {
    match parse_duration(text) {
        Ok(d) if d < min || d > max => errors.push(FieldError::new(
            path,
            format!(
                "{text:?} is out of range: use {} to {}",
                format_duration(min),
                format_duration(max)
            ),
        )),
        Ok(_) => {}
        Err(message) => errors.push(FieldError::new(path, message)),
    }
}

/// Parses the durations AgentSessions use: one or more `<digits><h|m|s>`, such as `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let refuse = || {
        format!(
            "{text:?} is not a duration: use hours, minutes and seconds such as 90s, 30m or 1h30m"
        )
    };
    if text.is_empty() {
        return Err(refuse());
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        match c {
            '0'..='9' => {
                let digit = u64::from(c as u8 - b'0');
                number = Some(
                    number
                        .unwrap_or(0)
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(digit))
                        .ok_or_else(refuse)?,
                );
            }
            'h' | 'm' | 's' => {
                let n = number.take().ok_or_else(refuse)?;
                let unit = match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                total = n
                    .checked_mul(unit)
                    .and_then(|s| total.checked_add(s))
                    .ok_or_else(refuse)?;
            }
            _ => return Err(refuse()),
        }
    }
    if number.is_some() {
        return Err(refuse());
    }
    Ok(Duration::from_secs(total))
}

fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cassette_api::{
        Action, HostPattern as ApiHost, JsonFieldPath, MaskPattern, Recording, RuleMatch,
    };

    fn spec() -> AgentSessionSpec {
        AgentSessionSpec {
            agent: None,
            requested_by: None,
            expires_at: None,
            max_duration: Some("2h".into()),
            recording: Recording {
                sink: "gs://recordings/team".into(),
                max_body_bytes: 1 << 20,
                retention: Some("90d".into()),
                durability: Default::default(),
                on_failure: Default::default(),
            },
            masking: None,
            policy: None,
            approvals: Vec::new(),
            credentials: Vec::new(),
        }
    }

    fn rule(name: &str, matches: RuleMatch) -> PolicyRule {
        PolicyRule {
            name: Some(name.into()),
            action: Action::Deny,
            matches,
        }
    }

    fn paths(spec: &AgentSessionSpec) -> Vec<String> {
        match agent_session(spec) {
            Ok(()) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| e.path).collect(),
        }
    }

    #[test]
    fn a_good_spec_passes() {
        let mut s = spec();
        s.policy = Some(Policy {
            rules: vec![
                rule(
                    "protect-main",
                    RuleMatch {
                        git_ref: Some("refs/heads/main".into()),
                        ..Default::default()
                    },
                ),
                rule(
                    "no-bucket-admin",
                    RuleMatch {
                        host: Some(ApiHost("*.googleapis.com".into())),
                        permission: Some("storage.buckets.*".into()),
                        path: Some("/storage/v1/b/**".into()),
                        method: Some("DELETE".into()),
                        service: Some("storage".into()),
                        git_ref: None,
                    },
                ),
            ],
            review_timeout: Some("5m".into()),
            ..Default::default()
        });
        s.masking = Some(Masking {
            patterns: vec![MaskPattern {
                name: "internal-token".into(),
                regex: "itk_[a-z0-9]{16}".into(),
            }],
            json_fields: vec![JsonFieldPath {
                path: "items.*.token".into(),
            }],
            ..Default::default()
        });
        assert_eq!(agent_session(&s), Ok(()));
    }

    #[test]
    fn bad_regex_names_its_field() {
        let mut s = spec();
        s.masking = Some(Masking {
            patterns: vec![
                MaskPattern {
                    name: "a".into(),
                    regex: "a+".into(),
                },
                MaskPattern {
                    name: "b".into(),
                    regex: "b+".into(),
                },
                MaskPattern {
                    name: "c".into(),
                    regex: "(unclosed".into(),
                },
            ],
            ..Default::default()
        });
        let err = agent_session(&s).unwrap_err();
        assert_eq!(err.0.len(), 1);
        let text = err.to_string();
        assert!(
            text.starts_with("spec.masking.patterns[2].regex: does not compile: "),
            "{text}"
        );
    }

    #[test]
    fn retention_reads_days_and_hours() {
        const DAY: Duration = Duration::from_secs(86_400);
        assert_eq!(parse_retention("90d"), Ok(90 * DAY));
        assert_eq!(parse_retention("36h"), Ok(Duration::from_secs(36 * 3600)));
        for bad in [
            "",
            "d",
            "0d",
            "90",
            "1.5d",
            "90 days",
            "-1h",
            "é",
            "9é",
            "99999999999999999d",
        ] {
            assert!(parse_retention(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_edit_cannot_move_the_sink_or_shorten_the_retention() {
        let with = |sink: &str, retention: Option<&str>| {
            let mut s = spec();
            s.recording.sink = sink.into();
            s.recording.retention = retention.map(Into::into);
            s
        };
        let old = with("gs://audit/cassette", Some("90d"));
        for ok in [
            with("gs://audit/cassette", Some("90d")),
            with("gs://audit/cassette", Some("91d")),
            with("gs://audit/cassette", Some("2161h")),
            with("gs://audit/cassette", None),
        ] {
            assert_eq!(agent_session_update(&old, &ok), Ok(()), "{ok:?}");
        }
        let refused = |new: &AgentSessionSpec, old: &AgentSessionSpec| {
            agent_session_update(old, new).unwrap_err().to_string()
        };
        let text = refused(&with("gs://elsewhere", Some("90d")), &old);
        assert!(
            text.starts_with("spec.recording.sink: cannot change from \"gs://audit/cassette\""),
            "{text}"
        );
        let text = refused(&with("gs://audit/cassette", Some("2159h")), &old);
        assert!(
            text.starts_with(
                "spec.recording.retention: cannot be shortened from \"90d\" to \"2159h\""
            ),
            "{text}"
        );
        let text = refused(
            &with("gs://audit/cassette", Some("1h")),
            &with("gs://audit/cassette", None),
        );
        assert!(
            text.starts_with("spec.recording.retention: cannot be set to \"1h\" after creation"),
            "{text}"
        );
    }

    #[test]
    fn every_bad_field_is_reported() {
        let mut s = spec();
        s.max_duration = Some("forever".into());
        s.recording.sink = "s3://bucket".into();
        s.recording.retention = Some("90 days".into());
        s.masking = Some(Masking {
            patterns: vec![
                MaskPattern {
                    name: "jwt".into(),
                    regex: "x".into(),
                },
                MaskPattern {
                    name: "Bad_Name".into(),
                    regex: "[a-z]{1000}{1000}".into(),
                },
            ],
            json_fields: vec![JsonFieldPath {
                path: "a..b".into(),
            }],
            secret_parameters: vec!["ok".into(), "a=b".into()],
            ..Default::default()
        });
        s.policy = Some(Policy {
            rules: vec![
                rule("r", RuleMatch::default()),
                rule(
                    "r",
                    RuleMatch {
                        host: Some(ApiHost("*.GoogleApis.com".into())),
                        method: Some("delete".into()),
                        path: Some("storage/**x".into()),
                        service: Some("Storage".into()),
                        permission: Some("storage.buckets".into()),
                        git_ref: Some("main".into()),
                    },
                ),
            ],
            passthrough: vec![ApiHost("bad host".into())],
            review_timeout: Some("48h".into()),
            ..Default::default()
        });
        assert_eq!(
            paths(&s),
            vec![
                "spec.maxDuration",
                "spec.recording.sink",
                "spec.recording.retention",
                "spec.masking.patterns[0].name",
                "spec.masking.patterns[1].name",
                "spec.masking.patterns[1].regex",
                "spec.masking.secretParameters[1]",
                "spec.masking.jsonFields[0].path",
                "spec.policy.rules[0].match",
                "spec.policy.rules[1].name",
                "spec.policy.rules[1].match.host",
                "spec.policy.rules[1].match.method",
                "spec.policy.rules[1].match.path",
                "spec.policy.rules[1].match.service",
                "spec.policy.rules[1].match.permission",
                "spec.policy.rules[1].match.gitRef",
                "spec.policy.passthrough[0]",
                "spec.policy.reviewTimeout",
            ]
        );
    }

    #[test]
    fn permission_rules_without_an_unclassified_decision_are_warned_about() {
        let mut s = spec();
        assert!(warnings(&s).is_empty());
        s.policy = Some(Policy {
            rules: vec![rule(
                "no-deletes",
                RuleMatch {
                    permission: Some("storage.objects.delete".into()),
                    ..Default::default()
                },
            )],
            ..Default::default()
        });
        let w = warnings(&s);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("set spec.policy.unclassified to deny or review"),
            "{w:?}"
        );
        s.policy.as_mut().unwrap().unclassified = Some(cassette_api::Unclassified::Deny);
        assert!(warnings(&s).is_empty());
    }

    fn credential(name: &str, hosts: &[&str], presentation: Presentation) -> Credential {
        Credential {
            name: name.into(),
            hosts: hosts.iter().map(|h| (*h).into()).collect(),
            secret_ref: cassette_api::SecretKeyRef {
                name: "code-host".into(),
                key: "token".into(),
            },
            presentation,
            header: None,
            env: format!("{}_TOKEN", name.to_ascii_uppercase().replace('-', "_")),
        }
    }

    #[test]
    fn credentials_for_code_hosts_pass() {
        let mut s = spec();
        let mut gitlab = credential("gitlab", &["*.gitlab.example.com"], Presentation::Header);
        gitlab.header = Some("PRIVATE-TOKEN".into());
        s.credentials = vec![
            credential("github-api", &["api.github.com"], Presentation::Bearer),
            credential("github-git", &["github.com"], Presentation::Basic),
            gitlab,
        ];
        assert_eq!(agent_session(&s), Ok(()));
    }

    #[test]
    fn bad_credentials_name_the_field_to_fix() {
        let mut s = spec();
        let mut header_missing = credential("b", &["a.example.com"], Presentation::Header);
        header_missing.env = "B".into();
        let mut header_extra = credential("c", &["a.example.com"], Presentation::Bearer);
        header_extra.header = Some("x-api-key".into());
        let mut framing = credential("d", &["a.example.com"], Presentation::Header);
        framing.header = Some("Host".into());
        let mut bad_env = credential("e", &["a.example.com"], Presentation::Token);
        bad_env.env = "1TOKEN".into();
        let mut ca_env = credential("f", &["a.example.com"], Presentation::Token);
        ca_env.env = "SSL_CERT_FILE".into();
        let mut same_env = credential("g", &["a.example.com"], Presentation::Token);
        same_env.env = "B".into();
        s.credentials = vec![
            credential(
                "a",
                &["github.com", "*.*.example.com", "*.googleapis.com"],
                Presentation::Bearer,
            ),
            header_missing,
            header_extra,
            framing,
            bad_env,
            ca_env,
            same_env,
            Credential {
                env: "H".into(),
                ..credential("a", &[], Presentation::Basic)
            },
        ];
        let err = agent_session(&s).unwrap_err();
        assert_eq!(
            err.0.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            vec![
                "spec.credentials[0].hosts[1]",
                "spec.credentials[0].hosts[2]",
                "spec.credentials[1].header",
                "spec.credentials[2].header",
                "spec.credentials[3].header",
                "spec.credentials[4].env",
                "spec.credentials[5].env",
                "spec.credentials[6].env",
                "spec.credentials[7].name",
                "spec.credentials[7].hosts",
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains("spec.credentials[0].hosts[2]: \"*.googleapis.com\" is a Google host"),
            "{text}"
        );
        assert!(
            text.contains("spec.credentials[7].hosts: lists no host"),
            "{text}"
        );
    }

    #[test]
    fn expiry_is_required_once() {
        let mut s = spec();
        s.max_duration = None;
        assert_eq!(paths(&s), vec!["spec"]);
    }

    #[test]
    fn durations() {
        let cases = [
            ("90s", Some(90)),
            ("30m", Some(1800)),
            ("1h30m", Some(5400)),
            ("2h", Some(7200)),
            ("1h1h", Some(7200)),
            ("", None),
            ("h", None),
            ("10", None),
            ("1d", None),
            ("1.5h", None),
            ("-1h", None),
            ("99999999999999999999h", None),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse_duration(text).ok().map(|d| d.as_secs()),
                want,
                "{text:?}"
            );
        }
    }
}
