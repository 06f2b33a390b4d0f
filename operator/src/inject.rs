//! The injection decision: a Pod and the AgentSession it names in, the recording pod (or a
//! refusal an admin can act on) out. Pure: no API calls, no clock; the webhook looks the
//! session and the namespace up and passes the time in.
//!
//! Injection is recomputed from scratch on every call (whatever an earlier pass added is
//! stripped first), so a reinvoked webhook converges, a pod that is already injected comes
//! back unchanged, and a forged `cassette.dev/injected` annotation buys nothing.

use cassette_api::names::{
    ADMIN_PORT, CA_BUNDLE_ENV, ENFORCE_LABEL, INJECTED_ANNOTATION, SESSION_LABEL, SIDECAR_UID,
};
use cassette_api::{AgentSession, AgentSessionSpec, Durability, OnFailure};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, DownwardAPIProjection,
    DownwardAPIVolumeFile, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    ObjectFieldSelector, Pod, PodSpec, Probe, ProjectedVolumeSource, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;
use std::collections::BTreeMap;

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
/// The volume the ServiceAccount admission plugin adds to every pod that automounts.
const AUTOMOUNT_VOLUME_PREFIX: &str = "kube-api-access-";

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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sidecar_image: "ghcr.io/cassette-dev/cassette-sidecar:latest".into(),
            image_pull_policy: None,
            sidecar_env: Vec::new(),
            token_expiration_seconds: 3607,
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
    /// The admission time.
    pub now: Timestamp,
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
    /// The operator version that injected.
    pub version: String,
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
    let mut spec = strip(spec);
    if let Err(reason) = check(&spec) {
        return Outcome::Refused(format!(
            "pod {pod_name} cannot record into AgentSession {session_name:?}: {reason}"
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
        confine(container);
    }
    let mut init = vec![
        init_container(config),
        sidecar_container(config, session, expires_at),
    ];
    init.extend(spec.init_containers.take().unwrap_or_default());
    spec.init_containers = Some(init);
    spec.volumes
        .get_or_insert_with(Vec::new)
        .extend(volumes(config, &session.spec));
    spec.automount_service_account_token = Some(false);

    let record = Record {
        session: session_name.clone(),
        sidecar_image: config.sidecar_image.clone(),
        agent_containers,
        removed_token_volumes,
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

/// The pod as it was before any injection: our containers, volumes, mounts and variables out.
/// A forged annotation or a container that merely borrows our names is replaced, not trusted.
fn strip(spec: &PodSpec) -> PodSpec {
    let ours = [CA_VOLUME, SPOOL_VOLUME, TOKEN_VOLUME, FINGERPRINT_VOLUME];
    let mut spec = spec.clone();
    if let Some(init) = spec.init_containers.as_mut() {
        init.retain(|c| c.name != INIT_NAME && c.name != SIDECAR_NAME);
    }
    if spec.init_containers.as_ref().is_some_and(Vec::is_empty) {
        spec.init_containers = None;
    }
    if let Some(volumes) = spec.volumes.as_mut() {
        volumes.retain(|v| !ours.contains(&v.name.as_str()));
    }
    for container in spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
    {
        if let Some(mounts) = container.volume_mounts.as_mut() {
            mounts.retain(|m| !ours.contains(&m.name.as_str()));
            if mounts.is_empty() {
                container.volume_mounts = None;
            }
        }
        if let Some(env) = container.env.as_mut() {
            env.retain(|e| {
                !(CA_BUNDLE_ENV.contains(&e.name.as_str())
                    && e.value.as_deref() == Some(CA_BUNDLE_PATH))
            });
            if env.is_empty() {
                container.env = None;
            }
        }
    }
    spec
}

/// The agent's ways around the recorder, refused before anything is added.
fn check(spec: &PodSpec) -> Result<(), String> {
    if spec.host_network == Some(true) {
        return Err(
            "it uses hostNetwork, where the capture rules cannot separate its traffic \
                    from the node's: remove spec.hostNetwork"
                .into(),
        );
    }
    if spec.share_process_namespace == Some(true) {
        return Err(
            "it sets shareProcessNamespace, which lets the agent reach into the \
                    recorder's process: remove spec.shareProcessNamespace"
                .into(),
        );
    }
    if spec.host_pid == Some(true) {
        return Err(
            "it uses hostPID, which lets the agent reach into the recorder's process: \
                    remove spec.hostPID"
                .into(),
        );
    }
    let pod_uid = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    for (field, container) in containers_with_fields(spec) {
        let name = &container.name;
        if name == INIT_NAME || name == SIDECAR_NAME {
            return Err(format!(
                "the container name {name:?} ({field}) is reserved for cassette: rename the container"
            ));
        }
        let security = container.security_context.as_ref();
        if security.and_then(|s| s.privileged) == Some(true) {
            return Err(format!(
                "container {name:?} is privileged and could remove the capture rules: \
                 remove {field}.securityContext.privileged"
            ));
        }
        let added = security
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.add.as_ref());
        for capability in added.into_iter().flatten() {
            let bare = capability.trim_start_matches("CAP_").to_ascii_uppercase();
            if [
                "NET_ADMIN",
                "NET_RAW",
                "ALL",
                "SETUID",
                "SETGID",
                "SYS_ADMIN",
            ]
            .contains(&bare.as_str())
            {
                return Err(format!(
                    "container {name:?} adds the capability {capability}, with which it could change \
                     or bypass the capture rules: remove it from {field}.securityContext.capabilities.add"
                ));
            }
        }
        if security.and_then(|s| s.allow_privilege_escalation) == Some(true) {
            return Err(format!(
                "container {name:?} sets allowPrivilegeEscalation, with which a process could become \
                 root and then the recorder's UID {SIDECAR_UID}, whose traffic is not captured: \
                 remove {field}.securityContext.allowPrivilegeEscalation"
            ));
        }
        let uid = security.and_then(|s| s.run_as_user).or(pod_uid);
        if uid == Some(i64::from(SIDECAR_UID)) {
            let at = if security.and_then(|s| s.run_as_user).is_some() {
                format!("{field}.securityContext.runAsUser")
            } else {
                "spec.securityContext.runAsUser".into()
            };
            return Err(format!(
                "container {name:?} runs as UID {SIDECAR_UID}, the recorder's own UID, whose traffic \
                 is not captured: choose another UID in {at}"
            ));
        }
        if let Some(mount) = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path.trim_end_matches('/') == CA_DIR)
        {
            return Err(format!(
                "container {name:?} mounts volume {:?} at {CA_DIR}, where cassette mounts the \
                 session CA bundle: mount it elsewhere",
                mount.name
            ));
        }
    }
    for volume in spec.volumes.iter().flatten() {
        let projects_token = volume
            .projected
            .as_ref()
            .and_then(|p| p.sources.as_ref())
            .is_some_and(|s| s.iter().any(|s| s.service_account_token.is_some()));
        if projects_token && !volume.name.starts_with(AUTOMOUNT_VOLUME_PREFIX) {
            return Err(format!(
                "volume {:?} projects a service-account token; the recorder holds the pod's only \
                 token and the agent gets none: remove the volume",
                volume.name
            ));
        }
    }
    Ok(())
}

/// Every container the agent controls, with the field path an admin would edit.
fn containers_with_fields(spec: &PodSpec) -> impl Iterator<Item = (String, &Container)> {
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| (format!("spec.initContainers[{i}]"), c));
    let main = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("spec.containers[{i}]"), c));
    init.chain(main)
}

