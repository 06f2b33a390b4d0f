//! The session pod after admission. The injector sees a pod once, at CREATE; these decisions
//! keep what it built in place for the pod's life: an UPDATE may not change the injected
//! containers, any container's image or the session label and the injector's record; no
//! ephemeral container joins a session pod; and nobody execs or attaches into the recorder
//! (a shell there is UID 1337, whose traffic the capture rules exempt, beside the pod's only
//! service-account token) or port-forwards into the pod (the kubelet connects to the pod's
//! loopback, past the capture). Pure: the webhook passes the objects in.

use crate::inject::{INIT_NAME, SIDECAR_NAME};
use cassette_api::names::{INJECTED_ANNOTATION, SESSION_LABEL};
use k8s_openapi::api::core::v1::{Container, Pod};

/// Whether a pod records into a session: it carries the label or the injector's record.
pub fn is_session_pod(pod: &Pod) -> bool {
    label(pod, SESSION_LABEL).is_some() || annotation(pod, INJECTED_ANNOTATION).is_some()
}

/// An UPDATE of a pod from `old` to `new`; either may be the session pod.
pub fn update(old: &Pod, new: &Pod) -> Result<(), String> {
    if !is_session_pod(old) && !is_session_pod(new) {
        return Ok(());
    }
    let name = display_name(old);
    let (was, is) = (label(old, SESSION_LABEL), label(new, SESSION_LABEL));
    if was != is {
        return Err(match (was, is) {
            (Some(was), None) => format!(
                "pod {name} records into AgentSession {was:?}; its {SESSION_LABEL} label cannot be \
                 removed: delete the pod instead"
            ),
            (None, Some(is)) => format!(
                "pod {name} was not created in a session; the {SESSION_LABEL} label only records \
                 a pod when it is set at creation: create a new pod labelled \
                 {SESSION_LABEL}={is}"
            ),
            (Some(was), Some(is)) => format!(
                "pod {name} records into AgentSession {was:?}; it cannot move to {is:?}: create a \
                 new pod labelled {SESSION_LABEL}={is}"
            ),
            (None, None) => unreachable!("the labels differ"),
        });
    }
    if annotation(old, INJECTED_ANNOTATION) != annotation(new, INJECTED_ANNOTATION) {
        return Err(format!(
            "pod {name}: the {INJECTED_ANNOTATION} annotation is cassette's record of the \
             injection and cannot be changed: leave it as it is"
        ));
    }
    let (Some(old_spec), Some(new_spec)) = (old.spec.as_ref(), new.spec.as_ref()) else {
        return Ok(());
    };
    for injected in [INIT_NAME, SIDECAR_NAME] {
        let before = init_container(old_spec.init_containers.as_deref(), injected);
        let after = init_container(new_spec.init_containers.as_deref(), injected);
        if before != after {
            return Err(format!(
                "pod {name}: container {injected:?} is cassette's recorder and cannot be changed \
                 after the pod is created: leave spec.initContainers as they are"
            ));
        }
    }
    let images = |containers: &[Container]| -> Vec<(String, Option<String>)> {
        containers
            .iter()
            .map(|c| (c.name.clone(), c.image.clone()))
            .collect()
    };
    let changed = |field: &str, old: &[Container], new: &[Container]| {
        let (before, after) = (images(old), images(new));
        before
            .iter()
            .zip(&after)
            .find(|(b, a)| b != a)
            .map(|((container, _), _)| {
                format!(
                    "pod {name}: the image of container {container:?} ({field}) cannot change in \
                     a session pod, since the injector checked the pod as created: create a new \
                     pod with the new image"
                )
            })
            .or_else(|| {
                (before.len() != after.len()).then(|| {
                    format!(
                        "pod {name}: the containers in {field} cannot change in a session pod: \
                         create a new pod"
                    )
                })
            })
    };
    if let Some(refusal) = changed(
        "spec.containers",
        &old_spec.containers,
        &new_spec.containers,
    )
    .or_else(|| {
        changed(
            "spec.initContainers",
            old_spec.init_containers.as_deref().unwrap_or_default(),
            new_spec.init_containers.as_deref().unwrap_or_default(),
        )
    }) {
        return Err(refusal);
    }
    if security(old_spec) != security(new_spec) {
        return Err(format!(
            "pod {name}: the volumes, mounts and security contexts of a session pod cannot change \
             after it is created: create a new pod"
        ));
    }
    if old_spec.ephemeral_containers != new_spec.ephemeral_containers {
        return Err(ephemeral_refusal(&name));
    }
    Ok(())
}

