//! The `AgentSession` API (`cassette.dev/v1alpha1`) and the names every cassette component
//! agrees on: labels, annotations, ports, the sidecar UID and the trust-store variables.
//!
//! Types only: no I/O and no decisions. Validation that a schema can express lives here as
//! OpenAPI constraints and CEL rules, so the API server refuses bad sessions by itself; what
//! CEL cannot check (regexes that do not compile) belongs to the rules crate.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod names;

/// One recorded session: which agent may run, for how long, where its traffic is recorded,
/// what is masked and what is allowed.
// Each printer column repeats `type_ = ...`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "cassette.dev",
    version = "v1alpha1",
    kind = "AgentSession",
    plural = "agentsessions",
    shortname = "asess",
    category = "cassette",
    namespaced,
    status = "AgentSessionStatus",
    doc = "AgentSession records every request an AI agent's pods send and every response they receive. Pods opt in with the label cassette.dev/session=<name>; cassette injects a recording sidecar that holds the credentials, masks secrets, applies the policy and ships signed, write-once segments to the recording sink.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Agent",
        type_ = "string",
        json_path = ".spec.agent.serviceAccount"
    ),
    printcolumn(
        name = "Requested-By",
        type_ = "string",
        json_path = ".spec.requestedBy.username"
    ),
    printcolumn(
        name = "Exchanges",
        type_ = "integer",
        json_path = ".status.totals.exchanges"
    ),
    printcolumn(
        name = "Blocked",
        type_ = "integer",
        json_path = ".status.totals.blocked"
    ),
    printcolumn(
        name = "Masked",
        type_ = "integer",
        json_path = ".status.totals.masked"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.expiresAt) != has(self.maxDuration)")
    .message("set exactly one of spec.expiresAt (an RFC 3339 time) or spec.maxDuration (such as 2h)"))]
#[serde(rename_all = "camelCase")]
pub struct AgentSessionSpec {
    /// The agent this session is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Agent>,

    /// Who created the session. Set by cassette's admission webhook from the authenticated
    /// identity of the creating user; any value supplied by the user is overwritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<RequestedBy>,

    /// When the session ends. After this time the sidecar refuses every new request with 403
    /// and records the refusal. Set exactly one of expiresAt and maxDuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// How long the session lasts from its creation, as a duration such as 30m, 2h or 1h30m
    /// (at least 1m, at most 8760h). Set exactly one of expiresAt and maxDuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(h|m|s))+$') && duration(self) >= duration('1m') && duration(self) <= duration('8760h')")
        .message("maxDuration must be a duration such as 30m, 2h or 1h30m, between 1m and 8760h"))]
    pub max_duration: Option<String>,

    /// Where and how the session's traffic is recorded.
    pub recording: Recording,

    /// Secrets to keep out of the recording. Built-in detectors are on unless disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masking: Option<Masking>,

    /// Which requests the sidecar lets through, refuses or holds for review.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,

    /// Secrets the sidecar holds for the agent and presents toward the hosts each one is for
    /// (code-host tokens, API keys). The agent's containers get a placeholder in the entry's
    /// environment variable; the sidecar swaps it for the Secret's value only toward the
    /// entry's hosts, over TLS verified for them, in the entry's presentation. Google hosts
    /// are not listed here: the sidecar's Workload Identity covers them. Read when a pod is
    /// created: a change reaches the pods created after it (a rotated Secret reaches running
    /// pods too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = Rule::new("self.all(c, self.exists_one(d, d.name == c.name))")
            .message("credential names must be unique within spec.credentials"),
        validation = Rule::new("self.all(c, self.exists_one(d, d.env == c.env))")
            .message("each credential needs its own env: two entries cannot fill the same variable")
    )]
    pub credentials: Vec<Credential>,

    /// Decisions on requests held for review, written by approvers with
    /// `kubectl cassette approve|deny`. RBAC on this resource decides who may approve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub approvals: Vec<Approval>,
}

