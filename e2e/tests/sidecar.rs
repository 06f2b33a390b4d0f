//! The sidecar in a network namespace, as the injector sets it up in a pod: `init` installs
//! the capture rules as root, `run` records as UID 1337, and the agent's real tools run as UID
//! 1000 with only the session CA bundle to trust — curl (HTTP/1.1 and HTTP/2), git clone and
//! push, gcloud storage against fake-gcs-server through an upstream override, and a gRPC
//! Pub/Sub client. Then the recording is read back and verified, and the ways around the
//! recorder are tried and must fail.
//!
//! Needs root (namespaces, iptables, setpriv); skips with a message otherwise.

use anyhow::{Context, Result, bail};
use cassette_e2e::clients::{self, AgentHome, output_within, stdout_within};
use cassette_e2e::emulators::{FakeGcs, PubsubEmulator};
use cassette_e2e::netns::{self, Identity, Topology};
use cassette_e2e::upstreams::{LogEntry, PROJECT_ID, Upstreams, UpstreamsConfig};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const E2E_BINARY: &str = env!("CARGO_BIN_EXE_cassette-e2e");
const TIMEOUT: Duration = Duration::from_secs(90);
const SIDECAR_UID: u32 = 1337;
const BUCKET: &str = "agent-bucket";

/// The session the pod records into: main is protected and buckets may not be deleted.
const SESSION_SPEC: &str = r#"{
  "maxDuration": "2h",
  "recording": {"sink": "file:///var/run/cassette/sink"},
  "policy": {"rules": [
    {"name": "protect-main", "action": "deny", "match": {"gitRef": "refs/heads/main"}},
    {"name": "no-bucket-deletes", "action": "deny", "match": {"permission": "storage.buckets.delete"}}
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
        // SAFETY: signalling a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
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
    git(&["add", "lint.txt"])?;
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

    // gRPC: Pub/Sub publish and pull with default credentials.
    let mut grpc = pod.agent(&python, &[]);
    grpc.arg(&pubsub_script)
        .args(["--message", "through the recorder"]);
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
    }

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

/// A TCP listener on `addr` in the net namespace that writes a line to `log` for every
/// connection it accepts: where an attacker would want the agent's bytes to go.
fn attacker(pod: &Pod, addr: std::net::SocketAddrV4, log: &Path) -> Result<Child> {
    let ip = addr.ip().to_string();
    let add = pod
        .topology
        .net_command(Identity::Root, "ip", std::iter::empty::<(&str, &str)>());
    let mut add = add;
    add.args(["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
    output_within(add, TIMEOUT)?;
    let mut listen = pod.topology.net_command(
        Identity::Root,
        "/usr/bin/python3",
        std::iter::empty::<(&str, &str)>(),
    );
    listen.args([
        "-c",
        &format!(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('{ip}',{port}))\ns.listen(8)\nopen('{log}','w').close()\n\
             while True:\n  c,a=s.accept()\n  open('{log}','a').write('accepted %s\\n'%(a,))\n  c.close()",
            port = addr.port(),
            log = log.display()
        ),
    ]);
    let child = listen.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.exists() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the attacker's listener did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// `openssl s_client` as the agent: connect to `connect`, name `sni`, send a request line.
fn s_client(pod: &Pod, connect: &str, sni: &str) -> Result<std::process::Output> {
    let mut client = pod.agent(
        "openssl",
        &[
            "s_client",
            "-connect",
            connect,
            "-servername",
            sni,
            "-ign_eof",
        ],
    );
    client.stdin(Stdio::piped());
    let mut child = client
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(b"GET / HTTP/1.0\r\nHost: git.test\r\n\r\n");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    Ok(child.wait_with_output()?)
}

/// Each way an agent could try to get bytes past the recorder, and what must happen:
///
/// | attack | expected |
/// |---|---|
/// | curl to the metadata server's real address (port 80, and another port) | the shim's placeholder, or nothing |
/// | the sidecar as an explicit proxy, asked for the metadata server | refused: "metadata shim" |
/// | UDP to 443 (QUIC) | refused by the capture rules |
/// | IPv6 to anything | refused by the capture rules |
/// | the sidecar's own admin port | answers, with nothing secret |
/// | `openssl s_client -connect ATTACKER:443 -servername <passthrough host>` | refused, recorded as `destination`: the attacker never sees a connection |
/// | the passthrough host at its own address | tunnelled, its bytes recorded both ways as `stream` records |
#[test]
fn the_ways_around_the_recorder_are_closed() -> Result<()> {
    require_root!();
    let mut pod = Pod::start_with(false, &[("CASSETTE_PASSTHROUGH", "git.test")])?;
    let real = pod.upstreams.token().to_string();
    let metadata = pod.topology.metadata_ip();

    // A passthrough host asked for at an address of the agent's choosing: no tunnel there.
    let attacker_addr =
        std::net::SocketAddrV4::new(Ipv4Addr::new(10, 231, pod.topology.subnet(), 9), 443);
    let attacker_log = pod.dir.path().join("attacker.log");
    let mut listener = attacker(&pod, attacker_addr, &attacker_log)?;
    let picked = s_client(&pod, &attacker_addr.to_string(), "git.test")?;
    let _ = listener.kill();
    let _ = listener.wait();
    let reached = std::fs::read_to_string(&attacker_log)?;
    assert!(
        reached.is_empty(),
        "a passthrough tunnel went to the agent's choice of address: {reached}\n{}",
        String::from_utf8_lossy(&picked.stderr)
    );
    // The passthrough host at its own address is tunnelled (the upstream's certificate is
    // the test CA's, which the agent does not trust: s_client shows it anyway).
    let tunnelled = s_client(&pod, "git.test:443", "git.test")?;
    let said = String::from_utf8_lossy(&tunnelled.stdout);
    assert!(
        said.contains("BEGIN CERTIFICATE") && said.contains("cassette-e2e upstream CA"),
        "the passthrough host was not tunnelled: {said}\n{}",
        String::from_utf8_lossy(&tunnelled.stderr)
    );

    // The metadata server's real address answers with the shim's placeholder (port 80) or
    // not at all (any other port).
    let direct = pod.agent_ok(
        "curl",
        &[
            "-sS",
            "-H",
            "Metadata-Flavor: Google",
            &format!(
                "http://{metadata}/computeMetadata/v1/instance/service-accounts/default/token"
            ),
        ],
    )?;
    assert!(
        !direct.contains(&real),
        "the real metadata server answered the agent: {direct}"
    );
    let other_port = output_within(
        pod.agent(
            "curl",
            &[
                "-sS",
                "--max-time",
                "5",
                "-H",
                "Metadata-Flavor: Google",
                &format!("http://{metadata}:8080/"),
            ],
        ),
        TIMEOUT,
    )?;
    assert!(!String::from_utf8_lossy(&other_port.stdout).contains(&real));

    // Asking the sidecar itself, as a proxy, for the metadata server.
    let via_proxy = output_within(
        pod.agent(
            "curl",
            &[
                "-sS",
                "--max-time",
                "5",
                "-x",
                "http://127.0.0.1:15001",
                "-H",
                "Metadata-Flavor: Google",
                &format!(
                    "http://{metadata}/computeMetadata/v1/instance/service-accounts/default/token"
                ),
            ],
        ),
        TIMEOUT,
    )?;
    let said = String::from_utf8_lossy(&via_proxy.stdout);
    assert!(
        !said.contains(&real),
        "the proxy forwarded the agent to the metadata server: {said}"
    );
    assert!(said.contains("metadata shim"), "{said}");

    // UDP to 443 (QUIC) is refused.
    let udp = output_within(
        pod.agent(
            "/usr/bin/python3",
            &[
                "-c",
                &format!(
                    "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                     try:\n  [s.sendto(b'x',('{}',443)) for _ in range(3)]\n  print('sent')\n\
                     except OSError as e:\n  print('refused', e)",
                    pod.topology.net_ip()
                ),
            ],
        ),
        TIMEOUT,
    )?;
    assert!(
        String::from_utf8_lossy(&udp.stdout).starts_with("refused"),
        "UDP left the pod: {}",
        String::from_utf8_lossy(&udp.stdout)
    );

    // IPv6 gets the same treatment: no direct connection to anything.
    let v6 = output_within(
        pod.agent(
            "curl",
            &["-sS", "--max-time", "5", "-g", "http://[fd00:cafe::1]:80/"],
        ),
        TIMEOUT,
    )?;
    assert!(!v6.status.success(), "an IPv6 connection got through");

    // The sidecar's own ports answer, but lend the agent nothing: the admin port has no
    // secrets, and the shim hands out the placeholder only.
    let admin = pod.agent_ok("curl", &["-sS", "http://127.0.0.1:15090/metrics"])?;
    assert!(!admin.contains(&real));

    let (records, report) = pod.stop_and_read()?;
    assert!(report.is_ok(), "{report:?}");
    let blocked = kinds(&records, "blocked");
    assert!(
        blocked.iter().any(|b| b["message"]
            .as_str()
            .is_some_and(|m| m.contains("metadata"))),
        "the attempts are recorded as blocked: {blocked:?}"
    );
    assert!(
        blocked.iter().any(|b| b["reason"] == "destination"
            && b["message"]
                .as_str()
                .is_some_and(|m| m.contains(&attacker_addr.to_string())
                    && m.contains("not an address of git.test"))),
        "the passthrough to the agent's address is recorded as refused: {blocked:?}"
    );
    let passthrough: Vec<&Value> = kinds(&records, "tls")
        .into_iter()
        .filter(|t| t["passthrough"] == true)
        .collect();
    let conn = passthrough.first().context("the tunnel's tls record")?["conn"].clone();
    let streams: Vec<&Value> = kinds(&records, "stream")
        .into_iter()
        .filter(|s| s["conn"] == conn)
        .collect();
    for direction in ["up", "down"] {
        let last = streams
            .iter()
            .find(|s| s["direction"] == direction && s["final"] == true)
            .with_context(|| format!("the tunnel's {direction} stream ends: {streams:?}"))?;
        assert!(last["length"].as_u64().unwrap_or(0) > 0, "{last}");
    }
    let first_up = streams
        .iter()
        .find(|s| s["direction"] == "up" && s["offset"] == 0)
        .context("the ClientHello is recorded")?;
    assert!(
        first_up["base64"]
            .as_str()
            .is_some_and(|b| b.starts_with("Fg")),
        "the tunnel's first bytes are the ClientHello (a TLS handshake record): {first_up}"
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
