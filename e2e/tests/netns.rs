//! The network-namespace harness on its own, with no sidecar: an agent in the pod namespace,
//! running as UID 1000, reaches the upstreams in the net namespace by name over TLS, clones and
//! pushes with git, and takes the real token from the metadata server. That last one is the
//! baseline the sidecar must take away.
//!
//! Needs root (namespaces, veth, setpriv); skips with a message otherwise.

use anyhow::{Context, Result};
use cassette_e2e::clients::{self, AgentHome, output_within, stdout_within};
use cassette_e2e::emulators::{FakeGcs, PubsubEmulator};
use cassette_e2e::netns::{self, Identity, Topology};
use cassette_e2e::upstreams::{
    LogEntry, PROJECT_ID, REPO_README, SERVICE_ACCOUNT_EMAIL, Upstreams, UpstreamsConfig,
};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_cassette-e2e");
const TIMEOUT: Duration = Duration::from_secs(60);

/// Print why the test cannot run here and return from it.
macro_rules! require_root {
    () => {
        if let Some(reason) = netns::unavailable_reason() {
            println!("skipped: {reason}");
            return Ok(());
        }
    };
}

/// A topology with upstreams and an agent home: what every test here starts from.
struct Pod {
    home: AgentHome,
    upstreams: Upstreams,
    topology: Topology,
}

impl Pod {
    fn start(config: impl FnOnce(&mut UpstreamsConfig)) -> Result<Self> {
        let topology = Topology::create().context("creating the namespaces")?;
        let mut settings = UpstreamsConfig::new(BINARY);
        config(&mut settings);
        let upstreams = Upstreams::start(&topology, &settings).context("starting the upstreams")?;
        let home = AgentHome::new(Identity::AGENT)?;
        Ok(Self {
            home,
            upstreams,
            topology,
        })
    }

    /// `program args…` in the pod namespace as the agent (UID 1000), with the agent's env.
    fn agent(&self, program: &str, args: &[&str]) -> Command {
        let env = self.home.env(&self.upstreams.ca_pem_path());
        let mut command = self.topology.pod_command(Identity::AGENT, program, env);
        command.args(args).current_dir(self.home.path());
        command
    }

    fn agent_ok(&self, program: &str, args: &[&str]) -> Result<String> {
        stdout_within(self.agent(program, args), TIMEOUT)
    }