fn agent_containers(spec: &PodSpec) -> Vec<String> {
    containers_with_fields(spec)
        .map(|(_, c)| c.name.clone())
        .collect()
}

/// Admission warnings for a pod that is injected, read from the pod as written (so the field
/// paths are the author's): what cassette cannot check. A container without a `runAsUser`
/// (its own or the pod's) runs as its image's user, which the webhook cannot see; if that is
/// the recorder's UID, its traffic is not captured.
pub fn warnings(pod: &Pod) -> Vec<String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let pod_uid = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    containers_with_fields(spec)
        .filter(|(_, c)| c.name != INIT_NAME && c.name != SIDECAR_NAME)
        .filter(|(_, c)| {
            let own = c.security_context.as_ref().and_then(|s| s.run_as_user);
            own.or(pod_uid).is_none()
        })
        .map(|(field, c)| {
            format!(
                "container {:?} sets no runAsUser: if its image runs as UID {SIDECAR_UID}, its \
                 traffic is not recorded; set {field}.securityContext.runAsUser",
                c.name
            )
        })
        .collect()
}

/// The token volumes an earlier pass recorded as removed.
fn earlier_removals(pod: &Pod) -> Vec<String> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INJECTED_ANNOTATION))
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        .and_then(|record| {
            record["removedTokenVolumes"].as_array().map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str())
                    .filter(|n| n.starts_with(AUTOMOUNT_VOLUME_PREFIX))
                    .map(String::from)
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Take away the token the ServiceAccount admission plugin mounted into every container.
fn remove_automounted_token(spec: &mut PodSpec) -> Vec<String> {
    let mut removed = Vec::new();
    if let Some(volumes) = spec.volumes.as_mut() {
        volumes.retain(|v| {
            let automounted = v.name.starts_with(AUTOMOUNT_VOLUME_PREFIX);
            if automounted {
                removed.push(v.name.clone());
            }
            !automounted
        });
        if volumes.is_empty() {
            spec.volumes = None;
        }
    }
    for container in spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
    {
        if let Some(mounts) = container.volume_mounts.as_mut() {
            mounts.retain(|m| !m.name.starts_with(AUTOMOUNT_VOLUME_PREFIX));
            if mounts.is_empty() {
                container.volume_mounts = None;
            }
        }
    }
    removed
}

/// Keep an agent container from becoming the recorder's UID: the capture rules exempt UID
/// 1337 and nothing else, so a root process with CAP_SETUID (granted by default) could
/// switch to it and leave unrecorded. No setuid/setgid capabilities, and no privilege
/// escalation through setuid binaries.
fn confine(container: &mut Container) {
    let security = container
        .security_context
        .get_or_insert_with(Default::default);
    security.allow_privilege_escalation = Some(false);
    let capabilities = security.capabilities.get_or_insert_with(Default::default);
    let drop = capabilities.drop.get_or_insert_with(Vec::new);
    // As the runtime reads them: containerd takes `ALL` in any case and drops `CAP_` + the
    // upper-cased name otherwise, so `CAP_SETUID` names nothing (`CAP_CAP_SETUID`) and does
    // not count.
    let dropped = |cap: &str| {
        drop.iter()
            .any(|d| d.eq_ignore_ascii_case("ALL") || d.eq_ignore_ascii_case(cap))
    };
    let missing: Vec<String> = ["SETUID", "SETGID"]
        .into_iter()
        .filter(|cap| !dropped(cap))
        .map(String::from)
        .collect();
    drop.extend(missing);
}

/// Point every trust store at the session bundle, replacing whatever the container set.
fn trust_session_ca(container: &mut Container) {
    let env = container.env.get_or_insert_with(Vec::new);
    env.retain(|e| !CA_BUNDLE_ENV.contains(&e.name.as_str()));
    env.extend(CA_BUNDLE_ENV.iter().map(|name| value(name, CA_BUNDLE_PATH)));
    container
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: CA_VOLUME.into(),
            mount_path: CA_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
}

fn init_container(config: &Config) -> Container {
    Container {
        name: INIT_NAME.into(),
        image: Some(config.sidecar_image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        args: Some(vec!["init".into()]),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            // iptables takes its lock under /run.
            read_only_root_filesystem: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                // NET_ADMIN and NET_RAW install the rules; SETUID and SETGID let the check that
                // follows connect as another UID, which is what makes init fail closed.
                add: Some(
                    ["NET_ADMIN", "NET_RAW", "SETUID", "SETGID"]
                        .map(String::from)
                        .to_vec(),
                ),
            }),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        resources: Some(resources("10m", "16Mi", "64Mi")),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

fn sidecar_container(
    config: &Config,
    session: &AgentSession,
    expires_at: Option<Timestamp>,
) -> Container {
    let spec = &session.spec;
    let recording = &spec.recording;
    let mut env = vec![
        value("CASSETTE_SESSION", &session.name_any()),
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("POD_UID", "metadata.uid"),
        value("CASSETTE_SINK", &recording.sink),
        value(
            "CASSETTE_SESSION_UID",
            session.metadata.uid.as_deref().unwrap_or_default(),
        ),
        value(
            "CASSETTE_DURABILITY",
            match recording.durability {
                Durability::Batched => "batched",
                Durability::Strict => "strict",
            },
        ),
        value(
            "CASSETTE_ON_FAILURE",
            match recording.on_failure {
                OnFailure::Closed => "closed",
                OnFailure::Open => "open",
            },
        ),
        value(
            "CASSETTE_MAX_BODY_BYTES",
            &recording.max_body_bytes.to_string(),
        ),
        value("CASSETTE_CA_BUNDLE", CA_BUNDLE_PATH),
        value("CASSETTE_SPOOL", SPOOL_DIR),
        value("CASSETTE_SESSION_SPEC", &sidecar_spec(spec)),
        value("CASSETTE_LOG_FORMAT", "json"),
    ];
    if let Some(at) = expires_at {
        env.push(value("CASSETTE_EXPIRES_AT", &at.to_string()));
    }
    let passthrough: Vec<&str> = spec
        .policy
        .iter()
        .flat_map(|p| p.passthrough.iter().map(|h| h.0.as_str()))
        .collect();
    if !passthrough.is_empty() {
        env.push(value("CASSETTE_PASSTHROUGH", &passthrough.join(",")));
    }
    let mut mounts = vec![
        mount(CA_VOLUME, CA_DIR, false),
        mount(SPOOL_VOLUME, SPOOL_DIR, false),
        mount(TOKEN_VOLUME, TOKEN_DIR, true),
    ];
    if fingerprint_key(spec).is_some() {
        env.push(value(
            "CASSETTE_FINGERPRINT_KEY_FILE",
            &format!("{FINGERPRINT_DIR}/key"),
        ));
        mounts.push(mount(FINGERPRINT_VOLUME, FINGERPRINT_DIR, true));
    }
    for (name, v) in &config.sidecar_env {
        env.retain(|e| &e.name != name);
        env.push(value(name, v));
    }
    let readyz = |period, failures| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/readyz".into()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(config.sidecar_image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        args: Some(vec!["run".into()]),
        // A native sidecar: started before the agent's containers, stopped after them.
        restart_policy: Some("Always".into()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("cassette-admin".into()),
            container_port: i32::from(ADMIN_PORT),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // The agent starts only once the sidecar records: up to two minutes for the
        // metadata server and the spool.
        startup_probe: Some(readyz(1, 120)),
        readiness_probe: Some(readyz(5, 3)),
        liveness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::Int(i32::from(ADMIN_PORT)),
                ..Default::default()
            }),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(i64::from(SIDECAR_UID)),
            run_as_group: Some(i64::from(SIDECAR_UID)),
            run_as_non_root: Some(true),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        resources: Some(resources("100m", "64Mi", "512Mi")),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// What the sidecar needs of the spec: policy, masking, recording. Approvals change after the
/// pod starts and are read from the API; requestedBy is for people.
fn sidecar_spec(spec: &AgentSessionSpec) -> String {
    let mut spec = spec.clone();
    spec.approvals.clear();
    spec.requested_by = None;
    serde_json::to_string(&spec).expect("an AgentSession spec serializes")
}

fn fingerprint_key(spec: &AgentSessionSpec) -> Option<&cassette_api::SecretKeyRef> {
    spec.masking.as_ref()?.fingerprint_key.as_ref()
}

fn volumes(config: &Config, spec: &AgentSessionSpec) -> Vec<Volume> {
    let empty = |name: &str, limit: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(limit.into())),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut volumes = vec![
        empty(CA_VOLUME, "1Mi"),
        empty(SPOOL_VOLUME, "1Gi"),
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o444),
                sources: Some(vec![
                    VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            path: "token".into(),
                            expiration_seconds: Some(config.token_expiration_seconds),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: "kube-root-ca.crt".into(),
                            items: Some(vec![KeyToPath {
                                key: "ca.crt".into(),
                                path: "ca.crt".into(),
                                ..Default::default()
                            }]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        downward_api: Some(DownwardAPIProjection {
                            items: Some(vec![DownwardAPIVolumeFile {
                                path: "namespace".into(),
                                field_ref: Some(ObjectFieldSelector {
                                    field_path: "metadata.namespace".into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }]),
                        }),
                        ..Default::default()
                    },
                ]),
            }),
            ..Default::default()
        },
    ];
    if let Some(key) = fingerprint_key(spec) {
        volumes.push(Volume {
            name: FINGERPRINT_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(key.name.clone()),
                items: Some(vec![KeyToPath {
                    key: key.key.clone(),
                    path: "key".into(),
                    ..Default::default()
                }]),
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    volumes
}

fn value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

fn resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity(cpu.into())),
            ("memory".into(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".into(),
            Quantity(memory_limit.into()),
        )])),
        ..Default::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

