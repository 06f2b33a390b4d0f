//! The seed's story, end to end, on the harness's control plane: what `tests/full_loop.rs`
//! asserts on and what `make demo` shows.
//!
//! [`World::start`] builds everything around the agent: a network namespace pair with git, a
//! code host's pull-request API, GCS (fake-gcs-server behind a proxy that insists on the
//! Workload Identity token) and the metadata server on the far side; `cassette-operator`
//! running locally with its webhooks; the `agents` namespace with the agent's service
//! account, the chart's own RBAC for it, the fingerprint key and the agent's GitHub token.
//! Then, step by step: alice applies `examples/fix-ci.yaml` ([`World::request_session`]); the
//! agent's pod is created with only the session label ([`World::create_pod`]); the harness's
//! kubelet runs the pod as stored ([`World::run_pod`]); the operator completes the session
//! ([`World::wait_for_completion`]); an auditor reads it ([`World::cassette`]).

use crate::emulators::FakeGcs;
use crate::kubelet::{Kubelet, PodRun};
use crate::netns::{DEFAULT_PATH, Side, Topology};
use crate::operator::{Operator, OperatorConfig};
use crate::relay::Relay;
use crate::upstreams::{Upstreams, UpstreamsConfig};
use crate::{cluster, repo_root};
use anyhow::{Context, Result, bail};
use cassette_api::{AgentSession, AgentSessionStatus, Phase};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The namespace the story plays in (as in `examples/`).
pub const NAMESPACE: &str = "agents";
/// The session (`examples/fix-ci.yaml`).
pub const SESSION: &str = "fix-ci";
/// The agent's pod.
pub const POD: &str = "fix-ci-agent";
/// Who asks for the session.
pub const REQUESTER: &str = "alice@example.com";
/// The image injected as the sidecar; the kubelet runs the workspace's binary for it.
pub const SIDECAR_IMAGE: &str = "ghcr.io/cassette-dev/cassette-sidecar:dev";
/// Where the session's recordings go (the example's sink).
pub const RECORDINGS_BUCKET: &str = "acme-agent-recordings";
/// A bucket the agent reads its CI settings from.
pub const CI_BUCKET: &str = "acme-ci";
/// The agent's own GitHub token: it holds it and uses it; it must not reach the recording.
pub const GITHUB_TOKEN: &str = "ghp_Xk7mR2pQ9vL4nT8wZ3yB6cF1hJ5dG0sA2eKu";
/// A key sitting in the CI bucket the agent reads.
pub const DEPLOY_KEY: &str = "AIzaSyC9x2Lm4Qv7Tn1Rb8Kw5Zp3Hd6Jf0Gs9Ue";
/// The fingerprint key the auditors hold (the Secret `spec.masking.fingerprintKey` names).
const FINGERPRINT_KEY: &str = "auditors-only-fingerprint-key-0123456789";

/// What the agent does, as its container's command: the seed's story with real tools.
pub const STORY: &str = r#"set -euo pipefail
cd /workspace
git clone -q https://git.test/repo.git payments-api
cd payments-api
git checkout -q -b fix-lint
mkdir -p cmd
printf 'package main\nimport "fmt"\nfunc main() {\nfmt.Println("payments")\n}\n' > cmd/main.go
echo "gofmt would change: $(gofmt -l cmd)"
gofmt -w cmd
git add cmd
git commit -q -m "Fix the lint job: gofmt cmd/"
git push -q origin fix-lint
echo "pushed fix-lint"
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

/// Everything around the agent. Fields drop in order: the operator first, the namespaces last.
pub struct World {
    operator: Operator,
    gcs_relay: Relay,
    pub upstreams: Upstreams,
    pub gcs: FakeGcs,
    pub topology: Topology,
    e2e_binary: PathBuf,
    alice: PathBuf,
}

