//! The operator on a real API server: started as a local process, its webhooks registered by
//! URL, it stamps requesters, refuses invalid sessions, injects labelled pods (and refuses
//! the ways around the recorder), enforces namespaces, and keeps the sessions' status.

use anyhow::{Context, Result, bail};
use cassette_api::AgentSession;
use cassette_e2e::operator::{Operator, OperatorConfig, http_get};
use cassette_e2e::{cluster, fixtures};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

const SIDECAR_IMAGE: &str = "cassette-sidecar:e2e";

static OPERATOR: OnceCell<Result<Operator, String>> = OnceCell::const_new();

/// Start the operator (once, whichever test asks first).
async fn operator() -> &'static Operator {
    let started = OPERATOR
        .get_or_init(|| async {
            let config = OperatorConfig {
                sidecar_image: SIDECAR_IMAGE.into(),
                sidecar_env: vec![("CASSETTE_METADATA".into(), "off".into())],
                ..OperatorConfig::default()
            };
            Operator::start(&config).await.map_err(|e| format!("{e:#}"))
        })
        .await;
    match started {
        Ok(operator) => operator,
        Err(e) => panic!("the operator did not start: {e}"),
    }
}

fn sessions_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "cassette.dev",
        "v1alpha1",
        "AgentSession",
    ))
}

fn session_json(name: &str) -> Value {
    json!({
        "apiVersion": "cassette.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": name},
        "spec": {
            "agent": {"serviceAccount": "coding-agent"},
            "maxDuration": "2h",
            "recording": {"sink": "gs://recordings-bucket/agents", "durability": "strict", "maxBodyBytes": 65536},
            "policy": {"passthrough": ["pinned.example.com"]}
        }
    })
}

async fn create_session(client: &kube::Client, ns: &str, object: Value) -> Result<DynamicObject> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &sessions_resource());
    Ok(api
        .create(&PostParams::default(), &serde_json::from_value(object)?)
        .await?)
}

/// A namespace with the service account the agent pods run as (no controller-manager makes
/// one here, and the ServiceAccount admission plugin insists on it).
async fn agent_namespace(client: &kube::Client, prefix: &str) -> Result<String> {
    let ns = fixtures::namespace(client, prefix).await?;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "coding-agent"}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &sa)
        .await?;
    Ok(ns)
}

fn agent_pod(name: &str, session: Option<&str>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": "coding-agent",
            "containers": [{
                "name": "agent",
                "image": "agent:1",
                "command": ["sh", "-c", "git clone https://example.com/repo.git"],
                "securityContext": {"runAsUser": 1000}
            }]
        }
    });
    if let Some(session) = session {
        pod["metadata"]["labels"] = json!({"cassette.dev/session": session});
    }
    pod
}

async fn create_pod(client: &kube::Client, ns: &str, pod: Value) -> Result<Pod, kube::Error> {
    let pod: Pod = serde_json::from_value(pod).expect("a pod");
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
}

fn env_map(container: &k8s_openapi::api::core::v1::Container) -> Vec<(String, String)> {
    container
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = e.value.clone().unwrap_or_else(|| {
                e.value_from
                    .as_ref()
                    .and_then(|f| f.field_ref.as_ref())
                    .map(|f| format!("fieldRef:{}", f.field_path))
                    .unwrap_or_default()
            });
            (e.name.clone(), value)
        })
        .collect()
}

#[tokio::test]
async fn the_requester_is_stamped_from_the_authenticated_user() -> Result<()> {
    operator().await;
    let client = cluster().client().await?;
    let ns = fixtures::namespace(&client, "stamp").await?;
    // alice may create sessions in this namespace, nothing more.
    cluster().apply(&json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "session-author", "namespace": ns},
        "rules": [{"apiGroups": ["cassette.dev"], "resources": ["agentsessions"], "verbs": ["create", "get", "update"]}]
    }).to_string())?;
    cluster().apply(&json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "alice", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "session-author"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice@example.com"}]
    }).to_string())?;
    let alice = cassette_e2e::client_from(
        &cluster().user_kubeconfig("alice@example.com", Some("agent-admins"))?,
    )
    .await?;

    let mut session = session_json("fix-ci");
    session["spec"]["requestedBy"] = json!({"username": "the-ceo", "groups": ["system:masters"]});
    let created = create_session(&alice, &ns, session).await?;
    let requested_by = &created.data["spec"]["requestedBy"];
    assert_eq!(
        requested_by["username"], "alice@example.com",
        "{requested_by}"
    );
    let groups = requested_by["groups"].as_array().context("groups")?;
    assert!(groups.contains(&json!("agent-admins")), "{requested_by}");
    assert!(!groups.contains(&json!("system:masters")), "{requested_by}");

    // An update by someone else cannot rewrite it.
    let api: Api<AgentSession> = Api::namespaced(client.clone(), &ns);
    let patch = json!({"spec": {"requestedBy": {"username": "mallory"}}});
    let updated = api
        .patch("fix-ci", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    assert_eq!(
        updated.spec.requested_by.map(|r| r.username).as_deref(),
        Some("alice@example.com")
    );

    // And `kubectl get` shows who asked.
    let out = cluster()
        .kubectl()
        .args(["get", "agentsessions", "-n", &ns])
        .output()?;
    let out = String::from_utf8(out.stdout)?;
    assert!(out.contains("alice@example.com"), "{out}");
    Ok(())
}

