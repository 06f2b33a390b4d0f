//! Pods on the real node as a test looks at them: `kubectl` as the admin, `kubectl exec` into a
//! container, a pod's status, and waiting until every container is ready.

use crate::cluster;
use anyhow::{Result, bail};
use serde_json::Value;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// How long a pod may take to start on the node: image unpacking, the capture rules, the
/// recorder's start, the agent's readiness probe.
pub const POD_TIMEOUT: Duration = Duration::from_secs(120);

/// `kubectl <args>` as the admin, with nothing on its stdin and a bound on each request.
pub fn kubectl(args: &[&str]) -> Result<Output> {
    Ok(cluster()
        .kubectl()
        .arg("--request-timeout=90s")
        .args(args)
        .stdin(Stdio::null())
        .output()?)
}

/// What a command printed, stdout then stderr.
pub fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubectl exec` of `command` in a container of a pod.
pub fn exec(ns: &str, pod: &str, container: &str, command: &[&str]) -> Result<Output> {
    let mut args = vec!["exec", "-n", ns, pod, "-c", container, "--"];
    args.extend_from_slice(command);
    kubectl(&args)
}

/// A container's log, or why it could not be read (for failure messages).
pub fn logs(ns: &str, pod: &str, container: &str) -> String {
    kubectl(&["logs", "-n", ns, pod, "-c", container])
        .map(|o| said(&o))
        .unwrap_or_else(|e| format!("kubectl logs: {e}"))
}

/// The pod as the API server has it.
pub fn get(ns: &str, name: &str) -> Result<Value> {
    let out = kubectl(&["get", "pod", "-n", ns, name, "-o", "json"])?;
    anyhow::ensure!(out.status.success(), "kubectl get pod: {}", said(&out));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The status of one of the pod's containers, init containers (the native sidecar) included.
pub fn container_status<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    ["initContainerStatuses", "containerStatuses"]
        .iter()
        .filter_map(|k| pod["status"][k].as_array())
        .flatten()
        .find(|c| c["name"] == name)
}

/// Wait until the pod runs with every container ready; the pod as it is then.
pub fn wait_ready(ns: &str, name: &str) -> Result<Value> {
    let deadline = Instant::now() + POD_TIMEOUT;
    loop {
        let pod = get(ns, name)?;
        let ready = pod["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["ready"] == true));
        if pod["status"]["phase"] == "Running" && ready {
            return Ok(pod);
        }
        if Instant::now() > deadline {
            bail!(
                "pod {ns}/{name} is not ready after {POD_TIMEOUT:?}: {}\nsidecar:\n{}",
                pod["status"],
                logs(ns, name, "cassette-sidecar")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
