//! The whole loop on a real API server and a real node, with nothing standing in for cassette
//! itself:
//!
//! 1. `helm install` of the chart: the CRD, the operator as its Deployment with the chart's
//!    RBAC, its webhooks reached through its Service;
//! 2. alice, a named user, applies `examples/fix-ci.yaml` and is stamped as its requester;
//! 3. a Job whose pod template is labelled `cassette.dev/session=fix-ci` is created; the API
//!    server stores the pod the Job controller makes injected;
//! 4. kube-scheduler places it and the kubelet runs *the stored pod* through containerd and
//!    runc, from images built here with the project's Dockerfiles: `cassette-init` installs the
//!    capture rules with iptables in its container, the native sidecar runs as UID 1337 with
//!    the pod's only token, then the agent's own command as UID 1000;
//! 5. the agent plays the seed's story with real tools: git clone, a branch, gofmt, a commit,
//!    a push of the branch, a pull request through a code host's API, an object with a secret
//!    read with gcloud, and a push to main that policy refuses. The code host is private and
//!    takes only its token, which the sidecar alone holds (`spec.credentials`): the agent's
//!    `GITHUB_TOKEN` and `GIT_PASSWORD` are placeholders, swapped toward the code host only;
//!    the agent also sends its placeholder elsewhere, which is recorded;
//! 6. the sidecar ships the recording to GCS (fake-gcs-server behind a proxy that demands the
//!    Workload Identity token, which the sidecar got from the metadata server at
//!    169.254.169.254, as on GKE) and reports its pod entry into the status;
//! 7. the operator sets the phase and the totals, `kubectl get agentsessions` shows them,
//!    `kubectl cassette show` prints the timeline and `kubectl cassette verify` passes.
//!
//! The webhook's refusals (missing or expired session, hostNetwork, privileged, NET_ADMIN,
//! NET_RAW, UID 1337, shareProcessNamespace) run on the same kind of control plane in
//! `tests/operator.rs`.
//!
//! Needs root and the real node's packages (`make deps`); skips with a message otherwise.

use anyhow::{Context, Result};
use cassette_e2e::cluster;
use cassette_e2e::story::{
    self, DEPLOY_KEY, GITHUB_TOKEN, JOB, RECORDINGS_BUCKET, REQUESTER, SESSION, World,
};

