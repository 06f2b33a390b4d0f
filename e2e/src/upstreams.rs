//! The upstreams an agent pod talks to in the tests, served from a [`Site`] (the net namespace
//! of a [`crate::netns::Topology`], or the real node's host side): a fake GKE metadata server, HTTPS for echo, git smart-HTTP and the Google API
//! hosts, and logging proxies to the emulators. Every request is logged with the credential it
//! carried, so a test can tell which token really reached an upstream.
//!
//! [`Upstreams`] is the test's handle: it makes the test CA, the certificates and a bare git
//! repository, and runs `cassette-e2e upstreams` (the [`server`]) inside the net namespace.

pub mod server;

mod echo;
mod git;
mod metadata;
mod proxy;
mod pulls;

use crate::netns::{Identity, Site};
use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustix::process::{Pid, Signal, kill_process_group};
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The fake metadata server's port (on 169.254.169.254).
pub const METADATA_PORT: u16 = 80;
/// HTTPS: echo, git, and the Google API hosts.
pub const HTTPS_PORT: u16 = 443;
/// Plain HTTP logging proxy to the GCS emulator.
pub const GCS_PROXY_PORT: u16 = 4444;
/// Plain HTTP (h2c) logging proxy to the Pub/Sub emulator.
pub const PUBSUB_PROXY_PORT: u16 = 8086;

/// The names on the upstream TLS certificate.
pub const TLS_NAMES: &[&str] = &[
    "git.test",
    "api.git.test",
    "echo.test",
    "source.developers.google.com",
    "storage.googleapis.com",
    "pubsub.googleapis.com",
];

/// What the fake metadata server says about the project, the node and the service account.
pub const PROJECT_ID: &str = "cassette-e2e";
pub const NUMERIC_PROJECT_ID: &str = "123456789012";
pub const ZONE: &str = "us-central1-a";
pub const CLUSTER_NAME: &str = "cassette-e2e";
pub const SERVICE_ACCOUNT_EMAIL: &str = "agent@cassette-e2e.iam.gserviceaccount.com";
pub const SCOPES: &[&str] = &["https://www.googleapis.com/auth/cloud-platform"];
/// The access token's lifetime as the fake metadata server reports it.
pub const TOKEN_EXPIRES_IN: u64 = 3599;

/// The bare repository every git URL serves, under the git root.
pub const REPO_DIR: &str = "repo.git";
/// The file committed in the repository's first commit on `main`.
pub const REPO_README: &str = "README.md";

/// How long the server may take to bind its listeners.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One request as an upstream saw it: a line of the request log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogEntry {
    /// Milliseconds since the Unix epoch when the response was ready.
    pub unix_ms: u64,
    /// `metadata`, `https`, `gcs` or `pubsub`.
    pub listener: String,
    /// The TLS server name the client sent (HTTPS only).
    pub sni: Option<String>,
    /// The ALPN protocol agreed (HTTPS only).
    pub alpn: Option<String>,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    pub method: String,
    /// The `Host` header, or the HTTP/2 `:authority`.
    pub host: Option<String>,
    /// Path and query, as sent.
    pub path: String,
    /// The `Authorization` header, whole and unmasked.
    pub authorization: Option<String>,
    pub user_agent: Option<String>,
    /// The status the upstream answered.
    pub status: u16,
}

impl LogEntry {
    /// The password of a `Basic` authorization (git sends tokens that way), if any.
    pub fn basic_password(&self) -> Option<String> {
        use base64::Engine;
        let encoded = self.authorization.as_deref()?.strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        text.split_once(':')
            .map(|(_, password)| password.to_string())
    }

    /// The token of a `Bearer` authorization, if any.
    pub fn bearer_token(&self) -> Option<&str> {
        self.authorization.as_deref()?.strip_prefix("Bearer ")
    }
}

/// How to start the upstreams.
#[derive(Clone, Debug)]
pub struct UpstreamsConfig {
    /// The `cassette-e2e` binary; from a test: `env!("CARGO_BIN_EXE_cassette-e2e")`.
    pub binary: PathBuf,
    /// The real access token the fake metadata server hands out and the Google hosts accept.
    pub token: String,
    /// `http://host:port` of the GCS emulator (see [`crate::emulators::FakeGcs`]).
    pub gcs_backend: Option<String>,
    /// `http://host:port` of the Pub/Sub emulator (see [`crate::emulators::PubsubEmulator`]).
    pub pubsub_backend: Option<String>,
    /// The code host's token, which git.test and api.git.test then require (as a private
    /// repository's host does); none: they take anyone.
    pub code_host_token: Option<String>,
}

impl UpstreamsConfig {
    /// No emulator backends, and a fresh random token that looks like a Google access token.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            token: random_token(),
            gcs_backend: None,
            pubsub_backend: None,
            code_host_token: None,
        }
    }
}

/// A fresh `ya29.`-style token, unique per call.
pub fn random_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("ya29.cassette-real-{hex}")
}

