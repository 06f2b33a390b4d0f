//! The built `kubectl-cassette` as an auditor narrows a session down: the filter grammar on
//! `show`, `replay`, `export` and `search` against a real recording (metadata chatter, a
//! refused storage DELETE, a refused push, a gap), and output for machines.

#[path = "../src/fixture.rs"]
mod fixture;

use std::process::{Command, Output};

use serde_json::Value;

fn cassette(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-cassette"))
        .args(args)
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .expect("the binary runs");
    eprintln!(
        "$ kubectl cassette {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "exit code");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The table rows of `show` (lines that start with a time and are not events).
fn rows(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()) && !l.contains("── "))
        .collect()
}

#[tokio::test]
async fn show_with_host_and_decision_lists_exactly_the_refused_storage_call() {
    let f = fixture::write_auditor().await;
    let text = ok(&cassette(&[
        "show",
        "--recording",
        &f.session_uri,
        "--host",
        "*.googleapis.com",
        "--decision",
        "deny",
    ]));
    let rows = rows(&text);
    assert_eq!(rows.len(), 1, "{text}");
    for cell in [
        "DELETE",
        "storage.googleapis.com",
        "403",
        "deny (no-delete)",
        "storage.objects.delete",
    ] {
        assert!(rows[0].contains(cell), "{cell:?} not in {:?}", rows[0]);
    }
    assert!(
        text.contains("filters: 7 exchanges hidden by filters"),
        "{text}"
    );
    // The gap is never filtered away; session events stay; the refused connection (no host)
    // is hidden by --host.
    assert!(text.contains("── GAP: records of 3 exchanges"), "{text}");
    assert!(text.contains("── session_start"), "{text}");
    assert!(!text.contains("BLOCKED expired"), "{text}");
}

#[tokio::test]
async fn hide_metadata_drops_the_metadata_server_chatter() {
    let f = fixture::write_auditor().await;
    let all = ok(&cassette(&["show", "--recording", &f.session_uri]));
    assert_eq!(rows(&all).len(), 8, "{all}");
    assert!(all.contains("metadata.google.internal"));
    let text = ok(&cassette(&[
        "show",
        "--recording",
        &f.session_uri,
        "--hide-metadata",
    ]));
    assert_eq!(rows(&text).len(), 6, "{text}");
    assert!(!text.contains("metadata.google.internal"), "{text}");
    assert!(text.contains("2 exchanges hidden by filters"), "{text}");
    // Without filters the header says nothing about them.
    assert!(!all.contains("hidden by filters"), "{all}");
}

