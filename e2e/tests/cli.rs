//! `kubectl cassette` against the real control plane: an AgentSession whose `file://` sink
//! holds a recording written by the real recorder, its status carrying the pod's public key
//! as the sidecar reports it; `ls`, `show` and `verify` find the recording through the API
//! server and check it against that key.

use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use cassette_api::AgentSession;
use cassette_e2e::{cluster, fixtures};
use cassette_recording::record::{
    Blocked, Classification, Decision, Direction, Event, ExchangeEnd, Request, Response, Timings,
};
use cassette_recording::{Recorder, RecorderConfig, RecordingPath};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// The built `kubectl-cassette` beside this test binary, built first if it is not there.
fn binary() -> Result<PathBuf> {
    cassette_e2e::workspace_binary("kubectl-cassette")
}

fn cassette(bin: &PathBuf, args: &[&str]) -> Result<Output> {
    let out = Command::new(bin)
        .arg("--kubeconfig")
        .arg(cluster().kubeconfig())
        .args(args)
        .output()?;
    eprintln!(
        "$ kubectl cassette {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// A short recording: one allowed storage read, one refused delete.
async fn record(sink: &str, spool: PathBuf, ns: &str, session: &str) -> Result<String> {
    let path = RecordingPath {
        namespace: ns.into(),
        session: session.into(),
        pod: "agent-0".into(),
        pod_uid: "7c9e".into(),
    };
    let recorder = Recorder::start(RecorderConfig::new(sink, spool, path)).await?;
    let request = |exchange, method: &str, path: &str| {
        Event::Request(Request {
            exchange,
            conn: 1,
            method: method.into(),
            scheme: "https".into(),
            authority: "storage.googleapis.com".into(),
            path: path.into(),
            version: "HTTP/1.1".into(),
            headers: vec![("accept".into(), "application/json".into())],
        })
    };
    let end = |exchange, decision, permission: &str| {
        Event::ExchangeEnd(ExchangeEnd {
            exchange,
            timings: Timings {
                total_us: 8_000,
                ..Default::default()
            },
            bytes_up: 0,
            bytes_down: if decision == Decision::Deny { 0 } else { 12 },
            decision,
            rule: (decision == Decision::Deny).then(|| "no-deletes".to_string()),
            classification: Some(Classification {
                service: Some("storage.googleapis.com".into()),
                permission: Some(permission.into()),
                git_service: None,
            }),
            masked: 0,
            masked_by: Default::default(),
            error: None,
            trailers: None,
            request_trailers: None,
        })
    };
    recorder
        .record(request(1, "GET", "/storage/v1/b/logs/o"))
        .await?;
    recorder
        .record(Event::Response(Response {
            exchange: 1,
            status: 200,
            version: "HTTP/1.1".into(),
            headers: vec![],
            trailers: None,
        }))
        .await?;
    let mut body = recorder.body(1, Direction::Response);
    body.write(b"{\"items\":[]}").await?;
    body.finish().await?;
    recorder
        .record(end(1, Decision::Allow, "storage.objects.list"))
        .await?;
    recorder
        .record(request(2, "DELETE", "/storage/v1/b/logs/o/build.log"))
        .await?;
    recorder
        .record(Event::Blocked(Blocked {
            exchange: Some(2),
            reason: "policy".into(),
            rule: Some("no-deletes".into()),
            message: "DELETE refused by rule no-deletes".into(),
        }))
        .await?;
    recorder
        .record(end(2, Decision::Deny, "storage.objects.delete"))
        .await?;
    let key = recorder.public_key();
    recorder.shutdown().await?;
    Ok(key)
}

#[tokio::test]
async fn ls_show_and_verify_through_the_api_server() -> Result<()> {
    let client = cluster().client().await?;
    fixtures::install_crd(&client).await?;
    let ns = fixtures::namespace(&client, "cli").await?;
    let dir = tempfile::tempdir()?;
    let sink = format!("file://{}", dir.path().join("sink").display());
    let key = record(&sink, dir.path().join("spool"), &ns, "fix-ci").await?;

    let api: Api<AgentSession> = Api::namespaced(client.clone(), &ns);
    let session: AgentSession = serde_json::from_value(json!({
        "apiVersion": "cassette.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": "fix-ci"},
        "spec": {
            "agent": {"serviceAccount": "coding-agent"},
            "requestedBy": {"username": "alice@example.com"},
            "maxDuration": "2h",
            "recording": {"sink": sink},
        }
    }))?;
    api.create(&PostParams::default(), &session).await?;
    let status = |public_key: &str| {
        json!({
            "apiVersion": "cassette.dev/v1alpha1",
            "kind": "AgentSession",
            "status": {
                "phase": "Active",
                "totals": {"exchanges": 2, "blocked": 1, "masked": 0, "bytes": 2048},
                "pods": [{
                    "name": "agent-0",
                    "uid": "7c9e",
                    "publicKey": public_key,
                    "exchanges": 2,
                    "blocked": 1,
                    "lastShippedSegment": "seg-000001.jsonl.zst",
                }],
            }
        })
    };
    let apply = PatchParams::apply("cassette-e2e-cli").force();
    api.patch_status("fix-ci", &apply, &Patch::Apply(&status(&key)))
        .await?;

    let bin = binary()?;
    let out = cassette(&bin, &["ls", "-n", &ns])?;
    ensure!(out.status.success(), "ls failed");
    let text = String::from_utf8(out.stdout)?;
    let row = text
        .lines()
        .find(|l| l.contains("fix-ci"))
        .context("no row for fix-ci")?;
    for cell in ["Active", "coding-agent", "alice@example.com", &sink] {
        ensure!(row.contains(cell), "{cell:?} missing from {row:?}");
    }
    ensure!(
        text.contains("recording agent-0-7c9e: 1 segment(s), closed (manifest.json)")
            && text.contains(&format!("key {key}")),
        "the recording under the session is listed: {text}"
    );

    let out = cassette(&bin, &["show", "fix-ci", "-n", &ns])?;
    ensure!(out.status.success(), "show failed");
    let text = String::from_utf8(out.stdout)?;
    ensure!(
        text.contains("integrity: verified, sealed and closed by its manifest; key matches the AgentSession status"),
        "{text}"
    );
    let delete = text
        .lines()
        .find(|l| l.contains("DELETE"))
        .context("no DELETE row")?;
    ensure!(
        delete.contains("deny (no-deletes)")
            && delete.contains("storage.objects.delete")
            && delete.contains("BLOCKED policy (no-deletes)"),
        "{delete}"
    );

    let out = cassette(&bin, &["verify", "fix-ci", "-n", &ns])?;
    let text = String::from_utf8(out.stdout)?;
    ensure!(out.status.code() == Some(0), "verify exit {:?}", out.status);
    ensure!(
        text.contains("checked against the AgentSession status (pods[agent-0].publicKey)"),
        "{text}"
    );

    // Nobody replaces the key in the status once it is there, not even an admin.
    let other = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    let swapped = api
        .patch_status("fix-ci", &apply, &Patch::Apply(&status(other)))
        .await;
    ensure!(
        swapped
            .as_ref()
            .is_err_and(|e| e.to_string().contains("a pod's publicKey is set once")),
        "the status key was replaced: {swapped:?}"
    );
    // A pinned key that is not the pod's: the recording is not the one it would vouch for.
    let out = cassette(
        &bin,
        &["verify", "fix-ci", "-n", &ns, "--public-key", other],
    )?;
    ensure!(out.status.code() == Some(1), "verify exit {:?}", out.status);
    ensure!(
        String::from_utf8(out.stdout)?
            .contains(&format!("signed with key {key}, expected {other}")),
        "the key mismatch is named"
    );

    // A session that does not exist is a usage error, not a verdict.
    let out = cassette(&bin, &["verify", "nope", "-n", &ns])?;
    ensure!(out.status.code() == Some(3), "verify exit {:?}", out.status);
    ensure!(String::from_utf8(out.stderr)?.contains("AgentSession \"nope\" not found"));
    Ok(())
}
