//! The injection decision: a Pod and the AgentSession it names in, the recording pod (or a
//! refusal an admin can act on) out. Pure: no API calls, no clock; the webhook looks the
//! session and the namespace up and passes the time in.
//!
//! Injection is recomputed from scratch on every call (whatever an earlier pass added is
//! stripped first), so a reinvoked webhook converges, a pod that is already injected comes
//! back unchanged, and a forged `cassette.dev/injected` annotation buys nothing.
//!
//! In the order a pod goes through it: [`strip`] takes an earlier injection out, [`refuse`]
//! looks for the agent's ways around the recorder, [`build`] adds the init container, the
//! sidecar and the volumes, and confines the agent's containers.

mod build;
mod refuse;
mod strip;
#[cfg(test)]
mod tests;

pub use refuse::warnings;

use build::{
    confine, give_placeholders, init_container, sidecar_container, trust_session_ca, volumes,
};
use cassette_api::names::CREDENTIALS_DIR;
use cassette_api::names::{ENFORCE_LABEL, INJECTED_ANNOTATION, SESSION_LABEL};
use cassette_api::{AgentSession, BrokeredCredential};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use refuse::{agent_containers, check};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use strip::{earlier_removals, remove_automounted_token, strip};

/// The init container that installs the capture rules.
pub const INIT_NAME: &str = "cassette-init";
/// The native sidecar that records.
pub const SIDECAR_NAME: &str = "cassette-sidecar";
/// Volume with the session CA bundle: the sidecar writes it, agent containers read it.
pub const CA_VOLUME: &str = "cassette-ca";
/// Volume with the sidecar's spool of segments not yet shipped.
pub const SPOOL_VOLUME: &str = "cassette-spool";
/// The pod's only service-account token, mounted into the sidecar alone.
pub const TOKEN_VOLUME: &str = "cassette-token";
/// The masking fingerprint key, when the session names one.
pub const FINGERPRINT_VOLUME: &str = "cassette-fingerprint-key";
/// Volumes with one brokered credential's Secret key each (`<prefix><entry name>`), mounted
/// into the sidecar alone.
pub const CREDENTIAL_VOLUME_PREFIX: &str = "cassette-credential-";
/// Where the CA bundle directory is mounted, in the sidecar and in agent containers.
pub const CA_DIR: &str = "/var/run/cassette/ca";
/// The bundle the trust-store variables point at.
pub const CA_BUNDLE_PATH: &str = "/var/run/cassette/ca/bundle.pem";
/// The sidecar's spool directory.
pub const SPOOL_DIR: &str = "/var/run/cassette/spool";
/// Where the sidecar finds the fingerprint key.
pub const FINGERPRINT_DIR: &str = "/var/run/cassette/fingerprint";
/// Where in-cluster clients look for the service-account token.
pub const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The pod's termination grace period when its spec sets none (the API server's default).
const DEFAULT_GRACE_SECONDS: i64 = 30;
/// The volume the ServiceAccount admission plugin adds to every pod that automounts.
pub(crate) const AUTOMOUNT_VOLUME_PREFIX: &str = "kube-api-access-";

/// What the operator's flags say about the injected containers.
#[derive(Clone, Debug)]
pub struct Config {
    /// The `cassette-sidecar` image (both the init container and the sidecar run it).
    pub sidecar_image: String,
    /// `imagePullPolicy` of the injected containers; the cluster's default when unset.
    pub image_pull_policy: Option<String>,
    /// Extra environment for the sidecar, such as an emulator's endpoint in tests.
    pub sidecar_env: Vec<(String, String)>,
    /// Lifetime of the sidecar's projected token; the kubelet refreshes it before it ends.
    pub token_expiration_seconds: i64,
    /// The capabilities agent containers may hold (upper case, without `CAP_`): they run with
    /// `drop: [ALL]` and these added back, and a pod asking for any other is refused.
    pub agent_capabilities: Vec<String>,
}

/// The part of the container runtime's default capability set that cannot touch the capture:
/// containerd's and CRI-O's defaults without NET_RAW (raw and packet sockets write below the
/// capture rules), SETUID and SETGID (becoming the recorder's UID) and MKNOD.
pub const DEFAULT_AGENT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETPCAP",
    "SYS_CHROOT",
];

/// Capabilities no allowlist may hold: each one changes, bypasses or reaches into the capture
/// (the operator refuses to start with them in `--agent-capabilities`).
pub const NEVER_AGENT_CAPABILITIES: &[&str] = &[
    "NET_ADMIN",
    "NET_RAW",
    "SETUID",
    "SETGID",
    "SYS_ADMIN",
    "SYS_PTRACE",
    "SYS_MODULE",
    "BPF",
    "PERFMON",
    "DAC_READ_SEARCH",
    "SYS_RAWIO",
    "CHECKPOINT_RESTORE",
    "ALL",
];