/// The running upstreams. Dropping it stops the server and removes its directory.
pub struct Upstreams {
    dir: tempfile::TempDir,
    child: Option<Child>,
    token: String,
    ca_pem: String,
    net_ip: Ipv4Addr,
}

impl Upstreams {
    /// Make the CA, certificates and git repository, start `cassette-e2e upstreams` at `site`
    /// (a [`crate::netns::Topology`]'s net side, or the real node's host side), and wait until
    /// it listens.
    pub fn start(site: impl Into<Site>, config: &UpstreamsConfig) -> Result<Self> {
        let site = site.into();
        let dir = tempfile::Builder::new()
            .prefix("cassette-upstreams-")
            .tempdir()
            .context("creating the upstreams' directory")?;
        // The agent runs as another UID and must read the CA and clone nothing from here
        // directly, but it needs to traverse to ca.pem.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;

        let ca = TestCa::new().context("making the test CA")?;
        let leaf = ca
            .leaf(TLS_NAMES, &[site.ip()])
            .context("signing the upstream certificate")?;
        write_file(&dir.path().join("ca.pem"), &ca.cert_pem, 0o644)?;
        write_file(&dir.path().join("tls.crt"), &leaf.cert, 0o644)?;
        write_file(&dir.path().join("tls.key"), &leaf.key, 0o600)?;

        let git_root = dir.path().join("git");
        create_repository(&git_root).context("creating the bare git repository")?;

        let mut upstreams = Upstreams {
            child: None,
            token: config.token.clone(),
            ca_pem: ca.cert_pem,
            net_ip: site.ip(),
            dir,
        };
        let root = upstreams.dir.path();
        let ready = root.join("ready");
        let mut command = net_daemon(&site, &config.binary, [("HOME", root)]);
        command
            .arg("upstreams")
            .arg("--listen-ip")
            .arg(site.ip().to_string())
            .arg("--metadata-ip")
            .arg(site.metadata_ip().to_string())
            .arg("--tls-cert")
            .arg(root.join("tls.crt"))
            .arg("--tls-key")
            .arg(root.join("tls.key"))
            .arg("--git-root")
            .arg(&git_root)
            .arg("--token")
            .arg(&config.token)
            .arg("--log")
            .arg(upstreams.log_path())
            .arg("--ready-file")
            .arg(&ready);
        if let Some(token) = &config.code_host_token {
            command.env("CASSETTE_E2E_CODE_HOST_TOKEN", token);
        }
        if let Some(gcs) = &config.gcs_backend {
            command.arg("--gcs-backend").arg(gcs);
        }
        if let Some(pubsub) = &config.pubsub_backend {
            command.arg("--pubsub-backend").arg(pubsub);
        }
        upstreams.child = Some(spawn_logged(command, &upstreams.output_path())?);
        upstreams.wait_ready(&ready)?;
        Ok(upstreams)
    }

    fn wait_ready(&mut self, ready: &Path) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < READY_TIMEOUT {
            if ready.exists() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "cassette-e2e upstreams exited during start-up ({status}); its output:\n{}",
                    self.output_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "cassette-e2e upstreams did not listen within {READY_TIMEOUT:?}; its output:\n{}",
            self.output_tail()
        )
    }

    /// The real token: what the metadata server hands out and the Google hosts require.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The test CA's certificate (PEM, world-readable): trust it as `SSL_CERT_FILE`,
    /// `CURL_CA_BUNDLE`, `GIT_SSL_CAINFO`.
    pub fn ca_pem_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The test CA's certificate as PEM text.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The request log: one JSON [`LogEntry`] a line.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("requests.jsonl")
    }

    /// Every request logged so far, in order.
    pub fn log_entries(&self) -> Result<Vec<LogEntry>> {
        let path = self.log_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line)
                    .with_context(|| format!("parsing a line of {}: {line}", path.display()))
            })
            .collect()
    }

    /// The directory `git http-backend` serves (`GIT_PROJECT_ROOT`).
    pub fn git_root(&self) -> PathBuf {
        self.dir.path().join("git")
    }

    /// The bare repository on the server side, to inspect what a push did.
    pub fn repo_path(&self) -> PathBuf {
        self.git_root().join(REPO_DIR)
    }

    /// The repository's URL on the open git host.
    pub fn repo_url(&self) -> String {
        format!("https://git.test/{REPO_DIR}")
    }

    /// The same repository as a Cloud Source Repositories URL, which needs the real token as
    /// the basic-auth password (or a bearer).
    pub fn source_repo_url(&self) -> String {
        format!("https://source.developers.google.com/p/{PROJECT_ID}/r/repo")
    }

    /// The plain-HTTP GCS proxy's endpoint, e.g. for a sidecar's upstream override.
    pub fn gcs_proxy_endpoint(&self) -> String {
        format!("http://{}:{GCS_PROXY_PORT}", self.net_ip)
    }

    /// The plain-HTTP (h2c) Pub/Sub proxy's endpoint.
    pub fn pubsub_proxy_endpoint(&self) -> String {
        format!("http://{}:{PUBSUB_PROXY_PORT}", self.net_ip)
    }

    /// The server's own stdout and stderr.
    pub fn output_path(&self) -> PathBuf {
        self.dir.path().join("upstreams.out")
    }

    /// The end of the server's output, for error messages.
    pub fn output_tail(&self) -> String {
        tail(&self.output_path(), 8192)
    }

    /// Stop the server: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA made fresh for one test run; it signs the upstreams' certificate.