const E2E_BINARY: &str = env!("CARGO_BIN_EXE_cassette-e2e");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_session_from_request_to_verified_recording() -> Result<()> {
    cassette_e2e::require_node!();
    let world = World::start(E2E_BINARY.as_ref()).await?;

    // alice asks; the webhook stamps her, whatever the file says.
    let session = world.request_session().await?;
    assert_eq!(
        session
            .spec
            .requested_by
            .as_ref()
            .map(|r| r.username.as_str()),
        Some(REQUESTER)
    );

    // The Job's pod is stored injected.
    let stored = world.create_job().await?;
    let pod_name = stored.metadata.name.clone().context("a pod name")?;
    let spec = stored.spec.as_ref().context("a spec")?;
    let init: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["cassette-init", "cassette-sidecar"], "{stored:#?}");

    // The node runs it, and the Job completes with the agent (the native sidecar stopped).
    let run = world.run_pod(&pod_name).await?;
    let said = run.log("agent");
    let sidecar_log = run.log("cassette-sidecar");
    assert_eq!(
        run.exit_codes.get("agent"),
        Some(&0),
        "the agent's story failed:\n{said}\nsidecar:\n{sidecar_log}\nupstreams:\n{}",
        world.upstreams.output_tail()
    );
    assert_eq!(run.exit_codes.get("cassette-init"), Some(&0));
    assert_eq!(
        run.exit_codes.get("cassette-sidecar"),
        Some(&0),
        "the sidecar did not stop cleanly:\n{sidecar_log}"
    );

    // What the agent saw: gofmt had work, the pull request was opened, the object read as
    // it is, and the push to main refused with the session's name.
    assert!(said.contains("gofmt would change: cmd/main.go"), "{said}");
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

    // Google saw the real token only (objects read and segments shipped alike); the agent
    // never had it.
    let log = world.upstreams.log_entries()?;
    let storage: Vec<_> = log.iter().filter(|e| e.listener == "gcs").collect();
    assert!(!storage.is_empty(), "nothing reached GCS: {log:#?}");
    assert!(
        storage
            .iter()
            .all(|e| e.bearer_token() == Some(world.upstreams.token())),
        "a request reached GCS without the real token: {storage:#?}"
    );
    assert!(!said.contains(world.upstreams.token()));

    // Brokered credentials: the agent held placeholders and no token in its environment or
    // files; the code host saw the real token, for the API call and for git; elsewhere the
    // placeholder went as it was.
    assert!(said.contains("GITHUB_TOKEN holds a placeholder"), "{said}");
    assert!(!said.contains(GITHUB_TOKEN), "{said}");
    let code_host: Vec<_> = log
        .iter()
        .filter(|e| e.sni.as_deref().is_some_and(|h| h.ends_with("git.test")))
        .filter(|e| e.status != 401)
        .collect();
    let pulls = code_host
        .iter()
        .find(|e| e.method == "POST" && e.path.ends_with("/pulls"))
        .with_context(|| format!("the pull request call: {code_host:#?}"))?;
    assert_eq!(pulls.bearer_token(), Some(GITHUB_TOKEN), "{pulls:#?}");
    let git: Vec<_> = code_host
        .iter()
        .filter(|e| e.sni.as_deref() == Some("git.test"))
        .collect();
    assert!(
        git.iter().any(|e| e.path.ends_with("/git-receive-pack")),
        "no push reached the code host: {git:#?}"
    );
    assert!(
        git.iter()
            .all(|e| e.basic_password().as_deref() == Some(GITHUB_TOKEN)),
        "git reached the code host without the real token: {git:#?}"
    );
    let collected = log
        .iter()
        .find(|e| e.path == "/collect")
        .context("the placeholder sent to echo.test")?;
    assert!(
        collected
            .bearer_token()
            .is_some_and(|t| t.starts_with("cassette-placeholder-github-api-")),
        "{collected:#?}"
    );

    // The status: the sidecar's entry, then the operator's phase and totals.
    let status = world.wait_for_completion().await?;
    let totals = status.totals.context("totals")?;
    assert!(totals.exchanges >= 6, "{totals:?}");
    assert!(totals.blocked >= 1, "the push to main: {totals:?}");
    assert!(
        totals.masked >= 2,
        "the GitHub token and the deploy key: {totals:?}"
    );
    let pod = status.pods.first().context("the pod's entry")?;
    assert_eq!(pod.name, pod_name);
    assert!(
        world.job_succeeded().await?,
        "Job {JOB} did not count its pod as succeeded"
    );
    assert_eq!(pod.spool_bytes, 0, "everything shipped");

    let out = cluster()
        .kubectl()
        .args(["get", "agentsessions", "-n", story::NAMESPACE])
        .output()?;
    let table = String::from_utf8(out.stdout)?;
    println!("{table}");
    assert!(
        table.contains(SESSION) && table.contains("Completed"),
        "{table}"
    );
    assert!(table.contains(REQUESTER), "{table}");

    // The auditor: the timeline, the verification against the key in the status, and where
    // the leaked token went (its keyed fingerprint, from the Secret the session names).
    let show = stdout_of(world.cassette(&["show", SESSION])?)?;
    println!("{show}");
    for needle in [
        "git.test",
        "api.git.test",
        "storage.googleapis.com",
        "refs/heads/main",
    ] {
        assert!(show.contains(needle), "show has no {needle}:\n{show}");
    }
    // Nothing was lost, and the watch for strangers running as the recorder's UID saw none.
    assert!(!show.contains("GAP"), "{show}");
    for note in [
        "credential github-api swapped (bearer)",
        "credential github-git swapped (git password)",
        "PLACEHOLDER of credential github-api: placeholder sent to echo.test",
    ] {
        assert!(show.contains(note), "show has no {note:?}:\n{show}");
    }
    let verify = stdout_of(world.cassette(&["verify", SESSION])?)?;
    println!("{verify}");
    assert!(verify.contains("OK"), "{verify}");
    let dir = tempfile::tempdir()?;
    let leaked = dir.path().join("leaked.txt");
    std::fs::write(&leaked, GITHUB_TOKEN)?;
    let found = stdout_of(world.cassette(&[
        "search",
        SESSION,
        "--secret-file",
        &leaked.display().to_string(),
    ])?)?;
    assert!(found.contains("api.git.test"), "{found}");

    // Neither secret is anywhere in the shipped bytes.
    let raw = raw_recording(&world)?;
    assert!(!raw.contains(GITHUB_TOKEN) && !raw.contains(DEPLOY_KEY));

    // The recording says which credential went where, and where a placeholder went unswapped.
    let records: Vec<serde_json::Value> = raw
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let of_kind = |kind: &'static str| records.iter().filter(move |r| r["kind"] == kind);
    for (credential, host) in [("github-api", "api.git.test"), ("github-git", "git.test")] {
        assert!(
            of_kind("token").any(|t| t["credential"] == credential && t["host"] == host),
            "no swap of {credential} toward {host}: {:#?}",
            of_kind("token").collect::<Vec<_>>()
        );
    }
    assert!(
        of_kind("placeholder").any(|p| p["host"] == "echo.test"
            && p["note"]
                .as_str()
                .is_some_and(|n| n.contains("placeholder sent to echo.test"))),
        "the placeholder sent to echo.test is not marked: {:#?}",
        of_kind("placeholder").collect::<Vec<_>>()
    );

    // The Secret stays out of the agent's reach: a session pod that mounts it is refused, and
    // the agent's service account cannot read it through the API.
    let mounting = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "mounts-the-token", "namespace": story::NAMESPACE,
                     "labels": {"cassette.dev/session": SESSION}},
        "spec": {
            "serviceAccountName": "coding-agent",
            "containers": [{"name": "agent", "image": "agent", "command": ["true"],
                            "volumeMounts": [{"name": "token", "mountPath": "/token"}]}],
            "volumes": [{"name": "token", "secret": {"secretName": "github"}}]
        }
    });
    let refused = cluster().kubectl_with_input(&["create", "-f", "-"], &mounting.to_string())?;
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("brokered credential"),
        "a session pod mounting the credential's Secret: {why}"
    );
    let can_i = cluster()
        .kubectl()
        .args([
            "auth",
            "can-i",
            "get",
            "secret/github",
            "-n",
            story::NAMESPACE,
        ])
        .arg(format!(
            "--as=system:serviceaccount:{}:coding-agent",
            story::NAMESPACE
        ))
        .output()?;
    assert_eq!(
        String::from_utf8_lossy(&can_i.stdout).trim(),
        "no",
        "the agent's service account can read the code host's token"
    );
    Ok(())
}

fn stdout_of(out: std::process::Output) -> Result<String> {
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "kubectl cassette failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(said)
}

/// Every shipped object of the session, decompressed, as one string.
fn raw_recording(world: &World) -> Result<String> {
    let listing = world.gcs.list(RECORDINGS_BUCKET, "sessions/")?;
    anyhow::ensure!(!listing.is_empty(), "nothing was shipped");
    let mut all = String::new();
    for name in listing {
        let bytes = world.gcs.read_object(RECORDINGS_BUCKET, &name)?;
        let text = cassette_recording::read::decode_segment(&name, &bytes)?;
        all.push_str(&String::from_utf8_lossy(&text));
    }
    Ok(all)
}