impl World {
    /// Build the world; `e2e_binary` is `cassette-e2e` (upstreams and `contain`).
    pub async fn start(e2e_binary: &Path) -> Result<Self> {
        let client = cluster().client().await?;
        let topology = Topology::create()?;
        let gcs = FakeGcs::start(&topology)?;
        gcs.create_bucket(RECORDINGS_BUCKET)?;
        gcs.create_bucket(CI_BUCKET)?;
        gcs.upload(
            CI_BUCKET,
            "deploy/ci.env",
            format!("ENVIRONMENT=staging\nMAPS_API_KEY={DEPLOY_KEY}\n").as_bytes(),
        )?;
        let mut config = UpstreamsConfig::new(e2e_binary);
        config.gcs_backend = Some(gcs.endpoint());
        let upstreams = Upstreams::start(&topology, &config)?;

        // Configured as an install for this environment would be: the test CA stands in for
        // the web's roots, and Google's storage endpoint is the emulator's proxy.
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
            namespace_label: None,
        })
        .await?;

        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {NAMESPACE}"))?;
        let account: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "coding-agent"}}))?;
        Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
            .create(&PostParams::default(), &account)
            .await?;
        apply_chart_rbac(operator.namespace(), "coding-agent")?;
        create_secret(&client, "cassette-fingerprint-key", "key", FINGERPRINT_KEY).await?;
        create_secret(&client, "github", "token", GITHUB_TOKEN).await?;
        let alice = session_author()?;
        let gcs_relay = Relay::into_namespace(&topology, Side::Net, gcs.addr())?;
        Ok(Self {
            operator,
            gcs_relay,
            upstreams,
            gcs,
            topology,
            e2e_binary: e2e_binary.to_path_buf(),
            alice,
        })
    }

    /// The operator's log so far, for failure messages.
    pub fn operator_log(&self) -> String {
        self.operator.log()
    }

    /// A kubeconfig for alice, who may write AgentSessions in the namespace and nothing more.
    pub fn alice_kubeconfig(&self) -> &Path {
        &self.alice
    }

    /// alice applies `examples/fix-ci.yaml` with kubectl; the session as stored comes back.
    pub async fn request_session(&self) -> Result<AgentSession> {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.alice)
            .args(["apply", "-f"])
            .arg(repo_root().join("examples/fix-ci.yaml"))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "alice's kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(sessions().await?.get(SESSION).await?)
    }

    /// The agent's pod as its owner writes it: nothing about cassette but the label. Returns
    /// the pod as the API server stored it.
    pub async fn create_pod(&self) -> Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(cluster().client().await?, NAMESPACE);
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(agent_pod())?,
        )
        .await
        .context("creating the agent's pod")?;
        Ok(pods.get(POD).await?)
    }

    /// Run the stored pod to its end with the harness's kubelet.
    pub async fn run_pod(&self) -> Result<PodRun> {
        let client = cluster().client().await?;
        let mut kubelet = Kubelet::new(
            &self.topology,
            client,
            &self.e2e_binary,
            cluster().server_addr()?,
        )?;
        kubelet.image(SIDECAR_IMAGE, &crate::workspace_binary("cassette-sidecar")?)?;
        kubelet
            .run(NAMESPACE, POD, Duration::from_secs(180))
            .await
            .with_context(|| format!("operator log:\n{}", self.operator.log()))
    }

    /// Wait until the operator calls the session Completed: the pod ended and everything
    /// shipped.
    pub async fn wait_for_completion(&self) -> Result<AgentSessionStatus> {
        let api = sessions().await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = api.get(SESSION).await?.status.unwrap_or_default();
            if status.phase == Some(Phase::Completed) && status.totals.is_some() {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "the session is not Completed after 60s: {status:#?}\noperator log:\n{}",
                    self.operator.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `kubectl cassette …` as an auditor runs it (admin kubeconfig, GCS through a relay to
    /// the emulator).
    pub fn cassette(&self, args: &[&str]) -> Result<Output> {
        let cli = crate::workspace_binary("kubectl-cassette")?;
        Ok(Command::new(cli)
            .arg("--kubeconfig")
            .arg(cluster().kubeconfig())
            .args(["-n", NAMESPACE])
            .args(args)
            .env(
                "CASSETTE_GCS_ENDPOINT",
                format!("http://{}", self.gcs_relay.addr()),
            )
            .output()?)
    }
}

async fn sessions() -> Result<Api<AgentSession>> {
    Ok(Api::namespaced(cluster().client().await?, NAMESPACE))
}

/// The agent's pod: its image, its command, its identity, a workspace and a GitHub token.
pub fn agent_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": POD, "labels": {"cassette.dev/session": SESSION}},
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
                    {"name": "PATH", "value": format!("/usr/local/go/bin:{DEFAULT_PATH}")},
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

async fn create_secret(client: &kube::Client, name: &str, key: &str, value: &str) -> Result<()> {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {key: value}
    }))?;
    Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .with_context(|| format!("creating Secret {name}"))?;
    Ok(())
}

/// alice may write AgentSessions in the namespace, nothing more; her kubeconfig.
fn session_author() -> Result<PathBuf> {
    cluster().apply(
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "session-author", "namespace": NAMESPACE},
            "rules": [{
                "apiGroups": ["cassette.dev"],
                "resources": ["agentsessions"],
                "verbs": ["create", "get", "list", "watch", "patch", "update"]
            }]
        })
        .to_string(),
    )?;
    cluster().apply(
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "alice", "namespace": NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "session-author"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": REQUESTER}]
        })
        .to_string(),
    )?;
    cluster().user_kubeconfig(REQUESTER, Some("platform"))
}

/// The chart's RBAC, released into the operator's namespace with the agent's service account
/// listed, applied for real: the sidecar reports with exactly what the chart grants.
fn apply_chart_rbac(release_namespace: &str, service_account: &str) -> Result<()> {
    let out = Command::new(crate::helm()?)
        .args(["template", "cassette"])
        .arg(repo_root().join("charts/cassette"))
        .args(["--namespace", release_namespace, "--kube-version", "1.34.0"])
        .args(["--show-only", "templates/rbac.yaml"])
        .arg(format!("--set=agentNamespaces[0].namespace={NAMESPACE}"))
        .arg(format!(
            "--set=agentNamespaces[0].serviceAccounts[0]={service_account}"
        ))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster().apply(&String::from_utf8(out.stdout)?)
}