pub struct TestCa {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, both PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    /// A new P-256 CA named `cassette-e2e upstream CA`.
    pub fn new() -> Result<Self> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "cassette-e2e upstream CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A serving certificate for DNS names and IP addresses.
    pub fn leaf(&self, names: &[&str], ips: &[Ipv4Addr]) -> Result<Leaf> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("upstream"),
        );
        params.distinguished_name = dn;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(IpAddr::V4(*ip))));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// `<root>/repo.git`: a bare repository with pushes enabled and one commit on `main`, also
/// reachable as `<root>/p/<project>/r/repo` (the Cloud Source Repositories path).
fn create_repository(root: &Path) -> Result<()> {
    let bare = root.join(REPO_DIR);
    fs::create_dir_all(root)?;
    git(
        root,
        &[
            "init",
            "--quiet",
            "--bare",
            "--initial-branch=main",
            REPO_DIR,
        ],
    )?;
    git(&bare, &["config", "http.receivepack", "true"])?;
    git(&bare, &["config", "http.uploadpack", "true"])?;

    let work = tempfile::tempdir().context("creating a work tree for the first commit")?;
    git(work.path(), &["init", "--quiet", "--initial-branch=main"])?;
    fs::write(
        work.path().join(REPO_README),
        "# repo\n\nServed by cassette-e2e for the agent to clone and push.\n",
    )?;
    git(work.path(), &["add", REPO_README])?;
    git(work.path(), &["commit", "--quiet", "-m", "Initial commit"])?;
    let bare_arg = bare.to_string_lossy().into_owned();
    git(work.path(), &["push", "--quiet", &bare_arg, "main"])?;

    let csr = root.join("p").join(PROJECT_ID).join("r");
    fs::create_dir_all(&csr)?;
    std::os::unix::fs::symlink(&bare, csr.join("repo"))
        .context("linking the Cloud Source Repositories path")?;
    Ok(())
}

/// Run git with no user or system configuration and a fixed identity.
fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "cassette-e2e")
        .env("GIT_AUTHOR_EMAIL", "e2e@cassette.test")
        .env("GIT_COMMITTER_NAME", "cassette-e2e")
        .env("GIT_COMMITTER_EMAIL", "e2e@cassette.test")
        .stdin(Stdio::null())
        .output()
        .context("running git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "git {} in {} failed ({}): {}",
            args.join(" "),
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// A command that runs `program` at `site` as root with exactly `env` (see [`Site::command`])
/// and dies with the thread that spawns it (`setpriv --pdeathsig`),
/// for [`spawn_logged`].
pub(crate) fn net_daemon<I, K, V>(site: &Site, program: impl AsRef<OsStr>, env: I) -> Command
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let setpriv = crate::netns::find_binary("setpriv");
    let mut command = site.command(Identity::Root, setpriv, env);
    command.args(["--pdeathsig", "KILL", "--"]).arg(program);
    command
}

/// Start a long-running process (a [`net_daemon`] command) with its output in a log file, in
/// its own process group.
pub(crate) fn spawn_logged(mut command: Command, log: &Path) -> Result<Child> {
    let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0);
    let program = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    command
        .spawn()
        .with_context(|| format!("starting {program}"))
}

/// SIGTERM the child's process group, then SIGKILL it after a grace period.
pub(crate) fn terminate(mut child: Child) {
    let group = Pid::from_child(&child);
    let _ = kill_process_group(group, Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            // Whatever the leader left in its group goes too.
            let _ = kill_process_group(group, Signal::KILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill_process_group(group, Signal::KILL);
    let _ = child.wait();
}

/// The last `bytes` of a file, for error messages.
pub(crate) fn tail(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return format!("({} is missing)", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_entry_reads_git_and_bearer_credentials() {
        let mut entry = LogEntry {
            unix_ms: 0,
            listener: "https".into(),
            sni: Some("git.test".into()),
            alpn: None,
            version: "HTTP/1.1".into(),
            method: "GET".into(),
            host: Some("git.test".into()),
            path: "/".into(),
            authorization: Some("Basic eC10b2tlbjp5YTI5LnNlY3JldA==".into()),
            user_agent: None,
            status: 200,
        };
        assert_eq!(entry.basic_password().as_deref(), Some("ya29.secret"));
        assert_eq!(entry.bearer_token(), None);
        entry.authorization = Some("Bearer ya29.x".into());
        assert_eq!(entry.bearer_token(), Some("ya29.x"));
        assert_eq!(entry.basic_password(), None);
    }

    #[test]
    fn random_tokens_differ() {
        assert_ne!(random_token(), random_token());
        assert!(random_token().starts_with("ya29."));
    }
}
