//! The sidecar in a network namespace, as the injector sets it up in a pod: `init` installs
//! the capture rules as root, `run` records as UID 1337, and the agent's real tools run as UID
//! 1000 with only the session CA bundle to trust — curl (HTTP/1.1 and HTTP/2), git clone and
//! push, gcloud storage against fake-gcs-server through an upstream override, a gRPC
//! Pub/Sub client, and the Cloud Storage Python client batching deletes. Then the recording is read back and verified, and the ways around the
//! recorder are tried and must fail.
//!
//! Needs root (namespaces, iptables, setpriv); skips with a message otherwise.

use anyhow::{Context, Result, bail};
use cassette_e2e::clients::{self, AgentHome, output_within, stdout_within};
use cassette_e2e::emulators::{FakeGcs, PubsubEmulator};
use cassette_e2e::netns::{self, Identity, Topology};
use cassette_e2e::upstreams::{LogEntry, PROJECT_ID, Upstreams, UpstreamsConfig};
use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const E2E_BINARY: &str = env!("CARGO_BIN_EXE_cassette-e2e");
const TIMEOUT: Duration = Duration::from_secs(90);
const SIDECAR_UID: u32 = 1337;
const BUCKET: &str = "agent-bucket";

/// The session the pod records into: main is protected, and buckets, objects and topics may
/// not be deleted.
const SESSION_SPEC: &str = r#"{
  "maxDuration": "2h",
  "recording": {"sink": "file:///var/run/cassette/sink"},
  "policy": {"rules": [
    {"name": "protect-main", "action": "deny", "match": {"gitRef": "refs/heads/main"}},
    {"name": "no-bucket-deletes", "action": "deny", "match": {"permission": "storage.buckets.delete"}},
    {"name": "no-object-deletes", "action": "deny", "match": {"permission": "storage.objects.delete"}},
    {"name": "no-topic-deletes", "action": "deny", "match": {"permission": "pubsub.topics.delete"}}
  ]}
}"#;

/// The session's fingerprint key, which auditors hold and agents do not.
const FINGERPRINT_KEY: &[u8] = b"auditors-only-fingerprint-key-0123456789";

/// A fake service-account key and API key, as they might sit in a bucket.
const API_KEY: &str = "AIzaSyD3f4k3K3yF0rC4ss3tt3T3st1ng0123456";
const PRIVATE_KEY_BODY: &str =
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7cassettefakekeymaterial";

macro_rules! require_root {
    () => {
        if let Some(reason) = netns::unavailable_reason() {
            println!("skipped: {reason}");
            return Ok(());
        }
    };
}

/// The sidecar binary, copied where UID 1337 can execute it (the build tree may sit under a
/// directory other users cannot enter).
fn sidecar_binary(dir: &Path) -> Result<PathBuf> {
    let built = cassette_e2e::workspace_binary("cassette-sidecar")?;
    let copy = dir.join("cassette-sidecar");
    std::fs::copy(&built, &copy).with_context(|| format!("copying {}", built.display()))?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
    Ok(copy)
}

/// A pod: namespaces, upstreams, emulators, the sidecar, and a home for the agent.
struct Pod {
    sidecar: Option<Child>,
    dir: tempfile::TempDir,
    home: AgentHome,
    upstreams: Upstreams,
    _gcs: FakeGcs,
    _pubsub: Option<PubsubEmulator>,
    topology: Topology,
}

impl Pod {
    fn start(with_pubsub: bool) -> Result<Self> {
        Self::start_with(with_pubsub, &[])
    }

