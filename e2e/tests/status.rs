//! The sidecar reports its pod's entry into the AgentSession status on a real API server:
//! public key, counts and the last shipped segment; and an auditor verifies the recording
//! against the key in that status with `kubectl cassette verify`. Reviews and a session
//! tightened under a running pod (an open WebSocket included), and a pod stopped while its
//! sink cannot take the recording, run on the real node, in `session_pod.rs`.

use anyhow::{Context, Result};
use cassette_api::AgentSession;
use cassette_e2e::{cluster, fixtures};
use kube::api::{Api, PostParams};
use rustix::process::{Pid, Signal, kill_process};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A child process killed if the test fails before it is stopped.
struct Running(Option<std::process::Child>);

impl Running {
    /// SIGTERM (the sidecar drains, seals, ships and reports a last time) and its exit.
    async fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let mut sidecar = self.0.take().context("the sidecar runs")?;
        let _ = kill_process(Pid::from_child(&sidecar), Signal::TERM);
        Ok(tokio::task::spawn_blocking(move || sidecar.wait()).await??)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP upstream that answers every request with a short body.
async fn upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
                    )
                    .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_reports_its_pod_and_the_recording_verifies_against_it() -> Result<()> {
    let client = cluster().client().await?;
    fixtures::install_crd(&client).await?;
    let ns = fixtures::namespace(&client, "status").await?;
    let dir = tempfile::tempdir()?;
    let sink = format!("file://{}", dir.path().join("sink").display());
    let api: Api<AgentSession> = Api::namespaced(client.clone(), &ns);
    let session: AgentSession = serde_json::from_value(serde_json::json!({
        "apiVersion": "cassette.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": "reporting"},
        "spec": {"maxDuration": "1h", "recording": {"sink": sink}},
    }))?;
    api.create(&PostParams::default(), &session).await?;

    let upstream = upstream().await;
    let (mut child, capture) = start_sidecar(&ns, "reporting", &sink, dir.path(), upstream).await?;
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-x"])
        .arg(format!("http://127.0.0.1:{capture}"))
        .arg("http://echo.test/")
        .output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello");

    // SIGTERM: seal, ship, and a last report.
    let status = child.stop().await?;
    assert!(status.success(), "the sidecar exited with {status}");

    let stored = api.get("reporting").await?;
    let pods = stored.status.context("a status")?.pods;
    let pod = pods
        .iter()
        .find(|p| p.name == "agent-0")
        .context("the pod's entry")?;
    assert_eq!(pod.uid.as_deref(), Some("u1"));
    assert_eq!(pod.exchanges, 1);
    assert_eq!(pod.spool_bytes, 0, "everything shipped");
    let last = pod
        .last_shipped_segment
        .as_deref()
        .context("a shipped segment")?;
    assert_eq!(
        cassette_recording::segment::parse_index(last),
        Some(1),
        "the first segment is the last shipped: {last}"
    );
    let key = pod.public_key.clone().context("a public key")?;

    // The auditor's check, with the key from the status.
    let cli = cassette_e2e::workspace_binary("kubectl-cassette")?;
    let out = Command::new(cli)
        .arg("--kubeconfig")
        .arg(cluster().kubeconfig())
        .args(["verify", "reporting", "-n", &ns])
        .output()?;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verify failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("OK"), "{said}");
    assert!(
        said.contains(&key[..8]) || said.contains("checked against the AgentSession status"),
        "{said}"
    );
    Ok(())
}

/// Run the sidecar for `session` as an explicit proxy on a free port, reporting through the
/// test cluster's kubeconfig; `echo.test` goes to the plain upstream on `upstream`.
async fn start_sidecar(
    ns: &str,
    session: &str,
    sink: &str,
    dir: &Path,
    upstream: u16,
) -> Result<(Running, u16)> {
    start_sidecar_with(ns, session, sink, dir, upstream, None, &[]).await
}