/// The agent a session is for.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    /// The Kubernetes service account the agent's pods run as. Its Workload Identity binding
    /// decides which Google service account the sidecar acts as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service_account: Option<String>,

    /// What the agent is and what it was asked to do, for the people reading the recording.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

/// The authenticated identity that created a session, as the API server saw it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestedBy {
    /// The user name from the creating request's userInfo.
    pub username: String,

    /// The user's UID, when the authenticator provides one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,

    /// The user's groups at the time of creation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// Where and how a session is recorded.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
// Whoever may edit a session must not be able to make the operator delete its recordings:
// the sink stays, and the retention may grow or go but not shrink or appear (the shared
// rules say the same with the values in the message).
#[x_kube(
    validation = Rule::new("self.sink == oldSelf.sink")
        .message("sink cannot change: the session's recordings are there; create a new AgentSession to record elsewhere"),
    validation = Rule::new("!has(self.retention) || (has(oldSelf.retention) && int(self.retention.substring(0, size(self.retention) - 1)) * (self.retention.endsWith('d') ? 24 : 1) >= int(oldSelf.retention.substring(0, size(oldSelf.retention) - 1)) * (oldSelf.retention.endsWith('d') ? 24 : 1))")
        .message("retention cannot be shortened, or set after creation: it may only grow, or be removed to keep recordings until the bucket's lifecycle removes them")
)]
pub struct Recording {
    /// The recording destination: gs://BUCKET[/PREFIX] for Cloud Storage, or
    /// file:///ABSOLUTE/PATH for a directory on the node. Each pod records under
    /// <sink>/<namespace>/<session>/<pod>-<pod-uid>/.
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.matches('^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/[^\\\\s]*)?$') || self.matches('^file:///[^\\\\s]*$')")
        .message("sink must be gs://BUCKET[/PREFIX] (a valid bucket name) or file:///ABSOLUTE/PATH"))]
    pub sink: String,

    /// The largest body recorded per request or response, in bytes (1024 to 67108864).
    /// Larger bodies keep their first maxBodyBytes bytes, their full length and a keyed digest.
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 1024, max = 67_108_864))]
    pub max_body_bytes: i64,

    /// How long recordings are kept, in days or hours (such as 90d or 36h). Unset keeps them
    /// until the bucket's own lifecycle removes them. Deleting the AgentSession never deletes
    /// its recordings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^[1-9][0-9]*(d|h)$')")
        .message("retention must be a whole number of days or hours, such as 90d or 36h"))]
    pub retention: Option<String>,

    /// When a record counts as written. batched: records are fsynced in groups, a few
    /// milliseconds behind the traffic. strict: a request's record is on disk before the
    /// request goes upstream.
    #[serde(default)]
    pub durability: Durability,

    /// What happens to traffic that cannot be recorded (a full spool while the sink is down).
    /// closed: it is refused. open: it passes and the recording carries a gap marker.
    #[serde(default)]
    pub on_failure: OnFailure,
}

fn default_max_body_bytes() -> i64 {
    names::DEFAULT_MAX_BODY_BYTES
}

/// When a record counts as written.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Group-commit: fsync a batch of records every few milliseconds.
    #[default]
    Batched,
    /// fsync before the request goes upstream.
    Strict,
}

/// What happens to traffic that cannot be recorded.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Refuse traffic that cannot be recorded.
    #[default]
    Closed,
    /// Let it pass and record a gap marker.
    Open,
}

/// Secrets to keep out of the recording.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Masking {
    /// Built-in detectors to turn off. All others are on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub disabled_detectors: Vec<Detector>,

    /// Extra patterns to mask, as RE2-style regular expressions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub patterns: Vec<MaskPattern>,

    /// JSON fields whose values are masked wherever they appear in a JSON body, as dotted
    /// paths from the document root (such as credentials.password or items.*.token).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub json_fields: Vec<JsonFieldPath>,

    /// Query and form parameter names whose values are masked whatever they hold, compared
    /// case-insensitively, in addition to the built-in list (key, access_token, token, sig,
    /// signature, X-Goog-Signature, X-Goog-Credential, password, …; turned off with the
    /// secretParameters detector). Values are percent-decoded before they are fingerprinted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub secret_parameters: Vec<SecretParameter>,

    /// The Secret holding the key for masked-value fingerprints and the digests of bodies
    /// not stored. Auditors who can read it can prove whether a given secret or file crossed
    /// the session; agents cannot read it. Without it the operator makes one for the session,
    /// `cassette-fingerprint-<session>` (key `key`), kept when the session is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint_key: Option<SecretKeyRef>,
}