/// The pod's name for messages; pods made by controllers have only a generateName yet.
fn pod_display_name(pod: &Pod) -> String {
    match (&pod.metadata.name, &pod.metadata.generate_name) {
        (Some(name), _) => format!("{name:?}"),
        (None, Some(prefix)) => format!("{:?}", format!("{prefix}…")),
        (None, None) => "(unnamed)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cassette_api::{Policy, Recording};
    use k8s_openapi::api::core::v1::PodSecurityContext;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    const NOW: &str = "2026-11-25T09:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn session(name: &str) -> AgentSession {
        let mut s = AgentSession::new(
            name,
            AgentSessionSpec {
                agent: None,
                requested_by: None,
                expires_at: Some(Time("2026-11-25T10:00:00Z".parse().unwrap())),
                max_duration: None,
                recording: Recording {
                    sink: "gs://recordings/agents".into(),
                    max_body_bytes: 4096,
                    retention: None,
                    durability: Durability::Strict,
                    on_failure: OnFailure::Open,
                },
                masking: None,
                policy: Some(Policy {
                    passthrough: vec![
                        cassette_api::HostPattern("pinned.example.com".into()),
                        cassette_api::HostPattern("*.bank.example".into()),
                    ],
                    ..Default::default()
                }),
                approvals: vec![],
            },
        );
        s.metadata.namespace = Some("agents".into());
        s
    }

    /// A pod as the API server hands it to the webhook: the ServiceAccount admission plugin
    /// has already mounted its token into every container.
    fn pod(labelled: bool) -> Pod {
        let labels = labelled.then(|| BTreeMap::from([(SESSION_LABEL.into(), "fix-ci".into())]));
        serde_json::from_value::<Pod>(json!({
            "metadata": {"name": "agent-1", "namespace": "agents"},
            "spec": {
                "serviceAccountName": "coding-agent",
                "containers": [{
                    "name": "agent",
                    "image": "agent:1",
                    "env": [{"name": "SSL_CERT_FILE", "value": "/etc/own.pem"}, {"name": "KEEP", "value": "me"}],
                    "volumeMounts": [{"name": "kube-api-access-x7k2p", "mountPath": TOKEN_DIR, "readOnly": true}]
                }],
                "initContainers": [{
                    "name": "setup",
                    "image": "agent:1",
                    "volumeMounts": [{"name": "kube-api-access-x7k2p", "mountPath": TOKEN_DIR, "readOnly": true}]
                }],
                "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}
                ]}}]
            }
        }))
        .map(|mut p| {
            p.metadata.labels = labels;
            p
        })
        .unwrap()
    }

    fn run(pod: &Pod, session: Option<&AgentSession>, enforced: bool) -> Outcome {
        inject(
            &Config {
                sidecar_image: "cassette-sidecar:test".into(),
                ..Config::default()
            },
            &Request {
                pod,
                namespace: "agents",
                enforced,
                session,
                now: now(),
            },
        )
    }

    fn injected(outcome: Outcome) -> Pod {
        match outcome {
            Outcome::Injected(pod) => *pod,
            other => panic!("expected an injected pod, got {other:?}"),
        }
    }

    fn env_of(container: &Container) -> BTreeMap<String, String> {
        container
            .env
            .iter()
            .flatten()
            .map(|e| {
                let v = e.value.clone().unwrap_or_else(|| {
                    e.value_from
                        .as_ref()
                        .and_then(|f| f.field_ref.as_ref())
                        .map(|f| format!("fieldRef:{}", f.field_path))
                        .unwrap_or_default()
                });
                (e.name.clone(), v)
            })
            .collect()
    }

    fn mounts_of(container: &Container) -> Vec<(String, String, bool)> {
        container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.name.clone(),
                    m.mount_path.clone(),
                    m.read_only.unwrap_or(false),
                )
            })
            .collect()
    }

    #[test]
    fn a_labelled_pod_gets_the_init_container_and_the_native_sidecar_first() {
        let s = session("fix-ci");
        let pod = injected(run(&pod(true), Some(&s), false));
        let spec = pod.spec.unwrap();
        let init = spec.init_containers.unwrap();
        let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [INIT_NAME, SIDECAR_NAME, "setup"]);

        let capture = &init[0];
        assert_eq!(capture.args, Some(vec!["init".to_string()]));
        let sc = capture.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_user, Some(0));
        assert_eq!(sc.run_as_non_root, Some(false));
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        assert_eq!(
            caps.add.as_deref().unwrap(),
            ["NET_ADMIN", "NET_RAW", "SETUID", "SETGID"]
        );

        let sidecar = &init[1];
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        assert_eq!(sidecar.args, Some(vec!["run".to_string()]));
        let probe = sidecar.startup_probe.as_ref().unwrap().http_get.as_ref();
        assert_eq!(probe.unwrap().path.as_deref(), Some("/readyz"));
        assert_eq!(probe.unwrap().port, IntOrString::Int(15090));
        let sc = sidecar.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_user, Some(1337));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
        assert!(sc.capabilities.as_ref().unwrap().add.is_none());
    }

    #[test]
    fn a_container_without_a_uid_is_warned_about() {
        // Read from the pod as written: the paths are the author's.
        let bare = pod(true);
        let warned = warnings(&bare);
        assert_eq!(
            warned,
            [
                "container \"setup\" sets no runAsUser: if its image runs as UID 1337, its \
                 traffic is not recorded; set spec.initContainers[0].securityContext.runAsUser",
                "container \"agent\" sets no runAsUser: if its image runs as UID 1337, its \
                 traffic is not recorded; set spec.containers[0].securityContext.runAsUser",
            ]
        );
        assert!(warned.iter().all(|w| w.len() <= 256), "{warned:?}");
        // A pod-level UID covers every container.
        let mut with_pod_uid = bare.clone();
        with_pod_uid.spec.as_mut().unwrap().security_context = Some(PodSecurityContext {
            run_as_user: Some(1000),
            ..Default::default()
        });
        assert_eq!(warnings(&with_pod_uid), Vec::<String>::new());
    }

    #[test]
    fn setuid_and_setgid_are_dropped_unless_the_runtime_would_drop_them_already() {
        let drops = |given: &[&str]| {
            let mut c = Container {
                name: "agent".into(),
                security_context: Some(SecurityContext {
                    capabilities: Some(Capabilities {
                        drop: Some(given.iter().map(|d| d.to_string()).collect()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            confine(&mut c);
            let sc = c.security_context.unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            sc.capabilities.unwrap().drop.unwrap()
        };
        assert_eq!(drops(&["ALL"]), ["ALL"]);
        assert_eq!(drops(&["setuid", "SETGID"]), ["setuid", "SETGID"]);
        assert_eq!(drops(&["all"]), ["all"]);
        // containerd reads these as CAP_CAP_SETUID and CAP_CAP_SETGID: they drop nothing.
        assert_eq!(
            drops(&["CAP_SETUID", "CAP_SETGID"]),
            ["CAP_SETUID", "CAP_SETGID", "SETUID", "SETGID"]
        );
    }

    #[test]
    fn the_sidecar_is_configured_from_the_session_and_the_downward_api() {
        let mut s = session("fix-ci");
        s.metadata.uid = Some("5e55-10n".into());
        let pod = injected(run(&pod(true), Some(&s), false));
        let init = pod.spec.unwrap().init_containers.unwrap();
        let env = env_of(&init[1]);
        let expect = [
            ("CASSETTE_SESSION", "fix-ci"),
            ("CASSETTE_SESSION_UID", "5e55-10n"),
            ("POD_NAME", "fieldRef:metadata.name"),
            ("POD_NAMESPACE", "fieldRef:metadata.namespace"),
            ("POD_UID", "fieldRef:metadata.uid"),
            ("CASSETTE_SINK", "gs://recordings/agents"),
            ("CASSETTE_DURABILITY", "strict"),
            ("CASSETTE_ON_FAILURE", "open"),
            ("CASSETTE_MAX_BODY_BYTES", "4096"),
            ("CASSETTE_PASSTHROUGH", "pinned.example.com,*.bank.example"),
            ("CASSETTE_CA_BUNDLE", CA_BUNDLE_PATH),
            ("CASSETTE_SPOOL", SPOOL_DIR),
            ("CASSETTE_EXPIRES_AT", "2026-11-25T10:00:00Z"),
        ];
        for (name, value) in expect {
            assert_eq!(env.get(name).map(String::as_str), Some(value), "{name}");
        }
        let spec: AgentSessionSpec =
            serde_json::from_str(&env["CASSETTE_SESSION_SPEC"]).expect("the spec is JSON");
        assert_eq!(spec.recording.sink, "gs://recordings/agents");
    }

    #[test]
    fn only_the_sidecar_holds_a_service_account_token() {
        let s = session("fix-ci");
        let pod = injected(run(&pod(true), Some(&s), false));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, [CA_VOLUME, SPOOL_VOLUME, TOKEN_VOLUME]);
        let init = spec.init_containers.as_ref().unwrap();
        for container in init.iter().chain(spec.containers.iter()) {
            let holds_token = mounts_of(container)
                .iter()
                .any(|(name, path, _)| name == TOKEN_VOLUME || path == TOKEN_DIR);
            assert_eq!(
                holds_token,
                container.name == SIDECAR_NAME,
                "{}",
                container.name
            );
        }
        let annotation = &pod.metadata.annotations.unwrap()[INJECTED_ANNOTATION];
        let record: serde_json::Value = serde_json::from_str(annotation).unwrap();
        assert_eq!(
            record["removedTokenVolumes"],
            json!(["kube-api-access-x7k2p"])
        );
        assert_eq!(record["agentContainers"], json!(["setup", "agent"]));
        assert_eq!(record["session"], json!("fix-ci"));
    }

    #[test]
    fn agent_containers_trust_the_bundle_read_only_and_nothing_else() {
        let s = session("fix-ci");
        let pod = injected(run(&pod(true), Some(&s), false));
        let spec = pod.spec.unwrap();
        let setup = &spec.init_containers.as_ref().unwrap()[2];
        for container in [&spec.containers[0], setup] {
            let env = env_of(container);
            for name in CA_BUNDLE_ENV {
                assert_eq!(env[name], CA_BUNDLE_PATH, "{name} in {}", container.name);
            }
            assert_eq!(
                mounts_of(container),
                [(CA_VOLUME.to_string(), CA_DIR.to_string(), true)]
            );
        }
        // The container's own variables survive; its own trust store is replaced.
        let agent = env_of(&spec.containers[0]);
        assert_eq!(agent["KEEP"], "me");
        assert_eq!(
            spec.containers[0]
                .env
                .iter()
                .flatten()
                .filter(|e| e.name == "SSL_CERT_FILE")
                .count(),
            1
        );
    }

    #[test]
    fn agent_containers_cannot_become_the_recorders_uid() {
        let s = session("fix-ci");
        let spec = injected(run(&pod(true), Some(&s), false)).spec.unwrap();
        let security = spec.containers[0].security_context.as_ref().unwrap();
        assert_eq!(security.allow_privilege_escalation, Some(false));
        let dropped = security
            .capabilities
            .as_ref()
            .unwrap()
            .drop
            .as_ref()
            .unwrap();
        assert!(dropped.contains(&"SETUID".to_string()) && dropped.contains(&"SETGID".to_string()));
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let s = session("fix-ci");
        let once = injected(run(&pod(true), Some(&s), false));
        assert_eq!(run(&once, Some(&s), false), Outcome::Unchanged);
    }

    #[test]
    fn a_forged_annotation_does_not_skip_injection() {
        let s = session("fix-ci");
        let mut forged = pod(true);
        forged.metadata.annotations =
            Some(BTreeMap::from([(INJECTED_ANNOTATION.into(), "{}".into())]));
        let pod = injected(run(&forged, Some(&s), false));
        let init = pod.spec.unwrap().init_containers.unwrap();
        assert_eq!(init[1].name, SIDECAR_NAME);
    }

    #[test]
    fn a_fake_sidecar_is_replaced_by_the_real_one() {
        let s = session("fix-ci");
        let mut fake = pod(true);
        fake.spec.as_mut().unwrap().init_containers = Some(vec![Container {
            name: SIDECAR_NAME.into(),
            image: Some("attacker/noop".into()),
            ..Default::default()
        }]);
        let pod = injected(run(&fake, Some(&s), false));
        let init = pod.spec.unwrap().init_containers.unwrap();
        assert_eq!(init.len(), 2);
        assert_eq!(init[1].image.as_deref(), Some("cassette-sidecar:test"));
    }

    #[test]
    fn a_fingerprint_key_is_mounted_into_the_sidecar_only() {
        let mut s = session("fix-ci");
        s.spec.masking = Some(cassette_api::Masking {
            fingerprint_key: Some(cassette_api::SecretKeyRef {
                name: "fp".into(),
                key: "hmac".into(),
            }),
            ..Default::default()
        });
        let pod = injected(run(&pod(true), Some(&s), false));
        let spec = pod.spec.unwrap();
        let sidecar = &spec.init_containers.as_ref().unwrap()[1];
        assert_eq!(
            env_of(sidecar)["CASSETTE_FINGERPRINT_KEY_FILE"],
            "/var/run/cassette/fingerprint/key"
        );
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == FINGERPRINT_VOLUME)
            .unwrap();
        assert_eq!(
            volume.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("fp")
        );
        assert!(
            !mounts_of(&spec.containers[0])
                .iter()
                .any(|(n, _, _)| n == FINGERPRINT_VOLUME)
        );
    }

    #[test]
    fn pods_without_the_label_pass_unless_the_namespace_enforces() {
        assert_eq!(run(&pod(false), None, false), Outcome::NotRecorded);
        let Outcome::Refused(message) = run(&pod(false), None, true) else {
            panic!("an unlabelled pod in an enforcing namespace was admitted");
        };
        assert!(message.contains("cassette.dev/enforce=true"), "{message}");
        assert!(
            message.contains("add the label cassette.dev/session="),
            "{message}"
        );
    }

    type Breaker = fn(&mut Pod, &mut Option<AgentSession>);

    #[test]
    fn every_way_around_the_recorder_is_refused_with_what_to_fix() {
        let cases: &[(&str, Breaker, &str)] = &[
            (
                "missing session",
                |_, s| *s = None,
                r#"AgentSession "fix-ci" does not exist in namespace "agents""#,
            ),
            (
                "expired session",
                |_, s| {
                    s.as_mut().unwrap().spec.expires_at =
                        Some(Time("2026-11-25T08:00:00Z".parse().unwrap()))
                },
                r#"AgentSession "fix-ci" expired at 2026-11-25T08:00:00Z; pods can no longer join it"#,
            ),
            (
                "expired by maxDuration",
                |_, s| {
                    let s = s.as_mut().unwrap();
                    s.spec.expires_at = None;
                    s.spec.max_duration = Some("30m".into());
                    s.metadata.creation_timestamp =
                        Some(Time("2026-11-25T08:00:00Z".parse().unwrap()));
                },
                "expired at 2026-11-25T08:30:00Z",
            ),
            (
                "hostNetwork",
                |p, _| p.spec.as_mut().unwrap().host_network = Some(true),
                "remove spec.hostNetwork",
            ),
            (
                "shareProcessNamespace",
                |p, _| p.spec.as_mut().unwrap().share_process_namespace = Some(true),
                "remove spec.shareProcessNamespace",
            ),
            (
                "privileged",
                |p, _| {
                    p.spec.as_mut().unwrap().containers[0].security_context =
                        Some(SecurityContext {
                            privileged: Some(true),
                            ..Default::default()
                        })
                },
                r#"container "agent" is privileged and could remove the capture rules: remove spec.containers[0].securityContext.privileged"#,
            ),
            (
                "NET_ADMIN in an init container",
                |p, _| {
                    p.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0].security_context =
                        Some(SecurityContext {
                            capabilities: Some(Capabilities {
                                add: Some(vec!["NET_ADMIN".into()]),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                },
                "remove it from spec.initContainers[0].securityContext.capabilities.add",
            ),
            (
                "SETUID added (root could become UID 1337)",
                |p, _| {
                    p.spec.as_mut().unwrap().containers[0].security_context =
                        Some(SecurityContext {
                            capabilities: Some(Capabilities {
                                add: Some(vec!["SETUID".into()]),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                },
                "adds the capability SETUID",
            ),
            (
                "allowPrivilegeEscalation",
                |p, _| {
                    p.spec.as_mut().unwrap().containers[0].security_context =
                        Some(SecurityContext {
                            allow_privilege_escalation: Some(true),
                            ..Default::default()
                        })
                },
                "remove spec.containers[0].securityContext.allowPrivilegeEscalation",
            ),
            (
                "CAP_NET_RAW",
                |p, _| {
                    p.spec.as_mut().unwrap().containers[0].security_context =
                        Some(SecurityContext {
                            capabilities: Some(Capabilities {
                                add: Some(vec!["CAP_NET_RAW".into()]),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                },
                "adds the capability CAP_NET_RAW",
            ),
            (
                "UID 1337 on the container",
                |p, _| {
                    p.spec.as_mut().unwrap().containers[0].security_context =
                        Some(SecurityContext {
                            run_as_user: Some(1337),
                            ..Default::default()
                        })
                },
                r#"container "agent" runs as UID 1337, the recorder's own UID, whose traffic is not captured: choose another UID in spec.containers[0].securityContext.runAsUser"#,
            ),
            (
                "UID 1337 on the pod",
                |p, _| {
                    p.spec.as_mut().unwrap().security_context = Some(PodSecurityContext {
                        run_as_user: Some(1337),
                        ..Default::default()
                    })
                },
                "choose another UID in spec.securityContext.runAsUser",
            ),
            (
                "a projected token of its own",
                |p, _| {
                    p.spec.as_mut().unwrap().volumes.as_mut().unwrap()[0].name =
                        "vault-token".into()
                },
                r#"volume "vault-token" projects a service-account token"#,
            ),
            (
                "a container named like ours",
                |p, _| p.spec.as_mut().unwrap().containers[0].name = INIT_NAME.into(),
                "is reserved for cassette",
            ),
        ];
        for (what, breaker, expected) in cases {
            let mut p = pod(true);
            let mut s = Some(session("fix-ci"));
            breaker(&mut p, &mut s);
            match run(&p, s.as_ref(), false) {
                Outcome::Refused(message) => assert!(
                    message.contains(expected),
                    "refusing {what}, the injector said:\n  {message}\nwhich does not contain {expected:?}"
                ),
                other => panic!("{what} was not refused: {other:?}"),
            }
        }
    }

    #[test]
    fn a_uid_1337_pod_default_is_fine_when_every_container_overrides_it() {
        let mut p = pod(true);
        let spec = p.spec.as_mut().unwrap();
        spec.security_context = Some(PodSecurityContext {
            run_as_user: Some(1337),
            ..Default::default()
        });
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            c.security_context = Some(SecurityContext {
                run_as_user: Some(1000),
                ..Default::default()
            });
        }
        let s = session("fix-ci");
        injected(run(&p, Some(&s), false));
    }
}
