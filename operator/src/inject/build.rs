//! What injection adds: the `cassette-init` container (capture rules), the `cassette-sidecar`
//! native sidecar (the recorder, the pod's only service-account token), their volumes, and
//! the agent containers' trust in the session CA and their confinement.

use super::CREDENTIAL_VOLUME_PREFIX;
use super::{
    CA_BUNDLE_PATH, CA_DIR, CA_VOLUME, Config, FINGERPRINT_DIR, FINGERPRINT_VOLUME, INIT_NAME,
    SIDECAR_NAME, SPOOL_DIR, SPOOL_VOLUME, TOKEN_DIR, TOKEN_VOLUME,
};
use cassette_api::names::{
    ADMIN_PORT, CA_BUNDLE_ENV, CREDENTIALS_DIR, CREDENTIALS_ENV, SIDECAR_UID,
};
use cassette_api::{
    AgentSession, AgentSessionSpec, BrokeredCredential, Credential, Durability, OnFailure,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, DownwardAPIProjection,
    DownwardAPIVolumeFile, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    ObjectFieldSelector, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Confine an agent container to the capability allowlist: `drop: [ALL]` and the allowlist
/// added back (less what the container dropped itself; only what it added, if it dropped
/// ALL). Without NET_RAW no raw or packet socket writes below the capture rules; without
/// SETUID/SETGID a root process cannot become the recorder's UID 1337, the one the rules
/// exempt; no privilege escalation through setuid binaries. [`super::refuse::check`] has
/// already refused a container that adds anything outside the allowlist.
pub(super) fn confine(container: &mut Container, allowlist: &[String]) {
    let security = container
        .security_context
        .get_or_insert_with(Default::default);
    security.allow_privilege_escalation = Some(false);
    let own = security.capabilities.take().unwrap_or_default();
    // As the runtime reads them: containerd takes `ALL` in any case and `CAP_` + the
    // upper-cased name otherwise.
    let names = |list: &Option<Vec<String>>| -> Vec<String> {
        list.iter()
            .flatten()
            .map(|c| c.to_ascii_uppercase())
            .collect()
    };
    let dropped = names(&own.drop);
    let added = names(&own.add);
    let granted: Vec<String> = if dropped.iter().any(|d| d == "ALL") {
        allowlist
            .iter()
            .filter(|c| added.contains(c))
            .cloned()
            .collect()
    } else {
        allowlist
            .iter()
            .filter(|c| !dropped.contains(c) || added.contains(c))
            .cloned()
            .collect()
    };
    security.capabilities = Some(Capabilities {
        drop: Some(vec!["ALL".into()]),
        add: (!granted.is_empty()).then_some(granted),
    });
}

/// Point every trust store at the session bundle, replacing whatever the container set.
pub(super) fn trust_session_ca(container: &mut Container) {
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

/// Give the container each credential's placeholder in the entry's variable, replacing
/// whatever the pod set there (a value, or a `valueFrom` of any kind).
pub(super) fn give_placeholders(
    container: &mut Container,
    entries: &[Credential],
    brokered: &[BrokeredCredential],
) {
    if entries.is_empty() {
        return;
    }
    let env = container.env.get_or_insert_with(Vec::new);
    for (entry, credential) in entries.iter().zip(brokered) {
        env.retain(|e| e.name != entry.env);
        env.push(value(&entry.env, &credential.placeholder));
    }
}

pub(super) fn init_container(config: &Config) -> Container {
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

pub(super) fn sidecar_container(
    config: &Config,
    session: &AgentSession,
    expires_at: Option<Timestamp>,
    grace_seconds: i64,
    credentials: &[BrokeredCredential],
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
        // The time from SIGTERM to drain, seal and ship before the kubelet kills it.
        value("CASSETTE_GRACE_SECONDS", &grace_seconds.to_string()),
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
    // Every session has a fingerprint key: the one it names, or the one the operator makes.
    env.push(value(
        "CASSETTE_FINGERPRINT_KEY_FILE",
        &format!("{FINGERPRINT_DIR}/key"),
    ));
    mounts.push(mount(FINGERPRINT_VOLUME, FINGERPRINT_DIR, true));
    if !credentials.is_empty() {
        env.push(value(
            CREDENTIALS_ENV,
            &serde_json::to_string(credentials).expect("the credential table serializes"),
        ));
        // A whole-directory Secret mount (no subPath): the kubelet rewrites it on rotation.
        for c in credentials {
            mounts.push(mount(
                &format!("{CREDENTIAL_VOLUME_PREFIX}{}", c.name),
                &format!("{CREDENTIALS_DIR}/{}", c.name),
                true,
            ));
        }
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
pub(super) fn sidecar_spec(spec: &AgentSessionSpec) -> String {
    let mut spec = spec.clone();
    spec.approvals.clear();
    spec.requested_by = None;
    serde_json::to_string(&spec).expect("an AgentSession spec serializes")
}

pub(super) fn volumes(config: &Config, session: &AgentSession) -> Vec<Volume> {
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
    for c in &session.spec.credentials {
        volumes.push(Volume {
            name: format!("{CREDENTIAL_VOLUME_PREFIX}{}", c.name),
            secret: Some(SecretVolumeSource {
                secret_name: Some(c.secret_ref.name.clone()),
                items: Some(vec![KeyToPath {
                    key: c.secret_ref.key.clone(),
                    path: "value".into(),
                    ..Default::default()
                }]),
                // Readable by the sidecar's UID; no agent container mounts it.
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    {
        let key = session.fingerprint_key();
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

pub(super) fn value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

pub(super) fn field(name: &str, path: &str) -> EnvVar {
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

pub(super) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

pub(super) fn resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
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

pub(super) fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}