/// A named pattern to mask.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MaskPattern {
    /// The detector name shown in masks, such as «masked:<name>:<fingerprint>».
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("pattern names are lowercase letters, digits and dashes, such as internal-token"))]
    pub name: String,

    /// The regular expression. The whole match is masked, or the first capture group if
    /// there is one.
    #[schemars(length(min = 1, max = 4096))]
    pub regex: String,
}

/// A dotted path to a JSON field.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JsonFieldPath {
    /// The path, such as credentials.password; * matches any key or array index.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("self.matches('^([A-Za-z0-9_$@-]+|\\\\*)(\\\\.([A-Za-z0-9_$@-]+|\\\\*))*$')")
        .message("path must be dot-separated field names or *, such as credentials.password or items.*.token"))]
    pub path: String,
}

/// A query or form parameter name, such as X-Internal-Ticket.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.matches('^[A-Za-z0-9_.~-]+$')",
    "message": "a secret parameter is a query or form parameter name: letters, digits and _ . ~ -, such as X-Internal-Ticket"
}]))]
pub struct SecretParameter(#[schemars(length(min = 1, max = 128))] pub String);

impl AgentSession {
    /// The fingerprint key the session's pods use: the Secret the spec names, or the one the
    /// operator makes for it.
    pub fn fingerprint_key(&self) -> SecretKeyRef {
        self.spec
            .masking
            .as_ref()
            .and_then(|m| m.fingerprint_key.clone())
            .unwrap_or_else(|| SecretKeyRef {
                name: names::default_fingerprint_secret(
                    self.metadata.name.as_deref().unwrap_or_default(),
                ),
                key: names::FINGERPRINT_SECRET_KEY.into(),
            })
    }

    /// Whether the operator makes the fingerprint Secret (the spec names none).
    pub fn fingerprint_key_is_made(&self) -> bool {
        self.spec
            .masking
            .as_ref()
            .and_then(|m| m.fingerprint_key.as_ref())
            .is_none()
    }
}

impl From<&str> for SecretParameter {
    fn from(name: &str) -> Self {
        SecretParameter(name.to_owned())
    }
}

impl SecretParameter {
    /// The name, ASCII lowercase (how parameters are compared).
    pub fn to_ascii_lowercase(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

/// A secret brokered by the sidecar: the agent holds a placeholder in `env`, and the sidecar
/// puts the Secret's value in its place toward `hosts` only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.presentation == 'Header') == has(self.header)")
    .message("header is set when presentation is Header, and only then: name the header, such as PRIVATE-TOKEN or x-api-key"))]
pub struct Credential {
    /// The entry's name, shown in recordings and metrics and part of the placeholder.
    #[schemars(length(min = 1, max = 40))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("a credential name is lowercase letters, digits and dashes, such as github"))]
    pub name: String,

    /// The hosts the secret is presented to: exact names (api.github.com) or *. and a domain
    /// for any one label under it (*.gitlab.example.com matches a.gitlab.example.com, not
    /// a.b.gitlab.example.com). Never Google hosts: those use Workload Identity.
    #[schemars(length(min = 1, max = 16))]
    pub hosts: Vec<CredentialHost>,

    /// The key of a Secret in the session's namespace holding the real value. It is mounted
    /// into the sidecar alone; a pod whose agent containers name the Secret is refused.
    pub secret_ref: SecretKeyRef,

    /// How the agent sends the credential, and how the sidecar presents the real one.
    pub presentation: Presentation,

    /// The header that carries the credential, when presentation is Header (such as
    /// PRIVATE-TOKEN or x-api-key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9_-]*$')")
        .message("header must be an HTTP header name of letters, digits, - and _, such as PRIVATE-TOKEN"))]
    pub header: Option<String>,

    /// The environment variable of the agent's containers that receives the placeholder,
    /// such as GITHUB_TOKEN; a value the pod sets there is replaced.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_]*$')")
        .message("env must be an environment variable name of letters, digits and _, such as GITHUB_TOKEN"))]
    pub env: String,
}