impl Default for Config {
    fn default() -> Self {
        Self {
            sidecar_image: "ghcr.io/cassette-dev/cassette-sidecar:latest".into(),
            image_pull_policy: None,
            sidecar_env: Vec::new(),
            token_expiration_seconds: 3607,
            agent_capabilities: DEFAULT_AGENT_CAPABILITIES
                .iter()
                .map(|c| c.to_string())
                .collect(),
        }
    }
}

/// What the webhook knows about the pod being admitted.
pub struct Request<'a> {
    /// The pod as submitted (it may already carry an earlier injection).
    pub pod: &'a Pod,
    /// The pod's namespace.
    pub namespace: &'a str,
    /// Whether the namespace carries `cassette.dev/enforce: "true"`.
    pub enforced: bool,
    /// The AgentSession the pod's label names, if it exists.
    pub session: Option<&'a AgentSession>,
    /// The Secrets the pod names ([`named_secrets`]) that are service-account tokens.
    pub token_secrets: &'a BTreeSet<String>,
    /// The admission time.
    pub now: Timestamp,
    /// Fresh randomness for this pod's credential placeholders (the webhook draws it from
    /// the system RNG).
    pub seed: [u8; 32],
}

/// The decision on one pod.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The pod names no session and its namespace does not require one.
    NotRecorded,
    /// The pod is already injected exactly as it would be now.
    Unchanged,
    /// The pod to store instead.
    Injected(Box<Pod>),
    /// The pod may not be created; the message says why and what to do.
    Refused(String),
}

/// What the injector did, as recorded in the `cassette.dev/injected` annotation.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The AgentSession the pod records into.
    pub session: String,
    /// The sidecar image injected.
    pub sidecar_image: String,
    /// The containers whose traffic is recorded and which trust the session CA.
    pub agent_containers: Vec<String>,
    /// Service-account token volumes taken away from the agent containers.
    pub removed_token_volumes: Vec<String>,
    /// The brokered credentials whose placeholders the agent containers hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<String>,
    /// The operator version that injected.
    pub version: String,
}

/// The Secrets a pod names for itself (not those an earlier injection added), which the
/// webhook looks up to find service-account tokens among them.
pub fn named_secrets(pod: &Pod) -> BTreeSet<String> {
    pod.spec
        .as_ref()
        .map(|spec| {
            refuse::secret_references(&strip(spec))
                .into_iter()
                .map(|(_, name)| name)
                .collect()
        })
        .unwrap_or_default()
}