#[tokio::test]
async fn replay_and_har_take_the_same_filters() {
    let f = fixture::write_auditor().await;
    let out = cassette(&[
        "replay",
        "--recording",
        &f.session_uri,
        "--speed",
        "0",
        "--method",
        "DELETE",
        "--method",
        "PUT",
    ]);
    let text = ok(&out);
    assert!(
        text.contains("#7 → DELETE storage.googleapis.com"),
        "{text}"
    );
    assert!(text.contains("#7 BLOCKED policy (no-delete)"), "{text}");
    assert!(text.contains("#5 → PUT storage.googleapis.com"), "{text}");
    assert!(!text.contains("#1 "), "{text}");
    assert!(text.contains("GAP: records of 3 exchanges"), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("6 exchanges hidden by filters"),
        "stderr"
    );
    // --follow holds an exchange until it ends, then prints it whole.
    let text = ok(&cassette(&[
        "replay",
        "--recording",
        &f.session_uri,
        "--speed",
        "0",
        "--follow",
        "--status",
        "4xx",
    ]));
    assert!(
        text.contains("#7 → DELETE") && text.contains("#7 ← 403"),
        "{text}"
    );
    assert!(!text.contains("#1 "), "{text}");
    assert!(
        text.trim_end().ends_with("session_end (shutdown)"),
        "{text}"
    );

    let out = cassette(&[
        "export",
        "--recording",
        &f.session_uri,
        "--har",
        "-",
        "--permission",
        "storage.objects.*",
    ]);
    let doc: Value = serde_json::from_str(&ok(&out)).expect("HAR is JSON");
    let urls: Vec<&str> = doc["log"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls.len(), 3, "{urls:?}");
    assert!(
        urls.iter()
            .all(|u| u.starts_with("https://storage.googleapis.com/")),
        "{urls:?}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("5 exchanges hidden by filters"));
}

#[tokio::test]
async fn export_jsonl_keeps_whole_lines_of_what_the_filter_shows() {
    let f = fixture::write_auditor().await;
    let out = cassette(&[
        "export",
        "--recording",
        &f.session_uri,
        "--jsonl",
        "-",
        "--git-ref",
        "refs/heads/main",
    ]);
    let text = ok(&out);
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a record per line"))
        .collect();
    let exchanges: std::collections::BTreeSet<u64> = records
        .iter()
        .filter_map(|r| r["exchange"].as_u64())
        .collect();
    assert_eq!(exchanges.into_iter().collect::<Vec<_>>(), [4], "{text}");
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "session_start",
        "git",
        "blocked",
        "gap",
        "seal",
        "session_end",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    assert!(!kinds.contains(&"conn_open"), "{kinds:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("7 exchanges hidden by filters"), "{stderr}");
    assert!(
        stderr.contains("the chain cannot be checked on a filtered file"),
        "{stderr}"
    );
}

#[tokio::test]
async fn search_reports_only_matches_in_exchanges_the_filter_shows() {
    let f = fixture::write_auditor().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    let key = dir.path().join("key");
    std::fs::write(&secret, fixture::SECRET).unwrap();
    std::fs::write(&key, fixture::FINGERPRINT_KEY).unwrap();
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "search",
            "--recording",
            &f.session_uri,
            "--secret-file",
            secret.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&'static str]| {
        let a = args(extra);
        cassette(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let all = ok(&run(&[]));
    assert!(all.contains("#2 ") && all.contains("#3 "), "{all}");
    let out = run(&["--host", "paste.example.com"]);
    let text = ok(&out);
    assert!(text.contains("#3 ") && !text.contains("#2 "), "{text}");
    assert!(
        text.contains("filters: 7 exchanges hidden by filters"),
        "{text}"
    );
    // Nothing shown carries it: exit 1, as for no match.
    let out = run(&["--method", "DELETE"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bad_filters_are_usage_errors_that_say_what_to_write() {
    for (args, says) in [
        (vec!["--status", "forbidden"], "4xx"),
        (vec!["--since", "yesterday"], "RFC 3339"),
        (vec!["--decision", "maybe"], "allow"),
    ] {
        let mut all = vec!["show", "--recording", "file:///nonexistent"];
        all.extend(args);
        let out = cassette(&all);
        assert_eq!(out.status.code(), Some(3));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[test]
fn the_filter_grammar_is_in_the_help_of_every_reading_verb() {
    for verb in ["show", "replay", "export", "search"] {
        let out = cassette(&[verb, "--help"]);
        let help = ok(&out);
        for needle in [
            "--host <GLOB>",
            "--decision <DECISION>",
            "--hide-metadata",
            "--since <TIME>",
            "a repeated flag matches any of its values (OR)",
            "always shown, whatever the filters",
        ] {
            assert!(help.contains(needle), "{verb}: {needle:?} missing");
        }
        // The verb's own options are not listed as filters.
        let own = match verb {
            "show" => "--exchange <N>",
            "replay" => "--speed <SPEED>",
            "export" => "--har <FILE>",
            _ => "--secret-file <FILE>",
        };
        let heading = help
            .find("Filters (repeat a flag")
            .expect("the Filters heading");
        assert!(
            help.find(own).unwrap() < heading,
            "{verb}: {own} is under Filters"
        );
    }
    // One exchange in full takes no filters.
    let out = cassette(&[
        "show",
        "--recording",
        "file:///nonexistent",
        "--exchange",
        "1",
        "--host",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use one or the other"));
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).expect("the output is JSON")
}

#[tokio::test]
async fn show_json_has_the_documented_fields() {
    let f = fixture::write_auditor().await;
    let doc = json(&cassette(&[
        "show",
        "--recording",
        &f.session_uri,
        "-o",
        "json",
    ]));
    let r = &doc["recordings"][0];
    assert_eq!(r["pod"], "agent-0-5f1c");
    assert_eq!(r["exchanges"], 8);
    assert_eq!(r["blocked"], 2);
    assert_eq!(r["refusedBeforeRequest"], 1);
    assert_eq!(r["gaps"], 1);
    assert_eq!(r["ended"], true);
    assert_eq!(r["integrity"]["state"], "verified");
    assert_eq!(r["integrity"]["keyChecked"], false);
    assert!(r.get("hiddenByFilters").is_none(), "no filters, no count");
    let types: Vec<&str> = r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"session_start"));
    assert_eq!(types.last(), Some(&"session_end"));
    assert!(
        types.contains(&"gap") && types.contains(&"refused"),
        "{types:?}"
    );
    let x7 = r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["exchange"] == "7")
        .expect("exchange 7");
    for (field, want) in [
        ("type", Value::from("exchange")),
        ("method", "DELETE".into()),
        ("host", "storage.googleapis.com".into()),
        ("path", "/storage/v1/b/logs/o/ci%2Fbuild.log".into()),
        ("status", 403.into()),
        ("latencyUs", 5000.into()),
        ("decision", "deny".into()),
        ("rule", "no-delete".into()),
        ("blocked", true.into()),
        ("service", "storage.googleapis.com".into()),
        ("permission", "storage.objects.delete".into()),
    ] {
        assert_eq!(x7[field], want, "{field} in {x7}");
    }
    let x4 = r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["exchange"] == "4")
        .unwrap();
    assert_eq!(x4["gitRefs"], serde_json::json!(["refs/heads/main"]));
    assert_eq!(x4["gitService"], "receive-pack");

    // Filters apply, and the count of what they hid is there.
    let doc = json(&cassette(&[
        "show",
        "--recording",
        &f.session_uri,
        "-o",
        "json",
        "--hide-metadata",
    ]));
    assert_eq!(doc["recordings"][0]["hiddenByFilters"], 2);
    assert_eq!(doc["recordings"][0]["exchanges"], 8, "totals stay whole");

    // YAML holds the same document.
    let yaml = ok(&cassette(&[
        "show",
        "--recording",
        &f.session_uri,
        "-o",
        "yaml",
    ]));
    let from_yaml: Value = serde_saphyr::from_str(&yaml).expect("the output is YAML");
    let from_json = json(&cassette(&[
        "show",
        "--recording",
        &f.session_uri,
        "-o",
        "json",
    ]));
    assert_eq!(from_yaml, from_json);
}

#[tokio::test]
async fn show_wide_adds_columns() {
    let f = fixture::write_auditor().await;
    let text = ok(&cassette(&[
        "show",
        "--recording",
        &f.session_uri,
        "-o",
        "wide",
    ]));
    let header = text.lines().find(|l| l.starts_with("TIME")).unwrap();
    for column in ["CONN", "HTTP", "TTFB", "SIDECAR", "TLS", "NOTES"] {
        assert!(header.contains(column), "{column} missing from {header}");
    }
    assert!(header.find("TLS").unwrap() < header.find("NOTES").unwrap());
    let list = text.lines().find(|l| l.contains("prefix=ci")).unwrap();
    assert!(
        list.contains("h2 TLSv1_3 verified") && list.contains("4.0ms"),
        "{list}"
    );
    let plain = ok(&cassette(&["show", "--recording", &f.session_uri]));
    assert!(!plain.lines().next().is_some_and(|l| l.contains("TTFB")));
    assert!(!plain.contains("TTFB"));
}

#[tokio::test]
async fn verify_ls_and_search_speak_json() {
    let f = fixture::write_auditor().await;
    let out = cassette(&["verify", "--recording", &f.session_uri, "-o", "json"]);
    assert_eq!(out.status.code(), Some(4), "unchecked without a key");
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["verdict"], "UNCHECKED");
    assert_eq!(doc["exitCode"], 4);
    let out = cassette(&[
        "verify",
        "--recording",
        &f.session_uri,
        "--public-key",
        &f.public_key,
        "-o",
        "yaml",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let doc: Value = serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).expect("YAML");
    assert_eq!(doc["verdict"], "OK");
    let r = &doc["recordings"][0];
    assert_eq!(r["verdict"], "OK");
    assert_eq!(r["completeness"], "complete");
    assert_eq!(r["announcedKey"], Value::from(f.public_key.clone()));
    assert!(r["keySource"].as_str().unwrap().contains("--public-key"));
    assert_eq!(r["faults"], serde_json::json!([]));
    assert!(r["segments"].as_u64().unwrap() >= 2);
    let out = cassette(&["verify", "--recording", &f.session_uri, "-o", "wide"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no table to widen"));

    let doc = json(&cassette(&[
        "ls",
        "--recording",
        &f.session_uri,
        "-o",
        "json",
    ]));
    assert_eq!(doc["sessions"], serde_json::json!([]));
    let r = &doc["recordings"][0];
    assert_eq!(r["pod"], "agent-0-5f1c");
    assert_eq!(r["closed"], true);
    assert!(
        r["url"]
            .as_str()
            .unwrap()
            .ends_with("/agents/fix-ci/agent-0-5f1c/")
    );

    let dir = tempfile::tempdir().unwrap();
    let (secret, key) = (dir.path().join("secret"), dir.path().join("key"));
    std::fs::write(&secret, fixture::SECRET).unwrap();
    std::fs::write(&key, fixture::FINGERPRINT_KEY).unwrap();
    let doc = json(&cassette(&[
        "search",
        "--recording",
        &f.session_uri,
        "--secret-file",
        secret.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
        "-o",
        "json",
    ]));
    assert_eq!(doc["found"], true);
    assert_eq!(doc["candidates"].as_array().unwrap().len(), 1);
    let matches = doc["recordings"][0]["matches"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = matches
        .iter()
        .map(|m| {
            (
                m["exchange"].as_str().unwrap(),
                m["direction"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        seen.contains(&("2", "response")) && seen.contains(&("3", "request")),
        "{seen:?}"
    );
    assert_eq!(doc["recordings"][0]["storedInClear"], serde_json::json!([]));
}

const NO_SESSIONS: &str =
    r#"{"apiVersion":"cassette.dev/v1alpha1","kind":"AgentSessionList","metadata":{},"items":[]}"#;

/// A stand-in API server on loopback: answers every request with `answer` (an AgentSession
/// list), or never with `None`, and hands back the request heads it read.
async fn api_server(
    answer: Option<&'static str>,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<String>,
    tokio::task::JoinHandle<()>,
) {
    let body = answer.map(|b| b.to_string());
    routed_api_server(move |_| body.clone()).await
}

/// A stand-in API server that answers a request for PATH with `route(PATH)`, or never.
async fn routed_api_server(
    route: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<String>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let route = std::sync::Arc::new(route);
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let tx = tx.clone();
            let route = route.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                let _ = tx.send(head);
                let Some(body) = route(&path) else {
                    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                    return;
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, rx, task)
}

fn kubeconfig(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: dev\ncontexts:\n- name: dev\n  context: {{cluster: nowhere, user: alice, namespace: agents}}\nclusters:\n- name: nowhere\n  cluster: {{server: \"http://127.0.0.1:9\"}}\n- name: local\n  cluster: {{server: \"{server}\"}}\nusers:\n- name: alice\n  user: {{token: alice-token}}\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn kubectl_flags_reach_the_api_server() {
    let (url, mut heads, task) = api_server(Some(NO_SESSIONS)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &url);
    let config = config.to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        cassette(&[
            "ls",
            "--kubeconfig",
            &config,
            "--cluster",
            "local",
            "--as",
            "bob@example.com",
            "--as-group",
            "auditors",
            "--as-group",
            "sre",
            "--request-timeout",
            "5s",
        ])
    })
    .await
    .unwrap();
    assert!(ok(&out).contains("no AgentSessions in namespace agents"));
    let head = heads
        .recv()
        .await
        .expect("a request reached the server")
        .to_lowercase();
    assert!(
        head.starts_with("get /apis/cassette.dev/v1alpha1/namespaces/agents/agentsessions"),
        "{head}"
    );
    assert!(head.contains("impersonate-user: bob@example.com"), "{head}");
    assert!(head.contains("impersonate-group: auditors"), "{head}");
    assert!(head.contains("impersonate-group: sre"), "{head}");
    assert!(head.contains("authorization: bearer alice-token"), "{head}");
    task.abort();
}

#[tokio::test]
async fn request_timeout_bounds_a_silent_api_server() {
    let (url, _heads, task) = api_server(None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &url);
    let config = config.to_str().unwrap().to_string();
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        cassette(&[
            "ls",
            "--kubeconfig",
            &config,
            "--cluster",
            "local",
            "--request-timeout",
            "1s",
        ])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    task.abort();
}

fn complete(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl_complete-cassette"))
        .args(args)
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .expect("the helper runs");
    eprintln!(
        "$ kubectl_complete-cassette {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The values of a cobra `__complete` answer, and its directive.
fn cobra(out: &Output) -> (Vec<String>, String) {
    let text = ok(out);
    let mut lines: Vec<&str> = text.lines().collect();
    let directive = lines.pop().expect("a directive line").to_string();
    let values = lines
        .iter()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    (values, directive)
}

#[test]
fn the_kubectl_completion_helper_answers_in_cobras_protocol() {
    let (values, directive) = cobra(&complete(&["sh"]));
    assert_eq!(values, ["show"]);
    assert_eq!(directive, ":4", "no file names instead");
    let (values, _) = cobra(&complete(&[""]));
    for verb in [
        "ls",
        "show",
        "replay",
        "verify",
        "export",
        "search",
        "completion",
    ] {
        assert!(
            values.contains(&verb.to_string()),
            "{verb} missing: {values:?}"
        );
    }
    let (values, _) = cobra(&complete(&["show", "fix-ci", "--host", "x", "--dec"]));
    assert_eq!(values, ["--decision"]);
    let (values, _) = cobra(&complete(&["show", "fix-ci", "-o", ""]));
    assert_eq!(values, ["wide", "json", "yaml"]);
    // No cluster: no session names, and no hanging.
    let (values, directive) = cobra(&complete(&["show", ""]));
    assert!(values.is_empty(), "{values:?}");
    assert_eq!(directive, ":4");
}

#[tokio::test]
async fn session_names_complete_from_the_api_server() {
    const SESSIONS: &str = r#"{"apiVersion":"cassette.dev/v1alpha1","kind":"AgentSessionList","metadata":{},"items":[
        {"apiVersion":"cassette.dev/v1alpha1","kind":"AgentSession","metadata":{"name":"fix-ci","namespace":"agents"},
         "spec":{"agent":{"serviceAccount":"coding-agent"},"recording":{"sink":"gs://recordings"}},"status":{"phase":"Active"}},
        {"apiVersion":"cassette.dev/v1alpha1","kind":"AgentSession","metadata":{"name":"refactor","namespace":"agents"},
         "spec":{"recording":{"sink":"gs://recordings"}}}]}"#;
    let (url, mut heads, task) = api_server(Some(SESSIONS)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &url).to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        complete(&[
            "--kubeconfig",
            &config,
            "--cluster",
            "local",
            "-n",
            "agents",
            "show",
            "f",
        ])
    })
    .await
    .unwrap();
    let text = ok(&out);
    assert_eq!(
        text,
        "fix-ci\tAgentSession, Active, agent coding-agent\n:4\n"
    );
    let head = heads.recv().await.unwrap().to_lowercase();
    assert!(
        head.starts_with("get /apis/cassette.dev/v1alpha1/namespaces/agents/agentsessions"),
        "{head}"
    );
    task.abort();
}

#[tokio::test]
async fn a_silent_api_server_completes_no_names_within_seconds() {
    let (url, _heads, task) = api_server(None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &url).to_str().unwrap().to_string();
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        complete(&["--kubeconfig", &config, "--cluster", "local", "verify", ""])
    })
    .await
    .unwrap();
    assert_eq!(ok(&out), ":4\n");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    task.abort();
}

#[test]
fn the_bash_script_completes_verbs_flags_and_values_in_bash() {
    let script = ok(&cassette(&["completion", "bash"]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubectl-cassette.bash");
    std::fs::write(&path, script).unwrap();
    let run = |words: &str, cword: usize, cur: &str, prev: &str| -> String {
        let program = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; _kubectl__cassette kubectl-cassette '{cur}' '{prev}'; echo \"${{COMPREPLY[@]}}\"",
            path.display()
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(program)
            .output()
            .expect("bash runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        run("kubectl-cassette sh", 1, "sh", "kubectl-cassette"),
        "show"
    );
    assert_eq!(
        run("kubectl-cassette show --hi", 2, "--hi", "show"),
        "--hide-metadata"
    );
    assert_eq!(
        run(
            "kubectl-cassette show fix --decision ''",
            4,
            "",
            "--decision"
        ),
        "allow deny review blocked passthrough"
    );
}

#[tokio::test]
async fn ls_show_and_verify_read_a_session_from_the_api_server() {
    let f = fixture::write_auditor().await;
    let session = serde_json::json!({
        "apiVersion": "cassette.dev/v1alpha1", "kind": "AgentSession",
        "metadata": {"name": "fix-ci", "namespace": "agents", "creationTimestamp": "2026-05-01T11:00:00Z"},
        "spec": {"agent": {"serviceAccount": "coding-agent"}, "recording": {"sink": f.sink}},
        "status": {"phase": "Active", "totals": {"exchanges": 8, "blocked": 2, "masked": 6, "bytes": 0},
                   "pods": [{"name": "agent-0", "uid": "5f1c", "publicKey": f.public_key, "exchanges": 8, "blocked": 2, "masked": 6},
                            {"name": "agent-1", "uid": "77aa", "lastShippedSegment": "segment-000003.jsonl.zst"}]}
    });
    let list = serde_json::json!({"apiVersion": "cassette.dev/v1alpha1", "kind": "AgentSessionList", "metadata": {}, "items": [session.clone()]});
    let (one, all) = (session.to_string(), list.to_string());
    let (url, _heads, task) = routed_api_server(move |path| {
        let path = path.split('?').next().unwrap_or_default();
        Some(if path.ends_with("/agentsessions/fix-ci") {
            one.clone()
        } else {
            all.clone()
        })
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &url).to_str().unwrap().to_string();
    let run = move |args: Vec<&'static str>| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let mut all = vec!["--kubeconfig", config.as_str(), "--cluster", "local"];
            all.extend(args);
            cassette(&all)
        })
    };

    let doc = json(&run(vec!["ls", "-o", "json"]).await.unwrap());
    let s = &doc["sessions"][0];
    for (field, want) in [
        ("namespace", Value::from("agents")),
        ("name", "fix-ci".into()),
        ("phase", "Active".into()),
        ("agent", "coding-agent".into()),
        ("exchanges", 8.into()),
        ("created", "2026-05-01T11:00:00Z".into()),
    ] {
        assert_eq!(s[field], want, "{field} in {s}");
    }
    let r = &s["recordings"][0];
    assert_eq!(r["pod"], "agent-0-5f1c");
    assert_eq!(r["inStatus"], true);
    assert_eq!(r["publicKey"], Value::from(f.public_key.clone()));
    assert_eq!(
        s["podsWithoutRecording"],
        serde_json::json!([{"pod": "agent-1", "lastShippedSegment": "segment-000003.jsonl.zst"}])
    );
    let wide = ok(&run(vec!["ls", "-o", "wide"]).await.unwrap());
    let header = wide.lines().next().unwrap();
    assert!(
        header.contains("PODS") && header.contains("CREATED"),
        "{header}"
    );
    assert!(
        wide.contains("pod agent-1: in the status, but no recording in the sink"),
        "{wide}"
    );

    let doc = json(
        &run(vec!["show", "fix-ci", "-o", "json", "--status", "403"])
            .await
            .unwrap(),
    );
    let r = &doc["recordings"][0];
    assert_eq!(
        r["integrity"]["keyChecked"], true,
        "the status key was checked"
    );
    assert_eq!(r["hiddenByFilters"], 7);

    let out = run(vec!["verify", "fix-ci", "-o", "json"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "agent-1 shipped but is missing");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["verdict"], "INVALID");
    assert_eq!(doc["recordings"][0]["verdict"], "OK");
    assert_eq!(doc["pods"][0]["pod"], "agent-1");
    assert_eq!(doc["pods"][0]["verdict"], "INVALID");
    task.abort();
}