#[tokio::test]
async fn a_regex_that_does_not_compile_is_refused_with_its_field_path() -> Result<()> {
    operator().await;
    let client = cluster().client().await?;
    let ns = fixtures::namespace(&client, "validate").await?;
    let mut session = session_json("bad-regex");
    session["spec"]["masking"] =
        json!({"patterns": [{"name": "internal", "regex": "token=([a-z"}]});
    let err = match create_session(&client, &ns, session).await {
        Ok(_) => bail!("an AgentSession with a broken regex was accepted"),
        Err(e) => format!("{e:#}"),
    };
    for needle in [
        "agentsessions.cassette.dev",
        "AgentSession \"bad-regex\" is invalid",
        "spec.masking.patterns[0].regex",
    ] {
        assert!(
            err.contains(needle),
            "the refusal was:\n  {err}\nwithout {needle:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_labelled_pod_is_stored_injected() -> Result<()> {
    operator().await;
    let client = cluster().client().await?;
    let ns = agent_namespace(&client, "inject").await?;
    create_session(&client, &ns, session_json("fix-ci")).await?;
    let mut pod = agent_pod("agent-1", Some("fix-ci"));
    pod["spec"]["containers"][0]["env"] =
        json!([{"name": "SSL_CERT_FILE", "value": "/etc/mine.pem"}]);
    let stored = create_pod(&client, &ns, pod).await?;

    let annotations = stored.metadata.annotations.clone().unwrap_or_default();
    let record: Value = serde_json::from_str(
        annotations
            .get("cassette.dev/injected")
            .context("the cassette.dev/injected annotation")?,
    )?;
    assert_eq!(record["session"], "fix-ci");
    assert_eq!(record["sidecarImage"], SIDECAR_IMAGE);
    let removed = record["removedTokenVolumes"]
        .as_array()
        .context("removed")?;
    assert_eq!(
        removed.len(),
        1,
        "the ServiceAccount plugin's token volume is taken away: {record}"
    );

    let spec = stored.spec.context("spec")?;
    assert_eq!(spec.automount_service_account_token, Some(false));
    let init = spec.init_containers.clone().unwrap_or_default();
    let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["cassette-init", "cassette-sidecar"]);
    assert_eq!(init[0].args.as_deref(), Some(&["init".to_string()][..]));
    let caps = init[0]
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.clone())
        .context("init capabilities")?;
    assert!(
        caps.add
            .unwrap_or_default()
            .contains(&"NET_ADMIN".to_string())
    );

    let sidecar = &init[1];
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(sidecar.image.as_deref(), Some(SIDECAR_IMAGE));
    let security = sidecar
        .security_context
        .as_ref()
        .context("sidecar security")?;
    assert_eq!(security.run_as_user, Some(1337));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let env = env_map(sidecar);
    let has = |name: &str, value: &str| env.iter().any(|(n, v)| n == name && v == value);
    for (name, value) in [
        ("CASSETTE_SESSION", "fix-ci"),
        ("CASSETTE_SINK", "gs://recordings-bucket/agents"),
        ("CASSETTE_DURABILITY", "strict"),
        ("CASSETTE_MAX_BODY_BYTES", "65536"),
        ("CASSETTE_PASSTHROUGH", "pinned.example.com"),
        ("POD_UID", "fieldRef:metadata.uid"),
        ("CASSETTE_METADATA", "off"),
    ] {
        assert!(
            has(name, value),
            "sidecar env lacks {name}={value}: {env:?}"
        );
    }
    assert!(
        env.iter().any(|(n, _)| n == "CASSETTE_EXPIRES_AT"),
        "{env:?}"
    );

    // The pod's only token is in the sidecar.
    let volumes: Vec<String> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect();
    assert_eq!(
        volumes,
        [
            "cassette-ca",
            "cassette-spool",
            "cassette-token",
            "cassette-fingerprint-key"
        ]
    );
    let mounts = |c: &k8s_openapi::api::core::v1::Container| -> Vec<(String, String, bool)> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.name.clone(),
                    m.mount_path.clone(),
                    m.read_only == Some(true),
                )
            })
            .collect()
    };
    assert!(mounts(sidecar).contains(&(
        "cassette-token".into(),
        "/var/run/secrets/kubernetes.io/serviceaccount".into(),
        true
    )));
    let agent = &spec.containers[0];
    assert_eq!(
        mounts(agent),
        [(
            "cassette-ca".to_string(),
            "/var/run/cassette/ca".to_string(),
            true
        )],
        "the agent mounts the CA bundle read-only and nothing of the recorder's"
    );
    let agent_env = env_map(agent);
    for name in cassette_api::names::CA_BUNDLE_ENV {
        assert!(
            agent_env
                .iter()
                .any(|(n, v)| n == name && v == "/var/run/cassette/ca/bundle.pem"),
            "{name} in {agent_env:?}"
        );
    }
    assert_eq!(
        agent_env
            .iter()
            .filter(|(n, _)| n == "SSL_CERT_FILE")
            .count(),
        1
    );
    Ok(())
}