/// How a brokered credential travels in a request.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Presentation {
    /// `Authorization: Bearer <value>`.
    Bearer,
    /// `Authorization: token <value>` (GitHub's older API form).
    Token,
    /// The password of HTTP Basic authentication, as git over HTTPS sends it; the user name
    /// the agent sent is kept.
    Basic,
    /// The whole value of the header named in `header`.
    Header,
}

/// A host a credential is presented to: a name, or `*.` and a domain for one label under it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.matches('^(\\\\*\\\\.)?([a-z0-9]([-a-z0-9]*[a-z0-9])?\\\\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        "message": "a credential host is a lowercase DNS name such as api.github.com, or *. and a domain such as *.gitlab.example.com; a wildcard stands for exactly one leading label"
    },
    {
        "rule": "!self.startsWith('*.') || self.substring(2).contains('.')",
        "message": "a wildcard host needs a domain of at least two labels after *., such as *.example.com"
    },
    {
        "rule": "!(self == 'googleapis.com' || self.endsWith('.googleapis.com') || self == 'google.com' || self.endsWith('.google.com') || self == 'google.internal' || self.endsWith('.google.internal'))",
        "message": "Google hosts get credentials through the sidecar's Workload Identity, not spec.credentials: remove the host"
    }
]))]
pub struct CredentialHost(#[schemars(length(min = 1, max = 253))] pub String);

impl From<&str> for CredentialHost {
    fn from(host: &str) -> Self {
        CredentialHost(host.to_owned())
    }
}

/// One brokered credential as the injector hands it to the sidecar (in
/// [`names::CREDENTIALS_ENV`]): the entry, where its Secret key is mounted, and this pod's
/// placeholder. Not part of the AgentSession resource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BrokeredCredential {
    /// The entry's name.
    pub name: String,
    /// The entry's hosts, as written.
    pub hosts: Vec<String>,
    /// The entry's presentation.
    pub presentation: Presentation,
    /// The header, for presentation Header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The file in the sidecar holding the real value (the kubelet rewrites it on rotation).
    pub file: String,
    /// The placeholder the agent's containers hold in the entry's env.
    pub placeholder: String,
}

/// A key in a Secret in the session's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A built-in secret detector.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum Detector {
    /// Google API keys (AIza…).
    GoogleApiKey,
    /// Google OAuth access and refresh tokens.
    GoogleOauthToken,
    /// The private_key of a service-account JSON key file.
    ServiceAccountKey,
    /// PEM-encoded private keys.
    PemPrivateKey,
    /// JSON Web Tokens.
    Jwt,
    /// GitHub tokens (ghp_, gho_, ghs_, github_pat_ …).
    GithubToken,
    /// GitLab tokens (glpat- …).
    GitlabToken,
    /// AWS access key ids and secret access keys.
    AwsKey,
    /// Slack tokens (xox…).
    SlackToken,
    /// password, secret and token fields in JSON and form bodies.
    SecretFields,
    /// Authorization, Proxy-Authorization, Cookie, Set-Cookie and X-Goog-Api-Key headers.
    CredentialHeaders,
    /// Query and form parameters that hold credentials by name (key, access_token, sig,
    /// X-Goog-Signature, password, …), masked whatever their value.
    SecretParameters,
}

