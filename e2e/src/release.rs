//! cassette installed the way an admin installs it: `helm install` of `charts/cassette` onto the
//! real node, with the operator and sidecar images built here from `docker/` and this build's
//! binaries. The operator runs as the chart's Deployment with the chart's own RBAC (no admin
//! kubeconfig), and the API server reaches its webhooks through the chart's Service with the
//! certificate the operator makes, rotates and patches into them.

use crate::cluster;
use crate::node::NodeInfo;
use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::Api;
use serde_json::{Value, json};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The release's name; the chart names its objects after it (`cassette`, `cassette-operator`,
/// `cassette-webhook`).
pub const RELEASE: &str = "cassette";
/// The namespace the chart is installed into.
pub const NAMESPACE: &str = "cassette-system";

/// How long `helm install --wait` and the webhooks' wiring may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(180);

/// An installed release. Dropping it uninstalls it: its webhooks fail closed, and left behind
/// with nobody serving them they would refuse every later session pod.
pub struct Release {
    dir: tempfile::TempDir,
    installed: bool,
}

impl Release {
    /// Build the operator and sidecar images from this build's binaries, import them into the
    /// node, and `helm install` the chart with `values` over the images' values (a JSON object
    /// in the chart's values schema). Returns once the operator is ready and its CA is in every
    /// webhook.
    pub async fn install(node: &NodeInfo, values: &Value) -> Result<Self> {
        let started = Instant::now();
        let operator = crate::workspace_binary("cassette-operator")?;
        let sidecar = crate::workspace_binary("cassette-sidecar")?;
        let images = node.load_images(&[
            format!("operator={}", operator.display()),
            format!("sidecar={}", sidecar.display()),
        ])?;
        let dir = tempfile::Builder::new()
            .prefix("cassette-release-")
            .tempdir()?;
        let built = started.elapsed();
        let mut release = Self {
            dir,
            installed: false,
        };
        release.write_values(
            "images.json",
            &image_values(&images["operator"], &images["sidecar"])?,
        )?;
        release.write_values("values.json", values)?;
        release.installed = true;
        release.helm_install_or_upgrade("install")?;
        release.wait_wired().await?;
        eprintln!(
            "cassette-e2e: chart installed and wired in {:.1}s (images {:.1}s)",
            started.elapsed().as_secs_f64(),
            built.as_secs_f64()
        );
        Ok(release)
    }

    /// `helm upgrade` with new `values` (over the images' values, as at install); returns once
    /// the operator's new pods are ready and wired.
    pub async fn upgrade(&self, values: &Value) -> Result<()> {
        self.write_values("values.json", values)?;
        self.helm_install_or_upgrade("upgrade")?;
        self.wait_wired().await
    }

    /// `helm uninstall`, waiting until its objects are gone.
    pub fn uninstall(mut self) -> Result<()> {
        self.installed = false;
        let out = self.helm(&["uninstall", RELEASE, "--wait", "--timeout", "120s"])?;
        ensure_ok("helm uninstall", &out)
    }

    /// `helm test`: the chart's own check of the installation; its output.
    pub fn test(&self) -> Result<Output> {
        self.helm(&["test", RELEASE, "--logs", "--timeout", "120s"])
    }

    /// The operator pods' logs so far, for failure messages.
    pub fn operator_log(&self) -> String {
        let out = cluster()
            .kubectl()
            .args(["logs", "-n", NAMESPACE, "--prefix", "--tail=-1"])
            .args(["-l", "app.kubernetes.io/component=operator"])
            .output();
        match out {
            Ok(out) => format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("kubectl logs: {e}"),
        }
    }

    fn write_values(&self, name: &str, values: &Value) -> Result<()> {
        // JSON is YAML: helm reads it as a values file.
        let path = self.dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(values)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    fn helm_install_or_upgrade(&self, verb: &str) -> Result<()> {
        let chart = crate::repo_root().join("charts/cassette");
        let images = self.dir.path().join("images.json");
        let values = self.dir.path().join("values.json");
        let timeout = format!("{}s", INSTALL_TIMEOUT.as_secs());
        let mut args: Vec<&str> = vec![verb, RELEASE];
        let chart = chart.display().to_string();
        args.push(&chart);
        if verb == "install" {
            args.push("--create-namespace");
        }
        let (images, values) = (images.display().to_string(), values.display().to_string());
        args.extend([
            "-f",
            &images,
            "-f",
            &values,
            "--wait",
            "--timeout",
            &timeout,
        ]);
        let out = self.helm(&args)?;
        if !out.status.success() {
            bail!(
                "helm {verb} failed: {}{}\noperator:\n{}\nevents:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.operator_log(),
                events()
            );
        }
        Ok(())
    }

    fn helm(&self, args: &[&str]) -> Result<Output> {
        Command::new(crate::helm()?)
            .arg("--kubeconfig")
            .arg(cluster().kubeconfig())
            .args(["--namespace", NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running helm")
    }

    /// Wait until every webhook of the release carries the operator's CA.
    async fn wait_wired(&self) -> Result<()> {
        let client = cluster().client().await?;
        let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let validating: Api<ValidatingWebhookConfiguration> = Api::all(client);
        let deadline = Instant::now() + INSTALL_TIMEOUT;
        loop {
            let m = mutating.get(RELEASE).await?;
            let v = validating.get(RELEASE).await?;
            let hooks = m
                .webhooks
                .iter()
                .flatten()
                .map(|w| &w.client_config)
                .chain(v.webhooks.iter().flatten().map(|w| &w.client_config));
            let mut hooks = hooks.peekable();
            if hooks.peek().is_some() && hooks.all(|c| c.ca_bundle.is_some()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the operator did not patch its CA into the chart's webhooks within \
                     {INSTALL_TIMEOUT:?}; its log:\n{}",
                    self.operator_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.installed {
            let _ = self.helm(&["uninstall", RELEASE, "--wait", "--timeout", "60s"]);
        }
    }
}

/// The values that point the chart at the images built here: their references, pulled never
/// (they are in the node's containerd), and one operator replica (one node).
fn image_values(operator: &str, sidecar: &str) -> Result<Value> {
    let split = |image: &str| -> Result<(String, String)> {
        let (repository, tag) = image
            .rsplit_once(':')
            .with_context(|| format!("{image} has no tag"))?;
        Ok((repository.to_string(), tag.to_string()))
    };
    let (operator_repository, operator_tag) = split(operator)?;
    let (sidecar_repository, sidecar_tag) = split(sidecar)?;
    Ok(json!({
        "image": {
            "operator": {"repository": operator_repository, "tag": operator_tag},
            "sidecar": {"repository": sidecar_repository, "tag": sidecar_tag},
            "pullPolicy": "Never",
        },
        "operator": {"replicas": 1, "logFormat": "pretty"},
    }))
}

fn ensure_ok(what: &str, out: &Output) -> Result<()> {
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The release namespace's events, for failure messages.
fn events() -> String {
    let out = cluster()
        .kubectl()
        .args(["get", "events", "-n", NAMESPACE])
        .args([
            "-o",
            "custom-columns=OBJECT:.involvedObject.name,REASON:.reason,MESSAGE:.message",
        ])
        .output();
    match out {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => format!("kubectl get events: {e}"),
    }
}
