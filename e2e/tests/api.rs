//! The AgentSession API on a real API server: the CRD installs, the examples are accepted,
//! invalid sessions are refused with messages that name the field, and `kubectl get` and
//! `kubectl explain` read well.

use anyhow::{Context, Result};
use cassette_api::{AgentSession, AgentSessionStatus, Phase, Totals};
use cassette_e2e::{cluster, fixtures};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn agentsession_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "cassette.dev",
        "v1alpha1",
        "AgentSession",
    ))
}

/// Create an AgentSession from raw JSON, so the API server (not our types) judges it.
async fn create_raw(client: &kube::Client, ns: &str, object: Value) -> Result<DynamicObject> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &agentsession_resource());
    let object: DynamicObject = serde_json::from_value(object)?;
    Ok(api.create(&PostParams::default(), &object).await?)
}

fn kubectl(args: &[&str]) -> Result<String> {
    let out = cluster().kubectl().args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn valid_session(name: &str) -> Value {
    json!({
        "apiVersion": "cassette.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": name},
        "spec": {
            "agent": {"serviceAccount": "coding-agent"},
            "maxDuration": "2h",
            "recording": {"sink": "gs://recordings-bucket/agents"},
            "policy": {"rules": [{"action": "deny", "match": {"gitRef": "refs/heads/main"}}]}
        }
    })
}

#[tokio::test]
async fn crd_installs_and_is_established() -> Result<()> {
    let client = cluster().client().await?;
    let crd = fixtures::install_crd(&client).await?;
    let names = crd.spec.names;
    assert_eq!(names.kind, "AgentSession");
    assert_eq!(names.plural, "agentsessions");
    assert_eq!(names.short_names, Some(vec!["asess".to_string()]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let version = &crd.spec.versions[0];
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some(),
        "the status subresource is enabled"
    );
    // The short name resolves through discovery, as an admin would type it.
    let ns = fixtures::namespace(&client, "crd").await?;
    let out = kubectl(&["get", "asess", "-n", &ns])?;
    assert!(
        out.is_empty() || out.contains("NAME"),
        "unexpected output: {out}"
    );
    Ok(())
}

#[tokio::test]
async fn every_example_is_accepted() -> Result<()> {
    let client = cluster().client().await?;
    fixtures::install_crd(&client).await?;
    let ns = fixtures::namespace(&client, "examples").await?;
    let dir = cassette_e2e::repo_root().join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        // The example reads as our type...
        let typed: AgentSession = serde_saphyr::from_str(&text)
            .with_context(|| format!("{} does not parse as an AgentSession", path.display()))?;
        assert!(typed.spec.recording.sink.contains("://"));
        // ...and the API server accepts it as written (in a namespace of the test's own).
        let mut raw: Value = serde_saphyr::from_str(&text)?;
        raw["metadata"]["namespace"] = json!(ns);
        let created = create_raw(&client, &ns, raw)
            .await
            .with_context(|| format!("the API server refused {}", path.display()))?;
        assert_eq!(created.metadata.namespace.as_deref(), Some(ns.as_str()));
        seen += 1;
    }
    assert!(seen >= 3, "expected at least three examples, found {seen}");
    Ok(())
}

#[tokio::test]
async fn kubectl_get_shows_the_printer_columns() -> Result<()> {
    let client = cluster().client().await?;
    fixtures::install_crd(&client).await?;
    let ns = fixtures::namespace(&client, "columns").await?;
    let mut session = valid_session("fix-ci");
    session["spec"]["requestedBy"] = json!({"username": "alice@example.com"});
    create_raw(&client, &ns, session).await?;

    // Status goes through the status subresource, as the operator writes it.
    let api: Api<AgentSession> = Api::namespaced(client.clone(), &ns);
    let status = AgentSessionStatus {
        phase: Some(Phase::Active),
        totals: Some(Totals {
            exchanges: 42,
            blocked: 3,
            masked: 7,
            bytes: 1024,
        }),
        ..Default::default()
    };
    let patch = json!({
        "apiVersion": "cassette.dev/v1alpha1",
        "kind": "AgentSession",
        "status": status,
    });
    api.patch_status(
        "fix-ci",
        &PatchParams::apply("cassette-e2e").force(),
        &Patch::Apply(&patch),
    )
    .await?;

    let out = kubectl(&["get", "agentsessions", "-n", &ns])?;
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PHASE",
            "AGENT",
            "REQUESTED-BY",
            "EXCHANGES",
            "BLOCKED",
            "MASKED",
            "AGE"
        ],
        "kubectl get agentsessions printed:\n{out}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..7],
        [
            "fix-ci",
            "Active",
            "coding-agent",
            "alice@example.com",
            "42",
            "3",
            "7"
        ],
        "kubectl get agentsessions printed:\n{out}"
    );
    Ok(())
}

/// Each case: what is wrong, how to break a valid session, and what the refusal must say.
type Breaker = fn(&mut Value);

