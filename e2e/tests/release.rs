//! cassette installed by its chart on the real node, as an admin runs it: `helm install`,
//! `helm test`, a session pod held to the capture issue's rules by a real kubelet and runtime,
//! `helm upgrade`, `helm uninstall`.
//!
//! Needs root and the real node's packages (`make deps`); skips with a message otherwise.

use anyhow::{Context, Result, bail};
use cassette_e2e::pods::{self, kubectl, said};
use cassette_e2e::release::{self, Release};
use cassette_e2e::{cluster, fixtures};
use serde_json::json;

/// Linux capability numbers (`capability.h`) of the names the chart may allow.
const CAPABILITIES: &[(&str, u32)] = &[
    ("CHOWN", 0),
    ("DAC_OVERRIDE", 1),
    ("FOWNER", 3),
    ("FSETID", 4),
    ("KILL", 5),
    ("SETGID", 6),
    ("SETUID", 7),
    ("SETPCAP", 8),
    ("NET_BIND_SERVICE", 10),
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("SYS_CHROOT", 18),
    ("MKNOD", 27),
    ("AUDIT_WRITE", 29),
    ("SETFCAP", 31),
];

/// The capability names in a `/proc/<pid>/status` `CapEff:` hex mask.
fn capability_names(status: &str) -> Result<Vec<&'static str>> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("no CapEff line")?
        .trim();
    let mask = u64::from_str_radix(hex, 16).with_context(|| format!("CapEff {hex:?}"))?;
    let known: u64 = CAPABILITIES.iter().map(|(_, bit)| 1u64 << bit).sum();
    if mask & !known != 0 {
        bail!(
            "CapEff {hex} holds capabilities this test does not name: {:#x}",
            mask & !known
        );
    }
    Ok(CAPABILITIES
        .iter()
        .filter(|(_, bit)| mask & (1 << bit) != 0)
        .map(|(name, _)| *name)
        .collect())
}

/// Create an agent pod of the session (root, asking nothing about capabilities) and wait until
/// it runs: the capture installed, the recorder ready, the agent started.
fn running_agent(ns: &str, name: &str, image: &str) -> Result<()> {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"cassette.dev/session": "probe"}},
        "spec": {
            "serviceAccountName": "coding-agent",
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "agent", "image": image, "command": ["sleep", "3600"],
                            "securityContext": {"runAsUser": 0}}]
        }
    });
    cluster().apply(&pod.to_string())?;
    pods::wait_ready(ns, name)?;
    Ok(())
}

