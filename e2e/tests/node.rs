//! The real node: pods scheduled by kube-scheduler, run by the kubelet through containerd and
//! runc, networked by the CNI bridge and kube-proxy, resolved by CoreDNS, with the metadata
//! address sent to the host side as GKE does.
//!
//! Needs root and the packages `make deps` installs; skips with a message otherwise.

use anyhow::{Context, Result, bail};
use cassette_e2e::node::NodeInfo;
use cassette_e2e::upstreams::{PROJECT_ID, TestCa};
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_cassette-e2e");
/// How long a pod may take to reach the phase a test waits for.
const POD_TIMEOUT: Duration = Duration::from_secs(90);

/// Print why the test cannot run here and return from it.
/// `kubectl` as the admin, with a request timeout so nothing hangs.
fn kubectl() -> Command {
    let mut command = cassette_e2e::cluster().kubectl();
    command.arg("--request-timeout=20s");
    command
}

fn kubectl_out(args: &[&str]) -> Result<String> {
    let out = kubectl().args(args).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A pod of the test, deleted (at once) when the test ends.
struct TestPod {
    name: String,
}

impl TestPod {
    fn create(prefix: &str, spec: Value) -> Result<Self> {
        let name = cassette_e2e::unique_name(prefix);
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        });
        cassette_e2e::cluster().apply(&pod.to_string())?;
        Ok(Self { name })
    }

    fn get(&self) -> Result<Value> {
        Ok(serde_json::from_str(&kubectl_out(&[
            "get", "pod", &self.name, "-o", "json",
        ])?)?)
    }

    /// Wait until the pod's phase is one of `phases`; fail early on one that can never lead
    /// there, and with the pod's status and events on timeout.
    fn wait_phase(&self, phases: &[&str]) -> Result<Value> {
        let deadline = Instant::now() + POD_TIMEOUT;
        loop {
            let pod = self.get()?;
            let phase = pod["status"]["phase"].as_str().unwrap_or("").to_string();
            if phases.contains(&phase.as_str()) {
                return Ok(pod);
            }
            let terminal = phase == "Failed" || phase == "Succeeded";
            if terminal || Instant::now() > deadline {
                bail!(
                    "pod {} is {phase:?}, not {phases:?}{}; status: {}\nevents:\n{}",
                    self.name,
                    if terminal { "" } else { " in time" },
                    pod["status"],
                    self.events()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn logs(&self, container: &str) -> Result<String> {
        kubectl_out(&["logs", &self.name, "-c", container])
    }

    fn events(&self) -> String {
        kubectl_out(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={}", self.name),
            "-o",
            "custom-columns=REASON:.reason,MESSAGE:.message",
        ])
        .unwrap_or_else(|e| format!("{e:#}"))
    }
}

impl Drop for TestPod {
    fn drop(&mut self) {
        let _ = kubectl()
            .args([
                "delete",
                "pod",
                &self.name,
                "--grace-period=0",
                "--force",
                "--wait=false",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A container of the agent image running `script` under /bin/sh.
fn shell(node: &NodeInfo, name: &str, script: &str) -> Result<Value> {
    Ok(json!({
        "name": name,
        "image": node.image("agent")?,
        "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", script],
        "securityContext": {"runAsUser": 0},
    }))
}

fn pid_namespace(pid: &str) -> Result<String> {
    Ok(std::fs::read_link(format!("/proc/{pid}/ns/pid"))?
        .to_string_lossy()
        .into_owned())
}

#[test]
fn a_pod_runs_under_runc_in_its_own_pid_namespace() -> Result<()> {
    cassette_e2e::require_node!();
    let node = cassette_e2e::node();
    let pod = TestPod::create(
        "pidns",
        json!({
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [shell(node, "main",
                "readlink /proc/self/ns/pid; tr '\\0' ' ' </proc/1/cmdline; echo; exec sleep 3600")?],
        }),
    )?;
    pod.wait_phase(&["Running"])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let logs = loop {
        let logs = pod.logs("main")?;
        if logs.lines().count() >= 2 || Instant::now() > deadline {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut lines = logs.lines();
    let inside = lines
        .next()
        .context("the container printed nothing")?
        .trim();
    let pid1 = lines.next().context("no PID 1 command line")?.trim();
    let host = pid_namespace("self")?;
    assert!(inside.starts_with("pid:["), "{logs}");
    assert_ne!(
        inside, host,
        "the container shares the host's PID namespace"
    );
    assert!(
        pid1.starts_with("/bin/sh -c"),
        "PID 1 inside is not the container's own command: {pid1:?}"
    );

    // `kubectl exec` goes API server -> kubelet -> containerd's stream server and lands in
    // the same namespace.
    let exec = kubectl_out(&[
        "exec",
        &pod.name,
        "-c",
        "main",
        "--",
        "readlink",
        "/proc/self/ns/pid",
    ])?;
    assert_eq!(exec.trim(), inside);

    // containerd knows it as a runc task of this pod, and its process is in that namespace.
    let tasks = node.ctr().args(["tasks", "ls"]).output()?;
    let tasks = String::from_utf8_lossy(&tasks.stdout).into_owned();
    let mut found = None;
    for line in tasks.lines().skip(1) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [id, pid, status] = words[..] else {
            continue;
        };
        if status == "RUNNING" && pid_namespace(pid).ok().as_deref() == Some(inside) {
            found = Some(id.to_string());
        }
    }
    let id = found.with_context(|| format!("no containerd task in {inside}; tasks:\n{tasks}"))?;
    let info = node.ctr().args(["containers", "info", &id]).output()?;
    let info: Value = serde_json::from_slice(&info.stdout).context("ctr containers info")?;
    assert_eq!(info["Runtime"]["Name"], "io.containerd.runc.v2", "{info}");
    assert_eq!(info["Labels"]["io.kubernetes.pod.name"], pod.name.as_str());
    assert_eq!(info["Labels"]["io.kubernetes.container.name"], "main");
    assert_eq!(info["Image"], node.image("agent")?);
    Ok(())
}

#[test]
fn init_container_native_sidecar_and_main_run_in_order_to_completion() -> Result<()> {
    cassette_e2e::require_node!();
    let node = cassette_e2e::node();
    let mut sidecar = shell(
        node,
        "sidecar",
        "echo sidecar >>/shared/order; trap 'exit 0' TERM; sleep 3600 & wait",
    )?;
    sidecar["restartPolicy"] = "Always".into();
    // Started means it has written its line: the main container starts only after that.
    sidecar["startupProbe"] = json!({
        "exec": {"command": ["grep", "-qx", "sidecar", "/shared/order"]},
        "periodSeconds": 1,
        "failureThreshold": 30,
    });
    let mut init = shell(node, "init", "echo init >>/shared/order")?;
    let mut main = shell(
        node,
        "main",
        "cat /shared/order; test \"$(cat /shared/order)\" = \"$(printf 'init\\nsidecar')\"",
    )?;
    for container in [&mut init, &mut sidecar, &mut main] {
        container["volumeMounts"] = json!([{"name": "shared", "mountPath": "/shared"}]);
    }
    let pod = TestPod::create(
        "order",
        json!({
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "volumes": [{"name": "shared", "emptyDir": {}}],
            "initContainers": [init, sidecar],
            "containers": [main],
        }),
    )?;
    let done = pod.wait_phase(&["Succeeded"])?;
    let main_state = &done["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(main_state["exitCode"], 0, "{}", done["status"]);
    assert_eq!(pod.logs("main")?, "init\nsidecar\n");
    let statuses = done["status"]["initContainerStatuses"]
        .as_array()
        .context("no init container statuses")?;
    assert_eq!(statuses[0]["name"], "init");
    assert_eq!(statuses[0]["state"]["terminated"]["exitCode"], 0);
    assert_eq!(statuses[1]["name"], "sidecar");
    // The kubelet stopped the sidecar once the main container was done.
    assert!(
        statuses[1]["state"]["terminated"].is_object(),
        "{}",
        done["status"]
    );
    Ok(())
}

#[test]
fn pods_resolve_cluster_and_upstream_names_through_cluster_dns() -> Result<()> {
    cassette_e2e::require_node!();
    let node = cassette_e2e::node();
    let service_ip = kubectl_out(&[
        "get",
        "service",
        "kubernetes",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    let pod = TestPod::create(
        "dns",
        json!({
            "restartPolicy": "Never",
            "containers": [shell(node, "main", "cat /etc/resolv.conf; \
                for name in kubernetes.default.svc.cluster.local kubernetes.default storage.googleapis.com metadata.google.internal; do \
                  echo \"$name=$(dig +short +time=2 +tries=2 +search $name | tr '\\n' ' ')\"; \
                done; \
                echo \"getent=$(getent hosts kubernetes.default | cut -d' ' -f1)\"")?],
        }),
    )?;
    pod.wait_phase(&["Succeeded"])?;
    let logs = pod.logs("main")?;
    let answer = |name: &str| {
        logs.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    assert!(
        logs.contains(&format!("nameserver {}", node.dns_ip())),
        "{logs}"
    );
    assert_eq!(
        answer("kubernetes.default.svc.cluster.local"),
        service_ip,
        "{logs}"
    );
    assert_eq!(answer("kubernetes.default"), service_ip, "{logs}");
    assert_eq!(answer("getent"), service_ip, "{logs}");
    assert_eq!(
        answer("storage.googleapis.com"),
        node.host_ip().to_string(),
        "{logs}"
    );
    assert_eq!(
        answer("metadata.google.internal"),
        "169.254.169.254",
        "{logs}"
    );
    Ok(())
}

/// The fake metadata server (`cassette-e2e upstreams`) on the node's host side; killed on drop.
struct HostUpstreams {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl HostUpstreams {
    fn start(node: &NodeInfo) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = TestCa::new()?;
        let leaf = ca.leaf(&["metadata.google.internal"], &[node.host_ip()])?;
        std::fs::write(dir.path().join("tls.crt"), &leaf.cert)?;
        std::fs::write(dir.path().join("tls.key"), &leaf.key)?;
        std::fs::create_dir(dir.path().join("git"))?;
        let ready = dir.path().join("ready");
        let target = node.metadata_target();
        let child = Command::new(BINARY)
            .arg("upstreams")
            .args(["--listen-ip", &target.ip().to_string()])
            .args(["--metadata-ip", &target.ip().to_string()])
            .arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .arg("--git-root")
            .arg(dir.path().join("git"))
            .args(["--token", "node-test-token"])
            .arg("--log")
            .arg(dir.path().join("log.jsonl"))
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        let mut upstreams = Self { child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            if let Some(status) = upstreams.child.try_wait()? {
                bail!("cassette-e2e upstreams exited ({status})");
            }
            if Instant::now() > deadline {
                bail!("cassette-e2e upstreams did not listen in 20s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(upstreams)
    }
}

impl Drop for HostUpstreams {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pods_reach_the_metadata_server_on_169_254_169_254() -> Result<()> {
    cassette_e2e::require_node!();
    let node = cassette_e2e::node();
    let _upstreams = HostUpstreams::start(node)?;
    let pod = TestPod::create(
        "metadata",
        json!({
            "restartPolicy": "Never",
            "containers": [shell(node, "main", "\
                for host in 169.254.169.254 metadata.google.internal; do \
                  echo \"$host=$(curl -sS -m 5 -H 'Metadata-Flavor: Google' http://$host/computeMetadata/v1/project/project-id 2>&1)\"; \
                done")?],
        }),
    )?;
    pod.wait_phase(&["Succeeded"])?;
    let logs = pod.logs("main")?;
    assert!(
        logs.contains(&format!("169.254.169.254={PROJECT_ID}")),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("metadata.google.internal={PROJECT_ID}")),
        "{logs}"
    );
    Ok(())
}

#[test]
fn pods_reach_the_api_server_through_the_kubernetes_service() -> Result<()> {
    cassette_e2e::require_node!();
    let node = cassette_e2e::node();
    let pod = TestPod::create(
        "apiserver",
        json!({
            "restartPolicy": "Never",
            "containers": [shell(node, "main", "\
                sa=/var/run/secrets/kubernetes.io/serviceaccount; \
                curl -sS -m 10 --cacert $sa/ca.crt -H \"Authorization: Bearer $(cat $sa/token)\" \
                  https://kubernetes.default.svc/version")?],
        }),
    )?;
    pod.wait_phase(&["Succeeded"])?;
    let logs = pod.logs("main")?;
    let version: Value = serde_json::from_str(&logs).with_context(|| logs.clone())?;
    assert_eq!(version["gitVersion"], "v1.34.4", "{logs}");
    Ok(())
}

/// Tries the sockets that write below netfilter, and prints what each gave.
const RAW_SOCKETS: &str = r#"
import errno, socket
def attempt(name, *args):
    try:
        socket.socket(*args).close()
        print(name, "OK")
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
attempt("packet", socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
attempt("raw-ip", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
attempt("raw-icmp", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
"#;

/// Run `RAW_SOCKETS` as root in a container with `security_context` on the node; its output.
fn raw_sockets(node: &NodeInfo, prefix: &str, security_context: Value) -> Result<String> {
    let mut container = shell(node, "main", &format!("python3 -c '{RAW_SOCKETS}'"))?;
    container["securityContext"] = security_context;
    let pod = TestPod::create(
        prefix,
        json!({
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [container],
        }),
    )?;
    pod.wait_phase(&["Succeeded"])?;
    pod.logs("main")
}

/// Issue 13.1 on the real runtime: an agent running as root keeps NET_RAW under containerd's
/// default capability set, and an AF_PACKET socket writes frames below the capture rules.
/// The injector's `drop: [ALL]` plus its allowlist takes that away: the agent container, as
/// the operator's webhook hands it back (a server-side dry run, so admission is the real
/// one), gets EPERM for AF_PACKET and raw IP sockets from runc and the kernel.
#[test]
fn a_root_agent_gets_no_raw_sockets_from_the_capabilities_the_injector_gives() -> Result<()> {
    use cassette_e2e::operator::{Operator, OperatorConfig};
    cassette_e2e::require_node!();
    let node = cassette_e2e::node();
    let runtime = tokio::runtime::Runtime::new()?;
    // Only admission runs here (the sidecar it injects is not started), and only in this
    // test's namespace: the other tests' pods and exec run beside it.
    let label = ("cassette-e2e/operator".to_string(), "rawsock".to_string());
    let config = OperatorConfig {
        sidecar_env: vec![("CASSETTE_METADATA".into(), "off".into())],
        namespace_label: Some(label.clone()),
        ..OperatorConfig::default()
    };
    let _operator = runtime.block_on(Operator::start(&config))?;
    let ns = runtime.block_on(async {
        let client = cassette_e2e::cluster().client().await?;
        cassette_e2e::fixtures::namespace(&client, "rawsock").await
    })?;
    kubectl_out(&[
        "label",
        "namespace",
        &ns,
        &format!("{}={}", label.0, label.1),
    ])?;
    cassette_e2e::cluster().apply(
        &json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": "coding-agent", "namespace": ns}},
                {"apiVersion": "cassette.dev/v1alpha1", "kind": "AgentSession",
                 "metadata": {"name": "raw", "namespace": ns},
                 "spec": {"agent": {"serviceAccount": "coding-agent"}, "maxDuration": "1h",
                          "recording": {"sink": "gs://recordings-bucket/agents"}}}
            ]
        })
        .to_string(),
    )?;
    // The agent pod as its author writes it: root, and nothing said about capabilities.
    let authored = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "agent", "namespace": ns, "labels": {"cassette.dev/session": "raw"}},
        "spec": {
            "serviceAccountName": "coding-agent",
            "containers": [{"name": "agent", "image": node.image("agent")?,
                            "command": ["sleep", "3600"], "securityContext": {"runAsUser": 0}}]
        }
    });
    let out = cassette_e2e::cluster().kubectl_with_input(
        &["create", "--dry-run=server", "-o", "json", "-f", "-"],
        &authored.to_string(),
    )?;
    anyhow::ensure!(
        out.status.success(),
        "the injector refused the pod: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected: Value = serde_json::from_slice(&out.stdout)?;
    let agent = injected["spec"]["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "agent"))
        .context("the agent container")?;
    let given = agent["securityContext"].clone();
    assert_eq!(
        given["capabilities"]["drop"],
        json!(["ALL"]),
        "the injector drops every capability first: {given}"
    );
    assert_eq!(given["runAsUser"], 0, "the author's root stays: {given}");

    // The runtime's default set: the hole, as an agent without cassette has it.
    let default = raw_sockets(node, "rawsock-default", json!({"runAsUser": 0}))?;
    assert!(
        default.contains("packet OK"),
        "containerd's default set gives root NET_RAW (otherwise this test shows nothing):\n{default}"
    );
    // What the injector gives: no raw socket of any kind.
    let confined = raw_sockets(node, "rawsock-injected", given.clone())?;
    for socket in ["packet", "raw-ip", "raw-icmp"] {
        assert!(
            confined.contains(&format!("{socket} EPERM")),
            "{socket} with {given}:\n{confined}"
        );
    }
    Ok(())
}
