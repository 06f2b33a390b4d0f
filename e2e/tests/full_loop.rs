//! The whole loop on a real API server, with nothing standing in for cassette itself:
//!
//! 1. the CRD and the webhooks are installed and `cassette-operator` runs as a local process;
//!    the sidecar's RBAC is the chart's own (`helm template`);
//! 2. alice, a named user, creates the `fix-ci` AgentSession and is stamped as its requester;
//! 3. a pod labelled `cassette.dev/session=fix-ci` is created; the API server stores it
//!    injected;
//! 4. the harness's kubelet runs *the stored pod* in a network namespace — `cassette-init`,
//!    the native sidecar as UID 1337 with the pod's only token, then the agent's own command as
//!    UID 1000 — with the env and the mounts that spec gives them;
//! 5. the agent plays the seed's story with real tools: git clone, a branch, gofmt, a commit,
//!    a push of the branch, a pull request through a code host's API (with a GitHub token the
//!    agent holds), an object with a secret read with gcloud, and a push to main that policy
//!    refuses;
//! 6. the sidecar ships the recording to GCS (fake-gcs-server behind a proxy that demands the
//!    Workload Identity token) and reports its pod entry into the status;
//! 7. the operator sets the phase and the totals, `kubectl get agentsessions` shows them,
//!    `kubectl cassette show` prints the timeline and `kubectl cassette verify` passes.
//!
//! The webhook's refusals (missing or expired session, hostNetwork, privileged, NET_ADMIN,
//! NET_RAW, UID 1337, shareProcessNamespace) run on the same kind of control plane in
//! `tests/operator.rs`.
//!
//! Needs root (namespaces, iptables) and the harness's own control plane (named users);
//! skips with a message otherwise.

use anyhow::{Context, Result, bail};
use cassette_api::{AgentSession, Phase};
use cassette_e2e::emulators::FakeGcs;
use cassette_e2e::kubelet::Kubelet;
use cassette_e2e::netns::{self, Side, Topology};
use cassette_e2e::operator::{Operator, OperatorConfig};
use cassette_e2e::relay::Relay;
use cassette_e2e::upstreams::{Upstreams, UpstreamsConfig};
use cassette_e2e::{cluster, fixtures, repo_root};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const E2E_BINARY: &str = env!("CARGO_BIN_EXE_cassette-e2e");
const SIDECAR_IMAGE: &str = "ghcr.io/cassette-dev/cassette-sidecar:e2e";
const SESSION: &str = "fix-ci";
const RECORDINGS_BUCKET: &str = "acme-agent-recordings";
const CI_BUCKET: &str = "acme-ci";
/// The agent's own GitHub token: it holds it, uses it, and it must not reach the recording.
const GITHUB_TOKEN: &str = "ghp_Xk7mR2pQ9vL4nT8wZ3yB6cF1hJ5dG0sA2eKu";
/// A deploy key sitting in a CI bucket the agent reads.
const DEPLOY_KEY: &str = "AIzaSyC9x2Lm4Qv7Tn1Rb8Kw5Zp3Hd6Jf0Gs9Ue";

/// What the agent does, as its container's command: the seed's story.
const STORY: &str = r#"
set -euo pipefail
cd /workspace
git clone -q https://git.test/repo.git payments-api
cd payments-api
git checkout -q -b fix-lint
mkdir -p cmd
printf 'package main\nimport "fmt"\nfunc main() {\nfmt.Println("payments")\n}\n' > cmd/main.go
echo "gofmt: $(gofmt -l cmd)"
gofmt -w cmd
git add cmd
git commit -q -m "Fix the lint job: gofmt cmd/"
git push -q origin fix-lint
curl -sS --fail-with-body -X POST https://api.git.test/repos/acme/payments-api/pulls \
  -H "Authorization: Bearer $GITHUB_TOKEN" -H 'Content-Type: application/json' \
  -d '{"title": "Fix the lint job", "head": "fix-lint", "base": "main"}'
echo
gcloud storage cat gs://acme-ci/deploy/ci.env
if git push -q origin fix-lint:main 2> push-main.err; then
  echo "pushed to main"
  exit 1
fi
cat push-main.err
echo "story done"
"#;

