//! The agent's ways around the recorder, looked for before anything is added: a pod that
//! could change, bypass or reach into the capture is refused with the field to change. Also
//! the warnings for what the webhook cannot see (an image's user).

use super::{AUTOMOUNT_VOLUME_PREFIX, CA_DIR, INIT_NAME, SIDECAR_NAME};
use cassette_api::names::SIDECAR_UID;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use std::collections::BTreeSet;

/// The agent's ways around the recorder, refused before anything is added. `allowlist` is
/// the capabilities agent containers may hold; `token_secrets` the Secrets the pod names that
/// are service-account tokens (the webhook looked their types up).
pub(super) fn check(
    spec: &PodSpec,
    allowlist: &[String],
    token_secrets: &BTreeSet<String>,
) -> Result<(), String> {
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
    if spec.dns_policy.as_deref() == Some("None") {
        return Err(
            "it sets dnsPolicy: None to name its own resolvers; a session pod's DNS goes to the \
             cluster's resolver through the recorder: remove spec.dnsPolicy"
                .into(),
        );
    }
    if spec
        .dns_config
        .as_ref()
        .is_some_and(|c| c.nameservers.as_ref().is_some_and(|n| !n.is_empty()))
    {
        return Err(
            "it names its own resolvers in spec.dnsConfig.nameservers; a session pod's DNS goes \
             to the cluster's resolver through the recorder: remove spec.dnsConfig.nameservers"
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
            let upper = capability.to_ascii_uppercase();
            let bare = upper.strip_prefix("CAP_");
            if !allowlist.iter().any(|a| *a == bare.unwrap_or(&upper)) {
                let allowed = if allowlist.is_empty() {
                    "none".to_string()
                } else {
                    allowlist.join(", ")
                };
                return Err(format!(
                    "container {name:?} adds the capability {capability}, which agent containers may \
                     not hold (they may hold {allowed}; the chart's agentContainers.capabilities \
                     sets them): remove it from {field}.securityContext.capabilities.add"
                ));
            }
            if let Some(bare) = bare {
                return Err(format!(
                    "container {name:?} adds the capability {capability:?}, which the runtime reads \
                     as CAP_{upper}: write it as {bare:?} in {field}.securityContext.capabilities.add"
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
        if let Some(host) = &volume.host_path {
            return Err(format!(
                "volume {:?} mounts the node's {:?} (hostPath), through which the agent could reach \
                 the node's runtime, the kubelet and other pods' files: remove the volume",
                volume.name, host.path
            ));
        }
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
    for (field, secret) in secret_references(spec) {
        if token_secrets.contains(&secret) {
            return Err(format!(
                "{field} names Secret {secret:?}, a service-account token (type \
                 kubernetes.io/service-account-token); the recorder holds the pod's only token \
                 and the agent gets none: remove the reference"
            ));
        }
    }
    Ok(())
}

/// Every Secret the pod's volumes and agent containers name, with the field that names it.
pub(super) fn secret_references(spec: &PodSpec) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (i, volume) in spec.volumes.iter().flatten().enumerate() {
        if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            found.push((format!("spec.volumes[{i}].secret.secretName"), name));
        }
        let sources = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
        for (j, source) in sources.into_iter().flatten().enumerate() {
            if let Some(secret) = &source.secret {
                found.push((
                    format!("spec.volumes[{i}].projected.sources[{j}].secret.name"),
                    secret.name.clone(),
                ));
            }
        }
    }
    for (field, container) in containers_with_fields(spec) {
        for (i, env) in container.env.iter().flatten().enumerate() {
            let key = env
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref());
            if let Some(key) = key {
                found.push((
                    format!("{field}.env[{i}].valueFrom.secretKeyRef.name"),
                    key.name.clone(),
                ));
            }
        }
        for (i, from) in container.env_from.iter().flatten().enumerate() {
            if let Some(secret) = &from.secret_ref {
                found.push((
                    format!("{field}.envFrom[{i}].secretRef.name"),
                    secret.name.clone(),
                ));
            }
        }
    }
    found
}

/// Every container the agent controls, with the field path an admin would edit.
pub(super) fn containers_with_fields(spec: &PodSpec) -> impl Iterator<Item = (String, &Container)> {
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

pub(super) fn agent_containers(spec: &PodSpec) -> Vec<String> {
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