/// Which requests the sidecar lets through, refuses or holds for review.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// enforce: refuse what the rules deny. audit: let everything through and record what
    /// would have been refused.
    #[serde(default)]
    pub mode: PolicyMode,

    /// The decision for a request no rule matches.
    #[serde(default)]
    pub default_action: Action,

    /// What happens to a Google request whose permission is unknown when no rule matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unclassified: Option<Unclassified>,

    /// Rules in order; the first rule that matches a request decides it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub rules: Vec<PolicyRule>,

    /// Hosts whose TLS is tunnelled without interception (certificate pinning clients).
    /// Only connection metadata is recorded for them. A leading *. matches any subdomain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub passthrough: Vec<HostPattern>,

    /// How long a request waits for a review decision before it is denied, such as 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(h|m|s))+$') && duration(self) >= duration('1s') && duration(self) <= duration('24h')")
        .message("reviewTimeout must be a duration such as 90s or 5m, between 1s and 24h"))]
    pub review_timeout: Option<String>,
}

/// The decision for a request to a Google API whose IAM permission cassette cannot tell
/// (recorded as permission unknown) when no rule matches it, in place of defaultAction. Such
/// a request never matches a permission rule, so a session with permission rules should deny
/// or review them: a batch or a new API method could otherwise do what a permission rule
/// denies. Unset, defaultAction decides them too.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Unclassified {
    /// Let it through.
    Allow,
    /// Refuse it and record it as blocked.
    Deny,
    /// Hold it for review.
    Review,
}

impl From<Unclassified> for Action {
    fn from(u: Unclassified) -> Action {
        match u {
            Unclassified::Allow => Action::Allow,
            Unclassified::Deny => Action::Deny,
            Unclassified::Review => Action::Review,
        }
    }
}

/// enforce or audit.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Refuse what the rules deny.
    #[default]
    Enforce,
    /// Record what would have been refused, refuse nothing.
    Audit,
}

/// What a rule does with the requests it matches.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the request through.
    #[default]
    Allow,
    /// Refuse it with 403 (git pushes get a rejected-ref report) and record it as blocked.
    Deny,
    /// Hold it until an approver decides, or until the review timeout denies it.
    Review,
}

/// A host name, or *.domain for any subdomain.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(transparent)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.matches('^(\\\\*\\\\.)?([a-z0-9]([-a-z0-9]*[a-z0-9])?\\\\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
    "message": "host must be a lowercase DNS name such as github.com or *.googleapis.com"
}]))]
pub struct HostPattern(#[schemars(length(min = 1, max = 253))] pub String);

/// One policy rule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PolicyRule {
    /// A name for the rule, shown in recordings and refusals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub name: Option<String>,

    /// allow, deny or review.
    pub action: Action,

    /// What the rule matches. Every field given must match; give at least one.
    #[serde(rename = "match")]
    pub matches: RuleMatch,
}

/// Conditions on a request. Every field given must match.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.host) || has(self.method) || has(self.path) || has(self.service) || has(self.permission) || has(self.gitRef)")
    .message("a rule's match needs at least one of host, method, path, service, permission or gitRef"))]
pub struct RuleMatch {
    /// The request's host, or *.domain for any subdomain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostPattern>,

    /// The HTTP method, such as GET or DELETE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Z]+$')")
        .message("method must be an upper-case HTTP method such as GET or DELETE"))]
    pub method: Option<String>,

    /// The request path; * matches within a segment and ** across segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')")
        .message("path must start with /, such as /storage/v1/b/**"))]
    pub path: Option<String>,

    /// The Google service, by its API name, such as storage or secretmanager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z][a-z0-9]*$')")
        .message("service must be a Google API name such as storage, pubsub or secretmanager"))]
    pub service: Option<String>,

    /// The IAM permission the request exercises, in Google's own names, such as
    /// storage.objects.delete or iam.serviceAccountKeys.create. A final * matches a group,
    /// such as storage.buckets.*.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z][a-zA-Z0-9]*\\\\.(\\\\*|[a-zA-Z0-9]+\\\\.(\\\\*|[a-zA-Z0-9]+))$')")
        .message("permission must be an IAM permission such as storage.objects.delete, or end in * such as storage.buckets.*"))]
    pub permission: Option<String>,

    /// A git ref that a push updates, such as refs/heads/main; * matches within a segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    #[x_kube(validation = Rule::new("self.startsWith('refs/')")
        .message("gitRef must be a full ref such as refs/heads/main or refs/tags/*"))]
    pub git_ref: Option<String>,
}