/// The agent container's effective capabilities, read in the pod.
fn agent_capabilities(ns: &str, pod: &str) -> Result<Vec<&'static str>> {
    let out = kubectl(&[
        "exec",
        "-n",
        ns,
        pod,
        "-c",
        "agent",
        "--",
        "cat",
        "/proc/self/status",
    ])?;
    anyhow::ensure!(out.status.success(), "exec into the agent: {}", said(&out));
    capability_names(&String::from_utf8_lossy(&out.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_checks_itself_confines_session_pods_upgrades_and_uninstalls()
-> Result<()> {
    cassette_e2e::require_node!();
    let node = cassette_e2e::node();
    let client = cluster().client().await?;
    let ns = fixtures::namespace(&client, "installed").await?;
    cluster().apply(
        &json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": "coding-agent", "namespace": ns}},
            ]
        })
        .to_string(),
    )?;
    let values = |capabilities: &[&str]| {
        json!({
            // The recorder needs no metadata server here: nothing in this test calls Google.
            "sidecarEnv": {"CASSETTE_METADATA": "off"},
            "agentNamespaces": [{"namespace": ns, "serviceAccounts": ["coding-agent"]}],
            "agentContainers": {"capabilities": capabilities},
        })
    };
    let defaults = [
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
    let release = Release::install(node, &values(&defaults)).await?;

    // helm test: the chart's own check, from inside the cluster.
    let test = release.test()?;
    let report = said(&test);
    println!("{report}");
    assert!(test.status.success(), "helm test failed:\n{report}");
    for line in [
        "ok    the AgentSession API is served",
        "ok    every webhook carries a CA bundle for the Service",
        "ok    the validating webhook refuses an invalid AgentSession",
        "ok    the operator is ready",
        "cassette is installed and answering",
    ] {
        assert!(
            report.contains(line),
            "helm test said no {line:?}:\n{report}"
        );
    }

    cluster().apply(
        &json!({
            "apiVersion": "cassette.dev/v1alpha1", "kind": "AgentSession",
            "metadata": {"name": "probe", "namespace": ns},
            "spec": {"agent": {"serviceAccount": "coding-agent"}, "maxDuration": "1h",
                     "recording": {"sink": "gs://recordings-bucket/agents"}}
        })
        .to_string(),
    )?;
    let image = node.image("agent")?;
    running_agent(&ns, "agent", image)?;

    // The runtime gives the root agent exactly the chart's allowlist: no NET_RAW (packet
    // sockets), no NET_ADMIN (the capture rules), no SETUID/SETGID (the recorder's UID).
    let mut expected = defaults.to_vec();
    expected.sort();
    let mut given = agent_capabilities(&ns, "agent")?;
    given.sort();
    assert_eq!(given, expected, "the agent's effective capabilities");

    // No shell in the recorder, no debug container beside it, no image swapped under it.
    let exec = kubectl(&[
        "exec",
        "-n",
        &ns,
        "agent",
        "-c",
        "cassette-sidecar",
        "--",
        "/usr/local/bin/cassette-sidecar",
        "--help",
    ])?;
    assert!(
        !exec.status.success(),
        "exec into the recorder ran: {}",
        said(&exec)
    );
    assert!(
        said(&exec).contains("is cassette's recorder"),
        "exec into the recorder was refused for another reason: {}",
        said(&exec)
    );
    let debug = kubectl(&[
        "debug", "-n", &ns, "agent", "--image", image, "-c", "debugger", "--", "sleep", "60",
    ])?;
    assert!(
        !debug.status.success(),
        "kubectl debug added a container: {}",
        said(&debug)
    );
    let refused = said(&debug);
    assert!(refused.contains("ephemeral"), "kubectl debug: {refused}");
    let swap = kubectl(&[
        "patch",
        "pod",
        "-n",
        &ns,
        "agent",
        "--type",
        "json",
        "-p",
        &json!([{"op": "replace", "path": "/spec/initContainers/1/image", "value": image}])
            .to_string(),
    ])?;
    assert!(
        !swap.status.success(),
        "the sidecar's image was swapped: {}",
        said(&swap)
    );
    assert!(
        said(&swap).contains("cassette"),
        "the swap: {}",
        said(&swap)
    );

    // helm upgrade: a narrower allowlist; the operator rolls, the webhooks stay wired, and a new
    // session pod gets the new set.
    let narrower = ["KILL", "NET_BIND_SERVICE"];
    release.upgrade(&values(&narrower)).await?;
    running_agent(&ns, "agent-after-upgrade", image)?;
    let mut given = agent_capabilities(&ns, "agent-after-upgrade")?;
    given.sort();
    assert_eq!(
        given, narrower,
        "the agent's capabilities after the upgrade"
    );

    // helm uninstall: the webhooks and the operator go; the CRD and the sessions stay (helm
    // never deletes CRDs, so recordings' sessions are not lost with the operator).
    for pod in ["agent", "agent-after-upgrade"] {
        let _ = kubectl(&[
            "delete",
            "pod",
            "-n",
            &ns,
            pod,
            "--grace-period=0",
            "--force",
        ]);
    }
    release.uninstall()?;
    for kind in [
        "mutatingwebhookconfiguration",
        "validatingwebhookconfiguration",
    ] {
        let out = kubectl(&["get", kind, release::RELEASE])?;
        assert!(
            !out.status.success(),
            "{kind} {} is left: {}",
            release::RELEASE,
            said(&out)
        );
    }
    let out = kubectl(&["get", "deployments", "-n", release::NAMESPACE, "-o", "name"])?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "{}",
        said(&out)
    );
    let out = kubectl(&["get", "agentsession", "-n", &ns, "probe", "-o", "name"])?;
    assert!(
        out.status.success(),
        "the session went with the chart: {}",
        said(&out)
    );
    Ok(())
}