    /// A pod whose sidecar gets `env` on top of what the injector sets.
    fn start_with(with_pubsub: bool, env: &[(&str, &str)]) -> Result<Self> {
        let topology = Topology::create().context("creating the namespaces")?;
        let gcs = FakeGcs::start(&topology).context("starting fake-gcs-server")?;
        gcs.create_bucket(BUCKET)?;
        let pubsub = if with_pubsub {
            Some(PubsubEmulator::start(&topology).context("starting the Pub/Sub emulator")?)
        } else {
            None
        };
        let mut config = UpstreamsConfig::new(E2E_BINARY);
        config.gcs_backend = Some(gcs.endpoint());
        config.pubsub_backend = pubsub.as_ref().map(PubsubEmulator::endpoint);
        let upstreams = Upstreams::start(&topology, &config).context("starting the upstreams")?;
        let home = AgentHome::new(Identity::AGENT)?;

        let dir = tempfile::Builder::new().prefix("cassette-pod-").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        for sub in ["ca", "spool", "sink", "home"] {
            let path = dir.path().join(sub);
            std::fs::create_dir_all(&path)?;
            std::os::unix::fs::chown(&path, Some(SIDECAR_UID), Some(SIDECAR_UID))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::write(dir.path().join("fingerprint.key"), FINGERPRINT_KEY)?;
        let mut pod = Self {
            sidecar: None,
            dir,
            home,
            upstreams,
            _gcs: gcs,
            _pubsub: pubsub,
            topology,
        };
        pod.init()?;
        pod.run_sidecar(env)?;
        Ok(pod)
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("ca/bundle.pem")
    }

    /// `cassette-sidecar init`, as the init container runs it: root, NET_ADMIN.
    fn init(&self) -> Result<()> {
        let binary = sidecar_binary(self.dir.path())?;
        let mut init =
            self.topology
                .pod_command(Identity::Root, &binary, std::iter::empty::<(&str, &str)>());
        init.args(["init", "--dns", &self.topology.net_ip().to_string()]);
        let out = output_within(init, TIMEOUT)?;
        let said = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !said.contains("capture check passed") {
            bail!(
                "init failed: {}\n{said}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `cassette-sidecar run` as UID 1337, then wait for /readyz.
    fn run_sidecar(&mut self, extra: &[(&str, &str)]) -> Result<()> {
        let binary = self.dir.path().join("cassette-sidecar");
        let root = self.dir.path();
        let env = [
            ("HOME", root.join("home").display().to_string()),
            ("CASSETTE_SESSION", "netns-e2e".into()),
            ("POD_NAMESPACE", "agents".into()),
            ("POD_NAME", "agent-pod".into()),
            ("POD_UID", "1234".into()),
            ("CASSETTE_CA_BUNDLE", self.bundle().display().to_string()),
            (
                "CASSETTE_SINK",
                format!("file://{}", root.join("sink").display()),
            ),
            ("CASSETTE_SPOOL", root.join("spool").display().to_string()),
            // The test CA stands in for the web roots of the fake Google and git hosts.
            (
                "CASSETTE_UPSTREAM_CA",
                self.upstreams.ca_pem_path().display().to_string(),
            ),
            // gcloud storage goes to fake-gcs-server (through the logging proxy).
            (
                "CASSETTE_UPSTREAM_OVERRIDES",
                format!(
                    "storage.googleapis.com={}",
                    self.upstreams.gcs_proxy_endpoint()
                ),
            ),
            // The fingerprint key (the Secret spec.masking.fingerprintKey names, mounted).
            (
                "CASSETTE_FINGERPRINT_KEY_FILE",
                root.join("fingerprint.key").display().to_string(),
            ),
            // The AgentSession's policy, as the injector passes it.
            ("CASSETTE_SESSION_SPEC", SESSION_SPEC.to_string()),
            ("CASSETTE_LOG_FORMAT", "pretty".into()),
            ("RUST_LOG", "info".into()),
        ];
        let env = env
            .into_iter()
            .chain(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let mut run = self
            .topology
            .pod_command(Identity::user(SIDECAR_UID), &binary, env);
        run.arg("run")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("sidecar.log"))?);
        self.sidecar = Some(run.spawn().context("starting the sidecar")?);

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut probe = self.topology.pod_command(
                Identity::Root,
                "curl",
                std::iter::empty::<(&str, &str)>(),
            );
            probe.args(["-sf", "http://127.0.0.1:15090/readyz"]);
            if probe.output().is_ok_and(|o| o.status.success()) {
                return Ok(());
            }
            if let Some(status) = self
                .sidecar
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("the sidecar exited ({status}):\n{}", self.sidecar_log());
            }
            if Instant::now() > deadline {
                bail!(
                    "the sidecar was not ready within 30s:\n{}",
                    self.sidecar_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn sidecar_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
    }

    /// A command as the agent: UID 1000, the session bundle as its only trust store.
    fn agent(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
        let mut env = self.home.env(&self.bundle());
        env.push((
            "NODE_EXTRA_CA_CERTS".into(),
            self.bundle().display().to_string(),
        ));
        let mut command = self.topology.pod_command(Identity::AGENT, program, env);
        command.args(args).current_dir(self.home.path());
        command
    }

    fn agent_ok(&self, program: &str, args: &[&str]) -> Result<String> {
        stdout_within(self.agent(program, args), TIMEOUT)
            .with_context(|| format!("sidecar log:\n{}", self.sidecar_log()))
    }

    /// SIGTERM the sidecar (it seals and ships) and read the recording back.
    fn stop_and_read(&mut self) -> Result<(Vec<Value>, cassette_recording::Report)> {
        let mut child = self.sidecar.take().context("the sidecar is not running")?;
        // A child we spawned and have not reaped.
        let _ = kill_process(Pid::from_child(&child), Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(40);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "the sidecar did not exit after SIGTERM:\n{}",
                    self.sidecar_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            bail!("the sidecar exited with {status}:\n{}", self.sidecar_log());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let sink_url = format!("file://{}", self.dir.path().join("sink").display());
        runtime.block_on(async {
            let sink = cassette_recording::Sink::open(&sink_url, &Default::default()).await?;
            let objects =
                cassette_recording::load(&sink, "agents/netns-e2e/agent-pod-1234").await?;
            let report = cassette_recording::verify(&objects, None);
            let records = objects
                .records()
                .map(|r| Ok(serde_json::to_value(r?)?))
                .collect::<Result<Vec<_>>>()?;
            Ok((records, report))
        })
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(mut child) = self.sidecar.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `kubectl-cassette` from this build, its exit code and everything it printed.
fn kubectl_cassette(args: &[&str]) -> Result<(i32, String)> {
    let out = Command::new(cassette_e2e::workspace_binary("kubectl-cassette")?)
        .args(args)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

fn kinds<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The placeholder the agent is handed, read the way client libraries read it.
fn placeholder(pod: &Pod) -> Result<String> {
    let token = json(&pod.agent_ok(
        "curl",
        &[
            "-sS",
            "--fail",
            "-H",
            "Metadata-Flavor: Google",
            "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token",
        ],
    )?);
    Ok(token["access_token"]
        .as_str()
        .context("a token")?
        .to_string())
}

#[test]
fn agent_tools_work_through_the_recorder_and_never_hold_a_credential() -> Result<()> {
    require_root!();
    let python = clients::python()?;
    let pubsub_script = clients::script("pubsub_publish.py")?;
    let mut pod = Pod::start(true)?;
    let real = pod.upstreams.token().to_string();

    // The metadata server, as the agent sees it: the shim, with a placeholder.
    let fake = placeholder(&pod)?;
    assert_ne!(fake, real, "the agent must never be handed the real token");

    // curl over HTTP/1.1 and HTTP/2.
    let h1 = json(&pod.agent_ok(
        "curl",
        &[
            "-sS",
            "--fail",
            "--http1.1",
            "-d",
            "hello",
            "https://echo.test/echo?q=1",
        ],
    )?);
    assert_eq!(h1["version"], "HTTP/1.1");
    let h2 = json(&pod.agent_ok(
        "curl",
        &["-sS", "--fail", "--http2", "https://echo.test/echo"],
    )?);
    assert_eq!(
        h2["version"], "HTTP/2.0",
        "the sidecar offered h2 because the upstream chose it"
    );
    // A key in the URL goes upstream as sent and is recorded masked (checked with the
    // recording below: no record holds the key in clear).
    pod.agent_ok(
        "curl",
        &[
            "-sS",
            "--fail",
            &format!("https://echo.test/echo?key={API_KEY}"),
        ],
    )?;
    // A Host header naming another host than the one TLS verified is refused (421): the
    // decision, the swap and the review text follow the verified name only.
    let misdirected = pod.agent_ok(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: storage.googleapis.com",
            "https://echo.test/storage/v1/b/prod",
        ],
    )?;
    assert_eq!(misdirected.trim(), "421", "curl got {misdirected}");

    // git: clone, branch, commit, push (a non-Google host: credentials untouched).
    pod.agent_ok("git", &["clone", "https://git.test/repo.git", "work"])?;
    let work = pod.home.path().join("work");
    let git = |args: &[&str]| -> Result<String> {
        let mut c = pod.agent("git", args);
        c.current_dir(&work);
        stdout_within(c, TIMEOUT)
    };
    git(&["checkout", "-b", "fix-lint"])?;
    std::fs::write(work.join("lint.txt"), "formatted\n")?;
    std::os::unix::fs::chown(work.join("lint.txt"), Some(1000), Some(1000))?;
    // The seed's incident: a key committed to a file goes out in the pack.
    std::fs::create_dir(work.join("deploy"))?;
    std::fs::write(
        work.join("deploy/prod.env"),
        format!("GOOGLE_API_KEY={API_KEY}\n"),
    )?;
    for path in ["deploy", "deploy/prod.env"] {
        std::os::unix::fs::chown(work.join(path), Some(1000), Some(1000))?;
    }
    git(&["add", "lint.txt", "deploy/prod.env"])?;
    git(&["commit", "-m", "Run the formatter"])?;
    let head = git(&["rev-parse", "HEAD"])?.trim().to_string();
    git(&["push", "origin", "fix-lint"])?;

    // git to a Google host with the placeholder as password, as gcloud's credential helper
    // would send it: the upstream must receive the real token.
    let helper = format!("!f() {{ echo username=git; echo password={fake}; }}; f");
    pod.agent_ok(
        "git",
        &[
            "-c",
            &format!("credential.helper={helper}"),
            "ls-remote",
            "https://source.developers.google.com/repo.git",
        ],
    )?;

    // gcloud finds the metadata server by itself, takes the placeholder, and uses Cloud
    // Storage (fake-gcs-server, through the upstream override).
    std::fs::write(pod.home.path().join("report.txt"), "agent report\n")?;
    std::os::unix::fs::chown(pod.home.path().join("report.txt"), Some(1000), Some(1000))?;
    pod.agent_ok(
        "gcloud",
        &[
            "storage",
            "cp",
            "report.txt",
            &format!("gs://{BUCKET}/report.txt"),
        ],
    )?;
    let listing = pod.agent_ok("gcloud", &["storage", "ls", &format!("gs://{BUCKET}")])?;
    assert!(
        listing.contains("report.txt"),
        "gcloud storage ls printed: {listing}"
    );

    // A push to main is refused with the report git prints; the branch push went through.
    let mut push_main = pod.agent("git", &["push", "origin", "HEAD:main"]);
    push_main.current_dir(&work);
    let refused = output_within(push_main, TIMEOUT)?;
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "the push to main was accepted: {said}"
    );
    assert!(
        said.contains("[remote rejected]")
            && said.contains("protected by AgentSession \"netns-e2e\""),
        "git printed: {said}"
    );
    // Stock git made to label its push with a Content-Encoding: read all the same, refused.
    let mut encoded = pod.agent(
        "git",
        &[
            "-c",
            "http.extraHeader=Content-Encoding: identity",
            "push",
            "origin",
            "HEAD:main",
        ],
    );
    encoded.current_dir(&work);
    let refused = output_within(encoded, TIMEOUT)?;
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("protected by AgentSession"),
        "a push labelled Content-Encoding: identity reached main: {said}"
    );

    // An object holding a service-account key and an API key: downloaded fine, recorded masked.
    let secret = serde_json::json!({
        "type": "service_account",
        "private_key": format!("-----BEGIN PRIVATE KEY-----\n{PRIVATE_KEY_BODY}\n-----END PRIVATE KEY-----\n"),
        "client_email": "leaked@cassette-e2e.iam.gserviceaccount.com",
        "api_key": API_KEY,
    });
    pod._gcs.upload(
        BUCKET,
        "config/credentials.json",
        secret.to_string().as_bytes(),
    )?;
    let downloaded = pod.agent_ok(
        "gcloud",
        &[
            "storage",
            "cat",
            &format!("gs://{BUCKET}/config/credentials.json"),
        ],
    )?;
    assert!(
        downloaded.contains(API_KEY),
        "the agent reads the object as it is: {downloaded}"
    );

    // Deleting the bucket is refused by policy.
    let delete = output_within(
        pod.agent(
            "gcloud",
            &[
                "storage",
                "buckets",
                "delete",
                &format!("gs://{BUCKET}"),
                "--quiet",
            ],
        ),
        TIMEOUT,
    )?;
    assert!(!delete.status.success(), "the bucket delete went through");

    // gRPC: Pub/Sub publish and pull with default credentials; then a topic delete, which
    // the policy refuses in gRPC's own terms (PERMISSION_DENIED with cassette's reason).
    let mut grpc = pod.agent(&python, &[]);
    grpc.arg(&pubsub_script)
        .args(["--message", "through the recorder", "--then-delete"]);
    let out = output_within(grpc, Duration::from_secs(120))?;
    let result = json(&String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "{result}\nstderr: {}\nsidecar: {}",
        String::from_utf8_lossy(&out.stderr),
        pod.sidecar_log()
    );
    assert_eq!(result["project"], PROJECT_ID);
    assert_eq!(result["received"], "through the recorder");
    let refused = result["delete_error"].as_str().unwrap_or_default();
    assert!(
        refused.starts_with("PermissionDenied") && refused.contains("no-topic-deletes"),
        "the Pub/Sub client reads the refusal and its reason: {result}"
    );

    // The upstreams received the real token, never the placeholder, from Google hosts.
    let log: Vec<LogEntry> = pod.upstreams.log_entries()?;
    let google: Vec<&LogEntry> = log
        .iter()
        .filter(|e| {
            e.host.as_deref().is_some_and(|h| {
                h.starts_with("storage.googleapis.com")
                    || h.starts_with("pubsub.googleapis.com")
                    || h.starts_with("source.developers.google.com")
            }) && e.authorization.is_some()
        })
        .collect();
    assert!(
        google.iter().any(|e| e.listener == "gcs"),
        "gcloud's requests went through the override to fake-gcs-server: {log:#?}"
    );
    assert!(
        google
            .iter()
            .any(|e| e.path.starts_with("/google.pubsub.v1.Publisher/Publish"))
    );
    assert!(
        google
            .iter()
            .any(|e| e.basic_password().as_deref() == Some(real.as_str()))
    );
    for e in &google {
        let credential = e
            .bearer_token()
            .map(str::to_string)
            .or_else(|| e.basic_password());
        assert_eq!(
            credential.as_deref(),
            Some(real.as_str()),
            "{} {} received {:?}",
            e.method,
            e.path,
            e.authorization
        );
    }
    // Only the sidecar asked the real metadata server for tokens.
    assert!(
        log.iter()
            .any(|e| e.listener == "metadata" && e.path.contains("/token"))
    );

    let (records, report) = pod.stop_and_read()?;
    assert!(report.is_ok(), "the recording verifies: {report:?}");
    let text = serde_json::to_string(&records)?;
    assert!(
        !text.contains(&real),
        "the real token never reaches the recording"
    );

    // Every exchange is there, with its bodies.
    let requests = kinds(&records, "request");
    let ends = kinds(&records, "exchange_end");
    assert_eq!(
        requests.len(),
        ends.len(),
        "every request has its exchange_end"
    );
    for request in &requests {
        let id = &request["exchange"];
        assert!(
            records.iter().any(|r| r["kind"] == "body"
                && r["exchange"] == *id
                && r["final"] == true
                && r["direction"] == "response"),
            "exchange {id} has its response body: {request}"
        );
    }
    let echo_body = records
        .iter()
        .any(|r| r["kind"] == "body" && r["direction"] == "request" && r["text"] == "hello");
    assert!(echo_body, "the request body was recorded");

    // Secrets only as masks.
    assert!(!text.contains(API_KEY), "the API key reached the recording");
    assert!(
        !text.contains(PRIVATE_KEY_BODY),
        "the private key reached the recording"
    );
    assert!(text.contains("«masked:"), "masks are recorded");
    let blocked = kinds(&records, "blocked");
    assert!(
        blocked.iter().any(|b| b["rule"]
            .as_str()
            .is_some_and(|r| r.contains("protect-main"))),
        "the refused push is recorded as blocked: {blocked:?}"
    );
    assert!(
        blocked.iter().any(|b| b["rule"]
            .as_str()
            .is_some_and(|r| r.contains("no-bucket-deletes"))),
        "the refused delete is recorded as blocked: {blocked:?}"
    );
    assert!(ends.iter().any(
        |e| e["classification"]["permission"] == "storage.objects.get" && e["decision"] == "allow"
    ));

    // The auditor's view: the timeline, and where each secret went.
    let recording = format!(
        "file://{}/agents/netns-e2e/",
        pod.dir.path().join("sink").display()
    );
    let (code, timeline) = kubectl_cassette(&["show", "--recording", &recording])?;
    assert_eq!(code, 0, "{timeline}");
    println!("{timeline}");
    for needle in [
        "echo.test",
        "git.test",
        "storage.googleapis.com",
        "pubsub.googleapis.com",
        "protect-main",
        "verified",
    ] {
        assert!(
            timeline.contains(needle),
            "kubectl cassette show lacks {needle:?}:\n{timeline}"
        );
    }
    // The key is pinned the way an auditor pins it: from where it was published (here the
    // sidecar's own session_start; in a cluster the AgentSession status).
    let key = kinds(&records, "session_start")[0]["public_key"]
        .as_str()
        .context("the session key")?
        .to_string();
    let (code, verified) =
        kubectl_cassette(&["verify", "--recording", &recording, "--public-key", &key])?;
    assert_eq!(code, 0, "{verified}");
    let (unpinned, _) = kubectl_cassette(&["verify", "--recording", &recording])?;
    assert_eq!(
        unpinned, 4,
        "without a key it could check, verify says UNCHECKED"
    );
    let key_file = pod.dir.path().join("fingerprint.key");
    let sa_file = pod.dir.path().join("leaked-sa.json");
    std::fs::write(&sa_file, secret.to_string())?;
    let api_file = pod.dir.path().join("leaked-api-key.txt");
    std::fs::write(&api_file, format!("{API_KEY}\n"))?;
    for (file, what) in [(&sa_file, "private_key"), (&api_file, "API key")] {
        let (code, found) = kubectl_cassette(&[
            "search",
            "--recording",
            &recording,
            "--secret-file",
            &file.display().to_string(),
            "--key-file",
            &key_file.display().to_string(),
        ])?;
        assert_eq!(code, 0, "search found no {what}:\n{found}");
        assert!(
            found.contains("response") && found.contains("storage.googleapis.com"),
            "the {what} reached the agent in a Cloud Storage response: {found}"
        );
        if what == "API key" {
            // And left in the push, in the file it was committed to.
            assert!(
                found.contains("file deploy/prod.env") && found.contains("git.test"),
                "search names the pushed file that carried the API key: {found}"
            );
        }
    }
    let stored = records
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !stored.contains(API_KEY),
        "the recording holds the API key in clear"
    );

    // The push's ref update.
    let pushes: Vec<&Value> = kinds(&records, "git")
        .into_iter()
        .filter(|g| g["service"] == "receive-pack")
        .collect();
    assert!(
        pushes
            .iter()
            .any(|g| g["updates"].as_array().is_some_and(|u| u
                .iter()
                .any(|u| u["ref"] == "refs/heads/fix-lint" && u["new"] == head.as_str()))),
        "the push of fix-lint to {head} is recorded: {pushes:?}"
    );
    // Classification and swaps.
    assert!(
        ends.iter()
            .any(|e| e["classification"]["permission"] == "storage.objects.create")
    );
    assert!(
        ends.iter()
            .any(|e| e["classification"]["service"] == "pubsub")
    );
    let swaps = kinds(&records, "token");
    assert!(swaps.iter().any(|t| t["swap"] == "git-basic"));
    assert!(swaps.iter().any(|t| t["host"] == "pubsub.googleapis.com"));
    // gRPC status trailers.
    assert!(ends.iter().any(|e| {
        e["trailers"]
            .as_array()
            .is_some_and(|t| t.iter().any(|h| h[0] == "grpc-status"))
    }));
    Ok(())
}

/// Google's Cloud Storage client batching deletes (`with client.batch(): delete_blob`), one
/// POST to /batch/storage/v1 on the real endpoint: each part is a storage.objects.delete the
/// session denies, so the whole batch is refused in Google's terms, nothing is deleted, and
/// the recording holds each part with its decision (issue 15.9, on the wire).
#[test]
fn a_batched_delete_from_the_storage_client_is_refused_part_by_part() -> Result<()> {
    require_root!();
    let python = clients::python()?;
    let script = clients::script("storage_batch_delete.py")?;
    let mut pod = Pod::start(false)?;
    let objects = ["trash-a.txt", "trash-b.txt"];
    for object in objects {
        pod._gcs.upload(BUCKET, object, b"keep me\n")?;
    }

    let mut batch = pod.agent(&python, &[]);
    batch
        .arg(&script)
        .args(["--bucket", BUCKET])
        .args(objects)
        .env_remove("STORAGE_EMULATOR_HOST");
    let out = output_within(batch, Duration::from_secs(120))?;
    let result = json(&String::from_utf8_lossy(&out.stdout));
    println!("the storage client got: {result}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "the batched delete was not refused: {result}\nstderr: {}\nsidecar: {}",
        String::from_utf8_lossy(&out.stderr),
        pod.sidecar_log()
    );
    let said = result["error"].as_str().unwrap_or_default();
    assert!(
        result["status"] == 403 && said.contains("no-object-deletes"),
        "the client reads the refusal and the rule that made it: {result}"
    );
    let left = pod._gcs.list(BUCKET, "trash-")?;
    assert_eq!(left, objects, "the objects are all still there");
    // Nor did the batch reach Cloud Storage at all (fake-gcs-server would not run it).
    let log: Vec<LogEntry> = pod.upstreams.log_entries()?;
    let reached: Vec<&LogEntry> = log.iter().filter(|e| e.path.contains("batch")).collect();
    assert!(reached.is_empty(), "the batch went upstream: {reached:#?}");

    let (records, report) = pod.stop_and_read()?;
    assert!(report.is_ok(), "the recording verifies: {report:?}");
    let batches = kinds(&records, "batch");
    assert_eq!(batches.len(), 1, "one batch recorded: {batches:?}");
    let parts = batches[0]["parts"]
        .as_array()
        .context("the batch's parts")?;
    assert_eq!(parts.len(), objects.len(), "each part recorded: {parts:?}");
    for (part, object) in parts.iter().zip(objects) {
        let target = part["target"].as_str().unwrap_or_default();
        assert!(
            part["method"] == "DELETE"
                && part["permission"] == "storage.objects.delete"
                && part["decision"] == "deny"
                && part["rule"]
                    .as_str()
                    .is_some_and(|r| r.contains("no-object-deletes"))
                && target.contains(&format!("/b/{BUCKET}/o/{object}")),
            "the part deleting {object} is recorded denied: {part}"
        );
    }
    let blocked = kinds(&records, "blocked");
    assert!(
        blocked.iter().any(|b| b["rule"]
            .as_str()
            .is_some_and(|r| r.contains("no-object-deletes"))),
        "the refused batch is recorded as blocked: {blocked:?}"
    );
    let ends = kinds(&records, "exchange_end");
    assert!(
        ends.iter().any(|e| e["decision"] == "deny"
            && e["rule"]
                .as_str()
                .is_some_and(|r| r.contains("no-object-deletes"))),
        "the batch's exchange ends refused: {ends:?}"
    );
    Ok(())
}

/// A process other than the recorder running as its UID (an agent image whose USER is 1337)
/// is let out by the capture rules; the sidecar sees its socket and says so in the recording.
#[test]
fn a_stranger_running_as_the_recorders_uid_is_caught_in_the_recording() -> Result<()> {
    require_root!();
    let mut pod = Pod::start(false)?;
    let upstream = format!("{}", pod.topology.net_ip());
    // Connects straight to the upstream (not redirected: its UID is exempt) and holds the
    // connection for a few of the watch's listings.
    let mut stranger = pod.topology.pod_command(
        Identity::user(SIDECAR_UID),
        "/usr/bin/python3",
        std::iter::empty::<(&str, &str)>(),
    );
    stranger.args([
        "-c",
        &format!(
            "import socket,time\ns=socket.create_connection(('{upstream}',443),timeout=5)\n\
             print(s.getsockname()[1],flush=True)\ntime.sleep(4)\ns.close()"
        ),
    ]);
    let out = output_within(stranger, TIMEOUT)?;
    anyhow::ensure!(
        out.status.success(),
        "the stranger could not connect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = String::from_utf8_lossy(&out.stdout).trim().to_string();

    let (records, _) = pod.stop_and_read()?;
    let gaps = kinds(&records, "gap");
    let caught = gaps.iter().find(|g| {
        g["lost"]
            .as_str()
            .is_some_and(|l| l.contains(&format!(":{port} -> {upstream}:443")))
    });
    let caught =
        caught.with_context(|| format!("no gap names the stranger's connection: {gaps:#?}"))?;
    assert!(
        caught["reason"]
            .as_str()
            .is_some_and(|r| r.contains("runs as the recorder's UID 1337")),
        "{caught}"
    );
    assert!(
        pod.sidecar_log().contains("its traffic is not captured"),
        "{}",
        pod.sidecar_log()
    );
    Ok(())
}