#[tokio::test]
async fn invalid_sessions_are_refused_with_the_field_named() -> Result<()> {
    let client = cluster().client().await?;
    fixtures::install_crd(&client).await?;
    let ns = fixtures::namespace(&client, "invalid").await?;

    let cases: &[(&str, Breaker, &[&str])] = &[
        (
            "both expiresAt and maxDuration",
            |s| s["spec"]["expiresAt"] = json!("2030-01-01T00:00:00Z"),
            &["spec: Invalid value", "exactly one of spec.expiresAt"],
        ),
        (
            "neither expiresAt nor maxDuration",
            |s| drop(s["spec"].as_object_mut().unwrap().remove("maxDuration")),
            &["exactly one of spec.expiresAt"],
        ),
        (
            "a maxDuration that does not parse",
            |s| s["spec"]["maxDuration"] = json!("two hours"),
            &["spec.maxDuration", "such as 30m, 2h or 1h30m"],
        ),
        (
            "a maxDuration beyond a year",
            |s| s["spec"]["maxDuration"] = json!("10000h"),
            &["spec.maxDuration", "between 1m and 8760h"],
        ),
        (
            "an expiresAt that is not a time",
            |s| {
                let spec = s["spec"].as_object_mut().unwrap();
                spec.remove("maxDuration");
                spec.insert("expiresAt".into(), json!("tomorrow"));
            },
            &["spec.expiresAt"],
        ),
        (
            "a sink that is neither gs:// nor file://",
            |s| s["spec"]["recording"]["sink"] = json!("s3://recordings"),
            &["spec.recording.sink", "gs://BUCKET[/PREFIX]"],
        ),
        (
            "no sink",
            |s| s["spec"]["recording"] = json!({}),
            &["spec.recording.sink", "Required value"],
        ),
        (
            "maxBodyBytes below 1 KiB",
            |s| s["spec"]["recording"]["maxBodyBytes"] = json!(10),
            &[
                "spec.recording.maxBodyBytes",
                "greater than or equal to 1024",
            ],
        ),
        (
            "maxBodyBytes above 64 MiB",
            |s| s["spec"]["recording"]["maxBodyBytes"] = json!(1u64 << 30),
            &[
                "spec.recording.maxBodyBytes",
                "less than or equal to 67108864",
            ],
        ),
        (
            "a retention in months",
            |s| s["spec"]["recording"]["retention"] = json!("3mo"),
            &["spec.recording.retention", "such as 90d or 36h"],
        ),
        (
            "an unknown durability",
            |s| s["spec"]["recording"]["durability"] = json!("eventually"),
            &["spec.recording.durability", "supported values", "batched"],
        ),
        (
            "an unknown rule action",
            |s| s["spec"]["policy"]["rules"][0]["action"] = json!("block"),
            &["spec.policy.rules[0].action", "supported values", "deny"],
        ),
        (
            "a rule that matches nothing",
            |s| s["spec"]["policy"]["rules"][0]["match"] = json!({}),
            &["spec.policy.rules[0].match", "at least one of host, method"],
        ),
        (
            "a git ref without refs/",
            |s| s["spec"]["policy"]["rules"][0]["match"]["gitRef"] = json!("main"),
            &["spec.policy.rules[0].match.gitRef", "refs/heads/main"],
        ),
        (
            "a permission that is not an IAM name",
            |s| {
                s["spec"]["policy"]["rules"][0]["match"] =
                    json!({"permission": "delete all buckets"})
            },
            &[
                "spec.policy.rules[0].match.permission",
                "storage.objects.delete",
            ],
        ),
        (
            "a host with capitals and a scheme",
            |s| s["spec"]["policy"]["passthrough"] = json!(["https://GitHub.com"]),
            &["spec.policy.passthrough[0]", "lowercase DNS name"],
        ),
        (
            "a mask pattern with an unusable name",
            |s| s["spec"]["masking"] = json!({"patterns": [{"name": "My Token", "regex": "x"}]}),
            &["spec.masking.patterns[0].name", "lowercase letters"],
        ),
    ];
    assert!(cases.len() >= 6);

    for (i, (what, breaker, expected)) in cases.iter().enumerate() {
        let mut session = valid_session(&format!("invalid-{i}"));
        breaker(&mut session);
        let err = match create_raw(&client, &ns, session).await {
            Ok(_) => panic!("the API server accepted {what}"),
            Err(e) => format!("{e:#}"),
        };
        for needle in *expected {
            assert!(
                err.contains(needle),
                "refusing {what}, the API server said:\n  {err}\nwhich does not mention {needle:?}"
            );
        }
    }

    // The valid session itself is accepted: the cases fail for their own reason.
    create_raw(&client, &ns, valid_session("valid")).await?;
    Ok(())
}

#[tokio::test]
async fn kubectl_explain_shows_the_descriptions() -> Result<()> {
    let client = cluster().client().await?;
    fixtures::install_crd(&client).await?;
    // The API server publishes a new CRD's OpenAPI a moment after it is Established.
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = loop {
        match kubectl(&["explain", "agentsessions.spec.policy"]) {
            Ok(out) => break out,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    };
    for needle in [
        "Which requests the sidecar lets through",
        "defaultAction",
        "The decision for a request no rule matches",
        "passthrough",
        "first rule that matches a request decides it",
    ] {
        assert!(out.contains(needle), "kubectl explain printed:\n{out}");
    }
    let out = kubectl(&[
        "explain",
        "agentsessions.spec.policy.rules.match.permission",
    ])?;
    assert!(
        out.contains("storage.objects.delete"),
        "kubectl explain printed:\n{out}"
    );
    let out = kubectl(&["explain", "agentsession"])?;
    assert!(
        out.contains("cassette.dev/session=<name>"),
        "kubectl explain printed:\n{out}"
    );
    Ok(())
}