/// [`start_sidecar`], with `spec` in its environment instead of the session's spec as it is
/// now (a pod injected before the session changed), and `extra` arguments.
async fn start_sidecar_with(
    ns: &str,
    session: &str,
    sink: &str,
    dir: &Path,
    upstream: u16,
    spec: Option<&str>,
    extra: &[String],
) -> Result<(Running, u16)> {
    let sidecar = cassette_e2e::workspace_binary("cassette-sidecar")?;
    let (capture, admin) = (free_port(), free_port());
    let object = Api::<AgentSession>::namespaced(cluster().client().await?, ns)
        .get(session)
        .await?;
    let spec = match spec {
        Some(spec) => spec.to_string(),
        None => serde_json::to_string(&object.spec)?,
    };
    // The expiry, as the injector passes it (every session here lasts an hour).
    anyhow::ensure!(object.spec.max_duration.as_deref() == Some("1h"));
    let created = object
        .metadata
        .creation_timestamp
        .context("a creation time")?
        .0;
    let expires_at = created + k8s_openapi::jiff::SignedDuration::from_hours(1);
    let child = Running(Some(
        Command::new(sidecar)
            .arg("run")
            .args([
                "--session",
                session,
                "--namespace",
                ns,
                "--pod",
                "agent-0",
                "--pod-uid",
                "u1",
            ])
            .arg(format!("--sink={sink}"))
            .arg(format!("--spool={}", dir.join("spool").display()))
            .arg(format!("--ca-bundle={}", dir.join("bundle.pem").display()))
            .arg(format!("--capture-addr=127.0.0.1:{capture}"))
            .arg(format!("--metadata-addr=127.0.0.1:{}", free_port()))
            .arg(format!("--admin-addr=127.0.0.1:{admin}"))
            // Both tests run a sidecar at once: no listener on a fixed port.
            .arg(format!("--dns-addr=127.0.0.1:{}", free_port()))
            .arg(format!("--inbound-addr=127.0.0.1:{}", free_port()))
            .arg(format!(
                "--upstream-override=echo.test=http://127.0.0.1:{upstream}"
            ))
            .arg("--metadata=off")
            .arg(format!("--session-spec={spec}"))
            .arg(format!("--expires-at={expires_at}"))
            .arg("--kubeconfig")
            .arg(cluster().kubeconfig())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    ));
    // Ready is what the kubelet waits for: the bundle written and every listener open.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if cassette_e2e::operator::http_get(admin, "/readyz").is_ok_and(|(s, _)| s == 200) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the sidecar did not get ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((child, capture))
}

/// curl through the sidecar, on a thread (it may be held for review).
fn curl(capture: u16, url: &str) -> std::thread::JoinHandle<String> {
    let url = url.to_string();
    std::thread::spawn(move || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "60", "-x"])
            .arg(format!("http://127.0.0.1:{capture}"))
            .arg(&url)
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

/// A namespace named after `prefix` with AgentSession `name` (an hour long, recording into a
/// fresh directory, `policy` as given): its API, the directory and the sink URL.
async fn new_session(
    prefix: &str,
    name: &str,
    policy: serde_json::Value,
) -> Result<(Api<AgentSession>, String, tempfile::TempDir, String)> {
    let client = cluster().client().await?;
    fixtures::install_crd(&client).await?;
    let ns = fixtures::namespace(&client, prefix).await?;
    let dir = tempfile::tempdir()?;
    let sink = format!("file://{}", dir.path().join("sink").display());
    let api: Api<AgentSession> = Api::namespaced(client, &ns);
    let mut spec = serde_json::json!({"maxDuration": "1h", "recording": {"sink": sink}});
    if !policy.is_null() {
        spec["policy"] = policy;
    }
    let session: AgentSession = serde_json::from_value(serde_json::json!({
        "apiVersion": "cassette.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": name},
        "spec": spec,
    }))?;
    api.create(&PostParams::default(), &session).await?;
    Ok((api, ns, dir, sink))
}

/// What curl through the sidecar answers now.
async fn fetch(capture: u16, path: &str) -> String {
    let url = format!("http://echo.test{path}");
    tokio::task::spawn_blocking(move || curl(capture, &url).join().unwrap())
        .await
        .unwrap()
}

/// Issue 13.7, a restart in the middle: a sidecar that starts (or restarts after a crash)
/// from a pod injected before the session was tightened must not carry a single request under
/// the spec frozen into its environment. The first request it answers is already refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sidecar_applies_the_session_as_it_is_now() -> Result<()> {
    let (api, ns, dir, sink) =
        new_session("restart", "restarting", serde_json::Value::Null).await?;
    // The spec as the injector saw it, then the admin adds a deny rule.
    let stale = serde_json::to_string(&api.get("restarting").await?.spec)?;
    api.patch(
        "restarting",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"spec": {"policy": {"rules": [
            {"name": "not-after-restart", "action": "deny", "match": {"host": "echo.test", "path": "/secret-place"}}
        ]}}})),
    )
    .await?;
    let upstream = upstream().await;
    let (_sidecar, capture) = start_sidecar_with(
        &ns,
        "restarting",
        &sink,
        dir.path(),
        upstream,
        Some(&stale),
        &[],
    )
    .await?;
    // The first answer the sidecar gives at all (its capture port may not listen yet).
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let said = fetch(capture, "/secret-place").await;
        if !said.is_empty() {
            break said;
        }
        anyhow::ensure!(Instant::now() < deadline, "the sidecar never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        first.contains("not-after-restart"),
        "the first request went through under the stale spec: {first:?}"
    );
    Ok(())
}
