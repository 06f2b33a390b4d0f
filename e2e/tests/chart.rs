//! The Helm chart: `helm lint` is clean, its CRD is the checked-in one, and what `helm template`
//! renders (with and without agent namespaces) is accepted by a real API server
//! (`kubectl apply --dry-run=server`). helm is built from its Go module, pinned, by
//! `e2e/controlplane/build.sh`.

use anyhow::{Context, Result, bail};
use cassette_e2e::{cluster, fixtures, helm, repo_root};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn run(command: &mut Command) -> Result<String> {
    let out = command.output()?;
    if !out.status.success() {
        bail!(
            "{command:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn chart() -> PathBuf {
    repo_root().join("charts/cassette")
}

#[test]
fn helm_lint_is_clean() -> Result<()> {
    let out = run(Command::new(helm()?)
        .args(["lint", "--strict"])
        .arg(chart()))?;
    assert!(out.contains("0 chart(s) failed"), "{out}");
    for options in [
        &["--set", "certManager.enabled=true"][..],
        &["--set", "metrics.serviceMonitor.enabled=true"][..],
    ] {
        run(Command::new(helm()?)
            .args(["lint", "--strict"])
            .arg(chart())
            .args(options))?;
    }
    Ok(())
}

#[test]
fn values_outside_the_schema_are_refused() -> Result<()> {
    let out = Command::new(helm()?)
        .args(["template", "x"])
        .arg(chart())
        .args([
            "--kube-version",
            "1.34.0",
            "--set",
            "operator.replicas=zero",
        ])
        .output()?;
    assert!(
        !out.status.success(),
        "helm accepted operator.replicas=zero"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("replicas"), "{err}");
    Ok(())
}

#[test]
fn the_chart_carries_the_checked_in_crd() -> Result<()> {
    let source = std::fs::read_to_string(repo_root().join("crds/agentsession.yaml"))?;
    let copy = std::fs::read_to_string(chart().join("crds/agentsession.yaml"))?;
    assert!(
        source == copy,
        "charts/cassette/crds/agentsession.yaml differs from crds/agentsession.yaml: run `make chart`"
    );
    Ok(())
}

#[tokio::test]
async fn the_rendered_chart_is_accepted_by_the_api_server() -> Result<()> {
    let client = cluster().client().await?;
    let release_ns = fixtures::namespace(&client, "cassette-system").await?;
    let agents_ns = fixtures::namespace(&client, "team-a").await?;
    let rendered = run(Command::new(helm()?)
        .args(["template", "cassette"])
        .arg(chart())
        .args([
            "--namespace",
            &release_ns,
            "--include-crds",
            "--kube-version",
            "1.34.0",
            // The test hook's pod runs as the operator's service account, which a dry run never
            // creates; tests/release.rs runs `helm test` on an installed release instead.
            "--skip-tests",
        ])
        .args([
            "--set",
            &format!("agentNamespaces[0].namespace={agents_ns}"),
        ])
        .args([
            "--set",
            "agentNamespaces[0].serviceAccounts[0]=coding-agent",
        ])
        .args(["--set", "sidecarEnv.CASSETTE_LOG_FORMAT=json"]))?;
    for kind in [
        "CustomResourceDefinition",
        "Deployment",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "ClusterRole",
        "RoleBinding",
        "Service",
    ] {
        assert!(
            rendered.contains(&format!("kind: {kind}\n")),
            "no {kind} rendered"
        );
    }
    assert!(rendered.contains("failurePolicy: Fail"));
    assert!(!rendered.contains("failurePolicy: Ignore"));

    let mut kubectl = cluster()
        .kubectl()
        .args(["apply", "--dry-run=server", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    kubectl
        .stdin
        .take()
        .context("stdin")?
        .write_all(rendered.as_bytes())?;
    let out = kubectl.wait_with_output()?;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the API server refused the chart:\n{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for object in [
        "deployment.apps/cassette-operator",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/cassette",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/cassette",
        "rolebinding.rbac.authorization.k8s.io/cassette-sidecar",
    ] {
        assert!(said.contains(object), "{object} missing from:\n{said}");
    }
    Ok(())
}

/// What a webhook decides on: its name, the path it calls, what it matches, how it fails.
fn webhook_facts(webhook: &serde_json::Value) -> serde_json::Value {
    let path = webhook["clientConfig"]["service"]["path"]
        .as_str()
        .map(str::to_string)
        .or_else(|| {
            webhook["clientConfig"]["url"]
                .as_str()
                .and_then(|u| u.split_once("://"))
                .and_then(|(_, rest)| rest.split_once('/'))
                .map(|(_, path)| format!("/{path}"))
        });
    serde_json::json!({
        "name": webhook["name"],
        "path": path,
        "rules": webhook["rules"],
        "failurePolicy": webhook["failurePolicy"],
        "objectSelector": webhook["objectSelector"],
    })
}

/// The tests register the operator's webhooks by URL (the operator runs beside the API
/// server); they must be the chart's webhooks, so that what the tests refuse an installed
/// chart refuses too.
#[test]
fn the_tests_register_the_charts_webhooks() -> Result<()> {
    let rendered = run(Command::new(helm()?)
        .args(["template", "cassette"])
        .arg(chart())
        .args(["--namespace", "cassette-system", "--kube-version", "1.34.0"])
        .args(["--set", "agentNamespaces[0].namespace=team-a"])
        .args([
            "--set",
            "agentNamespaces[0].serviceAccounts[0]=coding-agent",
        ]))?;
    let mut charted = Vec::new();
    for document in rendered.split("\n---") {
        let Ok(object) = serde_saphyr::from_str::<serde_json::Value>(document) else {
            continue;
        };
        if matches!(
            object["kind"].as_str(),
            Some("MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration")
        ) {
            for webhook in object["webhooks"].as_array().into_iter().flatten() {
                charted.push(webhook_facts(webhook));
            }
        }
    }
    let (mutating, validating) =
        cassette_e2e::operator::webhook_configurations("cassette", 8443, None)?;
    let mut tested: Vec<serde_json::Value> = [
        serde_json::to_value(&mutating)?,
        serde_json::to_value(&validating)?,
    ]
    .iter()
    .flat_map(|c| c["webhooks"].as_array().cloned().unwrap_or_default())
    .map(|w| webhook_facts(&w))
    .collect();
    let key = |w: &serde_json::Value| w["name"].as_str().unwrap_or_default().to_string();
    charted.sort_by_key(key);
    tested.sort_by_key(key);
    assert!(!charted.is_empty(), "the chart renders webhooks");
    assert_eq!(
        serde_json::to_string_pretty(&tested)?,
        serde_json::to_string_pretty(&charted)?,
        "the webhooks the tests register differ from the chart's"
    );
    Ok(())
}
