//! The injection decision, case by case.

use super::*;
use cassette_api::names::CA_BUNDLE_ENV;
use cassette_api::{AgentSessionSpec, Durability, OnFailure, Policy, Recording};
use k8s_openapi::api::core::v1::{Capabilities, Container, PodSecurityContext, SecurityContext};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
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
            credentials: vec![],
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
    run_seeded(pod, session, enforced, [7; 32])
}

fn run_seeded(
    pod: &Pod,
    session: Option<&AgentSession>,
    enforced: bool,
    seed: [u8; 32],
) -> Outcome {
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
            token_secrets: &BTreeSet::from(["legacy-token".to_string()]),
            now: now(),
            seed,
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
fn agent_containers_drop_all_and_keep_only_the_allowlist() {
    let allowlist: Vec<String> = DEFAULT_AGENT_CAPABILITIES
        .iter()
        .map(|c| c.to_string())
        .collect();
    let confined = |drop: &[&str], add: &[&str]| {
        let list = |l: &[&str]| (!l.is_empty()).then(|| l.iter().map(|c| c.to_string()).collect());
        let mut c = Container {
            name: "agent".into(),
            security_context: Some(SecurityContext {
                capabilities: Some(Capabilities {
                    drop: list(drop),
                    add: list(add),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        confine(&mut c, &allowlist);
        let sc = c.security_context.unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let caps = sc.capabilities.unwrap();
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        caps.add.unwrap_or_default()
    };
    // Nothing asked: the allowlist, and never NET_RAW, SETUID or SETGID.
    let granted = confined(&[], &[]);
    assert_eq!(granted, allowlist);
    for never in ["NET_RAW", "SETUID", "SETGID", "MKNOD"] {
        assert!(!granted.iter().any(|c| c == never), "{never} granted");
    }
    // What the container dropped stays dropped; dropping ALL keeps only what it added back.
    assert!(
        !confined(&["chown", "KILL"], &[])
            .iter()
            .any(|c| c == "CHOWN" || c == "KILL")
    );
    assert_eq!(
        confined(&["all"], &["net_bind_service"]),
        ["NET_BIND_SERVICE"]
    );
    assert_eq!(confined(&["ALL"], &[]), Vec::<String>::new());
    // Dropping a capability and adding it back keeps it, as the runtime does.
    assert!(confined(&["KILL"], &["KILL"]).iter().any(|c| c == "KILL"));
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
    assert_eq!(
        volumes,
        [CA_VOLUME, SPOOL_VOLUME, TOKEN_VOLUME, FINGERPRINT_VOLUME]
    );
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
    let capabilities = security.capabilities.as_ref().unwrap();
    assert_eq!(capabilities.drop, Some(vec!["ALL".to_string()]));
    let added = capabilities.add.as_ref().unwrap();
    assert!(
        !added
            .iter()
            .any(|c| ["SETUID", "SETGID", "NET_RAW"].contains(&c.as_str()))
    );
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
    forged.metadata.annotations = Some(BTreeMap::from([(INJECTED_ANNOTATION.into(), "{}".into())]));
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
fn a_session_naming_no_key_gets_the_one_the_operator_makes() {
    let s = session("fix-ci");
    let spec = injected(run(&pod(true), Some(&s), false)).spec.unwrap();
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == FINGERPRINT_VOLUME)
        .unwrap();
    let secret = volume.secret.as_ref().unwrap();
    assert_eq!(
        secret.secret_name.as_deref(),
        Some("cassette-fingerprint-fix-ci")
    );
    assert_eq!(secret.items.as_ref().unwrap()[0].key, "key");
    // The agent may not name it.
    let mut reaching = pod(true);
    reaching
        .spec
        .as_mut()
        .unwrap()
        .volumes
        .as_mut()
        .unwrap()
        .push(
            serde_json::from_value(
                json!({"name": "k", "secret": {"secretName": "cassette-fingerprint-fix-ci"}}),
            )
            .unwrap(),
        );
    let Outcome::Refused(message) = run(&reaching, Some(&s), false) else {
        panic!("an agent mounting the fingerprint key was admitted");
    };
    assert!(
        message.contains(
            "spec.volumes[1].secret.secretName names Secret \"cassette-fingerprint-fix-ci\", the \
             session's fingerprint key, which auditors hold and agents do not"
        ),
        "{message}"
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
                s.metadata.creation_timestamp = Some(Time("2026-11-25T08:00:00Z".parse().unwrap()));
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
                p.spec.as_mut().unwrap().containers[0].security_context = Some(SecurityContext {
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
                p.spec.as_mut().unwrap().containers[0].security_context = Some(SecurityContext {
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
                p.spec.as_mut().unwrap().containers[0].security_context = Some(SecurityContext {
                    allow_privilege_escalation: Some(true),
                    ..Default::default()
                })
            },
            "remove spec.containers[0].securityContext.allowPrivilegeEscalation",
        ),
        (
            "CAP_NET_RAW",
            |p, _| {
                p.spec.as_mut().unwrap().containers[0].security_context = Some(SecurityContext {
                    capabilities: Some(Capabilities {
                        add: Some(vec!["CAP_NET_RAW".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            },
            "adds the capability CAP_NET_RAW, which agent containers may not hold",
        ),
        (
            "SYS_PTRACE (outside the allowlist)",
            |p, _| {
                p.spec.as_mut().unwrap().containers[0].security_context = Some(SecurityContext {
                    capabilities: Some(Capabilities {
                        add: Some(vec!["SYS_PTRACE".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            },
            "adds the capability SYS_PTRACE, which agent containers may not hold (they may hold AUDIT_WRITE, CHOWN",
        ),
        (
            "SYS_MODULE",
            |p, _| {
                p.spec.as_mut().unwrap().containers[0].security_context = Some(SecurityContext {
                    capabilities: Some(Capabilities {
                        add: Some(vec!["sys_module".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            },
            "adds the capability sys_module, which agent containers may not hold",
        ),
        (
            "DAC_READ_SEARCH",
            |p, _| {
                p.spec.as_mut().unwrap().containers[0].security_context = Some(SecurityContext {
                    capabilities: Some(Capabilities {
                        add: Some(vec!["DAC_READ_SEARCH".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            },
            "adds the capability DAC_READ_SEARCH",
        ),
        (
            "BPF",
            |p, _| {
                p.spec.as_mut().unwrap().containers[0].security_context = Some(SecurityContext {
                    capabilities: Some(Capabilities {
                        add: Some(vec!["BPF".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            },
            "adds the capability BPF",
        ),
        (
            "NET_RAW",
            |p, _| {
                p.spec.as_mut().unwrap().containers[0].security_context = Some(SecurityContext {
                    capabilities: Some(Capabilities {
                        add: Some(vec!["NET_RAW".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            },
            "adds the capability NET_RAW, which agent containers may not hold",
        ),
        (
            "an allowed capability spelled with CAP_",
            |p, _| {
                p.spec.as_mut().unwrap().containers[0].security_context = Some(SecurityContext {
                    capabilities: Some(Capabilities {
                        add: Some(vec!["CAP_CHOWN".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            },
            r#"adds the capability "CAP_CHOWN", which the runtime reads as CAP_CAP_CHOWN: write it as "CHOWN" in spec.containers[0].securityContext.capabilities.add"#,
        ),
        (
            "dnsPolicy: None",
            |p, _| p.spec.as_mut().unwrap().dns_policy = Some("None".into()),
            "it sets dnsPolicy: None to name its own resolvers; a session pod's DNS goes to the cluster's resolver through the recorder: remove spec.dnsPolicy",
        ),
        (
            "resolvers of its own in dnsConfig",
            |p, _| {
                p.spec.as_mut().unwrap().dns_config =
                    Some(k8s_openapi::api::core::v1::PodDNSConfig {
                        nameservers: Some(vec!["203.0.113.53".into()]),
                        ..Default::default()
                    })
            },
            "remove spec.dnsConfig.nameservers",
        ),
        (
            "a hostPath volume",
            |p, _| {
                p.spec.as_mut().unwrap().volumes.as_mut().unwrap().push(
                    serde_json::from_value(
                        json!({"name": "runtime", "hostPath": {"path": "/run/containerd"}}),
                    )
                    .unwrap(),
                )
            },
            r#"volume "runtime" mounts the node's "/run/containerd" (hostPath)"#,
        ),
        (
            "a legacy token Secret as a volume",
            |p, _| {
                p.spec.as_mut().unwrap().volumes.as_mut().unwrap().push(
                    serde_json::from_value(
                        json!({"name": "t", "secret": {"secretName": "legacy-token"}}),
                    )
                    .unwrap(),
                )
            },
            r#"spec.volumes[1].secret.secretName names Secret "legacy-token", a service-account token"#,
        ),
        (
            "a legacy token Secret in the environment",
            |p, _| {
                p.spec.as_mut().unwrap().containers[0].env.as_mut().unwrap().push(
                    serde_json::from_value(json!({"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "legacy-token", "key": "token"}}}))
                        .unwrap(),
                )
            },
            r#"spec.containers[0].env[2].valueFrom.secretKeyRef.name names Secret "legacy-token""#,
        ),
        (
            "a legacy token Secret through envFrom",
            |p, _| {
                p.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0].env_from = Some(vec![
                    serde_json::from_value(json!({"secretRef": {"name": "legacy-token"}})).unwrap(),
                ])
            },
            "spec.initContainers[0].envFrom[0].secretRef.name names Secret",
        ),
        (
            "UID 1337 on the container",
            |p, _| {
                p.spec.as_mut().unwrap().containers[0].security_context = Some(SecurityContext {
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
                p.spec.as_mut().unwrap().volumes.as_mut().unwrap()[0].name = "vault-token".into()
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

fn with_credentials() -> AgentSession {
    let mut s = session("fix-ci");
    let entry = |name: &str, host: &str, presentation, env: &str| cassette_api::Credential {
        name: name.into(),
        hosts: vec![host.into()],
        secret_ref: cassette_api::SecretKeyRef {
            name: "code-host".into(),
            key: "token".into(),
        },
        presentation,
        header: None,
        env: env.into(),
    };
    s.spec.credentials = vec![
        entry(
            "github-api",
            "api.github.com",
            cassette_api::Presentation::Bearer,
            "GITHUB_TOKEN",
        ),
        entry(
            "github-git",
            "github.com",
            cassette_api::Presentation::Basic,
            "GIT_PASSWORD",
        ),
    ];
    s
}

fn sidecar_of(pod: &Pod) -> Container {
    pod.spec
        .as_ref()
        .unwrap()
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == SIDECAR_NAME)
        .unwrap()
        .clone()
}

fn table_of(pod: &Pod) -> Vec<BrokeredCredential> {
    let env = env_of(&sidecar_of(pod));
    serde_json::from_str(&env[cassette_api::names::CREDENTIALS_ENV]).unwrap()
}

#[test]
fn brokered_credentials_reach_the_sidecar_and_the_agent_holds_placeholders() {
    let session = with_credentials();
    let mut submitted = pod(true);
    submitted.spec.as_mut().unwrap().containers[0]
        .env
        .as_mut()
        .unwrap()
        .push(build::value("GITHUB_TOKEN", "ghp_the_real_one"));
    let out = injected(run(&submitted, Some(&session), false));
    let table = table_of(&out);
    assert_eq!(
        table.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["github-api", "github-git"]
    );
    assert_eq!(table[0].hosts, ["api.github.com"]);
    assert_eq!(table[0].presentation, cassette_api::Presentation::Bearer);
    assert_eq!(
        table[0].file,
        "/var/run/cassette/credentials/github-api/value"
    );
    assert!(cassette_rules::credential::is_placeholder_for(
        "github-api",
        &table[0].placeholder
    ));
    assert_ne!(
        table[0].placeholder[27..],
        table[1].placeholder[27..],
        "each entry has its own randomness"
    );

    let spec = out.spec.as_ref().unwrap();
    for container in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter(|c| c.name != SIDECAR_NAME && c.name != INIT_NAME)
    {
        let env = env_of(container);
        assert_eq!(
            env["GITHUB_TOKEN"], table[0].placeholder,
            "{}",
            container.name
        );
        assert_eq!(
            env["GIT_PASSWORD"], table[1].placeholder,
            "{}",
            container.name
        );
        assert!(
            mounts_of(container)
                .iter()
                .all(|(name, _, _)| !name.starts_with(CREDENTIAL_VOLUME_PREFIX)),
            "{} mounts a credential",
            container.name
        );
    }
    let sidecar_mounts = mounts_of(&sidecar_of(&out));
    for name in ["github-api", "github-git"] {
        assert!(sidecar_mounts.contains(&(
            format!("{CREDENTIAL_VOLUME_PREFIX}{name}"),
            format!("/var/run/cassette/credentials/{name}"),
            true
        )));
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == format!("{CREDENTIAL_VOLUME_PREFIX}{name}"))
            .unwrap();
        let secret = volume.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("code-host"));
        let items = secret.items.as_ref().unwrap();
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("token", "value")
        );
        assert_eq!(items.len(), 1);
    }
    let text = serde_json::to_string(&out).unwrap();
    assert!(!text.contains("ghp_the_real_one"));
}

#[test]
fn placeholders_are_random_per_pod_and_kept_when_the_webhook_runs_again() {
    let session = with_credentials();
    let first = injected(run_seeded(&pod(true), Some(&session), false, [1; 32]));
    let other = injected(run_seeded(&pod(true), Some(&session), false, [2; 32]));
    assert_ne!(
        table_of(&first)[0].placeholder,
        table_of(&other)[0].placeholder
    );
    assert_eq!(
        run_seeded(&first, Some(&session), false, [3; 32]),
        Outcome::Unchanged
    );
}

#[test]
fn an_entrys_own_variable_is_replaced_even_when_it_named_the_secret() {
    let session = with_credentials();
    let mut submitted = pod(true);
    let secret_env: k8s_openapi::api::core::v1::EnvVar = serde_json::from_value(json!({
        "name": "GITHUB_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "code-host", "key": "token"}}
    }))
    .unwrap();
    submitted.spec.as_mut().unwrap().containers[0]
        .env
        .as_mut()
        .unwrap()
        .push(secret_env);
    let out = injected(run(&submitted, Some(&session), false));
    let agent = &out.spec.as_ref().unwrap().containers[0];
    let token = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "GITHUB_TOKEN")
        .unwrap();
    assert_eq!(token.value_from, None);
    assert_eq!(
        token.value.as_deref(),
        Some(table_of(&out)[0].placeholder.as_str())
    );
}

#[test]
fn a_pod_reaching_for_a_credential_secret_is_refused() {
    let session = with_credentials();
    let cases = [
        (
            json!({"volumes": [{"name": "mine", "secret": {"secretName": "code-host"}}]}),
            "spec.volumes[1].secret.secretName",
        ),
        (
            json!({"volumes": [{"name": "mine", "projected": {"sources": [
                {"secret": {"name": "code-host"}}
            ]}}]}),
            "spec.volumes[1].projected.sources[0].secret.name",
        ),
        (
            json!({"envFrom": [{"secretRef": {"name": "code-host"}}]}),
            "spec.containers[0].envFrom[0].secretRef.name",
        ),
        (
            json!({"env": [{"name": "OTHER", "valueFrom": {"secretKeyRef": {"name": "code-host", "key": "token"}}}]}),
            "spec.containers[0].env[2].valueFrom.secretKeyRef.name",
        ),
    ];
    for (change, field) in cases {
        let mut value = serde_json::to_value(pod(true)).unwrap();
        if let Some(volumes) = change.get("volumes") {
            value["spec"]["volumes"]
                .as_array_mut()
                .unwrap()
                .extend(volumes.as_array().unwrap().iter().cloned());
        }
        if let Some(from) = change.get("envFrom") {
            value["spec"]["containers"][0]["envFrom"] = from.clone();
        }
        if let Some(env) = change.get("env") {
            value["spec"]["containers"][0]["env"]
                .as_array_mut()
                .unwrap()
                .extend(env.as_array().unwrap().iter().cloned());
        }
        let submitted: Pod = serde_json::from_value(value).unwrap();
        match run(&submitted, Some(&session), false) {
            Outcome::Refused(message) => {
                assert!(message.contains(field), "{field}: {message}");
                assert!(
                    message.contains("brokered credential github-api, github-git"),
                    "{message}"
                );
                assert!(message.contains("remove the reference"), "{message}");
            }
            other => panic!("{field}: expected a refusal, got {other:?}"),
        }
    }
}