/// An ephemeral container added to `pod` (the `pods/ephemeralcontainers` subresource).
pub fn ephemeral_containers(pod: &Pod) -> Result<(), String> {
    if is_session_pod(pod) {
        return Err(ephemeral_refusal(&display_name(pod)));
    }
    Ok(())
}

fn ephemeral_refusal(name: &str) -> String {
    format!(
        "pod {name} records into an AgentSession; an ephemeral container would run beside the \
         recorder without the injector's confinement, so none may be added: debug a copy of the \
         pod (kubectl debug --copy-to) or read the recording"
    )
}

/// A CONNECT into `pod`: `subresource` is `exec`, `attach` or `portforward`, and `container`
/// the container named in the request's options.
pub fn connect(pod: &Pod, subresource: &str, container: Option<&str>) -> Result<(), String> {
    if !is_session_pod(pod) {
        return Ok(());
    }
    let name = display_name(pod);
    match subresource {
        "portforward" => Err(format!(
            "pod {name} records into an AgentSession; a port-forward reaches the pod's loopback \
             past the capture, so it is refused: read the agent's traffic in the recording \
             (kubectl cassette show)"
        )),
        "exec" | "attach" => match container {
            Some(c @ (SIDECAR_NAME | INIT_NAME)) => Err(format!(
                "container {c:?} of pod {name} is cassette's recorder: a shell there runs as UID \
                 1337, whose traffic is not captured, beside the pod's service-account token, \
                 so {subresource} into it is refused: {subresource} into an agent container \
                 (-c <name>) instead"
            )),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// What a session pod's confinement rests on, compared in place: volumes, the pod's security
/// context, and each container's security context and mounts.
type Confinement<'a> = (
    &'a Option<Vec<k8s_openapi::api::core::v1::Volume>>,
    &'a Option<k8s_openapi::api::core::v1::PodSecurityContext>,
    Vec<(
        &'a Option<k8s_openapi::api::core::v1::SecurityContext>,
        &'a Option<Vec<k8s_openapi::api::core::v1::VolumeMount>>,
    )>,
);

fn security(spec: &k8s_openapi::api::core::v1::PodSpec) -> Confinement<'_> {
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| (&c.security_context, &c.volume_mounts))
        .collect();
    (&spec.volumes, &spec.security_context, containers)
}