#[tokio::test]
async fn every_way_around_the_recorder_is_refused_with_its_reason() -> Result<()> {
    operator().await;
    let client = cluster().client().await?;
    let ns = agent_namespace(&client, "refuse").await?;
    create_session(&client, &ns, session_json("fix-ci")).await?;
    let mut expired = session_json("ended");
    expired["spec"]
        .as_object_mut()
        .context("spec")?
        .remove("maxDuration");
    expired["spec"]["expiresAt"] = json!("2020-01-01T00:00:00Z");
    create_session(&client, &ns, expired).await?;

    type Breaker = fn(&mut Value);
    let cases: &[(&str, Breaker, &str)] = &[
        (
            "a session that does not exist",
            |p| p["metadata"]["labels"]["cassette.dev/session"] = json!("nope"),
            "AgentSession \"nope\" does not exist in namespace",
        ),
        (
            "an expired session",
            |p| p["metadata"]["labels"]["cassette.dev/session"] = json!("ended"),
            "AgentSession \"ended\" expired at 2020-01-01T00:00:00Z; pods can no longer join it",
        ),
        (
            "hostNetwork",
            |p| p["spec"]["hostNetwork"] = json!(true),
            "remove spec.hostNetwork",
        ),
        (
            "shareProcessNamespace",
            |p| p["spec"]["shareProcessNamespace"] = json!(true),
            "remove spec.shareProcessNamespace",
        ),
        (
            "a privileged agent",
            |p| p["spec"]["containers"][0]["securityContext"]["privileged"] = json!(true),
            "container \"agent\" is privileged",
        ),
        (
            "NET_ADMIN",
            |p| {
                p["spec"]["containers"][0]["securityContext"]["capabilities"] =
                    json!({"add": ["NET_ADMIN"]})
            },
            "adds the capability NET_ADMIN",
        ),
        (
            "NET_RAW",
            |p| {
                p["spec"]["containers"][0]["securityContext"]["capabilities"] =
                    json!({"add": ["NET_RAW"]})
            },
            "adds the capability NET_RAW",
        ),
        (
            "UID 1337",
            |p| p["spec"]["containers"][0]["securityContext"]["runAsUser"] = json!(1337),
            "runs as UID 1337, the recorder's own UID",
        ),
        (
            "SYS_PTRACE, outside the allowlist",
            |p| {
                p["spec"]["containers"][0]["securityContext"]["capabilities"] =
                    json!({"add": ["SYS_PTRACE"]})
            },
            "adds the capability SYS_PTRACE, which agent containers may not hold",
        ),
        (
            "resolvers of its own (dnsPolicy: None)",
            |p| {
                p["spec"]["dnsPolicy"] = json!("None");
                p["spec"]["dnsConfig"] = json!({"nameservers": ["203.0.113.53"]});
            },
            "remove spec.dnsPolicy",
        ),
        (
            "resolvers of its own (dnsConfig)",
            |p| p["spec"]["dnsConfig"] = json!({"nameservers": ["203.0.113.53"]}),
            "remove spec.dnsConfig.nameservers",
        ),
        (
            "a hostPath volume",
            |p| {
                p["spec"]["volumes"] =
                    json!([{"name": "runtime", "hostPath": {"path": "/run/containerd"}}])
            },
            "volume \"runtime\" mounts the node's \"/run/containerd\" (hostPath)",
        ),
        (
            "a service-account token Secret",
            |p| {
                p["spec"]["containers"][0]["env"] = json!([{"name": "TOKEN", "valueFrom":
                    {"secretKeyRef": {"name": "legacy-token", "key": "token"}}}])
            },
            "names Secret \"legacy-token\", a service-account token",
        ),
    ];
    // A legacy token Secret of the agent's service account, as a pod author might name it.
    let legacy: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "legacy-token",
            "annotations": {"kubernetes.io/service-account.name": "coding-agent"}},
        "type": "kubernetes.io/service-account-token"
    }))?;
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &legacy)
        .await?;
    for (i, (what, breaker, expected)) in cases.iter().enumerate() {
        let mut pod = agent_pod(&format!("refused-{i}"), Some("fix-ci"));
        breaker(&mut pod);
        match create_pod(&client, &ns, pod).await {
            Ok(_) => bail!("a pod with {what} was admitted"),
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.contains("inject.cassette.dev") && message.contains(expected),
                    "refusing {what}, the API server said:\n  {message}\nwithout {expected:?}"
                );
            }
        }
    }
    Ok(())
}