/// Decide what happens to a pod.
pub fn inject(config: &Config, request: &Request<'_>) -> Outcome {
    let pod = request.pod;
    let pod_name = pod_display_name(pod);
    let Some(session_name) = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SESSION_LABEL))
    else {
        if request.enforced {
            return Outcome::Refused(format!(
                "namespace {:?} requires every pod to record into an AgentSession ({ENFORCE_LABEL}=true), \
                 and pod {pod_name} has no {SESSION_LABEL} label: add the label {SESSION_LABEL}=<AgentSession name>",
                request.namespace
            ));
        }
        return Outcome::NotRecorded;
    };

    let Some(session) = request.session else {
        return Outcome::Refused(format!(
            "AgentSession {session_name:?} does not exist in namespace {:?}; create it before starting \
             pods labelled {SESSION_LABEL}={session_name}",
            request.namespace
        ));
    };
    if session.metadata.deletion_timestamp.is_some() {
        return Outcome::Refused(format!(
            "AgentSession {session_name:?} is being deleted; pods can no longer join it"
        ));
    }
    let expires_at = crate::session::expires_at(session);
    if let Some(at) = expires_at
        && request.now >= at
    {
        return Outcome::Refused(format!(
            "AgentSession {session_name:?} expired at {at}; pods can no longer join it"
        ));
    }

    let Some(spec) = pod.spec.as_ref() else {
        return Outcome::Refused(format!("pod {pod_name} has no spec"));
    };
    let credentials = brokered(session, spec, &request.seed);
    let mut spec = strip(spec);
    // The entries' variables are replaced before the Secrets are looked for: a variable the
    // pod filled from a credential's Secret is one the placeholder takes over, not a leak.
    for container in spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
    {
        give_placeholders(container, &session.spec.credentials, &credentials);
    }
    if let Err(reason) = check(&spec, &config.agent_capabilities, request.token_secrets) {
        return Outcome::Refused(format!(
            "pod {pod_name} cannot record into AgentSession {session_name:?}: {reason}"
        ));
    }
    let key = session.fingerprint_key();
    if let Some((field, _)) = refuse::secret_references(&spec)
        .into_iter()
        .find(|(_, name)| *name == key.name)
    {
        return Outcome::Refused(format!(
            "pod {pod_name} cannot record into AgentSession {session_name:?}: {field} names \
             Secret {:?}, the session's fingerprint key, which auditors hold and agents do not \
             (with it, an agent could tell which secrets a mask hides): remove the reference",
            key.name
        ));
    }

    let credential_secrets: BTreeSet<&str> = session
        .spec
        .credentials
        .iter()
        .map(|c| c.secret_ref.name.as_str())
        .collect();
    if let Some((field, name)) = refuse::secret_references(&spec)
        .into_iter()
        .find(|(_, name)| credential_secrets.contains(name.as_str()))
    {
        let entries: Vec<&str> = session
            .spec
            .credentials
            .iter()
            .filter(|c| c.secret_ref.name == name)
            .map(|c| c.name.as_str())
            .collect();
        return Outcome::Refused(format!(
            "pod {pod_name} cannot record into AgentSession {session_name:?}: {field} names \
             Secret {name:?}, which holds the session's brokered credential {entries}: the \
             sidecar presents it for the agent and the agent holds only a placeholder (in the \
             credential's env variable); remove the reference",
            entries = entries.join(", ")
        ));
    }

    // A reinvocation finds the token already gone; the first pass's record still counts.
    let mut removed_token_volumes = earlier_removals(pod);
    for volume in remove_automounted_token(&mut spec) {
        if !removed_token_volumes.contains(&volume) {
            removed_token_volumes.push(volume);
        }
    }
    let agent_containers = agent_containers(&spec);
    for container in spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
    {
        trust_session_ca(container);
        confine(container, &config.agent_capabilities);
    }
    let mut init = vec![
        init_container(config),
        sidecar_container(
            config,
            session,
            expires_at,
            spec.termination_grace_period_seconds
                .unwrap_or(DEFAULT_GRACE_SECONDS),
            &credentials,
        ),
    ];
    init.extend(spec.init_containers.take().unwrap_or_default());
    spec.init_containers = Some(init);
    spec.volumes
        .get_or_insert_with(Vec::new)
        .extend(volumes(config, session));
    spec.automount_service_account_token = Some(false);

    let record = Record {
        session: session_name.clone(),
        sidecar_image: config.sidecar_image.clone(),
        agent_containers,
        removed_token_volumes,
        credentials: credentials.iter().map(|c| c.name.clone()).collect(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let mut injected = pod.clone();
    injected.spec = Some(spec);
    injected
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(
            INJECTED_ANNOTATION.into(),
            serde_json::to_string(&record).expect("the record serializes"),
        );
    if injected == *pod {
        Outcome::Unchanged
    } else {
        Outcome::Injected(Box::new(injected))
    }
}

/// The session's credentials as this pod's sidecar gets them. A placeholder an earlier pass
/// gave the agent containers is kept (so a reinvoked webhook converges); each other one is
/// new, from `seed`. Kept only when it has a placeholder's shape: a value the pod chose is
/// replaced like any other.
fn brokered(
    session: &AgentSession,
    submitted: &k8s_openapi::api::core::v1::PodSpec,
    seed: &[u8; 32],
) -> Vec<BrokeredCredential> {
    use cassette_rules::credential::{PLACEHOLDER_RANDOM_BYTES, is_placeholder_for, placeholder};
    session
        .spec
        .credentials
        .iter()
        .map(|c| {
            let earlier = submitted
                .containers
                .iter()
                .chain(submitted.init_containers.iter().flatten())
                .flat_map(|container| container.env.iter().flatten())
                .filter(|e| e.name == c.env)
                .find_map(|e| e.value.clone().filter(|v| is_placeholder_for(&c.name, v)));
            let placeholder = earlier.unwrap_or_else(|| {
                let mut context = ring::digest::Context::new(&ring::digest::SHA256);
                context.update(seed);
                context.update(c.name.as_bytes());
                let digest = context.finish();
                placeholder(&c.name, &digest.as_ref()[..PLACEHOLDER_RANDOM_BYTES])
            });
            BrokeredCredential {
                name: c.name.clone(),
                hosts: c.hosts.iter().map(|h| h.0.clone()).collect(),
                presentation: c.presentation,
                header: c.header.clone(),
                file: format!("{CREDENTIALS_DIR}/{}/value", c.name),
                placeholder,
            }
        })
        .collect()
}

/// The pod's name for messages; pods made by controllers have only a generateName yet.
fn pod_display_name(pod: &Pod) -> String {
    match (&pod.metadata.name, &pod.metadata.generate_name) {
        (Some(name), _) => format!("{name:?}"),
        (None, Some(prefix)) => format!("{:?}", format!("{prefix}…")),
        (None, None) => "(unnamed)".into(),
    }
}