fn init_container<'a>(containers: Option<&'a [Container]>, name: &str) -> Option<&'a Container> {
    containers.into_iter().flatten().find(|c| c.name == name)
}

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a String> {
    pod.metadata.labels.as_ref().and_then(|l| l.get(key))
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a String> {
    pod.metadata.annotations.as_ref().and_then(|a| a.get(key))
}

fn display_name(pod: &Pod) -> String {
    format!("{:?}", pod.metadata.name.as_deref().unwrap_or("(unnamed)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A session pod as the injector leaves it.
    fn session_pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "agent-1", "namespace": "agents",
                "labels": {SESSION_LABEL: "fix-ci", "team": "a"},
                "annotations": {INJECTED_ANNOTATION: "{\"session\":\"fix-ci\"}"}
            },
            "spec": {
                "initContainers": [
                    {"name": INIT_NAME, "image": "cassette-sidecar:1", "args": ["init"]},
                    {"name": SIDECAR_NAME, "image": "cassette-sidecar:1", "args": ["run"], "restartPolicy": "Always"}
                ],
                "containers": [{"name": "agent", "image": "agent:1",
                    "securityContext": {"capabilities": {"drop": ["ALL"]}}}]
            }
        }))
        .unwrap()
    }

    fn refused(result: Result<(), String>, expected: &str) {
        match result {
            Err(message) => assert!(message.contains(expected), "{message}\nlacks {expected:?}"),
            Ok(()) => panic!("allowed; expected a refusal containing {expected:?}"),
        }
    }

    #[test]
    fn an_update_keeps_what_the_injector_built() {
        let old = session_pod();
        // What controllers and people do to pods stays allowed.
        let mut relabelled = old.clone();
        relabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "b".into());
        relabelled.metadata.finalizers = Some(vec!["example.com/hold".into()]);
        update(&old, &relabelled).unwrap();

        let change = |f: fn(&mut Pod)| {
            let mut new = old.clone();
            f(&mut new);
            update(&old, &new)
        };
        refused(
            change(|p| {
                p.metadata.labels.as_mut().unwrap().remove(SESSION_LABEL);
            }),
            "its cassette.dev/session label cannot be removed: delete the pod instead",
        );
        refused(
            change(|p| {
                p.metadata
                    .labels
                    .as_mut()
                    .unwrap()
                    .insert(SESSION_LABEL.into(), "other".into());
            }),
            "it cannot move to \"other\"",
        );
        refused(
            change(|p| {
                p.metadata.annotations = None;
            }),
            "annotation is cassette's record of the injection",
        );
        refused(
            change(|p| {
                p.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[1].image =
                    Some("attacker/sidecar:1".into());
            }),
            "container \"cassette-sidecar\" is cassette's recorder and cannot be changed",
        );
        refused(
            change(|p| {
                p.spec.as_mut().unwrap().containers[0].image = Some("agent:2".into());
            }),
            "the image of container \"agent\" (spec.containers) cannot change",
        );
        refused(
            change(|p| {
                p.spec.as_mut().unwrap().containers[0].security_context = None;
            }),
            "security contexts of a session pod cannot change",
        );
        refused(
            change(|p| {
                p.spec.as_mut().unwrap().ephemeral_containers = Some(vec![
                    serde_json::from_value(json!({"name": "debug", "image": "busybox"})).unwrap(),
                ]);
            }),
            "so none may be added",
        );
    }

    #[test]
    fn a_pod_outside_sessions_is_not_guarded_but_cannot_join_one_late() {
        let mut plain = session_pod();
        plain.metadata.labels = None;
        plain.metadata.annotations = None;
        let mut new = plain.clone();
        new.spec.as_mut().unwrap().containers[0].image = Some("agent:2".into());
        update(&plain, &new).unwrap();
        ephemeral_containers(&plain).unwrap();
        connect(&plain, "portforward", None).unwrap();
        connect(&plain, "exec", Some(SIDECAR_NAME)).unwrap();

        let mut labelled = plain.clone();
        labelled.metadata.labels = Some([(SESSION_LABEL.to_string(), "fix-ci".to_string())].into());
        refused(
            update(&plain, &labelled),
            "the cassette.dev/session label only records a pod when it is set at creation",
        );
    }

    #[test]
    fn nobody_reaches_into_the_recorder() {
        let pod = session_pod();
        refused(
            connect(&pod, "exec", Some(SIDECAR_NAME)),
            "a shell there runs as UID 1337",
        );
        refused(
            connect(&pod, "attach", Some(INIT_NAME)),
            "attach into it is refused",
        );
        refused(
            connect(&pod, "portforward", None),
            "a port-forward reaches the pod's loopback past the capture",
        );
        connect(&pod, "exec", Some("agent")).unwrap();
        connect(&pod, "exec", None).unwrap();
        refused(ephemeral_containers(&pod), "none may be added");
    }
}