/// After admission, with kubectl as an admin (or an agent holding pod rights) would: the
/// session pod's label, images and recorder cannot change, no ephemeral container joins it,
/// and nobody execs into the recorder or port-forwards into the pod. Each refusal names the
/// guard and what to do; an exec into the agent's own container is not cassette's to refuse.
#[tokio::test]
async fn a_session_pod_cannot_be_changed_or_entered_after_admission() -> Result<()> {
    operator().await;
    let client = cluster().client().await?;
    let ns = agent_namespace(&client, "guard").await?;
    create_session(&client, &ns, session_json("fix-ci")).await?;
    create_pod(&client, &ns, agent_pod("guarded", Some("fix-ci"))).await?;
    // kubectl port-forwards only to a running pod; no kubelet runs this one, so say it runs.
    let out = cluster().kubectl_with_input(
        &[
            "-n",
            &ns,
            "patch",
            "pod",
            "guarded",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running"}}"#,
        ],
        "",
    )?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cases: &[(&str, &[&str], &str)] = &[
        (
            "removing the session label",
            &["label", "pod", "guarded", "cassette.dev/session-"],
            "its cassette.dev/session label cannot be removed: delete the pod instead",
        ),
        (
            "swapping the recorder's image",
            &[
                "set",
                "image",
                "pod/guarded",
                "cassette-sidecar=attacker/sidecar:1",
            ],
            "container \"cassette-sidecar\" is cassette's recorder and cannot be changed",
        ),
        (
            "swapping the agent's image",
            &["set", "image", "pod/guarded", "agent=agent:2"],
            "the image of container \"agent\" (spec.containers) cannot change",
        ),
        (
            "an ephemeral container",
            &["debug", "guarded", "--image=agent:1", "--", "true"],
            "an ephemeral container would run beside the recorder",
        ),
        (
            "a shell in the recorder",
            &["exec", "guarded", "-c", "cassette-sidecar", "--", "true"],
            "a shell there runs as UID 1337",
        ),
        (
            "attaching to the recorder",
            &["attach", "guarded", "-c", "cassette-sidecar"],
            "attach into it is refused",
        ),
        (
            "a port-forward",
            &["port-forward", "pod/guarded", "15090:15090"],
            "a port-forward reaches the pod's loopback past the capture",
        ),
    ];
    for (what, args, expected) in cases {
        let mut full = vec!["-n", ns.as_str(), "--request-timeout=20s"];
        full.extend_from_slice(args);
        let out = cluster().kubectl_with_input(&full, "")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} was allowed: {stderr}");
        assert!(
            stderr.contains(".cassette.dev") && stderr.contains(expected),
            "refusing {what}, kubectl said:\n  {stderr}\nwithout {expected:?}"
        );
    }
    // The agent's own container is not the guard's: kubectl gets past admission (and fails
    // later, since this pod runs on no node).
    let out = cluster().kubectl_with_input(
        &[
            "-n",
            &ns,
            "--request-timeout=20s",
            "exec",
            "guarded",
            "-c",
            "agent",
            "--",
            "true",
        ],
        "",
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("connect.cassette.dev"), "{stderr}");
    // And a label that is not cassette's still changes.
    let out =
        cluster().kubectl_with_input(&["-n", &ns, "label", "pod", "guarded", "team=a"], "")?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// What the webhook cannot check it says: kubectl prints the admission warning.