    fn log(&self) -> Vec<LogEntry> {
        self.upstreams
            .log_entries()
            .expect("the request log parses")
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn curl_reaches_echo_over_http1_and_http2() -> Result<()> {
    require_root!();
    let pod = Pod::start(|_| {})?;

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
    assert_eq!(h1["method"], "POST");
    assert_eq!(h1["path"], "/echo?q=1");
    assert_eq!(h1["sni"], "echo.test");
    assert_eq!(h1["alpn"], "http/1.1");
    assert_eq!(h1["body_len"], 5);
    assert_eq!(
        h1["body_sha256"],
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );

    let h2 = json(&pod.agent_ok(
        "curl",
        &[
            "-sS",
            "--fail",
            "--http2",
            "-H",
            "X-Test: two",
            "https://echo.test/echo",
        ],
    )?);
    assert_eq!(h2["version"], "HTTP/2.0");
    assert_eq!(h2["alpn"], "h2");
    assert_eq!(h2["headers"]["x-test"], "two");
    assert_eq!(h2["authority"], "echo.test");

    let log = pod.log();
    let echo: Vec<_> = log.iter().filter(|e| e.path.starts_with("/echo")).collect();
    assert_eq!(echo.len(), 2, "two echo requests in {log:#?}");
    assert_eq!(echo[0].version, "HTTP/1.1");
    assert_eq!(echo[1].version, "HTTP/2.0");
    assert!(
        echo.iter()
            .all(|e| e.listener == "https" && e.status == 200)
    );
    assert!(echo.iter().all(|e| {
        e.user_agent
            .as_deref()
            .is_some_and(|ua| ua.starts_with("curl/"))
    }));
    Ok(())
}

#[test]
fn curl_without_the_ca_is_refused() -> Result<()> {
    require_root!();
    let pod = Pod::start(|_| {})?;
    let env = pod
        .home
        .env(Path::new("/etc/ssl/certs/ca-certificates.crt"));
    let mut command = pod.topology.pod_command(Identity::AGENT, "curl", env);
    command.args(["-sS", "https://echo.test/echo"]);
    let out = output_within(command, TIMEOUT)?;
    assert!(
        !out.status.success(),
        "a certificate from the test CA must not verify against the system roots"
    );
    assert!(pod.log().is_empty());
    Ok(())
}

#[test]
fn git_clone_commit_and_push() -> Result<()> {
    require_root!();
    let pod = Pod::start(|_| {})?;
    let url = pod.upstreams.repo_url();

    pod.agent_ok("git", &["clone", "--quiet", &url, "work"])?;
    let readme = pod.home.path().join("work").join(REPO_README);
    assert!(readme.is_file(), "the clone has {REPO_README}");

    let work = pod.home.path().join("work");
    let work = work.to_str().context("a UTF-8 path")?;
    std::fs::write(
        pod.home.path().join("work/agent.txt"),
        "written by the agent\n",
    )?;
    // Let UID 1000 own the new file like everything else in the clone.
    std::os::unix::fs::chown(
        pod.home.path().join("work/agent.txt"),
        Some(1000),
        Some(1000),
    )?;
    pod.agent_ok(
        "git",
        &["-C", work, "checkout", "--quiet", "-b", "agent/fix"],
    )?;
    pod.agent_ok("git", &["-C", work, "add", "agent.txt"])?;
    pod.agent_ok(
        "git",
        &["-C", work, "commit", "--quiet", "-m", "Agent change"],
    )?;
    pod.agent_ok(
        "git",
        &["-C", work, "push", "--quiet", "origin", "agent/fix"],
    )?;
    let local = pod.agent_ok("git", &["-C", work, "rev-parse", "HEAD"])?;

    let remote = Command::new("git")
        .args(["--git-dir"])
        .arg(pod.upstreams.repo_path())
        .args(["rev-parse", "refs/heads/agent/fix"])
        .output()?;
    assert!(remote.status.success(), "the branch reached the server");
    assert_eq!(String::from_utf8_lossy(&remote.stdout).trim(), local.trim());

    // A gzip request body in protocol v2 (git gzips large negotiations the same way).
    let refs = pod.agent_ok(
        "sh",
        &[
            "-c",
            "printf '0014command=ls-refs\\n0000' | gzip | curl -sS --fail --data-binary @- \
             -H 'Content-Type: application/x-git-upload-pack-request' \
             -H 'Content-Encoding: gzip' -H 'Git-Protocol: version=2' \
             https://git.test/repo.git/git-upload-pack",
        ],
    )?;
    assert!(refs.contains("refs/heads/agent/fix"), "{refs}");
    assert!(refs.contains(local.trim()), "{refs}");

    let log = pod.log();
    let paths: Vec<_> = log
        .iter()
        .map(|e| (e.method.as_str(), e.path.as_str()))
        .collect();
    assert!(
        paths.contains(&("GET", "/repo.git/info/refs?service=git-upload-pack")),
        "{paths:?}"
    );
    assert!(
        paths.contains(&("POST", "/repo.git/git-upload-pack")),
        "{paths:?}"
    );
    assert!(
        paths.contains(&("POST", "/repo.git/git-receive-pack")),
        "{paths:?}"
    );
    assert!(log.iter().all(|e| e.sni.as_deref() == Some("git.test")));
    Ok(())
}

#[test]
fn source_repositories_need_the_real_token() -> Result<()> {
    require_root!();
    let pod = Pod::start(|_| {})?;
    let token = pod.upstreams.token().to_string();
    let with = |password: &str| {
        pod.upstreams
            .source_repo_url()
            .replace("https://", &format!("https://git:{password}@"))
    };

    let refused = output_within(
        pod.agent("git", &["ls-remote", &with("placeholder-token")]),
        TIMEOUT,
    )?;
    assert!(!refused.status.success(), "a wrong token must be refused");

    let refs = pod.agent_ok("git", &["ls-remote", &with(&token)])?;
    assert!(refs.contains("refs/heads/main"), "{refs}");

    let log = pod.log();
    let passwords: Vec<_> = log.iter().filter_map(LogEntry::basic_password).collect();
    assert!(
        passwords.contains(&"placeholder-token".to_string()),
        "{log:#?}"
    );
    assert!(
        passwords.contains(&token),
        "the upstream saw the real token: {log:#?}"
    );
    Ok(())
}

#[test]
fn metadata_server_hands_the_agent_the_real_token() -> Result<()> {
    require_root!();
    let pod = Pod::start(|_| {})?;
    let url = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token";

    let token = json(&pod.agent_ok(
        "curl",
        &["-sS", "--fail", "-H", "Metadata-Flavor: Google", url],
    )?);
    assert_eq!(token["access_token"], pod.upstreams.token());
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["expires_in"], 3599);

    // By address too, as google-auth's ping does; and the header is required.
    let email = pod.agent_ok(
        "curl",
        &[
            "-sS",
            "--fail",
            "-H",
            "Metadata-Flavor: Google",
            "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/email",
        ],
    )?;
    assert_eq!(email, SERVICE_ACCOUNT_EMAIL);
    let status = pod.agent_ok(
        "curl",
        &["-sS", "-o", "/dev/null", "-w", "%{http_code}", url],
    )?;
    assert_eq!(status, "403");

    let log = pod.log();
    let metadata: Vec<_> = log.iter().filter(|e| e.listener == "metadata").collect();
    assert_eq!(metadata.len(), 3, "{log:#?}");
    assert_eq!(
        metadata[0].host.as_deref(),
        Some("metadata.google.internal")
    );
    Ok(())
}

#[test]
fn storage_api_goes_to_fake_gcs_with_the_real_token() -> Result<()> {
    require_root!();
    let topology = Topology::create()?;
    let gcs = FakeGcs::start(&topology)?;
    gcs.create_bucket("agent-bucket")?;
    let mut config = UpstreamsConfig::new(BINARY);
    config.gcs_backend = Some(gcs.endpoint());
    let upstreams = Upstreams::start(&topology, &config)?;
    let home = AgentHome::new(Identity::AGENT)?;
    let env = home.env(&upstreams.ca_pem_path());
    let curl = |args: &[&str]| {
        let mut command = topology.pod_command(Identity::AGENT, "curl", env.clone());
        command.args(args);
        command
    };
    let upload = "https://storage.googleapis.com/upload/storage/v1/b/agent-bucket/o?uploadType=media&name=notes.txt";
    let bearer = format!("Authorization: Bearer {}", upstreams.token());

    let refused = stdout_within(
        curl(&[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
            "no token",
            upload,
        ]),
        TIMEOUT,
    )?;
    assert_eq!(refused, "401");

    let object = json(&stdout_within(
        curl(&[
            "-sS",
            "--fail",
            "-H",
            &bearer,
            "--data-binary",
            "agent notes",
            upload,
        ]),
        TIMEOUT,
    )?);
    assert_eq!(object["name"], "notes.txt");
    assert_eq!(
        gcs.read_object("agent-bucket", "notes.txt")?,
        b"agent notes"
    );

    // The plain-HTTP proxy (what a sidecar's upstream override points at) keeps the Host.
    let listed = json(&stdout_within(
        curl(&[
            "-sS",
            "--fail",
            "-H",
            &bearer,
            "-H",
            "Host: storage.googleapis.com",
            &format!(
                "{}/storage/v1/b/agent-bucket/o",
                upstreams.gcs_proxy_endpoint()
            ),
        ]),
        TIMEOUT,
    )?);
    assert_eq!(listed["items"][0]["name"], "notes.txt");

    let log = upstreams.log_entries()?;
    let via_proxy = log
        .iter()
        .find(|e| e.listener == "gcs")
        .context("a gcs entry")?;
    assert_eq!(via_proxy.host.as_deref(), Some("storage.googleapis.com"));
    assert_eq!(via_proxy.bearer_token(), Some(upstreams.token()));
    Ok(())
}

#[test]
fn gcloud_finds_the_metadata_server_and_uses_storage() -> Result<()> {
    require_root!();
    let topology = Topology::create()?;
    let gcs = FakeGcs::start(&topology)?;
    gcs.create_bucket("agent-bucket")?;
    let mut config = UpstreamsConfig::new(BINARY);
    config.gcs_backend = Some(gcs.endpoint());
    let upstreams = Upstreams::start(&topology, &config)?;
    let home = AgentHome::new(Identity::AGENT)?;
    let gcloud = |args: &[&str]| {
        let env = home.env(&upstreams.ca_pem_path());
        let mut command = topology.pod_command(Identity::AGENT, "gcloud", env);
        command.args(args).current_dir(home.path());
        stdout_within(command, Duration::from_secs(120))
    };

    // No variable points gcloud anywhere: it finds metadata.google.internal as on GKE.
    assert_eq!(
        gcloud(&["auth", "print-access-token"])?.trim(),
        upstreams.token()
    );
    assert_eq!(gcloud(&["config", "get", "project"])?.trim(), PROJECT_ID);

    let notes = home.path().join("notes.txt");
    std::fs::write(&notes, "agent notes\n")?;
    let notes = notes.to_str().context("a UTF-8 path")?;
    gcloud(&["storage", "cp", notes, "gs://agent-bucket/notes.txt"])?;
    assert_eq!(
        gcs.read_object("agent-bucket", "notes.txt")?,
        b"agent notes\n"
    );
    assert_eq!(
        gcloud(&["storage", "cat", "gs://agent-bucket/notes.txt"])?,
        "agent notes\n"
    );

    let log = upstreams.log_entries()?;
    let storage: Vec<_> = log
        .iter()
        .filter(|e| e.host.as_deref() == Some("storage.googleapis.com"))
        .collect();
    assert!(
        storage
            .iter()
            .any(|e| e.method == "POST" && e.path.starts_with("/upload/")),
        "{log:#?}"
    );
    assert!(
        storage
            .iter()
            .all(|e| e.bearer_token() == Some(upstreams.token()))
    );
    Ok(())
}

#[test]
fn python_pubsub_client_publishes_and_pulls_with_default_credentials() -> Result<()> {
    require_root!();
    let python = clients::python()?;
    let script = clients::script("pubsub_publish.py")?;
    let topology = Topology::create()?;
    let pubsub = PubsubEmulator::start(&topology)?;
    let mut config = UpstreamsConfig::new(BINARY);
    config.pubsub_backend = Some(pubsub.endpoint());
    let upstreams = Upstreams::start(&topology, &config)?;
    let home = AgentHome::new(Identity::AGENT)?;

    let mut command =
        topology.pod_command(Identity::AGENT, &python, home.env(&upstreams.ca_pem_path()));
    command
        .arg(&script)
        .args(["--message", "hello from the pod"]);
    let out = output_within(command, Duration::from_secs(120))?;
    let result = json(&String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "{result}\nstderr: {}\nupstreams: {}",
        String::from_utf8_lossy(&out.stderr),
        upstreams.output_tail()
    );
    assert_eq!(result["project"], PROJECT_ID);
    assert_eq!(result["received"], "hello from the pod");

    let log = upstreams.log_entries()?;
    // gRPC sends the port in :authority.
    let grpc: Vec<_> = log
        .iter()
        .filter(|e| e.host.as_deref() == Some("pubsub.googleapis.com:443"))
        .collect();
    assert!(
        grpc.iter()
            .any(|e| e.path == "/google.pubsub.v1.Publisher/Publish"),
        "{log:#?}"
    );
    assert!(
        grpc.iter()
            .all(|e| e.version == "HTTP/2.0" && e.status == 200)
    );
    assert!(
        grpc.iter()
            .all(|e| e.bearer_token() == Some(upstreams.token()))
    );
    let token_fetched = log.iter().any(|e| {
        e.listener == "metadata"
            && e.path
                .split('?')
                .next()
                .is_some_and(|p| p.ends_with("/token"))
    });
    assert!(
        token_fetched,
        "google.auth took the token from the metadata server: {log:#?}"
    );
    Ok(())
}

#[test]
fn dropping_the_topology_leaves_nothing_behind() -> Result<()> {
    require_root!();
    let (pod_ns, net_ns, etc, server) = {
        let pod = Pod::start(|_| {})?;
        let net_pids = pod.topology.pids(netns::Side::Net)?;
        assert!(
            !net_pids.is_empty(),
            "the upstreams run in the net namespace"
        );
        // Something long-running in the pod namespace, left for Drop to find.
        let mut sleeper = pod.agent("sleep", &["600"]);
        sleeper.stdout(std::process::Stdio::null());
        let child = sleeper.spawn()?;
        std::thread::sleep(Duration::from_millis(200));
        (
            pod.topology.pod_ns().to_string(),
            pod.topology.net_ns().to_string(),
            pod.topology.pod_etc_dir().to_path_buf(),
            (net_pids, child),
        )
    };
    let (net_pids, mut sleeper) = server;
    let namespaces =
        String::from_utf8(Command::new("ip").args(["netns", "list"]).output()?.stdout)?;
    assert!(
        !namespaces.contains(&pod_ns) && !namespaces.contains(&net_ns),
        "{namespaces}"
    );
    assert!(!etc.exists(), "{} is gone", etc.display());
    for pid in net_pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid),
            "process {pid} from the net namespace is gone"
        );
    }
    let status = sleeper.wait()?;
    assert!(
        !status.success(),
        "the sleeper in the pod namespace was killed"
    );
    Ok(())
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.split_whitespace().nth(2) == Some("Z"))
        .unwrap_or(true)
}