macro_rules! require_root_and_local_plane {
    () => {
        if let Some(reason) = netns::unavailable_reason() {
            println!("skipped: {reason}");
            return Ok(());
        }
        if !cluster().is_local() {
            println!("skipped: the full loop runs pods itself, on the harness's control plane");
            return Ok(());
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_session_from_request_to_verified_recording() -> Result<()> {
    require_root_and_local_plane!();
    let client = cluster().client().await?;

    // The world the pod talks to: git, a code host's API, GCS and the metadata server.
    let topology = Topology::create()?;
    let gcs = FakeGcs::start(&topology)?;
    gcs.create_bucket(RECORDINGS_BUCKET)?;
    gcs.create_bucket(CI_BUCKET)?;
    gcs.upload(
        CI_BUCKET,
        "deploy/ci.env",
        format!("ENVIRONMENT=staging\nMAPS_API_KEY={DEPLOY_KEY}\n").as_bytes(),
    )?;
    let mut upstreams_config = UpstreamsConfig::new(E2E_BINARY);
    upstreams_config.gcs_backend = Some(gcs.endpoint());
    let upstreams = Upstreams::start(&topology, &upstreams_config)?;

    // 1. The operator, configured as an install for this environment would be: the test CA
    //    stands in for the web's roots, and Google's storage endpoint is the emulator's proxy
    //    (which insists on the Workload Identity token, as GCS would).
    let operator = Operator::start(&OperatorConfig {
        sidecar_image: SIDECAR_IMAGE.into(),
        sidecar_env: vec![
            (
                "CASSETTE_UPSTREAM_CA".into(),
                upstreams.ca_pem_path().display().to_string(),
            ),
            (
                "CASSETTE_UPSTREAM_OVERRIDES".into(),
                format!("storage.googleapis.com={}", upstreams.gcs_proxy_endpoint()),
            ),
            (
                "CASSETTE_GCS_ENDPOINT".into(),
                upstreams.gcs_proxy_endpoint(),
            ),
        ],
    })
    .await?;
    let ns = fixtures::namespace(&client, "full-loop").await?;
    create_service_account(&client, &ns, "coding-agent").await?;
    apply_chart_rbac(operator.namespace(), &ns, "coding-agent")?;
    create_secret(
        &client,
        &ns,
        "cassette-fingerprint-key",
        "key",
        "auditors-only-0123456789abcdef",
    )
    .await?;
    create_secret(&client, &ns, "github", "token", GITHUB_TOKEN).await?;

    // 2. alice asks for the session; the webhook stamps her as its requester.
    let alice = alice(&ns).await?;
    let sessions: Api<AgentSession> = Api::namespaced(alice, &ns);
    let session: AgentSession = serde_json::from_value(json!({
        "apiVersion": "cassette.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": SESSION},
        "spec": {
            "agent": {"serviceAccount": "coding-agent", "description": "Fix the lint job and open a pull request."},
            "maxDuration": "2h",
            "recording": {"sink": format!("gs://{RECORDINGS_BUCKET}/sessions"), "durability": "strict"},
            "masking": {"fingerprintKey": {"name": "cassette-fingerprint-key", "key": "key"}},
            "policy": {"rules": [
                {"name": "protect-main", "action": "deny", "match": {"gitRef": "refs/heads/main"}},
                {"name": "no-bucket-deletes", "action": "deny", "match": {"permission": "storage.buckets.delete"}}
            ]}
        }
    }))?;
    let created = sessions.create(&PostParams::default(), &session).await?;
    assert_eq!(
        created
            .spec
            .requested_by
            .as_ref()
            .map(|r| r.username.as_str()),
        Some("alice@example.com")
    );

    // 3. The agent's pod, as its owner writes it: nothing about cassette but the label.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(agent_pod())?,
    )
    .await
    .context("creating the agent's pod")?;
    let stored = pods.get("fix-ci-agent").await?;
    let spec = stored.spec.as_ref().context("a spec")?;
    let init: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["cassette-init", "cassette-sidecar"], "{stored:#?}");

    // 4. The harness runs the stored pod.
    let mut kubelet = Kubelet::new(
        &topology,
        client.clone(),
        E2E_BINARY.as_ref(),
        api_server()?,
    )?;
    kubelet.image(
        SIDECAR_IMAGE,
        &cassette_e2e::workspace_binary("cassette-sidecar")?,
    )?;
    let run = kubelet
        .run(&ns, "fix-ci-agent", Duration::from_secs(180))
        .await
        .with_context(|| format!("operator log:\n{}", operator.log()))?;
    let said = run.log("agent");
    let sidecar_log = run.log("cassette-sidecar");
    assert_eq!(
        run.exit_codes.get("agent"),
        Some(&0),
        "the agent's story failed:\n{said}\nsidecar:\n{sidecar_log}\nupstreams:\n{}",
        upstreams.output_tail()
    );
    assert_eq!(run.exit_codes.get("cassette-init"), Some(&0));
    assert_eq!(
        run.exit_codes.get("cassette-sidecar"),
        Some(&0),
        "the sidecar did not stop cleanly:\n{sidecar_log}"
    );

    // 5. What the agent saw: gofmt found the file, the pull request was opened, the object
    //    read as it is, and the push to main refused with the session's name.
    assert!(said.contains("gofmt: cmd/main.go"), "{said}");
    assert!(
        said.contains("\"number\":1") && said.contains("\"head\":{\"ref\":\"fix-lint\""),
        "{said}"
    );
    assert!(said.contains(DEPLOY_KEY), "{said}");
    assert!(
        said.contains("[remote rejected]") && said.contains("protected by AgentSession \"fix-ci\""),
        "{said}"
    );
    assert!(said.contains("story done"), "{said}");

    // Google saw the real token only; the agent never had it.
    let log = upstreams.log_entries()?;
    let storage: Vec<_> = log.iter().filter(|e| e.listener == "gcs").collect();
    assert!(!storage.is_empty(), "nothing reached GCS: {log:#?}");
    assert!(
        storage
            .iter()
            .all(|e| e.bearer_token() == Some(upstreams.token())),
        "a request reached GCS without the real token: {storage:#?}"
    );
    assert!(!said.contains(upstreams.token()));

    // 6–7. The status: the sidecar's entry, then the operator's phase and totals.
    let api: Api<AgentSession> = Api::namespaced(client.clone(), &ns);
    let status = wait_for_completion(&api, &operator).await?;
    let totals = status.totals.context("totals")?;
    assert!(totals.exchanges >= 6, "{totals:?}");
    assert!(
        totals.blocked >= 1,
        "the push to main counts as blocked: {totals:?}"
    );
    assert!(
        totals.masked >= 2,
        "the GitHub token and the deploy key: {totals:?}"
    );
    let pod = status.pods.first().context("the pod's entry")?;
    assert_eq!(pod.name, "fix-ci-agent");
    assert_eq!(pod.spool_bytes, 0, "everything shipped");

    let table = kubectl(&["get", "agentsessions", "-n", &ns])?;
    println!("{table}");
    assert!(
        table.contains("fix-ci") && table.contains("Completed"),
        "{table}"
    );
    assert!(table.contains("alice@example.com"), "{table}");

    // The auditor: the timeline, then the verification against the key in the status.
    let gcs_from_here = Relay::into_namespace(&topology, Side::Net, gcs.addr())?;
    let show = cassette(&["show", SESSION, "-n", &ns], &gcs_from_here)?;
    println!("{show}");
    for needle in [
        "git.test",
        "api.git.test",
        "storage.googleapis.com",
        "refs/heads/main",
    ] {
        assert!(show.contains(needle), "show has no {needle}:\n{show}");
    }
    let verify = cassette(&["verify", SESSION, "-n", &ns], &gcs_from_here)?;
    println!("{verify}");
    assert!(verify.contains("OK"), "{verify}");

    // Neither secret is anywhere in the shipped recording.
    let found = cassette_search(&ns, &gcs_from_here)?;
    assert!(found.contains("api.git.test"), "{found}");
    let raw = raw_recording(&gcs)?;
    assert!(!raw.contains(GITHUB_TOKEN) && !raw.contains(DEPLOY_KEY));
    Ok(())
}

