//! The built `kubectl-cassette` binary against real recordings (written by
//! `cassette_recording::Recorder` to a temporary `file://` sink): verify's exit codes on good,
//! tampered, truncated and open recordings; show, export and search as an auditor runs them.

#[path = "../src/fixture.rs"]
mod fixture;
#[path = "support/forge.rs"]
mod forge;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn cassette(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-cassette"))
        .args(args)
        // No kubeconfig of the machine may leak into a test that uses --recording.
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

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited")
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "zst"))
        .collect();
    v.sort();
    v
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn decompress(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(std::fs::File::open(path).unwrap())
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn recompress(path: &Path, text: &[u8]) {
    let bytes = zstd::stream::encode_all(text, 3).unwrap();
    let mut perm = std::fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(path, perm).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn verify_passes_on_a_good_recording() {
    let f = fixture::write().await;
    assert!(
        segments(&f.recording_dir).len() >= 3,
        "the fixture spans several segments"
    );
    let out = cassette(&[
        "verify",
        "--recording",
        &f.session_uri,
        "--public-key",
        &f.public_key,
    ]);
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    assert!(text.starts_with("OK          agent-0-5f1c:"), "{text}");
    assert!(text.contains("checked against --public-key"), "{text}");
    assert!(text.contains("1 ok, 0 incomplete, 0 invalid"), "{text}");

    // Without a key to trust it holds together, and that is all it can say.
    let out = cassette(&["verify", "--recording", &f.session_uri]);
    assert_eq!(code(&out), 4);
    assert!(stdout(&out).contains("NOT checked against a key you trust"));
}

#[tokio::test]
async fn verify_names_a_flipped_byte() {
    let f = fixture::write().await;
    let seg = &segments(&f.recording_dir)[1];
    let mut text = decompress(seg);
    // Change one byte inside the second record of segment 2, keep it valid JSON.
    let line_start = text.iter().position(|b| *b == b'\n').unwrap() + 1;
    let at = line_start
        + text[line_start..]
            .windows(7)
            .position(|w| w == b"\"time\":")
            .unwrap()
        + 9;
    text[at] = if text[at] == b'1' { b'2' } else { b'1' };
    recompress(seg, &text);

    let out = cassette(&[
        "verify",
        "--recording",
        &f.session_uri,
        "--public-key",
        &f.public_key,
    ]);
    assert_eq!(code(&out), 1);
    let text = stdout(&out);
    assert!(text.starts_with("INVALID     agent-0-5f1c:"), "{text}");
    let name = file_name(seg);
    assert!(name.starts_with("seg-000002-"), "{name}");
    assert!(
        text.contains(&format!("FAULT {name} line 2 (seq ")) && text.contains("chain broken"),
        "{text}"
    );
    assert!(
        text.contains(&format!("FAULT {name}: sha256")) && text.contains("the object was altered"),
        "{text}"
    );
}

#[tokio::test]
async fn verify_names_a_dropped_segment() {
    let f = fixture::write().await;
    let segs = segments(&f.recording_dir);
    std::fs::remove_file(&segs[1]).unwrap();
    let (second, third) = (file_name(&segs[1]), file_name(&segs[2]));
    let out = cassette(&[
        "verify",
        "--recording",
        &f.session_uri,
        "--public-key",
        &f.public_key,
    ]);
    assert_eq!(code(&out), 1);
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "FAULT {third}: segment 2 is missing before this one"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "FAULT manifest.json: lists {second}, which is not in the recording"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn verify_refuses_another_key() {
    let f = fixture::write().await;
    let other = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    let out = cassette(&[
        "verify",
        "--recording",
        &f.session_uri,
        "--public-key",
        other,
    ]);
    assert_eq!(code(&out), 1);
    assert!(
        stdout(&out).contains(&format!(
            "signed with key {}, expected {other}",
            f.public_key
        )),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn verify_reports_an_open_recording_as_incomplete() {
    let f = fixture::write().await;
    std::fs::remove_file(f.recording_dir.join("manifest.json")).unwrap();
    let out = cassette(&[
        "verify",
        "--recording",
        &f.session_uri,
        "--public-key",
        &f.public_key,
    ]);
    assert_eq!(code(&out), 2);
    let text = stdout(&out);
    assert!(text.starts_with("INCOMPLETE  agent-0-5f1c:"), "{text}");
    assert!(text.contains("no manifest.json yet"), "{text}");

    // With its last segment's seal cut off it is not the recorder's any more: the sidecar
    // ships only sealed segments, so whoever wrote it, it was not the recorder.
    let last = segments(&f.recording_dir).pop().unwrap();
    let text = decompress(&last);
    let lines: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
    assert!(String::from_utf8_lossy(lines[lines.len() - 1]).contains("\"kind\":\"seal\""));
    recompress(&last, &lines[..lines.len() - 1].concat());
    let out = cassette(&[
        "verify",
        "--recording",
        &f.session_uri,
        "--public-key",
        &f.public_key,
    ]);
    assert_eq!(code(&out), 1);
    assert!(
        stdout(&out).contains("ends without a seal"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn usage_errors_exit_3() {
    let out = cassette(&["verify"]);
    assert_eq!(code(&out), 3);
    let out = cassette(&["verify", "--recording", "file:///nonexistent-cassette/x/"]);
    assert_eq!(code(&out), 3);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no recording found under"));
    let out = cassette(&["export", "--recording", "file:///x/"]);
    assert_eq!(code(&out), 3, "export needs --har or --jsonl");
    let help = cassette(&["verify", "--help"]);
    assert_eq!(code(&help), 0);
    assert!(
        stdout(&help).contains("2  INCOMPLETE"),
        "exit codes are documented"
    );
}

#[tokio::test]
async fn show_prints_the_timeline_and_one_exchange() {
    let f = fixture::write().await;
    let out = cassette(&["show", "--recording", &f.session_uri]);
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    assert!(text.starts_with("recording agent-0-5f1c"), "{text}");
    assert!(
        text.contains("5 exchange(s), 1 blocked, 1 refused before any request, 5 masked"),
        "{text}"
    );
    assert!(
        text.contains("integrity: verified, sealed and closed by its manifest"),
        "{text}"
    );
    assert!(text.contains("BLOCKED policy (no-push-main)"), "{text}");

    let out = cassette(&[
        "show",
        "--recording",
        &f.session_uri,
        "--exchange",
        "2",
        "--bodies",
    ]);
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    assert!(text.contains("> GET https://secretmanager.googleapis.com/v1/projects/p/secrets/db/versions/latest:access HTTP/2"), "{text}");
    assert!(
        text.contains("{\"payload\":{\"data\":\"«masked:secret-field:"),
        "{text}"
    );

    let out = cassette(&["show", "--recording", &f.session_uri, "--exchange", "99"]);
    assert_eq!(code(&out), 3);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no exchange 99"));
}

#[tokio::test]
async fn replay_without_pacing_prints_the_story() {
    let f = fixture::write().await;
    let out = cassette(&["replay", "--recording", &f.session_uri, "--speed", "0"]);
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    let story = [
        "session_start pod agent-0",
        "#1 → GET storage.googleapis.com/storage/v1/b/logs/o",
        "#1 token swapped (bearer, agent@proj.iam.gserviceaccount.com) for storage.googleapis.com",
        "#1 ← 200",
        "#1 done: allow in 12.3ms",
        "#4 git receive-pack: refs/heads/main",
        "#4 BLOCKED policy (no-push-main)",
        "BLOCKED expired",
        "session_end (shutdown)",
    ];
    let mut at = 0;
    for line in story {
        let found = text[at..]
            .find(line)
            .unwrap_or_else(|| panic!("{line:?} not in order in\n{text}"));
        at += found;
    }
    // --follow on a closed recording returns at its session_end.
    let out = cassette(&[
        "replay",
        "--recording",
        &f.session_uri,
        "--speed",
        "0",
        "--follow",
    ]);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).trim_end().ends_with("session_end (shutdown)"));
}

/// HAR 1.2, checked member by member against the spec: required members present with
/// the right types, custom members only with a leading `_`.
fn validate_har(doc: &Value) -> Result<(), String> {
    fn obj<'a>(v: &'a Value, at: &str) -> Result<&'a serde_json::Map<String, Value>, String> {
        v.as_object().ok_or(format!("{at} is not an object"))
    }
    fn allowed(o: &serde_json::Map<String, Value>, at: &str, known: &[&str]) -> Result<(), String> {
        for k in o.keys() {
            if !k.starts_with('_') && !known.contains(&k.as_str()) && k != "comment" {
                return Err(format!(
                    "{at}.{k} is not a HAR 1.2 member (custom ones start with _)"
                ));
            }
        }
        Ok(())
    }
    fn string(o: &serde_json::Map<String, Value>, at: &str, k: &str) -> Result<(), String> {
        o.get(k)
            .and_then(Value::as_str)
            .map(|_| ())
            .ok_or(format!("{at}.{k} must be a string"))
    }
    fn number(o: &serde_json::Map<String, Value>, at: &str, k: &str) -> Result<f64, String> {
        o.get(k)
            .and_then(Value::as_f64)
            .ok_or(format!("{at}.{k} must be a number"))
    }
    fn pairs(o: &serde_json::Map<String, Value>, at: &str, k: &str) -> Result<(), String> {
        let list = o
            .get(k)
            .and_then(Value::as_array)
            .ok_or(format!("{at}.{k} must be an array"))?;
        for (i, p) in list.iter().enumerate() {
            let p = obj(p, &format!("{at}.{k}[{i}]"))?;
            string(p, at, "name")?;
            string(p, at, "value")?;
        }
        Ok(())
    }
    let log = obj(&doc["log"], "log")?;
    allowed(
        log,
        "log",
        &["version", "creator", "browser", "pages", "entries"],
    )?;
    if log.get("version").and_then(Value::as_str) != Some("1.2") {
        return Err("log.version must be \"1.2\"".into());
    }
    let creator = obj(&log["creator"], "log.creator")?;
    string(creator, "log.creator", "name")?;
    string(creator, "log.creator", "version")?;
    let entries = log["entries"]
        .as_array()
        .ok_or("log.entries must be an array")?;
    for (i, e) in entries.iter().enumerate() {
        let at = format!("log.entries[{i}]");
        let e = obj(e, &at)?;
        allowed(
            e,
            &at,
            &[
                "pageref",
                "startedDateTime",
                "time",
                "request",
                "response",
                "cache",
                "timings",
                "serverIPAddress",
                "connection",
            ],
        )?;
        let started = e
            .get("startedDateTime")
            .and_then(Value::as_str)
            .ok_or(format!("{at}.startedDateTime"))?;
        started
            .parse::<jiff::Timestamp>()
            .map_err(|err| format!("{at}.startedDateTime {started:?}: {err}"))?;
        let time = number(e, &at, "time")?;
        obj(&e["cache"], &format!("{at}.cache"))?;

        let rq = obj(&e["request"], &format!("{at}.request"))?;
        let rat = format!("{at}.request");
        allowed(
            rq,
            &rat,
            &[
                "method",
                "url",
                "httpVersion",
                "cookies",
                "headers",
                "queryString",
                "postData",
                "headersSize",
                "bodySize",
            ],
        )?;
        for k in ["method", "url", "httpVersion"] {
            string(rq, &rat, k)?;
        }
        for k in ["cookies", "headers", "queryString"] {
            pairs(rq, &rat, k)?;
        }
        number(rq, &rat, "headersSize")?;
        number(rq, &rat, "bodySize")?;
        if let Some(post) = rq.get("postData") {
            let post = obj(post, &format!("{rat}.postData"))?;
            allowed(post, &rat, &["mimeType", "params", "text"])?;
            string(post, &rat, "mimeType")?;
            string(post, &rat, "text")?;
        }

        let rs = obj(&e["response"], &format!("{at}.response"))?;
        let sat = format!("{at}.response");
        allowed(
            rs,
            &sat,
            &[
                "status",
                "statusText",
                "httpVersion",
                "cookies",
                "headers",
                "content",
                "redirectURL",
                "headersSize",
                "bodySize",
            ],
        )?;
        number(rs, &sat, "status")?;
        for k in ["statusText", "httpVersion", "redirectURL"] {
            string(rs, &sat, k)?;
        }
        pairs(rs, &sat, "cookies")?;
        pairs(rs, &sat, "headers")?;
        number(rs, &sat, "headersSize")?;
        number(rs, &sat, "bodySize")?;
        let content = obj(&rs["content"], &format!("{sat}.content"))?;
        allowed(
            content,
            &sat,
            &["size", "compression", "mimeType", "text", "encoding"],
        )?;
        number(content, &sat, "size")?;
        string(content, &sat, "mimeType")?;

        let t = obj(&e["timings"], &format!("{at}.timings"))?;
        allowed(
            t,
            &at,
            &[
                "blocked", "dns", "connect", "send", "wait", "receive", "ssl",
            ],
        )?;
        let mut sum = 0.0;
        for k in ["send", "wait", "receive"] {
            let v = number(t, &at, k)?;
            if v < 0.0 {
                return Err(format!("{at}.timings.{k} must not be negative"));
            }
            sum += v;
        }
        for k in ["blocked", "dns", "connect"] {
            if let Some(v) = t.get(k) {
                let v = v.as_f64().ok_or(format!("{at}.timings.{k}"))?;
                if v != -1.0 && v < 0.0 {
                    return Err(format!("{at}.timings.{k} is negative but not -1"));
                }
                if v > 0.0 {
                    sum += v;
                }
            }
        }
        if (sum - time).abs() > 1e-6 {
            return Err(format!(
                "{at}.time {time} is not the sum of its timings {sum}"
            ));
        }
    }
    Ok(())
}

#[tokio::test]
async fn export_har_is_valid_har_1_2() {
    let f = fixture::write().await;
    let path = f.dir.path().join("session.har");
    let out = cassette(&[
        "export",
        "--recording",
        &f.session_uri,
        "--har",
        path.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0);
    let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    validate_har(&doc).unwrap();
    assert_eq!(doc["log"]["entries"].as_array().unwrap().len(), 5);

    // The validator is not a rubber stamp.
    let mut broken = doc.clone();
    broken["log"]["entries"][0]["request"]["decision"] = Value::from("allow");
    assert!(
        validate_har(&broken)
            .unwrap_err()
            .contains("request.decision")
    );
    let mut broken = doc.clone();
    broken["log"]["entries"][0]["time"] = Value::from(1.0);
    assert!(validate_har(&broken).is_err());

    // And the HAR schema the tools that import HAR use agrees (har-schema via har-validator,
    // installed by cli/tests/har/install.sh; `make test` runs it through scripts/deps.sh).
    let said = har_schema_check(&path).unwrap();
    assert!(said.contains("valid HAR 1.2, 5 entries"), "{said}");
    let broken_path = f.dir.path().join("broken.har");
    let mut broken = doc.clone();
    broken["log"]["entries"][0]["request"]["headers"] = Value::from("not a list");
    std::fs::write(&broken_path, broken.to_string()).unwrap();
    let refused = har_schema_check(&broken_path).unwrap_err();
    assert!(refused.contains("not valid HAR"), "{refused}");
}

/// `node cli/tests/har/validate.js FILE`: Ok(its report) when the file is valid HAR.
fn har_schema_check(har: &Path) -> Result<String, String> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/har");
    let install = Command::new("bash")
        .arg(here.join("install.sh"))
        .output()
        .expect("bash runs");
    assert!(
        install.status.success(),
        "installing har-validator failed: {}",
        String::from_utf8_lossy(&install.stderr)
    );
    let modules = String::from_utf8(install.stdout).unwrap();
    let out = Command::new("node")
        .arg(here.join("validate.js"))
        .arg(har)
        .env("HAR_VALIDATOR_MODULES", modules.trim())
        .output()
        .expect("node runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(said)
    } else {
        Err(said)
    }
}

#[tokio::test]
async fn export_jsonl_keeps_the_records_as_they_are() {
    let f = fixture::write().await;
    let out = cassette(&["export", "--recording", &f.session_uri, "--jsonl", "-"]);
    assert_eq!(code(&out), 0);
    let mut expected = Vec::new();
    for seg in segments(&f.recording_dir) {
        expected.extend(decompress(&seg));
    }
    assert_eq!(out.stdout, expected, "byte for byte");
    let first: Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["kind"], "session_start");
}

#[tokio::test]
async fn search_finds_which_exchanges_carried_a_secret() {
    let f = fixture::write().await;
    let key = f.dir.path().join("key");
    std::fs::write(&key, fixture::FINGERPRINT_KEY).unwrap();
    let env = f.dir.path().join("db.env");
    std::fs::write(&env, format!("export DB_PASSWORD={}\n", fixture::SECRET)).unwrap();
    let out = cassette(&[
        "search",
        "--recording",
        &f.session_uri,
        "--secret-file",
        env.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    assert!(
        text.contains("recording agent-0-5f1c: 2 match(es)"),
        "{text}"
    );
    let seen = text.lines().find(|l| l.contains("#2")).expect("exchange 2");
    assert!(
        seen.contains("response")
            && seen.contains("secretmanager.googleapis.com")
            && seen.contains("in body (seen by the agent"),
        "{seen}"
    );
    let sent = text.lines().find(|l| l.contains("#3")).expect("exchange 3");
    assert!(
        sent.contains("request")
            && sent.contains("POST")
            && sent.contains("paste.example.com/api/new")
            && sent.contains("sent by the agent"),
        "{sent}"
    );

    // A service-account key file: its private_key was masked in what the agent uploaded.
    let sa = f.dir.path().join("sa.json");
    std::fs::write(&sa, fixture::SERVICE_ACCOUNT_KEY).unwrap();
    let out = cassette(&[
        "search",
        "--recording",
        &f.session_uri,
        "--secret-file",
        sa.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    let hit = text
        .lines()
        .find(|l| l.contains("candidate private_key"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        hit.contains("#3") && hit.contains("request") && hit.contains("in body (sent by the agent"),
        "{hit}"
    );

    // Another secret, or the right secret with the wrong key: no match, exit 1.
    std::fs::write(&env, "export DB_PASSWORD=something-else\n").unwrap();
    let out = cassette(&[
        "search",
        "--recording",
        &f.session_uri,
        "--secret-file",
        env.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 1);
    assert!(stdout(&out).contains("0 match(es)"));
}

/// The recording's path, as the fixture writes it.
fn fixture_path() -> cassette_recording::RecordingPath {
    cassette_recording::RecordingPath {
        namespace: "agents".into(),
        session: "fix-ci".into(),
        pod: "agent-0".into(),
        pod_uid: "5f1c".into(),
    }
}

/// What the agent writes when it reaches the sink: a whole recording of its own, chained and
/// signed with a key it made, at the very place the sidecar records its pod.
fn forged_recording(sink_root: &Path) -> (forge::Forger, std::path::PathBuf) {
    use cassette_recording::record::{Event, Request};
    let mut f = forge::Forger::new(fixture_path());
    f.start(false);
    f.add(Event::Request(Request {
        exchange: 1,
        conn: 1,
        method: "GET".into(),
        scheme: "https".into(),
        authority: "example.com".into(),
        path: "/nothing-to-see".into(),
        version: "HTTP/1.1".into(),
        headers: vec![],
    }));
    f.seal();
    let manifest = f.finish();
    let dir = f.write(sink_root, Some(&manifest));
    (f, dir)
}

#[tokio::test]
async fn verify_without_a_key_it_could_check_exits_4() {
    let f = fixture::write().await;
    let out = cassette(&["verify", "--recording", &f.session_uri]);
    assert_eq!(
        code(&out),
        4,
        "a recording checked only against the key it announces itself is not OK"
    );
    let text = stdout(&out);
    assert!(text.starts_with("UNCHECKED   agent-0-5f1c:"), "{text}");
    assert!(text.contains("pass --public-key"), "{text}");
    assert!(
        text.contains("0 ok, 0 incomplete, 0 invalid, 1 unchecked"),
        "{text}"
    );

    // The agent's own recording at the pod's place: consistent with itself, so only a key
    // the auditor holds tells it apart.
    let dir = tempfile::tempdir().unwrap();
    forged_recording(dir.path());
    let uri = format!("file://{}/agents/fix-ci/", dir.path().display());
    let out = cassette(&["verify", "--recording", &uri]);
    assert_eq!(code(&out), 4, "a forged recording must not verify as OK");
    let out = cassette(&["verify", "--recording", &uri, "--public-key", &f.public_key]);
    assert_eq!(code(&out), 1);
    assert!(stdout(&out).contains("signed with key"), "{}", stdout(&out));
}

#[tokio::test]
async fn verify_takes_the_pinned_key_from_a_file() {
    let f = fixture::write().await;
    let key = f.dir.path().join("agent-0.pub");
    // As `kubectl get asess fix-ci -o jsonpath='{.status.pods[*].publicKey}'` prints it.
    std::fs::write(&key, format!("{}\n", f.public_key)).unwrap();
    let out = cassette(&[
        "verify",
        "--recording",
        &f.session_uri,
        "--public-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0);
    assert!(
        stdout(&out).contains(&format!("checked against --public-key {}", key.display())),
        "{}",
        stdout(&out)
    );
    let other = f.dir.path().join("other.pub");
    std::fs::write(&other, "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n").unwrap();
    let out = cassette(&[
        "verify",
        "--recording",
        &f.session_uri,
        "--public-key",
        other.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 1);
    std::fs::write(&other, "not a key\n").unwrap();
    let out = cassette(&[
        "verify",
        "--recording",
        &f.session_uri,
        "--public-key",
        other.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 3, "an unreadable pinned key is a usage error");
}

#[test]
fn verify_help_documents_every_exit_code() {
    let help = stdout(&cassette(&["verify", "--help"]));
    for line in [
        "0  OK",
        "1  INVALID",
        "2  INCOMPLETE",
        "3  usage error",
        "4  UNCHECKED",
    ] {
        assert!(help.contains(line), "{line:?} not in\n{help}");
    }
    assert!(help.contains("--public-key <KEY|FILE>"), "{help}");
}

#[tokio::test]
async fn a_recording_copied_under_another_session_is_invalid() {
    let f = fixture::write().await;
    let sink = f.dir.path().join("sink");
    // The same bytes, under another session's and another pod's directory.
    for (place, names) in [
        ("agents/release/agent-0-5f1c", "session fix-ci"),
        ("agents/fix-ci/agent-1-5f1c", "pod agent-0 (uid 5f1c)"),
        ("prod/fix-ci/agent-0-5f1c", "namespace agents"),
    ] {
        let to = sink.join(place);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(&f.recording_dir).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
        let uri = format!("file://{}/", to.display());
        let out = cassette(&["verify", "--recording", &uri, "--public-key", &f.public_key]);
        assert_eq!(code(&out), 1, "{place}");
        let text = stdout(&out);
        assert!(
            text.contains(&format!("names {names}")) && text.contains("but sits at"),
            "{text}"
        );
        std::fs::remove_dir_all(&to).unwrap();
    }
}

#[tokio::test]
async fn the_cli_exits_quietly_when_its_output_is_closed() {
    let f = fixture::write().await;
    for args in [
        vec![
            "verify",
            "--recording",
            &f.session_uri,
            "--public-key",
            &f.public_key,
        ],
        vec!["show", "--recording", &f.session_uri],
        vec!["export", "--recording", &f.session_uri, "--jsonl", "-"],
    ] {
        // `kubectl cassette verify … | head -0`: the reader is gone before the first line.
        let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-cassette"))
            .args(&args)
            .env("KUBECONFIG", "/nonexistent")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            stderr.is_empty(),
            "{args:?}: nothing to say about it: {stderr}"
        );
        if args[0] == "verify" {
            assert_eq!(
                out.status.code(),
                Some(0),
                "the verdict still decides the exit code"
            );
        }
    }
}

#[tokio::test]
async fn an_output_that_cannot_be_written_is_an_error() {
    let f = fixture::write().await;
    // /dev/full: every write fails with "No space left on device", which is not the reader
    // going away and must not pass for success.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-cassette"))
        .args(["show", "--recording", &f.session_uri])
        .env("KUBECONFIG", "/nonexistent")
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot write the output"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A recording as recorders before the fix wrote it when their sidecar restarted after a
/// crash: exchange and connection ids started again at 1.
fn restarted_recording(sink_root: &Path) -> String {
    use cassette_recording::record::{Event, Request, Response};
    let mut f = forge::Forger::new(fixture_path());
    let exchange = |f: &mut forge::Forger, time: &str, host: &str| {
        f.add_at(
            time,
            Event::Request(Request {
                exchange: 1,
                conn: 1,
                method: "GET".into(),
                scheme: "https".into(),
                authority: host.into(),
                path: "/".into(),
                version: "HTTP/1.1".into(),
                headers: vec![],
            }),
        );
        f.add_at(
            time,
            Event::Response(Response {
                exchange: 1,
                status: 200,
                version: "HTTP/1.1".into(),
                headers: vec![],
                trailers: None,
            }),
        );
    };
    f.start(false);
    exchange(
        &mut f,
        "2026-05-01T12:01:00.000000000Z",
        "before-the-crash.example",
    );
    f.seal();
    f.start(true);
    exchange(
        &mut f,
        "2026-05-01T12:05:00.000000000Z",
        "after-the-restart.example",
    );
    let manifest = f.finish();
    f.write(sink_root, Some(&manifest));
    format!("file://{}/agents/fix-ci/", sink_root.display())
}

#[test]
fn exchanges_with_the_same_id_before_and_after_a_restart_stay_apart() {
    let dir = tempfile::tempdir().unwrap();
    let uri = restarted_recording(dir.path());

    let out = cassette(&["show", "--recording", &uri]);
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    assert!(text.contains("2 exchange(s)"), "{text}");
    let row = |host: &str| {
        text.lines()
            .find(|l| l.contains(host))
            .unwrap_or_else(|| panic!("no row for {host} in\n{text}"))
            .to_string()
    };
    assert!(
        row("before-the-crash.example").starts_with("12:01:00"),
        "{text}"
    );
    assert!(
        row("after-the-restart.example").starts_with("12:05:00"),
        "{text}"
    );

    // `--exchange 1` could be either: the CLI says which ones there are.
    let out = cassette(&["show", "--recording", &uri, "--exchange", "1"]);
    assert_eq!(code(&out), 3);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("1.1") && err.contains("2.1"), "{err}");
    let out = cassette(&["show", "--recording", &uri, "--exchange", "2.1"]);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("after-the-restart.example"));

    let har = dir.path().join("out.har");
    let out = cassette(&[
        "export",
        "--recording",
        &uri,
        "--har",
        har.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0);
    let doc: Value = serde_json::from_slice(&std::fs::read(&har).unwrap()).unwrap();
    let urls: Vec<&str> = doc["log"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            "https://before-the-crash.example/",
            "https://after-the-restart.example/"
        ]
    );
}

/// What someone who can write to the bucket adds to a live recording: the next segment, its
/// records chained on from the last seal (SHA-256 is public), without a seal (nobody but
/// the recorder can sign). show, export and replay must not read it as part of the
/// recording.
#[tokio::test]
async fn readers_leave_out_a_segment_the_recorder_did_not_write() {
    use cassette_recording::record::{Event, Request};
    let f = fixture::write().await;
    std::fs::remove_file(f.recording_dir.join("manifest.json")).unwrap();
    let last = segments(&f.recording_dir).pop().unwrap();
    let text = decompress(&last);
    let tip: Value = serde_json::from_slice(
        text.split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap(),
    )
    .unwrap();
    let seq = tip["seq"].as_u64().unwrap() + 1;
    let event = Event::Request(Request {
        exchange: 99,
        conn: 99,
        method: "GET".into(),
        scheme: "https".into(),
        authority: "nothing-happened-here.example".into(),
        path: "/".into(),
        version: "HTTP/1.1".into(),
        headers: vec![],
    });
    let canonical =
        cassette_recording::chain::canonical(seq, "2026-05-01T13:00:00.000000000Z", &event);
    let link = cassette_recording::chain::link(tip["chain"].as_str().unwrap(), &canonical);
    let forged = cassette_recording::chain::line(&canonical, &link);
    let name = "seg-000099.jsonl.zst";
    std::fs::write(
        f.recording_dir.join(name),
        zstd::stream::encode_all(&forged[..], 3).unwrap(),
    )
    .unwrap();

    let out = cassette(&["show", "--recording", &f.session_uri]);
    assert_eq!(code(&out), 0);
    assert!(
        !stdout(&out).contains("nothing-happened-here"),
        "{}",
        stdout(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("left out {name}")), "{stderr}");
    for args in [
        vec!["export", "--recording", &f.session_uri, "--jsonl", "-"],
        vec!["replay", "--recording", &f.session_uri, "--speed", "0"],
        vec![
            "replay",
            "--recording",
            &f.session_uri,
            "--speed",
            "0",
            "--follow",
        ],
    ] {
        let out = cassette(&args);
        assert!(
            !stdout(&out).contains("nothing-happened-here"),
            "{args:?}: {}",
            stdout(&out)
        );
        // (--follow stops at the recording's session_end, before it gets there.)
        if !args.contains(&"--follow") {
            assert!(
                String::from_utf8_lossy(&out.stderr).contains(&format!("left out {name}")),
                "{args:?}"
            );
        }
    }
}

#[tokio::test]
async fn search_checks_a_candidate_body_against_what_was_not_stored() {
    let f = fixture::write().await;
    let key = f.dir.path().join("key");
    std::fs::write(&key, fixture::FINGERPRINT_KEY).unwrap();
    let search = |file: &Path, key: &Path| {
        cassette(&[
            "search",
            "--recording",
            &f.session_uri,
            "--body-file",
            file.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
        ])
    };

    // Exchange 5 stored 1024 of its 1100 bytes; the auditor holds a file it may have been.
    let blob = f.dir.path().join("blob.bin");
    std::fs::write(&blob, fixture::upload_blob()).unwrap();
    let out = search(&blob, &key);
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    let hit = text
        .lines()
        .find(|l| l.contains("#5"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        hit.contains("request body")
            && hit.contains("PUT")
            && hit.contains("1100 bytes, 1024 stored"),
        "{hit}"
    );

    // A body that was masked before it was recorded matches once masked the same way.
    let upload = f.dir.path().join("upload.json");
    std::fs::write(&upload, fixture::service_account_upload()).unwrap();
    let out = search(&upload, &key);
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    let hit = text
        .lines()
        .find(|l| l.contains("#3"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(hit.contains("after masking"), "{hit}");

    // One byte off: no match.
    let mut other = fixture::upload_blob();
    other[1099] ^= 1;
    std::fs::write(&blob, other).unwrap();
    let out = search(&blob, &key);
    assert_eq!(code(&out), 1);
    assert!(stdout(&out).contains("0 match(es)"), "{}", stdout(&out));

    // The wrong key is said to be wrong, not taken for "no match".
    let wrong = f.dir.path().join("wrong-key");
    std::fs::write(&wrong, b"some other key").unwrap();
    let out = search(&blob, &wrong);
    assert_eq!(code(&out), 3);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not the key this recording"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