/// A decision on a request held for review.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// The review id, as listed in status.pendingReviews.
    #[schemars(length(min = 1, max = 128))]
    pub id: String,

    /// approve or deny.
    pub decision: ReviewDecision,

    /// Who decided, as stamped by the admission webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,

    /// When the decision was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,

    /// Why, for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,

    /// The digest of the held request the approver saw (status.pendingReviews[].digest): the
    /// sidecar releases a request only when it matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 80))]
    pub digest: Option<String>,
}

/// approve or deny.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReviewDecision {
    /// Let the held request through.
    Approve,
    /// Refuse it.
    Deny,
}

/// What cassette has observed of a session. Written by the operator and, for their own
/// entries in pods, by the sidecars.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentSessionStatus {
    /// Pending until a pod records, then Active, then Completed, Expired or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The latest observations of the session's state (Ready, Recording, Expired).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// When the session stops admitting requests, from expiresAt or creation + maxDuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// Where this session's recordings are: <sink>/<namespace>/<session>/.
    #[serde(
        default,
        rename = "recordingURI",
        skip_serializing_if = "Option::is_none"
    )]
    pub recording_uri: Option<String>,

    /// Sums over pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<Totals>,

    /// One entry per pod that has recorded in this session, reported by its sidecar (at most
    /// 2048: the bound lets the API server price the key's transition rule).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[schemars(length(max = 2048))]
    pub pods: Vec<PodRecording>,

    /// Requests held for review, waiting for `kubectl cassette approve|deny`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub pending_reviews: Vec<PendingReview>,
}

/// The lifecycle phase of a session.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; no pod has recorded yet.
    Pending,
    /// At least one pod is recording.
    Active,
    /// Every pod has ended and shipped its recording.
    Completed,
    /// The session's time ran out.
    Expired,
    /// Recording failed; see conditions.
    Failed,
}

/// Counts summed over a session's pods.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Requests recorded.
    pub exchanges: u64,
    /// Requests refused by policy, expiry or review.
    pub blocked: u64,
    /// Secrets masked.
    pub masked: u64,
    /// Bytes recorded, before compression.
    pub bytes: u64,
}

/// One pod's recording, as its sidecar reports it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(oldSelf.publicKey) || (has(self.publicKey) && self.publicKey == oldSelf.publicKey)",
    "message": "a pod's publicKey is set once, by its own sidecar, and cannot change or be removed"
}]))]
pub struct PodRecording {
    /// The pod's name.
    pub name: String,
    /// The pod's UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The Ed25519 public key (base64) that signs this pod's recording; `kubectl cassette
    /// verify` checks the recording against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub public_key: Option<String>,
    /// Requests recorded.
    #[serde(default)]
    pub exchanges: u64,
    /// Requests refused.
    #[serde(default)]
    pub blocked: u64,
    /// Secrets masked.
    #[serde(default)]
    pub masked: u64,
    /// Bytes recorded, before compression.
    #[serde(default)]
    pub bytes: u64,
    /// The last segment shipped to the sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_shipped_segment: Option<String>,
    /// When it was shipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_shipped_at: Option<Time>,
    /// Bytes waiting in the local spool to be shipped.
    #[serde(default)]
    pub spool_bytes: u64,
}

/// A request held for review.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PendingReview {
    /// The id to approve or deny.
    pub id: String,
    /// The pod that sent the request.
    pub pod: String,
    /// The request line, such as DELETE storage.googleapis.com/storage/v1/b/logs.
    pub request: String,
    /// The IAM permission it exercises, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission: Option<String>,
    /// The rule that asked for review.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// When the request arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<Time>,
    /// `sha256:` and the hex SHA-256 of the held request as listed here (`<method>
    /// <host><target>`, the target masked, and its body's size) and of its body's keyed digest
    /// (the one the body's record keeps); an approval names it, so it releases this request,
    /// body and all, and no other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}