/// The agent's pod: its image, its command, its identity, a workspace and a GitHub token.
fn agent_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "fix-ci-agent", "labels": {"cassette.dev/session": SESSION}},
        "spec": {
            "serviceAccountName": "coding-agent",
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": true},
            "containers": [{
                "name": "agent",
                "image": "ghcr.io/acme/coding-agent:2026.11",
                "command": ["bash", "-c", STORY],
                "workingDir": "/workspace",
                "env": [
                    {"name": "HOME", "value": "/workspace"},
                    {"name": "PATH", "value": format!("/usr/local/go/bin:{}", netns::DEFAULT_PATH)},
                    {"name": "CLOUDSDK_CONFIG", "value": "/workspace/.config/gcloud"},
                    {"name": "GIT_CONFIG_NOSYSTEM", "value": "1"},
                    {"name": "GIT_TERMINAL_PROMPT", "value": "0"},
                    {"name": "GIT_AUTHOR_NAME", "value": "coding-agent"},
                    {"name": "GIT_AUTHOR_EMAIL", "value": "agent@acme.example"},
                    {"name": "GIT_COMMITTER_NAME", "value": "coding-agent"},
                    {"name": "GIT_COMMITTER_EMAIL", "value": "agent@acme.example"},
                    {"name": "GITHUB_TOKEN", "valueFrom": {"secretKeyRef": {"name": "github", "key": "token"}}}
                ],
                "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}]
            }],
            "volumes": [{"name": "workspace", "emptyDir": {}}]
        }
    })
}