#[tokio::test]
async fn a_pod_whose_uid_the_webhook_cannot_see_is_admitted_with_a_warning() -> Result<()> {
    operator().await;
    let client = cluster().client().await?;
    let ns = agent_namespace(&client, "warn").await?;
    create_session(&client, &ns, session_json("fix-ci")).await?;
    let mut pod = agent_pod("no-uid", Some("fix-ci"));
    pod["spec"]["containers"][0]
        .as_object_mut()
        .context("a container")?
        .remove("securityContext");
    let out = cluster().kubectl_with_input(&["create", "-n", &ns, "-f", "-"], &pod.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "Warning: container \"agent\" sets no runAsUser: if its image runs as UID 1337, its \
             traffic is not recorded; set spec.containers[0].securityContext.runAsUser"
        ),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn an_enforcing_namespace_refuses_pods_without_a_session() -> Result<()> {
    operator().await;
    let client = cluster().client().await?;
    let ns = agent_namespace(&client, "enforce").await?;
    let patch = json!({"metadata": {"labels": {"cassette.dev/enforce": "true"}}});
    Api::<Namespace>::all(client.clone())
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    create_session(&client, &ns, session_json("fix-ci")).await?;

    let err = create_pod(&client, &ns, agent_pod("unrecorded", None))
        .await
        .err()
        .context("an unlabelled pod was admitted in an enforcing namespace")?
        .to_string();
    assert!(
        err.contains("enforce.cassette.dev") && err.contains("add the label cassette.dev/session="),
        "{err}"
    );
    let admitted = create_pod(&client, &ns, agent_pod("recorded", Some("fix-ci"))).await?;
    assert!(
        admitted
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("cassette.dev/injected")
    );
    Ok(())
}

#[tokio::test]
async fn the_controller_keeps_phase_expiry_uri_and_totals() -> Result<()> {
    operator().await;
    let client = cluster().client().await?;
    let ns = agent_namespace(&client, "status").await?;
    create_session(&client, &ns, session_json("fix-ci")).await?;
    let api: Api<AgentSession> = Api::namespaced(client.clone(), &ns);

    let pending = wait_for(&api, "fix-ci", |s| {
        s.status.as_ref().is_some_and(|st| st.phase.is_some())
    })
    .await?;
    let status = pending.status.clone().context("status")?;
    assert_eq!(status.phase, Some(cassette_api::Phase::Pending));
    assert_eq!(
        status.recording_uri.as_deref(),
        Some(format!("gs://recordings-bucket/agents/{ns}/fix-ci/").as_str())
    );
    let created = pending
        .metadata
        .creation_timestamp
        .clone()
        .context("created")?
        .0;
    let expires = status.expires_at.context("expiresAt")?.0;
    assert_eq!(expires.duration_since(created).as_secs(), 2 * 3600);
    assert!(
        pending
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"cassette.dev/recordings".to_string())
    );

    // A pod joins and its sidecar reports, as sidecars do: its own entry, its own manager.
    create_pod(&client, &ns, agent_pod("agent-1", Some("fix-ci"))).await?;
    let report = json!({
        "apiVersion": "cassette.dev/v1alpha1", "kind": "AgentSession",
        "status": {"pods": [{"name": "agent-1", "exchanges": 12, "blocked": 2, "masked": 3, "bytes": 4096, "spoolBytes": 0}]}
    });
    api.patch_status(
        "fix-ci",
        &PatchParams::apply("cassette-sidecar-agent-1"),
        &Patch::Apply(&report),
    )
    .await?;
    let active = wait_for(&api, "fix-ci", |s| {
        s.status
            .as_ref()
            .is_some_and(|st| st.phase == Some(cassette_api::Phase::Active))
    })
    .await?;
    let totals = active
        .status
        .clone()
        .and_then(|s| s.totals)
        .context("totals")?;
    assert_eq!(
        (totals.exchanges, totals.blocked, totals.masked),
        (12, 2, 3)
    );
    assert_eq!(
        active.status.context("status")?.pods.len(),
        1,
        "the sidecar's entry stays"
    );

    // Deleting the session waits for its pod, then lets go (recordings untouched).
    api.delete("fix-ci", &Default::default()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        api.get_opt("fix-ci").await?.is_some(),
        "deleted while a pod still records"
    );
    Api::<Pod>::namespaced(client.clone(), &ns)
        .delete("agent-1", &Default::default())
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.get_opt("fix-ci").await?.is_some() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the session was not released after its pod ended"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The metrics saw all this.
    let (code, metrics) = http_get(operator().await.metrics_port(), "/metrics")?;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("cassette_operator_admissions_total"),
        "{metrics}"
    );
    assert!(metrics.contains("cassette_operator_leader 1"), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn recordings_older_than_the_retention_go_and_deleting_the_session_deletes_none() -> Result<()>
{
    operator().await;
    let client = cluster().client().await?;
    let ns = fixtures::namespace(&client, "retention").await?;
    let sink = tempfile::tempdir()?;
    // Two finished recordings of the session: one from three hours ago, one from now.
    let recording = |pod: &str, age: Duration| -> Result<std::path::PathBuf> {
        let dir = sink.path().join(&ns).join("fix-ci").join(pod);
        std::fs::create_dir_all(&dir)?;
        for name in ["seg-000001.jsonl.zst", "manifest.json"] {
            let file = std::fs::File::create(dir.join(name))?;
            file.set_modified(std::time::SystemTime::now() - age)?;
        }
        Ok(dir)
    };
    let old = recording("agent-0-1111", Duration::from_secs(3 * 3600))?;
    let young = recording("agent-1-2222", Duration::ZERO)?;
    // As old, but of a pod this session's status does not name (an earlier `fix-ci`).
    let earlier = recording("agent-0-0000", Duration::from_secs(3 * 3600))?;

    let mut session = session_json("fix-ci");
    session["spec"]["recording"] = json!({
        "sink": format!("file://{}", sink.path().display()),
        "retention": "2h"
    });
    create_session(&client, &ns, session).await?;
    let api: Api<AgentSession> = Api::namespaced(client.clone(), &ns);
    wait_for(&api, "fix-ci", |s| {
        s.status.as_ref().is_some_and(|st| st.phase.is_some())
    })
    .await?;
    // The first reconcile swept (nothing was the session's yet); past the operator's sweep
    // interval (1s here), the next reconcile sweeps again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The sidecars of the two pods report, as they do: name and UID, each its own manager.
    for (pod, uid) in [("agent-0", "1111"), ("agent-1", "2222")] {
        let report = json!({
            "apiVersion": "cassette.dev/v1alpha1", "kind": "AgentSession",
            "status": {"pods": [{"name": pod, "uid": uid, "exchanges": 1}]}
        });
        api.patch_status(
            "fix-ci",
            &PatchParams::apply(&format!("cassette-sidecar-{pod}")),
            &Patch::Apply(&report),
        )
        .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while old.exists() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the recording older than the retention is still there"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        young.join("manifest.json").exists(),
        "the young recording went too"
    );
    assert!(
        earlier.join("manifest.json").exists(),
        "the recording of a pod the session never had went too"
    );

    // Whoever may edit the session cannot make the operator delete sooner or elsewhere.
    let sessions: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &sessions_resource());
    for (change, refusal) in [
        (json!({"retention": "1h"}), "retention cannot be shortened"),
        (json!({"sink": "file:///elsewhere"}), "sink cannot change"),
    ] {
        let patch = json!({"spec": {"recording": change}});
        let error = sessions
            .patch("fix-ci", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err("the edit was admitted");
        assert!(error.to_string().contains(refusal), "{error}");
    }
    let longer = json!({"spec": {"recording": {"retention": "3h"}}});
    sessions
        .patch("fix-ci", &PatchParams::default(), &Patch::Merge(&longer))
        .await?;

    let events = cluster()
        .kubectl()
        .args([
            "get",
            "events",
            "-n",
            &ns,
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .output()?;
    let events = String::from_utf8(events.stdout)?;
    assert!(
        events.contains("deleted 2 object(s) of 1 recording(s) older than 2h"),
        "{events}"
    );

    // Deleting the session takes nothing with it.
    api.delete("fix-ci", &Default::default()).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.get_opt("fix-ci").await?.is_some() {
        anyhow::ensure!(Instant::now() < deadline, "the session was not released");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(young.join("manifest.json").exists());
    assert!(young.join("seg-000001.jsonl.zst").exists());
    assert!(earlier.join("manifest.json").exists());
    Ok(())
}

async fn wait_for(
    api: &Api<AgentSession>,
    name: &str,
    done: impl Fn(&AgentSession) -> bool,
) -> Result<AgentSession> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let session = api.get(name).await?;
        if done(&session) {
            return Ok(session);
        }
        if Instant::now() > deadline {
            bail!(
                "AgentSession {name} did not reach the expected state within 60s: {:?}",
                session.status
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A client of the test's API server authenticated by a bearer token alone.
async fn client_with_token(token: &str) -> Result<kube::Client> {
    let file = kube::config::Kubeconfig::read_from(cluster().kubeconfig())?;
    let mut config = kube::Config::from_custom_kubeconfig(file, &Default::default()).await?;
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    Ok(kube::Client::try_from(config)?)
}

/// A token of the agent's service account, bound to `pod` when given (as the kubelet's
/// projected token is), else to nothing (as `kubectl create token` makes one).
async fn agent_token(client: &kube::Client, ns: &str, pod: Option<&Pod>) -> Result<String> {
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(600),
            bound_object_ref: pod.map(|p| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: p.metadata.name.clone(),
                uid: p.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request("coding-agent", &PostParams::default(), &request)
        .await?;
    Ok(issued.status.context("a token")?.token)
}

/// The trust root of `verify`: a pod's key in the status comes from that pod's own sidecar
/// and never changes. Tried as a holder of the agent's service account would — with a token
/// bound to no pod, with another session pod's token, and as an admin — with the sidecar's
/// own RBAC (status patch) granted.
#[tokio::test]
async fn a_pods_recording_key_comes_only_from_its_own_sidecar() -> Result<()> {
    operator().await;
    let client = cluster().client().await?;
    let ns = agent_namespace(&client, "keys").await?;
    create_session(&client, &ns, session_json("fix-ci")).await?;
    let agent0 = create_pod(&client, &ns, agent_pod("agent-0", Some("fix-ci"))).await?;
    let agent1 = create_pod(&client, &ns, agent_pod("agent-1", Some("fix-ci"))).await?;
    // The sidecar's rights, as the chart grants them to the agent's service account.
    cluster().apply(&format!(
        r#"{{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "List", "items": [
          {{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {{"name": "sidecar", "namespace": "{ns}"}},
            "rules": [{{"apiGroups": ["cassette.dev"], "resources": ["agentsessions"], "verbs": ["get", "watch"]}},
                      {{"apiGroups": ["cassette.dev"], "resources": ["agentsessions/status"], "verbs": ["patch"]}}]}},
          {{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {{"name": "sidecar", "namespace": "{ns}"}},
            "roleRef": {{"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sidecar"}},
            "subjects": [{{"kind": "ServiceAccount", "name": "coding-agent", "namespace": "{ns}"}}]}}
        ]}}"#
    ))?;
    let entry = |pod: &Pod, key: &str, blocked: u64| {
        json!({
            "apiVersion": "cassette.dev/v1alpha1", "kind": "AgentSession",
            "status": {"pods": [{
                "name": pod.metadata.name, "uid": pod.metadata.uid,
                "publicKey": key, "blocked": blocked
            }]}
        })
    };
    let write = |client: kube::Client, manager: &'static str, patch: Value| {
        let ns = ns.clone();
        async move {
            Api::<AgentSession>::namespaced(client, &ns)
                .patch_status(
                    "fix-ci",
                    &PatchParams::apply(manager).force(),
                    &Patch::Apply(&patch),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    let refused = |result: Result<(), String>, what: &str, expected: &str| match result {
        Ok(()) => panic!("{what} was allowed"),
        Err(m) => assert!(
            m.contains(expected),
            "refusing {what}, the API server said:\n  {m}\nwithout {expected:?}"
        ),
    };
    let key0 = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    let forged = "Zm9yZ2VkLWtleS1mb3JnZWQta2V5LWZvcmdlZC1rZXk=";

    // A token of the agent's account bound to no pod: no key, no counts.
    let unbound = client_with_token(&agent_token(&client, &ns, None).await?).await?;
    refused(
        write(unbound.clone(), "attacker", entry(&agent0, forged, 0)).await,
        "a key from an unbound token",
        "only pod \"agent-0\"'s own sidecar, with the token bound to that pod",
    );
    // A pod of the same account outside any session has a bound token but no recorder.
    let plain = create_pod(&client, &ns, agent_pod("plain", None)).await?;
    let outsider = client_with_token(&agent_token(&client, &ns, Some(&plain)).await?).await?;
    refused(
        write(outsider, "cassette-sidecar-plain", entry(&plain, forged, 0)).await,
        "a key from a pod outside the session",
        "was not injected into a session (no cassette.dev/injected annotation)",
    );
    // The pod's own sidecar publishes its key.
    let own = client_with_token(&agent_token(&client, &ns, Some(&agent0)).await?).await?;
    write(
        own.clone(),
        "cassette-sidecar-agent-0",
        entry(&agent0, key0, 0),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    // Then nobody changes it: not the pod itself, another session pod, or an admin.
    refused(
        write(
            own.clone(),
            "cassette-sidecar-agent-0",
            entry(&agent0, forged, 0),
        )
        .await,
        "the pod changing its key",
        "is set once, by its own sidecar, and cannot change",
    );
    let other = client_with_token(&agent_token(&client, &ns, Some(&agent1)).await?).await?;
    refused(
        write(other, "cassette-sidecar-agent-1", entry(&agent0, key0, 99)).await,
        "another pod writing agent-0's entry",
        "bound to pod \"agent-1\", may write only that pod's entry",
    );
    refused(
        write(client.clone(), "admin", entry(&agent0, forged, 0)).await,
        "an admin changing the key",
        "cannot change",
    );
    let stored = Api::<AgentSession>::namespaced(client.clone(), &ns)
        .get_status("fix-ci")
        .await?;
    let pods = stored.status.context("a status")?.pods;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].public_key.as_deref(), Some(key0));
    assert_eq!(pods[0].blocked, 0);

    // And a copy of the key lives outside the object: an Event on the session.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cluster().kubectl_with_input(
            &[
                "-n",
                &ns,
                "get",
                "events",
                "--field-selector",
                "reason=RecordingKey",
                "-o",
                "jsonpath={.items[*].message}",
            ],
            "",
        )?;
        let notes = String::from_utf8_lossy(&out.stdout).to_string();
        if notes.contains(key0) {
            assert!(
                notes.contains("pod agent-0 (uid ") && notes.contains("SHA256:"),
                "{notes}"
            );
            break;
        }
        if Instant::now() > deadline {
            bail!("no RecordingKey event within 60s (events: {notes:?})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// A session that names no fingerprint key gets one the operator makes: 32 random bytes in a
/// Secret of the session's namespace, immutable, kept when the session goes.
#[tokio::test]
async fn the_operator_makes_a_fingerprint_key_for_a_session_that_names_none() -> Result<()> {
    operator().await;
    let client = cluster().client().await?;
    let ns = agent_namespace(&client, "fpkey").await?;
    create_session(&client, &ns, session_json("fix-ci")).await?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    let secret = loop {
        if let Some(secret) = secrets.get_opt("cassette-fingerprint-fix-ci").await? {
            break secret;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no fingerprint Secret within 60s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let key = secret
        .data
        .unwrap_or_default()
        .remove("key")
        .context("key")?;
    assert_eq!(key.0.len(), 32);
    assert_eq!(secret.immutable, Some(true));
    assert!(
        secret.metadata.owner_references.is_none(),
        "it outlives the session"
    );
    Ok(())
}

/// Four eyes: the person who asked for a session cannot approve its held requests, nor can
/// the agent's service account; someone else can, and the requester can still deny.
#[tokio::test]
async fn the_requester_and_the_agent_cannot_approve_a_review() -> Result<()> {
    operator().await;
    let client = cluster().client().await?;
    let ns = agent_namespace(&client, "eyes").await?;
    cluster().apply(
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "approver", "namespace": ns},
            "rules": [{"apiGroups": ["cassette.dev"], "resources": ["agentsessions"],
                       "verbs": ["create", "get", "patch"]}]
        })
        .to_string(),
    )?;
    cluster().apply(&json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "approvers", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "approver"},
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice@example.com"},
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob@example.com"},
            {"kind": "ServiceAccount", "name": "coding-agent", "namespace": ns}
        ]
    }).to_string())?;
    let alice =
        cassette_e2e::client_from(&cluster().user_kubeconfig("alice@example.com", None)?).await?;
    let bob =
        cassette_e2e::client_from(&cluster().user_kubeconfig("bob@example.com", None)?).await?;
    let agent = client_with_token(&agent_token(&client, &ns, None).await?).await?;
    create_session(&alice, &ns, session_json("fix-ci")).await?;
    // A merge patch replaces the list: each decision carries the ones before it.
    let decide = |who: kube::Client, earlier: Value, id: &str, decision: &str| {
        let ns = ns.clone();
        let mut approvals = earlier.as_array().cloned().unwrap_or_default();
        approvals.push(json!({"id": id, "decision": decision}));
        let patch = json!({"spec": {"approvals": approvals}});
        async move {
            Api::<AgentSession>::namespaced(who, &ns)
                .patch("fix-ci", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    let message = decide(alice.clone(), json!([]), "agent-0-ab12cd34-1", "approve")
        .await
        .expect_err("the requester approved her own session's review");
    assert!(
        message.contains("alice@example.com requested this session and cannot also approve"),
        "{message}"
    );
    let message = decide(agent, json!([]), "agent-0-ab12cd34-1", "approve")
        .await
        .expect_err("the agent approved its own request");
    assert!(
        message.contains("the agent's own service account"),
        "{message}"
    );
    decide(alice, json!([]), "agent-0-ab12cd34-2", "deny")
        .await
        .map_err(anyhow::Error::msg)?;
    let denied = json!([{"id": "agent-0-ab12cd34-2", "decision": "deny"}]);
    decide(bob, denied, "agent-0-ab12cd34-1", "approve")
        .await
        .map_err(anyhow::Error::msg)?;
    let stored = Api::<AgentSession>::namespaced(client, &ns)
        .get("fix-ci")
        .await?;
    let by: Vec<_> = stored
        .spec
        .approvals
        .iter()
        .map(|a| (a.id.as_str(), a.by.as_deref()))
        .collect();
    assert_eq!(
        by,
        [
            ("agent-0-ab12cd34-2", Some("alice@example.com")),
            ("agent-0-ab12cd34-1", Some("bob@example.com"))
        ]
    );
    Ok(())
}
