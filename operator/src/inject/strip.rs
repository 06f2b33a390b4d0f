//! What an earlier injection added, taken out again (so injection is recomputed from
//! scratch, and a forged annotation or a borrowed name buys nothing), and the token the
//! ServiceAccount admission plugin mounted into the agent's containers.

use super::{
    AUTOMOUNT_VOLUME_PREFIX, CA_BUNDLE_PATH, CA_VOLUME, CREDENTIAL_VOLUME_PREFIX,
    FINGERPRINT_VOLUME, INIT_NAME, SIDECAR_NAME, SPOOL_VOLUME, TOKEN_VOLUME,
};
use cassette_api::names::{CA_BUNDLE_ENV, INJECTED_ANNOTATION};
use k8s_openapi::api::core::v1::{Pod, PodSpec};

/// The pod as it was before any injection: our containers, volumes, mounts and variables out.
/// A forged annotation or a container that merely borrows our names is replaced, not trusted.
pub(super) fn strip(spec: &PodSpec) -> PodSpec {
    let ours = [CA_VOLUME, SPOOL_VOLUME, TOKEN_VOLUME, FINGERPRINT_VOLUME];
    let mut spec = spec.clone();
    if let Some(init) = spec.init_containers.as_mut() {
        init.retain(|c| c.name != INIT_NAME && c.name != SIDECAR_NAME);
    }
    if spec.init_containers.as_ref().is_some_and(Vec::is_empty) {
        spec.init_containers = None;
    }
    if let Some(volumes) = spec.volumes.as_mut() {
        volumes.retain(|v| {
            !ours.contains(&v.name.as_str()) && !v.name.starts_with(CREDENTIAL_VOLUME_PREFIX)
        });
    }
    for container in spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
    {
        if let Some(mounts) = container.volume_mounts.as_mut() {
            mounts.retain(|m| {
                !ours.contains(&m.name.as_str()) && !m.name.starts_with(CREDENTIAL_VOLUME_PREFIX)
            });
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

/// The token volumes an earlier pass recorded as removed.
pub(super) fn earlier_removals(pod: &Pod) -> Vec<String> {
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
pub(super) fn remove_automounted_token(spec: &mut PodSpec) -> Vec<String> {
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