/// The API server's address on loopback, from the admin kubeconfig.
fn api_server() -> Result<std::net::SocketAddr> {
    let kubeconfig = kube::config::Kubeconfig::read_from(cluster().kubeconfig())?;
    let server = kubeconfig
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .context("a server in the kubeconfig")?;
    let authority = server
        .strip_prefix("https://")
        .context("an https server")?
        .trim_end_matches('/');
    Ok(authority.parse()?)
}

async fn create_service_account(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &account)
        .await?;
    Ok(())
}

async fn create_secret(
    client: &kube::Client,
    ns: &str,
    name: &str,
    key: &str,
    value: &str,
) -> Result<()> {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {key: value}
    }))?;
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await?;
    Ok(())
}

/// alice may create and read sessions in the namespace, nothing more.
async fn alice(ns: &str) -> Result<kube::Client> {
    kubectl_apply(&json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "session-author", "namespace": ns},
        "rules": [{"apiGroups": ["cassette.dev"], "resources": ["agentsessions"], "verbs": ["create", "get"]}]
    }).to_string())?;
    kubectl_apply(&json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "alice", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "session-author"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice@example.com"}]
    }).to_string())?;
    cassette_e2e::client_from(&cluster().user_kubeconfig("alice@example.com", Some("platform"))?)
        .await
}

/// The chart's RBAC, released into the operator's namespace with this namespace's agent
/// service account listed, applied for real.
fn apply_chart_rbac(release_ns: &str, ns: &str, service_account: &str) -> Result<()> {
    let script = repo_root().join("e2e/controlplane/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "{} failed", script.display());
    let helm = String::from_utf8(out.stdout)?
        .lines()
        .find_map(|l| l.strip_prefix("HELM=").map(str::to_string))
        .context("build.sh printed no HELM= line")?;
    let out = Command::new(helm)
        .args(["template", "cassette"])
        .arg(repo_root().join("charts/cassette"))
        .args(["--namespace", release_ns, "--kube-version", "1.34.0"])
        .args(["--show-only", "templates/rbac.yaml"])
        .arg(format!("--set=agentNamespaces[0].namespace={ns}"))
        .arg(format!(
            "--set=agentNamespaces[0].serviceAccounts[0]={service_account}"
        ))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    kubectl_apply(&String::from_utf8(out.stdout)?)
}

fn kubectl_apply(manifest: &str) -> Result<()> {
    let mut child = cluster()
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(manifest.as_bytes())?;
    anyhow::ensure!(child.wait()?.success(), "kubectl apply failed");
    Ok(())
}

fn kubectl(args: &[&str]) -> Result<String> {
    let out = cluster().kubectl().args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Wait until the operator calls the session Completed (the pod ended, everything shipped).
async fn wait_for_completion(
    api: &Api<AgentSession>,
    operator: &Operator,
) -> Result<cassette_api::AgentSessionStatus> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = api.get(SESSION).await?.status.unwrap_or_default();
        if status.phase == Some(Phase::Completed) && status.totals.is_some() {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!(
                "the session is not Completed after 60s: {status:#?}\noperator log:\n{}",
                operator.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `kubectl cassette …` as an auditor runs it, reading GCS through `gcs`.
fn cassette(args: &[&str], gcs: &Relay) -> Result<String> {
    let cli = cassette_e2e::workspace_binary("kubectl-cassette")?;
    let out = Command::new(cli)
        .arg("--kubeconfig")
        .arg(cluster().kubeconfig())
        .args(args)
        .env("CASSETTE_GCS_ENDPOINT", format!("http://{}", gcs.addr()))
        .output()?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "kubectl cassette {args:?} failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(said)
}

/// `kubectl cassette search --secret-file`: the auditor knows the leaked token and asks where
/// it went; the recording holds its keyed fingerprint (the key is read from the Secret the
/// session names), not the token.
fn cassette_search(ns: &str, gcs: &Relay) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("leaked.txt");
    std::fs::write(&secret, GITHUB_TOKEN)?;
    let secret = secret.display().to_string();
    cassette(
        &["search", SESSION, "-n", ns, "--secret-file", &secret],
        gcs,
    )
}

/// Every shipped object of the recording, decompressed, as one string.
fn raw_recording(gcs: &FakeGcs) -> Result<String> {
    let listing = gcs.list(RECORDINGS_BUCKET, "sessions/")?;
    anyhow::ensure!(!listing.is_empty(), "nothing was shipped");
    let mut all = String::new();
    for name in listing {
        let bytes = gcs.read_object(RECORDINGS_BUCKET, &name)?;
        let text = cassette_recording::read::decode_segment(&name, &bytes)?;
        all.push_str(&String::from_utf8_lossy(&text));
    }
    Ok(all)
}
