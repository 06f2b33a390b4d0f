//! `cassette-operator` as a local process against the test cluster, the way a local install
//! runs it: its webhooks registered by URL on loopback (failing closed), its serving
//! certificate made by itself and patched into them, and the tests waiting until the API
//! server can call it.

use crate::controlplane::dying_with_spawner;
use crate::{cluster, fixtures, workspace_binary};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// How the operator is started.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// The image it injects (the e2e harness maps it back to the sidecar binary).
    pub sidecar_image: String,
    /// `--sidecar-env NAME=VALUE` pairs: configuration every injected sidecar gets.
    pub sidecar_env: Vec<(String, String)>,
    /// A label `(key, value)`: when set, its webhooks apply only in namespaces that carry it
    /// (an operator started beside other tests leaves their pods, exec and port-forward
    /// alone, also while it starts and after it stops).
    pub namespace_label: Option<(String, String)>,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            sidecar_image: "cassette-sidecar:e2e".into(),
            sidecar_env: Vec::new(),
            namespace_label: None,
        }
    }
}

/// A running operator; killed when dropped or when the test binary exits.
pub struct Operator {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    log: PathBuf,
    metrics_port: u16,
    namespace: String,
    configuration: String,
}

impl Operator {
    /// Install the CRD, register the webhooks, start the operator and wait until it has
    /// patched its CA into every webhook and says it is ready.
    pub async fn start(config: &OperatorConfig) -> Result<Self> {
        let cluster = cluster();
        let client = cluster.client().await?;
        fixtures::install_crd(&client).await?;
        let namespace = fixtures::namespace(&client, "cassette-system").await?;
        let webhook_port = free_port()?;
        let metrics_port = free_port()?;
        let configuration = crate::unique_name("cassette-e2e");
        register_webhooks(
            &client,
            &configuration,
            webhook_port,
            config.namespace_label.as_ref(),
        )
        .await?;

        let dir = tempfile::tempdir()?;
        let log = dir.path().join("operator.log");
        let out = std::fs::File::create(&log)?;
        let mut command = dying_with_spawner(workspace_binary("cassette-operator")?);
        command
            .arg("run")
            .args(["--namespace", &namespace])
            .args(["--pod-name", "operator-e2e-0"])
            .args(["--webhook-addr", &format!("127.0.0.1:{webhook_port}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--sidecar-image", &config.sidecar_image])
            .args(["--webhook-host", "127.0.0.1"])
            .args(["--mutating-webhook-configuration", &configuration])
            .args(["--validating-webhook-configuration", &configuration])
            .args(["--log-format", "pretty"])
            // Sweep on every reconcile at most a second apart, so retention tests need not
            // wait an hour; sessions without a retention are never swept.
            .args(["--retention-interval", "1s"])
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (name, value) in &config.sidecar_env {
            command.args(["--sidecar-env", &format!("{name}={value}")]);
        }
        // The operator dies with the test binary (`setpriv --pdeathsig`). The parent-death
        // signal fires when the spawning *thread* ends; tests' threads end with each test, so a
        // thread that lives as long as the binary spawns the operator.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("operator".into())
            .spawn(move || {
                let _ = tx.send(command.spawn());
                loop {
                    std::thread::park();
                }
            })?;
        let child = rx.recv()?.context("starting cassette-operator")?;
        let operator = Operator {
            child: Some(child),
            _dir: dir,
            log,
            metrics_port,
            namespace,
            configuration,
        };
        operator.wait_until_wired(&client).await?;
        Ok(operator)
    }

    /// Its port for `/metrics`, `/healthz` and `/readyz` on loopback.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// The namespace it runs in (its Lease and serving-certificate Secret live there).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_until_wired(&self, client: &kube::Client) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        loop {
            let m = mutating.get(&self.configuration).await?;
            let v = validating.get(&self.configuration).await?;
            let patched = m
                .webhooks
                .iter()
                .flatten()
                .all(|w| w.client_config.ca_bundle.is_some())
                && v.webhooks
                    .iter()
                    .flatten()
                    .all(|w| w.client_config.ca_bundle.is_some());
            if patched && http_get(self.metrics_port, "/readyz").is_ok_and(|(s, _)| s == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the operator did not wire its webhooks within 60s; its log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        // Its webhooks fail closed: left registered with nobody behind them, they would refuse
        // the session pods, exec and port-forward of every test after this one.
        let _ = cluster()
            .kubectl()
            .args(["delete", "--ignore-not-found", "--wait=false"])
            .arg(format!(
                "mutatingwebhookconfiguration/{}",
                self.configuration
            ))
            .arg(format!(
                "validatingwebhookconfiguration/{}",
                self.configuration
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Register [`webhook_configurations`].
async fn register_webhooks(
    client: &kube::Client,
    name: &str,
    port: u16,
    only_in: Option<&(String, String)>,
) -> Result<()> {
    let (mutating, validating) = webhook_configurations(name, port, only_in)?;
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mutating)
        .await
        .context("creating the MutatingWebhookConfiguration")?;
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &validating)
        .await
        .context("creating the ValidatingWebhookConfiguration")?;
    Ok(())
}

/// The webhook configurations as a local install has them: the chart's webhooks (a test
/// compares them), reached by URL instead of the Service, failing closed; only in namespaces
/// labelled `only_in`, when given.
pub fn webhook_configurations(
    name: &str,
    port: u16,
    only_in: Option<&(String, String)>,
) -> Result<(MutatingWebhookConfiguration, ValidatingWebhookConfiguration)> {
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let common = |webhook: &str, path: &str, resource: &str, operations: Value| {
        json!({
            "name": webhook,
            "clientConfig": {"url": url(path)},
            "rules": [{
                "apiGroups": [if resource == "pods" { "" } else { "cassette.dev" }],
                "apiVersions": [if resource == "pods" { "v1" } else { "v1alpha1" }],
                "operations": operations,
                "resources": [resource],
                "scope": "Namespaced"
            }],
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10
        })
    };
    let mut inject = common("inject.cassette.dev", "/inject", "pods", json!(["CREATE"]));
    inject["objectSelector"] =
        json!({"matchExpressions": [{"key": "cassette.dev/session", "operator": "Exists"}]});
    inject["reinvocationPolicy"] = json!("IfNeeded");
    let mut enforce = common("enforce.cassette.dev", "/inject", "pods", json!(["CREATE"]));
    enforce["namespaceSelector"] = json!({"matchLabels": {"cassette.dev/enforce": "true"}});
    enforce["objectSelector"] =
        json!({"matchExpressions": [{"key": "cassette.dev/session", "operator": "DoesNotExist"}]});
    let stamp = common(
        "requester.agentsessions.cassette.dev",
        "/mutate-agentsession",
        "agentsessions",
        json!(["CREATE", "UPDATE"]),
    );
    let validate = common(
        "agentsessions.cassette.dev",
        "/validate-agentsession",
        "agentsessions",
        json!(["CREATE", "UPDATE"]),
    );
    let mut mutating = json!([inject, enforce, stamp]);
    let mut status = common(
        "status.agentsessions.cassette.dev",
        "/validate-agentsession-status",
        "agentsessions",
        json!(["UPDATE"]),
    );
    status["rules"][0]["resources"] = json!(["agentsessions/status"]);
    let mut guard = common("guard.cassette.dev", "/guard", "pods", json!(["UPDATE"]));
    guard["rules"][0]["resources"] = json!(["pods", "pods/ephemeralcontainers"]);
    guard["objectSelector"] =
        json!({"matchExpressions": [{"key": "cassette.dev/session", "operator": "Exists"}]});
    let mut connect = common(
        "connect.cassette.dev",
        "/connect",
        "pods",
        json!(["CONNECT"]),
    );
    connect["rules"][0]["resources"] = json!(["pods/exec", "pods/attach", "pods/portforward"]);
    let mut validating = json!([validate, status, guard, connect]);
    if let Some((key, value)) = only_in {
        for webhook in mutating
            .as_array_mut()
            .into_iter()
            .chain(validating.as_array_mut())
            .flatten()
        {
            webhook["namespaceSelector"]["matchLabels"][key] = json!(value);
        }
    }
    let mutating: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": mutating
    }))?;
    let validating: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": validating
    }))?;
    Ok((mutating, validating))
}

/// A free TCP port on loopback (free when asked; the caller binds it soon after).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A bare HTTP/1.1 GET on loopback: status and body.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
