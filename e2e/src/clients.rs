//! The agent-side clients the tests run in the pod namespace as a non-root user: a Python
//! virtual environment with Google's client libraries, and the scripts in `e2e/clients/`.
//!
//! Everything lands under `/var/cache/cassette`, world-readable: the agent's UID cannot reach
//! anything under `/root`. Also here: the agent's home and environment, and running a command
//! with a deadline.

use crate::netns::Identity;
use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, kill_process_group};
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where the client scripts are copied for the agent's UID to read.
pub const SCRIPTS_DIR: &str = "/var/cache/cassette/clients";

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// The venv's python, installing the venv first if it is missing or out of date
/// (`e2e/clients/venv.sh`; the first run downloads the packages, later ones only check).
pub fn python() -> Result<PathBuf> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| install_venv().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn install_venv() -> Result<PathBuf> {
    let script = clients_dir().join("venv.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}); see its output above",
            script.display(),
            out.status
        );
    }
    let python = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !python.is_file() {
        bail!(
            "{} printed {:?}, which is not a file",
            script.display(),
            python.display()
        );
    }
    Ok(python)
}

/// A script from `e2e/clients/`, copied where any UID can read it; returns the copy's path.
pub fn script(name: &str) -> Result<PathBuf> {
    let source = clients_dir().join(name);
    let dir = Path::new(SCRIPTS_DIR);
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    let target = dir.join(name);
    // Write beside and rename, so a test running the script never sees half a file.
    let partial = dir.join(format!(".{name}.{}", std::process::id()));
    fs::copy(&source, &partial).with_context(|| format!("copying {}", source.display()))?;
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o644))?;
    fs::rename(&partial, &target).with_context(|| format!("installing {}", target.display()))?;
    Ok(target)
}

/// A home directory for the agent's UID, removed on drop.
pub struct AgentHome {
    dir: tempfile::TempDir,
}

impl AgentHome {
    /// A fresh directory owned by `identity` (mode 0755).
    pub fn new(identity: Identity) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("cassette-agent-home-")
            .tempdir()
            .context("creating the agent's home")?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        if let Identity::User { uid, gid } = identity {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .with_context(|| format!("giving {} to UID {uid}", dir.path().display()))?;
        }
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The environment an agent container gets, with `ca` as its only trust anchor: every
    /// trust-store variable the injector sets, a git identity, no prompts, and its own gcloud
    /// configuration directory.
    pub fn env(&self, ca: &Path) -> Vec<(String, String)> {
        let home = self.path().display().to_string();
        let ca = ca.display().to_string();
        let mut env: Vec<(String, String)> = [
            ("HOME", home.clone()),
            ("USER", "agent".into()),
            ("LANG", "C.UTF-8".into()),
            ("CLOUDSDK_CONFIG", format!("{home}/.config/gcloud")),
            ("GIT_CONFIG_NOSYSTEM", "1".into()),
            ("GIT_TERMINAL_PROMPT", "0".into()),
            ("GIT_AUTHOR_NAME", "agent".into()),
            ("GIT_AUTHOR_EMAIL", "agent@cassette.test".into()),
            ("GIT_COMMITTER_NAME", "agent".into()),
            ("GIT_COMMITTER_EMAIL", "agent@cassette.test".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for variable in CA_VARIABLES {
            env.push((variable.to_string(), ca.clone()));
        }
        env
    }
}

/// The variables that point TLS clients at a CA bundle (all of them replace the store).
pub const CA_VARIABLES: &[&str] = &[
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "REQUESTS_CA_BUNDLE",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
];

/// Run a command to completion within `timeout`, capturing its output; on timeout its whole
/// process group is killed and an error names the command.
pub fn output_within(mut command: Command, timeout: Duration) -> Result<Output> {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let shown = describe(&command);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            // The process group of a child we own and have not reaped.
            let _ = kill_process_group(Pid::from_child(&child), Signal::KILL);
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            bail!(
                "{shown} did not finish within {timeout:?}; its stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// Run a command within `timeout` and return its stdout; fail with its stderr unless it
/// exits 0.
pub fn stdout_within(command: Command, timeout: Duration) -> Result<String> {
    let shown = describe(&command);
    let out = output_within(command, timeout)?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command as a person would type it, for messages.
pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
